use burn::module::Module;
use burn::prelude::*;
use detclip_core::DetError;

use super::head::{RegionSpotHead, RegionSpotHeadConfig};
use crate::clip::{Clip, ClipConfig, ClipLayout, SmallClip, l2_normalize};
use crate::sam::{
    ImageEncoderViTConfig, MaskDecoderConfig, PromptEncoderConfig, Sam, SamConfig,
    TwoWayTransformerConfig,
};
use crate::tokenizer::{TextTokenizer, batch_tensors};

/// The official 81 prompt templates (`prompt_engineering.get_prompt_templates`); a class's text
/// embedding is the mean of CLIP's embeddings of these sentences, normalised.
pub const PROMPT_TEMPLATES: &[&str] = &[
    "{}.",
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of many {}.",
    "a sculpture of a {}.",
    "a photo of the hard to see {}.",
    "a low resolution photo of the {}.",
    "a rendering of a {}.",
    "graffiti of a {}.",
    "a bad photo of the {}.",
    "a cropped photo of the {}.",
    "a tattoo of a {}.",
    "the embroidered {}.",
    "a photo of a hard to see {}.",
    "a bright photo of a {}.",
    "a photo of a clean {}.",
    "a photo of a dirty {}.",
    "a dark photo of the {}.",
    "a drawing of a {}.",
    "a photo of my {}.",
    "the plastic {}.",
    "a photo of the cool {}.",
    "a close-up photo of a {}.",
    "a black and white photo of the {}.",
    "a painting of the {}.",
    "a painting of a {}.",
    "a pixelated photo of the {}.",
    "a sculpture of the {}.",
    "a bright photo of the {}.",
    "a cropped photo of a {}.",
    "a plastic {}.",
    "a photo of the dirty {}.",
    "a jpeg corrupted photo of a {}.",
    "a blurry photo of the {}.",
    "a photo of the {}.",
    "a good photo of the {}.",
    "a rendering of the {}.",
    "a {} in a video game.",
    "a photo of one {}.",
    "a doodle of a {}.",
    "a close-up photo of the {}.",
    "the origami {}.",
    "the {} in a video game.",
    "a sketch of a {}.",
    "a doodle of the {}.",
    "a origami {}.",
    "a low resolution photo of a {}.",
    "the toy {}.",
    "a rendition of the {}.",
    "a photo of the clean {}.",
    "a photo of a large {}.",
    "a rendition of a {}.",
    "a photo of a nice {}.",
    "a photo of a weird {}.",
    "a blurry photo of a {}.",
    "a cartoon {}.",
    "art of a {}.",
    "a sketch of the {}.",
    "a embroidered {}.",
    "a pixelated photo of a {}.",
    "itap of the {}.",
    "a jpeg corrupted photo of the {}.",
    "a good photo of a {}.",
    "a plushie {}.",
    "a photo of the nice {}.",
    "a photo of the small {}.",
    "a photo of the weird {}.",
    "the cartoon {}.",
    "art of the {}.",
    "a drawing of the {}.",
    "a photo of the large {}.",
    "a black and white photo of a {}.",
    "the plushie {}.",
    "a dark photo of a {}.",
    "itap of a {}.",
    "graffiti of the {}.",
    "a toy {}.",
    "itap of my {}.",
    "a photo of a cool {}.",
    "a photo of a small {}.",
    "a tattoo of the {}.",
];

/// The whole RegionSpot model: frozen SAM, frozen CLIP and the trainable [`RegionSpotHead`].
#[derive(Config, Debug)]
pub struct RegionSpotConfig {
    /// SAM (the official code uses ViT-B).
    pub sam: SamConfig,
    /// CLIP, OpenAI layout (the official code loads OpenAI's `clip`).
    pub clip: ClipConfig,
    /// The trainable module; its `sam_dim`, `clip_dim`, `text_dim` must match the two.
    pub head: RegionSpotHeadConfig,
    /// Side of the square input CLIP sees of a whole image (the official 224: CLIP's own
    /// resolution; a larger side interpolates CLIP's position embeddings).
    #[config(default = 224)]
    pub clip_input: usize,
}

