//! GLIP's detection prompts with descriptions (prompt engineering for LVIS / ODinW): a class
//! may carry a description, written after its name as `"name, description"`, so the prompt
//! reads `"cat. pothole, a flat, round hole in the road. dog."`; the phrase that is scored —
//! the entry's span — stays the name alone, as the released `create_queries_and_maps` points
//! the positive map at the name with its prefix/suffix around it. Vocabularies longer than a
//! tokenizer's budget are split into several prompts.

use std::collections::BTreeMap;

use detclip_core::data::Span;
use detclip_core::data::prompt::{
    Prompt, PromptFormat, chunk_prompts, fixed_chunk_prompts, glip_clean_name,
};
use detclip_core::{DetError, Result};
use serde::{Deserialize, Serialize};

use crate::tokenizer::TokenizedText;

/// The tokens of a phrase's spans (their union, sorted) in one encoded prompt; spans cut off
/// by truncation give none.
pub fn phrase_tokens(encoded: &TokenizedText, spans: &[Span]) -> Vec<usize> {
    let mut tokens: Vec<usize> = spans
        .iter()
        .filter_map(|&s| encoded.tokens_for_span(s))
        .flatten()
        .collect();
    tokens.sort_unstable();
    tokens.dedup();
    tokens
}

/// The text of an entry: `"name, description"`, or the name alone.
pub fn described_name(name: &str, descriptions: &BTreeMap<String, String>) -> String {
    match descriptions.get(name).map(|d| d.trim()) {
        Some(d) if !d.is_empty() => format!("{name}, {d}"),
        _ => name.to_string(),
    }
}

/// Prompts for `names` (each with its description, if any) whose `len` is at most
/// `max_len`, filled greedily in order; every entry's span covers its name only and its
/// `source` indexes `names`.
///
/// # Errors
/// [`detclip_core::DetError::InvalidOption`] when a described name alone does not fit.
pub fn described_prompts(
    names: &[impl AsRef<str>],
    descriptions: &BTreeMap<String, String>,
    format: &PromptFormat,
    max_len: usize,
    len: impl Fn(&str) -> usize,
) -> Result<Vec<Prompt>> {
    let texts: Vec<String> = names
        .iter()
        .map(|n| described_name(n.as_ref(), descriptions))
        .collect();
    let mut prompts = chunk_prompts(&texts, format, max_len, len)?;
    for prompt in &mut prompts {
        for entry in &mut prompt.entries {
            let name = names[entry.source].as_ref();
            entry.span = Span::new(entry.span.start, entry.span.start + name.len());
        }
    }
    Ok(prompts)
}

/// How an inference vocabulary becomes GLIP prompts.
///
/// The default is this project's own rule (`"a. b. c."`, chunks filled up to the token
/// budget); [`GlipPromptConfig::official`] is the released evaluation's
/// (`create_queries_and_maps_from_dataset`): names cleaned by `clean_name`, joined by
/// `DATASETS.SEPARATION_TOKENS` with nothing after the last, and `TEST.CHUNKED_EVALUATION`
/// names per prompt.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlipPromptConfig {
    /// Between two names (`DATASETS.SEPARATION_TOKENS`; `". "` in GLIP's pre-training
    /// configs).
    pub separator: String,
    /// After the last name: `"."` here, `""` in the official evaluation.
    pub end: String,
    /// Names per prompt (`TEST.CHUNKED_EVALUATION`; 40 in GLIP's LVIS evaluation); `None`
    /// fills each prompt up to the token budget. A chunk over the budget is an error either
    /// way.
    #[serde(default)]
    pub chunk_classes: Option<usize>,
    /// Names go through the official `clean_name` first (`bow_(weapon)` → `bow `).
    #[serde(default)]
    pub clean_names: bool,
}

impl Default for GlipPromptConfig {
    fn default() -> Self {
        let f = PromptFormat::default();
        Self {
            separator: f.separator,
            end: f.end,
            chunk_classes: None,
            clean_names: false,
        }
    }
}

impl GlipPromptConfig {
    /// The released evaluation's prompts: `separator` between cleaned names, nothing after the
    /// last, `chunk_classes` names per prompt (`None`: GLIP's `-1`, one prompt, which here is
    /// split at the token budget rather than cut off).
    pub fn official(separator: &str, chunk_classes: Option<usize>) -> Self {
        Self {
            separator: separator.to_string(),
            end: String::new(),
            chunk_classes,
            clean_names: true,
        }
    }

    /// The separator and end as a [`PromptFormat`].
    pub fn format(&self) -> PromptFormat {
        PromptFormat {
            separator: self.separator.clone(),
            end: self.end.clone(),
        }
    }

    /// Checks the values.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for `chunk_classes` 0 or an empty separator.
    pub fn validate(&self) -> Result<()> {
        if self.chunk_classes == Some(0) {
            return Err(DetError::InvalidOption {
                op: "glip test",
                why: "prompt.chunk_classes must be positive (or null: fill to the token budget)"
                    .into(),
            });
        }
        if self.separator.is_empty() {
            return Err(DetError::InvalidOption {
                op: "glip test",
                why: "prompt.separator must not be empty".into(),
            });
        }
        Ok(())
    }

    /// The prompts of `names` (each with its description, if any), every entry's span on its
    /// (cleaned) name and its `source` indexing `names`; each prompt's `len` at most
    /// `max_len`.
    ///
    /// # Errors
    /// A name, or a fixed chunk, longer than `max_len`.
    pub fn prompts(
        &self,
        names: &[impl AsRef<str>],
        descriptions: &BTreeMap<String, String>,
        max_len: usize,
        len: impl Fn(&str) -> usize,
    ) -> Result<Vec<Prompt>> {
        self.validate()?;
        let format = self.format();
        let cleaned: Vec<String> = names
            .iter()
            .map(|n| {
                if self.clean_names {
                    glip_clean_name(n.as_ref())
                } else {
                    n.as_ref().to_string()
                }
            })
            .collect();
        // Descriptions are keyed by the name as given.
        let described: BTreeMap<String, String> = names
            .iter()
            .zip(&cleaned)
            .filter_map(|(n, c)| descriptions.get(n.as_ref()).map(|d| (c.clone(), d.clone())))
            .collect();
        let Some(per_chunk) = self.chunk_classes else {
            return described_prompts(&cleaned, &described, &format, max_len, len);
        };
        let texts: Vec<String> = cleaned
            .iter()
            .map(|n| described_name(n, &described))
            .collect();
        let mut prompts = fixed_chunk_prompts(&texts, &format, per_chunk)?;
        for prompt in &mut prompts {
            let used = len(&prompt.text);
            if used > max_len {
                return Err(DetError::InvalidOption {
                    op: "glip prompts",
                    why: format!(
                        "the prompt of {} names `{}` is {used} tokens, over the budget of \
                         {max_len}; lower test.prompt.chunk_classes",
                        prompt.entries.len(),
                        prompt.text
                    ),
                });
            }
            for entry in &mut prompt.entries {
                let name = &cleaned[entry.source];
                entry.span = Span::new(entry.span.start, entry.span.start + name.len());
            }
        }
        Ok(prompts)
    }
}
