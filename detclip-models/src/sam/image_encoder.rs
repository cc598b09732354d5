//! SAM's image encoder: a plain ViT (ViTDet-style) with windowed attention in most blocks,
//! global attention in a few, decomposed relative positions (MViTv2), and a conv neck to
//! `out_chans` (`segment_anything/modeling/image_encoder.py`).

use crate::layers::linear_rows;
use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNorm, LayerNormConfig, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::softmax;
use burn::tensor::ops::PadMode;
use detclip_core::DetError;
use detclip_core::nn::conv2d;

use super::common::{Activation, LayerNorm2d, LayerNorm2dConfig, MlpBlock};

/// Configuration of an [`ImageEncoderViT`]; the official ones are [`Self::vit_b`],
/// [`Self::vit_l`] and [`Self::vit_h`].
#[derive(Config, Debug)]
pub struct ImageEncoderViTConfig {
    /// Side of the (square, padded) input image.
    #[config(default = 1024)]
    pub img_size: usize,
    /// Side of a patch (the patch-embedding conv's kernel and stride).
    #[config(default = 16)]
    pub patch_size: usize,
    /// Input channels.
    #[config(default = 3)]
    pub in_chans: usize,
    /// Token width.
    #[config(default = 768)]
    pub embed_dim: usize,
    /// Number of transformer blocks.
    #[config(default = 12)]
    pub depth: usize,
    /// Attention heads per block.
    #[config(default = 12)]
    pub num_heads: usize,
    /// MLP hidden width over `embed_dim`.
    #[config(default = 4.0)]
    pub mlp_ratio: f64,
    /// Channels of the output embedding (the neck's width; the prompt embedding width).
    #[config(default = 256)]
    pub out_chans: usize,
    /// Window side of windowed-attention blocks (0: every block global).
    #[config(default = 14)]
    pub window_size: usize,
    /// Blocks that attend globally instead of in windows.
    #[config(default = "vec![2, 5, 8, 11]")]
    pub global_attn_indexes: Vec<usize>,
    /// Epsilon of the blocks' LayerNorms.
    #[config(default = 1e-6)]
    pub layer_norm_eps: f64,
}

impl ImageEncoderViTConfig {
    /// SAM ViT-B: width 768, 12 blocks, 12 heads, global attention at 2, 5, 8, 11.
    pub fn vit_b() -> Self {
        Self::new()
    }

    /// SAM ViT-L: width 1024, 24 blocks, 16 heads, global attention at 5, 11, 17, 23.
    pub fn vit_l() -> Self {
        Self::new()
            .with_embed_dim(1024)
            .with_depth(24)
            .with_num_heads(16)
            .with_global_attn_indexes(vec![5, 11, 17, 23])
    }

    /// SAM ViT-H: width 1280, 32 blocks, 16 heads, global attention at 7, 15, 23, 31.
    pub fn vit_h() -> Self {
        Self::new()
            .with_embed_dim(1280)
            .with_depth(32)
            .with_num_heads(16)
            .with_global_attn_indexes(vec![7, 15, 23, 31])
    }

    /// Side of the token grid (and of the output embedding): `img_size / patch_size`.
    pub fn grid_size(&self) -> usize {
        self.img_size / self.patch_size
    }

    /// Builds the encoder with Burn's default initialisation (load a checkpoint for weights).
    pub fn init<B: Backend>(&self, device: &B::Device) -> ImageEncoderViT<B> {
        let grid = self.grid_size();
        let head_dim = self.embed_dim / self.num_heads;
        let blocks = (0..self.depth)
            .map(|i| {
                let window = if self.global_attn_indexes.contains(&i) {
                    0
                } else {
                    self.window_size
                };
                let attn_side = if window == 0 { grid } else { window };
                EncoderBlock {
                    norm1: self.layer_norm(device),
                    attn: EncoderAttention {
                        qkv: LinearConfig::new(self.embed_dim, 3 * self.embed_dim).init(device),
                        proj: LinearConfig::new(self.embed_dim, self.embed_dim).init(device),
                        rel_pos_h: Initializer::Zeros.init([2 * attn_side - 1, head_dim], device),
                        rel_pos_w: Initializer::Zeros.init([2 * attn_side - 1, head_dim], device),
                        num_heads: self.num_heads,
                    },
                    norm2: self.layer_norm(device),
                    mlp: MlpBlock::new(
                        self.embed_dim,
                        (self.embed_dim as f64 * self.mlp_ratio) as usize,
                        Activation::Gelu,
                        device,
                    ),
                    window_size: window,
                }
            })
            .collect();
        let p = self.patch_size;
        let c = self.out_chans;
        ImageEncoderViT {
            patch_embed: PatchEmbed {
                proj: Conv2dConfig::new([self.in_chans, self.embed_dim], [p, p])
                    .with_stride([p, p])
                    .init(device),
            },
            pos_embed: Initializer::Zeros.init([1, grid, grid, self.embed_dim], device),
            blocks,
            neck: Neck {
                conv1: Conv2dConfig::new([self.embed_dim, c], [1, 1])
                    .with_bias(false)
                    .init(device),
                norm1: LayerNorm2dConfig::new(c).init(device),
                conv2: Conv2dConfig::new([c, c], [3, 3])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(false)
                    .init(device),
                norm2: LayerNorm2dConfig::new(c).init(device),
            },
            img_size: self.img_size,
            in_chans: self.in_chans,
        }
    }

