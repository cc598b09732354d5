//! `detclipv2`: DetCLIPv2 (Yao et al., CVPR 2023) — joint training on detection, grounding and
//! image-text pairs, one source per iteration, each at its own batch size and resolution.
//!
//! - Model: [`DetClipV2`] (ResNet or Swin + FPN + an ATSS head whose classification branch
//!   starts with a modulated deformable conv; CLIP-style text tower, one embedding per
//!   concept). On the synthetic world the text tower reads hashed *word* ids
//!   ([`HashedWordTokenizer`](detclip_models::detclipv2::HashedWordTokenizer)): a held-out name made of seen words (`red ring`) is a new
//!   sequence of known tokens.
//! - Detection and grounding batches: ATSS targets; `align` (sigmoid focal over every concept
//!   of the source's vocabulary, the negatives), `reg` (α·GIoU), `centerness` (β·BCE).
//!   Grounding samples are scored against their source's concept names, like detection.
//! - Image-text batches (no boxes): proposals chosen by their objectness against the batch's
//!   concepts, NMS, top-k; `contrastive` (λ · the text-to-image contrastive loss over max or
//!   soft-max word–region aggregation, [`detclip_models::align`]).
//! - Inference: the vocabulary is encoded once
//!   ([`ConceptCache`](detclip_models::detclipv2::ConceptCache)) and the model detects
//!   ([`DetClipV2::detect`]): score `√(σ(logit) · σ(centerness))`, class-wise NMS.

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::assign::LevelAnchors;
use detclip_core::data::{Batch, Sample, SourceKind, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::{DetError, Result};
use detclip_models::dense::DenseTestConfig;
use detclip_models::detclipv2::{
    DetClipV2, DetClipV2Config, DetClipV2LossConfig, HeadOutput, ImageBoxes,
};
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig, SyntheticSplit};
use crate::learner::LearnerConfig;
use crate::recipe::{Detected, LossTerms, Recipe};

/// The `detclipv2` recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetClipV2Recipe {
    /// The model.
    pub model: DetClipV2Config,
    /// The loss weights (α, β, λ, τ, aggregation and its τ_t, proposals).
    pub loss: DetClipV2LossConfig,
    /// Inference.
    pub test: DenseTestConfig,
    /// Training sources and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
}

/// A slice of the preset's world: 96–144 px images with up to three objects of 20 px or more.
fn world(seed: u64, images: u64, kind: SourceKind, split: SyntheticSplit) -> SyntheticConfig {
    SyntheticConfig {
        split,
        ..SyntheticConfig::new(seed, images, (96, 144), (3, 20), kind)
    }
}

impl DetClipV2Recipe {
    /// The synthetic-world preset: the small model, jointly trained on a detection source
    /// (batch 8 at 96 px), a grounding source (batch 4 at 128 px) and an image-text source
    /// (batch 16 at 64 px: low resolution, large batches, as DetCLIPv2 does) whose captions
    /// mention held-out concepts (test-split images of another world seed than the
    /// evaluation set's). Evaluation: 150 test-split images.
    pub fn synthetic() -> Self {
        let mut detection = SourceConfig::synthetic(
            "detection",
            world(1, 2000, SourceKind::Detection, SyntheticSplit::Train),
            8,
            vec![96],
        );
        detection.weight = 2.0;
        let grounding = SourceConfig::synthetic(
            "grounding",
            world(2, 1000, SourceKind::Grounding, SyntheticSplit::Train),
            4,
            vec![128],
        );
        let captions = SourceConfig::synthetic(
            "captions",
            world(4, 2000, SourceKind::ImageText, SyntheticSplit::Test),
            16,
            vec![64],
        );
        Self {
            model: DetClipV2Config::small(),
            // λ = 1 rather than the paper's 0.1: a run of a hundred-odd steps on two CPU cores
            // sees a few dozen image-text batches, and at 0.1 the contrastive term barely
            // moves the embeddings in that time.
            loss: DetClipV2LossConfig::new().with_contrastive_weight(1.0),
            test: DenseTestConfig {
                short_side: 96,
                max_long: Some(144),
                pre_nms_top_k: 300,
                nms_iou: 0.5,
                max_detections: 50,
            },
            data: DataConfig {
                sources: vec![detection, grounding, captions],
                eval: Some(world(3, 150, SourceKind::Grounding, SyntheticSplit::Test).into()),
                size_divisor: 32,
            },
            learner: {
                let mut l = LearnerConfig::adamw(90, 2e-3);
                l.schedule.warmup_steps = 10;
                l.checkpoint_every = 0;
                l
            },
        }
    }

