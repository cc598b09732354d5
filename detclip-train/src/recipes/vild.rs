//! `vild`: ViLD on the shared learner (Gu et al., "Open-vocabulary Object Detection via Vision
//! and Language Knowledge Distillation", ICLR 2022).
//!
//! - The model is [`VildModel`]: ViLD's detector ([`Vild`]: ResNet + FPN, RPN, class-agnostic
//!   box and mask heads, projections to the embedding space) and a frozen CLIP. CLIP never
//!   enters the autodiff graph (it runs on the inner backend), so the optimiser never sees it.
//! - Training uses base classes only: boxes of the [`VildRecipe::held_out`] names are dropped
//!   from the targets (unannotated, as LVIS's rare classes are in ViLD's protocol), and the
//!   ViLD-text classifier holds the base names alone.
//! - Class embeddings: CLIP's text tower over the prompt templates (normalised per template,
//!   averaged, normalised again), computed once per name and cached in the model.
//! - ViLD-image targets: with [`VildRecipe::teacher_dir`], the shards of `detclip vild
//!   precompute`; otherwise computed on the fly: the detector's current proposals (no
//!   gradient), cropped from the batch at each of [`VildLossSettings::crop_scales`] by RoIAlign,
//!   embedded by CLIP's image tower, summed and normalised — what the precompute tool stores.
//! - On the synthetic world, CLIP is the small teacher RegionSpot pre-trains
//!   ([`super::regionspot::teacher::pretrain`]) on crops of every concept, held-out ones
//!   included, from a world seed of its own ([`Recipe::prepare`]).
//! - Loss: `L = L_text + w·L_image + L_box (+ L_mask) + L_rpn`, each term logged by name.
//! - Inference: base and novel classes together, ViLD-text scores or the ViLD-ensemble
//!   ([`detclip_models::vild::predict`]), per-class NMS.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use burn::module::AutodiffModule;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::data::sample::ImageSource;
use detclip_core::data::synthetic::{Split, World, WorldConfig};
use detclip_core::data::{Batch, Normalize, SourceKind, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::ops::{RoiAlignOptions, roi_align};
use detclip_core::{DetError, Result};
use detclip_models::clip::{
    Clip, ClipConfig, ClipLayout, ClipTextConfig, ClipVisionConfig, EotPooling, hf_clip_keys,
    l2_normalize, openai_clip_keys,
};
use detclip_models::import::{LoadOptions, load_checkpoint};
use detclip_models::layers::NormMode;
use detclip_models::vild::{
    EnsembleWeights, HostBox, SampleRng, TeacherRegions, Vild, VildConfig, VildDetections,
    VildLossConfig, VildPredictConfig, VildTarget, predict, vild_loss,
};
use serde::{Deserialize, Serialize};

use super::regionspot::teacher::{self, CLIP_MEAN, CLIP_STD, TeacherConfig, TeacherData};
use super::regionspot::{TextSide, words_of};
use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig, SyntheticSplit};
use crate::learner::{Decay, LearnerConfig};
use crate::recipe::{Detected, LossTerms, ParamGroup, Recipe};
use crate::vild::{ImageTeacher, load_teachers};

/// Sizes of a small detector (the synthetic world, tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallDetector {
    /// ResNet blocks per stage.
    pub layers: [usize; 4],
    /// ResNet stem and bottleneck width (the stages give 4×, 8×, 16×, 32× this).
    pub width: usize,
    /// FPN width.
    pub fpn_channels: usize,
    /// Width of the box head's two FC layers.
    pub representation: usize,
    /// Width of the mask head's convolutions.
    pub mask_width: usize,
    /// Batch statistics in the backbone's norms (a backbone trained from scratch); `false`:
    /// frozen norms, as a pre-trained backbone runs.
    pub batch_norm: bool,
}

/// Which detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum VildDetectorSize {
    /// ResNet-50 + FPN with Mask R-CNN's sizes ([`VildConfig::r50`]).
    R50,
    /// A small detector ([`VildConfig::tiny`] with these widths).
    Small(SmallDetector),
}

/// Sizes of the small CLIP (the synthetic world's teacher).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallClip {
    /// Input side of the image tower (the crops' side).
    pub image_size: usize,
    /// Patch size.
    pub patch: usize,
    /// Vision width.
    pub width: usize,
    /// Text width.
    pub text_width: usize,
    /// Blocks of each tower.
    pub layers: usize,
    /// Attention heads.
    pub heads: usize,
    /// Joint embedding width (the detector's embedding width).
    pub embed_dim: usize,
}

/// ViLD's CLIP teacher.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VildClip {
    /// A small CLIP of these sizes, built here (the synthetic world: `teacher` pre-trains it).
    Small(SmallClip),
    /// A released CLIP, loaded from its state dict by [`Recipe::prepare`] (OpenAI's key layout
    /// or Hugging Face's, as `config` says). ViLD's teacher is ViT-B/32
    /// ([`VildClip::vit_b_32`]). Class names go through CLIP's tokenizer (`text: tokenizer`).
    Released {
        /// Its sizes and key layout.
        config: ClipConfig,
        /// The state dict (`.pt` / `.pth` saved as a state dict, or safetensors).
        weights: PathBuf,
    },
}

