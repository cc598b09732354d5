//! `glip`: GLIP (detection as phrase grounding with deep X-MHA fusion,
//! `detclip_models::glip`) trained by the shared learner.
//!
//! - Prompts: a detection sample's prompt is built from the source's vocabulary as GLIP does
//!   (`"red ring. blue star. …"`: every positive class plus a random number of negatives,
//!   shuffled, [`training_prompt`]); a grounding sample's prompt is its caption. Each box is
//!   grounded to the tokens of its phrase (the positive map).
//! - Text side: BERT over a WordPiece vocabulary built in code from the synthetic world's
//!   words ([`wordpiece_tokenizer`]: no released vocabulary file is needed or embedded; any
//!   other ASCII word is spelled in letter pieces). Prompts are padded to `text.max_tokens`.
//! - Loss: ATSS assignment, token-level sigmoid focal loss, GIoU and centerness
//!   ([`glip_loss`]), logged as `token`, `giou` and `centerness`.
//! - Inference: the vocabulary (with optional descriptions, `"name, description"`,
//!   [`described_prompts`]) is split into prompts of at most `text.max_tokens` tokens, run as
//!   rows of one batch, and merged per image by [`glip_detect`].
//! - Fine-tuning modes ([`FineTune`]): full, prompt tuning (only the learned prompt
//!   embeddings, GLIP's `tunable_linear`, train) and linear probing (only the head's output
//!   layers train), as frozen parameter groups of the learner.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use burn::module::Param;
use burn::prelude::*;
use detclip_core::assign::{AnchorGenerator, AnchorLevel, AtssOptions};
use detclip_core::data::prompt::{NegativeSampling, PromptFormat, training_prompt};
use detclip_core::data::synthetic::{Color, Shape};
use detclip_core::data::{Batch, Normalize, Sample, SourceKind, Span, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::ops::DeltaBoxCoder;
use detclip_core::{DetError, Result};
use detclip_models::bert::BertConfig;
use detclip_models::glip::{
    Glip, GlipBackboneConfig, GlipConfig, GlipInferenceConfig, GlipLossConfig, GlipTarget,
    PhraseTokens, described_prompts, glip_detect, glip_loss,
};
use detclip_models::layers::NormMode;
use detclip_models::resnet::ResNetConfig;
use detclip_models::swin::SwinConfig;
use detclip_models::tokenizer::{
    Overflow, TextTokenizer, TokenizedText, TokenizerOptions, batch_tensors, wordpiece_tokenizer,
    wordpiece_vocabulary,
};
use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig};
use crate::learner::LearnerConfig;
use crate::recipe::{Detected, LossTerms, ParamGroup, Recipe};

