use burn::module::{Initializer, Param};
use burn::nn::{Linear, LinearConfig};
use burn::prelude::*;
use detclip_core::DetError;
use detclip_core::assign::AnchorGenerator;

use super::heads::{MaskHead, TwoMlpHead};
use super::roi::MultiScaleRoiAlign;
use super::rpn::{
    Proposals, RpnConfig, RpnHead, RpnOutputs, select_proposals, select_proposals_within,
};
use super::sampling::HostBox;
use super::text::{cosine_logits, vild_text_logits};
use crate::clip::Clip;
use crate::fpn::{ExtraLevels, Fpn, FpnConfig};
use crate::layers::NormMode;
use crate::resnet::{ResNet, ResNetConfig};

/// The second stage: RoI pooling, box head, class-agnostic box and mask outputs.
#[derive(Config, Debug)]
pub struct RoiHeadsConfig {
    /// Box head pooling (7×7).
    #[config(default = "MultiScaleRoiAlign::new(7)")]
    pub box_pool: MultiScaleRoiAlign,
    /// Mask head pooling (14×14).
    #[config(default = "MultiScaleRoiAlign::new(14)")]
    pub mask_pool: MultiScaleRoiAlign,
    /// Width of the two FC layers.
    #[config(default = 1024)]
    pub representation: usize,
    /// Widths of the mask head's 3×3 convs.
    #[config(default = "vec![256, 256, 256, 256]")]
    pub mask_layers: Vec<usize>,
    /// Proposals with IoU ≥ this with an object are its foreground.
    #[config(default = 0.5)]
    pub fg_iou_threshold: f32,
    /// Proposals with IoU < this with every object are background.
    #[config(default = 0.5)]
    pub bg_iou_threshold: f32,
    /// RoIs sampled per image for the loss.
    #[config(default = 512)]
    pub batch_size_per_image: usize,
    /// Largest fraction of foreground among them.
    #[config(default = 0.25)]
    pub positive_fraction: f32,
    /// Box coder weights of the second stage.
    #[config(default = "[10.0, 10.0, 5.0, 5.0]")]
    pub box_weights: [f32; 4],
}

/// ViLD's detector (see the [module docs](super)).
#[derive(Config, Debug)]
pub struct VildConfig {
    /// The backbone.
    pub backbone: ResNetConfig,
    /// FPN width.
    #[config(default = 256)]
    pub fpn_channels: usize,
    /// The region proposal network.
    pub rpn: RpnConfig,
    /// The second stage.
    pub roi: RoiHeadsConfig,
    /// Width of the embedding space (CLIP's: 512 for ViT-B, 768 for ViT-L).
    #[config(default = 512)]
    pub embed_dim: usize,
    /// Temperature of the cosine logits (ViLD: 0.01).
    #[config(default = 0.01)]
    pub temperature: f64,
}

impl VildConfig {
    /// ViLD's ResNet-50 + FPN detector (Mask R-CNN R50-FPN sizes) for an embedding width.
    pub fn r50(embed_dim: usize) -> Self {
        Self::new(
            ResNetConfig::resnet50(),
            RpnConfig::new(),
            RoiHeadsConfig::new(),
        )
        .with_embed_dim(embed_dim)
    }

    /// A small detector for tests and the synthetic world: ResNet of width 4 with one block
    /// per stage, 16-wide FPN, 32-wide box head, small anchors, a canonical RoI scale of 28.
    pub fn tiny(embed_dim: usize) -> Self {
        let pool = |s| MultiScaleRoiAlign::new(s).with_canonical_scale(28.0);
        Self::new(
            ResNetConfig::new([1, 1, 1, 1])
                .with_stem_channels(4)
                .with_width(4)
                .with_norm(NormMode::Frozen)
                .with_frozen_stages(0),
            RpnConfig::new()
                .with_anchor_sizes(vec![8.0, 16.0, 32.0, 64.0, 128.0])
                .with_pre_nms_top_n_train(200)
                .with_pre_nms_top_n_test(100)
                .with_post_nms_top_n_train(100)
                .with_post_nms_top_n_test(50)
                .with_batch_size_per_image(64),
            RoiHeadsConfig::new()
                .with_box_pool(pool(7))
                .with_mask_pool(pool(14))
                .with_representation(32)
                .with_mask_layers(vec![16; 4])
                .with_batch_size_per_image(64),
        )
        .with_fpn_channels(16)
        .with_embed_dim(embed_dim)
    }

    /// Checks the sizes: positive widths, one block per backbone stage at least, five anchor
    /// sizes (P2–P6).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming what is wrong.
    pub fn validate(&self) -> detclip_core::Result<()> {
        let b = &self.backbone;
        if self.embed_dim == 0
            || self.roi.representation == 0
            || self.fpn_channels == 0
            || b.width == 0
            || b.stem_channels == 0
            || b.layers.contains(&0)
            || self.rpn.anchor_sizes.len() != 5
        {
            return Err(DetError::InvalidOption {
                op: "Vild",
                why: format!(
                    "embed_dim, representation, fpn_channels, the backbone's widths and blocks \
                     must be positive and there must be 5 anchor sizes (P2–P6): {self}"
                ),
            });
        }
        Ok(())
    }

