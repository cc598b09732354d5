//! Layers shared by SAM's three parts (`segment_anything/modeling/common.py` and the decoder's
//! `MLP`).

use crate::layers::linear_rows;
use burn::module::Param;
use burn::nn::{Initializer, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::{gelu, relu};

/// Configuration of a [`LayerNorm2d`].
#[derive(Config, Debug)]
pub struct LayerNorm2dConfig {
    /// Number of channels.
    pub num_channels: usize,
    /// Added to the variance (SAM: 1e-6).
    #[config(default = 1e-6)]
    pub epsilon: f64,
}

/// LayerNorm over the channel dimension of an NCHW map (ConvNeXt / detectron2's
/// `LayerNorm2d`): every pixel is normalised across its channels. Parameters keep PyTorch's
/// names `weight` / `bias`, as in the checkpoint.
#[derive(Module, Debug)]
pub struct LayerNorm2d<B: Backend> {
    /// Per-channel scale, `[C]`.
    pub weight: Param<Tensor<B, 1>>,
    /// Per-channel shift, `[C]`.
    pub bias: Param<Tensor<B, 1>>,
    #[module(skip)]
    epsilon: f64,
}

impl LayerNorm2dConfig {
    /// Builds the layer (scale 1, shift 0).
    pub fn init<B: Backend>(&self, device: &B::Device) -> LayerNorm2d<B> {
        LayerNorm2d {
            weight: Initializer::Ones.init([self.num_channels], device),
            bias: Initializer::Zeros.init([self.num_channels], device),
            epsilon: self.epsilon,
        }
    }
}

impl<B: Backend> LayerNorm2d<B> {
    /// # Shapes
    /// - `x`: `[N, C, H, W]` → `[N, C, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let c = self.weight.dims()[0];
        let mean = x.clone().mean_dim(1);
        let centred = x - mean;
        let var = centred.clone().square().mean_dim(1);
        let normed = centred / (var + self.epsilon).sqrt();
        normed * self.weight.val().reshape([1, c, 1, 1]) + self.bias.val().reshape([1, c, 1, 1])
    }
}

/// The transformer MLP (`MLPBlock`): `lin2(act(lin1(x)))`, GELU in the image encoder, ReLU in
/// the two-way transformer.
#[derive(Module, Debug)]
pub struct MlpBlock<B: Backend> {
    /// `dim → mlp_dim`.
    pub lin1: Linear<B>,
    /// `mlp_dim → dim`.
    pub lin2: Linear<B>,
    #[module(skip)]
    act: Activation,
}

/// The activation of an [`MlpBlock`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activation {
    /// Exact (erf) GELU, PyTorch's `nn.GELU()`.
    Gelu,
    /// `nn.ReLU()`.
    Relu,
}

impl Activation {
    /// Applies the activation.
    pub fn apply<B: Backend, const D: usize>(self, x: Tensor<B, D>) -> Tensor<B, D> {
        match self {
            Activation::Gelu => gelu(x),
            Activation::Relu => relu(x),
        }
    }
}

impl<B: Backend> MlpBlock<B> {
    /// Builds the block with Burn's default initialisation.
    pub fn new(dim: usize, mlp_dim: usize, act: Activation, device: &B::Device) -> Self {
        Self {
            lin1: LinearConfig::new(dim, mlp_dim).init(device),
            lin2: LinearConfig::new(mlp_dim, dim).init(device),
            act,
        }
    }

    /// # Shapes
    /// - `x`: `[..., dim]` → `[..., dim]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        linear_rows(&self.lin2, self.act.apply(linear_rows(&self.lin1, x)))
    }
}

/// The mask decoder's `MLP` (MaskFormer's): `num_layers` linear layers with ReLU between them
/// and none after the last. Used for the hypernetworks and the IoU head.
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// `input → hidden → … → output`.
    pub layers: Vec<Linear<B>>,
}

impl<B: Backend> Mlp<B> {
    /// Builds `num_layers` (≥ 1) linear layers `input → hidden … hidden → output`.
    pub fn new(
        input: usize,
        hidden: usize,
        output: usize,
        num_layers: usize,
        device: &B::Device,
    ) -> Self {
        let layers = (0..num_layers)
            .map(|i| {
                let d_in = if i == 0 { input } else { hidden };
                let d_out = if i + 1 == num_layers { output } else { hidden };
                LinearConfig::new(d_in, d_out).init(device)
            })
            .collect();
        Self { layers }
    }

    /// # Shapes
    /// - `x`: `[..., input]` → `[..., output]`
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        let last = self.layers.len() - 1;
        self.layers.iter().enumerate().fold(x, |x, (i, layer)| {
            let y = linear_rows(layer, x);
            if i < last { relu(y) } else { y }
        })
    }
}
