//! One DyHead block as GLIP's `VLDyHead` builds it (`DyConv` in
//! `maskrcnn_benchmark/modeling/rpn/vldyhead.py`; Dai et al., "Dynamic Head", CVPR 2021):
//!
//! - **spatial-aware**: three modulated deformable 3×3 convolutions (with GroupNorm) share the
//!   offsets and mask predicted from the current level by one 3×3 convolution with 27 channels
//!   (18 offsets, 9 mask logits through a sigmoid). Level `l` gathers its own features
//!   (stride 1), the finer level `l-1` (stride 2) and the coarser level `l+1` (stride 1, then
//!   bilinear upsampling with aligned corners);
//! - **scale-aware**: each of those maps is weighted by `hsigmoid(ReLU(conv1x1(avgpool(x))))`
//!   and the weighted maps are averaged;
//! - **task-aware**: DyReLU, `max(a1·x + b1, a2·x + b2)` with coefficients from a squeeze MLP.
//!
//! A detail of the released model kept here: the coarser level's convolution runs at that
//! level's (smaller) resolution but is handed the offsets and mask computed at level `l`. The
//! released CUDA kernel does not check their size and reads the first `18·h·w` (and `9·h·w`)
//! values of each image's offset (mask) memory as if it had the smaller shape
//! (microsoft/DynamicHead issue 25). [`DyConv`] reproduces that read, so released weights
//! behave as they were trained.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, Linear, LinearConfig, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::module::{adaptive_avg_pool2d, conv2d};
use burn::tensor::ops::ConvOptions;

use detclip_core::DetError;
use detclip_core::ext::DetclipOps;
use detclip_core::ops::{DeformConv2dOptions, deform_conv2d};

use detclip_core::Result as DetResult;

/// Offset channels of a 3×3 modulated deformable convolution (`2·3·3`).
const OFFSET_CHANNELS: usize = 18;
/// Mask channels (`3·3`).
const MASK_CHANNELS: usize = 9;

/// `ReLU6(x + 3) / 6`.
fn hsigmoid<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    (x + 3.0).clamp(0.0, 6.0) / 6.0
}

/// Configuration of [`DyConv`].
#[derive(Config, Debug)]
pub struct DyConvConfig {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// GroupNorm groups after each convolution (`MODEL.GROUP_NORM.NUM_GROUPS`), `None` for
    /// no norm.
    #[config(default = "Some(16)")]
    pub norm_groups: Option<usize>,
    /// Modulated deformable convolutions (`USE_DFCONV`) rather than plain ones.
    #[config(default = true)]
    pub deformable: bool,
    /// Scale-aware attention (`USE_DYFUSE`); without it the three maps are averaged.
    #[config(default = true)]
    pub scale_attention: bool,
    /// DyReLU (`USE_DYRELU`); without it a plain ReLU.
    #[config(default = true)]
    pub dyrelu: bool,
}

/// A 3×3 convolution (modulated deformable or plain) followed by an optional GroupNorm
/// (`Conv3x3Norm`).
#[derive(Module, Debug)]
pub struct Conv3x3Norm<B: Backend> {
    /// The convolution's weight and bias.
    pub conv: Conv3x3<B>,
    /// GroupNorm, when configured.
    pub bn: Option<GroupNorm<B>>,
}

/// Weight `[O, C, 3, 3]` and bias `[O]` of a 3×3 convolution with padding 1.
#[derive(Module, Debug)]
pub struct Conv3x3<B: Backend> {
    /// `[O, C, 3, 3]`.
    pub weight: Param<Tensor<B, 4>>,
    /// `[O]`.
    pub bias: Param<Tensor<B, 1>>,
    stride: usize,
}

/// DyReLU with two linear pieces and biases (`DYReLU(K2=True, use_bias=True)`).
#[derive(Module, Debug)]
pub struct DyRelu<B: Backend> {
    /// `C → C / 4` (`fc.0`).
    pub squeeze: Linear<B>,
    /// `C / 4 → 4·O` (`fc.2`).
    pub expand: Linear<B>,
}

