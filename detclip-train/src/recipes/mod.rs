//! The recipes. Each is a typed struct with named presets; `detclip train --recipe NAME`
//! picks one by its [`Recipe::NAME`](crate::recipe::Recipe::NAME).
//!
//! - [`shapes`]: a small open-vocabulary detector for the synthetic world (the learner's test
//!   recipe and `detclip demo`'s model)
//! - [`glip`]: GLIP (phrase grounding with deep X-MHA fusion) on the synthetic world, with
//!   GLIP's fine-tuning modes

pub mod glip;
pub mod shapes;

pub use glip::GlipRecipe;
pub use shapes::ShapesRecipe;
