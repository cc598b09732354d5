//! `regionspot`: RegionSpot on the shared learner. Frozen SAM gives a position-aware token per
//! ground-truth box, frozen CLIP gives the image's feature map, and only the cross-attention
//! module ([`detclip_models::regionspot::RegionSpotHead`]) trains, with a sigmoid focal loss
//! over the source's class names (Yang et al., "Recognize Any Regions", NeurIPS 2024).
//!
//! - The model is [`RegionSpot`] itself: SAM and CLIP carry no gradient, so the learner's
//!   optimiser never sees them and keeps no state for them.
//! - SAM and CLIP come from official checkpoints ([`FrozenWeights`]) or, on the synthetic
//!   world, from the small CLIP teacher pre-trained by [`teacher`](crate::teacher) before the first step
//!   ([`Recipe::prepare`]).
//! - Their outputs can be cached per image ([`RegionSpotRecipe::cache_dir`], filled by
//!   `detclip regionspot cache`, see [`cache_features`]), since they never change.
//! - Inference follows the paper's recognition protocol: the boxes are the samples' boxes
//!   (ground truth in evaluation), each box scored against every class.

mod cache;
mod config;
mod pixels;

use config::TEMPLATE;
pub use config::{
    FrozenPixels, FrozenWeights, Recognizer, RegionSpotLossSettings, RegionSpotRecipe,
    RegionSpotScores, RegionSpotTestConfig,
};

use std::path::{Path, PathBuf};

use burn::prelude::*;
use burn::tensor::activation::{sigmoid, softmax};
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::module::interpolate;
use burn::tensor::ops::{InterpolateMode, InterpolateOptions};
use detclip_core::data::{Batch, Normalize, TestTransform};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::{DetError, Result};
use detclip_models::clip::{imagenet_to_clip, l2_normalize};
use detclip_models::import::{LoadOptions, load_checkpoint};
use detclip_models::regionspot::{
    FrozenFeatures, RegionSpot, RegionSpotLossConfig, cached_frozen_features, clip_grid_side,
    regionspot_loss,
};
use detclip_models::sam::sam_keys;

pub use cache::{CacheReport, cache_features};
pub use pixels::{OfficialPixels, denormalize, official_pixels, preprocess_shape};

use crate::data::DataConfig;
use crate::learner::LearnerConfig;
use crate::mask::Rle;
use crate::recipe::{Detected, LossTerms, ParamGroup, Recipe};
use crate::teacher::{self};

