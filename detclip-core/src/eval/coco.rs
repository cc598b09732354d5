//! COCO box AP, identical to pycocotools' `COCOeval(gt, dt, "bbox")` with default parameters.

use std::collections::BTreeMap;

use serde::Serialize;

use super::engine::{
    self, AREA_RANGES, Cell, DtEntry, EvalTable, GtEntry, Index, group_by_category,
};
use super::json::{Detection, GroundTruth};
use crate::error::Result;

/// pycocotools' `maxDets`.
pub const COCO_MAX_DETS: [usize; 3] = [1, 10, 100];

/// The 12 numbers of pycocotools' `summarize()` (`stats[0..12]`), -1 where undefined.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[allow(non_snake_case)]
pub struct CocoStats {
    /// AP @ IoU 0.50:0.95, all areas, 100 detections (`stats[0]`).
    pub AP: f64,
    /// AP @ IoU 0.50 (`stats[1]`).
    pub AP50: f64,
    /// AP @ IoU 0.75 (`stats[2]`).
    pub AP75: f64,
    /// AP for small objects, area <= 32² (`stats[3]`).
    pub APs: f64,
    /// AP for medium objects, 32² <= area <= 96² (`stats[4]`).
    pub APm: f64,
    /// AP for large objects, area >= 96² (`stats[5]`).
    pub APl: f64,
    /// AR with 1 detection per image (`stats[6]`).
    pub AR1: f64,
    /// AR with 10 detections per image (`stats[7]`).
    pub AR10: f64,
    /// AR with 100 detections per image (`stats[8]`).
    pub AR100: f64,
    /// AR for small objects (`stats[9]`).
    pub ARs: f64,
    /// AR for medium objects (`stats[10]`).
    pub ARm: f64,
    /// AR for large objects (`stats[11]`).
    pub ARl: f64,
}

impl CocoStats {
    /// The numbers in pycocotools' `stats` order.
    pub fn to_array(&self) -> [f64; 12] {
        [
            self.AP, self.AP50, self.AP75, self.APs, self.APm, self.APl, self.AR1, self.AR10,
            self.AR100, self.ARs, self.ARm, self.ARl,
        ]
    }

    /// The pycocotools `summarize()` printout (12 lines).
    pub fn summary_table(&self) -> String {
        const ROWS: [(&str, &str, &str, usize); 12] = [
            ("AP", "0.50:0.95", "all", 100),
            ("AP", "0.50", "all", 100),
            ("AP", "0.75", "all", 100),
            ("AP", "0.50:0.95", "small", 100),
            ("AP", "0.50:0.95", "medium", 100),
            ("AP", "0.50:0.95", "large", 100),
            ("AR", "0.50:0.95", "all", 1),
            ("AR", "0.50:0.95", "all", 10),
            ("AR", "0.50:0.95", "all", 100),
            ("AR", "0.50:0.95", "small", 100),
            ("AR", "0.50:0.95", "medium", 100),
            ("AR", "0.50:0.95", "large", 100),
        ];
        ROWS.iter()
            .zip(self.to_array())
            .map(|(&(kind, iou, area, max_det), v)| {
                format!(
                    "{}\n",
                    summary_line(kind, iou, area, max_det as i64, None, v)
                )
            })
            .collect()
    }
}

/// One line of the pycocotools / lvis summary printout.
pub(crate) fn summary_line(
    kind: &str,
    iou: &str,
    area: &str,
    max_det: i64,
    cat_group: Option<&str>,
    value: f64,
) -> String {
    let title = if kind == "AP" {
        "Average Precision"
    } else {
        "Average Recall"
    };
    let tail = match cat_group {
        None => " ]".to_string(),
        Some(group) => format!(" catIds={group:>3}]"),
    };
    format!(
        " {title:<18} ({kind}) @[ IoU={iou:<9} | area={area:>6} | maxDets={max_det:>3}{tail} = {value:.3}"
    )
}

/// The result of a COCO evaluation.
#[derive(Debug, Clone)]
pub struct CocoEvaluation {
    /// The 12 summary numbers.
    pub stats: CocoStats,
    /// `(category id, AP@[.5:.95])` for every category, ascending id; -1 without ground truth.
    pub per_category_ap: Vec<(i64, f64)>,
    /// The full precision / recall arrays.
    pub table: EvalTable,
}

/// Evaluates box detections against COCO ground truth exactly as pycocotools does.
///
/// Errors when a detection names an image or category that `gt` lacks.
pub fn evaluate_coco(gt: &GroundTruth, detections: &[Detection]) -> Result<CocoEvaluation> {
    let index = Index::new(gt);
    let mut cells: BTreeMap<(usize, usize), Cell> = BTreeMap::new();
    for a in &gt.annotations {
        let key = index.key(a.image_id, a.category_id, &gt.source, "annotation")?;
        cells.entry(key).or_default().gts.push(GtEntry {
            bbox: a.bbox,
            area: a.area,
            crowd: a.iscrowd,
            // pycocotools' _prepare sets gt['ignore'] = iscrowd, overwriting the field.
            ignore: a.iscrowd,
            id: a.id,
        });
    }
    for d in detections {
        let key = index.key(d.image_id, d.category_id, &gt.source, "detection")?;
        cells.entry(key).or_default().dts.push(DtEntry {
            bbox: d.bbox,
            area: d.area(),
            score: d.score,
            ignore_if_unmatched: false,
        });
    }
    let table = engine::evaluate(
        index.category_ids.clone(),
        COCO_MAX_DETS.to_vec(),
        group_by_category(&cells),
    );
    Ok(CocoEvaluation {
        stats: coco_stats(&table),
        per_category_ap: table.per_category_ap(),
        table,
    })
}

/// pycocotools' `_summarizeDets`.
fn coco_stats(table: &EvalTable) -> CocoStats {
    let all = table.all_categories();
    let area = |name: &str| AREA_RANGES.iter().position(|r| r.0 == name).expect("range");
    let ap = |iou, a: &str| table.mean_precision(iou, area(a), 2, &all);
    let ar = |a: &str, m| table.mean_recall(None, area(a), m, &all);
    CocoStats {
        AP: ap(None, "all"),
        AP50: ap(Some(0.5), "all"),
        AP75: ap(Some(0.75), "all"),
        APs: ap(None, "small"),
        APm: ap(None, "medium"),
        APl: ap(None, "large"),
        AR1: ar("all", 0),
        AR10: ar("all", 1),
        AR100: ar("all", 2),
        ARs: ar("small", 2),
        ARm: ar("medium", 2),
        ARl: ar("large", 2),
    }
}