    fn layer_norm<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNormConfig::new(self.embed_dim)
            .with_epsilon(self.layer_norm_eps)
            .init(device)
    }
}

/// SAM's ViT image encoder (`ImageEncoderViT`).
#[derive(Module, Debug)]
pub struct ImageEncoderViT<B: Backend> {
    /// Non-overlapping patch projection.
    pub patch_embed: PatchEmbed<B>,
    /// Absolute position embedding, `[1, grid, grid, embed_dim]` (channels last).
    pub pos_embed: Param<Tensor<B, 4>>,
    /// The transformer blocks.
    pub blocks: Vec<EncoderBlock<B>>,
    /// 1×1 conv, LayerNorm2d, 3×3 conv, LayerNorm2d.
    pub neck: Neck<B>,
    #[module(skip)]
    img_size: usize,
    #[module(skip)]
    in_chans: usize,
}

impl<B: Backend> ImageEncoderViT<B> {
    /// The side of the square input this encoder takes.
    pub fn img_size(&self) -> usize {
        self.img_size
    }

    /// Encodes preprocessed images (see [`super::preprocess`]).
    ///
    /// # Shapes
    /// - `x`: `[N, in_chans, img_size, img_size]` → `[N, out_chans, grid, grid]`
    ///
    /// # Errors
    /// [`DetError::Shape`] when the image is not `[N, in_chans, img_size, img_size]` (the
    /// absolute position embedding fixes the size).
    pub fn forward(&self, x: Tensor<B, 4>) -> Result<Tensor<B, 4>, DetError> {
        let dims = x.dims();
        if dims[1] != self.in_chans || dims[2] != self.img_size || dims[3] != self.img_size {
            return Err(DetError::Shape {
                op: "sam image encoder",
                what: "image",
                got: dims.to_vec(),
                expected: format!(
                    "[N, {}, {s}, {s}] (preprocess pads to the input size)",
                    self.in_chans,
                    s = self.img_size
                ),
            });
        }
        let x = self.patch_embed.forward(x) + self.pos_embed.val();
        let x = self.blocks.iter().fold(x, |x, block| block.forward(x));
        Ok(self.neck.forward(x.permute([0, 3, 1, 2])))
    }
}

/// Patch embedding: a conv with kernel = stride = patch size, output channels last.
#[derive(Module, Debug)]
pub struct PatchEmbed<B: Backend> {
    /// The projection.
    pub proj: Conv2d<B>,
}

impl<B: Backend> PatchEmbed<B> {
    /// # Shapes
    /// - `x`: `[N, C, H, W]` → `[N, H/p, W/p, embed_dim]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        conv2d(&self.proj, x).permute([0, 2, 3, 1])
    }
}

/// The neck from `embed_dim` to `out_chans` (`neck.0`…`neck.3` in the checkpoint).
#[derive(Module, Debug)]
pub struct Neck<B: Backend> {
    /// 1×1 conv, no bias (`neck.0`).
    pub conv1: Conv2d<B>,
    /// `neck.1`.
    pub norm1: LayerNorm2d<B>,
    /// 3×3 conv, padding 1, no bias (`neck.2`).
    pub conv2: Conv2d<B>,
    /// `neck.3`.
    pub norm2: LayerNorm2d<B>,
}

impl<B: Backend> Neck<B> {
    /// # Shapes
    /// - `x`: `[N, embed_dim, h, w]` → `[N, out_chans, h, w]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = self.norm1.forward(conv2d(&self.conv1, x));
        self.norm2.forward(conv2d(&self.conv2, x))
    }
}

/// A pre-norm ViT block whose attention runs in `window_size` windows (zero-padded to a
/// multiple of the window) or, with `window_size == 0`, over the whole grid.
#[derive(Module, Debug)]
pub struct EncoderBlock<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// Attention with decomposed relative positions.
    pub attn: EncoderAttention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// GELU MLP.
    pub mlp: MlpBlock<B>,
    #[module(skip)]
    window_size: usize,
}