impl VildClip {
    /// OpenAI's ViT-B/32 (ViLD's teacher) from its state dict at `weights`.
    pub fn vit_b_32(weights: impl Into<PathBuf>) -> Self {
        VildClip::Released {
            config: ClipConfig::vit_b_32(ClipLayout::OpenAi),
            weights: weights.into(),
        }
    }

    /// The joint embedding width (the detector's embedding width).
    pub fn embed_dim(&self) -> usize {
        match self {
            VildClip::Small(s) => s.embed_dim,
            VildClip::Released { config, .. } => config.vision.embed_dim,
        }
    }

    /// The image tower's input side (the crops' side).
    pub fn image_size(&self) -> usize {
        match self {
            VildClip::Small(s) => s.image_size,
            VildClip::Released { config, .. } => config.vision.image_size,
        }
    }
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VildLossSettings {
    /// `w`, the ViLD-image weight (0: ViLD-text alone; the paper uses 0.5).
    pub image_weight: f32,
    /// Distil into the second projection (ViLD-ensemble) instead of the ViLD-text one.
    pub ensemble: bool,
    /// Proposals per image distilled on the fly (`M`; ignored with precomputed teachers).
    pub proposals: usize,
    /// Crop scales of the on-the-fly teacher (ViLD: 1× and 1.5×).
    pub crop_scales: Vec<f32>,
    /// Filled boxes as mask targets (the learner's data carries no instance masks); `false`:
    /// no mask term.
    pub box_masks: bool,
}

/// Inference settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VildTestSettings {
    /// Shorter side of the test resize.
    pub short_side: u32,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// The ensemble's `λ` for base and novel classes (`[2/3, 1/3]` in the paper); used when
    /// the loss distils into the second projection ([`VildLossSettings::ensemble`]).
    pub ensemble_lambda: [f32; 2],
    /// IoU threshold of the per-class NMS.
    pub nms_iou: f32,
    /// Detections kept per image.
    pub max_detections: usize,
}

/// The `vild` recipe.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VildRecipe {
    /// The detector.
    pub detector: VildDetectorSize,
    /// The CLIP teacher: small (built and pre-trained here) or released (loaded).
    pub clip: VildClip,
    /// How class names are tokenised.
    pub text: TextSide,
    /// Prompt templates, each with one `{}` (ViLD: "a photo of {} in the scene").
    pub templates: Vec<String>,
    /// The small CLIP's pre-training on the synthetic world, if any.
    pub teacher: Option<TeacherConfig>,
    /// Shards of `detclip vild precompute` (ViLD-image targets), if any; otherwise the
    /// targets are computed on the fly.
    pub teacher_dir: Option<PathBuf>,
    /// Names never used as training targets (the novel classes); their boxes are dropped.
    pub held_out: Vec<String>,
    /// The loss.
    pub loss: VildLossSettings,
    /// Inference.
    pub test: VildTestSettings,
    /// Training sources (detection) and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
    #[serde(skip)]
    teachers: TeacherStore,
}

impl std::fmt::Debug for VildRecipe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let json = serde_json::to_string(self).map_err(|_| std::fmt::Error)?;
        write!(f, "VildRecipe({json})")
    }
}

/// Precomputed teachers, read from [`VildRecipe::teacher_dir`] on first use, and each image's
/// original size (their boxes are in its pixels).
#[derive(Clone, Default)]
struct TeacherStore {
    loaded: Arc<OnceLock<HashMap<String, ImageTeacher>>>,
    sizes: Arc<Mutex<HashMap<String, (u32, u32)>>>,
}

/// Class embeddings by name (and templates), host-side: the text tower is frozen.
#[derive(Debug, Clone, Default)]
pub struct ClassCache(Arc<Mutex<HashMap<String, Vec<f32>>>>);

/// ViLD's detector and its frozen CLIP.
#[derive(Module, Debug)]
pub struct VildModel<B: Backend> {
    /// The detector (trained).
    pub detector: Vild<B>,
    /// CLIP (frozen): the text tower gives the classifier, the image tower the ViLD-image
    /// targets.
    pub clip: Clip<B>,
    #[module(skip)]
    classes: ClassCache,
}

impl<B: Backend> VildModel<B> {
    /// A model of this detector and CLIP, with an empty class cache.
    pub fn new(detector: Vild<B>, clip: Clip<B>) -> Self {
        Self {
            detector,
            clip: clip.no_grad(),
            classes: ClassCache::default(),
        }
    }

    /// How many class embeddings are cached.
    pub fn cached_classes(&self) -> usize {
        self.classes.0.lock().map(|m| m.len()).unwrap_or(0)
    }
}

/// ViLD's single prompt ([`detclip_models::vild::VILD_PROMPT`]) with a final period (the
/// teacher is trained on it).
const TEMPLATE: &str = "a photo of {} in the scene.";

