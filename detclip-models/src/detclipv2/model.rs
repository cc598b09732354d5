//! The DetCLIPv2 detector: backbone, FPN, the alignment head, the concept encoder, and the
//! region–concept logits.

use burn::module::Param;
use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use detclip_core::DetError;
use detclip_core::assign::{LevelAnchors, decode_distances_batched};
use detclip_core::ext::DetclipOps;

use super::backbone::{Backbone, BackboneConfig};
use super::head::{AlignHead, AlignHeadConfig, HeadOutput};
use super::text::{ConceptCache, HashedWordTokenizer};
use crate::clip::{ClipText, ClipTextConfig};
use crate::dense::{DenseTestConfig, Detections, dense_detections};
use crate::fpn::{ExtraLevels, Fpn, FpnConfig};
use crate::layers::NormMode;
use crate::layers::l2_normalize_eps;
use crate::resnet::ResNetConfig;
use crate::swin::SwinConfig;

/// Settings of [`DetClipV2`].
#[derive(Config, Debug)]
pub struct DetClipV2Config {
    /// The image backbone.
    pub backbone: BackboneConfig,
    /// Channels of the pyramid and the head.
    pub channels: usize,
    /// Levels above P5: [`ExtraLevels::P6P7FromP5`] gives ATSS's P3–P7.
    #[config(default = "ExtraLevels::P6P7FromP5")]
    pub extra: ExtraLevels,
    /// Convs of the head's shared tower.
    #[config(default = 4)]
    pub tower_convs: usize,
    /// GroupNorm groups in the head.
    #[config(default = 32)]
    pub norm_groups: usize,
    /// The concept encoder (its `embed_dim` is the region-embedding width too).
    pub text: ClipTextConfig,
    /// Anchor side as a multiple of the level's stride (ATSS: 8).
    #[config(default = 8.0)]
    pub anchor_scale: f32,
    /// Initial probability of every region–concept logit (the bias prior of focal-loss
    /// detectors).
    #[config(default = 0.01)]
    pub prior_prob: f32,
    /// Initial multiplier of the cosine similarities.
    #[config(default = 10.0)]
    pub logit_scale: f32,
}

impl DetClipV2Config {
    /// DetCLIPv2-T: Swin-T, 256-channel FPN P3–P7, a four-conv tower, and a CLIP
    /// (ViT-B-sized) 12-layer text transformer with 512-wide embeddings.
    pub fn swin_t() -> Self {
        let swin = SwinConfig::tiny().with_out_indices(vec![1, 2, 3]);
        Self::new(
            BackboneConfig::Swin(swin),
            256,
            ClipTextConfig::new().with_embed_dim(512),
        )
    }

    /// A small model for the synthetic world and tests: a one-block-per-stage ResNet with
    /// batch norm trained from scratch, 32-channel P3–P5, one tower conv, and a one-layer
    /// 32-wide text transformer over 512 hashed word ids.
    pub fn small() -> Self {
        let resnet = ResNetConfig::new([1, 1, 1, 1])
            .with_stem_channels(16)
            .with_width(8)
            .with_norm(NormMode::Batch)
            .with_frozen_stages(0);
        let text = ClipTextConfig::new()
            .with_vocab_size(512)
            .with_context_length(16)
            .with_width(32)
            .with_layers(1)
            .with_heads(2)
            .with_mlp_width(64)
            .with_embed_dim(32);
        Self::new(BackboneConfig::ResNet(resnet), 32, text)
            .with_extra(ExtraLevels::None)
            .with_tower_convs(1)
            .with_norm_groups(8)
            .with_anchor_scale(4.0)
    }

    /// The number of pyramid levels.
    pub fn levels(&self) -> usize {
        3 + match self.extra {
            ExtraLevels::None => 0,
            ExtraLevels::MaxPool => 1,
            ExtraLevels::P6P7FromC5 | ExtraLevels::P6P7FromP5 => 2,
        }
    }