    /// Builds the detector with fresh weights.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for invalid backbone/FPN sizes, no anchor level or a zero
    /// width.
    pub fn init<B: Backend>(&self, device: &B::Device) -> detclip_core::Result<Vild<B>> {
        self.validate()?;
        let c = self.fpn_channels;
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let r = self.roi.representation;
        let pool = self.roi.box_pool.output_size;
        Ok(Vild {
            backbone: self.backbone.init(device)?,
            fpn: FpnConfig::new(self.backbone.out_channels().to_vec(), c)
                .with_extra(ExtraLevels::MaxPool)
                .init(device)?,
            rpn: RpnHead::new(c, self.rpn.anchors_per_cell(), device),
            box_head: TwoMlpHead::new(c * pool * pool, r, device),
            box_regression: linear(r, 4),
            projection: linear(r, self.embed_dim),
            image_projection: linear(r, self.embed_dim),
            background: Initializer::Normal {
                mean: 0.0,
                std: (self.embed_dim as f64).powf(-0.5),
            }
            .init([self.embed_dim], device),
            mask_head: MaskHead::new(c, &self.roi.mask_layers, device),
            anchors: self.rpn.anchor_generator(),
            rpn_config: self.rpn.clone(),
            roi_config: self.roi.clone(),
            temperature: self.temperature,
        })
    }
}

/// ViLD's detector: ResNet + FPN, RPN, the class-agnostic second stage and the two
/// projections to the embedding space.
#[derive(Module, Debug)]
pub struct Vild<B: Backend> {
    /// C2–C5.
    pub backbone: ResNet<B>,
    /// P2–P6.
    pub fpn: Fpn<B>,
    /// The RPN head.
    pub rpn: RpnHead<B>,
    /// Two FC layers over the 7×7 pooled RoI.
    pub box_head: TwoMlpHead<B>,
    /// Class-agnostic box deltas, one box per RoI.
    pub box_regression: Linear<B>,
    /// The region embedding of ViLD-text (and of ViLD-image without the ensemble).
    pub projection: Linear<B>,
    /// The ensemble's second region embedding, trained by distillation only.
    pub image_projection: Linear<B>,
    /// The learned background embedding `e_bg`, `[E]`.
    pub background: Param<Tensor<B, 1>>,
    /// Class-agnostic mask head.
    pub mask_head: MaskHead<B>,
    #[module(skip)]
    anchors: AnchorGenerator,
    #[module(skip)]
    rpn_config: RpnConfig,
    #[module(skip)]
    roi_config: RoiHeadsConfig,
    #[module(skip)]
    temperature: f64,
}

/// Per-RoI outputs of the second stage.
#[derive(Debug, Clone)]
pub struct RegionOutputs<B: Backend> {
    /// The box head's features `[K, R]`.
    pub representation: Tensor<B, 2>,
    /// Class-agnostic box deltas `[K, 4]` (coder weights `(10, 10, 5, 5)`).
    pub box_deltas: Tensor<B, 2>,
    /// Region embeddings of [`Vild::projection`], `[K, E]` (not normalised).
    pub embeddings: Tensor<B, 2>,
    /// Region embeddings of [`Vild::image_projection`], `[K, E]` (not normalised).
    pub image_embeddings: Tensor<B, 2>,
}

impl<B: Backend> Vild<B> {
    /// The RPN's configuration.
    pub fn rpn_config(&self) -> &RpnConfig {
        &self.rpn_config
    }

    /// The second stage's configuration.
    pub fn roi_config(&self) -> &RoiHeadsConfig {
        &self.roi_config
    }

    /// The logits' temperature.
    pub fn temperature(&self) -> f64 {
        self.temperature
    }

    /// The pyramid P2–P6.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]` (normalised; `H, W` multiples of 32 keep the levels exact)
    ///
    /// # Errors
    /// [`DetError::Shape`] for a wrong channel count.
    pub fn features(&self, images: Tensor<B, 4>) -> detclip_core::Result<Vec<Tensor<B, 4>>> {
        let c = self.backbone.forward(images)?;
        self.fpn.forward(&c.levels)
    }

    /// The RPN head on every level.
    pub fn rpn_outputs(&self, features: &[Tensor<B, 4>]) -> RpnOutputs<B> {
        self.rpn.forward(features)
    }