/// Sizes of a small RegionSpot built from scratch ([`RegionSpotConfig::small`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SmallRegionSpot {
    /// SAM's input side.
    pub sam_size: usize,
    /// SAM's patch size.
    pub sam_patch: usize,
    /// SAM's encoder width.
    pub sam_width: usize,
    /// SAM's encoder blocks (the last one global).
    pub sam_depth: usize,
    /// SAM's window size (windowed blocks).
    pub sam_window: usize,
    /// SAM's token width (neck output, prompt encoder and mask decoder).
    pub sam_dim: usize,
    /// CLIP (its `image_size` is the teacher's crop side, its `heads` every block's heads:
    /// SAM's, CLIP's and the module's).
    pub clip: SmallClip,
    /// CLIP's input side for whole images ([`RegionSpotConfig::clip_input`]).
    pub clip_input: usize,
    /// Layers of the trainable module.
    pub head_layers: usize,
    /// Feed-forward width of the module.
    pub head_ffn: usize,
}

impl RegionSpotConfig {
    /// The official `clip_type = CLIP_400M`: SAM ViT-B, CLIP ViT-B/16.
    pub fn vit_b_16() -> Self {
        Self::new(
            SamConfig::vit_b(),
            ClipConfig::vit_b_16(ClipLayout::OpenAi),
            RegionSpotHeadConfig::vit_b_16(),
        )
    }

    /// The official `clip_type = CLIP_400M_Large`: SAM ViT-B, CLIP ViT-L/14 at 224.
    pub fn vit_l_14() -> Self {
        Self::new(
            SamConfig::vit_b(),
            ClipConfig::vit_l_14(ClipLayout::OpenAi),
            RegionSpotHeadConfig::vit_l_14(),
        )
    }

    /// A small RegionSpot for the synthetic world: a SAM of `sizes` (the prompt encoder and
    /// mask decoder at its token width, MLPs 2× wide), a small CLIP over a word vocabulary of
    /// `vocab_size` ids padded to `context_length` ([`ClipConfig::small`]), and a module of
    /// `head_layers` layers.
    pub fn small(sizes: SmallRegionSpot, vocab_size: usize, context_length: usize) -> Self {
        let s = sizes;
        let heads = s.clip.heads;
        let grid = s.sam_size / s.sam_patch.max(1);
        let encoder = ImageEncoderViTConfig::new()
            .with_img_size(s.sam_size)
            .with_patch_size(s.sam_patch)
            .with_embed_dim(s.sam_width)
            .with_depth(s.sam_depth)
            .with_num_heads(heads)
            .with_out_chans(s.sam_dim)
            .with_window_size(s.sam_window)
            .with_global_attn_indexes(vec![s.sam_depth.saturating_sub(1)]);
        let sam = SamConfig::new(
            encoder,
            PromptEncoderConfig::new()
                .with_embed_dim(s.sam_dim)
                .with_image_embedding_size([grid, grid])
                .with_input_image_size([s.sam_size, s.sam_size])
                .with_mask_in_chans(8),
            MaskDecoderConfig::new()
                .with_transformer_dim(s.sam_dim)
                .with_transformer(
                    TwoWayTransformerConfig::new()
                        .with_embedding_dim(s.sam_dim)
                        .with_num_heads(heads)
                        .with_mlp_dim(2 * s.sam_dim),
                )
                .with_iou_head_hidden_dim(s.sam_dim),
        );
        let clip = ClipConfig::small(s.clip, vocab_size, context_length);
        let head = RegionSpotHeadConfig::new()
            .with_sam_dim(s.sam_dim)
            .with_clip_dim(s.clip.width)
            .with_text_dim(s.clip.embed_dim)
            .with_heads(heads)
            .with_layers(s.head_layers)
            .with_ffn_dim(s.head_ffn);
        Self::new(sam, clip, head).with_clip_input(s.clip_input)
    }

