//! The usual "DCN layer": a modulated deformable convolution whose offsets and mask come from
//! its own small convolution of the same input (mmcv's `ModulatedDeformConv2dPack`, as used by
//! DyHead and DetCLIPv2's classification head).

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use super::conv2d;
use crate::ext::DetclipOps;
use crate::ops::{DeformConv2dOptions, deform_conv2d};

/// Configuration of [`DeformConv2d`].
#[derive(Config, Debug)]
pub struct DeformConv2dConfig {
    /// `[in_channels, out_channels]`.
    pub channels: [usize; 2],
    /// `[kh, kw]`.
    pub kernel_size: [usize; 2],
    /// Stride `[h, w]`.
    #[config(default = "[1, 1]")]
    pub stride: [usize; 2],
    /// Zero padding `[h, w]`; `kernel_size / 2` keeps the spatial size at stride 1.
    #[config(default = "[1, 1]")]
    pub padding: [usize; 2],
    /// Dilation `[h, w]`.
    #[config(default = "[1, 1]")]
    pub dilation: [usize; 2],
    /// Groups of the weight.
    #[config(default = 1)]
    pub weight_groups: usize,
    /// Groups of the offsets and mask.
    #[config(default = 1)]
    pub offset_groups: usize,
    /// Whether the layer has a bias.
    #[config(default = true)]
    pub bias: bool,
    /// DCNv2 (a sigmoid modulation mask) rather than DCNv1 (offsets only).
    #[config(default = true)]
    pub modulated: bool,
}

/// A deformable convolution layer with its own offset (and mask) branch.
///
/// The offset branch is a plain convolution with the layer's kernel, stride, padding and
/// dilation, producing `3·G·kh·kw` channels (`2·G·kh·kw` offsets then `G·kh·kw` mask logits,
/// DCNv2) or `2·G·kh·kw` (DCNv1). It starts at zero, so a fresh layer samples the regular grid
/// with mask 0.5, as mmcv initialises it.
#[derive(Module, Debug)]
pub struct DeformConv2d<B: Backend> {
    /// `[O, C / weight_groups, kh, kw]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[O]`.
    pub bias: Option<Param<Tensor<B, 1>>>,
    /// Predicts offsets (and mask logits) from the input.
    pub offset_conv: Conv2d<B>,
    stride: [usize; 2],
    padding: [usize; 2],
    dilation: [usize; 2],
    weight_groups: usize,
    offset_groups: usize,
    modulated: bool,
}

impl DeformConv2dConfig {
    /// Builds the layer: weight and bias initialised as PyTorch's `Conv2d` (Kaiming uniform with
    /// `a = √5`), the offset branch at zero.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DeformConv2d<B> {
        let [c, o] = self.channels;
        let [kh, kw] = self.kernel_size;
        let fan_in = c / self.weight_groups * kh * kw;
        let init = Initializer::KaimingUniform {
            gain: 1.0 / 3.0f64.sqrt(),
            fan_out_only: false,
        };
        let weight = init.init_with(
            [o, c / self.weight_groups, kh, kw],
            Some(fan_in),
            None,
            device,
        );
        let bound = 1.0 / (fan_in as f64).sqrt();
        let bias = self.bias.then(|| {
            Initializer::Uniform {
                min: -bound,
                max: bound,
            }
            .init_with([o], Some(fan_in), None, device)
        });
        let per_tap = if self.modulated { 3 } else { 2 };
        let offset_conv = Conv2dConfig::new(
            [c, per_tap * self.offset_groups * kh * kw],
            self.kernel_size,
        )
        .with_stride(self.stride)
        .with_padding(PaddingConfig2d::Explicit(
            self.padding[0],
            self.padding[1],
            self.padding[0],
            self.padding[1],
        ))
        .with_dilation(self.dilation)
        .with_initializer(Initializer::Zeros)
        .init(device);
        DeformConv2d {
            weight,
            bias,
            offset_conv,
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            weight_groups: self.weight_groups,
            offset_groups: self.offset_groups,
            modulated: self.modulated,
        }
    }
}

impl<B: DetclipOps> DeformConv2d<B> {
    /// The options passed to [`deform_conv2d`].
    pub fn options(&self) -> DeformConv2dOptions {
        DeformConv2dOptions {
            stride: self.stride,
            padding: self.padding,
            dilation: self.dilation,
            weight_groups: self.weight_groups,
            offset_groups: self.offset_groups,
        }
    }

    /// # Shapes
    /// - `x`: `[N, C, H, W]`; output `[N, O, Ho, Wo]`
    ///
    /// # Errors
    /// When `x` has the wrong number of channels or is smaller than the kernel.
    pub fn forward(&self, x: Tensor<B, 4>) -> crate::Result<Tensor<B, 4>> {
        let [_, c, kh, kw] = self.weight.dims();
        let c = c * self.weight_groups;
        let dims = x.dims();
        crate::error::ensure_shape(
            dims[1] == c,
            "DeformConv2d",
            "input",
            &dims,
            format!("[N, {c}, H, W]"),
        )?;
        let raw = conv2d(&self.offset_conv, x.clone());
        let taps = self.offset_groups * kh * kw;
        let offset = raw.clone().narrow(1, 0, 2 * taps);
        let mask = self
            .modulated
            .then(|| sigmoid(raw.narrow(1, 2 * taps, taps)));
        deform_conv2d(
            x,
            offset,
            mask,
            self.weight.val(),
            self.bias.as_ref().map(|b| b.val()),
            &self.options(),
        )
    }
}