/// Detection images of world `seed` with up to three objects of 20 px or more.
fn world(seed: u64, images: u64, min_side: u32, max_side: u32) -> SyntheticConfig {
    SyntheticConfig::new(
        seed,
        images,
        (min_side, max_side),
        (3, 20),
        SourceKind::Detection,
    )
}

impl VildRecipe {
    /// The synthetic-world preset: a small detector, the small CLIP teacher pre-trained on
    /// every concept, training on base concepts (images of the training split, and images of
    /// the test split whose held-out objects are left unannotated, as LVIS's rare objects are
    /// in ViLD's protocol), ViLD-text + ViLD-image with `w = 0.5`, evaluated on seen and
    /// held-out concepts.
    pub fn synthetic() -> Self {
        let names = World::new(WorldConfig::default())
            .map(|w| w.vocabulary(Split::Test))
            .unwrap_or_default();
        let held_out = World::new(WorldConfig::default())
            .map(|w| w.held_out_vocabulary())
            .unwrap_or_default();
        let templates = vec![TEMPLATE.to_string()];
        let source = |name: &str, seed, split| {
            let world = SyntheticConfig {
                split,
                ..world(seed, 1000, 112, 160)
            };
            SourceConfig::synthetic(name, world, 4, vec![128])
        };
        Self {
            detector: VildDetectorSize::Small(SmallDetector {
                layers: [1, 1, 1, 1],
                width: 8,
                fpn_channels: 32,
                representation: 128,
                mask_width: 16,
                batch_norm: true,
            }),
            clip: VildClip::Small(SmallClip {
                image_size: 32,
                patch: 8,
                width: 64,
                text_width: 64,
                layers: 2,
                heads: 4,
                embed_dim: 32,
            }),
            text: TextSide::Words {
                words: words_of(&names, &templates),
                context: 12,
            },
            templates,
            teacher: Some(TeacherConfig {
                world_seed: 77,
                images: 600,
                steps: 400,
                batch_size: 64,
                lr: 2e-3,
                margin: 0.1,
                scenes_per_step: 0,
                sam_steps: 0,
                sam_target: Default::default(),
                sam_token_box_weight: 0.0,
            }),
            teacher_dir: None,
            held_out,
            loss: VildLossSettings {
                image_weight: 0.5,
                ensemble: false,
                proposals: 16,
                crop_scales: vec![1.0, 1.5],
                box_masks: false,
            },
            test: VildTestSettings {
                short_side: 128,
                max_long: Some(192),
                ensemble_lambda: [2.0 / 3.0, 1.0 / 3.0],
                nms_iou: 0.5,
                max_detections: 100,
            },
            data: DataConfig {
                sources: vec![
                    source("base", 1, SyntheticSplit::Train),
                    source("unannotated-novel", 2, SyntheticSplit::Test),
                ],
                eval: Some(
                    SyntheticConfig {
                        kind: SourceKind::Grounding,
                        ..world(3, 150, 112, 160)
                    }
                    .into(),
                ),
                size_divisor: 32,
            },
            learner: {
                let mut l = LearnerConfig::adamw(600, 2e-3);
                l.optim.clip_grad_norm = Some(5.0);
                l.schedule.warmup_steps = 30;
                l.schedule.decay = Decay::Cosine { min_factor: 0.05 };
                l.checkpoint_every = 100;
                l
            },
            teachers: TeacherStore::default(),
        }
    }

