//! RoIAlign (He et al., Mask R-CNN, 2017) with torchvision's semantics: `aligned` true/false,
//! a fixed or adaptive sampling grid, bilinear sampling with torchvision's border rules.
//!
//! The sampling positions and bilinear weights depend only on the boxes, so they are computed
//! on the host in f32 in torchvision's order of operations; the features are then gathered and
//! weighted with portable tensor ops, chunked over RoIs to bound memory. The backward pass with
//! respect to the features is the autodiff of the gather (a scatter-add); like torchvision, no
//! gradient flows to the boxes.

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::{DetError, Result, ensure_shape};

/// Options of [`roi_align`] (torchvision `roi_align` arguments).
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RoiAlignOptions {
    /// Output `(height, width)` of each pooled region.
    pub output_size: [usize; 2],
    /// Scale from box coordinates to feature-map coordinates (e.g. 1/16).
    pub spatial_scale: f32,
    /// Sampling points per bin along each axis; `0` = adaptive (`ceil(roi_size / output_size)`).
    pub sampling_ratio: usize,
    /// Shift boxes by −0.5 pixel (pixel centres at half-integers), as Detectron2's ROIAlignV2.
    pub aligned: bool,
}

impl RoiAlignOptions {
    /// `output_size × output_size`, adaptive sampling, `aligned = true`.
    pub fn new(output_size: usize, spatial_scale: f32) -> Self {
        Self {
            output_size: [output_size, output_size],
            spatial_scale,
            sampling_ratio: 0,
            aligned: true,
        }
    }
}

/// Row of one bilinear corner and its weight.
type Tap = (i64, f32);

/// The taps of every output bin of one RoI, with the RoI's index.
type RoiTaps = (usize, Vec<Vec<Tap>>);

fn bilinear_taps(mut y: f32, mut x: f32, h: usize, w: usize, base: i64, out: &mut Vec<Tap>) {
    if y < -1.0 || y > h as f32 || x < -1.0 || x > w as f32 {
        return;
    }
    if y <= 0.0 {
        y = 0.0;
    }
    if x <= 0.0 {
        x = 0.0;
    }
    let mut y_low = y as usize;
    let mut x_low = x as usize;
    let y_high;
    let x_high;
    if y_low >= h - 1 {
        y_low = h - 1;
        y_high = h - 1;
        y = y_low as f32;
    } else {
        y_high = y_low + 1;
    }
    if x_low >= w - 1 {
        x_low = w - 1;
        x_high = w - 1;
        x = x_low as f32;
    } else {
        x_high = x_low + 1;
    }
    let ly = y - y_low as f32;
    let lx = x - x_low as f32;
    let hy = 1.0 - ly;
    let hx = 1.0 - lx;
    let row = |yy: usize, xx: usize| base + (yy * w + xx) as i64;
    out.push((row(y_low, x_low), hy * hx));
    out.push((row(y_low, x_high), hy * lx));
    out.push((row(y_high, x_low), ly * hx));
    out.push((row(y_high, x_high), ly * lx));
}

/// The bilinear taps of every output bin of one RoI (weights already divided by the
/// number of samples), row-major over the output grid.
fn roi_taps(
    r: usize,
    roi: &[f32],
    n: usize,
    h: usize,
    w: usize,
    o: &RoiAlignOptions,
) -> Result<Vec<Vec<Tap>>> {
    let [ph, pw] = o.output_size;
    let b = roi[0];
    if !(b >= 0.0 && b.fract() == 0.0 && (b as usize) < n) {
        return Err(DetError::InvalidOption {
            op: "roi_align",
            why: format!("roi {r} has batch index {b}, but the batch has {n} images"),
        });
    }
    let value = [roi[1], roi[2], roi[3], roi[4]];
    crate::ops::validate_box_slice("roi_align", &value).map_err(|e| match e {
        DetError::InvalidBox { op, value, why, .. } => DetError::InvalidBox {
            op,
            index: r,
            value,
            why,
        },
        other => other,
    })?;
    let base = (b as usize * h * w) as i64;
    let offset = if o.aligned { 0.5 } else { 0.0 };
    let start_w = roi[1] * o.spatial_scale - offset;
    let start_h = roi[2] * o.spatial_scale - offset;
    let end_w = roi[3] * o.spatial_scale - offset;
    let end_h = roi[4] * o.spatial_scale - offset;
    let mut roi_w = end_w - start_w;
    let mut roi_h = end_h - start_h;
    if !o.aligned {
        roi_w = roi_w.max(1.0);
        roi_h = roi_h.max(1.0);
    }
    let bin_h = roi_h / ph as f32;
    let bin_w = roi_w / pw as f32;
    let (grid_h, grid_w) = if o.sampling_ratio > 0 {
        (o.sampling_ratio, o.sampling_ratio)
    } else {
        (
            (roi_h / ph as f32).ceil() as usize,
            (roi_w / pw as f32).ceil() as usize,
        )
    };
    let count = (grid_h * grid_w).max(1) as f32;
    let mut bins = Vec::with_capacity(ph * pw);
    for py in 0..ph {
        for px in 0..pw {
            let mut taps = Vec::with_capacity(grid_h * grid_w * 4);
            for iy in 0..grid_h {
                let y = start_h + py as f32 * bin_h + (iy as f32 + 0.5) * bin_h / grid_h as f32;
                for ix in 0..grid_w {
                    let x = start_w + px as f32 * bin_w + (ix as f32 + 0.5) * bin_w / grid_w as f32;
                    bilinear_taps(y, x, h, w, base, &mut taps);
                }
            }
            for t in taps.iter_mut() {
                t.1 /= count;
            }
            bins.push(taps);
        }
    }
    Ok(bins)
}

