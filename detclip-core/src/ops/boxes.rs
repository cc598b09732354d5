//! Box formats, clipping, areas, pairwise IoU and GIoU (torchvision.ops semantics).

use burn::prelude::*;

use crate::error::{DetError, Result, ensure_shape};

/// How the four numbers of a box are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum BoxFormat {
    /// Corners: `(x1, y1, x2, y2)`.
    Xyxy,
    /// Top-left corner and size: `(x, y, w, h)` (COCO json).
    Xywh,
    /// Centre and size: `(cx, cy, w, h)`.
    Cxcywh,
}

fn check_last4<B: Backend, const D: usize>(op: &'static str, t: &Tensor<B, D>) -> Result<()> {
    let d = t.dims();
    ensure_shape(D >= 1 && d[D - 1] == 4, op, "boxes", &d, "[..., 4]")
}

fn split4<B: Backend, const D: usize>(t: Tensor<B, D>) -> [Tensor<B, D>; 4] {
    let c = |i| t.clone().narrow(D - 1, i, 1);
    [c(0), c(1), c(2), c(3)]
}

fn join4<B: Backend, const D: usize>(parts: [Tensor<B, D>; 4]) -> Tensor<B, D> {
    Tensor::cat(parts.to_vec(), D - 1)
}

/// Converts boxes between formats. Differentiable.
///
/// # Shapes
/// - `boxes`: `[..., 4]`; output: the same
pub fn box_convert<B: Backend, const D: usize>(
    boxes: Tensor<B, D>,
    from: BoxFormat,
    to: BoxFormat,
) -> Result<Tensor<B, D>> {
    check_last4("box_convert", &boxes)?;
    if from == to {
        return Ok(boxes);
    }
    let [a, b, c, d] = split4(boxes);
    // To xyxy first.
    let [x1, y1, x2, y2] = match from {
        BoxFormat::Xyxy => [a, b, c, d],
        BoxFormat::Xywh => [a.clone(), b.clone(), a + c, b + d],
        BoxFormat::Cxcywh => {
            let (hw, hh) = (c * 0.5, d * 0.5);
            [
                a.clone() - hw.clone(),
                b.clone() - hh.clone(),
                a + hw,
                b + hh,
            ]
        }
    };
    Ok(join4(match to {
        BoxFormat::Xyxy => [x1, y1, x2, y2],
        BoxFormat::Xywh => [x1.clone(), y1.clone(), x2 - x1, y2 - y1],
        BoxFormat::Cxcywh => [
            (x1.clone() + x2.clone()) / 2.0,
            (y1.clone() + y2.clone()) / 2.0,
            x2 - x1,
            y2 - y1,
        ],
    }))
}

/// Clips xyxy boxes to an image of `height` × `width` pixels (torchvision `clip_boxes_to_image`).
pub fn clip_boxes<B: Backend, const D: usize>(
    boxes: Tensor<B, D>,
    height: f32,
    width: f32,
) -> Result<Tensor<B, D>> {
    check_last4("clip_boxes", &boxes)?;
    let [x1, y1, x2, y2] = split4(boxes);
    Ok(join4([
        x1.clamp(0.0, width),
        y1.clamp(0.0, height),
        x2.clamp(0.0, width),
        y2.clamp(0.0, height),
    ]))
}

/// Area `(x2 − x1)(y2 − y1)` of xyxy boxes.
///
/// # Shapes
/// - `boxes`: `[..., 4]`; output `[...]` with a trailing 1 (`[..., 1]`)
pub fn box_area<B: Backend, const D: usize>(boxes: Tensor<B, D>) -> Result<Tensor<B, D>> {
    check_last4("box_area", &boxes)?;
    let [x1, y1, x2, y2] = split4(boxes);
    Ok((x2 - x1) * (y2 - y1))
}

/// Checks that every xyxy box is finite with `x2 ≥ x1` and `y2 ≥ y1` (zero-area boxes pass).
/// Reads the boxes back to the host.
pub fn validate_boxes<B: Backend>(op: &'static str, boxes: &Tensor<B, 2>) -> Result<()> {
    check_last4(op, boxes)?;
    let data: Vec<f32> =
        boxes
            .to_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| DetError::InvalidOption {
                op,
                why: format!("could not read boxes: {e:?}"),
            })?;
    validate_box_slice(op, &data)
}

/// [`validate_boxes`] on host data laid out as `[x1, y1, x2, y2, x1, …]`.
pub fn validate_box_slice(op: &'static str, data: &[f32]) -> Result<()> {
    for (index, b) in data.chunks_exact(4).enumerate() {
        let value = [b[0], b[1], b[2], b[3]];
        let why = if value.iter().any(|v| !v.is_finite()) {
            Some("a coordinate is not finite")
        } else if b[2] < b[0] {
            Some("x2 < x1")
        } else if b[3] < b[1] {
            Some("y2 < y1")
        } else {
            None
        };
        if let Some(why) = why {
            return Err(DetError::InvalidBox {
                op,
                index,
                value,
                why,
            });
        }
    }
    Ok(())
}

