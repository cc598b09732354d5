use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use detclip_core::DetError;
use detclip_core::nn::conv2d;

use super::{Bottleneck, BottleneckConfig, EXPANSION};
use crate::layers::{NormMode, batch_norm, check_channels, max_pool2d_nchw};

/// A ResNet with bottleneck blocks, as a detection backbone.
#[derive(Config, Debug)]
pub struct ResNetConfig {
    /// Blocks per stage (`layer1`..`layer4`): `[3, 4, 6, 3]` is ResNet-50, `[3, 4, 23, 3]`
    /// ResNet-101.
    pub layers: [usize; 4],
    /// Output channels of the 7×7 stem conv (64 in the published models).
    #[config(default = 64)]
    pub stem_channels: usize,
    /// Bottleneck width of `layer1`, doubled at every stage (64 in the published models); stage
    /// `s` outputs `4 · width · 2^(s−1)` channels.
    #[config(default = 64)]
    pub width: usize,
    /// Input image channels.
    #[config(default = 3)]
    pub in_channels: usize,
    /// Batch norm as `BatchNorm2d` or as `FrozenBatchNorm2d`.
    #[config(default = "NormMode::Frozen")]
    pub norm: NormMode,
    /// How many leading parts get no gradient: 0 none, 1 the stem, 2 the stem and `layer1`, …
    /// up to 5 (everything); detectron2's `FREEZE_AT`, torchvision's `5 − trainable_layers`.
    #[config(default = 2)]
    pub frozen_stages: usize,
}

impl ResNetConfig {
    /// ResNet-50 with detector defaults (frozen norms, stem and `layer1` frozen).
    pub fn resnet50() -> Self {
        Self::new([3, 4, 6, 3])
    }

    /// ResNet-101 with detector defaults.
    pub fn resnet101() -> Self {
        Self::new([3, 4, 23, 3])
    }

    /// Channels of C2..C5.
    pub fn out_channels(&self) -> [usize; 4] {
        [1, 2, 4, 8].map(|m| self.width * m * EXPANSION)
    }

    /// Builds the backbone.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for an empty stage, a zero width or `frozen_stages > 5`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> detclip_core::Result<ResNet<B>> {
        let invalid = |why: String| DetError::InvalidOption { op: "ResNet", why };
        if self.layers.contains(&0) {
            return Err(invalid(format!(
                "every stage needs a block: {:?}",
                self.layers
            )));
        }
        if self.stem_channels == 0 || self.width == 0 || self.in_channels == 0 {
            return Err(invalid("channel counts must be positive".into()));
        }
        if self.frozen_stages > 5 {
            return Err(invalid(format!(
                "frozen_stages = {} (0..=5)",
                self.frozen_stages
            )));
        }
        let mut in_channels = self.stem_channels;
        let mut stage = |s: usize| {
            let planes = self.width << s;
            (0..self.layers[s])
                .map(|i| {
                    let stride = if i == 0 && s > 0 { 2 } else { 1 };
                    let block = BottleneckConfig::new(in_channels, planes)
                        .with_stride(stride)
                        .init(device);
                    in_channels = planes * EXPANSION;
                    block
                })
                .collect::<Vec<_>>()
        };
        let [layer1, layer2, layer3, layer4] = [stage(0), stage(1), stage(2), stage(3)];
        Ok(ResNet {
            conv1: Conv2dConfig::new([self.in_channels, self.stem_channels], [7, 7])
                .with_stride([2, 2])
                .with_padding(PaddingConfig2d::Explicit(3, 3, 3, 3))
                .with_bias(false)
                .init(device),
            bn1: BatchNormConfig::new(self.stem_channels).init(device),
            layer1,
            layer2,
            layer3,
            layer4,
            in_channels: self.in_channels,
            norm: self.norm,
            frozen_stages: self.frozen_stages,
        })
    }
}

/// C2–C5 of a [`ResNet`]: strides 4, 8, 16, 32.
#[derive(Debug, Clone)]
pub struct ResNetFeatures<B: Backend> {
    /// `[c2, c3, c4, c5]`, each `[n, channels, h, w]`.
    pub levels: [Tensor<B, 4>; 4],
}

/// ResNet backbone in torchvision's layout (see [`ResNetConfig`]).
#[derive(Module, Debug)]
pub struct ResNet<B: Backend> {
    /// 7×7 stride-2 stem conv.
    pub conv1: Conv2d<B>,
    /// Stem norm.
    pub bn1: BatchNorm<B>,
    /// Stage 2 (stride 4).
    pub layer1: Vec<Bottleneck<B>>,
    /// Stage 3 (stride 8).
    pub layer2: Vec<Bottleneck<B>>,
    /// Stage 4 (stride 16).
    pub layer3: Vec<Bottleneck<B>>,
    /// Stage 5 (stride 32).
    pub layer4: Vec<Bottleneck<B>>,
    #[module(skip)]
    in_channels: usize,
    #[module(skip)]
    norm: NormMode,
    #[module(skip)]
    frozen_stages: usize,
}

impl<B: Backend> ResNet<B> {
    /// Runs the backbone. Parts covered by `frozen_stages` are cut from the autodiff graph,
    /// so their parameters never receive a gradient.
    ///
    /// # Shapes
    /// `[n, in_channels, h, w]` → C2 `[n, 4w, ⌈h/4⌉, ⌈w/4⌉]` … C5 `[n, 32w, ⌈h/32⌉, ⌈w/32⌉]`
    /// (`w` = [`ResNetConfig::width`]; sizes follow the convs' floor rounding).
    ///
    /// # Errors
    /// [`DetError::Shape`] when the input does not have `in_channels` channels.
    pub fn forward(&self, x: Tensor<B, 4>) -> detclip_core::Result<ResNetFeatures<B>> {
        check_channels("ResNet", "image", x.dims(), self.in_channels)?;
        let x = relu(batch_norm(&self.bn1, conv2d(&self.conv1, x), self.norm));
        let x = max_pool2d_nchw(x, [3, 3], [2, 2], [1, 1]);
        let mut x = self.freeze(x, 1);
        let mut levels = Vec::with_capacity(4);
        for (s, stage) in self.stages().into_iter().enumerate() {
            x = stage.iter().fold(x, |x, block| block.forward(x, self.norm));
            x = self.freeze(x, s + 2);
            levels.push(x.clone());
        }
        let levels = levels.try_into().expect("four stages");
        Ok(ResNetFeatures { levels })
    }

    fn stages(&self) -> [&[Bottleneck<B>]; 4] {
        [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
    }

    /// Detaches the output of part `part` (1 = stem, 2 = `layer1`, …) when it is frozen.
    fn freeze(&self, x: Tensor<B, 4>, part: usize) -> Tensor<B, 4> {
        if part <= self.frozen_stages {
            x.detach()
        } else {
            x
        }
    }
}
