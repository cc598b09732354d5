use burn::module::{Initializer, Param};
use burn::nn::LayerNorm;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use detclip_core::DetError;
use detclip_core::nn::conv2d;

use super::block::{BlockSizes, ClipBlock, ClipLayout, Projection};

/// Sizes of CLIP's vision transformer.
#[derive(Config, Debug)]
pub struct ClipVisionConfig {
    /// Training resolution (square); the position embeddings cover `(image_size / patch)²`
    /// patches.
    #[config(default = 224)]
    pub image_size: usize,
    /// Patch size (kernel and stride of the patch convolution).
    #[config(default = 32)]
    pub patch_size: usize,
    /// Token width.
    #[config(default = 768)]
    pub width: usize,
    /// Number of blocks.
    #[config(default = 12)]
    pub layers: usize,
    /// Attention heads.
    #[config(default = 12)]
    pub heads: usize,
    /// MLP width.
    #[config(default = 3072)]
    pub mlp_width: usize,
    /// Width of the joint embedding space.
    #[config(default = 512)]
    pub embed_dim: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Checkpoint layout.
    #[config(default = "ClipLayout::Hf")]
    pub layout: ClipLayout,
}

impl ClipVisionConfig {
    /// Builds the tower with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipVision<B> {
        let sizes = BlockSizes {
            width: self.width,
            heads: self.heads,
            mlp: self.mlp_width,
            eps: self.layer_norm_eps,
            layout: self.layout,
        };
        let grid = self.image_size / self.patch_size;
        let std = (self.width as f64).powf(-0.5);
        let normal = Initializer::Normal { mean: 0.0, std };
        let p = self.patch_size;
        ClipVision {
            patch_embedding: Conv2dConfig::new([3, self.width], [p, p])
                .with_stride([p, p])
                .with_bias(false)
                .init(device),
            class_embedding: normal.init([self.width], device),
            position_embedding: normal.init([grid * grid + 1, self.width], device),
            pre_norm: sizes.norm(device),
            layers: sizes.blocks(self.layers, device),
            post_norm: sizes.norm(device),
            projection: Projection::new(self.width, self.embed_dim, self.layout, device),
            patch_size: p,
            grid,
        }
    }
}

/// CLIP's vision transformer: patch convolution, class token, position embeddings, `ln_pre`,
/// pre-norm blocks, `ln_post` on the class token, projection.
#[derive(Module, Debug)]
pub struct ClipVision<B: Backend> {
    /// Patch convolution, no bias (`conv1`).
    pub patch_embedding: Conv2d<B>,
    /// The class token `[D]`.
    pub class_embedding: Param<Tensor<B, 1>>,
    /// Position embeddings `[1 + g², D]` for the training grid `g × g`.
    pub position_embedding: Param<Tensor<B, 2>>,
    /// `pre_layrnorm` / `ln_pre`.
    pub pre_norm: LayerNorm<B>,
    /// The blocks.
    pub layers: Vec<ClipBlock<B>>,
    /// `post_layernorm` / `ln_post`.
    pub post_norm: LayerNorm<B>,
    /// `visual_projection` / `proj`.
    pub projection: Projection<B>,
    #[module(skip)]
    patch_size: usize,
    #[module(skip)]
    grid: usize,
}

/// What [`ClipVision::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipVisionOutput<B: Backend> {
    /// The image embedding `proj(ln_post(class token))`, `[N, E]` (not normalised).
    pub image_embeds: Tensor<B, 2>,
    /// The last block's patch tokens as a feature map `[N, D, H/p, W/p]` (before `ln_post`).
    pub grid: Tensor<B, 4>,
    /// The last block's class token `[N, D]` (before `ln_post`); with [`Self::grid`] it is
    /// OpenAI's `forward_featuremap` (RegionSpot's keys and values).
    pub class_token: Tensor<B, 2>,
}

