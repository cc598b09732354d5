//! The recipes. Each is a typed struct with named presets; `detclip train --recipe NAME`
//! picks one by its [`Recipe::NAME`](crate::recipe::Recipe::NAME).
//!
//! - [`shapes`]: a small open-vocabulary detector for the synthetic world (the learner's test
//!   recipe and `detclip demo`'s model)
//! - [`regionspot`], RegionSpot: frozen SAM + frozen CLIP, a trained cross-attention
//!   module
//! - [`detclipv2`]: DetCLIPv2 — joint detection, grounding and image-text training with
//!   word–region alignment
//! - [`glip`]: GLIP (phrase grounding with deep X-MHA fusion) on the synthetic world, with
//!   GLIP's fine-tuning modes
//! - [`vild`]: ViLD — a two-stage detector with a CLIP text classifier, distilled from CLIP's
//!   image embeddings of its proposals

pub mod detclipv2;
pub mod glip;
pub mod regionspot;
pub mod shapes;
pub mod vild;

pub use detclipv2::DetClipV2Recipe;
pub use glip::GlipRecipe;
pub use regionspot::RegionSpotRecipe;
pub use shapes::ShapesRecipe;
pub use vild::VildRecipe;
