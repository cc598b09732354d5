//! Losses shared by the detectors: sigmoid focal loss, GIoU loss, centerness.

mod centerness;
mod focal;
mod giou;

pub use centerness::*;
pub use focal::*;
pub use giou::*;

use burn::prelude::*;

/// How per-element losses are reduced.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum Reduction {
    /// Keep every element.
    None,
    /// The mean over all elements.
    Mean,
    /// The sum over all elements.
    Sum,
}

pub(crate) fn reduce<B: Backend, const D: usize>(
    loss: Tensor<B, D>,
    reduction: Reduction,
) -> Tensor<B, D> {
    match reduction {
        Reduction::None => loss,
        Reduction::Mean => loss.mean().reshape([1; D]),
        Reduction::Sum => loss.sum().reshape([1; D]),
    }
}

/// Binary cross-entropy with logits, elementwise, in the numerically stable form
/// `max(x, 0) − x·t + ln(1 + e^(−|x|))` (PyTorch `binary_cross_entropy_with_logits`).
pub fn bce_with_logits<B: Backend, const D: usize>(
    logits: Tensor<B, D>,
    targets: Tensor<B, D>,
) -> Tensor<B, D> {
    let softplus_neg_abs = (logits.clone().abs().neg().exp() + 1.0).log();
    logits.clone().clamp_min(0.0) - logits * targets + softplus_neg_abs
}
