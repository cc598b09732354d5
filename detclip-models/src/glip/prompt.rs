//! GLIP's detection prompts with descriptions (prompt engineering for LVIS / ODinW): a class
//! may carry a description, written after its name as `"name, description"`, so the prompt
//! reads `"cat. pothole, a flat, round hole in the road. dog."`; the phrase that is scored —
//! the entry's span — stays the name alone, as the released `create_queries_and_maps` points
//! the positive map at the name with its prefix/suffix around it. Vocabularies longer than a
//! tokenizer's budget are split into several prompts.

use std::collections::BTreeMap;

use detclip_core::Result;
use detclip_core::data::Span;
use detclip_core::data::prompt::{Prompt, PromptFormat, chunk_prompts};

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