    /// A tiny preset for tests: narrow layers, a short teacher, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        r.detector = VildDetectorSize::Small(SmallDetector {
            layers: [1, 1, 1, 1],
            width: 4,
            fpn_channels: 16,
            representation: 32,
            mask_width: 8,
            batch_norm: true,
        });
        r.clip = VildClip::Small(SmallClip {
            image_size: 16,
            patch: 8,
            width: 16,
            text_width: 16,
            layers: 1,
            heads: 2,
            embed_dim: 16,
        });
        if let Some(t) = &mut r.teacher {
            t.images = 8;
            t.steps = 4;
            t.batch_size = 8;
        }
        r.loss.proposals = 4;
        r.loss.box_masks = true;
        for (i, s) in r.data.sources.iter_mut().enumerate() {
            if let DatasetConfig::Synthetic(w) = &mut s.dataset {
                *w = SyntheticConfig {
                    split: w.split,
                    ..world(i as u64 + 1, 12, 64, 80)
                };
                w.max_objects = 2;
                w.min_object = 16;
            }
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = 2;
            s.flip_prob = 0.0;
        }
        r.data.eval = Some(
            SyntheticConfig {
                kind: SourceKind::Grounding,
                max_objects: 2,
                min_object: 16,
                ..world(3, 4, 64, 80)
            }
            .into(),
        );
        r.test.short_side = 64;
        r.test.max_long = Some(96);
        r.learner.steps = 30;
        r.learner.optim.lr = 3e-3;
        r.learner.schedule.warmup_steps = 3;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }

    /// The detector's configuration.
    pub fn detector_config(&self) -> VildConfig {
        let e = self.clip.embed_dim();
        match &self.detector {
            VildDetectorSize::R50 => VildConfig::r50(e),
            VildDetectorSize::Small(s) => {
                let mut c = VildConfig::tiny(e).with_fpn_channels(s.fpn_channels);
                c.backbone.layers = s.layers;
                c.backbone = c
                    .backbone
                    .with_width(s.width)
                    .with_stem_channels(s.width)
                    .with_norm(if s.batch_norm {
                        NormMode::Batch
                    } else {
                        NormMode::Frozen
                    });
                c.roi = c
                    .roi
                    .with_representation(s.representation)
                    .with_mask_layers(vec![s.mask_width; 4]);
                c
            }
        }
    }

    /// CLIP's configuration.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for a tokenizer file with the small CLIP (it takes a word
    /// vocabulary), or a word vocabulary with a released CLIP (it reads its own tokens).
    pub fn clip_config(&self) -> Result<ClipConfig> {
        let s = match &self.clip {
            VildClip::Small(s) => s,
            VildClip::Released { config, .. } => {
                if self.text.vocab_size().is_some() {
                    return Err(DetError::InvalidOption {
                        op: "vild",
                        why: "a released CLIP reads class names through its own tokenizer \
                              (`text: tokenizer` with its tokenizer.json), not a word vocabulary"
                            .into(),
                    });
                }
                return Ok(config.clone());
            }
        };
        let vocab = self
            .text
            .vocab_size()
            .ok_or_else(|| DetError::InvalidOption {
                op: "vild",
                why: "the small CLIP takes a word vocabulary (`text: words`), not a tokenizer \
                      file"
                    .into(),
            })?;
        let layout = ClipLayout::OpenAi;
        Ok(ClipConfig::new(
            ClipVisionConfig::new()
                .with_image_size(s.image_size)
                .with_patch_size(s.patch)
                .with_width(s.width)
                .with_layers(s.layers)
                .with_heads(s.heads)
                .with_mlp_width(4 * s.width)
                .with_embed_dim(s.embed_dim)
                .with_layout(layout),
            ClipTextConfig::new()
                .with_vocab_size(vocab)
                .with_context_length(self.text.context())
                .with_width(s.text_width)
                .with_layers(s.layers)
                .with_heads(s.heads)
                .with_mlp_width(4 * s.text_width)
                .with_embed_dim(s.embed_dim)
                .with_layout(layout)
                .with_pooling(EotPooling::ArgMax),
        ))
    }

    /// The base names of a vocabulary: every name that is not held out.
    pub fn base_names(&self, vocabulary: &[String]) -> Vec<String> {
        vocabulary
            .iter()
            .filter(|n| !self.held_out.contains(n))
            .cloned()
            .collect()
    }

    /// Class embeddings `[C, E]` (unit rows, no gradient) of `names`, from the cache or CLIP's
    /// text tower.
    ///
    /// # Errors
    /// Text errors.
    pub fn class_embeddings<B: Backend>(
        &self,
        model: &VildModel<B>,
        names: &[String],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let key = |n: &str| format!("{n}\u{1f}{}", self.templates.join("\u{1e}"));
        let missing: Vec<String> = {
            let cache = model.classes.0.lock().expect("class cache poisoned");
            let mut m: Vec<String> = names
                .iter()
                .filter(|n| !cache.contains_key(&key(n)))
                .cloned()
                .collect();
            m.dedup();
            m
        };
        if !missing.is_empty() {
            let rows = self.encode_names(&model.clip, &missing, device)?;
            let mut cache = model.classes.0.lock().expect("class cache poisoned");
            for (n, row) in missing.iter().zip(rows) {
                cache.insert(key(n), row);
            }
        }
        let cache = model.classes.0.lock().expect("class cache poisoned");
        let e = self.clip.embed_dim();
        let flat: Vec<f32> = names
            .iter()
            .flat_map(|n| cache[&key(n)].iter().copied())
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(flat, [names.len(), e]),
            device,
        ))
    }

    /// The template ensemble: per name, the normalised mean of the normalised embeddings of
    /// every template.
    fn encode_names<B: Backend>(
        &self,
        clip: &Clip<B>,
        names: &[String],
        device: &B::Device,
    ) -> Result<Vec<Vec<f32>>> {
        let sentences: Vec<String> = names
            .iter()
            .flat_map(|n| self.templates.iter().map(move |t| t.replace("{}", n)))
            .collect();
        let ids = self.text.ids::<B>(&sentences, device)?;
        let embeds = l2_normalize(clip.text.forward(ids)?.text_embeds);
        let [_, e] = embeds.dims();
        let t = self.templates.len();
        let mean = embeds
            .reshape([names.len(), t, e])
            .mean_dim(1)
            .reshape([names.len(), e]);
        let values = read(l2_normalize(mean))?;
        Ok(values.chunks(e).map(<[f32]>::to_vec).collect())
    }

    /// The training targets of image `i`: its boxes of base classes and their index in
    /// `base` (boxes of held-out or unknown names are dropped).
    pub fn targets_of<B: Backend>(
        &self,
        batch: &Batch<B>,
        i: usize,
        base: &[String],
    ) -> (Vec<HostBox>, Vec<usize>) {
        let sample = &batch.samples[i];
        sample
            .training_instances()
            .filter_map(|inst| {
                let name = &sample.concepts[*inst.concepts.first()?].name;
                if self.held_out.contains(name) {
                    return None;
                }
                let label = base.iter().position(|v| v == name)?;
                Some((inst.bbox, label))
            })
            .unzip()
    }

    /// The ViLD-image targets of every image of the batch: precomputed ones when
    /// [`VildRecipe::teacher_dir`] is set, else computed on the fly by CLIP's image tower.
    ///
    /// # Errors
    /// Unreadable shards, an image missing from them; model errors.
    pub fn teacher_regions<B: AutodiffBackend>(
        &self,
        model: &VildModel<B>,
        batch: &Batch<B>,
    ) -> Result<Vec<TeacherRegions<B>>> {
        match &self.teacher_dir {
            Some(dir) => self.stored_teachers(dir, batch),
            None => self.live_teachers(model, batch),
        }
    }

    fn stored_teachers<B: Backend>(
        &self,
        dir: &Path,
        batch: &Batch<B>,
    ) -> Result<Vec<TeacherRegions<B>>> {
        if self.teachers.loaded.get().is_none() {
            let _ = self.teachers.loaded.set(load_teachers(dir)?);
        }
        let all = self.teachers.loaded.get().expect("set above");
        let device = batch.images.device();
        batch
            .samples
            .iter()
            .map(|s| {
                let t = all.get(&s.key).ok_or_else(|| DetError::InvalidOption {
                    op: "vild",
                    why: format!(
                        "image `{}` has no precomputed teacher in {}",
                        s.key,
                        dir.display()
                    ),
                })?;
                let (ow, oh) = self.original_size(s)?;
                let (sx, sy) = (s.width as f32 / ow as f32, s.height as f32 / oh as f32);
                let boxes: Vec<HostBox> = t
                    .boxes
                    .iter()
                    .map(|b| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
                    .collect();
                let m = boxes.len();
                let embeddings = Tensor::from_data(
                    TensorData::new(t.embeddings.clone(), [m, if m == 0 { 0 } else { t.dim }]),
                    &device,
                );
                Ok(TeacherRegions { boxes, embeddings })
            })
            .collect()
    }

    /// The size of a sample's image before the training transform (precomputed boxes are in
    /// its pixels).
    fn original_size(&self, s: &detclip_core::data::Sample) -> Result<(u32, u32)> {
        if let Some(&size) = self.teachers.sizes.lock().expect("poisoned").get(&s.key) {
            return Ok(size);
        }
        let size = match &s.image {
            ImageSource::Memory(img) => img.dimensions(),
            ImageSource::File(path) => image::image_dimensions(path).map_err(|e| DetError::Io {
                path: path.display().to_string(),
                msg: e.to_string(),
            })?,
        };
        self.teachers
            .sizes
            .lock()
            .expect("poisoned")
            .insert(s.key.clone(), size);
        Ok(size)
    }

    /// The on-the-fly teacher: the best `M` current proposals of each image (no gradient),
    /// cropped at each scale, embedded by CLIP's image tower, summed and normalised.
    fn live_teachers<B: AutodiffBackend>(
        &self,
        model: &VildModel<B>,
        batch: &Batch<B>,
    ) -> Result<Vec<TeacherRegions<B>>> {
        let detector = model.detector.valid();
        let clip = model.clip.valid();
        let images = batch.images.clone().inner();
        let [_, _, h, w] = images.dims();
        let features = detector.features(images.clone())?;
        let proposals = detector.proposals(&detector.rpn_outputs(&features), [h, w], false)?;
        let boxes: Vec<Vec<HostBox>> = proposals
            .into_iter()
            .zip(&batch.image_sizes)
            .map(|(p, &(ih, iw))| {
                p.boxes
                    .into_iter()
                    .map(|b| clip_box(b, 1.0, ih, iw))
                    .filter(|b| b[2] - b[0] >= 2.0 && b[3] - b[1] >= 2.0)
                    .take(self.loss.proposals)
                    .collect()
            })
            .collect();
        let embeddings = self.crop_embeddings(&clip, images, &boxes, &batch.image_sizes)?;
        let mut start = 0;
        Ok(boxes
            .into_iter()
            .map(|b| {
                let m = b.len();
                let rows = embeddings.clone().narrow(0, start, m);
                start += m;
                TeacherRegions {
                    boxes: b,
                    embeddings: Tensor::from_inner(rows),
                }
            })
            .collect())
    }

    /// `norm(Σ_s norm(CLIP(crop_s(box))))` of every box of every image, `[K, E]` in order
    /// (crops cut by RoIAlign from the batch, converted to CLIP's normalisation).
    pub fn crop_embeddings<B: Backend>(
        &self,
        clip: &Clip<B>,
        images: Tensor<B, 4>,
        boxes: &[Vec<HostBox>],
        image_sizes: &[(usize, usize)],
    ) -> Result<Tensor<B, 2>> {
        let device = images.device();
        let e = self.clip.embed_dim();
        let k: usize = boxes.iter().map(Vec::len).sum();
        if k == 0 {
            return Ok(Tensor::zeros([0, e], &device));
        }
        let scales = &self.loss.crop_scales;
        let mut rows = Vec::with_capacity(scales.len() * k * 5);
        for &s in scales {
            for (i, (bs, &(ih, iw))) in boxes.iter().zip(image_sizes).enumerate() {
                for b in bs {
                    rows.push(i as f32);
                    rows.extend(clip_box(*b, s, ih, iw));
                }
            }
        }
        let rois = Tensor::<B, 2>::from_data(TensorData::new(rows, [scales.len() * k, 5]), &device);
        let side = self.clip.image_size();
        let options = RoiAlignOptions {
            output_size: [side, side],
            spatial_scale: 1.0,
            sampling_ratio: 2,
            aligned: false,
        };
        let crops = to_clip_normalisation(roi_align(images, rois, &options)?);
        let embeds = l2_normalize(clip.vision.forward(crops)?.image_embeds);
        Ok(l2_normalize(
            embeds
                .reshape([scales.len(), k, e])
                .sum_dim(0)
                .reshape([k, e]),
        ))
    }

    /// Teacher accuracy of crop classification on the held-out names alone and on the base
    /// names alone (each crop against every name), from the teacher's own crops.
    fn teacher_split_accuracy<B: Backend>(
        &self,
        clip: &Clip<B>,
        data: &TeacherData,
        device: &B::Device,
    ) -> Result<(f64, f64)> {
        let crops = &data.crops;
        let sentences: Vec<String> = crops
            .names
            .iter()
            .map(|n| self.templates[0].replace("{}", n))
            .collect();
        let text = l2_normalize(
            clip.text
                .forward(self.text.ids::<B>(&sentences, device)?)?
                .text_embeds,
        );
        let per = 3 * crops.side * crops.side;
        let (mut right, mut total) = ([0usize; 2], [0usize; 2]);
        let rows: Vec<usize> = (0..crops.len()).collect();
        for chunk in rows.chunks(64) {
            let mut pixels = Vec::with_capacity(chunk.len() * per);
            for &r in chunk {
                pixels.extend_from_slice(&crops.pixels[r * per..][..per]);
            }
            let x = Tensor::<B, 4>::from_data(
                TensorData::new(pixels, [chunk.len(), 3, crops.side, crops.side]),
                device,
            );
            let image = l2_normalize(clip.vision.forward(x)?.image_embeds);
            let pred = image.matmul(text.clone().transpose()).argmax(1);
            let pred: Vec<i64> = pred
                .into_data()
                .convert::<i64>()
                .to_vec()
                .unwrap_or_default();
            for (&r, p) in chunk.iter().zip(pred) {
                let label = crops.labels[r];
                let novel = self.held_out.contains(&crops.names[label]) as usize;
                total[novel] += 1;
                right[novel] += (p as usize == label) as usize;
            }
        }
        let acc = |i: usize| right[i] as f64 / total[i].max(1) as f64;
        Ok((acc(0), acc(1)))
    }
}