    /// The experiment's baseline: [`DetClipV2Recipe::synthetic`] with the detection source
    /// only.
    pub fn detection_only() -> Self {
        let mut r = Self::synthetic();
        r.data.sources.retain(|s| s.name == "detection");
        r
    }

    /// The experiment's treatment: the detection source and the image-text source.
    pub fn detection_and_captions() -> Self {
        let mut r = Self::synthetic();
        r.data.sources.retain(|s| s.name != "grounding");
        r
    }

    /// A tiny preset for tests: all three sources at 64 px, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        for s in &mut r.data.sources {
            if let DatasetConfig::Synthetic(w) = &mut s.dataset {
                w.images = 16;
                w.min_side = 64;
                w.max_side = 80;
                w.max_objects = 2;
                w.min_object = 16;
            }
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = s.batch_size.min(4);
        }
        if let Some(crate::data::EvalConfig::Synthetic(e)) = &mut r.data.eval {
            e.images = 4;
            e.min_side = 64;
            e.max_side = 80;
            e.min_object = 16;
        }
        r.test.short_side = 64;
        r.test.max_long = Some(96);
        r.learner.steps = 30;
        r.learner.schedule.warmup_steps = 3;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }
}

fn rows_of<B: Backend>(out: &HeadOutput<B>, rows: &[usize]) -> HeadOutput<B> {
    if rows.len() == out.regions.dims()[0] {
        return out.clone();
    }
    let device = out.regions.device();
    let index = Tensor::<B, 1, Int>::from_data(
        TensorData::new(
            rows.iter().map(|&r| r as i64).collect::<Vec<_>>(),
            [rows.len()],
        ),
        &device,
    );
    HeadOutput {
        regions: out.regions.clone().select(0, index.clone()),
        bbox: out.bbox.clone().select(0, index.clone()),
        centerness: out.centerness.clone().select(0, index),
        sizes: out.sizes.clone(),
    }
}

/// A detection or grounding sample's boxes and their concept in `vocabulary`.
fn image_boxes(sample: &Sample, vocabulary: &[String]) -> ImageBoxes {
    let (boxes, labels) = sample
        .training_instances()
        .map(|i| {
            let label = i.concepts.first().and_then(|&k| {
                vocabulary
                    .iter()
                    .position(|v| *v == sample.concepts[k].name)
            });
            (i.bbox, label)
        })
        .unzip();
    ImageBoxes { boxes, labels }
}

/// The captions' concepts as rows into the batch's distinct names: `(names, index [T·M],
/// mask [T·M], M)`, padding pointing at row 0 with mask 0.
fn caption_concepts(samples: &[&Sample]) -> (Vec<String>, Vec<i64>, Vec<f32>, usize) {
    let mut names: Vec<String> = Vec::new();
    let per_caption: Vec<Vec<usize>> = samples
        .iter()
        .map(|s| {
            let mut rows: Vec<usize> = Vec::new();
            for c in &s.concepts {
                let row = match names.iter().position(|n| *n == c.name) {
                    Some(r) => r,
                    None => {
                        names.push(c.name.clone());
                        names.len() - 1
                    }
                };
                if !rows.contains(&row) {
                    rows.push(row);
                }
            }
            rows
        })
        .collect();
    let m = per_caption.iter().map(Vec::len).max().unwrap_or(0).max(1);
    let (mut index, mut mask) = (Vec::new(), Vec::new());
    for rows in &per_caption {
        for j in 0..m {
            index.push(rows.get(j).copied().unwrap_or(0) as i64);
            mask.push(if j < rows.len() { 1.0 } else { 0.0 });
        }
    }
    (names, index, mask, m)
}

