//! `shapes`: the learner's test recipe and `detclip demo`'s model, a small open-vocabulary
//! detector for the synthetic world.
//!
//! - Model: [`ShapesConfig`] / [`ShapesDetector`] (`detclip_models::shapes`): a strided CNN
//!   with a dense head, concept names as bags of character trigrams, cosine region–concept
//!   logits.
//! - Targets: ATSS (`detclip_core::assign`) on one square anchor per location; losses: sigmoid
//!   focal on the region–concept logits, GIoU on the positives' boxes, centerness BCE
//!   (`detclip_core::loss`); for image-text batches (no boxes), the max over regions of each
//!   concept's logit against whether the caption mentions it (DetCLIPv2's max aggregation).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::assign::{AtssOptions, LevelAnchors, atss_assign, decode_distances};
use detclip_core::backend::NdArrayBackend;
use detclip_core::data::{Batch, SourceKind, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::loss::{
    Reduction, bce_with_logits, centerness_loss, centerness_targets, giou_loss, sigmoid_focal_loss,
};
use detclip_core::{DetError, Result};
use detclip_models::dense::DenseTestConfig;
use detclip_models::hf::{SentenceEncoder, read_bert_config, read_sentence_pooling};
use detclip_models::shapes::{ShapesConfig, ShapesDetector};
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, SourceConfig, SyntheticConfig};
use crate::learner::LearnerConfig;
use crate::recipe::{Detected, LossTerms, Recipe};

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesLossConfig {
    /// Focal α.
    pub focal_alpha: f32,
    /// Focal γ.
    pub focal_gamma: f32,
    /// ATSS candidates per level.
    pub atss_top_k: usize,
    /// Weight of the classification term.
    pub cls_weight: f32,
    /// Weight of the GIoU term.
    pub box_weight: f32,
    /// Weight of the centerness term.
    pub ctr_weight: f32,
    /// Weight of the image-text (max aggregation) term.
    pub image_text_weight: f32,
}

/// The `shapes` recipe: model, loss, inference, data and learner settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesRecipe {
    /// The model.
    pub model: ShapesConfig,
    /// The loss.
    pub loss: ShapesLossConfig,
    /// Inference.
    pub test: DenseTestConfig,
    /// Training sources and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
    /// A sentence-transformers folder (e.g. `../shared/models/all-MiniLM-L6-v2`) whose frozen
    /// sentence embeddings of each concept name replace the trigram encoder; the model's
    /// [`ShapesConfig::text_features`] must be its width. Each name is encoded once per run
    /// and cached.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_model: Option<PathBuf>,
}

impl ShapesRecipe {
    /// The demo preset: a detection and a grounding source of the synthetic world at two
    /// resolutions, about three minutes of training on two CPU cores (release build).
    pub fn demo() -> Self {
        let world =
            |seed, images, kind| SyntheticConfig::new(seed, images, (112, 160), (3, 20), kind);
        Self {
            model: ShapesConfig {
                channels: [16, 32, 48, 64, 64],
                head_channels: 48,
                head_convs: 1,
                embed_dim: 32,
                trigram_buckets: 512,
                word_dim: 32,
                anchor_scale: 4.0,
                norm_groups: 8,
                text_features: None,
            },
            loss: ShapesLossConfig {
                focal_alpha: 0.25,
                focal_gamma: 2.0,
                atss_top_k: 9,
                cls_weight: 1.0,
                box_weight: 2.0,
                ctr_weight: 1.0,
                image_text_weight: 0.5,
            },
            test: DenseTestConfig {
                short_side: 128,
                max_long: Some(192),
                pre_nms_top_k: 300,
                nms_iou: 0.5,
                max_detections: 50,
            },
            data: DataConfig {
                sources: vec![
                    SourceConfig {
                        max_long: Some(192),
                        weight: 2.0,
                        ..SourceConfig::synthetic(
                            "detection",
                            world(1, 2000, SourceKind::Detection),
                            8,
                            vec![112, 128, 144],
                        )
                    },
                    SourceConfig {
                        max_long: Some(224),
                        ..SourceConfig::synthetic(
                            "grounding",
                            world(2, 1000, SourceKind::Grounding),
                            4,
                            vec![160],
                        )
                    },
                ],
                eval: Some(world(3, 150, SourceKind::Grounding).into()),
                size_divisor: 32,
            },
            learner: LearnerConfig::adamw(400, 3e-3),
            text_model: None,
        }
    }