/// One DyHead block over a feature pyramid.
#[derive(Module, Debug)]
pub struct DyConv<B: Backend> {
    /// Coarser level (stride 1, then upsampled), same level (stride 1), finer level (stride 2).
    pub convs: Vec<Conv3x3Norm<B>>,
    /// Scale-aware attention: a 1×1 convolution to one channel on the pooled map.
    pub attn_conv: Option<Conv2d<B>>,
    /// Task-aware attention.
    pub relu: Option<DyRelu<B>>,
    /// Offsets and mask logits, 27 channels (deformable only).
    pub offset: Option<Conv2d<B>>,
}

impl DyConvConfig {
    /// Builds the block with the released initialisation: plain 3×3 convolutions and the
    /// scale attention's 1×1 convolution `N(0, 0.01)`, modulated deformable convolutions
    /// `U(±1/√(9·C))`, zero biases, the offset convolution as PyTorch's default.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] when the channels are not divisible by the norm groups or
    /// by 4 (DyReLU's squeeze).
    pub fn init<B: Backend>(&self, device: &B::Device) -> DetResult<DyConv<B>> {
        let (c, o) = (self.in_channels, self.out_channels);
        if let Some(g) = self.norm_groups
            && (g == 0 || !o.is_multiple_of(g))
        {
            return Err(invalid(format!(
                "{o} channels are not divisible by {g} groups"
            )));
        }
        if self.dyrelu && (c < 4 || c != o) {
            return Err(invalid(format!(
                "DyReLU needs in_channels = out_channels ≥ 4, got {c} → {o}"
            )));
        }
        // The released `DyConv.init_weights` draws every `nn.Conv2d` from N(0, 0.01). The
        // deformable `ModulatedDeformConv` is not an `nn.Conv2d`, so it keeps its own
        // `reset_parameters`: U(±1/√(9·C)).
        let weight_init = if self.deformable {
            let bound = 1.0 / ((9 * c) as f64).sqrt();
            Initializer::Uniform {
                min: -bound,
                max: bound,
            }
        } else {
            Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            }
        };
        let conv = |stride: usize| Conv3x3Norm {
            conv: Conv3x3 {
                weight: weight_init.init([o, c, 3, 3], device),
                bias: Initializer::Zeros.init([o], device),
                stride,
            },
            bn: self
                .norm_groups
                .map(|g| GroupNormConfig::new(g, o).init(device)),
        };
        let attn_conv = self.scale_attention.then(|| {
            let mut attn = Conv2dConfig::new([c, 1], [1, 1])
                .with_initializer(Initializer::Normal {
                    mean: 0.0,
                    std: 0.01,
                })
                .init(device);
            // Burn draws the bias with the weight's initializer; the released one is zero.
            attn.bias = Some(Initializer::Zeros.init([1], device));
            attn
        });
        let relu = self.dyrelu.then(|| DyRelu {
            squeeze: LinearConfig::new(c, c / 4).init(device),
            expand: LinearConfig::new(c / 4, 4 * o).init(device),
        });
        let offset = self.deformable.then(|| {
            Conv2dConfig::new([c, OFFSET_CHANNELS + MASK_CHANNELS], [3, 3])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(device)
        });
        Ok(DyConv {
            convs: vec![conv(1), conv(1), conv(2)],
            attn_conv,
            relu,
            offset,
        })
    }
}

fn invalid(why: String) -> DetError {
    DetError::InvalidOption { op: "DyConv", why }
}

