//! DetCLIPv2 (Yao et al., "DetCLIPv2: Scalable Open-Vocabulary Object Detection Pre-training
//! via Word-Region Alignment", CVPR 2023). No official code or weights were released; this
//! follows the paper.
//!
//! - [`DetClipV2`]: an ATSS detector (ResNet or Swin-T, FPN) whose classification branch
//!   starts with a light modulated deformable conv and ends in region embeddings, scored
//!   against concept embeddings from a CLIP-style text transformer (no deep fusion);
//! - [`ConceptCache`]: a vocabulary encoded once and reused for every image;
//! - [`DetClipV2LossConfig`]: `L_align + α·L_reg + β·L_center` for detection and grounding,
//!   `λ·L_cts` for image-text pairs (word–region alignment in [`crate::align`]).
//!
//! Its anchors and distance box coder are `detclip_core::assign::{LevelAnchors,
//! decode_distances}`, shared with detclip-train's `shapes` recipe.
//!
//! `detclip train --recipe detclipv2` trains it on the synthetic world (detclip-train's
//! `recipes/detclipv2.rs`); the book chapter `detclipv2.md` has the experiments.

mod backbone;
mod head;
mod loss;
mod model;
mod text;

pub use backbone::*;
pub use head::*;
pub use loss::*;
pub use model::*;
pub use text::*;
