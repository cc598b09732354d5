//! A BERT WordPiece tokenizer built in code from a word list, for vocabularies that have no
//! released `tokenizer.json` (the synthetic world). It behaves as BERT's uncased tokenizer
//! (lower-casing normaliser, whitespace-and-punctuation pre-tokeniser, `[CLS] … [SEP]`) over a
//! vocabulary of: the five special tokens (ids 0–4, as BERT: `[PAD]` is 0), ASCII punctuation,
//! the given whole words, and every lower-case letter and digit both as a word start and as a
//! `##` continuation — so any ASCII word is encoded (unknown words as letter pieces), never as
//! `[UNK]`.

use std::collections::BTreeSet;

use detclip_core::Result;
use serde_json::{Value, json};

use super::{TextTokenizer, TokenizerOptions};

/// BERT's special tokens, in BERT's id order.
const SPECIAL: [&str; 5] = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"];

/// The vocabulary [`wordpiece_tokenizer`] builds from `words`: special tokens, punctuation,
/// the distinct lower-cased words (in first-seen order), letters and digits, and their `##`
/// continuations. Index = token id.
pub fn wordpiece_vocabulary<S: AsRef<str>>(words: &[S]) -> Vec<String> {
    let mut vocab: Vec<String> = SPECIAL.iter().map(|s| s.to_string()).collect();
    let mut seen: BTreeSet<String> = vocab.iter().cloned().collect();
    let mut push = |t: String, vocab: &mut Vec<String>| {
        if seen.insert(t.clone()) {
            vocab.push(t);
        }
    };
    for c in (b'!'..=b'~').filter(u8::is_ascii_punctuation) {
        push((c as char).to_string(), &mut vocab);
    }
    for w in words {
        push(w.as_ref().to_lowercase(), &mut vocab);
    }
    for c in ('a'..='z').chain('0'..='9') {
        push(c.to_string(), &mut vocab);
        push(format!("##{c}"), &mut vocab);
    }
    vocab
}

/// The `tokenizer.json` of [`wordpiece_tokenizer`].
pub fn wordpiece_json<S: AsRef<str>>(words: &[S]) -> Value {
    let vocab = wordpiece_vocabulary(words);
    let ids: serde_json::Map<String, Value> = vocab
        .iter()
        .enumerate()
        .map(|(i, t)| (t.clone(), json!(i)))
        .collect();
    let added: Vec<Value> = SPECIAL
        .iter()
        .enumerate()
        .map(|(i, t)| {
            json!({"id": i, "content": t, "single_word": false, "lstrip": false,
                   "rstrip": false, "normalized": false, "special": true})
        })
        .collect();
    json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added,
        "normalizer": {"type": "BertNormalizer", "clean_text": true,
                       "handle_chinese_chars": true, "strip_accents": null, "lowercase": true},
        "pre_tokenizer": {"type": "BertPreTokenizer"},
        "post_processor": {"type": "BertProcessing", "sep": ["[SEP]", 3], "cls": ["[CLS]", 2]},
        "decoder": {"type": "WordPiece", "prefix": "##", "cleanup": true},
        "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                  "max_input_chars_per_word": 100, "vocab": ids}
    })
}

/// A BERT-style WordPiece tokenizer whose whole-word vocabulary is `words` (see the
/// [module docs](self)); its vocabulary size is `wordpiece_vocabulary(words).len()`.
///
/// # Errors
/// As [`TextTokenizer::from_bytes`] (e.g. `max_len` 0).
pub fn wordpiece_tokenizer<S: AsRef<str>>(
    words: &[S],
    options: TokenizerOptions,
) -> Result<TextTokenizer> {
    let bytes = serde_json::to_vec(&wordpiece_json(words)).expect("JSON serialises");
    TextTokenizer::from_bytes(&bytes, "<wordpiece built from a word list>", options)
}
