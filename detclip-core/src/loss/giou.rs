//! GIoU loss (Rezatofighi et al., 2019; torchvision `generalized_box_iou_loss`).

use burn::prelude::*;

use super::{Reduction, reduce};
use crate::error::Result;
use crate::ops::elementwise_iou_giou;

/// `1 − GIoU(pred_i, target_i)` for matching pairs of xyxy boxes, with torchvision's `eps`.
///
/// # Shapes
/// - `pred`, `target`: `[N, 4]`; output `[N]` (or `[1]` reduced)
pub fn giou_loss<B: Backend>(
    pred: Tensor<B, 2>,
    target: Tensor<B, 2>,
    reduction: Reduction,
    eps: f32,
) -> Result<Tensor<B, 1>> {
    let (_, giou) = elementwise_iou_giou(pred, target, eps)?;
    Ok(reduce(giou.neg() + 1.0, reduction))
}
