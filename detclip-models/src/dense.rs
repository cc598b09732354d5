//! What the dense one-stage detectors (`shapes`, DetCLIPv2, GLIP) share at test time: the
//! detections of an image, the inference settings of a dense head and the post-processing
//! from per-anchor concept scores and decoded boxes to detections.

use burn::prelude::*;
use detclip_core::data::{Normalize, TestTransform};
use detclip_core::ops::{batched_nms_slice, top_k_slice};
use detclip_core::{DetError, Result};
use serde::{Deserialize, Serialize};

/// Detections of one image, by descending score.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detections {
    /// Boxes, xyxy in input pixels.
    pub boxes: Vec<[f32; 4]>,
    /// Scores in `[0, 1]`.
    pub scores: Vec<f32>,
    /// Vocabulary indices.
    pub classes: Vec<usize>,
}

/// Inference settings of a dense detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DenseTestConfig {
    /// Shorter side of the test resize.
    pub short_side: u32,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Candidates kept per image before NMS.
    pub pre_nms_top_k: usize,
    /// NMS IoU threshold (per concept).
    pub nms_iou: f32,
    /// Detections kept per image.
    pub max_detections: usize,
}

impl DenseTestConfig {
    /// The test resize, with ImageNet normalisation.
    pub fn transform(&self) -> TestTransform {
        TestTransform {
            short: self.short_side,
            max_long: self.max_long,
            normalize: Normalize::imagenet(),
        }
    }

    /// Checks sizes and the IoU threshold.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming the first bad value.
    pub fn validate(&self) -> Result<()> {
        check_test_limits(
            "test",
            (self.short_side, self.max_long),
            self.pre_nms_top_k,
            self.nms_iou,
            self.max_detections,
        )
    }
}

/// The checks every dense head's test settings share: a positive resize, positive candidate
/// and detection counts, an NMS IoU in `(0, 1]`.
///
/// # Errors
/// [`DetError::InvalidOption`] (named `op`) naming the first bad value.
pub fn check_test_limits(
    op: &'static str,
    (short_side, max_long): (u32, Option<u32>),
    pre_nms_top_k: usize,
    nms_iou: f32,
    max_detections: usize,
) -> Result<()> {
    let bad = |why: String| Err(DetError::InvalidOption { op, why });
    if short_side == 0 || max_long == Some(0) {
        return bad("short_side and max_long must be positive".into());
    }
    if pre_nms_top_k == 0 || max_detections == 0 {
        return bad("pre_nms_top_k and max_detections must be positive".into());
    }
    if !(nms_iou > 0.0 && nms_iou <= 1.0) {
        return bad(format!("nms_iou must be in (0, 1], got {nms_iou}"));
    }
    Ok(())
}

/// Detections of a batch from per-anchor concept scores and the anchors' decoded boxes: per
/// image, the (anchor, concept) pairs scoring at least `threshold`, the best
/// `pre_nms_top_k` of them, boxes clipped to the image, class-wise NMS, at most
/// `max_detections` by descending score (ties: lower anchor·concept index first).
///
/// # Shapes
/// - `scores`: `[N, A, C]`; `boxes`: `[N, A, 4]` xyxy in the resized image's pixels;
///   `image_sizes`: `N` pairs `(height, width)`
///
/// # Errors
/// [`DetError::Shape`] if the shapes disagree.
pub fn dense_detections<B: Backend>(
    scores: Tensor<B, 3>,
    boxes: Tensor<B, 3>,
    image_sizes: &[(usize, usize)],
    threshold: f32,
    test: &DenseTestConfig,
) -> Result<Vec<Detections>> {
    let [n, a, c] = scores.dims();
    if boxes.dims() != [n, a, 4] || image_sizes.len() != n {
        return Err(DetError::Shape {
            op: "dense_detections",
            what: "boxes",
            got: boxes.dims().to_vec(),
            expected: format!("[{n}, {a}, 4], with {n} image sizes"),
        });
    }
    let host = |t: Tensor<B, 3>| -> Vec<f32> {
        t.into_data().convert::<f32>().to_vec().unwrap_or_default()
    };
    let (scores, boxes) = (host(scores), host(boxes));
    image_sizes
        .iter()
        .enumerate()
        .map(|(img, &size)| {
            let s = &scores[img * a * c..(img + 1) * a * c];
            let b = &boxes[img * a * 4..(img + 1) * a * 4];
            image_detections(s, b, c, size, threshold, test)
        })
        .collect()
}

/// [`dense_detections`] for one image: `scores` `[A·C]`, `boxes` `[A·4]`.
fn image_detections(
    scores: &[f32],
    boxes: &[f32],
    classes: usize,
    (h, w): (usize, usize),
    threshold: f32,
    test: &DenseTestConfig,
) -> Result<Detections> {
    let above: Vec<usize> = (0..scores.len())
        .filter(|&k| scores[k] >= threshold)
        .collect();
    let above_scores: Vec<f32> = above.iter().map(|&k| scores[k]).collect();
    let cand: Vec<usize> = top_k_slice(&above_scores, test.pre_nms_top_k)
        .into_iter()
        .map(|i| above[i])
        .collect();
    let (w, h) = (w as f32, h as f32);
    let cand_boxes: Vec<[f32; 4]> = cand
        .iter()
        .map(|&k| {
            let b = &boxes[(k / classes) * 4..][..4];
            [
                b[0].clamp(0.0, w),
                b[1].clamp(0.0, h),
                b[2].clamp(0.0, w),
                b[3].clamp(0.0, h),
            ]
        })
        .collect();
    let cand_scores: Vec<f32> = cand.iter().map(|&k| scores[k]).collect();
    let cand_labels: Vec<i64> = cand.iter().map(|&k| (k % classes) as i64).collect();
    let keep = batched_nms_slice(
        cand_boxes.as_flattened(),
        &cand_scores,
        &cand_labels,
        test.nms_iou,
    )?;
    let keep = &keep[..keep.len().min(test.max_detections)];
    Ok(Detections {
        boxes: keep.iter().map(|&i| cand_boxes[i]).collect(),
        scores: keep.iter().map(|&i| cand_scores[i]).collect(),
        classes: keep.iter().map(|&i| cand_labels[i] as usize).collect(),
    })
}
