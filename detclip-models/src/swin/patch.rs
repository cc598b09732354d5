use crate::layers::linear_rows;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::ops::PadMode;
use detclip_core::nn::conv2d;

/// Patch embedding: a `p×p` stride-`p` conv, then LayerNorm over channels. The image is padded
/// at the right and bottom to a multiple of `p` first.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// The patch projection.
    pub proj: Conv2d<B>,
    /// Norm over the embedding (`patch_norm`).
    pub norm: LayerNorm<B>,
}

impl<B: Backend> PatchEmbed<B> {
    /// Builds the embedding of `in_channels` images into `dim` channels with patch size `patch`.
    pub fn new(in_channels: usize, dim: usize, patch: usize, device: &B::Device) -> Self {
        Self {
            proj: Conv2dConfig::new([in_channels, dim], [patch, patch])
                .with_stride([patch, patch])
                .init(device),
            norm: LayerNormConfig::new(dim).init(device),
        }
    }

    /// # Shapes
    /// `[n, c, h, w]` → `[n, ⌈h/p⌉, ⌈w/p⌉, dim]` (channels last)
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let p = self.proj.weight.dims()[2];
        let [_, _, h, w] = x.dims();
        let x = x.pad(
            [
                (0, h.next_multiple_of(p) - h),
                (0, w.next_multiple_of(p) - w),
            ],
            PadMode::Constant(0.0),
        );
        self.norm
            .forward(conv2d(&self.proj, x).permute([0, 2, 3, 1]))
    }
}

/// Patch merging: each 2×2 neighbourhood is concatenated (`[x(0,0), x(1,0), x(0,1), x(1,1)]`
/// as (row, column) offsets, the official order), normalised and linearly reduced from `4C` to
/// `2C` channels. Odd sizes are padded at the right and bottom.
#[derive(Module, Debug)]
pub struct PatchMerging<B: Backend> {
    /// Norm over the `4C` concatenation.
    pub norm: LayerNorm<B>,
    /// `4C → 2C`, no bias.
    pub reduction: Linear<B>,
}

impl<B: Backend> PatchMerging<B> {
    /// Builds the merging of a `dim`-channel map.
    pub fn new(dim: usize, device: &B::Device) -> Self {
        Self {
            norm: LayerNormConfig::new(4 * dim).init(device),
            reduction: LinearConfig::new(4 * dim, 2 * dim)
                .with_bias(false)
                .init(device),
        }
    }

    /// # Shapes
    /// `[n, h, w, C]` → `[n, ⌈h/2⌉, ⌈w/2⌉, 2C]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        let x = x.pad([(0, h % 2), (0, w % 2), (0, 0)], PadMode::Constant(0.0));
        let (h2, w2) = (h.div_ceil(2), w.div_ceil(2));
        // [n, h2, dh, w2, dw, C] → [n, h2, w2, dw, dh, C]: channel block index dw·2 + dh.
        let x = x
            .reshape([n, h2, 2, w2, 2, c])
            .permute([0, 1, 3, 4, 2, 5])
            .reshape([n, h2, w2, 4 * c]);
        linear_rows(&self.reduction, self.norm.forward(x))
    }
}