    /// The tokenizer for names when no BPE tokenizer is given.
    pub fn tokenizer(&self) -> HashedWordTokenizer {
        HashedWordTokenizer {
            vocab: self.text.vocab_size,
            context: self.text.context_length,
        }
    }

    /// Builds the model.
    ///
    /// # Errors
    /// The blocks' own checks; a prior probability outside `(0, 1)` or a non-positive scale.
    pub fn init<B: Backend>(&self, device: &B::Device) -> detclip_core::Result<DetClipV2<B>> {
        let valid = self.prior_prob > 0.0
            && self.prior_prob < 1.0
            && self.logit_scale > 0.0
            && self.anchor_scale > 0.0;
        if !valid {
            return Err(DetError::InvalidOption {
                op: "DetClipV2",
                why: format!(
                    "need 0 < prior_prob < 1 and positive scales, got {}, {}, {}",
                    self.prior_prob, self.logit_scale, self.anchor_scale
                ),
            });
        }
        let fpn = FpnConfig::new(self.backbone.out_channels(), self.channels)
            .with_extra(self.extra)
            .init(device)?;
        let head = AlignHeadConfig::new(self.channels, self.text.embed_dim, self.levels())
            .with_tower_convs(self.tower_convs)
            .with_norm_groups(self.norm_groups)
            .init(device)?;
        let bias = -((1.0 - self.prior_prob) / self.prior_prob).ln();
        let logit = Tensor::from_floats([self.logit_scale.ln(), bias], device);
        Ok(DetClipV2 {
            backbone: self.backbone.init(device)?,
            fpn,
            head,
            text: self.text.init(device),
            logit: Param::from_tensor(logit),
            tokenizer: self.tokenizer(),
        })
    }
}

/// DetCLIPv2 (Yao et al., "DetCLIPv2: Scalable Open-Vocabulary Object Detection Pre-training
/// via Word-Region Alignment", CVPR 2023): an ATSS detector whose classifier is the
/// similarity of region embeddings with concept embeddings.
#[derive(Module, Debug)]
pub struct DetClipV2<B: Backend> {
    /// Image backbone (C3–C5).
    pub backbone: Backbone<B>,
    /// Feature pyramid.
    pub fpn: Fpn<B>,
    /// The dense head.
    pub head: AlignHead<B>,
    /// The concept encoder.
    pub text: ClipText<B>,
    /// `[log scale, bias]` of the region–concept logits.
    pub logit: Param<Tensor<B, 1>>,
    #[module(skip)]
    tokenizer: HashedWordTokenizer,
}

impl<B: Backend> DetClipV2<B> {
    /// The tokenizer [`DetClipV2::encode_concepts`] uses.
    pub fn tokenizer(&self) -> HashedWordTokenizer {
        self.tokenizer
    }

    /// Unit-length concept embeddings from token ids (one sequence per concept; CLIP's
    /// end-of-text state, projected).
    ///
    /// # Shapes
    /// - `ids`: `[C, L]`; out `[C, D]`
    ///
    /// # Errors
    /// [`DetError::Shape`] for an empty or too long sequence.
    pub fn encode_ids(&self, ids: Tensor<B, 2, Int>) -> detclip_core::Result<Tensor<B, 2>> {
        Ok(l2_normalize_eps(self.text.forward(ids)?.text_embeds, 1e-6))
    }

    /// Unit-length embeddings of concept names, `[C, D]`, through the hashed-word tokenizer.
    ///
    /// # Errors
    /// No names, a name with no word.
    pub fn encode_concepts(&self, names: &[String]) -> detclip_core::Result<Tensor<B, 2>> {
        let ids = self.tokenizer.encode::<B>(names, &self.logit.device())?;
        self.encode_ids(ids)
    }

    /// Encodes a vocabulary once, for [`DetClipV2::logits`] on any number of images.
    ///
    /// # Errors
    /// As [`DetClipV2::encode_concepts`].
    pub fn concept_cache(&self, names: &[String]) -> detclip_core::Result<ConceptCache<B>> {
        Ok(ConceptCache {
            names: names.to_vec(),
            embeddings: self.encode_concepts(names)?,
        })
    }

