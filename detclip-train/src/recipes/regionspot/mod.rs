//! `regionspot`: RegionSpot on the shared learner. Frozen SAM gives a position-aware token per
//! ground-truth box, frozen CLIP gives the image's feature map, and only the cross-attention
//! module ([`detclip_models::regionspot::RegionSpotHead`]) trains, with a sigmoid focal loss
//! over the source's class names (Yang et al., "Recognize Any Regions", NeurIPS 2024).
//!
//! - The model is [`RegionSpot`] itself: SAM and CLIP carry no gradient, so the learner's
//!   optimiser never sees them and keeps no state for them.
//! - SAM and CLIP come from official checkpoints ([`FrozenWeights`]) or, on the synthetic
//!   world, from the small CLIP teacher pre-trained by [`teacher`] before the first step
//!   ([`Recipe::prepare`]).
//! - Their outputs can be cached per image ([`RegionSpotRecipe::cache_dir`], filled by
//!   `detclip regionspot cache`, see [`cache_features`]), since they never change.
//! - Inference follows the paper's recognition protocol: the boxes are the samples' boxes
//!   (ground truth in evaluation), each box scored against every class.

mod cache;
pub mod teacher;
mod text;

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::activation::sigmoid;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use detclip_core::data::synthetic::{Split, World, WorldConfig};
use detclip_core::data::{Batch, Normalize, SourceKind, TestTransform};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::{DetError, Result};
use detclip_models::clip::{
    ClipConfig, ClipLayout, ClipTextConfig, ClipVisionConfig, EotPooling, l2_normalize,
};
use detclip_models::import::{LoadOptions, load_checkpoint};
use detclip_models::regionspot::{
    FrozenFeatures, RegionSpot, RegionSpotConfig, RegionSpotHeadConfig, RegionSpotLossConfig,
    cached_frozen_features, clip_grid_side, regionspot_loss,
};
use detclip_models::sam::{
    ImageEncoderViTConfig, MaskDecoderConfig, PromptEncoderConfig, SamConfig,
    TwoWayTransformerConfig, sam_keys,
};
use serde::{Deserialize, Serialize};

pub use cache::{CacheReport, cache_features};
pub use teacher::{SamTarget, TeacherConfig, TeacherReport};
pub use text::{TextSide, words_of};

use crate::data::{DataConfig, DatasetConfig, SourceConfig, SyntheticConfig};
use crate::learner::{Decay, LearnerConfig};
use crate::mask::Rle;
use crate::recipe::{Detected, LossTerms, ParamGroup, Recipe};

/// Sizes of small SAM- and CLIP-shaped encoders (the synthetic world, tests).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmallSizes {
    /// SAM's input side.
    pub sam_size: usize,
    /// SAM's patch size.
    pub sam_patch: usize,
    /// SAM's encoder width.
    pub sam_width: usize,
    /// SAM's encoder blocks.
    pub sam_depth: usize,
    /// SAM's window size (windowed blocks).
    pub sam_window: usize,
    /// SAM's token width (neck output, prompt encoder and mask decoder).
    pub sam_dim: usize,
    /// CLIP's training resolution (the teacher's crops).
    pub clip_size: usize,
    /// CLIP's input side for whole images (position embeddings are interpolated).
    pub clip_input: usize,
    /// CLIP's patch size.
    pub clip_patch: usize,
    /// CLIP's vision width.
    pub clip_width: usize,
    /// CLIP's text width.
    pub text_width: usize,
    /// Blocks of each CLIP tower.
    pub clip_layers: usize,
    /// CLIP's joint embedding width.
    pub embed_dim: usize,
    /// Attention heads (SAM, CLIP and the module).
    pub heads: usize,
    /// Layers of the trainable module.
    pub head_layers: usize,
    /// Feed-forward width of the module.
    pub head_ffn: usize,
}