impl<B: Backend> EncoderBlock<B> {
    /// The window side (0: global attention).
    pub fn window_size(&self) -> usize {
        self.window_size
    }

    /// # Shapes
    /// - `x`: `[N, H, W, C]` → `[N, H, W, C]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, h, w, _] = x.dims();
        let y = self.norm1.forward(x.clone());
        let y = if self.window_size > 0 {
            let (windows, padded) = window_partition(y, self.window_size);
            window_unpartition(self.attn.forward(windows), self.window_size, padded, [h, w])
        } else {
            self.attn.forward(y)
        };
        let x = x + y;
        x.clone() + self.mlp.forward(self.norm2.forward(x))
    }
}

/// Multi-head self-attention over a `[N, H, W, C]` grid with decomposed relative position
/// embeddings added to the logits (MViTv2, Li et al. 2022, eq. 4).
#[derive(Module, Debug)]
pub struct EncoderAttention<B: Backend> {
    /// Joint q/k/v projection.
    pub qkv: Linear<B>,
    /// Output projection.
    pub proj: Linear<B>,
    /// Relative position table along height, `[2·H − 1, head_dim]`.
    pub rel_pos_h: Param<Tensor<B, 2>>,
    /// Relative position table along width, `[2·W − 1, head_dim]`.
    pub rel_pos_w: Param<Tensor<B, 2>>,
    #[module(skip)]
    num_heads: usize,
}

impl<B: Backend> EncoderAttention<B> {
    /// # Shapes
    /// - `x`: `[N, H, W, C]` → `[N, H, W, C]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        let heads = self.num_heads;
        let hd = c / heads;
        let qkv = linear_rows(&self.qkv, x)
            .reshape([n, h * w, 3, heads, hd])
            .permute([2, 0, 3, 1, 4])
            .reshape([3, n * heads, h * w, hd]);
        let part = |i: usize| qkv.clone().narrow(0, i, 1).squeeze_dim::<3>(0);
        let (q, k, v) = (part(0), part(1), part(2));
        let scale = (hd as f64).powf(-0.5);
        let attn = q.clone().mul_scalar(scale).matmul(k.swap_dims(1, 2));
        let attn = add_decomposed_rel_pos(
            attn,
            q,
            self.rel_pos_h.val(),
            self.rel_pos_w.val(),
            [h, w],
            [h, w],
        );
        let out = softmax(attn, 2)
            .matmul(v)
            .reshape([n, heads, h, w, hd])
            .permute([0, 2, 3, 1, 4])
            .reshape([n, h, w, c]);
        linear_rows(&self.proj, out)
    }
}