    /// The demo preset with a pretrained sentence encoder as its language side: the folder's
    /// sizes are read (not its weights) to give the projection its width.
    ///
    /// # Errors
    /// As [`sentence_dim`] for a folder that is not a sentence-transformers model.
    pub fn demo_with_text_model(dir: &Path) -> Result<Self> {
        let mut r = Self::demo();
        r.model.text_features = Some(sentence_dim(dir)?);
        r.text_model = Some(dir.to_path_buf());
        Ok(r)
    }

    /// A tiny preset for tests: small images, narrow layers, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::demo();
        r.model.channels = [8, 8, 16, 16, 16];
        r.model.head_channels = 16;
        r.model.embed_dim = 16;
        r.model.trigram_buckets = 64;
        r.model.word_dim = 8;
        r.model.norm_groups = 4;
        r.test.short_side = 64;
        r.test.max_long = Some(96);
        let kinds = [SourceKind::Detection, SourceKind::Grounding];
        for (i, s) in r.data.sources.iter_mut().enumerate() {
            let mut world = tiny_world(i as u64 + 1, 16);
            world.kind = kinds[i % 2];
            s.dataset = crate::data::DatasetConfig::Synthetic(world);
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = 2;
        }
        r.data.eval = Some(tiny_world(3, 4).into());
        r.learner.steps = 30;
        r.learner.schedule.warmup_steps = 3;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }
}

fn tiny_world(seed: u64, images: u64) -> SyntheticConfig {
    SyntheticConfig::new(seed, images, (64, 80), (2, 16), SourceKind::Detection)
}

/// Targets of one batch, built on the host.
struct Targets {
    /// Rows (images) with boxes, and rows of image-text samples.
    box_rows: Vec<usize>,
    text_rows: Vec<usize>,
    /// `[box_rows, A, C]` one-hot classification targets.
    cls: Vec<f32>,
    /// Flat positive indices into `[N·A]`, their anchor index, and target box.
    pos_flat: Vec<i64>,
    pos_anchor: Vec<i64>,
    pos_boxes: Vec<f32>,
    /// `[text_rows, C]` whether the caption mentions each concept.
    presence: Vec<f32>,
}

impl ShapesRecipe {
    fn targets<B: Backend>(
        &self,
        batch: &Batch<B>,
        anchors: &LevelAnchors,
        vocabulary: &[String],
    ) -> Result<Targets> {
        let (a, c) = (anchors.boxes.len(), vocabulary.len());
        let options = AtssOptions {
            top_k: self.loss.atss_top_k,
            ..AtssOptions::default()
        };
        let mut t = Targets {
            box_rows: vec![],
            text_rows: vec![],
            cls: vec![],
            pos_flat: vec![],
            pos_anchor: vec![],
            pos_boxes: vec![],
            presence: vec![],
        };
        let index_of = |name: &str| vocabulary.iter().position(|v| v == name);
        for (row, sample) in batch.samples.iter().enumerate() {
            if sample.kind == SourceKind::ImageText {
                t.text_rows.push(row);
                let mut p = vec![0.0; c];
                for concept in &sample.concepts {
                    if let Some(i) = index_of(&concept.name) {
                        p[i] = 1.0;
                    }
                }
                t.presence.extend(p);
                continue;
            }
            t.box_rows.push(row);
            let (gt, labels): (Vec<[f32; 4]>, Vec<Option<usize>>) = sample
                .training_instances()
                .map(|i| {
                    let label = i
                        .concepts
                        .first()
                        .and_then(|&k| index_of(&sample.concepts[k].name));
                    (i.bbox, label)
                })
                .unzip();
            let assignment = atss_assign(&anchors.boxes, &anchors.counts, &gt, &options)?;
            let mut cls = vec![0.0f32; a * c];
            for (anchor, g) in assignment.gt_index.iter().enumerate() {
                let Some(g) = *g else { continue };
                if let Some(label) = labels[g] {
                    cls[anchor * c + label] = 1.0;
                }
                t.pos_flat.push((row * a + anchor) as i64);
                t.pos_anchor.push(anchor as i64);
                t.pos_boxes.extend(gt[g]);
            }
            t.cls.extend(cls);
        }
        Ok(t)
    }
}

