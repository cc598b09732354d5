//! `vild`: ViLD on the shared learner (Gu et al., "Open-vocabulary Object Detection via Vision
//! and Language Knowledge Distillation", ICLR 2022).
//!
//! - The model is [`VildModel`]: ViLD's detector ([`Vild`]: ResNet + FPN, RPN, class-agnostic
//!   box and mask heads, projections to the embedding space) and a frozen CLIP. CLIP never
//!   enters the autodiff graph (it runs on the inner backend), so the optimiser never sees it.
//! - Training uses base classes only: boxes of the [`VildRecipe::held_out`] names are dropped
//!   from the targets (unannotated, as LVIS's rare classes are in ViLD's protocol), and the
//!   ViLD-text classifier holds the base names alone.
//! - Class embeddings: CLIP's text tower over the prompt templates (normalised per template,
//!   averaged, normalised again), computed once per name and run ([`ClassEmbeddings`] in
//!   the run's [`VildContext`]).
//! - ViLD-image targets: with [`VildRecipe::teacher_dir`], the shards of `detclip vild
//!   precompute`; otherwise computed on the fly: the detector's current proposals (no
//!   gradient), cropped from the batch at each of [`VildLossSettings::crop_scales`] by RoIAlign,
//!   embedded by CLIP's image tower, summed and normalised ([`region_teacher`]) — what the
//!   precompute tool stores.
//! - On the synthetic world, CLIP is the small teacher RegionSpot pre-trains
//!   ([`crate::teacher::pretrain`]) on crops of every concept, held-out ones
//!   included, from a world seed of its own ([`Recipe::prepare`]).
//! - Loss: `L = L_text + w·L_image + L_box (+ L_mask) + L_rpn`, each term logged by name.
//! - Inference: base and novel classes together, ViLD-text scores or the ViLD-ensemble
//!   ([`detclip_models::vild::predict`]), per-class NMS.

use std::collections::HashMap;
use std::sync::{Mutex, OnceLock};

