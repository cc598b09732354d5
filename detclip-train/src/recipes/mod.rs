//! The recipes. Each is a typed struct with named presets; `detclip train --recipe NAME`
//! picks one by its [`Recipe::NAME`](crate::recipe::Recipe::NAME).
//!
//! - [`shapes`]: a small open-vocabulary detector for the synthetic world (the learner's test
//!   recipe and `detclip demo`'s model)
//! - [`regionspot`], RegionSpot: frozen SAM + frozen CLIP, a trained cross-attention
//!   module

pub mod shapes;

pub use shapes::ShapesRecipe;
pub mod regionspot;

pub use regionspot::RegionSpotRecipe;