fn index<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

/// The width of a sentence-transformers folder's embeddings, from its config files alone.
///
/// # Errors
/// As [`read_bert_config`] and [`read_sentence_pooling`].
pub fn sentence_dim(dir: &Path) -> Result<usize> {
    let pooling = read_sentence_pooling(dir)?;
    let config = read_bert_config(&dir.join("config.json"))?;
    Ok(config.hidden_size * pooling.modes.len())
}

/// A frozen sentence encoder on the CPU and the embeddings it has computed, by name.
pub struct PretrainedText {
    dir: PathBuf,
    dim: usize,
    inner: Mutex<EncoderAndCache>,
}

/// The encoder and the embeddings it has computed, by name.
type EncoderAndCache = (SentenceEncoder<NdArrayBackend>, HashMap<String, Vec<f32>>);

impl PretrainedText {
    /// Loads the folder ([`SentenceEncoder::load`]) on the CPU.
    ///
    /// # Errors
    /// As [`SentenceEncoder::load`].
    pub fn load(dir: &Path) -> Result<Self> {
        let encoder = SentenceEncoder::<NdArrayBackend>::load(dir, &Default::default())?;
        Ok(Self {
            dir: dir.to_path_buf(),
            dim: encoder.dim(),
            inner: Mutex::new((encoder, HashMap::new())),
        })
    }

    /// The embedding width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The embeddings of `names`, `[C · dim]` row-major; names not seen before are encoded
    /// (in one batch) and cached.
    ///
    /// # Errors
    /// As [`SentenceEncoder::encode`] (an empty name).
    pub fn features(&self, names: &[String]) -> Result<Vec<f32>> {
        let mut guard = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let (encoder, cache) = &mut *guard;
        let mut new: Vec<&String> = names.iter().filter(|n| !cache.contains_key(*n)).collect();
        new.sort();
        new.dedup();
        if !new.is_empty() {
            let rows: Vec<f32> = encoder
                .encode(&new, 64)
                .map_err(|e| DetError::InvalidOption {
                    op: "shapes text model",
                    why: format!("{}: {e}", self.dir.display()),
                })?
                .into_data()
                .convert::<f32>()
                .to_vec()
                .expect("f32 data");
            for (name, row) in new.iter().zip(rows.chunks_exact(self.dim)) {
                cache.insert((*name).clone(), row.to_vec());
            }
        }
        Ok(names
            .iter()
            .flat_map(|n| cache[n].iter().copied())
            .collect())
    }
}

/// What a `shapes` run derives once: the pretrained text encoder when the recipe names one.
pub struct ShapesContext {
    /// The sentence encoder (None: the model's trigram encoder).
    pub text: Option<PretrainedText>,
}

impl ShapesContext {
    /// Unit-length concept embeddings `[C, D]` of `names` for `model`.
    ///
    /// # Errors
    /// As [`PretrainedText::features`] and [`ShapesDetector::forward_text_features`].
    pub fn concepts<B: Backend>(
        &self,
        model: &ShapesDetector<B>,
        names: &[String],
        buckets: usize,
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        match &self.text {
            None => Ok(model.forward_text(names, buckets)),
            Some(t) => {
                let rows = t.features(names)?;
                let features =
                    Tensor::<B, 2>::from_data(TensorData::new(rows, [names.len(), t.dim]), device);
                model.forward_text_features(features)
            }
        }
    }
}

impl Recipe for ShapesRecipe {
    const NAME: &'static str = "shapes";
    type Model<B: Backend> = ShapesDetector<B>;
    type Context = ShapesContext;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<ShapesDetector<B>> {
        Ok(self.model.init(device))
    }

