//! Non-maximum suppression with torchvision's semantics.
//!
//! Boxes are visited in descending score order (a *stable* sort, so equal scores keep their
//! input order, as `torchvision.ops.nms` does); a box is suppressed when its IoU with a kept
//! box is *strictly greater* than the threshold. The IoU is computed in f32 in the same order
//! of operations as torchvision's CPU kernel, so results agree exactly, including boxes at
//! exactly the threshold and zero-area boxes (whose IoU with another zero-area box is 0/0 = NaN,
//! which suppresses nothing). The work is done on the host, as in every Burn backend.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::{DetError, Result, ensure_shape};
use crate::ops::boxes::validate_box_slice;

/// Options of [`multiclass_nms`], the post-processing step of a detector.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct NmsOptions {
    /// A box is suppressed when its IoU with a kept box of the same class is `> iou_threshold`.
    pub iou_threshold: f32,
    /// Boxes scoring `< score_threshold` are dropped first.
    pub score_threshold: f32,
    /// Keep only the `pre_nms_top_k` best-scoring boxes before NMS (`None`: all).
    pub pre_nms_top_k: Option<usize>,
    /// Keep at most this many boxes after NMS (`None`: all).
    pub max_detections: Option<usize>,
}

impl Default for NmsOptions {
    fn default() -> Self {
        Self {
            iou_threshold: 0.6,
            score_threshold: 0.05,
            pre_nms_top_k: Some(1000),
            max_detections: Some(100),
        }
    }
}

fn read_f32<B: Backend, const D: usize>(op: &'static str, t: &Tensor<B, D>) -> Result<Vec<f32>> {
    t.to_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DetError::InvalidOption {
            op,
            why: format!("could not read tensor: {e:?}"),
        })
}

fn read_i64<B: Backend>(op: &'static str, t: &Tensor<B, 1, Int>) -> Result<Vec<i64>> {
    t.to_data()
        .convert::<i64>()
        .to_vec::<i64>()
        .map_err(|e| DetError::InvalidOption {
            op,
            why: format!("could not read tensor: {e:?}"),
        })
}

fn check_threshold(op: &'static str, iou_threshold: f32) -> Result<()> {
    if iou_threshold.is_nan() {
        return Err(DetError::InvalidOption {
            op,
            why: "iou_threshold is NaN".into(),
        });
    }
    Ok(())
}

/// Indices of `order` sorted by descending score, stable (ties keep the input order).
fn sort_desc(scores: &[f32], mut order: Vec<usize>) -> Vec<usize> {
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));
    order
}

/// NMS over the candidates `order` (already sorted by descending score). Returns kept indices
/// in visiting order.
fn nms_sorted(boxes: &[f32], order: &[usize], iou_threshold: f32, offset: f32) -> Vec<usize> {
    let n = order.len();
    let get = |i: usize| {
        let b = &boxes[order[i] * 4..order[i] * 4 + 4];
        (b[0], b[1], b[2], b[3])
    };
    let areas: Vec<f32> = (0..n)
        .map(|i| {
            let (x1, y1, x2, y2) = get(i);
            (x2 - x1 + offset) * (y2 - y1 + offset)
        })
        .collect();
    let mut suppressed = vec![false; n];
    let mut keep = Vec::new();
    for i in 0..n {
        if suppressed[i] {
            continue;
        }
        keep.push(order[i]);
        let (ix1, iy1, ix2, iy2) = get(i);
        let iarea = areas[i];
        for j in (i + 1)..n {
            if suppressed[j] {
                continue;
            }
            let (jx1, jy1, jx2, jy2) = get(j);
            let xx1 = ix1.max(jx1);
            let yy1 = iy1.max(jy1);
            let xx2 = ix2.min(jx2);
            let yy2 = iy2.min(jy2);
            let w = (xx2 - xx1 + offset).max(0.0);
            let h = (yy2 - yy1 + offset).max(0.0);
            let inter = w * h;
            let ovr = inter / (iarea + areas[j] - inter);
            if ovr > iou_threshold {
                suppressed[j] = true;
            }
        }
    }
    keep
}

