//! Word–region alignment for image-text pairs (DetCLIPv2, Yao et al., CVPR 2023, §3.2).
//!
//! An image-text pair has no boxes, so the detector's proposals and the caption's concepts
//! (noun phrases) are matched softly:
//!
//! - region–concept scores `s_{j,k} = f_T_j · f_P_k` ([`region_concept_scores`],
//!   [`cross_scores`]);
//! - the image–caption similarity aggregates them per concept over the proposals, then
//!   averages over the caption's concepts ([`Aggregation`]):
//!   - max matching: `s = 1/M Σ_j max_k s_{j,k}` (the paper's final choice);
//!   - soft-max weighting: `s = 1/M Σ_j Σ_k softmax_k(s_{j,k}/τ_t) · s_{j,k}`;
//! - the text-to-image contrastive loss over the batch (Eq. 3)
//!   `L = −1/B Σ_i log( exp(s(x_i^I, x_i^T)/τ) / Σ_j exp(s(x_j^I, x_i^T)/τ) )`
//!   ([`text_to_image_contrastive`]);
//! - the proposals of an image are chosen by their objectness, the maximum similarity to every
//!   concept of the batch, then NMS and the top-k ([`select_proposals`]).
//!
//! Captions have different numbers of concepts and images may keep fewer than `k` proposals,
//! so both sides carry a `{0, 1}` float mask; padded entries never contribute.

use burn::prelude::*;
use burn::tensor::activation::{log_softmax, softmax};
use detclip_core::DetError;
use detclip_core::ops::nms_slice;

/// A large negative number added to masked scores before a max or a soft-max (finite, so
/// that an all-masked row gives finite values that the concept mask then removes).
const MASKED: f32 = 1.0e4;

/// How the region–concept scores of one image and one caption become one similarity.
#[derive(Config, Debug, Copy, PartialEq)]
pub enum Aggregation {
    /// `1/M Σ_j max_k s_{j,k}`: each concept is matched to its best proposal.
    Max,
    /// `1/M Σ_j Σ_k softmax_k(s_{j,k}/τ_t) s_{j,k}`: each concept is a soft-max weighted mean
    /// over the proposals, with temperature `tau` (τ_t).
    Softmax {
        /// The temperature τ_t (> 0); small values approach [`Aggregation::Max`].
        tau: f32,
    },
}

impl Aggregation {
    /// Checks the temperature.
    pub fn validate(&self) -> detclip_core::Result<()> {
        match *self {
            Aggregation::Softmax { tau } if !(tau.is_finite() && tau > 0.0) => {
                Err(DetError::InvalidOption {
                    op: "Aggregation",
                    why: format!("the soft-max temperature must be positive, got {tau}"),
                })
            }
            _ => Ok(()),
        }
    }
}

fn shape_error(op: &'static str, what: &'static str, got: &[usize], expected: String) -> DetError {
    DetError::Shape {
        op,
        what,
        got: got.to_vec(),
        expected,
    }
}

/// Region–concept scores of matching pairs: `s[b, j, k] = concepts[b, j] · proposals[b, k]`.
///
/// # Shapes
/// - `concepts`: `[B, M, D]`; `proposals`: `[B, K, D]`; out `[B, M, K]`
///
/// # Errors
/// [`DetError::Shape`] when the batch sizes or the widths differ.
pub fn region_concept_scores<B: Backend>(
    concepts: Tensor<B, 3>,
    proposals: Tensor<B, 3>,
) -> detclip_core::Result<Tensor<B, 3>> {
    let [b, _, d] = concepts.dims();
    let pd = proposals.dims();
    if pd[0] != b || pd[2] != d {
        return Err(shape_error(
            "region_concept_scores",
            "proposals",
            &pd,
            format!("[{b}, K, {d}] (the concepts are [{b}, M, {d}])"),
        ));
    }
    Ok(concepts.matmul(proposals.swap_dims(1, 2)))
}

