use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use detclip_core::nn::conv2d;

use crate::layers::{NormMode, batch_norm};

/// The bottleneck block: 1×1 → 3×3 (stride here, torchvision's v1.5) → 1×1 (×4 channels),
/// plus the identity or a projection shortcut.
#[derive(Config, Debug)]
pub struct BottleneckConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Width of the 1×1 and 3×3 convs; the block outputs `4 × planes` channels.
    pub planes: usize,
    /// Stride of the 3×3 conv and of the projection shortcut.
    #[config(default = 1)]
    pub stride: usize,
}

/// torchvision's `downsample`: a strided 1×1 conv and a norm (`downsample.0`, `downsample.1`
/// in the official layout).
#[derive(Module, Debug)]
pub struct Downsample<B: Backend> {
    /// 1×1 projection conv, no bias.
    pub conv: Conv2d<B>,
    /// Its norm.
    pub bn: BatchNorm<B>,
}

/// A ResNet bottleneck block (see [`BottleneckConfig`]).
#[derive(Module, Debug)]
pub struct Bottleneck<B: Backend> {
    /// 1×1 reduction.
    pub conv1: Conv2d<B>,
    /// Norm after `conv1`.
    pub bn1: BatchNorm<B>,
    /// 3×3 conv, carries the stride.
    pub conv2: Conv2d<B>,
    /// Norm after `conv2`.
    pub bn2: BatchNorm<B>,
    /// 1×1 expansion to `4 × planes`.
    pub conv3: Conv2d<B>,
    /// Norm after `conv3`.
    pub bn3: BatchNorm<B>,
    /// Projection shortcut when the shape changes.
    pub downsample: Option<Downsample<B>>,
}

/// Channel expansion of the bottleneck's last conv.
pub const EXPANSION: usize = 4;

fn conv<B: Backend>(
    c_in: usize,
    c_out: usize,
    k: usize,
    stride: usize,
    device: &B::Device,
) -> Conv2d<B> {
    Conv2dConfig::new([c_in, c_out], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(k / 2, k / 2, k / 2, k / 2))
        .with_bias(false)
        .init(device)
}

impl BottleneckConfig {
    /// Builds the block.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Bottleneck<B> {
        let (p, out) = (self.planes, self.planes * EXPANSION);
        let downsample = (self.stride != 1 || self.in_channels != out).then(|| Downsample {
            conv: conv(self.in_channels, out, 1, self.stride, device),
            bn: BatchNormConfig::new(out).init(device),
        });
        Bottleneck {
            conv1: conv(self.in_channels, p, 1, 1, device),
            bn1: BatchNormConfig::new(p).init(device),
            conv2: conv(p, p, 3, self.stride, device),
            bn2: BatchNormConfig::new(p).init(device),
            conv3: conv(p, out, 1, 1, device),
            bn3: BatchNormConfig::new(out).init(device),
            downsample,
        }
    }
}

impl<B: Backend> Bottleneck<B> {
    /// # Shapes
    /// `[n, in_channels, h, w]` → `[n, 4·planes, ⌈h/stride⌉, ⌈w/stride⌉]`
    pub fn forward(&self, x: Tensor<B, 4>, norm: NormMode) -> Tensor<B, 4> {
        let y = relu(batch_norm(&self.bn1, conv2d(&self.conv1, x.clone()), norm));
        let y = relu(batch_norm(&self.bn2, conv2d(&self.conv2, y), norm));
        let y = batch_norm(&self.bn3, conv2d(&self.conv3, y), norm);
        let shortcut = match &self.downsample {
            Some(d) => batch_norm(&d.bn, conv2d(&d.conv, x), norm),
            None => x,
        };
        relu(y + shortcut)
    }
}