    fn context(&self) -> Result<ShapesContext> {
        let text = match &self.text_model {
            None => None,
            Some(dir) => {
                let t = PretrainedText::load(dir)?;
                if self.model.text_features != Some(t.dim()) {
                    return Err(DetError::InvalidOption {
                        op: "shapes recipe",
                        why: format!(
                            "text_model {} gives {}-wide embeddings but model.text_features is \
                             {:?}",
                            dir.display(),
                            t.dim(),
                            self.model.text_features
                        ),
                    });
                }
                Some(t)
            }
        };
        Ok(ShapesContext { text })
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
        self.model.validate()?;
        if self.text_model.is_some() != self.model.text_features.is_some() {
            return Err(DetError::InvalidOption {
                op: "shapes recipe",
                why: "text_model and model.text_features go together: set both (a pretrained \
                      text encoder) or neither (the trigram encoder)"
                    .into(),
            });
        }
        Ok(())
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        cx: &ShapesContext,
        model: &ShapesDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let device = batch.images.device();
        let out = model.forward_image(batch.images.clone());
        let anchors = LevelAnchors::new(&out.sizes, self.model.anchor_scale)?;
        let targets = self.targets(batch, &anchors, vocabulary)?;
        let text = cx.concepts(model, vocabulary, self.model.trigram_buckets, &device)?;
        let logits = model.logits(out.embed, text);
        let [n, a, c] = logits.dims();
        let l = &self.loss;
        let mut terms = LossTerms::new();
        if !targets.box_rows.is_empty() {
            let rows = index::<B>(
                &targets
                    .box_rows
                    .iter()
                    .map(|&r| r as i64)
                    .collect::<Vec<_>>(),
                &device,
            );
            let nb = targets.box_rows.len();
            let cls_logits = logits.clone().select(0, rows);
            let cls_targets =
                Tensor::<B, 3>::from_data(TensorData::new(targets.cls, [nb, a, c]), &device);
            let num_pos = targets.pos_flat.len().max(1) as f32;
            let focal = sigmoid_focal_loss(
                cls_logits,
                cls_targets,
                l.focal_alpha,
                l.focal_gamma,
                Reduction::Sum,
            )?;
            terms.push("cls", focal.reshape([1]) * (l.cls_weight / num_pos));
            if !targets.pos_flat.is_empty() {
                let p = targets.pos_flat.len();
                let flat = index::<B>(&targets.pos_flat, &device);
                let per_anchor = index::<B>(&targets.pos_anchor, &device);
                let (centres, halves) = anchors.tensors::<B>(&device);
                let raw = out.bbox.reshape([n * a, 4]).select(0, flat.clone());
                let centres = centres.select(0, per_anchor.clone());
                let pred = decode_distances(raw, centres.clone(), halves.select(0, per_anchor));
                let gt =
                    Tensor::<B, 2>::from_data(TensorData::new(targets.pos_boxes, [p, 4]), &device);
                let giou = giou_loss(pred, gt.clone(), Reduction::Mean, 1e-7)?;
                terms.push("box", giou * l.box_weight);
                let ctr_target = centerness_targets(centres, gt)?;
                let ctr_logits = out.centerness.reshape([n * a]).select(0, flat);
                let ctr = centerness_loss(ctr_logits, ctr_target, Reduction::Mean)?;
                terms.push("centerness", ctr * l.ctr_weight);
            }
        }
        if !targets.text_rows.is_empty() {
            let rows = index::<B>(
                &targets
                    .text_rows
                    .iter()
                    .map(|&r| r as i64)
                    .collect::<Vec<_>>(),
                &device,
            );
            let nt = targets.text_rows.len();
            let image_logits = logits.select(0, rows).max_dim(1).reshape([nt, c]);
            let presence =
                Tensor::<B, 2>::from_data(TensorData::new(targets.presence, [nt, c]), &device);
            let bce = bce_with_logits(image_logits, presence).mean();
            terms.push("image_text", bce * l.image_text_weight);
        }
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        cx: &ShapesContext,
        model: &ShapesDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let text = cx.concepts(
            model,
            vocabulary,
            self.model.trigram_buckets,
            &batch.images.device(),
        )?;
        let dets = model.detect(
            &self.model,
            batch.images.clone(),
            &batch.image_sizes,
            text,
            threshold,
            &self.test,
        )?;
        Ok(dets.into_iter().map(Detected::all).collect())
    }
}
