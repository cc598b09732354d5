//! The learner's settings: steps, optimiser, schedule, checkpoints and evaluation. A leaf
//! module: recipes embed [`LearnerConfig`] without depending on the training loop.

use std::path::PathBuf;

use detclip_core::{DetError, Result};
use serde::{Deserialize, Serialize};

use super::optim::{GroupMultipliers, OptimConfig};
use super::schedule::{Decay, ScheduleConfig};

/// The learner's settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LearnerConfig {
    /// Optimiser steps.
    pub steps: u64,
    /// Seed of the sampler and the transforms (and of the model's initialisation).
    pub seed: u64,
    /// Micro-batches per optimiser step (gradient accumulation).
    pub accumulate: usize,
    /// The optimiser.
    pub optim: OptimConfig,
    /// The learning-rate schedule.
    pub schedule: ScheduleConfig,
    /// Write a checkpoint every this many steps (and always at the end); 0: only at the end.
    pub checkpoint_every: u64,
    /// Evaluate every this many steps (and at the end); 0: only at the end.
    pub eval_every: u64,
    /// Images per evaluation batch.
    pub eval_batch_size: usize,
    /// A checkpoint of the same recipe whose model starts a fresh run: fine-tuning, or the
    /// second stage of a schedule. Only the model is taken; the optimiser, the schedule and the
    /// sampler start afresh, and [`Recipe::prepare`](crate::recipe::Recipe::prepare) is skipped (the checkpoint's model is
    /// already prepared). A resumed run ignores it: its own checkpoint holds the model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub init_from: Option<PathBuf>,
}

impl LearnerConfig {
    /// AdamW at `lr` for `steps` steps with the settings the synthetic-world presets share:
    /// seed 0, no accumulation, one learning rate for every group, weight decay 1e-4, betas
    /// (0.9, 0.999), global-norm clipping at 10, nothing frozen, 50 warm-up steps from 0.01,
    /// cosine decay to 0.02, a checkpoint every 200 steps, evaluation at the end only.
    /// Presets change the fields that differ.
    pub fn adamw(steps: u64, lr: f64) -> Self {
        Self {
            steps,
            seed: 0,
            accumulate: 1,
            optim: OptimConfig {
                lr,
                lr_mult: GroupMultipliers {
                    backbone: 1.0,
                    language: 1.0,
                    new: 1.0,
                },
                weight_decay: 1e-4,
                betas: [0.9, 0.999],
                eps: 1e-8,
                clip_grad_norm: Some(10.0),
                frozen: Vec::new(),
            },
            schedule: ScheduleConfig {
                warmup_steps: 50,
                warmup_factor: 0.01,
                decay: Decay::Cosine { min_factor: 0.02 },
            },
            checkpoint_every: 200,
            eval_every: 0,
            eval_batch_size: 8,
            init_from: None,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if self.steps == 0 || self.accumulate == 0 || self.eval_batch_size == 0 {
            return Err(DetError::InvalidOption {
                op: "learner",
                why: "steps, accumulate and eval_batch_size must be positive".into(),
            });
        }
        self.optim.validate()?;
        self.schedule.validate()
    }
}
