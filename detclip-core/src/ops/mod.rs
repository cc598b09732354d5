//! Box ops, NMS, RoIAlign, the delta box coder, the deformable convolution and block
//! transposed convolutions.
//!
//! Every op follows torchvision's semantics (checked against committed fixtures written by
//! `scripts/fixtures/`), works on batches, and is differentiable where a loss needs it.

mod boxes;
mod coder;
mod deform_conv;
mod nms;
mod roi_align;
mod upsample_conv;

pub use boxes::*;
pub use coder::*;
pub use deform_conv::*;
pub use nms::*;
pub use roi_align::*;
pub use upsample_conv::*;