    /// Proposals of every image (training or inference limits).
    ///
    /// # Errors
    /// As [`select_proposals`].
    pub fn proposals(
        &self,
        outputs: &RpnOutputs<B>,
        image_size: [usize; 2],
        training: bool,
    ) -> detclip_core::Result<Vec<Proposals>> {
        select_proposals(
            outputs,
            &self.anchors,
            image_size,
            &self.rpn_config.limits(training),
        )
    }

    /// [`Vild::proposals`] clipped to each image's own `[height, width]` inside the padded
    /// batch ([`select_proposals_within`]).
    ///
    /// # Errors
    /// As [`select_proposals_within`].
    pub fn proposals_within(
        &self,
        outputs: &RpnOutputs<B>,
        image_size: [usize; 2],
        images: &[[usize; 2]],
        training: bool,
    ) -> detclip_core::Result<Vec<Proposals>> {
        select_proposals_within(
            outputs,
            &self.anchors,
            image_size,
            images,
            &self.rpn_config.limits(training),
        )
    }

    /// The RoI levels (P2–P5; P6 is the RPN's only).
    fn roi_levels<'a>(
        &self,
        features: &'a [Tensor<B, 4>],
    ) -> detclip_core::Result<&'a [Tensor<B, 4>]> {
        if features.len() < 5 {
            return Err(DetError::Shape {
                op: "Vild",
                what: "features",
                got: vec![features.len()],
                expected: "the 5 pyramid levels P2–P6".into(),
            });
        }
        Ok(&features[..4])
    }

    /// Box head, class-agnostic regression and both projections of every RoI.
    ///
    /// # Shapes
    /// - `features`: P2–P6; `rois[i]`: boxes of image `i`; output rows: the RoIs in order
    ///
    /// # Errors
    /// As [`MultiScaleRoiAlign::forward`].
    pub fn region_outputs(
        &self,
        features: &[Tensor<B, 4>],
        rois: &[Vec<HostBox>],
        image_size: [usize; 2],
    ) -> detclip_core::Result<RegionOutputs<B>> {
        let pooled =
            self.roi_config
                .box_pool
                .forward(self.roi_levels(features)?, rois, image_size)?;
        let representation = self.box_head.forward(pooled);
        Ok(RegionOutputs {
            box_deltas: self.box_regression.forward(representation.clone()),
            embeddings: self.projection.forward(representation.clone()),
            image_embeddings: self.image_projection.forward(representation.clone()),
            representation,
        })
    }

    /// Class-agnostic mask logits of every RoI, `[K, 1, 28, 28]` at the default sizes.
    ///
    /// # Errors
    /// As [`MultiScaleRoiAlign::forward`].
    pub fn mask_logits(
        &self,
        features: &[Tensor<B, 4>],
        rois: &[Vec<HostBox>],
        image_size: [usize; 2],
    ) -> detclip_core::Result<Tensor<B, 4>> {
        let pooled =
            self.roi_config
                .mask_pool
                .forward(self.roi_levels(features)?, rois, image_size)?;
        Ok(self.mask_head.forward(pooled))
    }

    /// ViLD-text logits `[K, 1 + C]` (column 0 the background) of region embeddings against
    /// class embeddings `[C, E]`.
    ///
    /// # Errors
    /// [`DetError::Shape`] when the widths differ.
    pub fn text_logits(
        &self,
        embeddings: Tensor<B, 2>,
        classes: Tensor<B, 2>,
    ) -> detclip_core::Result<Tensor<B, 2>> {
        vild_text_logits(embeddings, self.background.val(), classes, self.temperature)
    }

    /// The ensemble's image-branch logits `[K, C]`: cosine of the distilled embeddings with the
    /// classes over the temperature (no background: distillation never sees one).
    ///
    /// # Errors
    /// [`DetError::Shape`] when the widths differ.
    pub fn image_logits(
        &self,
        image_embeddings: Tensor<B, 2>,
        classes: Tensor<B, 2>,
    ) -> detclip_core::Result<Tensor<B, 2>> {
        let e = image_embeddings.dims()[1];
        if classes.dims()[1] != e {
            return Err(DetError::Shape {
                op: "Vild::image_logits",
                what: "classes",
                got: classes.dims().to_vec(),
                expected: format!("[C, {e}] like the region embeddings"),
            });
        }
        Ok(cosine_logits(image_embeddings, classes, self.temperature))
    }
}

/// ViLD's detector with its frozen CLIP: what a ViLD run trains (the detector) and keeps beside
/// it (CLIP's text tower gives the classifier, its image tower the ViLD-image targets).
#[derive(Module, Debug)]
pub struct VildModel<B: Backend> {
    /// The detector (trained).
    pub detector: Vild<B>,
    /// CLIP (frozen).
    pub clip: Clip<B>,
}

impl<B: Backend> VildModel<B> {
    /// A model of this detector and CLIP (CLIP frozen).
    pub fn new(detector: Vild<B>, clip: Clip<B>) -> Self {
        Self {
            detector,
            clip: clip.no_grad(),
        }
    }
}
