//! detclip-models' test suite: one binary, every backend (`DETCLIP_BACKEND`, as in
//! detclip-core). Each block is checked against its PyTorch reference through fixtures written
//! by `scripts/fixtures/*.py` in the official key layout, loaded with our import.

#[macro_use]
extern crate detclip_core;

mod harness;

mod align;
mod bert;
mod clip;
mod dense;
mod detclipv2;
mod fpn;
mod glip;
mod glip_official;
mod hf;
mod import;
mod regionspot;
mod resnet;
mod sam;
mod swin;
mod tokenizer;
mod vild;