/// Elements of the largest intermediate gather buffer (per chunk of RoIs).
const CHUNK_ELEMENTS: usize = 1 << 24;

/// RoIAlign: pools each region of interest to a fixed `output_size` grid by bilinear sampling.
///
/// # Shapes
/// - `features`: `[N, C, H, W]`
/// - `rois`: `[K, 5]`, each row `(batch_index, x1, y1, x2, y2)` in input-image coordinates
///   (multiplied by `spatial_scale`); boxes may lie partly or wholly outside the image
/// - output: `[K, C, output_h, output_w]`
///
/// # Errors
/// Wrong shapes, a batch index that is not an integer in `0..N`, boxes with `x2 < x1`,
/// `y2 < y1` or non-finite coordinates, a zero output size.
pub fn roi_align<B: Backend>(
    features: Tensor<B, 4>,
    rois: Tensor<B, 2>,
    options: &RoiAlignOptions,
) -> Result<Tensor<B, 4>> {
    let [n, c, h, w] = features.dims();
    let dr = rois.dims();
    ensure_shape(
        dr[1] == 5,
        "roi_align",
        "rois",
        &dr,
        "[K, 5] (batch_index, x1, y1, x2, y2)",
    )?;
    ensure_shape(
        h > 0 && w > 0,
        "roi_align",
        "features",
        &[n, c, h, w],
        "[N, C, H, W] with H, W > 0",
    )?;
    let [ph, pw] = options.output_size;
    if ph == 0 || pw == 0 || !options.spatial_scale.is_finite() {
        return Err(DetError::InvalidOption {
            op: "roi_align",
            why: format!(
                "output_size {:?} and spatial_scale {} must be positive and finite",
                options.output_size, options.spatial_scale
            ),
        });
    }
    let device = features.device();
    let k = dr[0];
    if k == 0 {
        return Ok(Tensor::zeros([0, c, ph, pw], &device));
    }
    let host: Vec<f32> =
        rois.to_data()
            .convert::<f32>()
            .to_vec()
            .map_err(|e| DetError::InvalidOption {
                op: "roi_align",
                why: format!("could not read rois: {e:?}"),
            })?;
    // RoIs are grouped by their number of taps per bin, so a large RoI (many adaptive
    // samples) does not pad the gather of the small ones.
    let mut groups: std::collections::BTreeMap<usize, Vec<RoiTaps>> = Default::default();
    for r in 0..k {
        let bins = roi_taps(r, &host[r * 5..r * 5 + 5], n, h, w, options)?;
        let taps = bins.iter().map(Vec::len).max().unwrap_or(0).max(1);
        groups.entry(taps).or_default().push((r, bins));
    }
    let bins_per_roi = ph * pw;
    let flat = features.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
    let mut chunks = Vec::new();
    let mut order = Vec::with_capacity(k);
    for (s, members) in groups {
        let rois_per_chunk = (CHUNK_ELEMENTS / (bins_per_roi * s * c.max(1))).max(1);
        for chunk in members.chunks(rois_per_chunk) {
            let m = chunk.len() * bins_per_roi * s;
            let mut index = vec![0i64; m];
            let mut weight = vec![0f32; m];
            for (i, bin) in chunk.iter().flat_map(|(_, bins)| bins).enumerate() {
                for (j, &(row, wt)) in bin.iter().enumerate() {
                    index[i * s + j] = row;
                    weight[i * s + j] = wt;
                }
            }
            order.extend(chunk.iter().map(|(r, _)| *r as i64));
            let idx = Tensor::<B, 1, Int>::from_data(TensorData::new(index, [m]), &device);
            let wt = Tensor::<B, 2>::from_data(TensorData::new(weight, [m, 1]), &device);
            let gathered = flat.clone().select(0, idx) * wt; // [m, C]
            let pooled = gathered
                .reshape([chunk.len(), bins_per_roi, s, c])
                .sum_dim(2);
            chunks.push(
                pooled
                    .reshape([chunk.len(), ph, pw, c])
                    .permute([0, 3, 1, 2]),
            );
        }
    }
    let out = if chunks.len() == 1 {
        chunks.pop().expect("one chunk")
    } else {
        Tensor::cat(chunks, 0)
    };
    // Back to the input order of the RoIs.
    if order.iter().enumerate().all(|(i, &r)| i as i64 == r) {
        return Ok(out);
    }
    let mut inverse = vec![0i64; k];
    for (pos, &r) in order.iter().enumerate() {
        inverse[r as usize] = pos as i64;
    }
    Ok(out.select(
        0,
        Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [k]), &device),
    ))
}
