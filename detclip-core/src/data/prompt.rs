//! Detection as grounding: class names become a text prompt, `"cls1. cls2. cls3."`, with the
//! span of each name, so a grounding model can score boxes against text.
//!
//! Spans are UTF-8 **byte** ranges of the prompt (convert with [`Span::to_chars`] for
//! Python-style character offsets). Nothing here knows a tokenizer: [`token_range`] maps a
//! span to token indices given the tokenizer's per-token offsets (the `tokenizers` crate's
//! `Encoding::get_offsets`, byte offsets by default), which is what GLIP's
//! `create_positive_map` does with `char_to_token`. A tokenizer's length function is passed to
//! [`chunk_prompts`] so the chunks fit its budget (e.g. BERT's 256 tokens for GLIP).

use std::collections::HashSet;
use std::ops::Range;

use rand::Rng;
use rand::seq::{IndexedRandom, SliceRandom};

use crate::error::{DetError, Result};

use super::sample::{Sample, Span};

/// How names are joined into a prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PromptFormat {
    /// Between two names. `". "` (GLIP); GroundingDINO uses `" . "`.
    pub separator: String,
    /// After the last name. `"."` (GroundingDINO and the issue's `"cls1. cls2. cls3."`;
    /// GLIP's training prompts end with the separator, `". "`).
    pub end: String,
}

impl Default for PromptFormat {
    fn default() -> Self {
        Self {
            separator: ". ".into(),
            end: ".".into(),
        }
    }
}

/// One name in a prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PromptEntry {
    /// The index of the name in the list the prompt was built from.
    pub source: usize,
    /// Where the name is in the prompt text (bytes).
    pub span: Span,
}

/// A prompt and where each name is in it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prompt {
    /// The text, e.g. `"person. bicycle. car."`.
    pub text: String,
    /// One entry per name, in prompt order.
    pub entries: Vec<PromptEntry>,
}

impl Prompt {
    /// The name of entry `i`.
    pub fn name(&self, i: usize) -> &str {
        let s = self.entries[i].span;
        &self.text[s.start..s.end]
    }
}

/// Joins `names[i]` for `i` in `order` into a prompt.
fn build(names: &[impl AsRef<str>], order: &[usize], format: &PromptFormat) -> Prompt {
    let mut text = String::new();
    let mut entries = Vec::with_capacity(order.len());
    for (k, &i) in order.iter().enumerate() {
        if k > 0 {
            text.push_str(&format.separator);
        }
        let start = text.len();
        text.push_str(names[i].as_ref());
        entries.push(PromptEntry {
            source: i,
            span: Span::new(start, text.len()),
        });
    }
    if !order.is_empty() {
        text.push_str(&format.end);
    }
    Prompt { text, entries }
}

/// The prompt of all `names`, in order.
pub fn detection_prompt(names: &[impl AsRef<str>], format: &PromptFormat) -> Prompt {
    let order: Vec<usize> = (0..names.len()).collect();
    build(names, &order, format)
}

/// Splits a vocabulary into prompts whose `len` (e.g. a tokenizer's token count, or
/// `str::len`) is at most `max_len`, greedily in order: every name is in exactly one chunk,
/// and a chunk ends only when the next name would not fit. A name that does not fit even
/// alone is an error.
pub fn chunk_prompts(
    names: &[impl AsRef<str>],
    format: &PromptFormat,
    max_len: usize,
    len: impl Fn(&str) -> usize,
) -> Result<Vec<Prompt>> {
    let fits = |order: &[usize]| len(&build(names, order, format).text) <= max_len;
    let mut chunks = Vec::new();
    let mut current: Vec<usize> = Vec::new();
    for i in 0..names.len() {
        current.push(i);
        if fits(&current) {
            continue;
        }
        current.pop();
        if !current.is_empty() {
            chunks.push(build(names, &current, format));
            current.clear();
        }
        current.push(i);
        if !fits(&current) {
            return Err(DetError::InvalidOption {
                op: "chunk_prompts",
                why: format!(
                    "name {i} `{}` alone is longer than the budget {max_len}",
                    names[i].as_ref()
                ),
            });
        }
    }
    if !current.is_empty() {
        chunks.push(build(names, &current, format));
    }
    Ok(chunks)
}

/// Splits a vocabulary into prompts of `per_chunk` names each, in order (the last may hold
/// fewer): GLIP's chunked evaluation (`TEST.CHUNKED_EVALUATION`, `chunks` in
/// `engine/inference.py`), which does not look at the prompt's length.
///
/// # Errors
/// [`DetError::InvalidOption`] when `per_chunk` is 0.
pub fn fixed_chunk_prompts(
    names: &[impl AsRef<str>],
    format: &PromptFormat,
    per_chunk: usize,
) -> Result<Vec<Prompt>> {
    if per_chunk == 0 {
        return Err(DetError::InvalidOption {
            op: "fixed_chunk_prompts",
            why: "a chunk must hold at least one name".into(),
        });
    }
    let order: Vec<usize> = (0..names.len()).collect();
    Ok(order
        .chunks(per_chunk)
        .map(|c| build(names, c, format))
        .collect())
}

