//! The `glip` recipe's configuration: its sections, presets and checks.

use std::path::{Path, PathBuf};

use detclip_core::data::SourceKind;
use detclip_core::data::synthetic::{Color, Shape};
use detclip_core::{DetError, Result};
use detclip_models::bert::BertConfig;
use detclip_models::glip::{
    GlipBackboneConfig, GlipConfig, GlipLossConfig, GlipPromptConfig, GlipTestConfig,
};
use detclip_models::hf::read_bert_config;
use detclip_models::swin::SwinConfig;
use detclip_models::tokenizer::{
    Overflow, TextTokenizer, TokenizerOptions, wordpiece_tokenizer, wordpiece_vocabulary,
};
use serde::{Deserialize, Serialize};

use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig};
use crate::learner::LearnerConfig;
use crate::recipe::ParamGroup;

/// The text side: prompt length and vocabulary.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipTextConfig {
    /// Tokens per prompt, `[CLS]` and `[SEP]` included (GLIP: 256); also the prompt-tuning
    /// table's rows. At most BERT's `max_position_embeddings`.
    pub max_tokens: usize,
    /// Most class names in a training prompt (GLIP's `max_num_labels`).
    pub max_names: usize,
    /// Words added to the WordPiece vocabulary besides the synthetic world's.
    pub extra_words: Vec<String>,
    /// A BERT `tokenizer.json` whose WordPiece vocabulary replaces the one built in code
    /// (GLIP-T: `bert-base-uncased`'s, 30,522 pieces); `extra_words` must then be empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokenizer: Option<PathBuf>,
    /// A Hugging Face BERT folder (e.g. `../shared/models/all-MiniLM-L6-v2`, or
    /// `bert-base-uncased`) whose weights start the language side and whose `tokenizer.json`
    /// tokenises the prompts; `model.bert` must have its sizes
    /// ([`GlipRecipe::with_text_model`]). The fusion layers on top train from scratch, as GLIP
    /// does over BERT-base. Exclusive with `tokenizer` and `extra_words`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<PathBuf>,
}

impl GlipTextConfig {
    /// The words of the WordPiece vocabulary built in code.
    fn words(&self) -> Vec<String> {
        let mut words = synthetic_words();
        words.extend(self.extra_words.iter().cloned());
        words
    }

    /// The word-piece count of the vocabulary built in code ([`GlipTextConfig::words`]).
    pub fn built_vocab_size(&self) -> usize {
        wordpiece_vocabulary(&self.words()).len()
    }