impl<B: DetclipOps> Conv3x3Norm<B> {
    /// # Shapes
    /// - `x`: `[N, C, H, W]`; `offset_mask`: `[N, 18, h, w]` and `[N, 9, h, w]` (any `h·w`
    ///   at least the output's, see the module docs) or `None` for a plain convolution
    fn forward(
        &self,
        x: Tensor<B, 4>,
        offset_mask: Option<(Tensor<B, 4>, Tensor<B, 4>)>,
    ) -> DetResult<Tensor<B, 4>> {
        let conv = &self.conv;
        let s = conv.stride;
        let y = match offset_mask {
            Some((offset, mask)) => {
                let [n, _, h, w] = x.dims();
                let [ho, wo] = [(h + 2 - 3) / s + 1, (w + 2 - 3) / s + 1];
                let options = DeformConv2dOptions {
                    stride: [s, s],
                    padding: [1, 1],
                    dilation: [1, 1],
                    weight_groups: 1,
                    offset_groups: 1,
                };
                deform_conv2d(
                    x,
                    reinterpret(offset, [n, OFFSET_CHANNELS, ho, wo])?,
                    Some(reinterpret(mask, [n, MASK_CHANNELS, ho, wo])?),
                    conv.weight.val(),
                    Some(conv.bias.val()),
                    &options,
                )?
            }
            None => conv2d(
                x,
                conv.weight.val(),
                Some(conv.bias.val()),
                ConvOptions::new([s, s], [1, 1], [1, 1], 1),
            ),
        };
        Ok(match &self.bn {
            Some(bn) => bn.forward(y),
            None => y,
        })
    }
}

/// Reads the first `C·h·w` values of each image's `[C, H, W]` map as a `[C, h, w]` map, as
/// the released kernel does when handed a larger offset map (identity when the sizes agree).
fn reinterpret<B: Backend>(x: Tensor<B, 4>, shape: [usize; 4]) -> DetResult<Tensor<B, 4>> {
    let [n, c, h, w] = x.dims();
    let [_, co, ho, wo] = shape;
    if [h, w] == [ho, wo] {
        return Ok(x);
    }
    if h * w < ho * wo {
        return Err(DetError::Shape {
            op: "DyConv",
            what: "offsets",
            got: x.dims().to_vec(),
            expected: format!("at least {ho}×{wo} positions"),
        });
    }
    Ok(x.reshape([n, c * h * w])
        .narrow(1, 0, co * ho * wo)
        .reshape(shape))
}

/// Bilinear resizing with aligned corners (`F.upsample_bilinear`) as two products with
/// interpolation matrices built from the sizes alone, so it is differentiable on every backend
/// (Burn's bilinear backward is missing on ndarray).
fn upsample_bilinear_aligned<B: Backend>(x: Tensor<B, 4>, [ho, wo]: [usize; 2]) -> Tensor<B, 4> {
    let [n, c, hi, wi] = x.dims();
    let device = x.device();
    let along_w = x
        .reshape([n * c * hi, wi])
        .matmul(interpolation_matrix::<B>(wi, wo, &device))
        .reshape([n, c, hi, wo])
        .swap_dims(2, 3);
    along_w
        .reshape([n * c * wo, hi])
        .matmul(interpolation_matrix::<B>(hi, ho, &device))
        .reshape([n, c, wo, ho])
        .swap_dims(2, 3)
}

/// `[input, output]` weights of 1-D linear interpolation with aligned corners: output `i`
/// samples input position `i·(input-1)/(output-1)`.
fn interpolation_matrix<B: Backend>(
    input: usize,
    output: usize,
    device: &B::Device,
) -> Tensor<B, 2> {
    let mut weights = vec![0.0f32; input * output];
    for i in 0..output {
        let src = if output > 1 {
            i as f64 * (input - 1) as f64 / (output - 1) as f64
        } else {
            0.0
        };
        let i0 = (src.floor() as usize).min(input - 1);
        let i1 = (i0 + 1).min(input - 1);
        let frac = (src - i0 as f64) as f32;
        weights[i0 * output + i] += 1.0 - frac;
        weights[i1 * output + i] += frac;
    }
    Tensor::from_data(TensorData::new(weights, [input, output]), device)
}

impl<B: Backend> DyRelu<B> {
    /// `max(a1·x + b1, a2·x + b2)`, coefficients from the pooled input (`lambda_a = 2`,
    /// `init_a = [1, 0]`, `init_b = [0, 0]`).
    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, _, _] = x.dims();
        let pooled = adaptive_avg_pool2d(x.clone(), [1, 1]).reshape([n, c]);
        let y = hsigmoid(self.expand.forward(relu(self.squeeze.forward(pooled))));
        let o = y.dims()[1] / 4;
        let y = y.reshape([n, 4 * o, 1, 1]);
        let part = |i: usize| y.clone().narrow(1, i * o, o);
        let a1 = (part(0) - 0.5) * 2.0 + 1.0;
        let b1 = part(1) - 0.5;
        let a2 = (part(2) - 0.5) * 2.0;
        let b2 = part(3) - 0.5;
        (x.clone() * a1 + b1).max_pair(x * a2 + b2)
    }
}

