//! detclip-train's test suite: one binary, every backend (`DETCLIP_BACKEND`, as in
//! detclip-core). The learner is tested with the tiny preset of the `shapes` recipe on the
//! synthetic world.

#[macro_use]
extern crate detclip_core;

mod harness;

mod checkpoint;
mod config;
mod data_flag;
mod detclipv2;
mod eval_cli;
mod eval_set;
mod glip;
mod import_official;
mod learner;
mod mask;
mod master_weights;
mod official_config;
mod parallel;
mod regionspot;
mod sampler;
mod schedule;
mod text_model;
mod vild;
mod vild_recipe;
