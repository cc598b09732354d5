//! Sigmoid focal loss (Lin et al., RetinaNet, 2017, eq. 5; torchvision `sigmoid_focal_loss`).

use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use super::{Reduction, bce_with_logits, reduce};
use crate::error::{Result, ensure_shape};

/// `FL(p_t) = −α_t (1 − p_t)^γ ln(p_t)` on logits, elementwise.
///
/// GLIP and DetCLIPv2 use it on region–token alignment logits with `α = 0.25`, `γ = 2`.
/// `alpha < 0` disables the α weighting, as in torchvision.
///
/// # Shapes
/// - `logits`, `targets` (in `[0, 1]`): any equal shape; output the same (or `[1; D]` reduced)
pub fn sigmoid_focal_loss<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    targets: Tensor<B, D>,
    alpha: f32,
    gamma: f32,
    reduction: Reduction,
) -> Result<Tensor<B, D>> {
    let (dl, dt) = (logits.dims(), targets.dims());
    ensure_shape(
        dl == dt,
        "sigmoid_focal_loss",
        "targets",
        &dt,
        format!("{dl:?} (the shape of logits)"),
    )?;
    let p = sigmoid(logits.clone());
    let ce = bce_with_logits(logits, targets.clone());
    let p_t = p.clone() * targets.clone() + (p.neg() + 1.0) * (targets.clone().neg() + 1.0);
    let mut loss = ce * (p_t.neg() + 1.0).powf_scalar(gamma);
    if alpha >= 0.0 {
        let alpha_t = targets.clone() * alpha + (targets.neg() + 1.0) * (1.0 - alpha);
        loss = alpha_t * loss;
    }
    Ok(reduce(loss, reduction))
}
