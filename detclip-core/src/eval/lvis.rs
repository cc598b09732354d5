//! LVIS box AP, identical to the `lvis` package's `LVISEval(gt, LVISResults(gt, dt), "bbox")`
//! (v0.5.x): federated evaluation with at most 300 detections per image.

use std::collections::{BTreeMap, HashMap, HashSet};

use super::coco::summary_line;
use super::engine::{
    self, AREA_RANGES, Cell, DtEntry, EvalTable, GtEntry, Index, group_by_category,
};
use super::json::{Detection, Frequency, GroundTruth, dataset_err};
use crate::error::Result;

/// `LVISResults`' default `max_dets`: detections kept per image (the highest scores).
pub const LVIS_MAX_DETS: usize = 300;

/// Fixed AP's detections per category (Dave et al. 2021, "Evaluating Large-Vocabulary Object
/// Detectors: The Devil is in the Details"; K = 10,000 for LVIS).
pub const FIXED_AP_DETS_PER_CATEGORY: usize = 10_000;

/// Which detections an LVIS evaluation counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LvisLimits {
    /// Detections kept per image, the highest scores (`LVISResults(max_dets)`, 300); `None`:
    /// every one.
    pub per_image: Option<usize>,
    /// Detections kept per category over the whole dataset, the highest scores; `None`: every
    /// one. Applied before the per-image limit.
    pub per_category: Option<usize>,
}

impl LvisLimits {
    /// The lvis package's evaluation: 300 detections per image, no limit per category.
    pub const STANDARD: LvisLimits = LvisLimits {
        per_image: Some(LVIS_MAX_DETS),
        per_category: None,
    };

    /// Fixed AP with `k` detections per category (the paper's K is
    /// [`FIXED_AP_DETS_PER_CATEGORY`]) and no limit per image, as
    /// `achalddave/large-vocab-devil`'s `scripts/evaluate_ap_fixed.py` computes it: the GLIP,
    /// DetCLIPv2, YOLO-World and LLMDet figures on LVIS minival are Fixed AP.
    pub const fn fixed_ap(k: usize) -> LvisLimits {
        LvisLimits {
            per_image: None,
            per_category: Some(k),
        }
    }
}

/// The 13 numbers of `LVISEval.results`, named as the lvis package names them
/// (`AR@300` is [`LvisStats::AR300`], `ARs@300` is `ARs300`, …); -1 where undefined.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
#[allow(non_snake_case)]
pub struct LvisStats {
    /// AP @ IoU 0.50:0.95.
    pub AP: f64,
    /// AP @ IoU 0.50.
    pub AP50: f64,
    /// AP @ IoU 0.75.
    pub AP75: f64,
    /// AP for small objects.
    pub APs: f64,
    /// AP for medium objects.
    pub APm: f64,
    /// AP for large objects.
    pub APl: f64,
    /// AP over rare categories.
    pub APr: f64,
    /// AP over common categories.
    pub APc: f64,
    /// AP over frequent categories.
    pub APf: f64,
    /// `AR@300`.
    pub AR300: f64,
    /// `ARs@300`.
    pub ARs300: f64,
    /// `ARm@300`.
    pub ARm300: f64,
    /// `ARl@300`.
    pub ARl300: f64,
}