impl DetClipV2Recipe {
    fn image_text_loss<B: DetclipOps>(
        &self,
        model: &DetClipV2<B>,
        out: &HeadOutput<B>,
        anchors: &LevelAnchors,
        samples: &[&Sample],
    ) -> Result<Vec<(&'static str, Tensor<B, 1>)>> {
        let device = out.regions.device();
        let (names, index, mask, m) = caption_concepts(samples);
        if names.is_empty() {
            return Ok(Vec::new());
        }
        let t = samples.len();
        let concepts = model.encode_concepts(&names)?;
        let d = concepts.dims()[1];
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [t * m]), &device);
        let captions = concepts.clone().select(0, index).reshape([t, m, d]);
        let mask = Tensor::<B, 2>::from_data(TensorData::new(mask, [t, m]), &device);
        self.loss
            .image_text_terms(out, anchors, captions, mask, concepts)
    }
}

impl Recipe for DetClipV2Recipe {
    const NAME: &'static str = "detclipv2";
    type Model<B: Backend> = DetClipV2<B>;
    type Context = ();

    fn build<B: Backend>(&self, device: &B::Device) -> Result<DetClipV2<B>> {
        self.model.init(device)
    }

    fn context(&self) -> Result<()> {
        Ok(())
    }

    fn learner(&self) -> &LearnerConfig {
        &self.learner
    }

    fn data(&self) -> &DataConfig {
        &self.data
    }

    fn test_transform(&self) -> TestTransform {
        self.test.transform()
    }

    fn validate(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        self.test.validate()?;
        self.loss.validate()?;
        for s in &self.data.sources {
            let pairs = matches!(
                &s.dataset,
                DatasetConfig::Synthetic(w) if w.kind == SourceKind::ImageText
            ) || matches!(s.dataset, DatasetConfig::Pairs { .. });
            if pairs && s.batch_size < 2 {
                return Err(DetError::InvalidOption {
                    op: "detclipv2",
                    why: format!(
                        "image-text source `{}` needs batch_size ≥ 2 (the contrastive loss's \
                         negatives are the other images of the batch)",
                        s.name
                    ),
                });
            }
        }
        Ok(())
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        _cx: &(),
        model: &DetClipV2<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let out = model.forward_image(batch.images.clone())?;
        let anchors = LevelAnchors::new(&out.sizes, self.model.anchor_scale)?;
        let (text_rows, box_rows): (Vec<usize>, Vec<usize>) =
            (0..batch.samples.len()).partition(|&r| batch.samples[r].kind == SourceKind::ImageText);
        let mut terms = LossTerms::new();
        if !box_rows.is_empty() {
            let boxed = rows_of(&out, &box_rows);
            let concepts = model.encode_concepts(vocabulary)?;
            let logits = model.logits(boxed.regions.clone(), concepts)?;
            let images: Vec<ImageBoxes> = box_rows
                .iter()
                .map(|&r| image_boxes(&batch.samples[r], vocabulary))
                .collect();
            for (name, value) in self
                .loss
                .detection_terms(&boxed, logits, &anchors, &images)?
            {
                terms.push(name, value);
            }
        }
        if text_rows.len() >= 2 {
            let pairs = rows_of(&out, &text_rows);
            let samples: Vec<&Sample> = text_rows.iter().map(|&r| &batch.samples[r]).collect();
            for (name, value) in self.image_text_loss(model, &pairs, &anchors, &samples)? {
                terms.push(name, value);
            }
        }
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        _cx: &(),
        model: &DetClipV2<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let cache = model.concept_cache(vocabulary)?;
        let dets = model.detect(
            &self.model,
            batch.images.clone(),
            &batch.image_sizes,
            &cache,
            threshold,
            &self.test,
        )?;
        Ok(dets.into_iter().map(Detected::all).collect())
    }
}
