//! Tokenizers read from Hugging Face `tokenizer.json` files (BERT WordPiece for GLIP, CLIP's
//! byte-level BPE for the CLIP text tower), through the `tokenizers` crate, with the two
//! things the detectors need on top: fixed-length batches (padding, truncation or an error
//! when a prompt does not fit) and maps between text spans and tokens (GLIP's positive map
//! says which tokens each phrase covers).
//!
//! Spans are UTF-8 byte ranges, as [`detclip_core::data::Span`] (prompts and captions carry
//! them); [`TokenizedText::char_offsets`] gives Python-style character offsets.
//!
//! [`wordpiece_tokenizer`] builds a BERT WordPiece tokenizer from a word list in code, for
//! vocabularies without a released file (the synthetic world).

mod text;
mod wordpiece;

pub use text::*;
pub use wordpiece::*;
