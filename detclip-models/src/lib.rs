//! detclip-models: backend-generic model blocks, each loading its official checkpoint.
//!
//! - [`import`]: PyTorch / safetensors checkpoints through key maps, with one clear error for
//!   missing, unexpected or mis-shaped keys
//! - [`layers`]: input checks and norm helpers (frozen batch norm) shared by the vision blocks
//! - [`resnet`]: ResNet-50/101 backbone (C2–C5), torchvision layout, frozen norms and stages
//! - [`swin`]: Swin Transformer backbone (four stage outputs), official detection layout
//! - [`fpn`]: feature pyramid (P2–P6 with max-pool, P3–P7 with P6/P7 convs), torchvision layout
//! - [`glip`]: GLIP (X-MHA fusion, DyHead, token-alignment ATSS head), its loss, inference
//!   and the released checkpoint's key map
//! - [`sam`]: Segment Anything (image encoder, prompt encoder, mask decoder) with the official
//!   checkpoint key map; RegionSpot's position-aware tokens come from its decoder
//! - [`bert`]: the BERT encoder (HF layout), every hidden state, layer ranges for GLIP's fusion
//! - [`clip`]: CLIP's vision transformer (pooled embedding and token grid) and text
//!   transformer, in the HF and OpenAI checkpoint layouts
//! - [`detclipv2`]: DetCLIPv2 — ATSS detector with a DCN-led alignment head, cached concept
//!   embeddings, detection/grounding and image-text losses
//! - [`regionspot`]: RegionSpot — frozen SAM and CLIP joined by a trained cross-attention
//!   module; focal loss, frozen-feature cache, official checkpoint key map
//! - [`vild`]: ViLD — a class-agnostic two-stage detector (RPN, multi-level RoIAlign) whose
//!   regions are classified by CLIP text embeddings and distilled from CLIP image embeddings
//! - [`align`]: word–region alignment for image-text pairs (DetCLIPv2): region–concept
//!   scores, max and soft-max region aggregation, the text-to-image contrastive loss,
//!   proposal selection
//! - [`dense`]: the detections of an image and the post-processing the dense one-stage heads
//!   share
//! - [`shapes`]: the `shapes` detector, a small open-vocabulary detector for the synthetic
//!   world (the learner's test model and `detclip demo`'s)
//! - [`hf`]: BERT, sentence-transformers and CLIP models read from their Hugging Face folder
//!   (`config.json`, weights, `tokenizer.json`), sentence embeddings as sentence-transformers
//! - [`tokenizer`]: HF `tokenizer.json` tokenizers (BERT WordPiece, CLIP BPE) with padding,
//!   truncation and character-span ↔ token maps
#![warn(missing_docs)]

pub mod align;
mod attention;
pub mod bert;
pub mod clip;
pub mod dense;
pub mod detclipv2;
pub mod fpn;
pub mod glip;
pub mod hf;
pub mod import;
pub mod layers;
pub mod regionspot;
pub mod resnet;
pub mod sam;
pub mod shapes;
pub mod swin;
pub mod tokenizer;
pub mod vild;
