//! GLIP's training targets and loss (released `ATSSLossComputation` with the dot-product token
//! loss, `maskrcnn_benchmark/modeling/rpn/loss.py`): ATSS assigns anchors to boxes; a positive
//! anchor's targets are the tokens of its box's phrase (the positive map); the loss is the
//! token-level sigmoid focal loss on the alignment logits (padding tokens excluded) over the
//! number of positives, GIoU of the decoded boxes weighted by the centerness targets over
//! their sum, and centerness BCE over the number of positives.

use std::ops::Range;

use burn::prelude::*;
use burn::tensor::TensorData;

use detclip_core::DetError;
use detclip_core::Result as DetResult;
use detclip_core::assign::{AtssOptions, atss_assign};
use detclip_core::data::Span;
use detclip_core::data::prompt::token_range;
use detclip_core::loss::{
    Reduction, centerness_loss, centerness_targets, giou_loss, sigmoid_focal_loss,
};
use serde::{Deserialize, Serialize};

use super::{GlipGeometry, GlipOutput};

/// The ground truth of one image: boxes (xyxy, input pixels) and, for each, the token indices
/// of its phrase in the prompt (the positive map's row).
#[derive(Debug, Clone, Default)]
pub struct GlipTarget {
    /// Boxes, xyxy.
    pub boxes: Vec<[f32; 4]>,
    /// For each box, the prompt tokens it is grounded to.
    pub tokens: Vec<Vec<usize>>,
}

/// The tokens covering the character spans of one phrase (the union of
/// [`token_range`] over the spans), from the tokenizer's offsets.
pub fn positive_tokens(offsets: &[(usize, usize)], spans: &[Span]) -> Vec<usize> {
    let mut tokens: Vec<usize> = spans
        .iter()
        .filter_map(|&s| token_range(offsets, s))
        .flat_map(Range::into_iter)
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// GLIP's loss settings (the released defaults).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipLossConfig {
    /// Focal α of the token loss (`FUSE_CONFIG.TOKEN_ALPHA`, 0.25).
    pub focal_alpha: f32,
    /// Focal γ of the token loss (`FUSE_CONFIG.TOKEN_GAMMA`, 2).
    pub focal_gamma: f32,
    /// ATSS candidates per level (`MODEL.ATSS.TOPK`, 9).
    pub atss_top_k: usize,
    /// Weight of the GIoU term (`MODEL.ATSS.REG_LOSS_WEIGHT`, 2).
    pub reg_weight: f32,
}

impl Default for GlipLossConfig {
    fn default() -> Self {
        Self {
            focal_alpha: 0.25,
            focal_gamma: 2.0,
            atss_top_k: 9,
            reg_weight: 2.0,
        }
    }
}

impl GlipLossConfig {
    /// The assigner's options.
    pub fn atss(&self) -> AtssOptions {
        AtssOptions {
            top_k: self.atss_top_k,
            // GLIP's boxlist_iou measures boxes as x2 − x1 + 1 wide.
            plus_one: true,
            ..AtssOptions::default()
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming the first bad value.
    pub fn validate(&self) -> DetResult<()> {
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "glip loss",
                why,
            })
        };
        if !(self.focal_alpha.is_finite() && (0.0..=1.0).contains(&self.focal_alpha)) {
            return bad(format!(
                "focal_alpha must be in [0, 1], got {}",
                self.focal_alpha
            ));
        }
        if !(self.focal_gamma.is_finite() && self.focal_gamma >= 0.0) {
            return bad(format!("focal_gamma must be ≥ 0, got {}", self.focal_gamma));
        }
        if !(self.reg_weight.is_finite() && self.reg_weight >= 0.0) {
            return bad(format!("reg_weight must be ≥ 0, got {}", self.reg_weight));
        }
        if self.atss_top_k == 0 {
            return bad("atss_top_k must be positive".into());
        }
        Ok(())
    }
}

/// The named loss terms, each `[1]`.
#[derive(Debug, Clone)]
pub struct GlipLosses<B: Backend> {
    /// Token-level focal loss on the alignment logits.
    pub token: Tensor<B, 1>,
    /// GIoU loss (already multiplied by `reg_weight`).
    pub giou: Tensor<B, 1>,
    /// Centerness BCE.
    pub centerness: Tensor<B, 1>,
    /// Number of positive anchors in the batch.
    pub num_positives: usize,
}

impl<B: Backend> GlipLosses<B> {
    /// The sum of the terms.
    pub fn total(&self) -> Tensor<B, 1> {
        self.token.clone() + self.giou.clone() + self.centerness.clone()
    }
}

/// Positive anchors of a batch, found on the host.
struct Positives {
    /// `image · A + anchor` per positive.
    rows: Vec<i64>,
    anchors: Vec<f32>,
    boxes: Vec<f32>,
    /// `[N, A, T]` 0/1 token targets.
    labels: Vec<f32>,
}