    /// Checks the sizes: SAM's side a multiple of its patch, CLIP's geometry
    /// ([`ClipConfig::validate`]) and whole-image side, the module's widths those of SAM and
    /// CLIP.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming what is wrong.
    pub fn validate(&self) -> Result<(), DetError> {
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "regionspot model",
                why,
            })
        };
        let e = &self.sam.image_encoder;
        if e.patch_size == 0 || e.img_size == 0 || !e.img_size.is_multiple_of(e.patch_size) {
            return bad(format!(
                "sam.image_encoder.img_size ({}) must be a positive multiple of its patch_size \
                 ({})",
                e.img_size, e.patch_size
            ));
        }
        if e.depth == 0 || e.num_heads == 0 || !e.embed_dim.is_multiple_of(e.num_heads) {
            return bad(format!(
                "SAM's encoder needs a block and a width ({}) divisible by its heads ({})",
                e.embed_dim, e.num_heads
            ));
        }
        self.clip.validate()?;
        let patch = self.clip.vision.patch_size;
        if self.clip_input == 0 || !self.clip_input.is_multiple_of(patch) {
            return bad(format!(
                "clip_input ({}) must be a positive multiple of CLIP's patch size ({patch})",
                self.clip_input
            ));
        }
        let sam_dim = self.sam.mask_decoder.transformer_dim;
        let (clip_dim, text_dim) = (self.clip.vision.width, self.clip.vision.embed_dim);
        let head = &self.head;
        if (head.sam_dim, head.clip_dim, head.text_dim) != (sam_dim, clip_dim, text_dim)
            || self.clip.text.embed_dim != text_dim
        {
            return bad(format!(
                "the module maps {} → {} → {}, SAM gives {sam_dim}, CLIP's vision width is \
                 {clip_dim} and its embeddings {text_dim} (text {})",
                head.sam_dim, head.clip_dim, head.text_dim, self.clip.text.embed_dim
            ));
        }
        if head.heads == 0 || !head.clip_dim.is_multiple_of(head.heads) {
            return bad(format!(
                "the module's heads ({}) must divide its width ({})",
                head.heads, head.clip_dim
            ));
        }
        Ok(())
    }

    /// Builds the model with fresh weights, SAM and CLIP frozen (see [`RegionSpot::freeze`]).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] when the module's widths do not fit SAM and CLIP.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Result<RegionSpot<B>, DetError> {
        self.validate()?;
        Ok(RegionSpot {
            sam: self.sam.init(device),
            clip: self.clip.init(device),
            head: self.head.init(device),
        }
        .freeze())
    }
}

/// RegionSpot (Yang et al., "Recognize Any Regions", NeurIPS 2024): each box prompts frozen
/// SAM for a position-aware token, frozen CLIP gives the image's feature map, and the
/// trainable [`RegionSpotHead`] turns token + feature map into a semantic token scored against
/// CLIP text embeddings of class names.
#[derive(Module, Debug)]
pub struct RegionSpot<B: Backend> {
    /// Frozen SAM.
    pub sam: Sam<B>,
    /// Frozen CLIP (both towers and its logit scale).
    pub clip: Clip<B>,
    /// The trainable module.
    pub head: RegionSpotHead<B>,
}

/// What the frozen models give for one batch: everything RegionSpot needs of SAM and CLIP,
/// detached from any graph. This is what the per-image cache stores.
#[derive(Debug, Clone)]
pub struct FrozenFeatures<B: Backend> {
    /// SAM's position-aware token per box (the first mask token after the two-way
    /// transformer, the official `masks_token` with `multimask_output=False`), `[B, N, 256]`.
    pub region_tokens: Tensor<B, 3>,
    /// SAM's low-resolution mask logits per box, `[B, N, 4h, 4w]` in the padded input frame
    /// (see [`Sam::postprocess_masks`]).
    pub masks: Tensor<B, 4>,
    /// CLIP's feature map (`encode_image_featuremap`: the last block's class and patch tokens,
    /// before `ln_post`), `[B, 1 + gh·gw, clip_dim]`.
    pub clip_features: Tensor<B, 3>,
    /// The box prompts in SAM's input frame, `[B, N, 4]`, when known (the cache file does not
    /// store them; [`super::cached_frozen_features`] puts them back). Only a module with
    /// [`super::RegionSpotHead::query_pos`] reads them.
    pub boxes: Option<Tensor<B, 3>>,
}