impl LvisStats {
    /// `(lvis key, value)` in the order of `LVISEval.results`.
    pub fn named(&self) -> [(&'static str, f64); 13] {
        [
            ("AP", self.AP),
            ("AP50", self.AP50),
            ("AP75", self.AP75),
            ("APs", self.APs),
            ("APm", self.APm),
            ("APl", self.APl),
            ("APr", self.APr),
            ("APc", self.APc),
            ("APf", self.APf),
            ("AR@300", self.AR300),
            ("ARs@300", self.ARs300),
            ("ARm@300", self.ARm300),
            ("ARl@300", self.ARl300),
        ]
    }

    /// The `LVISEval.print_results()` printout (13 lines).
    pub fn summary_table(&self) -> String {
        self.summary_table_for(LVIS_MAX_DETS as i64)
    }

    /// The printout with `max_dets` in its `maxDets` column (-1 for Fixed AP, whose
    /// evaluation has no cap per image, as the lvis package prints it).
    pub fn summary_table_for(&self, max_dets: i64) -> String {
        // (AP/AR, IoU, area, category group) of each entry of `named()`, as lvis prints them.
        const ROWS: [(&str, &str, &str, &str); 13] = [
            ("AP", "0.50:0.95", "all", "all"),
            ("AP", "0.50", "all", "all"),
            ("AP", "0.75", "all", "all"),
            ("AP", "0.50:0.95", "s", "all"),
            ("AP", "0.50:0.95", "m", "all"),
            ("AP", "0.50:0.95", "l", "all"),
            ("AP", "0.50:0.95", "all", "r"),
            ("AP", "0.50:0.95", "all", "c"),
            ("AP", "0.50:0.95", "all", "f"),
            ("AR", "0.50:0.95", "all", "all"),
            ("AR", "0.50:0.95", "s", "all"),
            ("AR", "0.50:0.95", "m", "all"),
            ("AR", "0.50:0.95", "l", "all"),
        ];
        ROWS.iter()
            .zip(self.named())
            .map(|(&(kind, iou, area, group), (_, value))| {
                let line = summary_line(kind, iou, area, max_dets, Some(group), value);
                format!("{line}\n")
            })
            .collect()
    }
}

/// The result of an LVIS evaluation.
#[derive(Debug, Clone)]
pub struct LvisEvaluation {
    /// The 13 summary numbers.
    pub stats: LvisStats,
    /// `(category id, AP@[.5:.95])` for every category, ascending id; -1 where undefined.
    pub per_category_ap: Vec<(i64, f64)>,
    /// The full precision / recall arrays (one max-detections column, 300).
    pub table: EvalTable,
}

/// The per-image federated sets.
struct ImageSets {
    /// Categories with a (positive-area) annotation, or listed in `neg_category_ids`.
    evaluated: HashSet<i64>,
    /// `not_exhaustive_category_ids`.
    not_exhaustive: HashSet<i64>,
}

/// Evaluates box detections against LVIS ground truth exactly as the lvis package does
/// ([`LvisLimits::STANDARD`]: 300 detections per image).
///
/// Every image needs `neg_category_ids` and `not_exhaustive_category_ids`, every category a
/// `frequency` of `r`, `c` or `f`; detections must name images and categories of `gt`.
pub fn evaluate_lvis(gt: &GroundTruth, detections: &[Detection]) -> Result<LvisEvaluation> {
    evaluate_lvis_with(gt, detections, LvisLimits::STANDARD)
}

/// [`evaluate_lvis`] counting the detections `limits` keeps: the highest-scoring ones per
/// category over the dataset (stable on ties: earlier in the file first), then per image.
/// With [`LvisLimits::fixed_ap`] this is Fixed AP. The summary's recall is then over every
/// kept detection (the lvis package names it `AR@-1`; [`LvisStats::AR300`] holds it).
///
/// # Errors
/// As [`evaluate_lvis`]; a limit of 0.
pub fn evaluate_lvis_with(
    gt: &GroundTruth,
    detections: &[Detection],
    limits: LvisLimits,
) -> Result<LvisEvaluation> {
    if limits.per_image == Some(0) || limits.per_category == Some(0) {
        return Err(dataset_err(
            &gt.source,
            "an LVIS detection limit of 0 keeps nothing to evaluate".to_string(),
        ));
    }
    let index = Index::new(gt);
    let groups = frequency_groups(gt, &index.category_ids)?;
    let mut sets = image_sets(gt)?;
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    // LVIS.get_ann_ids keeps only annotations with 0 < area < inf, for both files.
    for a in gt.annotations.iter().filter(|a| a.area > 0.0) {
        let key = index.key(a.image_id, a.category_id, &gt.source, "annotation")?;
        if let Some(s) = sets.get_mut(&a.image_id) {
            s.evaluated.insert(a.category_id);
        }
        cells.entry(key).or_default().gts.push(GtEntry {
            bbox: a.bbox,
            area: a.area,
            crowd: false,
            ignore: a.ignore,
            id: a.id,
        });
    }
    let by_category: Vec<&Detection> = match limits.per_category {
        Some(k) => limit_by(detections.iter().collect(), |d| d.category_id, k),
        None => detections.iter().collect(),
    };
    let kept = match limits.per_image {
        Some(k) => limit_by(by_category, |d| d.image_id, k),
        None => by_category,
    };
    for d in kept {
        let key = index.key(d.image_id, d.category_id, &gt.source, "detection")?;
        let area = d.area();
        let set = &sets[&d.image_id];
        if area <= 0.0 || !set.evaluated.contains(&d.category_id) {
            continue;
        }
        cells.entry(key).or_default().dts.push(DtEntry {
            bbox: d.bbox,
            area,
            score: d.score,
            ignore_if_unmatched: set.not_exhaustive.contains(&d.category_id),
        });
    }
    // The lvis package cuts detections per image only (in `LVISResults`), never per
    // (image, category) cell: no cell cap.
    let table = engine::evaluate(
        index.category_ids.clone(),
        vec![limits.per_image.unwrap_or(usize::MAX)],
        group_by_category(&cells),
    );
    Ok(LvisEvaluation {
        stats: lvis_stats(&table, &groups),
        per_category_ap: table.per_category_ap(),
        table,
    })
}

/// The detections of each group (`key`: image, as `LVISResults.limit_dets_per_image`, or
/// category, as Fixed AP's top-K) beyond `max_dets` are cut, keeping the highest scores
/// (stable on ties). The result keeps the input order otherwise, which gives the same
/// per-(image, category) ranking as the reference tools' reordering.
fn limit_by(
    detections: Vec<&Detection>,
    key: impl Fn(&Detection) -> i64,
    max_dets: usize,
) -> Vec<&Detection> {
    let mut groups: HashMap<i64, Vec<usize>> = HashMap::new();
    for (i, d) in detections.iter().enumerate() {
        groups.entry(key(d)).or_default().push(i);
    }
    let mut keep = vec![true; detections.len()];
    for indices in groups.values().filter(|v| v.len() > max_dets) {
        let mut ranked = indices.clone();
        ranked.sort_by(|&a, &b| detections[b].score.total_cmp(&detections[a].score));
        for &i in &ranked[max_dets..] {
            keep[i] = false;
        }
    }
    detections
        .into_iter()
        .zip(keep)
        .filter_map(|(d, k)| k.then_some(d))
        .collect()
}

/// The negative and not-exhaustive sets of every image (both fields required).
fn image_sets(gt: &GroundTruth) -> Result<HashMap<i64, ImageSets>> {
    gt.images
        .iter()
        .map(|img| {
            let missing = |field: &str| {
                dataset_err(
                    &gt.source,
                    format!("image {} has no `{field}` (is this an LVIS file?)", img.id),
                )
            };
            let neg = img
                .neg_category_ids
                .as_ref()
                .ok_or_else(|| missing("neg_category_ids"))?;
            let not_exhaustive = img
                .not_exhaustive_category_ids
                .as_ref()
                .ok_or_else(|| missing("not_exhaustive_category_ids"))?;
            Ok((
                img.id,
                ImageSets {
                    evaluated: neg.iter().copied().collect(),
                    not_exhaustive: not_exhaustive.iter().copied().collect(),
                },
            ))
        })
        .collect()
}

/// Category indices (into the ascending id list) of the rare, common and frequent groups.
fn frequency_groups(gt: &GroundTruth, category_ids: &[i64]) -> Result<[Vec<usize>; 3]> {
    let by_id: HashMap<i64, Option<Frequency>> =
        gt.categories.iter().map(|c| (c.id, c.frequency)).collect();
    let mut groups: [Vec<usize>; 3] = Default::default();
    for (k, id) in category_ids.iter().enumerate() {
        let group = match by_id[id] {
            Some(Frequency::Rare) => 0,
            Some(Frequency::Common) => 1,
            Some(Frequency::Frequent) => 2,
            None => {
                return Err(dataset_err(
                    &gt.source,
                    format!("category {id} has no `frequency` of \"r\", \"c\" or \"f\""),
                ));
            }
        };
        groups[group].push(k);
    }
    Ok(groups)
}

/// `LVISEval.summarize`.
fn lvis_stats(table: &EvalTable, groups: &[Vec<usize>; 3]) -> LvisStats {
    let all = table.all_categories();
    let area = |name: &str| AREA_RANGES.iter().position(|r| r.0 == name).expect("range");
    let ap = |iou, a: &str, cats: &[usize]| table.mean_precision(iou, area(a), 0, cats);
    let ar = |a: &str| table.mean_recall(None, area(a), 0, &all);
    LvisStats {
        AP: ap(None, "all", &all),
        AP50: ap(Some(0.5), "all", &all),
        AP75: ap(Some(0.75), "all", &all),
        APs: ap(None, "small", &all),
        APm: ap(None, "medium", &all),
        APl: ap(None, "large", &all),
        APr: ap(None, "all", &groups[0]),
        APc: ap(None, "all", &groups[1]),
        APf: ap(None, "all", &groups[2]),
        AR300: ar("all"),
        ARs300: ar("small"),
        ARm300: ar("medium"),
        ARl300: ar("large"),
    }
}
