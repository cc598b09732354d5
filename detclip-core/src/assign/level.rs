//! One square anchor per location of each pyramid level (ATSS / FCOS heads), and the
//! distance (`ltrb`) box coder those heads regress.

use super::{AnchorGenerator, AnchorLevel};
use burn::prelude::*;
use burn::tensor::TensorData;

/// One square anchor per location of each level (ATSS), on the host and as tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct LevelAnchors {
    /// Every anchor, xyxy, levels concatenated finest first.
    pub boxes: Vec<[f32; 4]>,
    /// Anchors per level.
    pub counts: Vec<usize>,
}

impl LevelAnchors {
    /// Anchors of side `scale · stride` at the centre of every cell, for levels of strides
    /// `8 · 2^l` and the given sizes.
    ///
    /// # Errors
    /// From the anchor generator (no level, bad sizes).
    pub fn new(sizes: &[[usize; 2]], scale: f32) -> crate::Result<Self> {
        let generator = AnchorGenerator {
            levels: (0..sizes.len())
                .map(|l| {
                    let stride = 8.0 * (1u32 << l) as f32;
                    AnchorLevel {
                        stride,
                        sizes: vec![scale * stride],
                    }
                })
                .collect(),
            ratios: vec![1.0],
            center_offset: 0.5,
            round_base: false,
            plus_one: false,
        };
        let levels = generator.grid_anchors_host(sizes)?;
        let counts = levels.iter().map(Vec::len).collect();
        Ok(Self {
            boxes: levels.into_iter().flatten().collect(),
            counts,
        })
    }

    /// The number of anchors.
    pub fn len(&self) -> usize {
        self.boxes.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.boxes.is_empty()
    }

    /// `[A, 2]` centres and `[A, 2]` half-sides (x and y).
    pub fn tensors<B: Backend>(&self, device: &B::Device) -> (Tensor<B, 2>, Tensor<B, 2>) {
        let a = self.boxes.len();
        let centres: Vec<f32> = self
            .boxes
            .iter()
            .flat_map(|b| [(b[0] + b[2]) / 2.0, (b[1] + b[3]) / 2.0])
            .collect();
        let halves: Vec<f32> = self
            .boxes
            .iter()
            .flat_map(|b| [(b[2] - b[0]) / 2.0, (b[3] - b[1]) / 2.0])
            .collect();
        (
            Tensor::from_data(TensorData::new(centres, [a, 2]), device),
            Tensor::from_data(TensorData::new(halves, [a, 2]), device),
        )
    }
}

/// Boxes from raw distances: `(l, t, r, b) = e^raw · half-side` around the anchor centre
/// (raw values clamped to `[−6, 6]`).
///
/// # Shapes
/// - `raw`: `[M, 4]`; `centres`, `halves`: `[M, 2]`; out `[M, 4]` xyxy
pub fn decode_distances<B: Backend>(
    raw: Tensor<B, 2>,
    centres: Tensor<B, 2>,
    halves: Tensor<B, 2>,
) -> Tensor<B, 2> {
    let d = raw.clamp(-6.0, 6.0).exp();
    let lt = d.clone().narrow(1, 0, 2) * halves.clone();
    let rb = d.narrow(1, 2, 2) * halves;
    Tensor::cat(vec![centres.clone() - lt, centres + rb], 1)
}

/// Decodes every anchor of every image.
///
/// # Shapes
/// - `raw`: `[N, A, 4]`; out `[N, A, 4]` xyxy
pub fn decode_distances_batched<B: Backend>(
    raw: Tensor<B, 3>,
    anchors: &LevelAnchors,
) -> Tensor<B, 3> {
    let [n, a, _] = raw.dims();
    let (centres, halves) = anchors.tensors::<B>(&raw.device());
    decode_distances(
        raw.reshape([n * a, 4]),
        centres.repeat_dim(0, n),
        halves.repeat_dim(0, n),
    )
    .reshape([n, a, 4])
}