/// What [`RegionSpot::forward`] returns.
#[derive(Debug, Clone)]
pub struct RegionSpotOutput<B: Backend> {
    /// Class logits per box `exp(logit_scale) · norm(semantic) · textᵀ`, `[B, N, C]`.
    pub logits: Tensor<B, 3>,
    /// The semantic tokens, `[B, N, text_dim]` (not normalised).
    pub semantic_tokens: Tensor<B, 3>,
    /// SAM's mask logits per box, `[B, N, 4h, 4w]` (see [`FrozenFeatures::masks`]).
    pub masks: Tensor<B, 4>,
}

impl<B: Backend> RegionSpot<B> {
    /// Marks every SAM and CLIP parameter as needing no gradient: a backward pass leaves them
    /// out and an optimizer never sees them. Call it again after loading a checkpoint into
    /// the model ([`super::load_regionspot`] does).
    pub fn freeze(self) -> Self {
        Self {
            sam: self.sam.no_grad(),
            clip: self.clip.no_grad(),
            head: self.head,
        }
    }

    /// Runs the frozen models (no graph is kept: outputs are detached).
    ///
    /// # Shapes
    /// - `sam_images`: `[B, 3, S, S]` preprocessed for SAM ([`Sam::preprocess`])
    /// - `boxes`: `[B, N, 4]` `x1 y1 x2 y2` in SAM's input frame
    ///   ([`crate::sam::ResizeLongestSide::apply_boxes`])
    /// - `clip_pixels`: `[B, 3, H, W]` normalised for CLIP
    ///
    /// # Errors
    /// [`DetError::Shape`] for mis-shaped inputs.
    pub fn frozen_features(
        &self,
        sam_images: Tensor<B, 4>,
        boxes: Tensor<B, 3>,
        clip_pixels: Tensor<B, 4>,
    ) -> Result<FrozenFeatures<B>, DetError> {
        let [b, n, four] = boxes.dims();
        if four != 4 || n == 0 || b != sam_images.dims()[0] || b != clip_pixels.dims()[0] {
            return Err(DetError::Shape {
                op: "RegionSpot::frozen_features",
                what: "boxes",
                got: vec![b, n, four],
                expected: format!(
                    "[B, N ≥ 1, 4] with B = {} (SAM images) = {} (CLIP images)",
                    sam_images.dims()[0],
                    clip_pixels.dims()[0]
                ),
            });
        }
        let (region_tokens, masks) = self.position_aware_tokens(sam_images, boxes.clone())?;
        Ok(FrozenFeatures {
            region_tokens,
            masks,
            clip_features: self.clip_features(clip_pixels)?,
            boxes: Some(boxes.detach()),
        })
    }

    /// SAM's position-aware tokens `[B, N, C]` and mask logits `[B, N, 4h, 4w]` for boxes
    /// `[B, N, 4]` on preprocessed images `[B, 3, S, S]`.
    ///
    /// # Errors
    /// [`DetError::Shape`] for mis-shaped inputs.
    pub fn position_aware_tokens(
        &self,
        sam_images: Tensor<B, 4>,
        boxes: Tensor<B, 3>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 4>), DetError> {
        let embeddings = self.sam.embed_images(sam_images)?.detach();
        let [b, n, _] = boxes.dims();
        let mut tokens = Vec::with_capacity(b);
        let mut masks = Vec::with_capacity(b);
        for i in 0..b {
            let image = embeddings.clone().narrow(0, i, 1);
            let image_boxes = boxes.clone().narrow(0, i, 1).reshape([n, 4]);
            let out = self
                .sam
                .decode(image, None, Some(image_boxes), None, false)?;
            // multimask_output = false: the first mask token and its mask.
            tokens.push(out.mask_tokens().narrow(1, 0, 1).swap_dims(0, 1));
            masks.push(out.masks.swap_dims(0, 1));
        }
        Ok((
            Tensor::cat(tokens, 0).detach(),
            Tensor::cat(masks, 0).detach(),
        ))
    }

