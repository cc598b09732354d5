//! The concept side: names to token ids, token ids to one embedding per concept (CLIP's text
//! transformer, end-of-text state, projection), and the cache that makes the vocabulary's cost
//! a one-off.

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;

/// A word-level tokenizer with hashed ids, for vocabularies that have no `tokenizer.json`
/// (the synthetic world, tests, benchmarks).
///
/// A name is lower-cased and split into words at every non-alphanumeric character; each word
/// gets the id `1 + FNV-1a(word) mod (vocab − 3)`, and the sequence is
/// `[start, words…, end]` padded with 0. The end id is the largest id, so CLIP's
/// [`EotPooling::ArgMax`](crate::clip::EotPooling::ArgMax) pools it.
///
/// Ids are per *word*: a held-out name made of seen words (`red ring`, when `red` and `ring`
/// were seen apart) is a new sequence of known tokens, and the transformer composes it.
/// Real checkpoints use their own BPE ([`crate::tokenizer`]) instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashedWordTokenizer {
    /// Vocabulary size of the text tower (ids `0..vocab`).
    pub vocab: usize,
    /// Longest sequence, start and end tokens included.
    pub context: usize,
}

impl HashedWordTokenizer {
    fn word_id(&self, word: &str) -> i64 {
        let h = word.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
        });
        1 + (h % (self.vocab as u64 - 3)) as i64
    }

    /// Token ids of `names`, `[C, L]` with `L` the longest sequence (words past
    /// `context − 2` are dropped).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for no names, a name with no word, or a vocabulary below 4
    /// or a context below 3.
    pub fn encode<B: Backend>(
        &self,
        names: &[String],
        device: &B::Device,
    ) -> detclip_core::Result<Tensor<B, 2, Int>> {
        let bad = |why: String| DetError::InvalidOption {
            op: "HashedWordTokenizer",
            why,
        };
        if self.vocab < 4 || self.context < 3 {
            return Err(bad(format!(
                "need vocab ≥ 4 and context ≥ 3, got {} and {}",
                self.vocab, self.context
            )));
        }
        if names.is_empty() {
            return Err(bad("no concept names".into()));
        }
        let (start, end) = (self.vocab as i64 - 2, self.vocab as i64 - 1);
        let mut rows = Vec::with_capacity(names.len());
        for name in names {
            let lower = name.to_lowercase();
            let words: Vec<i64> = lower
                .split(|c: char| !c.is_alphanumeric())
                .filter(|w| !w.is_empty())
                .take(self.context - 2)
                .map(|w| self.word_id(w))
                .collect();
            if words.is_empty() {
                return Err(bad(format!("the concept name {name:?} has no word")));
            }
            let mut row = vec![start];
            row.extend(words);
            row.push(end);
            rows.push(row);
        }
        let len = rows.iter().map(Vec::len).max().unwrap_or(2);
        let ids: Vec<i64> = rows
            .iter()
            .flat_map(|r| {
                r.iter()
                    .copied()
                    .chain(std::iter::repeat_n(0, len - r.len()))
            })
            .collect();
        Ok(Tensor::from_data(
            TensorData::new(ids, [names.len(), len]),
            device,
        ))
    }
}

/// Concept embeddings computed once for a vocabulary and reused for every image: with no
/// deep fusion the image side never sees the text, so a detector with a cached vocabulary
/// costs the same per image whatever its size, up to the final `[A, D] × [D, C]` product.
#[derive(Debug, Clone)]
pub struct ConceptCache<B: Backend> {
    /// The names, in row order.
    pub names: Vec<String>,
    /// `[C, D]` unit-length concept embeddings.
    pub embeddings: Tensor<B, 2>,
}

impl<B: Backend> ConceptCache<B> {
    /// The number of concepts.
    pub fn len(&self) -> usize {
        self.names.len()
    }

    /// Whether the cache is empty (it never is when built by the model).
    pub fn is_empty(&self) -> bool {
        self.names.is_empty()
    }

    /// The row of a name.
    pub fn index_of(&self, name: &str) -> Option<usize> {
        self.names.iter().position(|n| n == name)
    }
}
