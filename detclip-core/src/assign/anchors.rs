//! Anchor generation per feature-pyramid level.
//!
//! Follows mmdetection's `AnchorGenerator` (base anchors centred at `center_offset · stride`,
//! ratio-major order, shifted by `stride` per cell, cell-major output) and, with
//! [`AnchorGenerator::torchvision`], torchvision's `AnchorGenerator` (base anchors rounded to
//! integers and centred on the cell's top-left corner).

use burn::prelude::*;
use burn::tensor::TensorData;

use crate::error::{DetError, Result};

/// One level of anchors.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnchorLevel {
    /// Feature stride of the level in pixels.
    pub stride: f32,
    /// Base anchor sizes (the side of the square anchor for ratio 1) at this level.
    pub sizes: Vec<f32>,
}

/// Generates anchors for every cell of every pyramid level.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AnchorGenerator {
    /// The levels, finest first.
    pub levels: Vec<AnchorLevel>,
    /// Aspect ratios `h / w`.
    pub ratios: Vec<f32>,
    /// Anchor centre within a cell, as a fraction of the stride (mmdetection: 0).
    pub center_offset: f32,
    /// Round base anchors to integers (torchvision).
    pub round_base: bool,
    /// maskrcnn-benchmark's (and Detectron's) integer-pixel convention, which GLIP's released
    /// models were trained with: a box spans `x2 − x1 + 1` pixels, base anchors are built
    /// around the window `(0, 0, s − 1, s − 1)` by `generate_anchors` (centre `(s − 1) / 2`,
    /// sides rounded per ratio) and `center_offset` is ignored.
    #[serde(default)]
    pub plus_one: bool,
}

impl AnchorGenerator {
    /// ATSS / GLIP / DetCLIPv2: one square anchor of size `octave_base_scale · stride` per cell
    /// on P3–P7 (strides 8…128), `octave_base_scale = 8`.
    pub fn atss() -> Self {
        let strides = [8.0f32, 16.0, 32.0, 64.0, 128.0];
        Self {
            levels: strides
                .iter()
                .map(|&s| AnchorLevel {
                    stride: s,
                    sizes: vec![8.0 * s],
                })
                .collect(),
            ratios: vec![1.0],
            center_offset: 0.0,
            round_base: false,
            plus_one: false,
        }
    }

    /// GLIP's released anchors (maskrcnn-benchmark `make_anchor_generator_complex` with
    /// `ANCHOR_SIZES = scale·(8, 16, 32, 64, 128)`, one ratio and one scale per octave): as
    /// [`atss`](Self::atss) with sides `scale · stride` in the `plus_one` convention.
    pub fn glip(scale: f32) -> Self {
        let mut a = Self::atss();
        for l in &mut a.levels {
            l.sizes = vec![scale * l.stride];
        }
        a.plus_one = true;
        a
    }

    /// torchvision's `AnchorGenerator(sizes, aspect_ratios)` for the given strides.
    pub fn torchvision(strides: &[f32], sizes: &[Vec<f32>], ratios: &[f32]) -> Self {
        Self {
            levels: strides
                .iter()
                .zip(sizes)
                .map(|(&stride, s)| AnchorLevel {
                    stride,
                    sizes: s.clone(),
                })
                .collect(),
            ratios: ratios.to_vec(),
            center_offset: 0.0,
            round_base: true,
            plus_one: false,
        }
    }

    /// Anchors per cell.
    pub fn anchors_per_cell(&self, level: usize) -> usize {
        self.ratios.len() * self.levels[level].sizes.len()
    }

    /// Base anchors of one level, xyxy, centred on the level's first cell.
    pub fn base_anchors(&self, level: usize) -> Vec<[f32; 4]> {
        if self.plus_one {
            return self.base_anchors_plus_one(level);
        }
        let lv = &self.levels[level];
        let c = self.center_offset * lv.stride;
        let mut out = Vec::new();
        for &r in &self.ratios {
            let h_ratio = r.sqrt();
            let w_ratio = 1.0 / h_ratio;
            for &s in &lv.sizes {
                let (ws, hs) = (w_ratio * s, h_ratio * s);
                let mut a = [c - 0.5 * ws, c - 0.5 * hs, c + 0.5 * ws, c + 0.5 * hs];
                if self.round_base {
                    // torchvision: stack([-ws, -hs, ws, hs]) / 2, then round half to even.
                    a = [
                        (-ws / 2.0).round_ties_even(),
                        (-hs / 2.0).round_ties_even(),
                        (ws / 2.0).round_ties_even(),
                        (hs / 2.0).round_ties_even(),
                    ];
                }
                out.push(a);
            }
        }
        out
    }

    /// maskrcnn-benchmark's `generate_anchors(stride, sizes, ratios)`: ratio-major, in f64
    /// with numpy's rounding (half to even) of the ratio sides, then cast to f32.
    fn base_anchors_plus_one(&self, level: usize) -> Vec<[f32; 4]> {
        let lv = &self.levels[level];
        let s = lv.stride as f64;
        let ctr = 0.5 * (s - 1.0);
        let mut out = Vec::new();
        for &r in &self.ratios {
            let r = r as f64;
            let ws = (s * s / r).sqrt().round_ties_even();
            let hs = (ws * r).round_ties_even();
            for &size in &lv.sizes {
                let scale = size as f64 / s;
                let (w, h) = (ws * scale, hs * scale);
                out.push([
                    (ctr - 0.5 * (w - 1.0)) as f32,
                    (ctr - 0.5 * (h - 1.0)) as f32,
                    (ctr + 0.5 * (w - 1.0)) as f32,
                    (ctr + 0.5 * (h - 1.0)) as f32,
                ]);
            }
        }
        out
    }

    /// Anchors of every level on the host: for each level, `H·W·A` boxes (cell-major, row by
    /// row), xyxy.
    pub fn grid_anchors_host(&self, sizes: &[[usize; 2]]) -> Result<Vec<Vec<[f32; 4]>>> {
        if sizes.len() != self.levels.len() {
            return Err(DetError::InvalidOption {
                op: "AnchorGenerator",
                why: format!(
                    "{} feature maps given for {} anchor levels",
                    sizes.len(),
                    self.levels.len()
                ),
            });
        }
        Ok((0..self.levels.len())
            .map(|l| {
                let [h, w] = sizes[l];
                let stride = self.levels[l].stride;
                let base = self.base_anchors(l);
                let mut out = Vec::with_capacity(h * w * base.len());
                for y in 0..h {
                    for x in 0..w {
                        let (sx, sy) = (x as f32 * stride, y as f32 * stride);
                        for b in &base {
                            out.push([b[0] + sx, b[1] + sy, b[2] + sx, b[3] + sy]);
                        }
                    }
                }
                out
            })
            .collect())
    }

    /// Anchors of all levels concatenated, `[Σ H·W·A, 4]`, and the count per level (what
    /// [`atss_assign`](crate::assign::atss_assign) takes).
    pub fn grid_anchors<B: Backend>(
        &self,
        sizes: &[[usize; 2]],
        device: &B::Device,
    ) -> Result<(Tensor<B, 2>, Vec<usize>)> {
        let levels = self.grid_anchors_host(sizes)?;
        let counts: Vec<usize> = levels.iter().map(Vec::len).collect();
        let flat: Vec<f32> = levels.into_iter().flatten().flatten().collect();
        let n = flat.len() / 4;
        Ok((
            Tensor::from_data(TensorData::new(flat, [n, 4]), device),
            counts,
        ))
    }
}