/// GLIP's `clean_name` (`engine/inference.py`), applied to class names before they enter an
/// evaluation prompt: the text from the first `(` to the last `)` removed (`\(.*\)`), `_`
/// read as a space, then each pair of spaces made one (one left-to-right pass, as `re.sub`):
/// `bow_(weapon)` → `bow `, `aerosol_can` → `aerosol can`.
pub fn glip_clean_name(name: &str) -> String {
    let mut s = name.to_string();
    if let Some(open) = s.find('(')
        && let Some(close) = s.rfind(')')
        && close > open
    {
        s.replace_range(open..=close, "");
    }
    s.replace('_', " ").replace("  ", " ")
}

/// The tokens a span covers: the range from the first to the last token whose offsets
/// overlap it. `offsets[t]` is token `t`'s `(start, end)` in the same units as the span;
/// special tokens with an empty range (`(0, 0)`) never match. `None` if no token overlaps.
pub fn token_range(offsets: &[(usize, usize)], span: Span) -> Option<Range<usize>> {
    let overlaps = |&(s, e): &(usize, usize)| s < e && s < span.end && span.start < e;
    let first = offsets.iter().position(overlaps)?;
    let last = offsets.iter().rposition(overlaps)?;
    Some(first..last + 1)
}

/// GLIP-style negative sampling for a training prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NegativeSampling {
    /// Most names in one prompt (GLIP's `max_num_labels`). Positives beyond it are dropped
    /// at random (their boxes get no entry).
    pub max_names: usize,
}

/// A training prompt for a sample, and which prompt entries each box belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TrainingPrompt {
    /// The prompt; an entry's `source` indexes [`TrainingPrompt::names`].
    pub prompt: Prompt,
    /// The names, in the order `source` refers to.
    pub names: Vec<String>,
    /// Per entry, whether it is a positive (some box of the sample belongs to it).
    pub positive: Vec<bool>,
    /// Per instance of the sample, the prompt entries it belongs to. Empty when its concepts
    /// did not fit in `max_names`: treat such a box as an ignore region.
    pub instance_entries: Vec<Vec<usize>>,
}

/// Builds a training prompt for a detection sample, GLIP-style: every positive class (up to
/// `max_names`), plus a uniformly random number of negatives, `0..=max_names − positives`,
/// drawn without replacement from `pool` ∪ the sample's known negatives, then all shuffled.
/// Names the sample mentions (its concepts, and LVIS not-exhaustive classes) are never
/// negatives.
pub fn training_prompt(
    sample: &Sample,
    pool: &[impl AsRef<str>],
    sampling: NegativeSampling,
    format: &PromptFormat,
    rng: &mut impl Rng,
) -> TrainingPrompt {
    let mut positives: Vec<&str> = Vec::new();
    for c in sample.positive_concepts() {
        let name = sample.concepts[c].name.as_str();
        if !positives.contains(&name) {
            positives.push(name);
        }
    }
    if positives.len() > sampling.max_names {
        positives.shuffle(rng);
        positives.truncate(sampling.max_names);
    }
    let excluded: HashSet<&str> = sample
        .concepts
        .iter()
        .chain(&sample.not_exhaustive)
        .map(|c| c.name.as_str())
        .collect();
    let mut seen = HashSet::new();
    let candidates: Vec<&str> = sample
        .negatives
        .iter()
        .map(|c| c.name.as_str())
        .chain(pool.iter().map(AsRef::as_ref))
        .filter(|n| !excluded.contains(n) && seen.insert(*n))
        .collect();
    let room = sampling
        .max_names
        .saturating_sub(positives.len())
        .min(candidates.len());
    let n_neg = rng.random_range(0..=room);
    let negatives = candidates.choose_multiple(rng, n_neg).copied();

    let names: Vec<String> = positives
        .iter()
        .copied()
        .chain(negatives)
        .map(String::from)
        .collect();
    let mut order: Vec<usize> = (0..names.len()).collect();
    order.shuffle(rng);
    let prompt = build(&names, &order, format);
    let entry_of_name = |name: &str| prompt.entries.iter().position(|e| names[e.source] == name);
    let positive = prompt
        .entries
        .iter()
        .map(|e| e.source < positives.len())
        .collect();
    let instance_entries = sample
        .instances
        .iter()
        .map(|inst| {
            let mut entries: Vec<usize> = inst
                .concepts
                .iter()
                .filter_map(|&c| entry_of_name(&sample.concepts[c].name))
                .collect();
            entries.dedup();
            entries
        })
        .collect();
    TrainingPrompt {
        prompt,
        names,
        positive,
        instance_entries,
    }
}