/// The box scaled by `s` around its centre, clipped to an `h × w` image.
fn clip_box(b: HostBox, s: f32, h: usize, w: usize) -> HostBox {
    let (cx, cy) = ((b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0);
    let (hw, hh) = ((b[2] - b[0]) * s / 2.0, (b[3] - b[1]) * s / 2.0);
    let (w, h) = (w as f32, h as f32);
    [
        (cx - hw).clamp(0.0, w),
        (cy - hh).clamp(0.0, h),
        (cx + hw).clamp(0.0, w),
        (cy + hh).clamp(0.0, h),
    ]
}

/// ImageNet-normalised pixels (the data pipeline's) to CLIP's normalisation.
fn to_clip_normalisation<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let imagenet = Normalize::imagenet();
    let device = x.device();
    let per_channel = |f: &dyn Fn(usize) -> f32| {
        Tensor::<B, 1>::from_data(
            TensorData::new((0..3).map(f).collect::<Vec<_>>(), [3]),
            &device,
        )
        .reshape([1, 3, 1, 1])
    };
    let a = per_channel(&|c| imagenet.std[c] / CLIP_STD[c]);
    let b = per_channel(&|c| (imagenet.mean[c] - CLIP_MEAN[c]) / CLIP_STD[c]);
    x * a + b
}