use burn::module::AutodiffModule;
use burn::prelude::*;
use detclip_core::data::{Batch, Normalize, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::{DetError, Result};
use detclip_models::clip::{ClipLayout, hf_clip_keys, openai_clip_keys};
use detclip_models::import::{KeyMap, LoadOptions, load_checkpoint};
use detclip_models::vild::{
    ClassEmbeddings, EnsembleWeights, HostBox, SampleRng, VildDetections, VildLossConfig,
    VildPredictConfig, VildTarget, box_mask_targets, predict_within, torchvision_keys, vild_loss,
};

mod config;
mod teachers;

use config::TEMPLATE;
pub use config::{VildLossSettings, VildRecipe, VildTestSettings};
pub use detclip_models::vild::VildModel;

use crate::data::DataConfig;
use crate::learner::LearnerConfig;
use crate::recipe::{Detected, LossTerms, ParamGroup, Recipe};
use crate::teacher::{self};
use crate::vild::ImageTeacher;

/// ViLD's own parameters (module paths of the detector), which no torchvision checkpoint has.
const VILD_OWN: [&str; 5] = [
    "background",
    "box_regression.",
    "projection.",
    "image_projection.",
    "mask_head.logits.",
];

/// What a ViLD run builds once and fills as it goes: class embeddings by name (host-side: the
/// text tower is frozen), the precomputed teachers (read from [`VildRecipe::teacher_dir`] on
/// first use) and each image's original size (their boxes are in its pixels).
pub struct VildContext {
    classes: Mutex<ClassEmbeddings>,
    teachers: OnceLock<HashMap<String, ImageTeacher>>,
    sizes: Mutex<HashMap<String, (u32, u32)>>,
}

impl VildContext {
    /// How many class embeddings are cached.
    pub fn cached_classes(&self) -> usize {
        self.classes.lock().map(|c| c.cached()).unwrap_or(0)
    }
}

impl VildRecipe {
    /// The base names of a vocabulary: every name that is not held out.
    pub fn base_names(&self, vocabulary: &[String]) -> Vec<String> {
        vocabulary
            .iter()
            .filter(|n| !self.held_out.contains(n))
            .cloned()
            .collect()
    }

    /// Class embeddings `[C, E]` (unit rows, no gradient) of `names`: the template ensemble
    /// of CLIP's text tower ([`ClassEmbeddings`]), each name encoded once per run.
    ///
    /// # Errors
    /// Text errors; no name.
    pub fn class_embeddings<B: Backend>(
        &self,
        cx: &VildContext,
        model: &VildModel<B>,
        names: &[String],
        device: &B::Device,
    ) -> Result<Tensor<B, 2>> {
        let mut classes = cx.classes.lock().expect("class cache poisoned");
        let ids = |prompts: &[String]| self.text.ids::<B>(prompts, device);
        classes.get_with(&model.clip.text, ids, names, device)
    }

    /// The training targets of image `i`: its boxes of base classes and their index in
    /// `base` (boxes of held-out or unknown names are dropped).
    pub fn targets_of<B: Backend>(
        &self,
        batch: &Batch<B>,
        i: usize,
        base: &[String],
    ) -> (Vec<HostBox>, Vec<usize>) {
        let sample = &batch.samples[i];
        sample
            .training_instances()
            .filter_map(|inst| {
                let name = &sample.concepts[*inst.concepts.first()?].name;
                if self.held_out.contains(name) {
                    return None;
                }
                let label = base.iter().position(|v| v == name)?;
                Some((inst.bbox, label))
            })
            .unzip()
    }
}

/// A seed from the batch's sample keys (RoI sampling is then a function of the batch).
fn batch_seed<B: Backend>(batch: &Batch<B>, seed: u64) -> u64 {
    batch
        .samples
        .iter()
        .flat_map(|s| s.key.bytes())
        .fold(0xcbf2_9ce4_8422_2325u64 ^ seed, |h, b| {
            (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3)
        })
}

impl Recipe for VildRecipe {
    const NAME: &'static str = "vild";
    type Model<B: Backend> = VildModel<B>;
    type Context = VildContext;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<VildModel<B>> {
        let detector = self.model.init(device)?;
        let clip = self.clip.init(device);
        Ok(VildModel::new(detector, clip))
    }

    fn context(&self) -> Result<VildContext> {
        Ok(VildContext {
            classes: Mutex::new(ClassEmbeddings::new(&self.templates)?),
            teachers: OnceLock::new(),
            sizes: Mutex::new(HashMap::new()),
        })
    }

    fn learner(&self) -> &LearnerConfig {
        &self.learner
    }

    fn data(&self) -> &DataConfig {
        &self.data
    }

    fn param_group(path: &[String]) -> ParamGroup {
        match (
            path.first().map(String::as_str),
            path.get(1).map(String::as_str),
        ) {
            (Some("clip"), _) => ParamGroup::Language,
            (Some("detector"), Some("backbone")) => ParamGroup::Backbone,
            (Some("detector"), Some("box_regression" | "projection" | "image_projection")) => {
                ParamGroup::Output
            }
            _ => ParamGroup::New,
        }
    }

    /// A torchvision Mask R-CNN checkpoint (`maskrcnn_resnet50_fpn`'s layout, through
    /// [`torchvision_keys`]) of the recipe's detector sizes, optionally followed by a
    /// safetensors file of ViLD's own parameters under our names (`box_regression.*`,
    /// `projection.*`, `image_projection.*`, `background`, `mask_head.logits.*`); without it
    /// those stay as built, for training. The recipe's `clip_weights` are loaded too.
    fn import_official<B: Backend>(
        &self,
        model: VildModel<B>,
        checkpoints: &[std::path::PathBuf],
        _device: &B::Device,
    ) -> Result<VildModel<B>> {
        let bad = |why: String| DetError::InvalidOption {
            op: "vild import",
            why,
        };
        let (detector_file, heads_file) = match checkpoints {
            [d] => (d, None),
            [d, h] => (d, Some(h)),
            _ => {
                return Err(bad(format!(
                    "give a torchvision Mask R-CNN checkpoint, then optionally ViLD's own                      parameters (got {} files)",
                    checkpoints.len()
                )));
            }
        };
        let partial = LoadOptions {
            allow_partial: true,
            ..Default::default()
        };
        let mut detector = model.detector;
        let report = load_checkpoint(&mut detector, detector_file, &torchvision_keys(), &partial)?;
        let own = |k: &String| VILD_OWN.iter().any(|o| k.starts_with(o));
        let foreign: Vec<&String> = report.missing.iter().filter(|k| !own(k)).collect();
        if !foreign.is_empty() || !report.unexpected.is_empty() {
            return Err(bad(format!(
                "{} is not a torchvision Mask R-CNN of this recipe's detector: missing {:?}, \
                 unexpected {:?}",
                detector_file.display(),
                foreign,
                report.unexpected
            )));
        }
        if let Some(heads) = heads_file {
            let r = load_checkpoint(&mut detector, heads, &KeyMap::new(), &partial)?;
            let left: Vec<&String> = r.missing.iter().filter(|k| own(k)).collect();
            if !left.is_empty() || !r.unexpected.is_empty() {
                return Err(bad(format!(
                    "{} does not hold ViLD's own parameters: missing {left:?}, unexpected {:?}",
                    heads.display(),
                    r.unexpected
                )));
            }
        }
        let mut clip = model.clip;
        if let Some(weights) = &self.clip_weights {
            let keys = match self.clip.vision.layout {
                ClipLayout::Hf => hf_clip_keys(),
                ClipLayout::OpenAi => openai_clip_keys(),
            };
            load_checkpoint(&mut clip, weights, &keys, &LoadOptions::default())?;
        }
        Ok(VildModel::new(detector, clip))
    }

    fn test_transform(&self) -> TestTransform {
        TestTransform {
            short: self.test.short_side,
            max_long: self.test.max_long,
            normalize: Normalize::imagenet(),
        }
    }

    fn prepare<B: DetclipAutodiffBackend>(
        &self,
        model: VildModel<B>,
        device: &B::Device,
    ) -> Result<VildModel<B>> {
        if let Some(weights) = &self.clip_weights {
            let keys = match self.clip.vision.layout {
                ClipLayout::Hf => hf_clip_keys(),
                ClipLayout::OpenAi => openai_clip_keys(),
            };
            let mut clip = model.clip;
            load_checkpoint(&mut clip, weights, &keys, &LoadOptions::default())?;
            return Ok(VildModel::new(model.detector, clip));
        }
        let Some(t) = &self.teacher else {
            return Ok(model);
        };
        let side = self.clip.vision.image_size;
        let data = teacher::teacher_data(t, side, side, side)?;
        let template = self.templates.first().map_or(TEMPLATE, String::as_str);
        let seed = self.learner.seed;
        let (clip, report) =
            teacher::pretrain(model.clip, &data, &self.text, template, t, seed, device)?;
        let (base, novel) = teacher::split_accuracy(
            &clip.valid(),
            &data,
            &self.text,
            template,
            &self.held_out,
            device,
        )?;
        eprintln!(
            "vild teacher: CLIP on {} crops of {} concepts, loss {:.3} → {:.3}, crop accuracy \
             {:.3} (base {base:.3}, held-out {novel:.3})",
            data.crops.len(),
            data.crops.names.len(),
            report.first_loss,
            report.last_loss,
            report.accuracy
        );
        Ok(VildModel::new(model.detector, clip))
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        cx: &VildContext,
        model: &VildModel<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let device = batch.images.device();
        let base = self.base_names(vocabulary);
        if base.is_empty() {
            return Err(DetError::InvalidOption {
                op: "vild",
                why: "the source has no base class (every name is held out)".into(),
            });
        }
        // CLIP runs on the inner backend: it never enters the graph.
        let classes =
            Tensor::from_inner(self.class_embeddings(cx, &model.valid(), &base, &device)?);
        let w = self.loss.image_weight;
        let mut teachers = if w > 0.0 {
            self.teacher_regions(cx, model, batch)?
                .into_iter()
                .map(Some)
                .collect()
        } else {
            vec![None; batch.samples.len()]
        };
        let [_, _, h, wd] = batch.images.dims();
        let targets: Vec<VildTarget<B>> = (0..batch.samples.len())
            .map(|i| {
                let (boxes, labels) = self.targets_of(batch, i, &base);
                let masks = self
                    .loss
                    .box_masks
                    .then(|| box_mask_targets::<B>(&boxes, h, wd, &device));
                VildTarget {
                    boxes,
                    labels,
                    masks,
                    teacher: teachers[i].take(),
                }
            })
            .collect();
        let config = VildLossConfig::new()
            .with_image_weight(w)
            .with_ensemble(self.loss.ensemble);
        let mut rng = SampleRng::new(batch_seed(batch, self.learner.seed));
        let l = vild_loss(
            &model.detector,
            batch.images.clone(),
            &targets,
            classes,
            &config,
            &mut rng,
        )?;
        let mut terms = LossTerms::new();
        terms.push("text", l.text);
        if w > 0.0 {
            terms.push("image", l.image * w);
        }
        terms.push("box", l.box_regression);
        if self.loss.box_masks {
            terms.push("mask", l.mask);
        }
        terms.push("rpn_objectness", l.rpn_objectness);
        terms.push("rpn_box", l.rpn_box);
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        cx: &VildContext,
        model: &VildModel<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let device = batch.images.device();
        let classes = self.class_embeddings(cx, model, vocabulary, &device)?;
        let is_base: Vec<bool> = vocabulary
            .iter()
            .map(|n| !self.held_out.contains(n))
            .collect();
        let [base, novel] = self.test.ensemble_lambda;
        let ensemble = self
            .loss
            .ensemble
            .then(|| EnsembleWeights::new().with_base(base).with_novel(novel));
        let config = VildPredictConfig::new()
            .with_ensemble(ensemble)
            .with_score_threshold(threshold)
            .with_nms_threshold(self.test.nms_iou)
            .with_max_detections(self.test.max_detections);
        let sizes: Vec<[usize; 2]> = batch.image_sizes.iter().map(|&(h, w)| [h, w]).collect();
        let dets = predict_within(
            &model.detector,
            batch.images.clone(),
            &sizes,
            classes,
            &is_base,
            &config,
        )?;
        Ok(dets
            .into_iter()
            .zip(&batch.image_sizes)
            .map(|(d, &(h, w))| to_detected(d, h, w))
            .collect())
    }

    fn validate(&self) -> Result<()> {
        self.check()
    }
}

fn to_detected(d: VildDetections, h: usize, w: usize) -> Vec<Detected> {
    let (w, h) = (w as f32, h as f32);
    d.boxes
        .into_iter()
        .zip(d.scores)
        .zip(d.labels)
        .map(|((b, score), label)| Detected {
            bbox: [
                b[0].clamp(0.0, w),
                b[1].clamp(0.0, h),
                b[2].clamp(0.0, w),
                b[3].clamp(0.0, h),
            ],
            label,
            score,
            mask: None,
        })
        .collect()
}