/// Region–concept scores of every caption against every image:
/// `s[t, i, j, k] = concepts[t, j] · proposals[i, k]`.
///
/// # Shapes
/// - `concepts`: `[T, M, D]`; `proposals`: `[I, K, D]`; out `[T, I, M, K]`
///
/// # Errors
/// [`DetError::Shape`] when the widths differ.
pub fn cross_scores<B: Backend>(
    concepts: Tensor<B, 3>,
    proposals: Tensor<B, 3>,
) -> detclip_core::Result<Tensor<B, 4>> {
    let [t, m, d] = concepts.dims();
    let [i, k, pd] = proposals.dims();
    if pd != d {
        return Err(shape_error(
            "cross_scores",
            "proposals",
            &[i, k, pd],
            format!("[I, K, {d}] (the concepts are [{t}, {m}, {d}])"),
        ));
    }
    // One [T·M, D] × [D, I·K] product: broadcasting both operands to [T, I, …] first would
    // materialise I copies of the concepts and T copies of the proposals.
    let flat = concepts
        .reshape([t * m, d])
        .matmul(proposals.reshape([i * k, d]).transpose());
    Ok(flat.reshape([t, m, i, k]).swap_dims(1, 2))
}

/// Image–caption similarities from region–concept scores.
///
/// `scores[t, i, j, k]` scores concept `j` of caption `t` against proposal `k` of image `i`;
/// `concept_mask[t, j]` and `proposal_mask[i, k]` are 1 for real entries and 0 for padding.
/// Returns `sim[t, i]`, the similarity of caption `t` and image `i`, averaged over the
/// caption's real concepts (0 for a caption with none).
///
/// # Shapes
/// - `scores`: `[T, I, M, K]`; `concept_mask`: `[T, M]`; `proposal_mask`: `[I, K]`;
///   out `[T, I]`
///
/// # Errors
/// [`DetError::Shape`] when the masks do not match the scores; an invalid temperature.
pub fn image_caption_similarity<B: Backend>(
    scores: Tensor<B, 4>,
    concept_mask: Tensor<B, 2>,
    proposal_mask: Tensor<B, 2>,
    aggregation: Aggregation,
) -> detclip_core::Result<Tensor<B, 2>> {
    aggregation.validate()?;
    let [t, i, m, k] = scores.dims();
    if concept_mask.dims() != [t, m] {
        return Err(shape_error(
            "image_caption_similarity",
            "concept_mask",
            &concept_mask.dims(),
            format!("[{t}, {m}]"),
        ));
    }
    if proposal_mask.dims() != [i, k] {
        return Err(shape_error(
            "image_caption_similarity",
            "proposal_mask",
            &proposal_mask.dims(),
            format!("[{i}, {k}]"),
        ));
    }
    Ok(aggregate(
        scores,
        concept_mask.reshape([t, 1, m]),
        proposal_mask.reshape([1, i, 1, k]),
        aggregation,
    ))
}

/// Per-concept aggregation over proposals, then the mean over real concepts.
///
/// # Shapes
/// - `scores`: `[T, I, M, K]`; `concept_mask`: `[T, 1, M]`; `proposal_mask`: `[T or 1, I, 1, K]`;
///   out `[T, I]`
fn aggregate<B: Backend>(
    scores: Tensor<B, 4>,
    concept_mask: Tensor<B, 3>,
    proposal_mask: Tensor<B, 4>,
    aggregation: Aggregation,
) -> Tensor<B, 2> {
    let [t, i, m, _] = scores.dims();
    // Padded proposals sink to a large negative score: they win no max and get no weight.
    let penalty = (proposal_mask.ones_like() - proposal_mask).mul_scalar(MASKED);
    let masked = scores.clone() - penalty;
    let per_concept: Tensor<B, 3> = match aggregation {
        Aggregation::Max => masked.max_dim(3).reshape([t, i, m]),
        Aggregation::Softmax { tau } => {
            let weights = softmax(masked.div_scalar(tau), 3);
            (weights * scores).sum_dim(3).reshape([t, i, m])
        }
    };
    let count = concept_mask
        .clone()
        .sum_dim(2)
        .clamp_min(1.0)
        .reshape([t, 1]);
    (per_concept * concept_mask).sum_dim(2).reshape([t, i]) / count
}

