//! The `regionspot` recipe's configuration: its sections, presets and checks.

use std::path::{Path, PathBuf};

use detclip_core::data::SourceKind;
use detclip_core::data::synthetic::{Split, World, WorldConfig};
use detclip_core::{DetError, Result};
use detclip_models::clip::ClipLayout;
use detclip_models::hf::read_clip_config;
use detclip_models::regionspot::{
    PROMPT_TEMPLATES, RegionSpotConfig, RegionSpotHeadConfig, SmallRegionSpot,
};
use detclip_models::sam::SamConfig;
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig};
use crate::learner::{Decay, LearnerConfig};
use crate::teacher::{self, SamTarget, TeacherConfig, TextSide, words_of};

/// Official SAM and CLIP checkpoints, loaded before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenWeights {
    /// `sam_vit_b_01ec64.pth`.
    pub sam: PathBuf,
    /// OpenAI's CLIP state dict (`ViT-B-16.pt` / `ViT-L-14.pt` saved as a state dict).
    pub clip: PathBuf,
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpotLossSettings {
    /// Focal α.
    pub alpha: f32,
    /// Focal γ.
    pub gamma: f32,
}

/// Inference settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpotTestConfig {
    /// Shorter side of the test resize; `null`: the photo at its own size, as the official
    /// `RegionSpot_Predictor` takes it.
    pub short_side: Option<u32>,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Detections kept per image (box × class pairs): with `scores: softmax` the pairs of
    /// highest class probability (official: 900), else the best scores.
    pub max_detections: usize,
    /// How a box × class pair is scored.
    #[serde(default)]
    pub scores: RegionSpotScores,
}

/// How a box × class pair is scored at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RegionSpotScores {
    /// Each pair on its own: the sigmoid of its logit (the focal loss's view), times the box's
    /// score when the box comes with one; the best `max_detections` kept.
    #[default]
    Sigmoid,
    /// The official inference (`RegionSpot.inference_pred_box` / `inference_gt_box`): a softmax
    /// over the classes of each box, the `max_detections` pairs of highest probability over
    /// all boxes and classes, each probability times the box's score when the box comes with
    /// one.
    Softmax,
}

/// What SAM and CLIP see of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FrozenPixels {
    /// The image padded to a square (bottom and right) and resized to SAM's and CLIP's input
    /// sides with Burn's bilinear interpolation (corners aligned): what the synthetic-world
    /// runs were trained with.
    #[default]
    Square,
    /// As the official `RegionSpot_Predictor.set_image`: SAM gets the 8-bit image resized so
    /// its longer side is SAM's input side (`ResizeLongestSide`: PIL's bilinear filter), then
    /// SAM's normalisation and zero padding to the square; CLIP gets the whole image squashed
    /// to its input square (`F.interpolate`, bilinear, corners not aligned) and CLIP's
    /// normalisation. Boxes are scaled per axis into SAM's frame.
    Official,
}

/// The `regionspot` recipe.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpotRecipe {
    /// SAM, CLIP and the module (`model.head`'s `key_positions`, `query_positions` and
    /// `clip_norm` switch the module's departures from the official one; all off for official
    /// checkpoints).
    pub model: RegionSpotConfig,
    /// How class names are tokenised.
    pub text: TextSide,
    /// Prompt templates, each with one `{}`; a class embedding is the normalised mean over
    /// them.
    pub templates: Vec<String>,
    /// Official SAM and CLIP weights, if any.
    pub weights: Option<FrozenWeights>,
    /// The small CLIP teacher's pre-training (synthetic world), if any.
    pub teacher: Option<TeacherConfig>,
    /// Where SAM's and CLIP's outputs are cached per image, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// What scores the boxes at inference: the trained module (the default) or, as a
    /// baseline, CLIP's own feature map pooled in each box.
    #[serde(default)]
    pub recognizer: Recognizer,
    /// What SAM and CLIP see of an image (official checkpoints: `official`).
    #[serde(default)]
    pub pixels: FrozenPixels,
    /// The loss.
    pub loss: RegionSpotLossSettings,
    /// Inference.
    pub test: RegionSpotTestConfig,
    /// Training sources (detection or grounding: boxes are the prompts) and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
}

/// What scores a box against the classes at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recognizer {
    /// RegionSpot: the trained module's semantic token.
    #[default]
    Module,
    /// The baseline the module must beat: CLIP's patch tokens projected into the joint space
    /// (`proj(ln_post(·))`, as the class token is) and averaged over the patches whose centre
    /// lies in the box (the patch under the box's centre when none does). SAM and the module
    /// are not used for the scores.
    PooledClip,
}

pub(super) const TEMPLATE: &str = "a photo of a {}.";