/// The model's sizes (a Swin backbone, a BERT text encoder, the VLDyHead).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipModelSizes {
    /// Swin's embedding width (stage `i` has `2^i` times it).
    pub swin_dim: usize,
    /// Swin blocks per stage.
    pub swin_depths: [usize; 4],
    /// Swin heads per stage.
    pub swin_heads: [usize; 4],
    /// Swin's window side.
    pub swin_window: usize,
    /// BERT's hidden width.
    pub bert_hidden: usize,
    /// BERT layers.
    pub bert_layers: usize,
    /// BERT heads.
    pub bert_heads: usize,
    /// BERT's feed-forward width.
    pub bert_intermediate: usize,
    /// FPN and head channels.
    pub channels: usize,
    /// X-MHA + BERT layer + DyHead block repeats; 0 leaves the whole tower out (an ablation:
    /// the head then aligns the FPN's regions with BERT's words, with no fusion).
    pub num_layers: usize,
    /// X-MHA's joint width.
    pub fusion_dim: usize,
    /// X-MHA heads.
    pub fusion_heads: usize,
    /// GroupNorm groups of the DyHead blocks; 0 leaves the GroupNorms out (an ablation).
    pub norm_groups: usize,
    /// Anchor side as a multiple of the level's stride (GLIP: 8).
    pub anchor_scale: f32,
    /// The X-MHA fusion and its BERT layers before each DyHead block; `false` keeps the DyHead
    /// blocks only (GLIP-T (A), an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub fusion: bool,
    /// Initial layer scale γ of the X-MHA blocks; `None`: `1 / num_layers` (the released
    /// model's rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fusion_gamma: Option<f64>,
    /// A ResNet in place of Swin (GLIP's R50 variants; here a small one with trainable batch
    /// norms, as DetCLIPv2's synthetic preset has); the `swin_*` fields are then unused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resnet: Option<GlipResNetSizes>,
    /// Modulated deformable convolutions in the DyHead blocks (as released); `false`: plain
    /// 3×3 convolutions (an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub deformable: bool,
    /// Scale-aware attention in the DyHead blocks (as released); `false`: the three levels'
    /// maps are averaged (an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub scale_attention: bool,
    /// DyReLU in the DyHead blocks (as released); `false`: a plain ReLU (an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub dyrelu: bool,
    /// The box and centerness losses train the shared tower (as released); `false`: only the
    /// alignment loss does (an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub box_gradient_to_tower: bool,
    /// The DyHead blocks in the tower (as released); `false`: X-MHA fusion and its BERT
    /// layers only (an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub dyhead: bool,
    /// X-MHA adds its image update to the LayerNorm-ed features (as released); `false`: to
    /// the incoming features (an ablation).
    #[serde(default = "yes", skip_serializing_if = "is_yes")]
    pub fusion_image_norm: bool,
}

fn yes() -> bool {
    true
}

fn is_yes(b: &bool) -> bool {
    *b
}

/// A ResNet backbone's sizes: bottleneck blocks as in ResNet-50, batch norms that train, no
/// frozen stage.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipResNetSizes {
    /// Blocks per stage (ResNet-50: `[3, 4, 6, 3]`).
    pub layers: [usize; 4],
    /// The stem's output channels (ResNet-50: 64).
    pub stem_channels: usize,
    /// The first stage's bottleneck width (ResNet-50: 64; outputs are 4× it, doubling per
    /// stage).
    pub width: usize,
}

/// The text side: prompt length and vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipTextConfig {
    /// Tokens per prompt, `[CLS]` and `[SEP]` included (GLIP: 256); also the prompt-tuning
    /// table, and BERT's position table unless `positions` says otherwise.
    pub max_tokens: usize,
    /// Most class names in a training prompt (GLIP's `max_num_labels`).
    pub max_names: usize,
    /// Words added to the WordPiece vocabulary besides the synthetic world's.
    pub extra_words: Vec<String>,
    /// A BERT `tokenizer.json` whose WordPiece vocabulary replaces the one built in code
    /// (GLIP-T: `bert-base-uncased`'s, 30,522 pieces); `extra_words` must then be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// Rows of BERT's position table (GLIP-T: BERT-base's 512); `None`: `max_tokens`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub positions: Option<usize>,
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipLossSettings {
    /// Focal α of the token loss.
    pub focal_alpha: f32,
    /// Focal γ of the token loss.
    pub focal_gamma: f32,
    /// ATSS candidates per level.
    pub atss_top_k: usize,
    /// Weight of the GIoU term.
    pub reg_weight: f32,
}

/// Inference settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipTestSettings {
    /// Shorter side of the test resize.
    pub short_side: u32,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Phrase scores at or below this are not candidates.
    pub candidate_threshold: f32,
    /// Candidates kept per image before NMS.
    pub pre_nms_top_k: usize,
    /// NMS IoU threshold (per class).
    pub nms_iou: f32,
    /// Detections kept per image.
    pub max_detections: usize,
    /// Descriptions of classes, written into the prompt as `"name, description"`.
    pub descriptions: BTreeMap<String, String>,
}