/// Which SAM and CLIP.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RegionSpotModel {
    /// SAM ViT-B and CLIP ViT-B/16 at 224 (the official `CLIP_400M`).
    VitB16,
    /// SAM ViT-B and CLIP ViT-L/14 at 224 (`CLIP_400M_Large`).
    VitL14,
    /// Small encoders of these sizes.
    Small(SmallSizes),
}

/// Official SAM and CLIP checkpoints, loaded before training.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrozenWeights {
    /// `sam_vit_b_01ec64.pth`.
    pub sam: PathBuf,
    /// OpenAI's CLIP state dict (`ViT-B-16.pt` / `ViT-L-14.pt` saved as a state dict).
    pub clip: PathBuf,
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpotLossSettings {
    /// Focal α.
    pub alpha: f32,
    /// Focal γ.
    pub gamma: f32,
}

/// Inference settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpotTestConfig {
    /// Shorter side of the test resize.
    pub short_side: u32,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Detections kept per image (box × class pairs, best first).
    pub max_detections: usize,
}

/// The `regionspot` recipe.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegionSpotRecipe {
    /// SAM and CLIP.
    pub model: RegionSpotModel,
    /// How class names are tokenised.
    pub text: TextSide,
    /// Prompt templates, each with one `{}`; a class embedding is the normalised mean over
    /// them.
    pub templates: Vec<String>,
    /// Official SAM and CLIP weights, if any.
    pub weights: Option<FrozenWeights>,
    /// The small CLIP teacher's pre-training (synthetic world), if any.
    pub teacher: Option<TeacherConfig>,
    /// Where SAM's and CLIP's outputs are cached per image, if anywhere.
    pub cache_dir: Option<PathBuf>,
    /// Whether the module's cross-attention keys carry SAM's positional encoding of each CLIP
    /// patch ([`detclip_models::regionspot::RegionSpotHead::key_pos`]; not in the official
    /// module, so `false` by default and for official checkpoints).
    #[serde(default)]
    pub key_positions: bool,
    /// Whether the module's cross-attention queries carry SAM's positional encoding of each
    /// box's centre ([`detclip_models::regionspot::RegionSpotHead::query_pos`]; not in the
    /// official module).
    #[serde(default)]
    pub query_positions: bool,
    /// Whether the module layer-normalises CLIP's tokens first (the official `ln_clip`, which
    /// the official forward defines but never calls).
    #[serde(default)]
    pub clip_norm: bool,
    /// What scores the boxes at inference: the trained module (the default) or, as a
    /// baseline, CLIP's own feature map pooled in each box.
    #[serde(default)]
    pub recognizer: Recognizer,
    /// The loss.
    pub loss: RegionSpotLossSettings,
    /// Inference.
    pub test: RegionSpotTestConfig,
    /// Training sources (detection or grounding: boxes are the prompts) and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
}

/// What scores a box against the classes at inference.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Recognizer {
    /// RegionSpot: the trained module's semantic token.
    #[default]
    Module,
    /// The baseline the module must beat: CLIP's patch tokens projected into the joint space
    /// (`proj(ln_post(·))`, as the class token is) and averaged over the patches whose centre
    /// lies in the box (the patch under the box's centre when none does). SAM and the module
    /// are not used for the scores.
    PooledClip,
}

const TEMPLATE: &str = "a photo of a {}.";