/// The similarity of each caption with its own image only (the diagonal of
/// [`image_caption_similarity`] without the `B×B` tensor): `sim[b]` for pair `b`.
///
/// # Shapes
/// - `concepts`: `[B, M, D]`; `concept_mask`: `[B, M]`; `proposals`: `[B, K, D]`;
///   `proposal_mask`: `[B, K]`; out `[B]`
///
/// # Errors
/// As [`region_concept_scores`] and [`image_caption_similarity`].
pub fn paired_similarity<B: Backend>(
    concepts: Tensor<B, 3>,
    concept_mask: Tensor<B, 2>,
    proposals: Tensor<B, 3>,
    proposal_mask: Tensor<B, 2>,
    aggregation: Aggregation,
) -> detclip_core::Result<Tensor<B, 1>> {
    aggregation.validate()?;
    let scores = region_concept_scores(concepts, proposals)?;
    let [b, m, k] = scores.dims();
    if concept_mask.dims() != [b, m] {
        return Err(shape_error(
            "paired_similarity",
            "concept_mask",
            &concept_mask.dims(),
            format!("[{b}, {m}]"),
        ));
    }
    if proposal_mask.dims() != [b, k] {
        return Err(shape_error(
            "paired_similarity",
            "proposal_mask",
            &proposal_mask.dims(),
            format!("[{b}, {k}]"),
        ));
    }
    let sim = aggregate(
        scores.reshape([b, 1, m, k]),
        concept_mask.reshape([b, 1, m]),
        proposal_mask.reshape([b, 1, 1, k]),
        aggregation,
    );
    Ok(sim.reshape([b]))
}

/// The text-to-image contrastive loss (DetCLIPv2 Eq. 3): for each caption `i`, the
/// cross-entropy of picking its own image among the batch's images,
/// `L = −1/B Σ_i log( exp(sim[i, i]/τ) / Σ_j exp(sim[i, j]/τ) )`.
///
/// # Shapes
/// - `sim`: `[B, B]`, `sim[i, j]` = similarity of caption `i` and image `j`; out `[1]`
///
/// # Errors
/// [`DetError::Shape`] for a non-square or empty matrix; [`DetError::InvalidOption`] for
/// `tau ≤ 0`.
pub fn text_to_image_contrastive<B: Backend>(
    sim: Tensor<B, 2>,
    tau: f32,
) -> detclip_core::Result<Tensor<B, 1>> {
    let [t, i] = sim.dims();
    if t != i || t == 0 {
        return Err(shape_error(
            "text_to_image_contrastive",
            "sim",
            &[t, i],
            "[B, B] with B ≥ 1".into(),
        ));
    }
    if !(tau.is_finite() && tau > 0.0) {
        return Err(DetError::InvalidOption {
            op: "text_to_image_contrastive",
            why: format!("the temperature must be positive, got {tau}"),
        });
    }
    let log_p = log_softmax(sim.div_scalar(tau), 1);
    let eye = Tensor::<B, 2>::eye(t, &log_p.device());
    Ok((log_p * eye).sum().neg().div_scalar(t as f32).reshape([1]))
}

/// Options of [`select_proposals`].
#[derive(Config, Debug, Copy, PartialEq)]
pub struct ProposalOptions {
    /// Proposals kept per image after NMS (the paper's k = 100).
    #[config(default = 100)]
    pub top_k: usize,
    /// Candidates (by objectness) that enter NMS.
    #[config(default = 1000)]
    pub pre_nms_top_k: usize,
    /// NMS IoU threshold.
    #[config(default = 0.5)]
    pub nms_iou: f32,
}

/// The proposals an image-text batch is aligned with.
#[derive(Debug, Clone)]
pub struct SelectedProposals<B: Backend> {
    /// `[N, k]` indices into each image's regions (padding repeats index 0).
    pub index: Tensor<B, 2, Int>,
    /// `[N, k]`, 1 for a kept proposal and 0 for padding.
    pub mask: Tensor<B, 2>,
    /// How many proposals each image kept.
    pub kept: Vec<usize>,
}

