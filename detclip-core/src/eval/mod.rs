//! Evaluation: COCO and LVIS box AP matching pycocotools and `lvis`, grounding recall, ODinW.
//!
//! - [`coco`]: `COCOeval` (bbox) — the 12 summary numbers and per-category AP
//! - [`lvis`]: `LVISEval` (bbox) — federated AP, APr/APc/APf, AR@300
//! - [`grounding`]: phrase grounding Recall@k with merged ground-truth boxes
//! - [`odinw`]: COCO AP over a list of datasets and their mean
//! - [`json`]: the ground-truth and detection readers (errors name file and entry)
//!
//! Everything runs on the host in `f64`, like numpy; no tensors are involved.
//!
//! ```no_run
//! use detclip_core::eval::{GroundTruth, evaluate_coco, load_detections};
//! let gt = GroundTruth::from_file("instances_val2017.json".as_ref())?;
//! let dts = load_detections("detections.json".as_ref(), &gt)?;
//! let result = evaluate_coco(&gt, &dts)?;
//! print!("{}", result.stats.summary_table());
//! # Ok::<(), detclip_core::DetError>(())
//! ```

pub mod coco;
pub mod engine;
pub mod grounding;
pub mod json;
pub mod lvis;
pub mod odinw;

pub use coco::{CocoEvaluation, CocoStats, evaluate_coco};
pub use engine::EvalTable;
pub use grounding::{GroundingRecall, GroundingSet, grounding_recall};
pub use json::{Detection, GroundTruth, load_detections, parse_detections};
pub use lvis::{
    FIXED_AP_DETS_PER_CATEGORY, LvisEvaluation, LvisLimits, LvisStats, evaluate_lvis,
    evaluate_lvis_with,
};
pub use odinw::{OdinwReport, load_odinw_list, run_odinw};