impl RegionSpotRecipe {
    /// The synthetic-world preset: small SAM and CLIP, the CLIP teacher pre-trained on every
    /// concept, the module trained on base concepts, evaluated on seen and held-out ones.
    ///
    /// The module departs from the official one in three switches (all off by default, so
    /// official checkpoints load unchanged): `clip_norm` (the official, never-called
    /// `ln_clip`), and SAM's positional encoding on the keys (`key_positions`) and queries
    /// (`query_positions`). Without them the module cannot find its box in the small CLIP's
    /// feature map and seen AP stays at chance (the book's RegionSpot chapter has the runs).
    pub fn synthetic() -> Self {
        let world = |seed, images| {
            SyntheticConfig::new(seed, images, (112, 160), (3, 20), SourceKind::Detection)
        };
        let names = World::new(WorldConfig::default())
            .map(|w| w.vocabulary(Split::Test))
            .unwrap_or_default();
        let templates = vec![TEMPLATE.to_string()];
        let text = TextSide::Words {
            words: words_of(&names, &templates),
            context: 8,
        };
        let mut model = RegionSpotConfig::small(
            SmallRegionSpot {
                sam_size: 128,
                sam_patch: 8,
                sam_width: 32,
                sam_depth: 2,
                sam_window: 4,
                sam_dim: 32,
                clip: teacher::SMALL_CLIP,
                clip_input: 128,
                head_layers: 2,
                head_ffn: 128,
            },
            text.vocab_size().unwrap_or_default(),
            text.context(),
        );
        model.head.key_positions = true;
        model.head.query_positions = true;
        model.head.clip_norm = true;
        Self {
            model,
            text,
            templates,
            weights: None,
            teacher: Some(TeacherConfig {
                world_seed: 77,
                images: 600,
                steps: 400,
                batch_size: 64,
                lr: 2e-3,
                margin: 0.1,
                scenes_per_step: 8,
                sam_steps: 300,
                sam_target: SamTarget::Mask,
                sam_token_box_weight: 1.0,
            }),
            cache_dir: None,
            recognizer: Recognizer::Module,
            pixels: FrozenPixels::Square,
            loss: RegionSpotLossSettings {
                alpha: 0.25,
                gamma: 2.0,
            },
            test: RegionSpotTestConfig {
                short_side: Some(128),
                max_long: Some(192),
                max_detections: 100,
                scores: RegionSpotScores::Sigmoid,
            },
            data: DataConfig {
                sources: vec![SourceConfig::synthetic(
                    "detection",
                    world(1, 1500),
                    8,
                    vec![128],
                )],
                eval: Some(
                    SyntheticConfig {
                        kind: SourceKind::Grounding,
                        ..world(3, 150)
                    }
                    .into(),
                ),
                size_divisor: 32,
            },
            learner: {
                let mut l = LearnerConfig::adamw(1200, 1e-3);
                l.optim.clip_grad_norm = Some(1.0);
                l.schedule.warmup_steps = 30;
                l.schedule.decay = Decay::Cosine { min_factor: 0.05 };
                l.checkpoint_every = 100;
                l
            },
        }
    }

    /// A released RegionSpot as the official code runs it, for `detclip import` of a released
    /// checkpoint (`regionspot_bb.pth`: [`RegionSpotConfig::vit_b_16`]; `regionspot_bl.pth`:
    /// [`RegionSpotConfig::vit_l_14`]): CLIP's own BPE tokenizer (`tokenizer.json` of
    /// `openai/clip-vit-*`, 77 tokens), the official 81 prompt templates, no teacher, official
    /// pixels (the photo at its own size, [`FrozenPixels::Official`]) and softmax scoring with
    /// the official 900 pairs per image. Training settings are the synthetic preset's.
    pub fn released(model: RegionSpotConfig, tokenizer: PathBuf) -> Self {
        let mut r = Self::synthetic();
        r.model = model;
        r.text = TextSide::Tokenizer {
            path: tokenizer,
            context: 77,
        };
        r.templates = PROMPT_TEMPLATES.iter().map(|t| t.to_string()).collect();
        r.teacher = None;
        r.pixels = FrozenPixels::Official;
        r.test = RegionSpotTestConfig {
            short_side: None,
            max_long: None,
            max_detections: 900,
            scores: RegionSpotScores::Softmax,
        };
        r
    }