impl RegionSpotRecipe {
    /// The synthetic-world preset: small SAM and CLIP, the CLIP teacher pre-trained on every
    /// concept, the module trained on base concepts, evaluated on seen and held-out ones.
    ///
    /// The module departs from the official one in three switches (all off by default, so
    /// official checkpoints load unchanged): `clip_norm` (the official, never-called
    /// `ln_clip`), and SAM's positional encoding on the keys (`key_positions`) and queries
    /// (`query_positions`). Without them the module cannot find its box in the small CLIP's
    /// feature map and seen AP stays at chance (the book's RegionSpot chapter has the runs).
    pub fn synthetic() -> Self {
        let world = |seed, images| {
            SyntheticConfig::new(seed, images, (112, 160), (3, 20), SourceKind::Detection)
        };
        let names = World::new(WorldConfig::default())
            .map(|w| w.vocabulary(Split::Test))
            .unwrap_or_default();
        let templates = vec![TEMPLATE.to_string()];
        Self {
            model: RegionSpotModel::Small(SmallSizes {
                sam_size: 128,
                sam_patch: 8,
                sam_width: 32,
                sam_depth: 2,
                sam_window: 4,
                sam_dim: 32,
                clip_size: 32,
                clip_input: 128,
                clip_patch: 8,
                clip_width: 64,
                text_width: 64,
                clip_layers: 2,
                embed_dim: 32,
                heads: 4,
                head_layers: 2,
                head_ffn: 128,
            }),
            text: TextSide::Words {
                words: words_of(&names, &templates),
                context: 8,
            },
            templates,
            weights: None,
            teacher: Some(TeacherConfig {
                world_seed: 77,
                images: 600,
                steps: 400,
                batch_size: 64,
                lr: 2e-3,
                margin: 0.1,
                scenes_per_step: 8,
                sam_steps: 300,
                sam_target: SamTarget::Mask,
                sam_token_box_weight: 1.0,
            }),
            cache_dir: None,
            key_positions: true,
            query_positions: true,
            clip_norm: true,
            recognizer: Recognizer::Module,
            loss: RegionSpotLossSettings {
                alpha: 0.25,
                gamma: 2.0,
            },
            test: RegionSpotTestConfig {
                short_side: 128,
                max_long: Some(192),
                max_detections: 100,
            },
            data: DataConfig {
                sources: vec![SourceConfig::synthetic(
                    "detection",
                    world(1, 1500),
                    8,
                    vec![128],
                )],
                eval: Some(
                    SyntheticConfig {
                        kind: SourceKind::Grounding,
                        ..world(3, 150)
                    }
                    .into(),
                ),
                size_divisor: 32,
            },
            learner: {
                let mut l = LearnerConfig::adamw(1200, 1e-3);
                l.optim.clip_grad_norm = Some(1.0);
                l.schedule.warmup_steps = 30;
                l.schedule.decay = Decay::Cosine { min_factor: 0.05 };
                l.checkpoint_every = 100;
                l
            },
        }
    }

