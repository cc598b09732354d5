//! Layers built on the custom ops (parameters + forward), for the model crates to compose.

mod deform_conv;

pub use deform_conv::*;
