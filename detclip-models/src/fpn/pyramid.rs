use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use burn::tensor::module::{interpolate, max_pool2d};
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use detclip_core::DetError;
use detclip_core::nn::conv2d;

use crate::layers::check_channels;

/// The levels added above the coarsest input level.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ExtraLevels {
    /// None: one output per input.
    None,
    /// torchvision's `LastLevelMaxPool`: one more level, a 1×1 max-pool with stride 2 of the
    /// coarsest output (P6 of the two-stage detector's P2–P6).
    MaxPool,
    /// `LastLevelP6P7` fed with the coarsest *input* (C5, RetinaNet's choice): P6 = 3×3/2 conv
    /// of C5, P7 = 3×3/2 conv of ReLU(P6).
    P6P7FromC5,
    /// `LastLevelP6P7` fed with the coarsest *output* (P5, as ATSS/GLIP configure it when the
    /// channel counts agree).
    P6P7FromP5,
}

/// A feature pyramid over backbone levels of decreasing resolution (each ½ the previous).
#[derive(Config, Debug)]
pub struct FpnConfig {
    /// Channels of each input level, finest first (e.g. C2..C5 or C3..C5).
    pub in_channels: Vec<usize>,
    /// Channels of every output level.
    pub out_channels: usize,
    /// Levels above the coarsest input.
    #[config(default = "ExtraLevels::None")]
    pub extra: ExtraLevels,
}

/// P6/P7 convs of `LastLevelP6P7`.
#[derive(Module, Debug)]
pub struct P6P7<B: Backend> {
    /// 3×3 stride-2 conv making P6.
    pub p6: Conv2d<B>,
    /// 3×3 stride-2 conv making P7 from ReLU(P6).
    pub p7: Conv2d<B>,
}

/// Feature pyramid network (see [`FpnConfig`]).
#[derive(Module, Debug)]
pub struct Fpn<B: Backend> {
    /// 1×1 lateral convs, one per input level.
    pub inner_blocks: Vec<Conv2d<B>>,
    /// 3×3 output convs, one per input level.
    pub layer_blocks: Vec<Conv2d<B>>,
    /// P6/P7 convs when [`ExtraLevels`] asks for them.
    pub extra_blocks: Option<P6P7<B>>,
    #[module(skip)]
    in_channels: Vec<usize>,
    #[module(skip)]
    extra: ExtraLevels,
}

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
        .init(device)
}

impl FpnConfig {
    /// Builds the pyramid.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for no input level or a zero channel count.
    pub fn init<B: Backend>(&self, device: &B::Device) -> detclip_core::Result<Fpn<B>> {
        let Some(&coarsest) = self.in_channels.last() else {
            return Err(DetError::InvalidOption {
                op: "Fpn",
                why: "no input level".into(),
            });
        };
        if self.out_channels == 0 || self.in_channels.contains(&0) {
            return Err(DetError::InvalidOption {
                op: "Fpn",
                why: format!(
                    "channel counts must be positive: in {:?}, out {}",
                    self.in_channels, self.out_channels
                ),
            });
        }
        let out = self.out_channels;
        let p6_in = match self.extra {
            ExtraLevels::P6P7FromC5 => Some(coarsest),
            ExtraLevels::P6P7FromP5 => Some(out),
            ExtraLevels::None | ExtraLevels::MaxPool => None,
        };
        Ok(Fpn {
            inner_blocks: self
                .in_channels
                .iter()
                .map(|&c| conv(c, out, 1, 1, device))
                .collect(),
            layer_blocks: self
                .in_channels
                .iter()
                .map(|_| conv(out, out, 3, 1, device))
                .collect(),
            extra_blocks: p6_in.map(|c| P6P7 {
                p6: conv(c, out, 3, 2, device),
                p7: conv(out, out, 3, 2, device),
            }),
            in_channels: self.in_channels.clone(),
            extra: self.extra,
        })
    }
}

impl<B: Backend> Fpn<B> {
    /// Builds the pyramid top-down: each lateral 1×1 conv is added to the nearest-neighbour
    /// upsampled sum above it (to the lateral's exact size), then smoothed by a 3×3 conv.
    ///
    /// # Shapes
    /// `features[i]`: `[n, in_channels[i], h_i, w_i]` → outputs `[n, out_channels, h_i, w_i]`
    /// for each input, then the extra levels (each with ⌈½⌉ the size of the one before).
    ///
    /// # Errors
    /// [`DetError::Shape`] for a wrong number of levels or a wrong channel count.
    pub fn forward(&self, features: &[Tensor<B, 4>]) -> detclip_core::Result<Vec<Tensor<B, 4>>> {
        self.check(features)?;
        let last = features.len() - 1;
        let mut inner = conv2d(&self.inner_blocks[last], features[last].clone());
        let mut outs = vec![conv2d(&self.layer_blocks[last], inner.clone())];
        for i in (0..last).rev() {
            let lateral = conv2d(&self.inner_blocks[i], features[i].clone());
            let [_, _, h, w] = lateral.dims();
            let top_down = interpolate(
                inner,
                [h, w],
                InterpolateOptions::new(InterpolateMode::Nearest),
            );
            inner = lateral + top_down;
            outs.insert(0, conv2d(&self.layer_blocks[i], inner.clone()));
        }
        match (&self.extra_blocks, self.extra) {
            (_, ExtraLevels::MaxPool) => {
                let p = max_pool2d(outs[last].clone(), [1, 1], [2, 2], [0, 0], [1, 1], false);
                outs.push(p);
            }
            (Some(b), ExtraLevels::P6P7FromC5 | ExtraLevels::P6P7FromP5) => {
                let source = if self.extra == ExtraLevels::P6P7FromC5 {
                    features[last].clone()
                } else {
                    outs[last].clone()
                };
                let p6 = conv2d(&b.p6, source);
                let p7 = conv2d(&b.p7, relu(p6.clone()));
                outs.extend([p6, p7]);
            }
            _ => {}
        }
        Ok(outs)
    }

    fn check(&self, features: &[Tensor<B, 4>]) -> detclip_core::Result<()> {
        if features.len() != self.in_channels.len() {
            return Err(DetError::Shape {
                op: "Fpn",
                what: "number of levels",
                got: vec![features.len()],
                expected: format!("{} levels", self.in_channels.len()),
            });
        }
        for (f, &c) in features.iter().zip(&self.in_channels) {
            check_channels("Fpn", "feature level", f.dims(), c)?;
        }
        Ok(())
    }
}