/// GLIP's fine-tuning modes (`SOLVER.TUNING_HIGHLEVEL_OVERRIDE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FineTune {
    /// Everything but the prompt embeddings trains (`full`).
    Full,
    /// Only the learned prompt embeddings train (`language_prompt_v2`).
    PromptTuning,
    /// Only the head's output layers train: box, centerness, the token projection, the
    /// alignment bias and scale (`linear_prob`).
    LinearProbe,
}

impl FineTune {
    /// The parameter groups the mode freezes.
    pub fn frozen(self) -> Vec<ParamGroup> {
        use ParamGroup::*;
        match self {
            FineTune::Full => vec![Prompt],
            FineTune::PromptTuning => vec![Backbone, Language, New, Output],
            FineTune::LinearProbe => vec![Backbone, Language, New, Prompt],
        }
    }
}

/// The `glip` recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipRecipe {
    /// The model's sizes.
    pub model: GlipModelSizes,
    /// The text side.
    pub text: GlipTextConfig,
    /// The loss.
    pub loss: GlipLossSettings,
    /// Inference.
    pub test: GlipTestSettings,
    /// The fine-tuning mode; `learner.optim.frozen` must be its groups
    /// ([`GlipRecipe::with_fine_tune`] sets both).
    pub fine_tune: FineTune,
    /// Training sources and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
    #[serde(skip)]
    tokenizers: TokenizerCache,
}

/// The tokenizers built so far, keyed by the text side and overflow mode they were built for:
/// `loss` and `detect` ask for one every batch, and a released vocabulary is a file to read
/// and parse. Clones of a recipe share it; the key keeps a clone whose `text` changed from
/// reading another's tokenizer. Not part of the config (never serialised, always equal).
#[derive(Clone, Default)]
struct TokenizerCache(Arc<Mutex<Vec<CachedTokenizer>>>);

/// A built tokenizer and what it was built for.
type CachedTokenizer = (GlipTextConfig, Overflow, Arc<TextTokenizer>);

impl PartialEq for TokenizerCache {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl std::fmt::Debug for TokenizerCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenizerCache")
    }
}

/// The words of the synthetic world: colours, shapes, textures and the captions' other words.
pub fn synthetic_words() -> Vec<String> {
    let captions = [
        "a", "small", "large", "striped", "dotted", "left", "right", "of", "above", "below",
    ];
    Color::ALL
        .iter()
        .map(|c| c.name())
        .chain(Shape::ALL.iter().map(|s| s.name()))
        .chain(captions)
        .map(String::from)
        .collect()
}

/// A slice of the preset's world: up to three objects of 20 px or more.
fn synthetic(seed: u64, images: u64, side: (u32, u32), kind: SourceKind) -> SyntheticConfig {
    SyntheticConfig::new(seed, images, side, (3, 20), kind)
}

fn source(
    name: &str,
    world: SyntheticConfig,
    batch: usize,
    side: u32,
    weight: f64,
) -> SourceConfig {
    SourceConfig {
        weight,
        ..SourceConfig::synthetic(name, world, batch, vec![side])
    }
}