/// NMS on host data: `boxes` is `[x1, y1, x2, y2, …]` (N·4 values), `scores` N values.
/// Returns kept indices sorted by descending score (torchvision `nms`).
pub fn nms_slice(boxes: &[f32], scores: &[f32], iou_threshold: f32) -> Result<Vec<usize>> {
    check_inputs("nms", boxes, scores, None)?;
    check_threshold("nms", iou_threshold)?;
    let order = sort_desc(scores, (0..scores.len()).collect());
    Ok(nms_sorted(boxes, &order, iou_threshold, 0.0))
}

/// Class-aware NMS on host data: boxes of different classes never suppress each other.
/// Returns kept indices sorted by descending score (ties by index), as
/// `torchvision.ops.batched_nms`.
pub fn batched_nms_slice(
    boxes: &[f32],
    scores: &[f32],
    classes: &[i64],
    iou_threshold: f32,
) -> Result<Vec<usize>> {
    batched_nms_slice_with(boxes, scores, classes, iou_threshold, false)
}

/// [`batched_nms_slice`] with a choice of box convention: `plus_one` measures a box as
/// `x2 − x1 + 1` wide (maskrcnn-benchmark's `ml_nms`, which GLIP's released inference runs).
pub fn batched_nms_slice_with(
    boxes: &[f32],
    scores: &[f32],
    classes: &[i64],
    iou_threshold: f32,
    plus_one: bool,
) -> Result<Vec<usize>> {
    check_inputs("batched_nms", boxes, scores, Some(classes))?;
    check_threshold("batched_nms", iou_threshold)?;
    let order = sort_desc(scores, (0..scores.len()).collect());
    let offset = if plus_one { 1.0 } else { 0.0 };
    let mut by_class: std::collections::BTreeMap<i64, Vec<usize>> = Default::default();
    for &i in &order {
        by_class.entry(classes[i]).or_default().push(i);
    }
    let mut keep: Vec<usize> = by_class
        .values()
        .flat_map(|members| nms_sorted(boxes, members, iou_threshold, offset))
        .collect();
    keep.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    Ok(keep)
}

fn check_inputs(
    op: &'static str,
    boxes: &[f32],
    scores: &[f32],
    classes: Option<&[i64]>,
) -> Result<()> {
    if boxes.len() != scores.len() * 4 {
        return Err(DetError::Shape {
            op,
            what: "boxes",
            got: vec![boxes.len() / 4, 4],
            expected: format!("[{}, 4] (one box per score)", scores.len()),
        });
    }
    if let Some(c) = classes
        && c.len() != scores.len()
    {
        return Err(DetError::Shape {
            op,
            what: "classes",
            got: vec![c.len()],
            expected: format!("[{}] (one class per score)", scores.len()),
        });
    }
    if let Some(i) = scores.iter().position(|s| s.is_nan()) {
        return Err(DetError::InvalidOption {
            op,
            why: format!("score {i} is NaN"),
        });
    }
    validate_box_slice(op, boxes)
}

fn to_index_tensor<B: Backend>(keep: &[usize], device: &B::Device) -> Tensor<B, 1, Int> {
    let data: Vec<i64> = keep.iter().map(|&i| i as i64).collect();
    Tensor::from_data(TensorData::new(data, [keep.len()]), device)
}

fn check_tensors<B: Backend>(
    op: &'static str,
    boxes: &Tensor<B, 2>,
    scores: &Tensor<B, 1>,
) -> Result<()> {
    let (db, ds) = (boxes.dims(), scores.dims());
    ensure_shape(db[1] == 4, op, "boxes", &db, "[N, 4]")?;
    ensure_shape(
        db[0] == ds[0],
        op,
        "scores",
        &ds,
        format!("[{}] (one score per box)", db[0]),
    )
}