    /// A tiny preset for tests: narrow encoders, a short teacher, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::synthetic();
        r.model = RegionSpotModel::Small(SmallSizes {
            sam_size: 64,
            sam_patch: 8,
            sam_width: 16,
            sam_depth: 1,
            sam_window: 4,
            sam_dim: 16,
            clip_size: 16,
            clip_input: 32,
            clip_patch: 8,
            clip_width: 16,
            text_width: 16,
            clip_layers: 1,
            embed_dim: 16,
            heads: 2,
            head_layers: 1,
            head_ffn: 32,
        });
        if let Some(t) = &mut r.teacher {
            t.images = 8;
            t.steps = 4;
            t.batch_size = 8;
            t.scenes_per_step = 2;
            t.sam_steps = 3;
        }
        let tiny_world =
            |seed, images, kind| SyntheticConfig::new(seed, images, (64, 80), (2, 16), kind);
        for s in &mut r.data.sources {
            s.dataset = DatasetConfig::Synthetic(tiny_world(1, 12, SourceKind::Detection));
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = 2;
            s.flip_prob = 0.0;
        }
        r.data.eval = Some(tiny_world(3, 4, SourceKind::Grounding).into());
        r.test.short_side = 64;
        r.test.max_long = Some(96);
        r.learner.steps = 20;
        r.learner.optim.lr = 3e-3;
        r.learner.schedule.warmup_steps = 2;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }

    /// The model configuration these settings describe.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] when the text side does not fit the model.
    pub fn model_config(&self) -> Result<RegionSpotConfig> {
        let mut config = self.base_model_config()?;
        config.head.key_positions = self.key_positions;
        config.head.query_positions = self.query_positions;
        config.head.clip_norm = self.clip_norm;
        Ok(config)
    }

    fn base_model_config(&self) -> Result<RegionSpotConfig> {
        match &self.model {
            RegionSpotModel::VitB16 => Ok(RegionSpotConfig::vit_b_16()),
            RegionSpotModel::VitL14 => Ok(RegionSpotConfig::vit_l_14()),
            RegionSpotModel::Small(s) => {
                let vocab = self
                    .text
                    .vocab_size()
                    .ok_or_else(|| DetError::InvalidOption {
                        op: "regionspot",
                        why: "small encoders take a word vocabulary (`text: words`), not a \
                          tokenizer file"
                            .into(),
                    })?;
                Ok(small_config(s, vocab, self.text.context()))
            }
        }
    }

    /// The frozen models' inputs for image `i` of a batch: SAM's `[1, 3, S, S]` and CLIP's
    /// `[1, 3, C, C]` (the image padded to a square at the bottom and right, as SAM pads,
    /// then resized), and the factor that maps batch pixels to SAM's frame.
    fn frozen_inputs<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        i: usize,
    ) -> (Tensor<B, 4>, Tensor<B, 4>, f32) {
        let (h, w) = batch.image_sizes[i];
        let side = h.max(w);
        let device = batch.images.device();
        let image = batch.images.clone().slice(s![i..i + 1, .., 0..h, 0..w]);
        let square = Tensor::<B, 4>::zeros([1, 3, side, side], &device)
            .slice_assign(s![.., .., 0..h, 0..w], image);
        let sam_side = model.sam.image_encoder.img_size();
        let clip_side = self.clip_input();
        let bilinear = || InterpolateOptions::new(InterpolateMode::Bilinear);
        let sam = interpolate(square.clone(), [sam_side, sam_side], bilinear());
        let clip = to_clip_normalisation(interpolate(square, [clip_side, clip_side], bilinear()));
        (sam, clip, sam_side as f32 / side as f32)
    }

    /// SAM's binary masks (logit > 0) of image `i`'s boxes in the batch frame, from the mask
    /// logits of [`FrozenFeatures::masks`] (SAM's input is the image padded to a square and
    /// resized, see `frozen_inputs`), through SAM's own postprocessing.
    fn box_masks<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        i: usize,
        logits: Tensor<B, 4>,
    ) -> Result<Vec<Rle>> {
        let (h, w) = batch.image_sizes[i];
        let sam_side = model.sam.image_encoder.img_size();
        let scale = sam_side as f64 / h.max(w) as f64;
        let input = [
            ((h as f64 * scale).round() as usize).clamp(1, sam_side),
            ((w as f64 * scale).round() as usize).clamp(1, sam_side),
        ];
        let masks = model.sam.postprocess_masks(logits, input, [h, w])?;
        let [_, n, _, _] = masks.dims();
        let logits: Vec<f32> =
            masks
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| DetError::InvalidOption {
                    op: "regionspot masks",
                    why: format!("{e:?}"),
                })?;
        Ok(logits
            .chunks(h * w)
            .take(n)
            .map(|m| {
                let bits: Vec<bool> = m.iter().map(|&v| v > 0.0).collect();
                Rle::encode(&bits, h, w)
            })
            .collect())
    }

    fn clip_input(&self) -> usize {
        match &self.model {
            RegionSpotModel::Small(s) => s.clip_input,
            _ => 224,
        }
    }

    /// SAM's and CLIP's outputs for image `i` of a batch with `boxes` (batch pixels): read
    /// from or written to the cache when there is one.
    fn frozen<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        i: usize,
        boxes: &[[f32; 4]],
    ) -> Result<FrozenFeatures<B>> {
        let (sam, clip, scale) = self.frozen_inputs(model, batch, i);
        let scaled: Vec<[f32; 4]> = boxes
            .iter()
            .map(|b| [b[0] * scale, b[1] * scale, b[2] * scale, b[3] * scale])
            .collect();
        let device = sam.device();
        match &self.cache_dir {
            Some(dir) => {
                let key = format!("{}/{}", self.frozen_fingerprint(), batch.samples[i].key);
                cached_frozen_features(
                    model,
                    &self.model_config()?,
                    dir,
                    Path::new(&key),
                    &scaled,
                    sam,
                    clip,
                )
            }
            None => {
                let flat: Vec<f32> = scaled.iter().flatten().copied().collect();
                let boxes =
                    Tensor::<B, 3>::from_data(TensorData::new(flat, [1, scaled.len(), 4]), &device);
                model.frozen_features(sam, boxes, clip)
            }
        }
    }

    /// What the frozen weights depend on (model, text, weights, teacher, seed), hashed: part
    /// of every cache key, so a cache made with other frozen weights is never read.
    pub fn frozen_fingerprint(&self) -> String {
        let what = serde_json::json!([
            self.model,
            self.text,
            self.weights,
            self.teacher,
            self.learner.seed
        ]);
        let h = what
            .to_string()
            .bytes()
            .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
                (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
            });
        format!("{h:016x}")
    }

    /// Class embeddings `[C, E]` (normalised, detached) of `names` through the templates.
    ///
    /// # Errors
    /// Text errors.
    pub fn class_embeddings<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        names: &[String],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let sentences: Vec<String> = names
            .iter()
            .flat_map(|n| self.templates.iter().map(move |t| t.replace("{}", n)))
            .collect();
        let ids = self.text.ids::<B>(&sentences, device)?;
        model.class_embeddings_from_ids(ids, self.templates.len())
    }

    /// The boxes of sample `i` and their class in `vocabulary` (boxes of other classes are
    /// left out).
    fn labelled_boxes<B: Backend>(
        batch: &Batch<B>,
        i: usize,
        vocabulary: &[String],
    ) -> (Vec<[f32; 4]>, Vec<i64>) {
        let sample = &batch.samples[i];
        sample
            .training_instances()
            .filter_map(|inst| {
                let name = &sample.concepts[*inst.concepts.first()?].name;
                let label = vocabulary.iter().position(|v| v == name)?;
                Some((inst.bbox, label as i64))
            })
            .unzip()
    }
}