    /// The tokenizer: prompts padded to `max_tokens`; longer ones truncated or refused. The
    /// `tokenizer` file's, or a WordPiece vocabulary built from the synthetic world's words
    /// and `extra_words`.
    ///
    /// # Errors
    /// An unreadable or malformed tokenizer file.
    pub fn tokenizer(&self, overflow: Overflow) -> Result<TextTokenizer> {
        let options = TokenizerOptions::new(self.max_tokens).with_overflow(overflow);
        match (&self.tokenizer, &self.model) {
            (Some(path), _) => TextTokenizer::from_file(path, options),
            (None, Some(dir)) => TextTokenizer::from_file(dir.join("tokenizer.json"), options),
            (None, None) => wordpiece_tokenizer(&self.words(), options),
        }
    }
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
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipRecipe {
    /// The model: backbone, BERT, fusion/DyHead tower, head and its anchors.
    pub model: GlipConfig,
    /// The text side.
    pub text: GlipTextConfig,
    /// The loss.
    pub loss: GlipLossConfig,
    /// Inference.
    pub test: GlipTestConfig,
    /// The fine-tuning mode; `learner.optim.frozen` must be its groups
    /// ([`GlipRecipe::with_fine_tune`] sets both).
    pub fine_tune: FineTune,
    /// Training sources and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
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
    /// 32, two fusion/DyHead layers of 32 channels, anchors of 4 strides) on a detection and a
    /// grounding source, a few minutes on two CPU cores (release build).
    pub fn synthetic() -> Self {
        let text = GlipTextConfig {
            max_tokens: 64,
            max_names: 20,
            extra_words: Vec::new(),
            tokenizer: None,
            model: None,
        };
        let swin = SwinConfig::new(16, [1, 1, 1, 1], [1, 2, 4, 4])
            .with_window_size(4)
            .with_drop_path_rate(0.0);
        let bert = BertConfig::new()
            .with_vocab_size(text.built_vocab_size())
            .with_hidden_size(32)
            .with_num_layers(2)
            .with_num_heads(2)
            .with_intermediate_size(64)
            .with_max_position_embeddings(text.max_tokens)
            .with_with_pooler(false);
        Self {
            model: GlipConfig::new(GlipBackboneConfig::Swin(swin), bert)
                .with_channels(32)
                .with_num_layers(2)
                .with_fusion_embed_dim(64)
                .with_fusion_heads(4)
                .with_norm_groups(8)
                .with_anchor_scale(4.0),
            text,
            loss: GlipLossConfig::default(),
            test: GlipTestConfig {
                short_side: 128,
                max_long: Some(192),
                pre_nms_top_k: 300,
                max_detections: 50,
                ..GlipTestConfig::default()
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
        }
    }

    /// This recipe with a pretrained BERT from a Hugging Face folder as its language side:
    /// `model.bert` takes the folder's sizes (without the pooler), prompts its tokenizer, and
    /// the language group `lr_mult` (GLIP trains BERT at a tenth of the base rate: 1e-5
    /// against 1e-4). The weights are loaded when a run starts ([`Recipe::prepare`](crate::recipe::Recipe::prepare)).
    ///
    /// # Errors
    /// As [`read_bert_config`] for a folder that is not a BERT.
    pub fn with_text_model(mut self, dir: &Path, lr_mult: f64) -> Result<Self> {
        self.model.bert = read_bert_config(&dir.join("config.json"))?.with_with_pooler(false);
        self.text.model = Some(dir.to_path_buf());
        self.text.tokenizer = None;
        self.text.extra_words.clear();
        self.learner.optim.lr_mult.language = lr_mult;
        Ok(self)
    }

    /// A released GLIP as the official code runs it, for `detclip import` of a released
    /// checkpoint with no official configuration: GLIP-T ([`GlipConfig::glip_t`]) over the
    /// BERT of the Hugging Face folder `text_model` (`bert-base-uncased`: its sizes without the
    /// pooler, its `tokenizer.json`), 256-token prompts, the released test settings (800/1333,
    /// top 1000, NMS 0.6, 100 detections) and the official evaluation's prompts (`". "`
    /// between cleaned names, nothing after the last). Training settings are the synthetic
    /// preset's, with BERT at a tenth of the base rate (`SOLVER.LANG_LR`).
    ///
    /// # Errors
    /// As [`GlipRecipe::with_text_model`].
    pub fn released(text_model: &Path) -> Result<Self> {
        let mut r = Self::synthetic();
        r.model = GlipConfig::glip_t();
        let mut r = r.with_text_model(text_model, 0.1)?;
        r.text.max_tokens = 256;
        r.text.max_names = 85;
        r.test = GlipTestConfig {
            prompt: GlipPromptConfig::official(". ", None),
            ..GlipTestConfig::default()
        };
        r.data.size_divisor = 32;
        Ok(r)
    }

    /// The recipe that GLIP's official configuration files describe (merged in order, then
    /// the `KEY=VALUE` overrides; [`OfficialGlipConfig`](super::OfficialGlipConfig)), over
    /// the BERT folder `text_model`: `detclip import --recipe glip --official-config FILE.yaml
    /// --text-model BERT_DIR`.
    ///
    /// # Errors
    /// An unreadable file, or the first key whose value is malformed or not reproduced here;
    /// a recipe that does not validate.
    pub fn from_official(
        files: &[PathBuf],
        overrides: &[String],
        text_model: &Path,
    ) -> Result<Self> {
        let r = super::OfficialGlipConfig::read(files, overrides)?
            .apply(Self::released(text_model)?)?;
        r.check()?;
        Ok(r)
    }

    /// A tiny preset for tests: narrow layers, small images, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        if let GlipBackboneConfig::Swin(swin) = &mut r.model.backbone {
            swin.embed_dim = 8;
            swin.heads = [1, 1, 2, 2];
        }
        r.text.max_tokens = 32;
        r.text.max_names = 4;
        r.model.bert = r
            .model
            .bert
            .clone()
            .with_hidden_size(16)
            .with_intermediate_size(32)
            .with_max_position_embeddings(32)
            .with_with_pooler(false);
        r.model = r
            .model
            .with_channels(16)
            .with_fusion_embed_dim(32)
            .with_norm_groups(4);
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

    /// The text side's tokenizer ([`GlipTextConfig::tokenizer`]).
    ///
    /// # Errors
    /// An unreadable or malformed tokenizer file.
    pub fn tokenizer(&self, overflow: Overflow) -> Result<TextTokenizer> {
        self.text.tokenizer(overflow)
    }

    /// [`Recipe::validate`](crate::recipe::Recipe::validate): every section, and what joins them (BERT's vocabulary and
    /// positions against the text side, the fine-tuning mode against the frozen groups).
    pub(super) fn check(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        self.model.validate()?;
        self.loss.validate()?;
        self.test.validate()?;
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "glip recipe",
                why,
            })
        };
        let bert = &self.model.bert;
        if self.text.max_tokens == 0 || self.text.max_names == 0 {
            return bad("text.max_tokens and text.max_names must be positive".into());
        }
        if bert.max_position_embeddings < self.text.max_tokens {
            return bad(format!(
                "model.bert.max_position_embeddings ({}) must be at least text.max_tokens ({})",
                bert.max_position_embeddings, self.text.max_tokens
            ));
        }
        if let Some(dir) = &self.text.model {
            if self.text.tokenizer.is_some() || !self.text.extra_words.is_empty() {
                return bad(
                    "text.model brings its own tokenizer: leave text.tokenizer and \
                     text.extra_words unset"
                        .into(),
                );
            }
            let folder = read_bert_config(&dir.join("config.json"))?.with_with_pooler(false);
            let sizes = |c: &BertConfig| {
                (
                    c.vocab_size,
                    c.hidden_size,
                    c.num_layers,
                    c.num_heads,
                    c.intermediate_size,
                    c.max_position_embeddings,
                    c.type_vocab_size,
                )
            };
            if sizes(&folder) != sizes(bert) {
                return bad(format!(
                    "model.bert does not have the sizes of text.model {} (vocab, hidden, \
                     layers, heads, intermediate, positions, token types: {:?} against the \
                     folder's {:?}); build the recipe with GlipRecipe::with_text_model",
                    dir.display(),
                    sizes(bert),
                    sizes(&folder)
                ));
            }
        }
        let pieces = match self.text.tokenizer.as_ref().or(self.text.model.as_ref()) {
            Some(path) => {
                if !self.text.extra_words.is_empty() {
                    return bad(
                        "text.extra_words adds to the vocabulary built in code; with a \
                         text.tokenizer file the vocabulary is the file's (leave extra_words \
                         empty)"
                            .into(),
                    );
                }
                self.tokenizer(Overflow::Error)
                    .map_err(|e| DetError::InvalidOption {
                        op: "glip recipe",
                        why: format!("text tokenizer {}: {e}", path.display()),
                    })?
                    .vocab_size()
            }
            None => self.text.built_vocab_size(),
        };
        if pieces != bert.vocab_size {
            return bad(format!(
                "model.bert.vocab_size is {} but the text side's vocabulary has {pieces} \
                 word pieces; set model.bert.vocab_size to {pieces}",
                bert.vocab_size
            ));
        }
        let mut frozen = self.learner.optim.frozen.clone();
        let mut expected = self.fine_tune.frozen();
        frozen.sort();
        expected.sort();
        if frozen != expected {
            return bad(format!(
                "fine_tune `{:?}` freezes {expected:?}, but learner.optim.frozen is \
                 {frozen:?}; set them together",
                self.fine_tune
            ));
        }
        Ok(())
    }
}
