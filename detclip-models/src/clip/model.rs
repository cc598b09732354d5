use burn::module::{Initializer, Param};
use burn::prelude::*;
use detclip_core::DetError;

use super::block::ClipLayout;
use super::text::{ClipText, ClipTextConfig, EotPooling};
use super::vision::{ClipVision, ClipVisionConfig};

/// Both towers of a CLIP model.
#[derive(Config, Debug)]
pub struct ClipConfig {
    /// The image tower.
    pub vision: ClipVisionConfig,
    /// The text tower.
    pub text: ClipTextConfig,
}

impl ClipConfig {
    /// OpenAI's ViT-B/32 (`openai/clip-vit-base-patch32`).
    pub fn vit_b_32(layout: ClipLayout) -> Self {
        Self::new(
            ClipVisionConfig::new().with_layout(layout),
            // The released checkpoints pool with `argmax` (HF's configs say
            // `eos_token_id = 2`, which HF also treats as `argmax`).
            ClipTextConfig::new().with_layout(layout),
        )
    }

    /// OpenAI's ViT-B/16 (`openai/clip-vit-base-patch16`).
    pub fn vit_b_16(layout: ClipLayout) -> Self {
        let mut c = Self::vit_b_32(layout);
        c.vision.patch_size = 16;
        c
    }

    /// OpenAI's ViT-L/14 (`openai/clip-vit-large-patch14`).
    pub fn vit_l_14(layout: ClipLayout) -> Self {
        let mut c = Self::vit_b_32(layout);
        c.vision = ClipVisionConfig::new()
            .with_layout(layout)
            .with_patch_size(14)
            .with_width(1024)
            .with_layers(24)
            .with_heads(16)
            .with_mlp_width(4096)
            .with_embed_dim(768);
        c.text = c
            .text
            .with_width(768)
            .with_heads(12)
            .with_mlp_width(3072)
            .with_embed_dim(768);
        c
    }

    /// A small CLIP trained from scratch (the synthetic world's teacher, in ViLD's and
    /// RegionSpot's presets): OpenAI's layout, MLPs 4× wide, `argmax` pooling, both towers
    /// `layers` deep with `heads` heads, over a word vocabulary of `vocab_size` ids padded to
    /// `context_length`.
    pub fn small(sizes: SmallClip, vocab_size: usize, context_length: usize) -> Self {
        let layout = ClipLayout::OpenAi;
        let s = sizes;
        Self::new(
            ClipVisionConfig::new()
                .with_image_size(s.image_size)
                .with_patch_size(s.patch)
                .with_width(s.width)
                .with_layers(s.layers)
                .with_heads(s.heads)
                .with_mlp_width(4 * s.width)
                .with_embed_dim(s.embed_dim)
                .with_layout(layout),
            ClipTextConfig::new()
                .with_vocab_size(vocab_size)
                .with_context_length(context_length)
                .with_width(s.text_width)
                .with_layers(s.layers)
                .with_heads(s.heads)
                .with_mlp_width(4 * s.text_width)
                .with_embed_dim(s.embed_dim)
                .with_layout(layout)
                .with_pooling(EotPooling::ArgMax),
        )
    }

    /// Checks the geometry: a side that is a multiple of the patch, widths divisible by the
    /// heads, at least one layer per tower, positive widths, both towers in one embedding
    /// space.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming the first bad value.
    pub fn validate(&self) -> detclip_core::Result<()> {
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "clip config",
                why,
            })
        };
        let (v, t) = (&self.vision, &self.text);
        if v.patch_size == 0 || v.image_size == 0 || !v.image_size.is_multiple_of(v.patch_size) {
            return bad(format!(
                "vision.image_size ({}) must be a positive multiple of vision.patch_size ({})",
                v.image_size, v.patch_size
            ));
        }
        for (tower, width, heads, layers) in [
            ("vision", v.width, v.heads, v.layers),
            ("text", t.width, t.heads, t.layers),
        ] {
            if width == 0 || heads == 0 || layers == 0 || !width.is_multiple_of(heads) {
                return bad(format!(
                    "{tower}: width {width} must be a positive multiple of heads {heads}, with \
                     at least one layer (got {layers})"
                ));
            }
        }
        if v.embed_dim == 0 || v.embed_dim != t.embed_dim {
            return bad(format!(
                "vision.embed_dim ({}) and text.embed_dim ({}) must be equal and positive",
                v.embed_dim, t.embed_dim
            ));
        }
        if t.vocab_size == 0 || t.context_length == 0 {
            return bad("text.vocab_size and text.context_length must be positive".into());
        }
        Ok(())
    }

    /// Builds the model with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Clip<B> {
        Clip {
            vision: self.vision.init(device),
            text: self.text.init(device),
            logit_scale: Initializer::Constant {
                value: (1.0f64 / 0.07).ln(),
            }
            .init([1], device),
        }
    }
}

/// Sizes of a small CLIP ([`ClipConfig::small`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallClip {
    /// Input side of the image tower.
    pub image_size: usize,
    /// Patch size.
    pub patch: usize,
    /// Vision width.
    pub width: usize,
    /// Text width.
    pub text_width: usize,
    /// Blocks of each tower.
    pub layers: usize,
    /// Attention heads of each tower.
    pub heads: usize,
    /// Joint embedding width.
    pub embed_dim: usize,
}

/// A CLIP model: both towers and the learned temperature.
#[derive(Module, Debug)]
pub struct Clip<B: Backend> {
    /// The image tower.
    pub vision: ClipVision<B>,
    /// The text tower.
    pub text: ClipText<B>,
    /// `log` of the logit scale, `[1]`.
    pub logit_scale: Param<Tensor<B, 1>>,
}

impl<B: Backend> Clip<B> {
    /// Image-text similarity logits `exp(logit_scale) · norm(image) · norm(text)ᵀ`.
    ///
    /// # Shapes
    /// - `image_embeds`: `[Ni, E]`, `text_embeds`: `[Nt, E]` → `[Ni, Nt]`
    ///
    /// # Errors
    /// [`DetError::Shape`] when the embedding widths differ.
    pub fn logits(
        &self,
        image_embeds: Tensor<B, 2>,
        text_embeds: Tensor<B, 2>,
    ) -> detclip_core::Result<Tensor<B, 2>> {
        let [_, ei] = image_embeds.dims();
        if text_embeds.dims()[1] != ei {
            return Err(DetError::Shape {
                op: "Clip::logits",
                what: "text_embeds",
                got: text_embeds.dims().to_vec(),
                expected: format!("[Nt, {ei}] like the image embeddings"),
            });
        }
        let scale = self.logit_scale.val().exp().reshape([1, 1]);
        let similarity = l2_normalize(image_embeds).matmul(l2_normalize(text_embeds).transpose());
        Ok(similarity * scale)
    }
}

/// CLIP's normalisation of its embeddings (rows divided by their L2 norm).
pub use crate::layers::l2_normalize;