/// Intersection and union of every pair, `[N, M]` each.
fn inter_union<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> (Tensor<B, 2>, Tensor<B, 2>) {
    let [n, _] = a.dims();
    let [m, _] = b.dims();
    let area_a = box_area(a.clone()).expect("checked").reshape([n, 1]);
    let area_b = box_area(b.clone()).expect("checked").reshape([1, m]);
    let a3 = a.unsqueeze_dim::<3>(1); // [N,1,4]
    let b3 = b.unsqueeze_dim::<3>(0); // [1,M,4]
    let lt = a3
        .clone()
        .narrow(2, 0, 2)
        .max_pair(b3.clone().narrow(2, 0, 2).expand([n, m, 2]));
    let rb = a3
        .narrow(2, 2, 2)
        .min_pair(b3.narrow(2, 2, 2).expand([n, m, 2]));
    let wh = (rb - lt).clamp_min(0.0);
    let inter = (wh.clone().narrow(2, 0, 1) * wh.narrow(2, 1, 1)).reshape([n, m]);
    let union = area_a + area_b - inter.clone();
    (inter, union)
}

/// Pairwise IoU of two sets of xyxy boxes (torchvision `box_iou`). Differentiable.
///
/// # Shapes
/// - `a`: `[N, 4]`, `b`: `[M, 4]`; output `[N, M]`
pub fn box_iou<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    check_last4("box_iou", &a)?;
    check_last4("box_iou", &b)?;
    let (inter, union) = inter_union(a, b);
    Ok(inter / union)
}

/// Pairwise generalized IoU (Rezatofighi et al. 2019; torchvision `generalized_box_iou`).
///
/// # Shapes
/// - `a`: `[N, 4]`, `b`: `[M, 4]`; output `[N, M]`
pub fn generalized_box_iou<B: Backend>(a: Tensor<B, 2>, b: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
    check_last4("generalized_box_iou", &a)?;
    check_last4("generalized_box_iou", &b)?;
    let [n, _] = a.dims();
    let [m, _] = b.dims();
    let (inter, union) = inter_union(a.clone(), b.clone());
    let iou = inter / union.clone();
    let a3 = a.unsqueeze_dim::<3>(1);
    let b3 = b.unsqueeze_dim::<3>(0);
    let lt = a3
        .clone()
        .narrow(2, 0, 2)
        .min_pair(b3.clone().narrow(2, 0, 2).expand([n, m, 2]));
    let rb = a3
        .narrow(2, 2, 2)
        .max_pair(b3.narrow(2, 2, 2).expand([n, m, 2]));
    let wh = (rb - lt).clamp_min(0.0);
    let area = (wh.clone().narrow(2, 0, 1) * wh.narrow(2, 1, 1)).reshape([n, m]);
    Ok(iou - (area.clone() - union) / area)
}

/// IoU and GIoU of matching pairs (box `i` of `a` with box `i` of `b`), as the GIoU loss uses
/// them (torchvision `generalized_box_iou_loss` internals, with its `eps`). Differentiable.
///
/// # Shapes
/// - `a`, `b`: `[N, 4]`; outputs `[N]`, `[N]`
pub fn elementwise_iou_giou<B: Backend>(
    a: Tensor<B, 2>,
    b: Tensor<B, 2>,
    eps: f32,
) -> Result<(Tensor<B, 1>, Tensor<B, 1>)> {
    check_last4("elementwise_iou_giou", &a)?;
    let (da, db) = (a.dims(), b.dims());
    ensure_shape(
        da == db,
        "elementwise_iou_giou",
        "b",
        &db,
        format!("{da:?}"),
    )?;
    let n = da[0];
    let [x1, y1, x2, y2] = split4(a);
    let [x1g, y1g, x2g, y2g] = split4(b);
    let xk1 = x1.clone().max_pair(x1g.clone());
    let yk1 = y1.clone().max_pair(y1g.clone());
    let xk2 = x2.clone().min_pair(x2g.clone());
    let yk2 = y2.clone().min_pair(y2g.clone());
    // torchvision zeroes the intersection unless both sides are positive.
    let inter = (xk2 - xk1).clamp_min(0.0) * (yk2 - yk1).clamp_min(0.0);
    let union = (x2.clone() - x1.clone()) * (y2.clone() - y1.clone())
        + (x2g.clone() - x1g.clone()) * (y2g.clone() - y1g.clone())
        - inter.clone();
    let iou = inter / (union.clone() + eps);
    let xc1 = x1.min_pair(x1g);
    let yc1 = y1.min_pair(y1g);
    let xc2 = x2.max_pair(x2g);
    let yc2 = y2.max_pair(y2g);
    let area_c = (xc2 - xc1) * (yc2 - yc1);
    let giou = iou.clone() - (area_c.clone() - union) / (area_c + eps);
    Ok((iou.reshape([n]), giou.reshape([n])))
}