/// [`Recognizer::PooledClip`]'s logits `[1, N, C]` for `boxes` (batch pixels; `scale` maps
/// them to CLIP's input): CLIP's logit scale times the cosine between each box's pooled,
/// projected patch tokens and the (normalised) class embeddings.
fn pooled_clip_logits<B: Backend>(
    model: &RegionSpot<B>,
    features: &FrozenFeatures<B>,
    boxes: &[[f32; 4]],
    scale: f32,
    classes: Tensor<B, 2>,
) -> Result<Tensor<B, 3>> {
    let [_, l, d] = features.clip_features.dims();
    let g = clip_grid_side(l, "regionspot pooled_clip")?;
    let vision = &model.clip.vision;
    let grid = features
        .clip_features
        .clone()
        .narrow(0, 0, 1)
        .narrow(1, 1, g * g)
        .swap_dims(1, 2)
        .reshape([1, d, g, g]);
    let dense = vision.project_grid(grid);
    let e = dense.dims()[1];
    let tokens = dense.reshape([e, g * g]).transpose();
    let patch = vision.patch_size();
    let weights: Vec<f32> = boxes
        .iter()
        .flat_map(|b| teacher::box_weights(b.map(|v| v * scale), patch, g, 0, 1))
        .collect();
    let device = tokens.device();
    let weights =
        Tensor::<B, 2>::from_data(TensorData::new(weights, [boxes.len(), g * g]), &device);
    let pooled = l2_normalize(weights.matmul(tokens));
    let logit_scale = model.clip.logit_scale.val().exp().reshape([1, 1]);
    Ok((pooled.matmul(classes.transpose()) * logit_scale).unsqueeze())
}