/// NMS (torchvision `nms`): indices of the kept boxes, by descending score.
///
/// # Shapes
/// - `boxes`: `[N, 4]` xyxy; `scores`: `[N]`; output `[K]` with `K ≤ N`
///
/// # Errors
/// Mismatched lengths, boxes with `x2 < x1` / `y2 < y1` / non-finite coordinates, NaN scores.
/// An empty input gives an empty result.
pub fn nms<B: Backend>(
    boxes: Tensor<B, 2>,
    scores: Tensor<B, 1>,
    iou_threshold: f32,
) -> Result<Tensor<B, 1, Int>> {
    check_tensors("nms", &boxes, &scores)?;
    let device = boxes.device();
    let keep = nms_slice(
        &read_f32("nms", &boxes)?,
        &read_f32("nms", &scores)?,
        iou_threshold,
    )?;
    Ok(to_index_tensor(&keep, &device))
}

/// Class-aware NMS (torchvision `batched_nms`): boxes of different `classes` never suppress each
/// other. Indices of the kept boxes, by descending score.
///
/// # Shapes
/// - `boxes`: `[N, 4]` xyxy; `scores`, `classes`: `[N]`; output `[K]`
pub fn batched_nms<B: Backend>(
    boxes: Tensor<B, 2>,
    scores: Tensor<B, 1>,
    classes: Tensor<B, 1, Int>,
    iou_threshold: f32,
) -> Result<Tensor<B, 1, Int>> {
    check_tensors("batched_nms", &boxes, &scores)?;
    let device = boxes.device();
    let keep = batched_nms_slice(
        &read_f32("batched_nms", &boxes)?,
        &read_f32("batched_nms", &scores)?,
        &read_i64("batched_nms", &classes)?,
        iou_threshold,
    )?;
    Ok(to_index_tensor(&keep, &device))
}

/// Indices of the `k` highest scores, by descending score (stable for ties). The top-k
/// pre-filter that detectors run before NMS.
pub fn top_k_slice(scores: &[f32], k: usize) -> Vec<usize> {
    let mut order = sort_desc(scores, (0..scores.len()).collect());
    order.truncate(k);
    order
}

/// A detector's post-processing on one image: drop scores below the threshold, keep the
/// top-k, class-aware NMS, keep at most `max_detections`. Returns indices into the input, by
/// descending score.
///
/// # Shapes
/// - `boxes`: `[N, 4]`; `scores`, `classes`: `[N]`; output `[K]`
pub fn multiclass_nms<B: Backend>(
    boxes: Tensor<B, 2>,
    scores: Tensor<B, 1>,
    classes: Tensor<B, 1, Int>,
    options: &NmsOptions,
) -> Result<Tensor<B, 1, Int>> {
    check_tensors("multiclass_nms", &boxes, &scores)?;
    let device = boxes.device();
    let b = read_f32("multiclass_nms", &boxes)?;
    let s = read_f32("multiclass_nms", &scores)?;
    let c = read_i64("multiclass_nms", &classes)?;
    check_inputs("multiclass_nms", &b, &s, Some(&c))?;
    let candidates: Vec<usize> = (0..s.len())
        .filter(|&i| s[i] >= options.score_threshold)
        .collect();
    let mut candidates = sort_desc(&s, candidates);
    if let Some(k) = options.pre_nms_top_k {
        candidates.truncate(k);
    }
    let sub_b: Vec<f32> = candidates
        .iter()
        .flat_map(|&i| b[i * 4..i * 4 + 4].to_vec())
        .collect();
    let sub_s: Vec<f32> = candidates.iter().map(|&i| s[i]).collect();
    let sub_c: Vec<i64> = candidates.iter().map(|&i| c[i]).collect();
    let mut keep: Vec<usize> = batched_nms_slice(&sub_b, &sub_s, &sub_c, options.iou_threshold)?
        .into_iter()
        .map(|k| candidates[k])
        .collect();
    if let Some(m) = options.max_detections {
        keep.truncate(m);
    }
    Ok(to_index_tensor(&keep, &device))
}