impl RegionSpotRecipe {
    /// The frozen models' inputs for image `i` of a batch, as [`FrozenPixels`] says: SAM's
    /// `[1, 3, S, S]`, CLIP's `[1, 3, C, C]`, the per-axis factors `[x, y]` that map batch
    /// pixels to SAM's frame, and the image's `[height, width]` inside SAM's square.
    ///
    /// # Errors
    /// The batch's pixels cannot be read back (official pixels are computed on the host).
    pub fn frozen_inputs<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        i: usize,
    ) -> Result<FrozenInputs<B>> {
        let (h, w) = batch.image_sizes[i];
        let device = batch.images.device();
        let image = batch.images.clone().slice(s![i..i + 1, .., 0..h, 0..w]);
        let sam_side = model.sam.image_encoder.img_size();
        let clip_side = self.model.clip_input;
        match self.pixels {
            FrozenPixels::Square => {
                let side = h.max(w);
                let square = Tensor::<B, 4>::zeros([1, 3, side, side], &device)
                    .slice_assign(s![.., .., 0..h, 0..w], image);
                let bilinear = || InterpolateOptions::new(InterpolateMode::Bilinear);
                let sam = interpolate(square.clone(), [sam_side, sam_side], bilinear());
                let clip =
                    imagenet_to_clip(interpolate(square, [clip_side, clip_side], bilinear()));
                let scale = sam_side as f64 / side as f64;
                let input = [
                    ((h as f64 * scale).round() as usize).clamp(1, sam_side),
                    ((w as f64 * scale).round() as usize).clamp(1, sam_side),
                ];
                Ok(FrozenInputs {
                    sam,
                    clip,
                    box_scale: [scale as f32; 2],
                    sam_input: input,
                })
            }
            FrozenPixels::Official => {
                let planes: Vec<f32> =
                    image.into_data().convert::<f32>().to_vec().map_err(|e| {
                        DetError::InvalidOption {
                            op: "regionspot pixels",
                            why: format!("{e:?}"),
                        }
                    })?;
                let photo = denormalize(&planes, h, w, &self.test_transform().normalize);
                let px = official_pixels(&photo, sam_side, clip_side);
                let box_scale = px.box_scale([h, w]);
                Ok(FrozenInputs {
                    sam: Tensor::from_data(
                        TensorData::new(px.sam, [1, 3, sam_side, sam_side]),
                        &device,
                    ),
                    clip: Tensor::from_data(
                        TensorData::new(px.clip, [1, 3, clip_side, clip_side]),
                        &device,
                    ),
                    box_scale,
                    sam_input: px.sam_input,
                })
            }
        }
    }

    /// SAM's binary masks (logit > 0) of image `i`'s boxes in the batch frame, from the mask
    /// logits of [`FrozenFeatures::masks`] and the image's size inside SAM's square, through
    /// SAM's own postprocessing.
    fn box_masks<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        i: usize,
        logits: Tensor<B, 4>,
        sam_input: [usize; 2],
    ) -> Result<Vec<Rle>> {
        let (h, w) = batch.image_sizes[i];
        let masks = model.sam.postprocess_masks(logits, sam_input, [h, w])?;
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

    /// SAM's and CLIP's outputs for image `i` of a batch with `boxes` (batch pixels): read
    /// from or written to the cache when there is one.
    fn frozen<B: Backend>(
        &self,
        model: &RegionSpot<B>,
        batch: &Batch<B>,
        i: usize,
        boxes: &[[f32; 4]],
    ) -> Result<(FrozenFeatures<B>, [usize; 2])> {
        let FrozenInputs {
            sam,
            clip,
            box_scale: [sx, sy],
            sam_input,
        } = self.frozen_inputs(model, batch, i)?;
        let scaled: Vec<[f32; 4]> = boxes
            .iter()
            .map(|b| [b[0] * sx, b[1] * sy, b[2] * sx, b[3] * sy])
            .collect();
        let device = sam.device();
        let features = match &self.cache_dir {
            Some(dir) => {
                let key = format!("{}/{}", self.frozen_fingerprint(), batch.samples[i].key);
                cached_frozen_features(model, &self.model, dir, Path::new(&key), &scaled, sam, clip)
            }
            None => {
                let flat: Vec<f32> = scaled.iter().flatten().copied().collect();
                let boxes =
                    Tensor::<B, 3>::from_data(TensorData::new(flat, [1, scaled.len(), 4]), &device);
                model.frozen_features(sam, boxes, clip)
            }
        }?;
        Ok((features, sam_input))
    }

    /// What the frozen weights depend on (model, text, weights, teacher, seed), hashed: part
    /// of every cache key, so a cache made with other frozen weights is never read.
    pub fn frozen_fingerprint(&self) -> String {
        // What SAM and CLIP see joins the key only when it is not the default, so caches
        // written before `pixels` existed stay valid.
        let mut what = serde_json::json!([
            self.model,
            self.text,
            self.weights,
            self.teacher,
            self.learner.seed
        ]);
        if self.pixels != FrozenPixels::Square
            && let Some(parts) = what.as_array_mut()
        {
            parts.push(serde_json::json!(self.pixels));
        }
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

    /// How batch pixels are normalised: SAM's (ImageNet's in 0–255) for official pixels, which
    /// are read back as bytes; ImageNet's in 0–1 for square pixels, which CLIP's input is
    /// converted from.
    pub fn normalize(&self) -> Normalize {
        match self.pixels {
            FrozenPixels::Square => Normalize::imagenet(),
            FrozenPixels::Official => Normalize::mmdet(),
        }
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

/// The detections of one image from its box × class probabilities `probs` (`[N, C]`,
/// row-major) and the boxes' own scores (`None`: given boxes, scored 1), as `(box, class,
/// score)`, best score first:
/// - [`RegionSpotScores::Sigmoid`]: each probability times its box's score, the best `k`;
/// - [`RegionSpotScores::Softmax`]: the official `inference_pred_box`: the `k` pairs of highest
///   probability (ties: the lower index first, as `torch.topk` on the CPU), then each times its
///   box's score.
pub fn score_pairs(
    probs: &[f32],
    classes: usize,
    box_scores: &[Option<f32>],
    mode: RegionSpotScores,
    k: usize,
) -> Vec<(usize, usize, f32)> {
    let scored = |j: usize| {
        let b = j / classes;
        (
            b,
            j % classes,
            probs[j] * box_scores.get(b).copied().flatten().unwrap_or(1.0),
        )
    };
    let by_desc = |a: &f32, b: &f32| b.total_cmp(a);
    let mut out: Vec<(usize, usize, f32)> = match mode {
        RegionSpotScores::Sigmoid => (0..probs.len()).map(scored).collect(),
        RegionSpotScores::Softmax => {
            let mut order: Vec<usize> = (0..probs.len()).collect();
            order.sort_by(|&a, &b| by_desc(&probs[a], &probs[b]).then(a.cmp(&b)));
            order.truncate(k);
            order.into_iter().map(scored).collect()
        }
    };
    out.sort_by(|a, b| by_desc(&a.2, &b.2).then((a.0, a.1).cmp(&(b.0, b.1))));
    out.truncate(k);
    out
}

/// What [`RegionSpotRecipe::frozen_inputs`] gives for one image.
pub struct FrozenInputs<B: Backend> {
    /// SAM's input `[1, 3, S, S]`.
    pub sam: Tensor<B, 4>,
    /// CLIP's input `[1, 3, C, C]`.
    pub clip: Tensor<B, 4>,
    /// Batch pixels to SAM's frame, per axis `[x, y]`.
    pub box_scale: [f32; 2],
    /// The image's `[height, width]` inside SAM's square.
    pub sam_input: [usize; 2],
}

/// [`Recognizer::PooledClip`]'s logits `[1, N, C]` for `boxes` (batch pixels; `scale` maps
/// them to CLIP's input, per axis `[x, y]`): CLIP's logit scale times the cosine between each box's pooled,
/// projected patch tokens and the (normalised) class embeddings.
fn pooled_clip_logits<B: Backend>(
    model: &RegionSpot<B>,
    features: &FrozenFeatures<B>,
    boxes: &[[f32; 4]],
    scale: [f32; 2],
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
        .flat_map(|b| {
            let b = [
                b[0] * scale[0],
                b[1] * scale[1],
                b[2] * scale[0],
                b[3] * scale[1],
            ];
            teacher::box_weights(b, patch, g, 0, 1)
        })
        .collect();
    let device = tokens.device();
    let weights =
        Tensor::<B, 2>::from_data(TensorData::new(weights, [boxes.len(), g * g]), &device);
    let pooled = l2_normalize(weights.matmul(tokens));
    let logit_scale = model.clip.logit_scale.val().exp().reshape([1, 1]);
    Ok((pooled.matmul(classes.transpose()) * logit_scale).unsqueeze())
}

impl Recipe for RegionSpotRecipe {
    const NAME: &'static str = "regionspot";
    const GIVEN_BOXES: bool = true;
    type Model<B: Backend> = RegionSpot<B>;
    type Context = ();

    fn build<B: Backend>(&self, device: &B::Device) -> Result<RegionSpot<B>> {
        self.model.init(device)
    }

    fn context(&self) -> Result<()> {
        Ok(())
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
            short: self.test.short_side.unwrap_or(0),
            max_long: self.test.max_long,
            normalize: self.normalize(),
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
        if let Some(t) = &self.teacher {
            let data = teacher::teacher_data(
                t,
                self.model.clip.vision.image_size,
                self.model.clip_input,
                self.model.sam.image_encoder.img_size,
            )?;
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
        _cx: &(),
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
            let (features, _) = self.frozen(model, batch, i, &boxes)?;
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
        _cx: &(),
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
            let (features, sam_input) = self.frozen(model, batch, i, &boxes)?;
            let masks = self.box_masks(model, batch, i, features.masks.clone(), sam_input)?;
            let logits = match self.recognizer {
                Recognizer::Module => model.forward_cached(&features, classes.clone())?.logits,
                Recognizer::PooledClip => {
                    let (h, w) = batch.image_sizes[i];
                    let side = self.model.clip_input as f32;
                    let scale = match self.pixels {
                        FrozenPixels::Square => [side / h.max(w) as f32; 2],
                        FrozenPixels::Official => [side / w as f32, side / h as f32],
                    };
                    pooled_clip_logits(model, &features, &boxes, scale, classes.clone())?
                }
            };
            let n = boxes.len();
            let probs = match self.test.scores {
                RegionSpotScores::Sigmoid => sigmoid(logits),
                RegionSpotScores::Softmax => softmax(logits.reshape([n, c]), 1).reshape([1, n, c]),
            };
            let probs: Vec<f32> = probs.into_data().convert::<f32>().to_vec().map_err(|e| {
                DetError::InvalidOption {
                    op: "regionspot detect",
                    why: format!("{e:?}"),
                }
            })?;
            let box_scores: Vec<Option<f32>> =
                batch.samples[i].instances.iter().map(|x| x.score).collect();
            let dets = score_pairs(
                &probs,
                c,
                &box_scores,
                self.test.scores,
                self.test.max_detections,
            )
            .into_iter()
            .filter(|&(_, _, score)| score >= threshold)
            .map(|(b, label, score)| Detected {
                bbox: boxes[b],
                label,
                score,
                mask: Some(masks[b].clone()),
            })
            .collect();
            result.push(dets);
        }
        Ok(result)
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }
}
