//! CLIP (Radford et al., 2021, "Learning Transferable Visual Models From Natural Language
//! Supervision"): the ViT image tower and the causal text transformer, as used by ViLD and
//! RegionSpot (frozen text and image embeddings) and DetCLIPv2 (text encoder).
//!
//! Both checkpoint layouts load: Hugging Face `CLIPModel` ([`hf_clip_keys`]) and OpenAI's
//! `clip` state dicts ([`openai_clip_keys`]). The two differ in more than names — OpenAI fuses
//! the attention's q/k/v into one `in_proj_weight` and stores the projections `[in, out]` —
//! so the [`ClipLayout`] chosen at construction decides which parameter holders a model has
//! (`q_proj/k_proj/v_proj` or a fused `in_proj`; a `Linear` or a plain matrix). The maths is
//! the same either way.

mod block;
mod keys;
mod model;
mod pixels;
mod text;
mod vision;

pub use block::*;
pub use keys::*;
pub use model::*;
pub use pixels::*;
pub use text::*;
pub use vision::*;
