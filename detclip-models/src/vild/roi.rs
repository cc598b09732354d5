use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::DetError;
use detclip_core::ops::{RoiAlignOptions, roi_align};

use super::sampling::HostBox;

/// torchvision's `MultiScaleRoIAlign`: each RoI is pooled from one pyramid level chosen by
/// its size (the `LevelMapper` of FPN's Eq. 1,
/// `k = ⌊k0 + log2(√(wh) / s0) + 1e-6⌋` clamped to the levels present), with RoIAlign
/// (`aligned = false`, a fixed sampling ratio).
#[derive(Config, Debug)]
pub struct MultiScaleRoiAlign {
    /// Output side of each pooled region (7 for boxes, 14 for masks).
    pub output_size: usize,
    /// Samples per bin along each axis (torchvision: 2).
    #[config(default = 2)]
    pub sampling_ratio: usize,
    /// The box side that maps to `canonical_level` (224 = an ImageNet image).
    #[config(default = 224.0)]
    pub canonical_scale: f32,
    /// The level a `canonical_scale` box goes to (4 = P4).
    #[config(default = 4)]
    pub canonical_level: i32,
}

/// `2^round(log2(feature / image))` of one level, torchvision's `_infer_scale`.
fn infer_scale(feature: [usize; 2], image: [usize; 2]) -> detclip_core::Result<f32> {
    let scale = |f: usize, i: usize| 2f32.powf((f as f32 / i as f32).log2().round());
    let (sy, sx) = (scale(feature[0], image[0]), scale(feature[1], image[1]));
    if sy != sx {
        return Err(DetError::InvalidOption {
            op: "MultiScaleRoiAlign",
            why: format!(
                "feature map {feature:?} has different scales on the axes of image {image:?}"
            ),
        });
    }
    Ok(sy)
}

impl MultiScaleRoiAlign {
    /// The pyramid level index (into `levels`, the first being level `k_min`) of a box.
    pub fn level(&self, b: &HostBox, k_min: i32, k_max: i32) -> usize {
        let s = ((b[2] - b[0]) * (b[3] - b[1])).sqrt();
        let k = (self.canonical_level as f32 + (s / self.canonical_scale).log2() + 1e-6).floor();
        let k = if k.is_nan() {
            k_min
        } else {
            (k as i32).clamp(k_min, k_max)
        };
        (k - k_min) as usize
    }

    /// Pools every RoI from its level.
    ///
    /// # Shapes
    /// - `features`: the levels RoIs are pooled from (P2–P5), `[N, C, H_l, W_l]`, each ½ the
    ///   previous
    /// - `rois[i]`: the boxes of image `i` (xyxy, image pixels); `image_size`: `[H, W]` of the
    ///   (padded) batch
    /// - output `[Σ K_i, C, s, s]`, images in order
    ///
    /// # Errors
    /// [`DetError::Shape`] when `rois` has not one entry per image or the levels differ in
    /// channels; the errors of [`roi_align`] for bad boxes.
    pub fn forward<B: Backend>(
        &self,
        features: &[Tensor<B, 4>],
        rois: &[Vec<HostBox>],
        image_size: [usize; 2],
    ) -> detclip_core::Result<Tensor<B, 4>> {
        let Some(first) = features.first() else {
            return Err(DetError::InvalidOption {
                op: "MultiScaleRoiAlign",
                why: "no feature level".into(),
            });
        };
        let [n, c, _, _] = first.dims();
        if rois.len() != n {
            return Err(DetError::Shape {
                op: "MultiScaleRoiAlign",
                what: "rois",
                got: vec![rois.len()],
                expected: format!("{n} lists of boxes (one per image)"),
            });
        }
        let device = first.device();
        let scales = features
            .iter()
            .map(|f| {
                let [_, _, h, w] = f.dims();
                infer_scale([h, w], image_size)
            })
            .collect::<detclip_core::Result<Vec<f32>>>()?;
        let k_min = -scales[0].log2().round() as i32;
        let k_max = -scales[scales.len() - 1].log2().round() as i32;
        let mut per_level: Vec<(Vec<f32>, Vec<i64>)> = vec![Default::default(); features.len()];
        let mut index = 0i64;
        for (i, boxes) in rois.iter().enumerate() {
            for b in boxes {
                let (rows, order) = &mut per_level[self.level(b, k_min, k_max)];
                rows.extend([i as f32, b[0], b[1], b[2], b[3]]);
                order.push(index);
                index += 1;
            }
        }
        let s = self.output_size;
        if index == 0 {
            return Ok(Tensor::zeros([0, c, s, s], &device));
        }
        let mut pooled = Vec::new();
        let mut order = Vec::new();
        for ((f, scale), (rows, ids)) in features.iter().zip(&scales).zip(per_level) {
            if ids.is_empty() {
                continue;
            }
            let options = RoiAlignOptions {
                output_size: [s, s],
                spatial_scale: *scale,
                sampling_ratio: self.sampling_ratio,
                aligned: false,
            };
            let rois = Tensor::<B, 2>::from_data(TensorData::new(rows, [ids.len(), 5]), &device);
            pooled.push(roi_align(f.clone(), rois, &options)?);
            order.extend(ids);
        }
        let out = Tensor::cat(pooled, 0);
        let total = order.len();
        let mut inverse = vec![0i64; total];
        for (pos, &r) in order.iter().enumerate() {
            inverse[r as usize] = pos as i64;
        }
        Ok(out.select(
            0,
            Tensor::<B, 1, Int>::from_data(TensorData::new(inverse, [total]), &device),
        ))
    }
}