impl GlipRecipe {
    /// The synthetic-world preset: a small GLIP (Swin of width 16, a two-layer BERT of width
    /// 32, two fusion/DyHead layers of 32 channels) on a detection and a grounding source,
    /// a few minutes on two CPU cores (release build).
    pub fn synthetic() -> Self {
        Self {
            model: GlipModelSizes {
                swin_dim: 16,
                swin_depths: [1, 1, 1, 1],
                swin_heads: [1, 2, 4, 4],
                swin_window: 4,
                bert_hidden: 32,
                bert_layers: 2,
                bert_heads: 2,
                bert_intermediate: 64,
                channels: 32,
                num_layers: 2,
                fusion_dim: 64,
                fusion_heads: 4,
                norm_groups: 8,
                anchor_scale: 4.0,
                fusion: true,
                fusion_gamma: None,
                resnet: None,
                deformable: true,
                scale_attention: true,
                dyrelu: true,
                box_gradient_to_tower: true,
                dyhead: true,
                fusion_image_norm: true,
            },
            text: GlipTextConfig {
                max_tokens: 64,
                max_names: 20,
                extra_words: Vec::new(),
                tokenizer: None,
                positions: None,
            },
            loss: GlipLossSettings {
                focal_alpha: 0.25,
                focal_gamma: 2.0,
                atss_top_k: 9,
                reg_weight: 2.0,
            },
            test: GlipTestSettings {
                short_side: 128,
                max_long: Some(192),
                candidate_threshold: 0.05,
                pre_nms_top_k: 300,
                nms_iou: 0.6,
                max_detections: 50,
                descriptions: BTreeMap::new(),
            },
            fine_tune: FineTune::Full,
            data: DataConfig {
                sources: vec![
                    source(
                        "detection",
                        synthetic(1, 2000, (112, 160), SourceKind::Detection),
                        4,
                        128,
                        2.0,
                    ),
                    source(
                        "grounding",
                        synthetic(2, 1000, (112, 160), SourceKind::Grounding),
                        4,
                        128,
                        1.0,
                    ),
                ],
                eval: Some(synthetic(3, 150, (112, 160), SourceKind::Grounding).into()),
                size_divisor: 32,
            },
            learner: {
                let mut l = LearnerConfig::adamw(320, 2e-3);
                l.optim.frozen = FineTune::Full.frozen();
                l.schedule.warmup_steps = 30;
                l.checkpoint_every = 100;
                l
            },
            tokenizers: TokenizerCache::default(),
        }
    }