    /// The released RegionSpot whose CLIP is the one of the Hugging Face folder `clip_dir`
    /// (`openai/clip-vit-base-patch16` for `regionspot_bb.pth`, `openai/clip-vit-large-patch14`
    /// for `regionspot_bl.pth`): SAM ViT-B, CLIP of the folder's sizes in OpenAI's layout (the
    /// official checkpoint's), the module's widths from CLIP's (`clip_dim` its image width,
    /// `text_dim` its embedding), CLIP's input its image size, and the folder's BPE
    /// `tokenizer.json`; otherwise as [`RegionSpotRecipe::released`]. `detclip import --recipe
    /// regionspot --text-model CLIP_DIR`.
    ///
    /// # Errors
    /// As [`read_clip_config`]; a text-only CLIP folder (no image tower to size).
    pub fn released_from_clip_folder(clip_dir: &Path) -> Result<Self> {
        let hf = read_clip_config(&clip_dir.join("config.json"))?;
        if !hf.has_vision {
            return Err(DetError::InvalidOption {
                op: "regionspot recipe",
                why: format!(
                    "{} holds a CLIP text tower only; RegionSpot needs the whole CLIP's folder \
                     (e.g. openai/clip-vit-base-patch16)",
                    clip_dir.display()
                ),
            });
        }
        let mut clip = hf.config;
        clip.vision.layout = ClipLayout::OpenAi;
        clip.text.layout = ClipLayout::OpenAi;
        let head = RegionSpotHeadConfig::new()
            .with_clip_dim(clip.vision.width)
            .with_text_dim(clip.text.embed_dim);
        let clip_input = clip.vision.image_size;
        let model =
            RegionSpotConfig::new(SamConfig::vit_b(), clip, head).with_clip_input(clip_input);
        Ok(Self::released(model, clip_dir.join("tokenizer.json")))
    }

    /// A tiny preset for tests: narrow encoders, a short teacher, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        let head = r.model.head.clone();
        r.model = RegionSpotConfig::small(
            SmallRegionSpot {
                sam_size: 64,
                sam_patch: 8,
                sam_width: 16,
                sam_depth: 1,
                sam_window: 4,
                sam_dim: 16,
                clip: teacher::TINY_CLIP,
                clip_input: 32,
                head_layers: 1,
                head_ffn: 32,
            },
            r.model.clip.text.vocab_size,
            r.model.clip.text.context_length,
        );
        r.model.head.key_positions = head.key_positions;
        r.model.head.query_positions = head.query_positions;
        r.model.head.clip_norm = head.clip_norm;
        if let Some(t) = &mut r.teacher {
            t.images = 8;
            t.steps = 4;
            t.batch_size = 8;
            t.scenes_per_step = 2;
            t.sam_steps = 3;
        }
        let tiny_world =
            |seed, images, kind| SyntheticConfig::new(seed, images, (64, 80), (2, 16), kind);
        for s in &mut r.data.sources {
            s.dataset = DatasetConfig::Synthetic(tiny_world(1, 12, SourceKind::Detection));
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = 2;
            s.flip_prob = 0.0;
        }
        r.data.eval = Some(tiny_world(3, 4, SourceKind::Grounding).into());
        r.test.short_side = Some(64);
        r.test.max_long = Some(96);
        r.learner.steps = 20;
        r.learner.optim.lr = 3e-3;
        r.learner.schedule.warmup_steps = 2;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }

    /// [`Recipe::validate`](crate::recipe::Recipe::validate): every section, and what joins them (CLIP's vocabulary, official
    /// weights against the teacher, templates, sources).
    pub(super) fn check(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        self.text.validate()?;
        if let Some(t) = &self.teacher {
            t.validate()?;
        }
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "regionspot",
                why,
            })
        };
        if self.templates.is_empty() || self.templates.iter().any(|t| !t.contains("{}")) {
            return bad("give at least one template, each with one `{}`".into());
        }
        if self.test.max_detections == 0 {
            return bad("test.max_detections must be positive".into());
        }
        if self.test.short_side == Some(0) {
            return bad(
                "test.short_side must be positive (null keeps the photo's own size)".into(),
            );
        }
        if let Some(s) = self.data.sources.iter().find(|s| is_image_text(&s.dataset)) {
            return bad(format!(
                "source `{}` holds image-text pairs: RegionSpot trains on boxes (detection or \
                 grounding sources)",
                s.name
            ));
        }
        self.model.validate()?;
        match (self.text.vocab_size(), &self.weights) {
            (Some(vocab), None) => {
                let t = &self.model.clip.text;
                if vocab != t.vocab_size || self.text.context() != t.context_length {
                    return bad(format!(
                        "the word vocabulary has {vocab} ids padded to {}, but \
                         model.clip.text has vocab_size {} and context_length {}; set them to \
                         match",
                        self.text.context(),
                        t.vocab_size,
                        t.context_length
                    ));
                }
            }
            (Some(_), Some(_)) => {
                return bad("official CLIP weights read class names through CLIP's own \
                     tokenizer (`text: tokenizer` with its tokenizer.json), not a word \
                     vocabulary"
                    .into());
            }
            (None, None) if self.teacher.is_some() => {
                return bad(
                    "the small CLIP teacher takes a word vocabulary (`text: words`)".into(),
                );
            }
            _ => {}
        }
        if self.teacher.is_some() && self.weights.is_some() {
            return bad(
                "`teacher` pre-trains a small SAM and CLIP; official weights are loaded as they \
                 are (set teacher to null)"
                    .into(),
            );
        }
        Ok(())
    }
}

fn is_image_text(dataset: &DatasetConfig) -> bool {
    match dataset {
        DatasetConfig::Pairs { .. } => true,
        DatasetConfig::Synthetic(s) => s.kind == SourceKind::ImageText,
        _ => false,
    }
}
