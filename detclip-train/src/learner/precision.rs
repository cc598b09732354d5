//! Dynamic loss scaling for half precision training (Micikevicius et al. 2018, "Mixed
//! Precision Training", §3.2; PyTorch's `torch.amp.GradScaler`).
//!
//! Small gradients underflow to zero in f16. The loss is multiplied by a scale `S` before the
//! backward pass, so every gradient is `S` times larger; the gradients are checked for
//! infinities and NaNs and divided by `S` before clipping and the optimiser step. A step whose
//! gradients are not finite is skipped (the model and the optimiser state do not change) and
//! `S` is halved; after `growth_interval` finite steps in a row `S` is doubled. Powers of two
//! keep scaling and unscaling exact.

use burn::module::{AutodiffModule, ModuleVisitor, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::{DetError, Result};
use serde::{Deserialize, Serialize};

/// The loss scaler's settings and state (saved in checkpoints, so a resumed run continues
/// with the scale it stopped at).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LossScaler {
    /// The current scale `S`.
    pub scale: f64,
    /// Double `S` after this many finite steps in a row.
    pub growth_interval: u64,
    /// Finite steps since the last change of `S`.
    pub good_steps: u64,
}

/// What [`LossScaler::update`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScaleChange {
    /// The scale stays.
    Kept,
    /// The gradients were finite for `growth_interval` steps: the scale doubled.
    Grown,
    /// The gradients were not finite: the step is skipped and the scale halved.
    Backed,
}

/// The smallest scale [`LossScaler::update`] halves to: below it a step whose gradients are
/// not finite is not caused by the scale.
const MIN_SCALE: f64 = 1.0 / 65536.0;

impl LossScaler {
    /// PyTorch's `GradScaler` defaults: `S = 2^16`, doubled after 2000 finite steps.
    pub fn new() -> Self {
        Self::with(65536.0, 2000)
    }

    /// The scaler `--precision f16|bf16` starts with: `S = 2^10`, doubled after 2000 finite
    /// steps. PyTorch's `2^16` assumes autocast, which keeps the loss in f32; here the whole
    /// graph runs in half precision, the loss included, and a loss above 1 times `2^16`
    /// overflows f16 (largest value 65504), so every first step would be skipped until the
    /// scale had halved far enough.
    pub fn for_half() -> Self {
        Self::with(1024.0, 2000)
    }

    /// A scaler starting at `scale`, doubling after `growth_interval` finite steps.
    pub fn with(scale: f64, growth_interval: u64) -> Self {
        Self {
            scale,
            growth_interval,
            good_steps: 0,
        }
    }

    /// Checks the values.
    pub fn validate(&self) -> Result<()> {
        if !(self.scale.is_finite() && self.scale > 0.0) || self.growth_interval == 0 {
            return Err(DetError::InvalidOption {
                op: "loss scaling",
                why: "the scale must be finite and positive, the growth interval positive".into(),
            });
        }
        Ok(())
    }

    /// The factor the loss is multiplied by before the backward pass.
    pub fn scale(&self) -> f32 {
        self.scale as f32
    }

    /// Divides the gradients of `model`'s parameters by the scale; also says whether every
    /// one of them was finite (one read-back for all of them).
    pub fn unscale<B: AutodiffBackend, M: AutodiffModule<B>>(
        &self,
        model: &M,
        grads: GradientsParams,
    ) -> (GradientsParams, bool) {
        let mut v = Unscale::<B> {
            grads,
            inverse: (1.0 / self.scale) as f32,
            non_finite: None,
        };
        model.visit(&mut v);
        let finite = v
            .non_finite
            .is_none_or(|n| n.into_scalar().elem::<i64>() == 0);
        (v.grads, finite)
    }

    /// Moves the scale after a step whose gradients were (`finite`) or were not finite.
    pub fn update(&mut self, finite: bool) -> ScaleChange {
        if !finite {
            self.scale = (self.scale * 0.5).max(MIN_SCALE);
            self.good_steps = 0;
            return ScaleChange::Backed;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.good_steps = 0;
            // f16's largest value is 65504: a scale beyond f32's range is of no use either.
            self.scale = (self.scale * 2.0).min(f32::MAX as f64 / 2.0);
            return ScaleChange::Grown;
        }
        ScaleChange::Kept
    }
}

impl Default for LossScaler {
    fn default() -> Self {
        Self::new()
    }
}

/// Divides each gradient by the scale and counts its elements that are not finite.
struct Unscale<B: AutodiffBackend> {
    grads: GradientsParams,
    inverse: f32,
    non_finite: Option<Tensor<B::InnerBackend, 1, Int>>,
}

impl<B: AutodiffBackend> ModuleVisitor<B> for Unscale<B> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let Some(grad) = self.grads.remove::<B::InnerBackend, D>(param.id) else {
            return;
        };
        let bad = grad.clone().is_finite().bool_not().int().sum();
        self.non_finite = Some(match self.non_finite.take() {
            Some(n) => n + bad,
            None => bad,
        });
        self.grads.register(param.id, grad.mul_scalar(self.inverse));
    }
}
