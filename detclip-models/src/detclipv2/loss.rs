//! DetCLIPv2's losses (§3.3): for detection and grounding data
//! `L = L_align + α·L_reg + β·L_center` (sigmoid focal loss of the region–concept logits
//! with every other concept of the batch as a negative, GIoU, centerness BCE, on ATSS
//! targets), and for image-text pairs `λ·L_cts`, the text-to-image contrastive loss over
//! word–region alignment of the selected proposals ([`crate::align`]).

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::assign::{
    AtssOptions, LevelAnchors, atss_assign, decode_distances, decode_distances_batched,
};
use detclip_core::loss::{
    Reduction, centerness_loss, centerness_targets, giou_loss, sigmoid_focal_loss,
};

use super::head::HeadOutput;
use crate::align::{
    Aggregation, ProposalOptions, cross_scores, image_caption_similarity, select_proposals,
    text_to_image_contrastive,
};

/// The loss weights and settings.
///
/// Defaults: α = 2, β = 1 (the paper's text, and the GIoU/centerness weights of the ATSS
/// configuration the head follows; its Table 9 lists α = 1, β = 2), λ = 0.1, τ = 0.5, max
/// matching (the paper's final choice), k = 100 proposals.
#[derive(Config, Debug)]
pub struct DetClipV2LossConfig {
    /// Focal α (class balance).
    #[config(default = 0.25)]
    pub focal_alpha: f32,
    /// Focal γ.
    #[config(default = 2.0)]
    pub focal_gamma: f32,
    /// ATSS candidates per level.
    #[config(default = 9)]
    pub atss_top_k: usize,
    /// α: weight of the GIoU term.
    #[config(default = 2.0)]
    pub reg_weight: f32,
    /// β: weight of the centerness term.
    #[config(default = 1.0)]
    pub centerness_weight: f32,
    /// λ: weight of the image-text contrastive term.
    #[config(default = 0.1)]
    pub contrastive_weight: f32,
    /// τ: temperature of the contrastive loss.
    #[config(default = 0.5)]
    pub tau: f32,
    /// Region aggregation for image-text pairs (τ_t lives in [`Aggregation::Softmax`]).
    #[config(default = "Aggregation::Max")]
    pub aggregation: Aggregation,
    /// Proposal selection for image-text pairs.
    #[config(default = "ProposalOptions::new()")]
    pub proposals: ProposalOptions,
}

/// The boxes of one detection or grounding image and their concept (an index into the
/// batch's concepts; `None`: a box of no listed concept, which still trains the boxes).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ImageBoxes {
    /// xyxy boxes in pixels of the batch.
    pub boxes: Vec<[f32; 4]>,
    /// One concept per box.
    pub labels: Vec<Option<usize>>,
}