    /// CLIP's feature map `[B, 1 + gh·gw, D]` (class token first), detached.
    ///
    /// # Errors
    /// [`DetError::Shape`] for mis-shaped pixels.
    pub fn clip_features(&self, clip_pixels: Tensor<B, 4>) -> Result<Tensor<B, 3>, DetError> {
        let out = self.clip.vision.forward(clip_pixels)?;
        let [b, d, h, w] = out.grid.dims();
        let patches = out.grid.reshape([b, d, h * w]).swap_dims(1, 2);
        let class = out.class_token.unsqueeze_dim(1);
        Ok(Tensor::cat(vec![class, patches], 1).detach())
    }

    /// Class embeddings `[C, E]` (normalised) from token ids of `templates` sentences per
    /// class, class-major (`[C·T, L]`: class 0's templates first): the mean of CLIP's text
    /// embeddings over a class's templates, then L2-normalised, as the official
    /// `get_text_feat`. Detached.
    ///
    /// # Errors
    /// [`DetError::Shape`] when the rows are not a multiple of `templates`.
    pub fn class_embeddings_from_ids(
        &self,
        ids: Tensor<B, 2, Int>,
        templates: usize,
    ) -> Result<Tensor<B, 2>, DetError> {
        let [rows, l] = ids.dims();
        if templates == 0 || rows == 0 || !rows.is_multiple_of(templates) {
            return Err(DetError::Shape {
                op: "RegionSpot::class_embeddings_from_ids",
                what: "ids",
                got: vec![rows, l],
                expected: format!("[C·{templates}, L] with C ≥ 1"),
            });
        }
        let embeds = self.clip.text.forward(ids)?.text_embeds;
        let e = embeds.dims()[1];
        let mean = embeds
            .reshape([rows / templates, templates, e])
            .mean_dim(1)
            .reshape([rows / templates, e]);
        Ok(l2_normalize(mean).detach())
    }

    /// Class embeddings `[C, E]` for class names through `templates` (each with one `{}`,
    /// e.g. [`PROMPT_TEMPLATES`]), tokenised by CLIP's tokenizer (which must pad to a fixed
    /// length). Names are cleaned as the official code does (`-other`, `-merged`, `-stuff`
    /// removed).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for no names, no templates or a template without `{}`;
    /// tokenizer errors.
    pub fn class_embeddings(
        &self,
        tokenizer: &TextTokenizer,
        names: &[impl AsRef<str>],
        templates: &[&str],
    ) -> Result<Tensor<B, 2>, DetError> {
        if names.is_empty() || templates.is_empty() || templates.iter().any(|t| !t.contains("{}")) {
            return Err(DetError::InvalidOption {
                op: "RegionSpot::class_embeddings",
                why: "give at least one class name and templates that each contain `{}`".into(),
            });
        }
        let sentences: Vec<String> = names
            .iter()
            .flat_map(|name| {
                let clean = clean_class_name(name.as_ref());
                templates.iter().map(move |t| t.replace("{}", &clean))
            })
            .collect();
        let encoded = tokenizer.encode_batch(&sentences)?;
        let device = self.head.projector.weight.device();
        let (ids, _) = batch_tensors::<B>(&encoded, &device)?;
        self.class_embeddings_from_ids(ids, templates.len())
    }