fn read<B: Backend, const D: usize>(t: Tensor<B, D>) -> Result<Vec<f32>> {
    t.into_data()
        .convert::<f32>()
        .to_vec::<f32>()
        .map_err(|e| DetError::InvalidOption {
            op: "vild",
            why: format!("could not read tensor: {e:?}"),
        })
}

/// Filled boxes `[G, H, W]` (1 inside a box, pixel centres) on an `h × w` canvas.
fn box_masks<B: Backend>(
    boxes: &[HostBox],
    h: usize,
    w: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    let mut data = vec![0.0f32; boxes.len() * h * w];
    for (g, b) in boxes.iter().enumerate() {
        let (x0, x1) = (
            (b[0] - 0.5).ceil().max(0.0) as usize,
            (b[2] - 0.5).ceil().max(0.0) as usize,
        );
        let (y0, y1) = (
            (b[1] - 0.5).ceil().max(0.0) as usize,
            (b[3] - 0.5).ceil().max(0.0) as usize,
        );
        for y in y0..y1.min(h) {
            let row = g * h * w + y * w;
            data[row + x0.min(w)..row + x1.min(w)].fill(1.0);
        }
    }
    Tensor::from_data(TensorData::new(data, [boxes.len(), h, w]), device)
}

/// A seed from the batch's sample keys (RoI sampling is then a function of the batch).
fn batch_seed<B: Backend>(batch: &Batch<B>, seed: u64) -> u64 {
    batch
        .samples
        .iter()
        .flat_map(|s| s.key.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

impl Recipe for VildRecipe {
    const NAME: &'static str = "vild";
    type Model<B: Backend> = VildModel<B>;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<VildModel<B>> {
        let detector = self.detector_config().init(device)?;
        let clip = self.clip_config()?.init(device);
        Ok(VildModel::new(detector, clip))
    }

    fn learner(&self) -> &LearnerConfig {
        &self.learner
    }

    fn data(&self) -> &DataConfig {
        &self.data
    }

    fn param_group(path: &[String]) -> ParamGroup {
        match (
            path.first().map(String::as_str),
            path.get(1).map(String::as_str),
        ) {
            (Some("clip"), _) => ParamGroup::Language,
            (Some("detector"), Some("backbone")) => ParamGroup::Backbone,
            (Some("detector"), Some("box_regression" | "projection" | "image_projection")) => {
                ParamGroup::Output
            }
            _ => ParamGroup::New,
        }
    }

    fn test_transform(&self) -> TestTransform {
        TestTransform {
            short: self.test.short_side,
            max_long: self.test.max_long,
            normalize: Normalize::imagenet(),
        }
    }

    fn prepare<B: DetclipAutodiffBackend>(
        &self,
        model: VildModel<B>,
        device: &B::Device,
    ) -> Result<VildModel<B>> {
        if let VildClip::Released { config, weights } = &self.clip {
            let keys = match config.vision.layout {
                ClipLayout::Hf => hf_clip_keys(),
                ClipLayout::OpenAi => openai_clip_keys(),
            };
            let mut clip = model.clip;
            load_checkpoint(&mut clip, weights, &keys, &LoadOptions::default())?;
            // A fresh model: the class cache must not hold embeddings of the unloaded CLIP.
            return Ok(VildModel::new(model.detector, clip));
        }
        let Some(t) = &self.teacher else {
            return Ok(model);
        };
        let side = self.clip.image_size();
        let data = teacher::teacher_data(t, side, side, side)?;
        let template = self.templates.first().map_or(TEMPLATE, String::as_str);
        let seed = self.learner.seed;
        let (clip, report) =
            teacher::pretrain(model.clip, &data, &self.text, template, t, seed, device)?;
        let (base, novel) = self.teacher_split_accuracy(&clip.valid(), &data, device)?;
        eprintln!(
            "vild teacher: CLIP on {} crops of {} concepts, loss {:.3} → {:.3}, crop accuracy \
             {:.3} (base {base:.3}, held-out {novel:.3})",
            data.crops.len(),
            data.crops.names.len(),
            report.first_loss,
            report.last_loss,
            report.accuracy
        );
        // A fresh model: the class cache must not hold embeddings of the untrained CLIP.
        Ok(VildModel::new(model.detector, clip))
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        model: &VildModel<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let device = batch.images.device();
        let base = self.base_names(vocabulary);
        if base.is_empty() {
            return Err(DetError::InvalidOption {
                op: "vild",
                why: "the source has no base class (every name is held out)".into(),
            });
        }
        // CLIP runs on the inner backend: it never enters the graph.
        let classes = Tensor::from_inner(self.class_embeddings(&model.valid(), &base, &device)?);
        let w = self.loss.image_weight;
        let mut teachers = if w > 0.0 {
            self.teacher_regions(model, batch)?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; batch.samples.len()]
        };
        let [_, _, h, wd] = batch.images.dims();
        let targets: Vec<VildTarget<B>> = (0..batch.samples.len())
            .map(|i| {
                let (boxes, labels) = self.targets_of(batch, i, &base);
                let masks = self
                    .loss
                    .box_masks
                    .then(|| box_masks::<B>(&boxes, h, wd, &device));
                VildTarget {
                    boxes,
                    labels,
                    masks,
                    teacher: teachers[i].take(),
                }
            })
            .collect();
        let config = VildLossConfig::new()
            .with_image_weight(w)
            .with_ensemble(self.loss.ensemble);
        let mut rng = SampleRng::new(batch_seed(batch, self.learner.seed));
        let l = vild_loss(
            &model.detector,
            batch.images.clone(),
            &targets,
            classes,
            &config,
            &mut rng,
        )?;
        let mut terms = LossTerms::new();
        terms.push("text", l.text);
        if w > 0.0 {
            terms.push("image", l.image * w);
        }
        terms.push("box", l.box_regression);
        if self.loss.box_masks {
            terms.push("mask", l.mask);
        }
        terms.push("rpn_objectness", l.rpn_objectness);
        terms.push("rpn_box", l.rpn_box);
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        model: &VildModel<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let device = batch.images.device();
        let classes = self.class_embeddings(model, vocabulary, &device)?;
        let is_base: Vec<bool> = vocabulary
            .iter()
            .map(|n| !self.held_out.contains(n))
            .collect();
        let [base, novel] = self.test.ensemble_lambda;
        let ensemble = self
            .loss
            .ensemble
            .then(|| EnsembleWeights::new().with_base(base).with_novel(novel));
        let config = VildPredictConfig::new()
            .with_ensemble(ensemble)
            .with_score_threshold(threshold)
            .with_nms_threshold(self.test.nms_iou)
            .with_max_detections(self.test.max_detections);
        let dets = predict(
            &model.detector,
            batch.images.clone(),
            classes,
            &is_base,
            &config,
        )?;
        Ok(dets
            .into_iter()
            .zip(&batch.image_sizes)
            .map(|(d, &(h, w))| to_detected(d, h, w))
            .collect())
    }

    fn validate(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        self.text.validate()?;
        if let Some(t) = &self.teacher {
            t.validate()?;
        }
        let bad = |why: String| Err(DetError::InvalidOption { op: "vild", why });
        let l = &self.loss;
        if !(l.image_weight >= 0.0 && l.image_weight.is_finite()) {
            return bad(format!(
                "loss.image_weight must be finite and ≥ 0, got {}",
                l.image_weight
            ));
        }
        if l.ensemble && l.image_weight == 0.0 {
            return bad(
                "loss.ensemble distils into the second projection: it needs image_weight > 0"
                    .into(),
            );
        }
        if l.image_weight > 0.0
            && self.teacher_dir.is_none()
            && (l.proposals == 0
                || l.crop_scales.is_empty()
                || l.crop_scales.iter().any(|&s| s <= 0.0))
        {
            return bad(
                "on-the-fly ViLD-image needs proposals ≥ 1 and positive crop scales".into(),
            );
        }
        if let Some(dir) = &self.teacher_dir {
            if !dir.is_dir() {
                return bad(format!(
                    "teacher_dir {} is not a folder (run `detclip vild precompute` first)",
                    dir.display()
                ));
            }
            if let Some(s) = self.data.sources.iter().find(|s| s.flip_prob > 0.0) {
                return bad(format!(
                    "source `{}` flips images, but precomputed teacher boxes are of unflipped \
                     images: set flip_prob to 0",
                    s.name
                ));
            }
        }
        if let Some(s) = self
            .data
            .sources
            .iter()
            .find(|s| matches!(&s.dataset, DatasetConfig::Pairs { .. })
                || matches!(&s.dataset, DatasetConfig::Synthetic(w) if w.kind == SourceKind::ImageText))
        {
            return bad(format!(
                "source `{}` holds image-text pairs: ViLD trains on boxes",
                s.name
            ));
        }
        if self.templates.is_empty() || self.templates.iter().any(|t| t.matches("{}").count() != 1)
        {
            return bad("give at least one template, each with one `{}`".into());
        }
        let t = &self.test;
        if t.max_detections == 0 || !(0.0..=1.0).contains(&t.nms_iou) {
            return bad("test.max_detections must be positive and test.nms_iou in [0, 1]".into());
        }
        match &self.clip {
            VildClip::Small(c) => {
                if c.patch == 0
                    || !c.image_size.is_multiple_of(c.patch)
                    || c.heads == 0
                    || !c.width.is_multiple_of(c.heads)
                    || !c.text_width.is_multiple_of(c.heads)
                    || c.layers == 0
                    || c.embed_dim == 0
                {
                    return bad(format!(
                        "inconsistent CLIP sizes: {c:?} (the side a multiple of the patch, \
                         widths of the heads, at least one layer)"
                    ));
                }
            }
            VildClip::Released { weights, .. } => {
                if self.teacher.is_some() {
                    return bad(
                        "`teacher` pre-trains the small CLIP; a released CLIP is loaded as it is \
                         (set teacher to null)"
                            .into(),
                    );
                }
                if !weights.is_file() {
                    return Err(DetError::Io {
                        path: weights.display().to_string(),
                        msg: "the released CLIP's weights (clip.released.weights) do not exist"
                            .into(),
                    });
                }
            }
        }
        if let VildDetectorSize::Small(s) = &self.detector
            && (s.width == 0 || s.fpn_channels == 0 || s.layers.contains(&0))
        {
            return bad(format!("inconsistent detector sizes: {s:?}"));
        }
        self.clip_config().map(|_| ())
    }
}

fn to_detected(d: VildDetections, h: usize, w: usize) -> Vec<Detected> {
    let (w, h) = (w as f32, h as f32);
    d.boxes
        .into_iter()
        .zip(d.scores)
        .zip(d.labels)
        .map(|((b, score), label)| Detected {
            bbox: [
                b[0].clamp(0.0, w),
                b[1].clamp(0.0, h),
                b[2].clamp(0.0, w),
                b[3].clamp(0.0, h),
            ],
            label,
            score,
            mask: None,
        })
        .collect()
}