    /// A tiny preset for tests: narrow layers, small images, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        r.model.swin_dim = 8;
        r.model.swin_heads = [1, 1, 2, 2];
        r.model.bert_hidden = 16;
        r.model.bert_intermediate = 32;
        r.model.channels = 16;
        r.model.fusion_dim = 32;
        r.model.norm_groups = 4;
        r.text.max_tokens = 32;
        r.text.max_names = 4;
        r.test.short_side = 64;
        r.test.max_long = Some(96);
        for (i, s) in r.data.sources.iter_mut().enumerate() {
            if let DatasetConfig::Synthetic(w) = &mut s.dataset {
                *w = synthetic(i as u64 + 1, 16, (64, 80), w.kind);
                w.min_object = 16;
                w.max_objects = 2;
            }
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = 2;
        }
        r.data.eval = Some(synthetic(3, 4, (64, 80), SourceKind::Grounding).into());
        r.learner.steps = 30;
        r.learner.schedule.warmup_steps = 3;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }

    /// The recipe in fine-tuning mode `mode` (its frozen groups set to match).
    pub fn with_fine_tune(mut self, mode: FineTune) -> Self {
        self.fine_tune = mode;
        self.learner.optim.frozen = mode.frozen();
        self
    }

    /// The words of the WordPiece vocabulary.
    fn words(&self) -> Vec<String> {
        let mut words = synthetic_words();
        words.extend(self.text.extra_words.iter().cloned());
        words
    }

    /// The tokenizer: prompts padded to `max_tokens`; longer ones truncated or refused. The
    /// `text.tokenizer` file's, or a WordPiece vocabulary built from the synthetic world's words
    /// and `extra_words`; built once per text side and overflow mode, then shared.
    ///
    /// # Errors
    /// An unreadable or malformed tokenizer file.
    pub fn tokenizer(&self, overflow: Overflow) -> Result<Arc<TextTokenizer>> {
        let mut cache = self.tokenizers.0.lock().expect("tokenizer cache poisoned");
        if let Some((_, _, t)) = cache
            .iter()
            .find(|(text, o, _)| *o == overflow && *text == self.text)
        {
            return Ok(Arc::clone(t));
        }
        let options = TokenizerOptions::new(self.text.max_tokens).with_overflow(overflow);
        let built = Arc::new(match &self.text.tokenizer {
            Some(path) => TextTokenizer::from_file(path, options)?,
            None => wordpiece_tokenizer(&self.words(), options)?,
        });
        cache.push((self.text.clone(), overflow, Arc::clone(&built)));
        Ok(built)
    }

    /// BERT's word-piece count: the tokenizer file's, or the built vocabulary's.
    fn vocab_size(&self) -> Result<usize> {
        match &self.text.tokenizer {
            Some(_) => Ok(self.tokenizer(Overflow::Error)?.vocab_size()),
            None => Ok(wordpiece_vocabulary(&self.words()).len()),
        }
    }

    /// The model configuration.
    ///
    /// # Errors
    /// An unreadable or malformed `text.tokenizer` file (its vocabulary sizes BERT).
    pub fn glip_config(&self) -> Result<GlipConfig> {
        let m = &self.model;
        let swin = SwinConfig::new(m.swin_dim, m.swin_depths, m.swin_heads)
            .with_window_size(m.swin_window)
            .with_drop_path_rate(0.0);
        let bert = BertConfig::new()
            .with_vocab_size(self.vocab_size()?)
            .with_hidden_size(m.bert_hidden)
            .with_num_layers(m.bert_layers)
            .with_num_heads(m.bert_heads)
            .with_intermediate_size(m.bert_intermediate)
            .with_max_position_embeddings(self.text.positions.unwrap_or(self.text.max_tokens));
        let backbone = match &m.resnet {
            None => GlipBackboneConfig::Swin(swin),
            Some(r) => GlipBackboneConfig::ResNet(
                ResNetConfig::new(r.layers)
                    .with_stem_channels(r.stem_channels)
                    .with_width(r.width)
                    .with_norm(NormMode::Batch)
                    .with_frozen_stages(0),
            ),
        };
        Ok(GlipConfig::new(backbone, bert)
            .with_channels(m.channels)
            .with_num_layers(m.num_layers)
            .with_fusion_embed_dim(m.fusion_dim)
            .with_fusion_heads(m.fusion_heads)
            .with_norm_groups(m.norm_groups)
            .with_fusion(m.fusion)
            .with_fusion_gamma(m.fusion_gamma)
            .with_deformable(m.deformable)
            .with_scale_attention(m.scale_attention)
            .with_dyrelu(m.dyrelu)
            .with_box_gradient_to_tower(m.box_gradient_to_tower)
            .with_dyhead(m.dyhead)
            .with_fusion_image_norm(m.fusion_image_norm))
    }

    fn anchors(&self) -> AnchorGenerator {
        let mut anchors = AnchorGenerator::atss();
        anchors.levels = anchors
            .levels
            .iter()
            .map(|l| AnchorLevel {
                stride: l.stride,
                sizes: vec![self.model.anchor_scale * l.stride],
            })
            .collect();
        anchors
    }

    fn loss_config(&self) -> GlipLossConfig {
        GlipLossConfig {
            alpha: self.loss.focal_alpha,
            gamma: self.loss.focal_gamma,
            reg_weight: self.loss.reg_weight,
            atss: AtssOptions {
                top_k: self.loss.atss_top_k,
                ..AtssOptions::default()
            },
            anchors: self.anchors(),
            coder: DeltaBoxCoder::new([10.0, 10.0, 5.0, 5.0]),
        }
    }

    fn inference_config(&self) -> GlipInferenceConfig {
        GlipInferenceConfig {
            score_threshold: self.test.candidate_threshold,
            pre_nms_top_k: self.test.pre_nms_top_k,
            iou_threshold: self.test.nms_iou,
            max_detections: self.test.max_detections,
            anchors: self.anchors(),
            coder: DeltaBoxCoder::new([10.0, 10.0, 5.0, 5.0]),
        }
    }
}

/// GLIP with the prompt-tuning table.
#[derive(Module, Debug)]
pub struct GlipDetector<B: Backend> {
    /// The model.
    pub glip: Glip<B>,
    /// Learned prompt embeddings `[max_tokens, bert_hidden]`, added to BERT's output (the
    /// released `rpn.tunable_linear.weight`), initialised to zero.
    pub prompt: Param<Tensor<B, 2>>,
}