    /// Region–concept logits: `exp(log scale) · cos(region, concept) + bias`.
    ///
    /// # Shapes
    /// - `regions`: `[N, A, D]`, `concepts`: `[C, D]` (both unit length); out `[N, A, C]`
    ///
    /// # Errors
    /// [`DetError::Shape`] when the widths differ.
    pub fn logits(
        &self,
        regions: Tensor<B, 3>,
        concepts: Tensor<B, 2>,
    ) -> detclip_core::Result<Tensor<B, 3>> {
        let [n, _, d] = regions.dims();
        let [c, cd] = concepts.dims();
        if cd != d {
            return Err(DetError::Shape {
                op: "DetClipV2::logits",
                what: "concepts",
                got: vec![c, cd],
                expected: format!("[C, {d}]"),
            });
        }
        let sim = regions.matmul(concepts.transpose().reshape([1, d, c]).expand([n, d, c]));
        let l = self.logit.val();
        Ok(sim * l.clone().narrow(0, 0, 1).exp().reshape([1, 1, 1])
            + l.narrow(0, 1, 1).reshape([1, 1, 1]))
    }
}

impl<B: DetclipOps> DetClipV2<B> {
    /// The image side: backbone, FPN, head.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`, `H` and `W` multiples of 32
    ///
    /// # Errors
    /// [`DetError::Shape`] for another channel count or sides that are not multiples of 32.
    pub fn forward_image(&self, images: Tensor<B, 4>) -> detclip_core::Result<HeadOutput<B>> {
        let dims = images.dims();
        if dims[1] != 3
            || dims[2] == 0
            || dims[3] == 0
            || !dims[2].is_multiple_of(32)
            || !dims[3].is_multiple_of(32)
        {
            return Err(DetError::Shape {
                op: "DetClipV2",
                what: "images",
                got: dims.to_vec(),
                expected: "[N, 3, H, W] with H and W positive multiples of 32".into(),
            });
        }
        let features = self.backbone.forward(images)?;
        let levels = self.fpn.forward(&features)?;
        self.head.forward(&levels)
    }

    /// Logits of a batch of images against a cached vocabulary, `[N, A, C]`, with the head's
    /// outputs.
    ///
    /// # Errors
    /// As [`DetClipV2::forward_image`].
    pub fn forward_cached(
        &self,
        images: Tensor<B, 4>,
        cache: &ConceptCache<B>,
    ) -> detclip_core::Result<(HeadOutput<B>, Tensor<B, 3>)> {
        let out = self.forward_image(images)?;
        let logits = self.logits(out.regions.clone(), cache.embeddings.clone())?;
        Ok((out, logits))
    }

    /// Detections of a cached vocabulary in a batch of images: score
    /// `√(σ(logit) · σ(centerness))`, boxes decoded from the anchors of `config`'s
    /// `anchor_scale`, [`dense_detections`] with `test`'s settings.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`; `image_sizes`: `N` unpadded `(height, width)`
    ///
    /// # Errors
    /// As [`DetClipV2::forward_image`]; a non-positive anchor scale.
    pub fn detect(
        &self,
        config: &DetClipV2Config,
        images: Tensor<B, 4>,
        image_sizes: &[(usize, usize)],
        cache: &ConceptCache<B>,
        threshold: f32,
        test: &DenseTestConfig,
    ) -> detclip_core::Result<Vec<Detections>> {
        let (out, logits) = self.forward_cached(images, cache)?;
        let anchors = LevelAnchors::new(&out.sizes, config.anchor_scale)?;
        let [n, a, _] = logits.dims();
        let scores = (sigmoid(logits) * sigmoid(out.centerness.clone()).reshape([n, a, 1])).sqrt();
        let boxes = decode_distances_batched(out.bbox, &anchors);
        dense_detections(scores, boxes, image_sizes, threshold, test)
    }
}