/// ImageNet-normalised pixels (the data pipeline's) to CLIP's normalisation.
fn to_clip_normalisation<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let imagenet = Normalize::imagenet();
    let device = x.device();
    let per_channel = |f: &dyn Fn(usize) -> f32| {
        Tensor::<B, 1>::from_data(
            TensorData::new((0..3).map(f).collect::<Vec<_>>(), [3]),
            &device,
        )
        .reshape([1, 3, 1, 1])
    };
    let a = per_channel(&|c| imagenet.std[c] / teacher::CLIP_STD[c]);
    let b = per_channel(&|c| (imagenet.mean[c] - teacher::CLIP_MEAN[c]) / teacher::CLIP_STD[c]);
    x * a + b
}

fn small_config(s: &SmallSizes, vocab: usize, context: usize) -> RegionSpotConfig {
    let grid = s.sam_size / s.sam_patch;
    let encoder = ImageEncoderViTConfig::new()
        .with_img_size(s.sam_size)
        .with_patch_size(s.sam_patch)
        .with_embed_dim(s.sam_width)
        .with_depth(s.sam_depth)
        .with_num_heads(s.heads)
        .with_out_chans(s.sam_dim)
        .with_window_size(s.sam_window)
        .with_global_attn_indexes(vec![s.sam_depth - 1]);
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
                    .with_num_heads(s.heads)
                    .with_mlp_dim(2 * s.sam_dim),
            )
            .with_iou_head_hidden_dim(s.sam_dim),
    );
    let layout = ClipLayout::OpenAi;
    let clip = ClipConfig::new(
        ClipVisionConfig::new()
            .with_image_size(s.clip_size)
            .with_patch_size(s.clip_patch)
            .with_width(s.clip_width)
            .with_layers(s.clip_layers)
            .with_heads(s.heads)
            .with_mlp_width(4 * s.clip_width)
            .with_embed_dim(s.embed_dim)
            .with_layout(layout),
        ClipTextConfig::new()
            .with_vocab_size(vocab)
            .with_context_length(context)
            .with_width(s.text_width)
            .with_layers(s.clip_layers)
            .with_heads(s.heads)
            .with_mlp_width(4 * s.text_width)
            .with_embed_dim(s.embed_dim)
            .with_layout(layout)
            .with_pooling(EotPooling::ArgMax),
    );
    let head = RegionSpotHeadConfig::new()
        .with_sam_dim(s.sam_dim)
        .with_clip_dim(s.clip_width)
        .with_text_dim(s.embed_dim)
        .with_heads(s.heads)
        .with_layers(s.head_layers)
        .with_ffn_dim(s.head_ffn);
    RegionSpotConfig::new(sam, clip, head)
}

impl Recipe for RegionSpotRecipe {
    const NAME: &'static str = "regionspot";
    const GIVEN_BOXES: bool = true;
    type Model<B: Backend> = RegionSpot<B>;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<RegionSpot<B>> {
        self.model_config()?.init(device)
    }

    fn learner(&self) -> &LearnerConfig {
        &self.learner
    }

    fn data(&self) -> &DataConfig {
        &self.data
    }

    fn param_group(path: &[String]) -> ParamGroup {
        match path.first().map(String::as_str) {
            Some("sam") => ParamGroup::Backbone,
            Some("clip") => ParamGroup::Language,
            _ => ParamGroup::New,
        }
    }

    fn test_transform(&self) -> TestTransform {
        TestTransform {
            short: self.test.short_side,
            max_long: self.test.max_long,
            normalize: Normalize::imagenet(),
        }
    }