impl<B: Backend> SelectedProposals<B> {
    /// Gathers the selected rows of per-region features.
    ///
    /// # Shapes
    /// - `features`: `[N, A, D]`; out `[N, k, D]`
    pub fn gather(&self, features: Tensor<B, 3>) -> Tensor<B, 3> {
        let [n, k] = self.index.dims();
        let d = features.dims()[2];
        let index = self.index.clone().reshape([n, k, 1]).expand([n, k, d]);
        features.gather(1, index)
    }
}

/// Chooses each image's proposals for word–region alignment (DetCLIPv2 §3.2): a region's
/// objectness is its maximum similarity to all concepts of the batch; the `pre_nms_top_k`
/// most object-like regions go through NMS, and the first `top_k` survivors are kept.
///
/// The choice is not differentiated (it reads the scores back to the host, as NMS does);
/// the alignment loss then flows through the gathered embeddings.
///
/// # Shapes
/// - `regions`: `[N, A, D]`; `boxes`: `[N, A, 4]` xyxy; `concepts`: `[C, D]`
///
/// # Errors
/// [`DetError::Shape`] on mismatched shapes; [`DetError::InvalidOption`] for `top_k = 0` or
/// no concept; NMS errors for invalid boxes.
pub fn select_proposals<B: Backend>(
    regions: Tensor<B, 3>,
    boxes: Tensor<B, 3>,
    concepts: Tensor<B, 2>,
    options: &ProposalOptions,
) -> detclip_core::Result<SelectedProposals<B>> {
    let [n, a, d] = regions.dims();
    let [c, cd] = concepts.dims();
    if boxes.dims() != [n, a, 4] {
        return Err(shape_error(
            "select_proposals",
            "boxes",
            &boxes.dims(),
            format!("[{n}, {a}, 4]"),
        ));
    }
    if cd != d {
        return Err(shape_error(
            "select_proposals",
            "concepts",
            &[c, cd],
            format!("[C, {d}]"),
        ));
    }
    if options.top_k == 0 || c == 0 {
        return Err(DetError::InvalidOption {
            op: "select_proposals",
            why: format!(
                "need top_k ≥ 1 and at least one concept, got top_k = {} and {c} concepts",
                options.top_k
            ),
        });
    }
    let device = regions.device();
    let objectness = regions
        .detach()
        .matmul(
            concepts
                .detach()
                .transpose()
                .reshape([1, d, c])
                .expand([n, d, c]),
        )
        .max_dim(2)
        .reshape([n, a]);
    let scores = host(objectness)?;
    let boxes = host(boxes.detach())?;
    let k = options.top_k.min(a);
    let (mut index, mut mask, mut kept) = (Vec::with_capacity(n * k), Vec::new(), Vec::new());
    for img in 0..n {
        let s = &scores[img * a..(img + 1) * a];
        let b = &boxes[img * a * 4..(img + 1) * a * 4];
        let candidates = detclip_core::ops::top_k_slice(s, options.pre_nms_top_k.max(k));
        let cand_boxes: Vec<f32> = candidates
            .iter()
            .flat_map(|&r| b[r * 4..r * 4 + 4].iter().copied())
            .collect();
        let cand_scores: Vec<f32> = candidates.iter().map(|&r| s[r]).collect();
        let keep = nms_slice(&cand_boxes, &cand_scores, options.nms_iou)?;
        let chosen: Vec<i64> = keep
            .into_iter()
            .take(k)
            .map(|i| candidates[i] as i64)
            .collect();
        kept.push(chosen.len());
        mask.extend((0..k).map(|j| if j < chosen.len() { 1.0f32 } else { 0.0 }));
        index.extend((0..k).map(|j| chosen.get(j).copied().unwrap_or(0)));
    }
    Ok(SelectedProposals {
        index: Tensor::from_data(TensorData::new(index, [n, k]), &device),
        mask: Tensor::from_data(TensorData::new(mask, [n, k]), &device),
        kept,
    })
}

fn host<B: Backend, const D: usize>(t: Tensor<B, D>) -> detclip_core::Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec()
        .map_err(|e| DetError::InvalidOption {
            op: "select_proposals",
            why: format!("cannot read scores back: {e:?}"),
        })
}