fn assign(
    targets: &[GlipTarget],
    anchors: &[[f32; 4]],
    counts: &[usize],
    tokens: usize,
    config: &GlipLossConfig,
) -> DetResult<Positives> {
    let a = anchors.len();
    let atss = config.atss();
    let mut p = Positives {
        rows: Vec::new(),
        anchors: Vec::new(),
        boxes: Vec::new(),
        labels: vec![0.0; targets.len() * a * tokens],
    };
    for (i, target) in targets.iter().enumerate() {
        if target.tokens.len() != target.boxes.len() {
            return Err(DetError::InvalidOption {
                op: "glip_loss",
                why: format!(
                    "image {i}: {} boxes but {} token lists",
                    target.boxes.len(),
                    target.tokens.len()
                ),
            });
        }
        if let Some(&t) = target.tokens.iter().flatten().find(|&&t| t >= tokens) {
            return Err(DetError::InvalidOption {
                op: "glip_loss",
                why: format!("image {i}: token {t} is outside the prompt of {tokens} tokens"),
            });
        }
        let assignment = atss_assign(anchors, counts, &target.boxes, &atss)?;
        for (k, gt) in assignment.gt_index.iter().enumerate() {
            let Some(g) = *gt else { continue };
            p.rows.push((i * a + k) as i64);
            p.anchors.extend_from_slice(&anchors[k]);
            p.boxes.extend_from_slice(&target.boxes[g]);
            for &t in &target.tokens[g] {
                p.labels[(i * a + k) * tokens + t] = 1.0;
            }
        }
    }
    Ok(p)
}

/// GLIP's loss for one batch of [`GlipOutput`]s of a model whose head has `geometry`.
///
/// # Shapes
/// - `text_mask`: `[N, T]` (1 for tokens, 0 for padding); `targets`: one per image
///
/// # Errors
/// [`DetError::Shape`] / [`DetError::InvalidOption`] when the batch, the mask or the targets
/// disagree with the outputs, or a box is malformed.
pub fn glip_loss<B: Backend>(
    out: &GlipOutput<B>,
    text_mask: Tensor<B, 2, Int>,
    targets: &[GlipTarget],
    config: &GlipLossConfig,
    geometry: &GlipGeometry,
) -> DetResult<GlipLosses<B>> {
    let logits = Tensor::cat(out.logits.clone(), 1);
    let [n, a, t] = logits.dims();
    if targets.len() != n || text_mask.dims() != [n, t] {
        return Err(DetError::Shape {
            op: "glip_loss",
            what: "text mask / targets",
            got: vec![targets.len(), text_mask.dims()[0], text_mask.dims()[1]],
            expected: format!("{n} targets and a [{n}, {t}] mask"),
        });
    }
    let levels = geometry.anchors.grid_anchors_host(&out.sizes)?;
    let counts: Vec<usize> = levels.iter().map(Vec::len).collect();
    let anchors: Vec<[f32; 4]> = levels.into_iter().flatten().collect();
    if anchors.len() != a {
        return Err(DetError::Shape {
            op: "glip_loss",
            what: "logits",
            got: vec![n, a, t],
            expected: format!("[{n}, {}, {t}]: one anchor per position", anchors.len()),
        });
    }
    let device = logits.device();
    let p = assign(targets, &anchors, &counts, t, config)?;
    let num_pos = p.rows.len();
    let norm = num_pos.max(1) as f64;

    let labels = Tensor::<B, 3>::from_data(TensorData::new(p.labels, [n, a, t]), &device);
    let valid = text_mask.float().reshape([n, 1, t]);
    let token = sigmoid_focal_loss(
        logits,
        labels,
        config.focal_alpha,
        config.focal_gamma,
        Reduction::None,
    )? * valid;
    let token = token.sum() / norm;

    let deltas = flatten_levels(&out.bbox_reg).reshape([n * a, 4]);
    let ctr_logits = flatten_levels(&out.centerness).reshape([n * a]);
    if num_pos == 0 {
        // Keep the graph connected: zero losses with the right gradients (none).
        return Ok(GlipLosses {
            token,
            giou: deltas.sum() * 0.0,
            centerness: ctr_logits.sum() * 0.0,
            num_positives: 0,
        });
    }
    let rows = Tensor::<B, 1, Int>::from_data(TensorData::new(p.rows, [num_pos]), &device);
    let anchor_t = Tensor::<B, 2>::from_data(TensorData::new(p.anchors, [num_pos, 4]), &device);
    let boxes = Tensor::<B, 2>::from_data(TensorData::new(p.boxes, [num_pos, 4]), &device);
    let centers = (anchor_t.clone().narrow(1, 0, 2) + anchor_t.clone().narrow(1, 2, 2)) / 2.0;
    let ctr_targets = centerness_targets(centers, boxes.clone())?;

    let pred = geometry
        .coder
        .decode(deltas.select(0, rows.clone()), anchor_t)?;
    let giou = giou_loss(pred, boxes, Reduction::None, 1e-7)?;
    let giou = (giou * ctr_targets.clone()).sum() / ctr_targets.clone().sum().clamp_min(1e-6)
        * config.reg_weight as f64;
    let centerness =
        centerness_loss(ctr_logits.select(0, rows), ctr_targets, Reduction::Sum)? / norm;
    Ok(GlipLosses {
        token,
        giou,
        centerness,
        num_positives: num_pos,
    })
}

/// `[N, C, H, W]` per level → `[N, Σ H·W, C]` (positions row-major, levels in order).
fn flatten_levels<B: Backend>(levels: &[Tensor<B, 4>]) -> Tensor<B, 3> {
    let flat = levels
        .iter()
        .map(|x| {
            let [n, c, h, w] = x.dims();
            x.clone().reshape([n, c, h * w]).swap_dims(1, 2)
        })
        .collect();
    Tensor::cat(flat, 1)
}