    /// One file: an official RegionSpot checkpoint (`regionspot_{bb,bl,bl_336}.pth`: SAM, CLIP
    /// and the trained module, read through
    /// [`regionspot_keys`](detclip_models::regionspot::regionspot_keys)); or two: SAM's and
    /// CLIP's official weights (as [`FrozenWeights`]), the module left as built. SAM and CLIP
    /// are frozen either way.
    fn import_official<B: Backend>(
        &self,
        mut model: RegionSpot<B>,
        checkpoints: &[PathBuf],
        _device: &B::Device,
    ) -> Result<RegionSpot<B>> {
        match checkpoints {
            [full] => Ok(detclip_models::regionspot::load_regionspot(model, full)?.0),
            [sam, clip] => {
                load_checkpoint(&mut model.sam, sam, &sam_keys(), &LoadOptions::default())?;
                load_checkpoint(
                    &mut model.clip,
                    clip,
                    &detclip_models::clip::openai_clip_keys(),
                    &LoadOptions::default(),
                )?;
                Ok(model.freeze())
            }
            _ => Err(DetError::InvalidOption {
                op: "import",
                why: format!(
                    "recipe `regionspot` imports one checkpoint (official RegionSpot) or two \
                     (SAM, then CLIP), got {}",
                    checkpoints.len()
                ),
            }),
        }
    }

    fn prepare<B: DetclipAutodiffBackend>(
        &self,
        mut model: RegionSpot<B>,
        device: &B::Device,
    ) -> Result<RegionSpot<B>> {
        if let Some(w) = &self.weights {
            load_checkpoint(&mut model.sam, &w.sam, &sam_keys(), &LoadOptions::default())?;
            load_checkpoint(
                &mut model.clip,
                &w.clip,
                &detclip_models::clip::openai_clip_keys(),
                &LoadOptions::default(),
            )?;
            model = model.freeze();
        }
        if let (Some(t), RegionSpotModel::Small(s)) = (&self.teacher, &self.model) {
            let data = teacher::teacher_data(t, s.clip_size, s.clip_input, s.sam_size)?;
            let template = self.templates.first().map_or(TEMPLATE, String::as_str);
            let seed = self.learner.seed;
            let (clip, report) =
                teacher::pretrain(model.clip, &data, &self.text, template, t, seed, device)?;
            let (sam, sam_report) =
                teacher::pretrain_sam(model.sam, &data.sam_scenes, t, seed, device)?;
            eprintln!(
                "regionspot teacher: CLIP on {} crops of {} concepts, loss {:.3} → {:.3}, crop \
                 accuracy {:.3}; SAM on {:?} targets, loss {:.3} → {:.3}, within-image token \
                 cosine {:.3}",
                data.crops.len(),
                data.crops.names.len(),
                report.first_loss,
                report.last_loss,
                report.accuracy,
                t.sam_target,
                sam_report.first_loss,
                sam_report.last_loss,
                sam_report.token_cosine
            );
            model = RegionSpot {
                sam,
                clip,
                head: model.head,
            }
            .freeze();
        }
        Ok(model)
    }

