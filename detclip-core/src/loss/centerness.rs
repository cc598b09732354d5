//! Centerness targets and loss (Tian et al., FCOS, 2019, eq. 3; as ATSS and GLIP use them).

use burn::prelude::*;

use super::{Reduction, bce_with_logits, reduce};
use crate::error::{Result, ensure_shape};

/// `sqrt( min(l, r)/max(l, r) · min(t, b)/max(t, b) )` where `l, t, r, b` are the distances
/// from each point to the sides of its assigned box (mmdetection `ATSSHead.centerness_target`
/// with anchor centres as points).
///
/// # Shapes
/// - `points`: `[N, 2]` `(x, y)`; `boxes`: `[N, 4]` xyxy; output `[N]`
pub fn centerness_targets<B: Backend>(
    points: Tensor<B, 2>,
    boxes: Tensor<B, 2>,
) -> Result<Tensor<B, 1>> {
    let (dp, db) = (points.dims(), boxes.dims());
    ensure_shape(dp[1] == 2, "centerness_targets", "points", &dp, "[N, 2]")?;
    ensure_shape(
        db == [dp[0], 4],
        "centerness_targets",
        "boxes",
        &db,
        format!("[{}, 4]", dp[0]),
    )?;
    let n = dp[0];
    let c = |t: &Tensor<B, 2>, i| t.clone().narrow(1, i, 1);
    let (x, y) = (c(&points, 0), c(&points, 1));
    let l = x.clone() - c(&boxes, 0);
    let t = y.clone() - c(&boxes, 1);
    let r = c(&boxes, 2) - x;
    let b = c(&boxes, 3) - y;
    let lr = l.clone().min_pair(r.clone()) / l.max_pair(r);
    let tb = t.clone().min_pair(b.clone()) / t.max_pair(b);
    Ok((lr * tb).sqrt().reshape([n]))
}

/// Centerness loss: binary cross-entropy between predicted centerness logits and targets.
///
/// # Shapes
/// - `logits`, `targets`: `[N]`; output `[N]` (or `[1]` reduced)
pub fn centerness_loss<B: Backend>(
    logits: Tensor<B, 1>,
    targets: Tensor<B, 1>,
    reduction: Reduction,
) -> Result<Tensor<B, 1>> {
    let (dl, dt) = (logits.dims(), targets.dims());
    ensure_shape(
        dl == dt,
        "centerness_loss",
        "targets",
        &dt,
        format!("{dl:?}"),
    )?;
    Ok(reduce(bce_with_logits(logits, targets), reduction))
}
