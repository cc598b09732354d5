//! `detclip eval …`: runs an evaluator of `detclip_core::eval` and formats its report, either
//! as the pycocotools / lvis printout or as one JSON object of named numbers.
//!
//! JSON keys: COCO `AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl`
//! (pycocotools' `stats[0..12]` in order); LVIS the keys of `LVISEval.results`:
//! `AP, AP50, AP75, APs, APm, APl, APr, APc, APf, AR@300, ARs@300, ARm@300, ARl@300`.

use std::path::Path;

use detclip_core::Result;
use detclip_core::eval::{
    CocoStats, GroundTruth, GroundingSet, LvisLimits, evaluate_coco, evaluate_lvis_with,
    grounding_recall, load_detections, load_odinw_list, run_odinw,
};
use serde_json::Value;

/// Output style.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// The pycocotools / lvis printout.
    Table,
    /// One JSON object.
    Json,
}

/// A JSON object with its keys in the given order (serde_json's `Map` would sort them);
/// values are raw JSON.
fn object<K: AsRef<str>>(pairs: impl IntoIterator<Item = (K, String)>) -> String {
    let fields: Vec<String> = pairs
        .into_iter()
        .map(|(k, v)| format!("{}:{v}", Value::from(k.as_ref())))
        .collect();
    format!("{{{}}}", fields.join(","))
}

fn num(v: f64) -> String {
    Value::from(v).to_string()
}

fn numbers(pairs: impl IntoIterator<Item = (&'static str, f64)>) -> String {
    object(pairs.into_iter().map(|(k, v)| (k, num(v))))
}

fn coco_numbers(s: &CocoStats) -> String {
    numbers([
        ("AP", s.AP),
        ("AP50", s.AP50),
        ("AP75", s.AP75),
        ("APs", s.APs),
        ("APm", s.APm),
        ("APl", s.APl),
        ("AR1", s.AR1),
        ("AR10", s.AR10),
        ("AR100", s.AR100),
        ("ARs", s.ARs),
        ("ARm", s.ARm),
        ("ARl", s.ARl),
    ])
}

/// `{"AP": …, …}`, with `"per_category_AP": {"<id>": AP, …}` appended when asked.
fn with_per_category(summary: String, per_category: Option<&[(i64, f64)]>) -> String {
    match per_category {
        None => summary,
        Some(pc) => {
            let cats = object(pc.iter().map(|(id, ap)| (id.to_string(), num(*ap))));
            let body = summary.strip_suffix('}').unwrap_or(&summary);
            format!("{body},\"per_category_AP\":{cats}}}")
        }
    }
}

fn per_category_table(per_category: &[(i64, f64)]) -> String {
    let mut out = String::from("category_id  AP@[.5:.95]\n");
    for (id, ap) in per_category {
        out.push_str(&format!("{id:>11}  {ap:.4}\n"));
    }
    out
}

/// `detclip eval coco`: COCO box AP of `dt` against `gt`.
pub fn coco(gt: &Path, dt: &Path, format: Format, per_category: bool) -> Result<String> {
    let gt = GroundTruth::from_file(gt)?;
    let dts = load_detections(dt, &gt)?;
    let r = evaluate_coco(&gt, &dts)?;
    let s = r.stats;
    Ok(match format {
        Format::Json => {
            let pc = per_category.then_some(r.per_category_ap.as_slice());
            format!("{}\n", with_per_category(coco_numbers(&s), pc))
        }
        Format::Table if per_category => {
            s.summary_table() + "\n" + &per_category_table(&r.per_category_ap)
        }
        Format::Table => s.summary_table(),
    })
}

/// `detclip eval lvis`: LVIS box AP of `dt` against `gt`; with `fixed_ap = Some(k)`, Fixed AP
/// (the top `k` detections of each category, no cap per image).
pub fn lvis(
    gt: &Path,
    dt: &Path,
    format: Format,
    per_category: bool,
    fixed_ap: Option<usize>,
) -> Result<String> {
    let gt = GroundTruth::from_file(gt)?;
    let dts = load_detections(dt, &gt)?;
    let limits = fixed_ap.map_or(LvisLimits::STANDARD, LvisLimits::fixed_ap);
    let r = evaluate_lvis_with(&gt, &dts, limits)?;
    Ok(match format {
        Format::Json => {
            let pc = per_category.then_some(r.per_category_ap.as_slice());
            format!("{}\n", with_per_category(numbers(r.stats.named()), pc))
        }
        Format::Table => {
            let table = r
                .stats
                .summary_table_for(limits.per_image.map_or(-1, |m| m as i64));
            match per_category {
                true => table + "\n" + &per_category_table(&r.per_category_ap),
                false => table,
            }
        }
    })
}

/// `detclip eval odinw`: COCO AP of every dataset in the list file, and their mean.
pub fn odinw(config: &Path, format: Format) -> Result<String> {
    let report = run_odinw(&load_odinw_list(config)?)?;
    Ok(match format {
        Format::Json => {
            let datasets = object(
                report
                    .datasets
                    .iter()
                    .map(|d| (d.name.as_str(), coco_numbers(&d.stats))),
            );
            let all = [("datasets", datasets), ("mean_AP", num(report.mean_ap))];
            format!("{}\n", object(all))
        }
        Format::Table => {
            let width = report
                .datasets
                .iter()
                .map(|d| d.name.len())
                .max()
                .unwrap_or(0)
                .max(7);
            let mut out = format!(
                "{:<width$}  {:>6}  {:>6}  {:>6}\n",
                "dataset", "AP", "AP50", "AP75"
            );
            for d in &report.datasets {
                out.push_str(&format!(
                    "{:<width$}  {:>6.3}  {:>6.3}  {:>6.3}\n",
                    d.name, d.stats.AP, d.stats.AP50, d.stats.AP75
                ));
            }
            out.push_str(&format!("{:<width$}  {:>6.3}\n", "mean", report.mean_ap));
            out
        }
    })
}

/// `detclip eval grounding`: Recall@k of a grounding file.
pub fn grounding(input: &Path, ks: &[usize], iou: f64, format: Format) -> Result<String> {
    let set = GroundingSet::from_file(input)?;
    let r = grounding_recall(&set, ks, iou);
    Ok(match format {
        Format::Json => {
            let recalls = r
                .recall
                .iter()
                .map(|(k, rec)| (format!("R@{k}"), num(*rec)));
            let extra = [
                ("phrases".to_string(), r.num_phrases.to_string()),
                ("iou_threshold".to_string(), num(r.iou_threshold)),
            ];
            format!("{}\n", object(recalls.chain(extra)))
        }
        Format::Table => {
            let mut out = format!(
                "{} phrases, merged boxes, IoU >= {}\n",
                r.num_phrases, r.iou_threshold
            );
            for (k, rec) in &r.recall {
                out.push_str(&format!(" Recall@{k:<3} = {rec:.4}\n"));
            }
            out
        }
    })
}