    fn loss<B: AutodiffBackend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let device = batch.images.device();
        let classes = self.class_embeddings(model, vocabulary, &device)?;
        let config = RegionSpotLossConfig::new()
            .with_alpha(self.loss.alpha)
            .with_gamma(self.loss.gamma);
        let mut sum: Option<Tensor<B, 1>> = None;
        let mut images = 0;
        for i in 0..batch.samples.len() {
            let (boxes, labels) = Self::labelled_boxes(batch, i, vocabulary);
            if boxes.is_empty() {
                continue;
            }
            let features = self.frozen(model, batch, i, &boxes)?;
            let out = model.forward_cached(&features, classes.clone())?;
            let n = labels.len();
            let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [1, n]), &device);
            let focal = regionspot_loss(out.logits, labels, &config)?.focal;
            sum = Some(match sum {
                Some(s) => s + focal,
                None => focal,
            });
            images += 1;
        }
        let mut terms = LossTerms::new();
        // A batch without a labelled box: zero, tied to the module so the step still runs.
        let focal = match sum {
            Some(s) => s / images as f32,
            None => model.head.projector.weight.val().sum().reshape([1]) * 0.0,
        };
        terms.push("focal", focal);
        Ok(terms)
    }

    fn detect<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let device = batch.images.device();
        let classes = self.class_embeddings(model, vocabulary, &device)?;
        let c = vocabulary.len();
        let mut result = Vec::with_capacity(batch.samples.len());
        for i in 0..batch.samples.len() {
            let boxes: Vec<[f32; 4]> = batch.samples[i].instances.iter().map(|x| x.bbox).collect();
            if boxes.is_empty() {
                result.push(Vec::new());
                continue;
            }
            let features = self.frozen(model, batch, i, &boxes)?;
            let masks = self.box_masks(model, batch, i, features.masks.clone())?;
            let logits = match self.recognizer {
                Recognizer::Module => model.forward_cached(&features, classes.clone())?.logits,
                Recognizer::PooledClip => {
                    let (h, w) = batch.image_sizes[i];
                    let scale = self.clip_input() as f32 / h.max(w) as f32;
                    pooled_clip_logits(model, &features, &boxes, scale, classes.clone())?
                }
            };
            let mut scores: Vec<f32> = sigmoid(logits)
                .into_data()
                .convert::<f32>()
                .to_vec()
                .unwrap_or_default();
            // Boxes from a detector: class probability × the detector's confidence (as
            // `BoxSource::Detector`).
            for (row, inst) in scores.chunks_mut(c).zip(&batch.samples[i].instances) {
                if let Some(box_score) = inst.score {
                    row.iter_mut().for_each(|s| *s *= box_score);
                }
            }
            let mut dets: Vec<Detected> = scores
                .iter()
                .enumerate()
                .filter(|(_, s)| **s >= threshold)
                .map(|(k, &score)| Detected {
                    bbox: boxes[k / c],
                    label: k % c,
                    score,
                    mask: Some(masks[k / c].clone()),
                })
                .collect();
            dets.sort_by(|a, b| b.score.total_cmp(&a.score));
            dets.truncate(self.test.max_detections);
            result.push(dets);
        }
        Ok(result)
    }

    fn validate(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        self.text.validate()?;
        if let Some(t) = &self.teacher {
            t.validate()?;
        }
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "regionspot",
                why,
            })
        };
        if self.templates.is_empty() || self.templates.iter().any(|t| !t.contains("{}")) {
            return bad("give at least one template, each with one `{}`".into());
        }
        if self.test.max_detections == 0 {
            return bad("test.max_detections must be positive".into());
        }
        if let Some(s) = self.data.sources.iter().find(|s| is_image_text(&s.dataset)) {
            return bad(format!(
                "source `{}` holds image-text pairs: RegionSpot trains on boxes (detection or \
                 grounding sources)",
                s.name
            ));
        }
        if let RegionSpotModel::Small(s) = &self.model
            && (s.sam_size % s.sam_patch != 0
                || s.clip_size % s.clip_patch != 0
                || s.clip_input % s.clip_patch != 0
                || s.sam_depth == 0
                || s.heads == 0
                || s.clip_width % s.heads != 0
                || s.sam_dim % s.heads != 0)
        {
            return bad(format!(
                "inconsistent small sizes: {s:?} (sides must be multiples of the patch, widths \
                 of the heads, depth ≥ 1)"
            ));
        }
        self.model_config().map(|_| ())
    }
}

fn is_image_text(dataset: &DatasetConfig) -> bool {
    match dataset {
        DatasetConfig::Pairs { .. } => true,
        DatasetConfig::Synthetic(s) => s.kind == SourceKind::ImageText,
        _ => false,
    }
}