    /// The whole model on the fly: frozen features, then [`Self::forward_cached`].
    ///
    /// # Shapes
    /// As [`Self::frozen_features`]; `class_embeddings`: `[C, E]` normalised.
    ///
    /// # Errors
    /// [`DetError::Shape`] for mis-shaped inputs.
    pub fn forward(
        &self,
        sam_images: Tensor<B, 4>,
        boxes: Tensor<B, 3>,
        clip_pixels: Tensor<B, 4>,
        class_embeddings: Tensor<B, 2>,
    ) -> Result<RegionSpotOutput<B>, DetError> {
        let features = self.frozen_features(sam_images, boxes, clip_pixels)?;
        self.forward_cached(&features, class_embeddings)
    }

    /// The trainable path from frozen features (computed now or read from the cache).
    ///
    /// # Errors
    /// [`DetError::Shape`] for mis-shaped features or class embeddings.
    pub fn forward_cached(
        &self,
        features: &FrozenFeatures<B>,
        class_embeddings: Tensor<B, 2>,
    ) -> Result<RegionSpotOutput<B>, DetError> {
        let key_positions = match self.head.key_pos {
            Some(_) => Some(self.key_positions(features.clip_features.dims()[1])?),
            None => None,
        };
        let query_positions = match (&self.head.query_pos, &features.boxes) {
            (None, _) => None,
            (Some(_), Some(boxes)) => Some(self.box_positions(boxes.clone())),
            (Some(_), None) => {
                return Err(DetError::InvalidOption {
                    op: "RegionSpot::forward_cached",
                    why: "the module adds box positions to its queries, and these features \
                          carry no boxes"
                        .into(),
                });
            }
        };
        let semantic_tokens = self.head.forward_with_positions(
            features.region_tokens.clone(),
            features.clip_features.clone(),
            key_positions,
            query_positions,
        )?;
        let logits = self.logits(semantic_tokens.clone(), class_embeddings)?;
        Ok(RegionSpotOutput {
            logits,
            semantic_tokens,
            masks: features.masks.clone(),
        })
    }

    /// SAM's positional encoding (its prompt encoder's random-Fourier `pe_layer`) of the
    /// centre of each patch of CLIP's square `g × g` grid, `[1, 1 + g², sam_dim]`, with zeros
    /// for the class token. SAM and CLIP see the same square (the image padded at the bottom
    /// and right), so a position means the same place in both.
    ///
    /// # Errors
    /// [`DetError::Shape`] when `tokens − 1` is not a square number.
    pub fn key_positions(&self, tokens: usize) -> Result<Tensor<B, 3>, DetError> {
        let g = clip_grid_side(tokens, "RegionSpot::key_positions")?;
        let grid = self.sam.prompt_encoder.pe_layer.forward_grid([g, g]);
        let c = grid.dims()[0];
        let patches = grid.reshape([c, g * g]).swap_dims(0, 1);
        let class = Tensor::zeros([1, c], &patches.device());
        Ok(Tensor::cat(vec![class, patches], 0)
            .unsqueeze::<3>()
            .detach())
    }

    /// SAM's positional encoding of each box's centre, `[B, N, sam_dim]`, for boxes
    /// `[B, N, 4]` in SAM's input frame (the frame [`Self::key_positions`] encodes patches
    /// in).
    pub fn box_positions(&self, boxes: Tensor<B, 3>) -> Tensor<B, 3> {
        let [b, n, _] = boxes.dims();
        let side = self.sam.image_encoder.img_size();
        let centres = (boxes.clone().narrow(2, 0, 2) + boxes.narrow(2, 2, 2)) / 2.0;
        self.sam
            .prompt_encoder
            .pe_layer
            .forward_with_coords(centres.reshape([b, n, 2]), [side, side])
            .detach()
    }

