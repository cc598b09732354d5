//! # detclip-train
//!
//! The shared learner, the method recipes and the `detclip` command.
//!
//! - [`recipe`]: the [`Recipe`](recipe::Recipe) trait — model, loss terms, inference, typed
//!   config
//! - [`learner`]: the training loop (grouped AdamW, schedules, accumulation, clipping,
//!   checkpoints, logs, the loss plot)
//! - [`data`]: training sources and the joint multi-source sampler
//! - [`evaluate`]: COCO AP of a recipe's detections (all, seen, held-out concepts)
//! - [`recipes`]: the recipes (for now the synthetic-world `shapes` detector)
//! - [`detect`]: `detclip detect` — detections as COCO JSON and annotated images
//! - [`commands`]: `detclip train`, `detect` and `demo` as functions (device and recipe
//!   chosen at run time)
//! - [`draw`]: boxes, labels and plots drawn into images
//! - [`vild`]: `detclip vild precompute` — CLIP teacher embeddings of the proposals, in
//!   resumable shards
//! - [`teacher`]: the synthetic world's small CLIP teacher (RegionSpot and ViLD), and how
//!   class names become CLIP token ids
//! - [`import`]: `detclip import` — an official checkpoint as a run folder of ours
//! - [`eval_cli`]: `detclip eval` (`detclip check` is `detclip_core::check`)
#![warn(missing_docs)]

pub mod commands;
pub mod data;
pub mod detect;
pub mod draw;
pub mod eval_cli;
pub mod evaluate;
pub mod import;
pub mod learner;
pub mod mask;
pub mod recipe;
pub mod recipes;
pub mod splits;
pub mod teacher;
pub mod unseen;
pub mod vild;