/// A training prompt and, per box, the spans of its phrase in it.
struct GroundedPrompt {
    text: String,
    boxes: Vec<[f32; 4]>,
    spans: Vec<Vec<Span>>,
}

/// FNV-1a of a sample's key: the seed of its prompt's negative sampling.
fn key_seed(key: &str) -> u64 {
    key.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

impl GlipRecipe {
    /// The prompt of one training sample: its caption (grounding) or a GLIP detection prompt
    /// from `vocabulary` (negatives drawn with a generator seeded by the sample's key and
    /// size, so a run is reproducible and resumable).
    fn grounded_prompt(&self, sample: &Sample, vocabulary: &[String]) -> Result<GroundedPrompt> {
        let mut p = GroundedPrompt {
            text: String::new(),
            boxes: Vec::new(),
            spans: Vec::new(),
        };
        match sample.kind {
            SourceKind::Grounding => {
                p.text = sample.caption.clone().unwrap_or_default();
                for inst in sample.instances.iter().filter(|i| !i.crowd) {
                    p.boxes.push(inst.bbox);
                    p.spans.push(
                        inst.concepts
                            .iter()
                            .flat_map(|&c| sample.concepts[c].spans.iter().copied())
                            .collect(),
                    );
                }
            }
            SourceKind::Detection => {
                let seed =
                    key_seed(&sample.key) ^ ((sample.width as u64) << 32 | sample.height as u64);
                let tp = training_prompt(
                    sample,
                    vocabulary,
                    NegativeSampling {
                        max_names: self.text.max_names,
                    },
                    &PromptFormat::default(),
                    &mut StdRng::seed_from_u64(seed),
                );
                for (inst, entries) in sample.instances.iter().zip(&tp.instance_entries) {
                    if inst.crowd {
                        continue;
                    }
                    p.boxes.push(inst.bbox);
                    p.spans
                        .push(entries.iter().map(|&e| tp.prompt.entries[e].span).collect());
                }
                p.text = tp.prompt.text;
            }
            SourceKind::ImageText => {
                return Err(DetError::InvalidOption {
                    op: "glip loss",
                    why: format!(
                        "sample `{}` is an image-text pair: GLIP trains on boxes \
                         (detection or grounding sources)",
                        sample.key
                    ),
                });
            }
        }
        if p.text.trim().is_empty() {
            // A detection image with no box and no negatives, or a caption-less sample.
            p.text = ".".into();
        }
        Ok(p)
    }
}

/// The tokens of a phrase's spans (their union), in one encoded prompt.
fn span_tokens(encoded: &TokenizedText, spans: &[Span]) -> Vec<usize> {
    let mut tokens: Vec<usize> = spans
        .iter()
        .filter_map(|&s| encoded.tokens_for_span(s))
        .flatten()
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// Boxes grounded to no token (their phrase was cut off) are left out of the targets.
fn target_of(prompt: &GroundedPrompt, encoded: &TokenizedText) -> GlipTarget {
    let mut target = GlipTarget::default();
    for (b, spans) in prompt.boxes.iter().zip(&prompt.spans) {
        let tokens = span_tokens(encoded, spans);
        if !tokens.is_empty() {
            target.boxes.push(*b);
            target.tokens.push(tokens);
        }
    }
    target
}

fn bad_model(why: String) -> DetError {
    DetError::InvalidOption {
        op: "glip model",
        why,
    }
}

impl Recipe for GlipRecipe {
    const NAME: &'static str = "glip";
    type Model<B: Backend> = GlipDetector<B>;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<GlipDetector<B>> {
        let glip = self.glip_config()?.init(device)?;
        Ok(GlipDetector {
            glip,
            prompt: Param::from_tensor(Tensor::zeros(
                [self.text.max_tokens, self.model.bert_hidden],
                device,
            )),
        })
    }

    fn learner(&self) -> &LearnerConfig {
        &self.learner
    }

    fn data(&self) -> &DataConfig {
        &self.data
    }

    /// One file: a released GLIP checkpoint (maskrcnn-benchmark's `{"model": state_dict}`
    /// `.pth`, or its state dict as safetensors) read through
    /// [`glip_keys`](detclip_models::glip::glip_keys) into the detector; the prompt-tuning
    /// table stays zero (a prompt-tuned checkpoint's `rpn.tunable_linear.weight` is refused
    /// as unexpected). The config must have the checkpoint's sizes, BERT's word-piece count
    /// included.
    fn import_official<B: Backend>(
        &self,
        mut model: GlipDetector<B>,
        checkpoints: &[std::path::PathBuf],
        _device: &B::Device,
    ) -> Result<GlipDetector<B>> {
        let [path] = checkpoints else {
            return Err(DetError::InvalidOption {
                op: "import",
                why: format!(
                    "recipe `glip` imports one checkpoint (the released GLIP .pth), got {}",
                    checkpoints.len()
                ),
            });
        };
        let safetensors = path.extension().is_some_and(|e| e == "safetensors");
        let options = detclip_models::import::LoadOptions {
            top_level_key: (!safetensors).then(|| "model".to_string()),
            ..Default::default()
        };
        let keys = detclip_models::glip::glip_keys(self.model.num_layers);
        detclip_models::import::load_checkpoint(&mut model.glip, path, &keys, &options)?;
        Ok(model)
    }

    fn param_group(path: &[String]) -> ParamGroup {
        let at = |i: usize| path.get(i).map(String::as_str);
        match (at(0), at(1)) {
            (Some("prompt"), _) => ParamGroup::Prompt,
            (_, Some("backbone")) => ParamGroup::Backbone,
            (_, Some("language")) => ParamGroup::Language,
            (_, Some("head")) => ParamGroup::Output,
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

    fn validate(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        let m = &self.model;
        let sizes = [
            m.swin_dim,
            m.swin_window,
            m.bert_hidden,
            m.bert_layers,
            m.bert_heads,
            m.bert_intermediate,
            m.channels,
            m.fusion_dim,
            m.fusion_heads,
            self.text.max_tokens,
            self.text.max_names,
        ];
        if sizes.contains(&0) || m.anchor_scale.is_nan() || m.anchor_scale <= 0.0 {
            return Err(bad_model(
                "sizes and the anchor scale must be positive".into(),
            ));
        }
        if !m.bert_hidden.is_multiple_of(m.bert_heads)
            || !m.fusion_dim.is_multiple_of(m.fusion_heads)
            || (m.norm_groups > 0 && !m.channels.is_multiple_of(m.norm_groups))
        {
            return Err(bad_model(
                "bert_hidden, fusion_dim and channels must be divisible by their heads / groups"
                    .into(),
            ));
        }
        if self
            .text
            .positions
            .is_some_and(|p| p < self.text.max_tokens)
        {
            return Err(bad_model(format!(
                "text.positions ({:?}) must be at least text.max_tokens ({})",
                self.text.positions, self.text.max_tokens
            )));
        }
        if let Some(path) = &self.text.tokenizer {
            if !self.text.extra_words.is_empty() {
                return Err(bad_model(
                    "text.extra_words adds to the vocabulary built in code; with a \
                     text.tokenizer file the vocabulary is the file's (leave extra_words empty)"
                        .into(),
                ));
            }
            self.tokenizer(Overflow::Error)
                .map_err(|e| DetError::InvalidOption {
                    op: "glip recipe",
                    why: format!("text.tokenizer {}: {e}", path.display()),
                })?;
        }
        let mut frozen = self.learner.optim.frozen.clone();
        let mut expected = self.fine_tune.frozen();
        frozen.sort();
        expected.sort();
        if frozen != expected {
            return Err(DetError::InvalidOption {
                op: "glip recipe",
                why: format!(
                    "fine_tune `{:?}` freezes {expected:?}, but learner.optim.frozen is \
                     {frozen:?}; set them together",
                    self.fine_tune
                ),
            });
        }
        Ok(())
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        model: &GlipDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let device = batch.images.device();
        let prompts = batch
            .samples
            .iter()
            .map(|s| self.grounded_prompt(s, vocabulary))
            .collect::<Result<Vec<_>>>()?;
        let texts: Vec<&str> = prompts.iter().map(|p| p.text.as_str()).collect();
        let encoded = self.tokenizer(Overflow::Truncate)?.encode_batch(&texts)?;
        let targets: Vec<GlipTarget> = prompts
            .iter()
            .zip(&encoded)
            .map(|(p, e)| target_of(p, e))
            .collect();
        let (ids, mask) = batch_tensors::<B>(&encoded, &device)?;
        let out = model.glip.forward_prompted(
            batch.images.clone(),
            ids,
            mask.clone(),
            Some(model.prompt.val()),
        )?;
        let losses = glip_loss(&out, mask, &targets, &self.loss_config())?;
        let mut terms = LossTerms::new();
        terms.push("token", losses.token);
        terms.push("giou", losses.giou);
        terms.push("centerness", losses.centerness);
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        model: &GlipDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let device = batch.images.device();
        let counter = self.tokenizer(Overflow::Error)?;
        let prompts = described_prompts(
            vocabulary,
            &self.test.descriptions,
            &PromptFormat::default(),
            self.text.max_tokens,
            |t| {
                counter.encode(t).map_or(usize::MAX, |e| {
                    e.attention_mask.iter().filter(|&&m| m == 1).count()
                })
            },
        )?;
        let encoded =
            counter.encode_batch(&prompts.iter().map(|p| p.text.as_str()).collect::<Vec<_>>())?;
        let phrases: Vec<Vec<PhraseTokens>> = prompts
            .iter()
            .zip(&encoded)
            .map(|(p, e)| {
                p.entries
                    .iter()
                    .map(|entry| PhraseTokens {
                        class: entry.source,
                        tokens: span_tokens(e, &[entry.span]),
                    })
                    .collect()
            })
            .collect();
        // Rows: every prompt chunk of every image, image-major.
        let n = batch.samples.len();
        let chunks = prompts.len();
        let image_of_row: Vec<usize> = (0..n * chunks).map(|r| r / chunks).collect();
        let rows: Vec<TokenizedText> = (0..n * chunks)
            .map(|r| encoded[r % chunks].clone())
            .collect();
        let row_phrases: Vec<Vec<PhraseTokens>> = (0..n * chunks)
            .map(|r| phrases[r % chunks].clone())
            .collect();
        // The image side runs once per image; its pyramid is repeated for the chunks.
        let index: Vec<i64> = image_of_row.iter().map(|&i| i as i64).collect();
        let index = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [n * chunks]), &device);
        let levels = model
            .glip
            .image_features(batch.images.clone())?
            .into_iter()
            .map(|l| l.select(0, index.clone()))
            .collect();
        let (ids, mask) = batch_tensors::<B>(&rows, &device)?;
        let out = model
            .glip
            .forward_features(levels, ids, mask, Some(model.prompt.val()))?;
        let dets = glip_detect(&out, &row_phrases, &image_of_row, &self.inference_config())?;
        Ok(dets
            .into_iter()
            .zip(&batch.image_sizes)
            .map(|(d, &(h, w))| {
                let clip = |b: [f32; 4]| {
                    [
                        b[0].clamp(0.0, w as f32),
                        b[1].clamp(0.0, h as f32),
                        b[2].clamp(0.0, w as f32),
                        b[3].clamp(0.0, h as f32),
                    ]
                };
                (0..d.scores.len())
                    .filter(|&i| d.scores[i] >= threshold)
                    .map(|i| Detected {
                        bbox: clip(d.boxes[i]),
                        label: d.classes[i],
                        score: d.scores[i],
                        mask: None,
                    })
                    .collect()
            })
            .collect())
    }
}
