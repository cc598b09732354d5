use crate::layers::linear_rows;
use burn::module::Param;
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::softmax;

/// Window multi-head self-attention with a relative position bias (Swin eq. 4):
/// `softmax(QKᵀ/√d + B (+ M)) V` inside each `ws×ws` window, `B` gathered from a learned
/// `(2ws−1)² × heads` table, `M` the shifted-window mask.
#[derive(Module, Debug)]
pub struct WindowAttention<B: Backend> {
    /// Joint q, k, v projection (`C → 3C`, with bias).
    pub qkv: Linear<B>,
    /// Output projection.
    pub proj: Linear<B>,
    /// Relative position bias table, `[(2ws−1)², heads]`.
    pub relative_position_bias_table: Param<Tensor<B, 2>>,
    #[module(skip)]
    heads: usize,
}

impl<B: Backend> WindowAttention<B> {
    /// Builds the attention over `dim` channels with `heads` heads and window `window`.
    pub fn new(dim: usize, heads: usize, window: usize, device: &B::Device) -> Self {
        let table = (2 * window - 1) * (2 * window - 1);
        Self {
            qkv: LinearConfig::new(dim, 3 * dim).init(device),
            proj: LinearConfig::new(dim, dim).init(device),
            relative_position_bias_table: Param::from_tensor(Tensor::zeros([table, heads], device)),
            heads,
        }
    }

    /// Attention inside windows.
    ///
    /// `index` is [`relative_position_index`] for this window size; `mask` the
    /// [`shifted_window_mask`] for shifted windows.
    ///
    /// # Shapes
    /// - `x`: `[n·windows, ws², C]` (windows of one image consecutive) → same shape
    /// - `index`: `[ws⁴]`; `mask`: `[windows, ws², ws²]`
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        index: Tensor<B, 1, Int>,
        mask: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let [bw, n, c] = x.dims();
        let (h, d) = (self.heads, c / self.heads);
        let qkv = linear_rows(&self.qkv, x)
            .reshape([bw, n, 3, h, d])
            .permute([2, 0, 3, 1, 4]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).reshape([bw, h, n, d]);
        let (q, k, v) = (part(0), part(1), part(2));
        let q = q.mul_scalar((d as f64).powf(-0.5));
        let bias = self
            .relative_position_bias_table
            .val()
            .select(0, index)
            .reshape([n, n, h])
            .permute([2, 0, 1])
            .unsqueeze::<4>();
        let mut attn = q.matmul(k.swap_dims(2, 3)) + bias;
        if let Some(mask) = mask {
            let windows = mask.dims()[0];
            attn = attn
                .reshape([bw / windows, windows, h, n, n])
                .add(mask.unsqueeze_dim::<4>(1).unsqueeze::<5>())
                .reshape([bw, h, n, n]);
        }
        let out = softmax(attn, 3)
            .matmul(v)
            .swap_dims(1, 2)
            .reshape([bw, n, c]);
        linear_rows(&self.proj, out)
    }
}

/// For each pair of positions `(i, j)` of a `ws×ws` window, the row of the bias table holding
/// their relative offset: `(Δy + ws − 1)·(2ws − 1) + (Δx + ws − 1)`.
pub fn relative_position_index<B: Backend>(window: usize, device: &B::Device) -> Tensor<B, 1, Int> {
    let n = window * window;
    let span = 2 * window as i64 - 1;
    let index: Vec<i64> = (0..n * n)
        .map(|ij| {
            let (i, j) = (ij / n, ij % n);
            let dy = (i / window) as i64 - (j / window) as i64 + window as i64 - 1;
            let dx = (i % window) as i64 - (j % window) as i64 + window as i64 - 1;
            dy * span + dx
        })
        .collect();
    Tensor::from_data(TensorData::new(index, [n * n]), device)
}

/// The attention mask of shifted windows over a padded `hp×wp` map (multiples of `window`):
/// after the cyclic shift by `shift`, a window may hold pieces of up to 4 regions that are not
/// neighbours in the image; pairs from different regions get −100 (the official value), others 0.
///
/// # Shapes
/// → `[(hp/ws)·(wp/ws), ws², ws²]`, windows in row-major order.
pub fn shifted_window_mask<B: Backend>(
    hp: usize,
    wp: usize,
    window: usize,
    shift: usize,
    device: &B::Device,
) -> Tensor<B, 3> {
    // The official slices (0, −ws), (−ws, −shift), (−shift, ∞) along each axis.
    let region = |p: usize, size: usize| {
        if p < size - window {
            0
        } else if p < size - shift {
            1
        } else {
            2
        }
    };
    let (nh, nw, n) = (hp / window, wp / window, window * window);
    let mut mask = Vec::with_capacity(nh * nw * n * n);
    for wy in 0..nh {
        for wx in 0..nw {
            let label = |k: usize| {
                let (y, x) = (wy * window + k / window, wx * window + k % window);
                region(y, hp) * 3 + region(x, wp)
            };
            for i in 0..n {
                for j in 0..n {
                    mask.push(if label(i) == label(j) { 0.0f32 } else { -100.0 });
                }
            }
        }
    }
    Tensor::from_data(TensorData::new(mask, [nh * nw, n, n]), device)
}