    /// `exp(logit_scale) · (s / (‖s‖ + 1e-7)) · textᵀ` (the official `get_logits`; the class
    /// embeddings are already normalised), with CLIP's frozen logit scale.
    ///
    /// # Shapes
    /// - `semantic_tokens`: `[B, N, E]`, `class_embeddings`: `[C, E]` → `[B, N, C]`
    ///
    /// # Errors
    /// [`DetError::Shape`] when the widths differ.
    pub fn logits(
        &self,
        semantic_tokens: Tensor<B, 3>,
        class_embeddings: Tensor<B, 2>,
    ) -> Result<Tensor<B, 3>, DetError> {
        let [b, _, e] = semantic_tokens.dims();
        let [c, et] = class_embeddings.dims();
        if et != e || c == 0 {
            return Err(DetError::Shape {
                op: "RegionSpot::logits",
                what: "class_embeddings",
                got: vec![c, et],
                expected: format!("[C ≥ 1, {e}] like the semantic tokens"),
            });
        }
        let norm = semantic_tokens.clone().powi_scalar(2).sum_dim(2).sqrt() + 1e-7;
        let scale = self
            .clip
            .logit_scale
            .val()
            .detach()
            .exp()
            .reshape([1, 1, 1]);
        let similarity = (semantic_tokens / norm).matmul(
            class_embeddings
                .transpose()
                .unsqueeze::<3>()
                .expand([b, e, c]),
        );
        Ok(similarity * scale)
    }
}

/// The side `g` of CLIP's square patch grid from its token count `1 + g²` (class token
/// first), as [`FrozenFeatures::clip_features`] holds them.
///
/// # Errors
/// [`DetError::Shape`] (naming `op`) when `tokens − 1` is not a positive square number.
pub fn clip_grid_side(tokens: usize, op: &'static str) -> Result<usize, DetError> {
    let g = (tokens.saturating_sub(1) as f64).sqrt().round() as usize;
    if g == 0 || g * g + 1 != tokens {
        return Err(DetError::Shape {
            op,
            what: "clip_features",
            got: vec![tokens],
            expected: "1 + g² tokens (a class token and a square grid)".into(),
        });
    }
    Ok(g)
}

/// The official class-name cleaning before templating.
pub fn clean_class_name(name: &str) -> String {
    name.replace("-other", "")
        .replace("-merged", "")
        .replace("-stuff", "")
}

impl<B: Backend> FrozenFeatures<B> {
    /// Joins per-image features (e.g. read from the cache) into one batch.
    ///
    /// # Errors
    /// [`DetError::Shape`] when the list is empty or the images' box counts or feature sizes
    /// differ.
    pub fn cat(parts: Vec<Self>) -> Result<Self, DetError> {
        let first = parts.first().ok_or_else(|| DetError::Shape {
            op: "FrozenFeatures::cat",
            what: "parts",
            got: vec![0],
            expected: "at least one image".into(),
        })?;
        let trailing = |f: &Self| {
            let (t, m, c) = (
                f.region_tokens.dims(),
                f.masks.dims(),
                f.clip_features.dims(),
            );
            [t[1], t[2], m[1], m[2], m[3], c[1], c[2]]
        };
        let want = trailing(first);
        if let Some(bad) = parts.iter().find(|p| trailing(p) != want) {
            return Err(DetError::Shape {
                op: "FrozenFeatures::cat",
                what: "region_tokens / masks / clip_features",
                got: trailing(bad).to_vec(),
                expected: format!("{want:?} like the first image"),
            });
        }
        let all_boxes = parts.iter().all(|p| p.boxes.is_some());
        let (mut t, mut m, mut c, mut x) = (vec![], vec![], vec![], vec![]);
        for p in parts {
            t.push(p.region_tokens);
            m.push(p.masks);
            c.push(p.clip_features);
            x.extend(p.boxes);
        }
        Ok(Self {
            region_tokens: Tensor::cat(t, 0),
            masks: Tensor::cat(m, 0),
            clip_features: Tensor::cat(c, 0),
            boxes: all_boxes.then(|| Tensor::cat(x, 0)),
        })
    }
}
