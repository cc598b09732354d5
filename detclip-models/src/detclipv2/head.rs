//! The dense ATSS head of DetCLIPv2 (§3.1): a tower shared by the levels, a classification
//! branch that starts with a light modulated deformable convolution (DCNv2) and ends in a
//! region-embedding projection, and regression (four distances, a learned scale per level)
//! and centerness on the same tower.
//!
//! The DCN is what links the branches: its input is the tower output the regression and
//! centerness read, so the gradients of the image-text (alignment-only) loss also train the
//! features the boxes come from.

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, Initializer, PaddingConfig2d};
use burn::prelude::*;
use burn::tensor::activation::relu;
use detclip_core::ext::DetclipOps;
use detclip_core::nn::conv2d;
use detclip_core::nn::{DeformConv2d, DeformConv2dConfig};

use crate::layers::{check_channels, l2_normalize_eps};

/// Sizes of [`AlignHead`].
#[derive(Config, Debug)]
pub struct AlignHeadConfig {
    /// Channels of the pyramid levels and of the tower.
    pub channels: usize,
    /// 3×3 conv + GroupNorm + ReLU blocks in the shared tower.
    #[config(default = 2)]
    pub tower_convs: usize,
    /// Width of region (and concept) embeddings.
    pub embed_dim: usize,
    /// GroupNorm groups.
    #[config(default = 32)]
    pub norm_groups: usize,
    /// Number of pyramid levels (one learned regression scale each).
    pub levels: usize,
}

fn conv3x3<B: Backend>(cin: usize, cout: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([cin, cout], [3, 3])
        .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device)
}

impl AlignHeadConfig {
    /// Builds the head: convs `N(0, 0.01)` with zero bias (as ATSS), the DCN's offset branch
    /// at zero, every regression scale 1.
    ///
    /// # Errors
    /// [`detclip_core::DetError::InvalidOption`] for zero sizes or channels that the norm
    /// groups do not divide.
    pub fn init<B: Backend>(&self, device: &B::Device) -> detclip_core::Result<AlignHead<B>> {
        let c = self.channels;
        if c == 0
            || self.embed_dim == 0
            || self.levels == 0
            || self.norm_groups == 0
            || !c.is_multiple_of(self.norm_groups)
        {
            return Err(detclip_core::DetError::InvalidOption {
                op: "AlignHead",
                why: format!(
                    "need positive sizes and channels divisible by norm_groups, got channels \
                     {c}, embed_dim {}, levels {}, norm_groups {}",
                    self.embed_dim, self.levels, self.norm_groups
                ),
            });
        }
        let norm = || GroupNormConfig::new(self.norm_groups, c).init(device);
        Ok(AlignHead {
            tower: (0..self.tower_convs)
                .map(|_| ConvNormRelu {
                    conv: conv3x3(c, c, device),
                    norm: norm(),
                })
                .collect(),
            cls_dcn: DeformConv2dConfig::new([c, c], [3, 3]).init(device),
            cls_norm: norm(),
            embed: Conv2dConfig::new([c, self.embed_dim], [1, 1]).init(device),
            bbox: conv3x3(c, 4, device),
            centerness: conv3x3(c, 1, device),
            scales: Param::from_tensor(Tensor::ones([self.levels], device)),
        })
    }
}

/// 3×3 conv, GroupNorm, ReLU.
#[derive(Module, Debug)]
pub struct ConvNormRelu<B: Backend> {
    /// The conv.
    pub conv: Conv2d<B>,
    /// The norm.
    pub norm: GroupNorm<B>,
}

/// The head, shared by the pyramid levels.
#[derive(Module, Debug)]
pub struct AlignHead<B: Backend> {
    /// The shared tower.
    pub tower: Vec<ConvNormRelu<B>>,
    /// The classification branch's modulated deformable conv (offsets and mask from a conv of
    /// the same input, DCNv2).
    pub cls_dcn: DeformConv2d<B>,
    /// Its GroupNorm.
    pub cls_norm: GroupNorm<B>,
    /// 1×1 projection to region embeddings.
    pub embed: Conv2d<B>,
    /// Four box distances.
    pub bbox: Conv2d<B>,
    /// Centerness logit.
    pub centerness: Conv2d<B>,
    /// A learned scale per level for the distances (FCOS / ATSS `Scale`).
    pub scales: Param<Tensor<B, 1>>,
}

/// The head's raw outputs over every location of every level, levels concatenated.
#[derive(Debug, Clone)]
pub struct HeadOutput<B: Backend> {
    /// `[N, A, D]` unit-length region embeddings.
    pub regions: Tensor<B, 3>,
    /// `[N, A, 4]` raw distances (left, top, right, bottom), the level's scale applied.
    pub bbox: Tensor<B, 3>,
    /// `[N, A]` centerness logits.
    pub centerness: Tensor<B, 2>,
    /// `[h, w]` of each level.
    pub sizes: Vec<[usize; 2]>,
}

impl<B: DetclipOps> AlignHead<B> {
    /// Runs the head on every level.
    ///
    /// # Shapes
    /// - `levels`: `L` maps `[N, C, H_l, W_l]`; outputs over `A = Σ H_l·W_l` locations
    ///
    /// # Errors
    /// [`detclip_core::DetError::Shape`] for a wrong number of levels or channels.
    pub fn forward(&self, levels: &[Tensor<B, 4>]) -> detclip_core::Result<HeadOutput<B>> {
        let expected = self.scales.dims()[0];
        if levels.len() != expected {
            return Err(detclip_core::DetError::Shape {
                op: "AlignHead",
                what: "number of levels",
                got: vec![levels.len()],
                expected: format!("[{expected}]"),
            });
        }
        let channels = self.bbox.weight.dims()[1];
        let (mut regions, mut boxes, mut ctrs, mut sizes) = (vec![], vec![], vec![], vec![]);
        for (l, x) in levels.iter().enumerate() {
            check_channels("AlignHead", "feature level", x.dims(), channels)?;
            let mut t = x.clone();
            for block in &self.tower {
                t = relu(block.norm.forward(conv2d(&block.conv, t)));
            }
            let [n, _, h, w] = t.dims();
            sizes.push([h, w]);
            let flat = |y: Tensor<B, 4>| {
                let c = y.dims()[1];
                y.reshape([n, c, h * w]).swap_dims(1, 2)
            };
            let cls = relu(self.cls_norm.forward(self.cls_dcn.forward(t.clone())?));
            regions.push(flat(conv2d(&self.embed, cls)));
            let scale = self.scales.val().narrow(0, l, 1).reshape([1, 1, 1]);
            boxes.push(flat(conv2d(&self.bbox, t.clone())) * scale);
            ctrs.push(flat(conv2d(&self.centerness, t)).reshape([n, h * w]));
        }
        Ok(HeadOutput {
            regions: l2_normalize_eps(Tensor::cat(regions, 1), 1e-6),
            bbox: Tensor::cat(boxes, 1),
            centerness: Tensor::cat(ctrs, 1),
            sizes,
        })
    }
}