impl<B: DetclipOps> DyConv<B> {
    /// Runs the block on a pyramid, finest level first.
    ///
    /// # Shapes
    /// - `levels[l]`: `[N, C, H_l, W_l]` with `H_{l+1} = ⌈H_l / 2⌉` (an FPN's levels);
    ///   output: `[N, O, H_l, W_l]` per level
    ///
    /// # Errors
    /// [`DetError::Shape`] when the pyramid is empty or its levels do not halve.
    pub fn forward(&self, levels: &[Tensor<B, 4>]) -> DetResult<Vec<Tensor<B, 4>>> {
        self.check(levels)?;
        let [coarser, same, finer] = [&self.convs[0], &self.convs[1], &self.convs[2]];
        let mut out = Vec::with_capacity(levels.len());
        for (l, feature) in levels.iter().enumerate() {
            let [_, _, h, w] = feature.dims();
            let offset_mask = self.offset.as_ref().map(|conv| {
                let raw = detclip_core::nn::conv2d(conv, feature.clone());
                let offset = raw.clone().narrow(1, 0, OFFSET_CHANNELS);
                let mask = sigmoid(raw.narrow(1, OFFSET_CHANNELS, MASK_CHANNELS));
                (offset, mask)
            });
            let mut maps = vec![same.forward(feature.clone(), offset_mask.clone())?];
            if l > 0 {
                maps.push(finer.forward(levels[l - 1].clone(), offset_mask.clone())?);
            }
            if l + 1 < levels.len() {
                let y = coarser.forward(levels[l + 1].clone(), offset_mask)?;
                maps.push(upsample_bilinear_aligned(y, [h, w]));
            }
            out.push(self.fuse_scales(maps));
        }
        Ok(out
            .into_iter()
            .map(|x| match &self.relu {
                Some(dyrelu) => dyrelu.forward(x),
                None => relu(x),
            })
            .collect())
    }

    /// The scale-aware attention: `mean_i(x_i · hsigmoid(ReLU(conv(avgpool(x_i)))))`.
    fn fuse_scales(&self, maps: Vec<Tensor<B, 4>>) -> Tensor<B, 4> {
        let k = maps.len() as f64;
        let weighted = maps.into_iter().map(|x| match &self.attn_conv {
            Some(conv) => {
                let pooled = adaptive_avg_pool2d(x.clone(), [1, 1]);
                x * hsigmoid(relu(detclip_core::nn::conv2d(conv, pooled)))
            }
            None => x,
        });
        weighted.reduce(|a, b| a + b).expect("at least one map") / k
    }

    fn check(&self, levels: &[Tensor<B, 4>]) -> DetResult<()> {
        let c = self.convs[1].conv.weight.dims()[1];
        let bad = |got: Vec<usize>, expected: String| DetError::Shape {
            op: "DyConv",
            what: "pyramid level",
            got,
            expected,
        };
        let Some(first) = levels.first() else {
            return Err(bad(vec![0], "at least one level".into()));
        };
        let n = first.dims()[0];
        for (l, level) in levels.iter().enumerate() {
            let [ni, ci, h, w] = level.dims();
            if ni != n || ci != c {
                return Err(bad(level.dims().to_vec(), format!("[{n}, {c}, H, W]")));
            }
            if l > 0 {
                let [_, _, hp, wp] = levels[l - 1].dims();
                if [h, w] != [hp.div_ceil(2), wp.div_ceil(2)] {
                    return Err(bad(
                        level.dims().to_vec(),
                        format!(
                            "[{n}, {c}, {}, {}] (half of level {})",
                            hp.div_ceil(2),
                            wp.div_ceil(2),
                            l - 1
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
