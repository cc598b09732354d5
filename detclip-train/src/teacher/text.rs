//! The text side of the CLIP recipes (RegionSpot, ViLD): how class names become CLIP token ids.
//!
//! Released CLIP models come with their BPE `tokenizer.json`; the synthetic world's small CLIP
//! uses a word-level vocabulary instead (the world's colour and shape words plus the template
//! words), so that a held-out name made of seen words (`red ring`) is spelt with known tokens.

use std::path::PathBuf;

use burn::prelude::*;
use detclip_core::{DetError, Result};
use detclip_models::tokenizer::{TextTokenizer, TokenizerOptions, batch_tensors};
use serde::{Deserialize, Serialize};

/// How class names are tokenised for CLIP's text tower.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum TextSide {
    /// A word-level vocabulary: id 0 pads, 1 is an unknown word, 2 starts the text, then the
    /// words in order, and the last id ends the text (CLIP pools the largest id).
    Words {
        /// The known words (lower case).
        words: Vec<String>,
        /// Token rows are padded to this length (CLIP's context length).
        context: usize,
    },
    /// CLIP's own BPE tokenizer from a `tokenizer.json` (HF `openai/clip-vit-*`).
    Tokenizer {
        /// The `tokenizer.json` file.
        path: PathBuf,
        /// Token rows are padded to this length (77 for released CLIP).
        context: usize,
    },
}

const PAD: u32 = 0;
const UNKNOWN: u32 = 1;
const START: u32 = 2;
const FIRST_WORD: u32 = 3;

impl TextSide {
    /// The vocabulary size CLIP's token embedding needs (`None` for a tokenizer file: the
    /// released model's own size).
    pub fn vocab_size(&self) -> Option<usize> {
        match self {
            TextSide::Words { words, .. } => Some(words.len() + FIRST_WORD as usize + 1),
            TextSide::Tokenizer { .. } => None,
        }
    }

    /// The padded row length.
    pub fn context(&self) -> usize {
        match self {
            TextSide::Words { context, .. } | TextSide::Tokenizer { context, .. } => *context,
        }
    }

    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "regionspot text",
                why,
            })
        };
        match self {
            TextSide::Words { words, context } => {
                if words.is_empty() || *context < 3 {
                    return bad(format!(
                        "a word vocabulary needs at least one word and a context of at least 3 \
                         (got {} words, context {context})",
                        words.len()
                    ));
                }
                if let Some(w) = words.iter().find(|w| w.is_empty() || w.contains(' ')) {
                    return bad(format!("`{w}` is not a single word"));
                }
                Ok(())
            }
            TextSide::Tokenizer { path, .. } if !path.exists() => bad(format!(
                "the tokenizer file {} does not exist",
                path.display()
            )),
            TextSide::Tokenizer { .. } => Ok(()),
        }
    }

    /// Token ids `[N, context]` of `sentences`.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for no sentence or one too long for the context; tokenizer
    /// file errors.
    pub fn ids<B: Backend>(
        &self,
        sentences: &[String],
        device: &B::Device,
    ) -> Result<Tensor<B, 2, Int>> {
        if sentences.is_empty() {
            return Err(DetError::InvalidOption {
                op: "regionspot text",
                why: "no sentence to encode".into(),
            });
        }
        match self {
            TextSide::Words { words, context } => {
                let mut data = Vec::with_capacity(sentences.len() * context);
                for s in sentences {
                    data.extend(word_ids(words, s, *context)?.into_iter().map(i64::from));
                }
                Ok(Tensor::from_data(
                    TensorData::new(data, [sentences.len(), *context]),
                    device,
                ))
            }
            TextSide::Tokenizer { path, context } => {
                let options = TokenizerOptions::new(*context).with_pad_to_max_len(true);
                let tokenizer = TextTokenizer::from_file(path, options)?;
                let encoded = tokenizer.encode_batch(sentences)?;
                Ok(batch_tensors::<B>(&encoded, device)?.0)
            }
        }
    }
}

/// One sentence as word ids: start, the words (punctuation dropped, unknown words as
/// [`UNKNOWN`]), end, padding.
fn word_ids(words: &[String], sentence: &str, context: usize) -> Result<Vec<u32>> {
    let end = FIRST_WORD + words.len() as u32;
    let mut ids = vec![START];
    for token in sentence
        .split(|c: char| !c.is_alphanumeric())
        .filter(|t| !t.is_empty())
    {
        let lower = token.to_lowercase();
        let id = words
            .iter()
            .position(|w| *w == lower)
            .map_or(UNKNOWN, |i| FIRST_WORD + i as u32);
        ids.push(id);
    }
    ids.push(end);
    if ids.len() > context {
        return Err(DetError::InvalidOption {
            op: "regionspot text",
            why: format!(
                "`{sentence}` needs {} tokens, the context holds {context}",
                ids.len()
            ),
        });
    }
    ids.resize(context, PAD);
    Ok(ids)
}

/// The words of `names` and `templates`, lower case, deduplicated in first-seen order.
pub fn words_of(names: &[String], templates: &[String]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for text in names.iter().chain(templates) {
        for w in text
            .split(|c: char| !c.is_alphanumeric())
            .filter(|t| !t.is_empty())
        {
            let w = w.to_lowercase();
            if !out.contains(&w) {
                out.push(w);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn word_ids_spell_known_and_unknown_words_with_start_end_and_padding() {
        let words = vec!["a".to_string(), "red".into(), "ring".into()];
        let ids = word_ids(&words, "A red ring, blue.", 8).unwrap();
        // start, a=3, red=4, ring=5, blue unknown=1, end=3+3=6, pad.
        assert_eq!(ids, vec![2, 3, 4, 5, 1, 6, 0, 0]);
        assert!(word_ids(&words, "a red ring", 4).is_err());
    }

    #[test]
    fn words_of_deduplicates_in_order() {
        let w = words_of(
            &["red ring".into(), "blue ring".into()],
            &["a photo of a {}.".into()],
        );
        assert_eq!(w, ["red", "ring", "blue", "a", "photo", "of"]);
    }
}
