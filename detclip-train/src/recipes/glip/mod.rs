//! `glip`: GLIP (detection as phrase grounding with deep X-MHA fusion,
//! `detclip_models::glip`) trained by the shared learner.
//!
//! - Prompts: a detection sample's prompt is built from the source's vocabulary as GLIP does
//!   (`"red ring. blue star. …"`: every positive class plus a random number of negatives,
//!   shuffled, [`training_prompt`]); a grounding sample's prompt is its caption. Each box is
//!   grounded to the tokens of its phrase (the positive map).
//! - Model: [`GlipConfig`] itself (`model`), built with the prompt-tuning table as a
//!   [`GlipDetector`]; the head's anchors and box coder are the model's
//!   ([`GlipConfig::geometry`]).
//! - Text side: BERT over a WordPiece vocabulary built in code from the synthetic world's
//!   words ([`wordpiece_tokenizer`]: no released vocabulary file is needed or embedded; any
//!   other ASCII word is spelled in letter pieces), or a `tokenizer.json`. Prompts are padded
//!   to `text.max_tokens`. The tokenizers are built once per run ([`GlipContext`]).
//! - Loss: ATSS assignment, token-level sigmoid focal loss, GIoU and centerness
//!   ([`glip_loss`]), logged as `token`, `giou` and `centerness`.
//! - Inference: [`GlipDetector::detect_vocabulary`] — the vocabulary (with optional
//!   descriptions, `"name, description"`) split into prompts of at most `text.max_tokens`
//!   tokens, run as rows of one batch, merged per image.
//! - Fine-tuning modes ([`FineTune`]): full, prompt tuning (only the learned prompt
//!   embeddings, GLIP's `tunable_linear`, train) and linear probing (only the head's output
//!   layers train), as frozen parameter groups of the learner.

use std::sync::Arc;

use burn::prelude::*;
use detclip_core::data::prompt::{NegativeSampling, PromptFormat, training_prompt};
use detclip_core::data::{Batch, Sample, SourceKind, Span, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::{DetError, Result};
use detclip_models::glip::{GlipDetector, GlipTarget, glip_loss, phrase_tokens};
use detclip_models::tokenizer::{Overflow, TextTokenizer, TokenizedText, batch_tensors};
use rand::SeedableRng;
use rand::rngs::StdRng;

mod config;
mod official;

pub use config::{FineTune, GlipRecipe, GlipTextConfig, synthetic_words};
pub use official::{OfficialGlipConfig, YacsValue};

use crate::data::DataConfig;
use crate::learner::LearnerConfig;
use crate::recipe::{Detected, LossTerms, ParamGroup, Recipe};

/// What a GLIP run builds once: the tokenizers of training (long prompts truncated) and of
/// inference (chunks that must fit).
pub struct GlipContext {
    /// Training prompts: truncated to `text.max_tokens`.
    pub train: Arc<TextTokenizer>,
    /// Inference prompts: a chunk that does not fit is an error.
    pub test: Arc<TextTokenizer>,
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

/// Boxes grounded to no token (their phrase was cut off) are left out of the targets.
fn target_of(prompt: &GroundedPrompt, encoded: &TokenizedText) -> GlipTarget {
    let mut target = GlipTarget::default();
    for (b, spans) in prompt.boxes.iter().zip(&prompt.spans) {
        let tokens = phrase_tokens(encoded, spans);
        if !tokens.is_empty() {
            target.boxes.push(*b);
            target.tokens.push(tokens);
        }
    }
    target
}

impl Recipe for GlipRecipe {
    const NAME: &'static str = "glip";
    type Model<B: Backend> = GlipDetector<B>;
    type Context = GlipContext;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<GlipDetector<B>> {
        self.model.init_detector(self.text.max_tokens, device)
    }

    fn context(&self) -> Result<GlipContext> {
        Ok(GlipContext {
            train: Arc::new(self.tokenizer(Overflow::Truncate)?),
            test: Arc::new(self.tokenizer(Overflow::Error)?),
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

    /// With `text.model`, the folder's BERT weights into the language side (everything else
    /// stays as built).
    fn prepare<B: DetclipAutodiffBackend>(
        &self,
        mut model: GlipDetector<B>,
        _device: &B::Device,
    ) -> Result<GlipDetector<B>> {
        if let Some(dir) = &self.text.model {
            detclip_models::hf::load_bert_weights(&mut model.glip.language, dir)?;
        }
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
        self.test.transform()
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        cx: &GlipContext,
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
        let encoded = cx.train.encode_batch(&texts)?;
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
        let losses = glip_loss(&out, mask, &targets, &self.loss, &self.model.geometry())?;
        let mut terms = LossTerms::new();
        terms.push("token", losses.token);
        terms.push("giou", losses.giou);
        terms.push("centerness", losses.centerness);
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        cx: &GlipContext,
        model: &GlipDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let dets = model.detect_vocabulary(
            batch.images.clone(),
            &batch.image_sizes,
            vocabulary,
            &cx.test,
            self.text.max_tokens,
            &self.test,
            &self.model.geometry(),
            threshold,
        )?;
        Ok(dets.into_iter().map(Detected::all).collect())
    }
}
