//! The `vild` recipe's configuration: its sections, presets and checks.

use std::path::PathBuf;

use detclip_core::data::SourceKind;
use detclip_core::data::synthetic::{Split, World, WorldConfig};
use detclip_core::{DetError, Result};
use detclip_models::clip::ClipConfig;
use detclip_models::layers::NormMode;
use detclip_models::vild::VildConfig;
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig, SyntheticSplit};
use crate::learner::{Decay, LearnerConfig};
use crate::teacher::{self, TeacherConfig, TextSide, words_of};

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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VildRecipe {
    /// The detector (its `embed_dim` is CLIP's).
    pub model: VildConfig,
    /// CLIP, the teacher and the text classifier: a small one built here (the synthetic
    /// world: `teacher` pre-trains it) or a released one's sizes and key layout
    /// (`clip_weights`).
    pub clip: ClipConfig,
    /// A released CLIP's state dict (`.pt` / `.pth` saved as a state dict, or safetensors),
    /// loaded into `clip` by [`Recipe::prepare`](crate::recipe::Recipe::prepare) in the key layout `clip` names. ViLD's
    /// teacher is ViT-B/32 ([`VildRecipe::with_released_clip`]); class names then go through
    /// CLIP's tokenizer (`text: tokenizer`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clip_weights: Option<PathBuf>,
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
}

/// ViLD's single prompt ([`detclip_models::vild::VILD_PROMPT`]) with a final period (the
/// teacher is trained on it).
pub(super) const TEMPLATE: &str = "a photo of {} in the scene.";

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

/// The presets' detector: [`VildConfig::tiny`] with one block per ResNet stage of `width`
/// (stem too) and batch statistics (trained from scratch), an FPN of `fpn` channels, a box
/// head of `representation` and four mask convolutions of `mask_width`.
fn small_detector(
    embed_dim: usize,
    width: usize,
    fpn: usize,
    representation: usize,
    mask_width: usize,
) -> VildConfig {
    let mut c = VildConfig::tiny(embed_dim).with_fpn_channels(fpn);
    c.backbone.layers = [1, 1, 1, 1];
    c.backbone = c
        .backbone
        .with_width(width)
        .with_stem_channels(width)
        .with_norm(NormMode::Batch);
    c.roi = c
        .roi
        .with_representation(representation)
        .with_mask_layers(vec![mask_width; 4]);
    c
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
        let text = TextSide::Words {
            words: words_of(&names, &templates),
            context: 12,
        };
        let clip = ClipConfig::small(
            teacher::SMALL_CLIP,
            text.vocab_size().unwrap_or_default(),
            text.context(),
        );
        Self {
            model: small_detector(clip.vision.embed_dim, 8, 32, 128, 16),
            clip,
            clip_weights: None,
            text,
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
        }
    }

    /// A tiny preset for tests: narrow layers, a short teacher, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        r.clip = ClipConfig::small(
            teacher::TINY_CLIP,
            r.clip.text.vocab_size,
            r.clip.text.context_length,
        );
        r.model = small_detector(r.clip.vision.embed_dim, 4, 16, 32, 8);
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

    /// This recipe with a released CLIP of `config`'s sizes and key layout loaded from
    /// `weights` (ViLD's teacher: `ClipConfig::vit_b_32`), whose class names go through its
    /// own tokenizer `tokenizer` (`tokenizer.json`, padded to CLIP's 77 tokens); no teacher
    /// pre-training, and a detector of CLIP's embedding width.
    pub fn with_released_clip(
        mut self,
        config: ClipConfig,
        weights: impl Into<PathBuf>,
        tokenizer: impl Into<PathBuf>,
    ) -> Self {
        self.model.embed_dim = config.vision.embed_dim;
        self.text = TextSide::Tokenizer {
            path: tokenizer.into(),
            context: config.text.context_length,
        };
        self.clip = config;
        self.clip_weights = Some(weights.into());
        self.teacher = None;
        self
    }
    /// [`Recipe::validate`](crate::recipe::Recipe::validate): every section, and what joins them (CLIP's vocabulary and
    /// embedding width, the teacher, precomputed targets, templates).
    pub(super) fn check(&self) -> Result<()> {
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
        self.model.validate()?;
        self.clip.validate()?;
        if self.model.embed_dim != self.clip.vision.embed_dim {
            return bad(format!(
                "model.embed_dim ({}) must be CLIP's embedding width ({})",
                self.model.embed_dim, self.clip.vision.embed_dim
            ));
        }
        match (&self.clip_weights, self.text.vocab_size()) {
            (Some(weights), words) => {
                if words.is_some() {
                    return bad(
                        "a released CLIP reads class names through its own tokenizer \
                         (`text: tokenizer` with its tokenizer.json), not a word vocabulary"
                            .into(),
                    );
                }
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
                        msg: "the released CLIP's weights (clip_weights) do not exist".into(),
                    });
                }
            }
            (None, None) => {
                return bad(
                    "the small CLIP takes a word vocabulary (`text: words`), not a \
                     tokenizer file"
                        .into(),
                );
            }
            (None, Some(vocab)) => {
                if vocab != self.clip.text.vocab_size
                    || self.text.context() != self.clip.text.context_length
                {
                    return bad(format!(
                        "the word vocabulary has {vocab} ids padded to {}, but clip.text has \
                         vocab_size {} and context_length {}; set them to match",
                        self.text.context(),
                        self.clip.text.vocab_size,
                        self.clip.text.context_length
                    ));
                }
            }
        }
        Ok(())
    }
}
