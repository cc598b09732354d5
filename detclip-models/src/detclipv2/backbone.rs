//! The image backbone: ResNet or Swin, as a config enum, returning C3–C5.

use burn::prelude::*;

use crate::resnet::{ResNet, ResNetConfig};
use crate::swin::{SwinConfig, SwinTransformer};

/// Which backbone, with its settings.
#[derive(Config, Debug)]
pub enum BackboneConfig {
    /// A bottleneck ResNet (C3–C5 of `layer2`..`layer4`).
    ResNet(ResNetConfig),
    /// A Swin Transformer (its `out_indices` must be the last three stages, `[1, 2, 3]`).
    Swin(SwinConfig),
}

impl BackboneConfig {
    /// Channels of C3, C4, C5.
    pub fn out_channels(&self) -> Vec<usize> {
        match self {
            BackboneConfig::ResNet(c) => c.out_channels()[1..].to_vec(),
            BackboneConfig::Swin(c) => c.stage_channels()[1..].to_vec(),
        }
    }

    /// Builds the backbone.
    ///
    /// # Errors
    /// The backbone's own checks; a Swin whose `out_indices` are not `[1, 2, 3]`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> detclip_core::Result<Backbone<B>> {
        Ok(match self {
            BackboneConfig::ResNet(c) => Backbone::ResNet(c.init(device)?),
            BackboneConfig::Swin(c) => {
                if c.out_indices != [1, 2, 3] {
                    return Err(detclip_core::DetError::InvalidOption {
                        op: "DetCLIPv2 backbone",
                        why: format!(
                            "Swin out_indices must be [1, 2, 3] (C3–C5), got {:?}",
                            c.out_indices
                        ),
                    });
                }
                Backbone::Swin(c.init(device)?)
            }
        })
    }
}

/// The image backbone.
#[derive(Module, Debug)]
#[allow(clippy::large_enum_variant)]
pub enum Backbone<B: Backend> {
    /// ResNet.
    ResNet(ResNet<B>),
    /// Swin Transformer.
    Swin(SwinTransformer<B>),
}

impl<B: Backend> Backbone<B> {
    /// C3, C4, C5 (strides 8, 16, 32).
    ///
    /// # Shapes
    /// - `x`: `[N, 3, H, W]`; out: three maps `[N, C_i, H/s, W/s]`, `s = 8, 16, 32`
    ///
    /// # Errors
    /// The backbone's input checks.
    pub fn forward(&self, x: Tensor<B, 4>) -> detclip_core::Result<Vec<Tensor<B, 4>>> {
        match self {
            Backbone::ResNet(r) => Ok(r.forward(x)?.levels[1..].to_vec()),
            Backbone::Swin(s) => s.forward(x),
        }
    }
}
