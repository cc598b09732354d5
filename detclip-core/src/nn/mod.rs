//! Layers built on the custom ops (parameters + forward), for the model crates to compose, and
//! the workspace's one entry point to a 2-D convolution ([`conv2d`]).

mod conv;
mod deform_conv;

pub use conv::*;
pub use deform_conv::*;
