//! detclip-core's test suite: one binary, every backend.
//!
//! The backend comes from `DETCLIP_BACKEND` (`cpu` = ndarray, the default; `wgpu`; `cuda`),
//! parsed by the same code as the `--device` flag. Building with `--features wgpu,cuda` puts
//! every backend in the one binary, so CI builds once and runs twice.
//! Parity fixtures come from `scripts/fixtures/*.py` (torchvision, mmdetection) and are
//! committed under `tests/fixtures/`.

#[macro_use]
extern crate detclip_core;

mod harness;

mod assign;
mod boxes;
mod data;
mod deform_conv;
mod eval;
mod ext;
mod losses;
mod nms;
mod roi_align;
mod upsample_conv;
