//! Box ops, NMS, RoIAlign and the delta box coder.
//!
//! Every op follows torchvision's semantics (checked against committed fixtures written by
//! `scripts/fixtures/`), works on batches, and is differentiable where a loss needs it.

mod boxes;
mod coder;
mod deform_conv;
mod nms;
mod roi_align;

pub use boxes::*;
pub use coder::*;
pub use deform_conv::*;
pub use nms::*;
pub use roi_align::*;
