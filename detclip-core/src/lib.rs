//! # detclip-core
//!
//! Detection primitives shared by every detclip method: tensors in, tensors out, no models.
//!
//! - [`ops`]: box formats, IoU/GIoU, NMS (torchvision semantics), RoIAlign, the delta box coder
//! - [`assign`]: anchors per FPN level and the ATSS assigner
//! - [`loss`]: sigmoid focal, GIoU and centerness losses
//! - [`ext`]: the backend extension our custom ops (CubeCL kernels) hang off
//! - [`nn`]: layers on the custom ops (the DCN layer)
//! - [`data`]: the unified sample, dataset readers, transforms, prompts, the synthetic world
//! - [`eval`]: COCO / LVIS box AP, grounding recall, ODinW
//! - [`testing`]: what the test suites of every detclip crate share (backend from
//!   `DETCLIP_BACKEND`, `backend_test!`, fixtures, tolerances)
//! - [`check`]: every op on a chosen device against the CPU reference (`detclip check`)
//! - [`backend`]: the one place that maps `--device cpu|wgpu[:N]|cuda[:N]|auto` to a backend
#![warn(missing_docs)]

pub mod assign;
pub mod backend;
pub mod check;
pub mod data;
pub mod error;
pub mod eval;
pub mod ext;
pub mod loss;
pub mod nn;
pub mod ops;
pub mod testing;

pub use error::{DetError, Result};