/// The named, weighted loss terms of a batch (each `[1]`).
pub type Terms<B> = Vec<(&'static str, Tensor<B, 1>)>;

struct AtssTargets {
    cls: Vec<f32>,
    pos_flat: Vec<i64>,
    pos_anchor: Vec<i64>,
    pos_boxes: Vec<f32>,
}

fn index<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

impl DetClipV2LossConfig {
    /// Checks weights and temperatures.
    ///
    /// # Errors
    /// [`detclip_core::DetError::InvalidOption`] naming the bad value.
    pub fn validate(&self) -> detclip_core::Result<()> {
        self.aggregation.validate()?;
        let ok = [
            self.reg_weight,
            self.centerness_weight,
            self.contrastive_weight,
        ]
        .iter()
        .all(|w| w.is_finite() && *w >= 0.0)
            && self.tau > 0.0
            && self.atss_top_k > 0
            && self.proposals.top_k > 0;
        if ok {
            Ok(())
        } else {
            Err(detclip_core::DetError::InvalidOption {
                op: "DetCLIPv2 loss",
                why: "weights must be ≥ 0, τ > 0, atss_top_k and proposals.top_k ≥ 1".into(),
            })
        }
    }

    fn atss_targets(
        &self,
        anchors: &LevelAnchors,
        images: &[ImageBoxes],
        concepts: usize,
    ) -> detclip_core::Result<AtssTargets> {
        let a = anchors.len();
        let options = AtssOptions {
            top_k: self.atss_top_k,
            ..AtssOptions::default()
        };
        let mut t = AtssTargets {
            cls: Vec::with_capacity(images.len() * a * concepts),
            pos_flat: vec![],
            pos_anchor: vec![],
            pos_boxes: vec![],
        };
        for (row, image) in images.iter().enumerate() {
            let assignment = atss_assign(&anchors.boxes, &anchors.counts, &image.boxes, &options)?;
            let mut cls = vec![0.0f32; a * concepts];
            for (anchor, g) in assignment.gt_index.iter().enumerate() {
                let Some(g) = *g else { continue };
                if let Some(label) = image.labels[g].filter(|&l| l < concepts) {
                    cls[anchor * concepts + label] = 1.0;
                }
                t.pos_flat.push((row * a + anchor) as i64);
                t.pos_anchor.push(anchor as i64);
                t.pos_boxes.extend(image.boxes[g]);
            }
            t.cls.extend(cls);
        }
        Ok(t)
    }

    /// `align` (focal, summed and divided by the positives), `reg` (α·GIoU) and `centerness`
    /// (β·BCE) of detection or grounding images.
    ///
    /// # Shapes
    /// - `out`: the head's outputs for `N` images; `logits`: `[N, A, C]`; `images`: `N`
    ///
    /// # Errors
    /// [`detclip_core::DetError::Shape`] when `images` does not match; malformed boxes.
    pub fn detection_terms<B: Backend>(
        &self,
        out: &HeadOutput<B>,
        logits: Tensor<B, 3>,
        anchors: &LevelAnchors,
        images: &[ImageBoxes],
    ) -> detclip_core::Result<Terms<B>> {
        let [n, a, c] = logits.dims();
        if images.len() != n || anchors.len() != a {
            return Err(detclip_core::DetError::Shape {
                op: "DetCLIPv2 detection loss",
                what: "logits",
                got: vec![n, a, c],
                expected: format!("[{}, {}, C]", images.len(), anchors.len()),
            });
        }
        let device = logits.device();
        let t = self.atss_targets(anchors, images, c)?;
        let mut terms = Terms::new();
        let num_pos = t.pos_flat.len().max(1) as f32;
        let cls_targets = Tensor::<B, 3>::from_data(TensorData::new(t.cls, [n, a, c]), &device);
        let focal = sigmoid_focal_loss(
            logits,
            cls_targets,
            self.focal_alpha,
            self.focal_gamma,
            Reduction::Sum,
        )?;
        terms.push(("align", focal.reshape([1]) / num_pos));
        if t.pos_flat.is_empty() {
            return Ok(terms);
        }
        let p = t.pos_flat.len();
        let flat = index::<B>(&t.pos_flat, &device);
        let per_anchor = index::<B>(&t.pos_anchor, &device);
        let (centres, halves) = anchors.tensors::<B>(&device);
        let raw = out.bbox.clone().reshape([n * a, 4]).select(0, flat.clone());
        let centres = centres.select(0, per_anchor.clone());
        let pred = decode_distances(raw, centres.clone(), halves.select(0, per_anchor));
        let gt = Tensor::<B, 2>::from_data(TensorData::new(t.pos_boxes, [p, 4]), &device);
        let giou = giou_loss(pred, gt.clone(), Reduction::Mean, 1e-7)?;
        terms.push(("reg", giou * self.reg_weight));
        let ctr_target = centerness_targets(centres, gt)?;
        let ctr_logits = out.centerness.clone().reshape([n * a]).select(0, flat);
        let ctr = centerness_loss(ctr_logits, ctr_target, Reduction::Mean)?;
        terms.push(("centerness", ctr * self.centerness_weight));
        Ok(terms)
    }

    /// `contrastive`: λ · the text-to-image contrastive loss of image-text pairs. Each image's
    /// proposals are chosen by their objectness against `batch_concepts` (every concept of
    /// the batch), NMS and the top-k; caption `i`'s concepts are aligned with every image's
    /// proposals.
    ///
    /// # Shapes
    /// - `out`: the head's outputs for `N` images; `captions`: `[N, M, D]` unit-length concept
    ///   embeddings of each caption with `caption_mask` `[N, M]`; `batch_concepts`: `[C, D]`
    ///
    /// # Errors
    /// Shape mismatches; a batch of one pair (a contrastive loss needs negatives).
    pub fn image_text_terms<B: Backend>(
        &self,
        out: &HeadOutput<B>,
        anchors: &LevelAnchors,
        captions: Tensor<B, 3>,
        caption_mask: Tensor<B, 2>,
        batch_concepts: Tensor<B, 2>,
    ) -> detclip_core::Result<Terms<B>> {
        let n = out.regions.dims()[0];
        if n < 2 || captions.dims()[0] != n {
            return Err(detclip_core::DetError::Shape {
                op: "DetCLIPv2 image-text loss",
                what: "captions",
                got: captions.dims().to_vec(),
                expected: format!("[{n}, M, D] with at least two pairs"),
            });
        }
        let boxes = decode_distances_batched(out.bbox.clone(), anchors);
        let selected =
            select_proposals(out.regions.clone(), boxes, batch_concepts, &self.proposals)?;
        let proposals = selected.gather(out.regions.clone());
        let scores = cross_scores(captions, proposals)?;
        let sim = image_caption_similarity(
            scores,
            caption_mask,
            selected.mask.clone(),
            self.aggregation,
        )?;
        let loss = text_to_image_contrastive(sim, self.tau)?;
        Ok(vec![("contrastive", loss * self.contrastive_weight)])
    }
}
