//! ATSS: Adaptive Training Sample Selection (Zhang et al., CVPR 2020, Algorithm 1), the
//! assigner of ATSS, GLIP and DetCLIPv2. Follows mmdetection's `ATSSAssigner`:
//!
//! 1. for each ground-truth box and each pyramid level, the `top_k` anchors whose centres are
//!    closest (L2) to the box centre are candidates;
//! 2. the IoU threshold of the box is the mean plus the (unbiased) standard deviation of the
//!    candidates' IoUs; candidates with IoU ≥ threshold are positive
//! 3. only if the anchor centre lies inside the box (every side distance > 0.01);
//! 4. an anchor positive for several boxes goes to the one with the highest IoU.
//!
//! The assigner runs on the host: it is data-dependent, not differentiated, and its inputs
//! (anchors, ground truth) are small.

use crate::error::{DetError, Result};
use crate::ops::validate_box_slice;

/// Options of [`atss_assign`].
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AtssOptions {
    /// Candidates per level per ground-truth box (the paper and GLIP: 9).
    pub top_k: usize,
    /// Minimum distance of an anchor centre from each side of the box (mmdetection: 0.01).
    pub center_eps: f32,
    /// IoU in the `w = x2 − x1 + 1` convention (GLIP's `boxlist_iou`).
    #[serde(default)]
    pub plus_one: bool,
}

impl Default for AtssOptions {
    fn default() -> Self {
        Self {
            top_k: 9,
            center_eps: 0.01,
            plus_one: false,
        }
    }
}

/// What [`atss_assign`] decided for each anchor.
#[derive(Debug, Clone, PartialEq)]
pub struct AtssAssignment {
    /// For each anchor, the index of its ground-truth box, or `None` for background.
    pub gt_index: Vec<Option<usize>>,
    /// For each anchor, its IoU with the assigned box (0 for background).
    pub iou: Vec<f32>,
    /// For each ground-truth box, its IoU threshold (mean + std of its candidates).
    pub thresholds: Vec<f32>,
}

impl AtssAssignment {
    /// Indices of the positive anchors.
    pub fn positives(&self) -> Vec<usize> {
        self.gt_index
            .iter()
            .enumerate()
            .filter_map(|(i, g)| g.map(|_| i))
            .collect()
    }
}

fn iou(a: &[f32; 4], b: &[f32; 4], plus_one: bool) -> f32 {
    // torchvision box_iou (or maskrcnn-benchmark's boxlist_iou with +1), in f32.
    let o = if plus_one { 1.0 } else { 0.0 };
    let area_a = (a[2] - a[0] + o) * (a[3] - a[1] + o);
    let area_b = (b[2] - b[0] + o) * (b[3] - b[1] + o);
    let w = (a[2].min(b[2]) - a[0].max(b[0]) + o).max(0.0);
    let h = (a[3].min(b[3]) - a[1].max(b[1]) + o).max(0.0);
    let inter = w * h;
    inter / (area_a + area_b - inter)
}

/// Assigns anchors to ground-truth boxes with ATSS.
///
/// - `anchors`: all anchors, xyxy, levels concatenated in order
/// - `level_counts`: how many anchors each level has (sums to `anchors.len()`)
/// - `gt`: ground-truth boxes, xyxy
///
/// # Errors
/// Level counts that do not sum to the number of anchors, malformed boxes.
pub fn atss_assign(
    anchors: &[[f32; 4]],
    level_counts: &[usize],
    gt: &[[f32; 4]],
    options: &AtssOptions,
) -> Result<AtssAssignment> {
    let total: usize = level_counts.iter().sum();
    if total != anchors.len() {
        return Err(DetError::InvalidOption {
            op: "atss_assign",
            why: format!(
                "level counts sum to {total}, but {} anchors were given",
                anchors.len()
            ),
        });
    }
    if options.top_k == 0 {
        return Err(DetError::InvalidOption {
            op: "atss_assign",
            why: "top_k must be positive".into(),
        });
    }
    validate_box_slice("atss_assign", gt.as_flattened())?;
    validate_box_slice("atss_assign", anchors.as_flattened())?;
    let (na, ng) = (anchors.len(), gt.len());
    let mut result = AtssAssignment {
        gt_index: vec![None; na],
        iou: vec![0.0; na],
        thresholds: vec![0.0; ng],
    };
    if na == 0 || ng == 0 {
        return Ok(result);
    }
    let centre = |b: &[f32; 4]| ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let anchor_centres: Vec<(f32, f32)> = anchors.iter().map(centre).collect();
    // best[a] = (iou, gt) of the best positive gt so far.
    let mut best: Vec<Option<(f32, usize)>> = vec![None; na];
    for (g, gbox) in gt.iter().enumerate() {
        let (gx, gy) = centre(gbox);
        // 1. top-k closest anchor centres per level.
        let mut candidates = Vec::new();
        let mut start = 0;
        for &count in level_counts {
            let mut idx: Vec<usize> = (start..start + count).collect();
            let dist = |a: usize| {
                let (ax, ay) = anchor_centres[a];
                ((ax - gx).powi(2) + (ay - gy).powi(2)).sqrt()
            };
            idx.sort_by(|&a, &b| dist(a).total_cmp(&dist(b)));
            idx.truncate(options.top_k.min(count));
            candidates.extend(idx);
            start += count;
        }
        // 2. adaptive IoU threshold: mean + unbiased std.
        let ious: Vec<f32> = candidates
            .iter()
            .map(|&a| iou(&anchors[a], gbox, options.plus_one))
            .collect();
        let n = ious.len() as f32;
        let mean = ious.iter().sum::<f32>() / n;
        let var = if ious.len() > 1 {
            ious.iter().map(|v| (v - mean).powi(2)).sum::<f32>() / (n - 1.0)
        } else {
            f32::NAN // torch.std of one element is NaN: no candidate passes
        };
        let threshold = mean + var.sqrt();
        result.thresholds[g] = threshold;
        for (&a, &v) in candidates.iter().zip(&ious) {
            // `>=` is false for a NaN threshold, as in torch.
            if v.partial_cmp(&threshold).is_none_or(|o| o.is_lt()) {
                continue;
            }
            // 3. anchor centre inside the box.
            let (ax, ay) = anchor_centres[a];
            let inside = [ax - gbox[0], ay - gbox[1], gbox[2] - ax, gbox[3] - ay]
                .iter()
                .fold(f32::INFINITY, |m, &d| m.min(d))
                > options.center_eps;
            if !inside {
                continue;
            }
            // 4. keep the gt with the highest IoU (first one on ties).
            match best[a] {
                Some((bv, _)) if bv >= v => {}
                _ => best[a] = Some((v, g)),
            }
        }
    }
    for (a, b) in best.into_iter().enumerate() {
        if let Some((v, g)) = b {
            result.gt_index[a] = Some(g);
            result.iou[a] = v;
        }
    }
    Ok(result)
}