/// Splits `[N, H, W, C]` into `window`-sided windows, zero-padding H and W up to a multiple of
/// the window; returns the windows `[N·nH·nW, window, window, C]` and the padded `[Hp, Wp]`.
pub fn window_partition<B: Backend>(x: Tensor<B, 4>, window: usize) -> (Tensor<B, 4>, [usize; 2]) {
    let [n, h, w, c] = x.dims();
    let pad_h = (window - h % window) % window;
    let pad_w = (window - w % window) % window;
    let x = if pad_h > 0 || pad_w > 0 {
        x.pad([(0, pad_h), (0, pad_w), (0, 0)], PadMode::Constant(0.0))
    } else {
        x
    };
    let (hp, wp) = (h + pad_h, w + pad_w);
    let windows = x
        .reshape([n, hp / window, window, wp / window, window, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([n * (hp / window) * (wp / window), window, window, c]);
    (windows, [hp, wp])
}

/// Inverse of [`window_partition`]: reassembles the windows into `[N, Hp, Wp, C]` and crops
/// the padding to `[N, H, W, C]`.
pub fn window_unpartition<B: Backend>(
    windows: Tensor<B, 4>,
    window: usize,
    padded: [usize; 2],
    size: [usize; 2],
) -> Tensor<B, 4> {
    let [hp, wp] = padded;
    let [h, w] = size;
    let c = windows.dims()[3];
    let n = windows.dims()[0] / ((hp / window) * (wp / window));
    let x = windows
        .reshape([n, hp / window, wp / window, window, window, c])
        .permute([0, 1, 3, 2, 4, 5])
        .reshape([n, hp, wp, c]);
    if hp > h || wp > w {
        x.slice([0..n, 0..h, 0..w, 0..c])
    } else {
        x
    }
}

/// The relative position embeddings between every query and key position along one axis
/// (`get_rel_pos`): `[q_size, k_size, C]`. A table whose length is not `2·max(q, k) − 1` is
/// first resized along its length by linear interpolation (PyTorch's
/// `F.interpolate(mode="linear", align_corners=False)`); unequal `q_size`/`k_size` scale the
/// shorter side's coordinates as the reference does.
pub fn get_rel_pos<B: Backend>(
    q_size: usize,
    k_size: usize,
    rel_pos: Tensor<B, 2>,
) -> Tensor<B, 3> {
    let [len, c] = rel_pos.dims();
    let max_rel_dist = 2 * q_size.max(k_size) - 1;
    let device = rel_pos.device();
    let table = if len == max_rel_dist {
        rel_pos
    } else {
        let weights = linear_resize_weights(len, max_rel_dist);
        Tensor::<B, 2>::from_data(TensorData::new(weights, [max_rel_dist, len]), &device)
            .matmul(rel_pos)
    };
    let index = relative_indices(q_size, k_size);
    table
        .select(
            0,
            Tensor::from_data(TensorData::new(index, [q_size * k_size]), &device),
        )
        .reshape([q_size, k_size, c])
}

/// Row-major `[q_size · k_size]` indices into the resized table, computed in f32 exactly as the
/// reference does (its coordinates are float32 tensors truncated with `.long()`).
fn relative_indices(q_size: usize, k_size: usize) -> Vec<i64> {
    let q_scale = (k_size as f64 / q_size as f64).max(1.0) as f32;
    let k_scale = (q_size as f64 / k_size as f64).max(1.0);
    let offset = ((k_size - 1) as f64 * k_scale) as f32;
    let k_scale = k_scale as f32;
    (0..q_size)
        .flat_map(|i| {
            (0..k_size).map(move |j| ((i as f32 * q_scale - j as f32 * k_scale) + offset) as i64)
        })
        .collect()
}

/// The `[out, in]` matrix of 1-D linear interpolation from `input` to `output` samples with
/// half-pixel centres (`align_corners=False`), in f32 as PyTorch computes it.
fn linear_resize_weights(input: usize, output: usize) -> Vec<f32> {
    let scale = input as f32 / output as f32;
    let mut weights = vec![0.0f32; output * input];
    for o in 0..output {
        let src = ((o as f32 + 0.5) * scale - 0.5).max(0.0);
        let i0 = (src as usize).min(input - 1);
        let i1 = if i0 < input - 1 { i0 + 1 } else { i0 };
        let l1 = src - i0 as f32;
        weights[o * input + i0] += 1.0 - l1;
        weights[o * input + i1] += l1;
    }
    weights
}

/// Adds the decomposed relative position terms to attention logits (`add_decomposed_rel_pos`):
/// `attn[b, (qh, qw), (kh, kw)] += q[b, qh, qw] · Rh[qh, kh] + q[b, qh, qw] · Rw[qw, kw]`.
///
/// # Shapes
/// - `attn`: `[B, qh·qw, kh·kw]`; `q`: `[B, qh·qw, C]`; `rel_pos_h`/`rel_pos_w`: `[L, C]`
pub fn add_decomposed_rel_pos<B: Backend>(
    attn: Tensor<B, 3>,
    q: Tensor<B, 3>,
    rel_pos_h: Tensor<B, 2>,
    rel_pos_w: Tensor<B, 2>,
    q_size: [usize; 2],
    k_size: [usize; 2],
) -> Tensor<B, 3> {
    let [qh, qw] = q_size;
    let [kh, kw] = k_size;
    let rh = get_rel_pos(qh, kh, rel_pos_h); // [qh, kh, C]
    let rw = get_rel_pos(qw, kw, rel_pos_w); // [qw, kw, C]
    let [b, _, c] = q.dims();
    let r_q = q.reshape([b, qh, qw, c]);
    // einsum("bhwc,hkc->bhwk"): a batched matmul over the query row.
    let rel_h = r_q
        .clone()
        .permute([1, 0, 2, 3])
        .reshape([qh, b * qw, c])
        .matmul(rh.swap_dims(1, 2))
        .reshape([qh, b, qw, kh])
        .permute([1, 0, 2, 3]);
    // einsum("bhwc,wkc->bhwk"): a batched matmul over the query column.
    let rel_w = r_q
        .permute([2, 0, 1, 3])
        .reshape([qw, b * qh, c])
        .matmul(rw.swap_dims(1, 2))
        .reshape([qw, b, qh, kw])
        .permute([1, 2, 0, 3]);
    (attn.reshape([b, qh, qw, kh, kw]) + rel_h.unsqueeze_dim::<5>(4) + rel_w.unsqueeze_dim::<5>(3))
        .reshape([b, qh * qw, kh * kw])
}