impl<B: Backend> ClipVision<B> {
    /// Encodes images. Inputs of another size than the training one get bicubically
    /// interpolated position embeddings (as HF's `interpolate_pos_encoding`).
    ///
    /// # Shapes
    /// - `pixels`: `[N, 3, H, W]`, normalised, `H, W ≥ patch size` (a remainder is cut off)
    ///
    /// # Errors
    /// [`DetError::Shape`] when the input is not `[N, 3, H, W]` with `H, W ≥ patch`.
    pub fn forward(&self, pixels: Tensor<B, 4>) -> detclip_core::Result<ClipVisionOutput<B>> {
        let [n, c, h, w] = pixels.dims();
        let p = self.patch_size;
        if c != 3 || h < p || w < p || n == 0 {
            return Err(DetError::Shape {
                op: "ClipVision",
                what: "pixels",
                got: vec![n, c, h, w],
                expected: format!("[N ≥ 1, 3, H ≥ {p}, W ≥ {p}]"),
            });
        }
        let (gh, gw) = (h / p, w / p);
        let patches = conv2d(&self.patch_embedding, pixels)
            .flatten::<3>(2, 3)
            .swap_dims(1, 2);
        let d = patches.dims()[2];
        let class = self
            .class_embedding
            .val()
            .reshape([1, 1, d])
            .expand([n, 1, d]);
        let tokens = Tensor::cat(vec![class, patches], 1) + self.positions(gh, gw).unsqueeze();
        let mut x = self.pre_norm.forward(tokens);
        for block in &self.layers {
            x = block.forward(x, None);
        }
        let class = x.clone().slice(s![.., 0..1, ..]).reshape([n, d]);
        let grid = x
            .slice(s![.., 1.., ..])
            .swap_dims(1, 2)
            .reshape([n, d, gh, gw]);
        Ok(ClipVisionOutput {
            image_embeds: self
                .projection
                .forward(self.post_norm.forward(class.clone())),
            grid,
            class_token: class,
        })
    }

    /// Projects every token of a [`ClipVisionOutput::grid`] into the joint space the way the
    /// class token is (`proj(ln_post(·))`): `[N, D, h, w]` → `[N, E, h, w]` (dense CLIP
    /// features, as RegionSpot and MaskCLIP-style methods read them).
    pub fn project_grid(&self, grid: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, d, h, w] = grid.dims();
        let tokens = grid.reshape([n, d, h * w]).swap_dims(1, 2);
        let projected = self.projection.forward(self.post_norm.forward(tokens));
        let e = projected.dims()[2];
        projected.swap_dims(1, 2).reshape([n, e, h, w])
    }

    /// Position embeddings `[1 + gh·gw, D]` for a `gh × gw` patch grid: the stored ones when
    /// it is the training grid, else the patch part resized bicubically as HF and OpenCLIP do
    /// (`F.interpolate(mode="bicubic", align_corners=False)`).
    ///
    /// The resize is written as two matrix products with PyTorch's bicubic weights
    /// ([`bicubic_weights`]) rather than Burn's `interpolate`, whose bicubic backward is
    /// missing on some backends (ndarray panics): this way the position embeddings can be
    /// fine-tuned at any resolution on every backend.
    pub fn positions(&self, gh: usize, gw: usize) -> Tensor<B, 2> {
        let pos = self.position_embedding.val();
        if (gh, gw) == (self.grid, self.grid) {
            return pos;
        }
        let [_, d] = pos.dims();
        let g = self.grid;
        let device = pos.device();
        let class = pos.clone().slice(s![0..1, ..]);
        let weights = |out: usize| {
            Tensor::<B, 2>::from_data(TensorData::new(bicubic_weights(out, g), [out, g]), &device)
        };
        // Rows: [gh, g] · [g, g·D]; then columns: [gh, gw, g] · [gh, g, D].
        let rows = weights(gh)
            .matmul(pos.slice(s![1.., ..]).reshape([g, g * d]))
            .reshape([gh, g, d]);
        let resized = weights(gw)
            .unsqueeze::<3>()
            .expand([gh, gw, g])
            .matmul(rows)
            .reshape([gh * gw, d]);
        Tensor::cat(vec![class, resized], 0)
    }

    /// The patch size.
    pub fn patch_size(&self) -> usize {
        self.patch_size
    }
}

/// PyTorch's bicubic resampling weights from `input` to `output` samples along one axis
/// (`align_corners=False`, no antialiasing), row-major `[output, input]`: output `i` reads
/// source position `(i + ½)·input/output − ½` with the cubic convolution kernel of
/// a = −0.75 on its four neighbours, indices clamped to the border.
pub fn bicubic_weights(output: usize, input: usize) -> Vec<f32> {
    const A: f64 = -0.75;
    let near = |x: f64| ((A + 2.0) * x - (A + 3.0)) * x * x + 1.0;
    let far = |x: f64| ((A * x - 5.0 * A) * x + 8.0 * A) * x - 4.0 * A;
    let scale = input as f64 / output as f64;
    let mut w = vec![0.0f32; output * input];
    for i in 0..output {
        let src = (i as f64 + 0.5) * scale - 0.5;
        let base = src.floor();
        let t = src - base;
        let taps = [far(t + 1.0), near(t), near(1.0 - t), far(2.0 - t)];
        for (k, tap) in taps.iter().enumerate() {
            let j = (base as i64 - 1 + k as i64).clamp(0, input as i64 - 1) as usize;
            w[i * input + j] += *tap as f32;
        }
    }
    w
}
