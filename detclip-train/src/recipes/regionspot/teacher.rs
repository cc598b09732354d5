//! The CLIP teacher of the synthetic world. RegionSpot borrows its open vocabulary from a
//! CLIP that has seen the whole web, novel classes included, while RegionSpot's own training
//! data holds base classes only. Released CLIP weights cannot be downloaded here, so the
//! recipe gives its small CLIP that knowledge itself before freezing it: both towers are
//! trained contrastively on crops of every concept of the synthetic world (held-out ones
//! included, from images of another seed than the training and evaluation sets) against
//! their names in the prompt template. Then SAM and CLIP stay frozen and only the
//! RegionSpot module learns, from base classes only.

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::data::synthetic::{Split, World, WorldConfig};
use detclip_core::data::{Loaded, Orientation};
use detclip_core::{DetError, Result};
use detclip_models::clip::{Clip, l2_normalize};
use image::imageops::{FilterType, resize};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::TextSide;

/// CLIP's pixel normalisation (OpenAI), RGB in `0..=1`.
pub const CLIP_MEAN: [f32; 3] = [0.481_454_66, 0.457_827_5, 0.408_210_73];
/// CLIP's pixel standard deviation.
pub const CLIP_STD: [f32; 3] = [0.268_629_54, 0.261_302_6, 0.275_777_1];

/// How the small CLIP teacher is pre-trained before it is frozen.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TeacherConfig {
    /// Seed of the world its images come from (not a training or evaluation seed).
    pub world_seed: u64,
    /// Images drawn from the world's test split (every concept, held-out ones included).
    pub images: u64,
    /// Training steps.
    pub steps: usize,
    /// Crops per step.
    pub batch_size: usize,
    /// AdamW learning rate.
    pub lr: f64,
    /// Context added around a box before cropping, as a fraction of its side.
    pub margin: f32,
}

impl TeacherConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.images == 0 || self.steps == 0 || self.batch_size == 0 || self.lr <= 0.0 {
            return Err(DetError::InvalidOption {
                op: "regionspot teacher",
                why: "images, steps, batch_size and lr must be positive".into(),
            });
        }
        Ok(())
    }
}

/// Crops of every object of the teacher's images, `[3, S, S]` each (CLIP-normalised), with
/// the index of their concept in [`World::vocabulary`]`(Split::Test)`.
pub struct Crops {
    /// Pixels of all crops, crop-major.
    pub pixels: Vec<f32>,
    /// The concept index of each crop.
    pub labels: Vec<usize>,
    /// The crop side.
    pub side: usize,
    /// Every concept name of the world (the teacher's classes).
    pub names: Vec<String>,
}

impl Crops {
    /// Crops the objects of `config.images` test-split images of the default world with
    /// seed `config.world_seed`.
    ///
    /// # Errors
    /// Image decoding errors.
    pub fn of_world(config: &TeacherConfig, side: usize) -> Result<Self> {
        let world = World::new(WorldConfig {
            seed: config.world_seed,
            ..WorldConfig::default()
        })?;
        let names = world.vocabulary(Split::Test);
        let mut crops = Crops {
            pixels: Vec::new(),
            labels: Vec::new(),
            side,
            names,
        };
        for i in 0..config.images {
            let synthetic = world.image(Split::Test, i);
            let loaded = Loaded::load(synthetic.sample, Orientation::Apply)?;
            for object in &synthetic.objects {
                let name = world.concept_name(object.color, object.shape);
                let Some(label) = crops.names.iter().position(|n| *n == name) else {
                    continue;
                };
                crops.push(&loaded.image, object.bbox, config.margin, label);
            }
        }
        Ok(crops)
    }

    fn push(&mut self, image: &image::RgbImage, bbox: [f32; 4], margin: f32, label: usize) {
        let (w, h) = (image.width() as f32, image.height() as f32);
        let (bw, bh) = (bbox[2] - bbox[0], bbox[3] - bbox[1]);
        let x0 = (bbox[0] - margin * bw).clamp(0.0, w - 1.0) as u32;
        let y0 = (bbox[1] - margin * bh).clamp(0.0, h - 1.0) as u32;
        let x1 = ((bbox[2] + margin * bw).clamp(1.0, w) as u32).max(x0 + 1);
        let y1 = ((bbox[3] + margin * bh).clamp(1.0, h) as u32).max(y0 + 1);
        let crop = image::imageops::crop_imm(image, x0, y0, x1 - x0, y1 - y0).to_image();
        let s = self.side as u32;
        let resized = resize(&crop, s, s, FilterType::Triangle);
        for c in 0..3 {
            for p in resized.pixels() {
                self.pixels
                    .push((p.0[c] as f32 / 255.0 - CLIP_MEAN[c]) / CLIP_STD[c]);
            }
        }
        self.labels.push(label);
    }

    /// How many crops.
    pub fn len(&self) -> usize {
        self.labels.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }

    fn batch<B: Backend>(&self, rows: &[usize], device: &B::Device) -> (Tensor<B, 4>, Vec<i64>) {
        let per = 3 * self.side * self.side;
        let mut data = Vec::with_capacity(rows.len() * per);
        for &r in rows {
            data.extend_from_slice(&self.pixels[r * per..][..per]);
        }
        let pixels = Tensor::from_data(
            TensorData::new(data, [rows.len(), 3, self.side, self.side]),
            device,
        );
        (
            pixels,
            rows.iter().map(|&r| self.labels[r] as i64).collect(),
        )
    }
}

/// Makes every parameter of a module trainable again (the inverse of `no_grad`).
struct RequireGrad;

impl<B: AutodiffBackend> ModuleMapper<B> for RequireGrad {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        param.map(|t| t.set_require_grad(true))
    }
}

/// What the teacher's pre-training achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TeacherReport {
    /// Mean cross-entropy of the first and the last tenth of the steps.
    pub first_loss: f64,
    /// See `first_loss`.
    pub last_loss: f64,
    /// Crop classification accuracy over all concepts after training.
    pub accuracy: f64,
}

/// Trains both towers of `clip` on `crops` (softmax over all concept names in `template`,
/// CLIP's logit scale), seeded by `seed`; returns the trained model, frozen again.
///
/// # Errors
/// [`DetError::InvalidOption`] when there are no crops; text and shape errors.
pub fn pretrain<B: AutodiffBackend>(
    clip: Clip<B>,
    crops: &Crops,
    text: &TextSide,
    template: &str,
    config: &TeacherConfig,
    seed: u64,
    device: &B::Device,
) -> Result<(Clip<B>, TeacherReport)> {
    if crops.is_empty() {
        return Err(DetError::InvalidOption {
            op: "regionspot teacher",
            why: "the teacher's images hold no object to crop".into(),
        });
    }
    let sentences: Vec<String> = crops
        .names
        .iter()
        .map(|n| template.replace("{}", n))
        .collect();
    let ids = text.ids::<B>(&sentences, device)?;
    let mut clip = clip.map(&mut RequireGrad);
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let ce = CrossEntropyLossConfig::new().init(device);
    let mut rng = StdRng::seed_from_u64(seed ^ 0x7ea_c4e5);
    let mut order: Vec<usize> = (0..crops.len()).collect();
    let mut cursor = order.len();
    let mut losses = Vec::with_capacity(config.steps);
    for step in 0..config.steps {
        let mut rows = Vec::with_capacity(config.batch_size);
        while rows.len() < config.batch_size {
            if cursor == order.len() {
                order.shuffle(&mut rng);
                cursor = 0;
            }
            rows.push(order[cursor]);
            cursor += 1;
        }
        let (pixels, labels) = crops.batch::<B>(&rows, device);
        let pixels = flip_some(pixels, &mut rng);
        let logits = logits(&clip, pixels, ids.clone())?;
        let targets = Tensor::from_data(TensorData::new(labels, [rows.len()]), device);
        let loss = ce.forward(logits, targets);
        losses.push(scalar(loss.clone()));
        let grads = GradientsParams::from_grads(loss.backward(), &clip);
        let warm = ((step + 1) as f64 / 20.0).min(1.0);
        let cosine = 0.5 * (1.0 + (std::f64::consts::PI * step as f64 / config.steps as f64).cos());
        clip = optim.step(config.lr * warm * cosine.max(0.05), clip, grads);
    }
    let tenth = (config.steps / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let accuracy = accuracy(&clip, crops, ids, device)?;
    Ok((
        clip.no_grad(),
        TeacherReport {
            first_loss: mean(&losses[..tenth]),
            last_loss: mean(&losses[losses.len() - tenth..]),
            accuracy,
        },
    ))
}

/// Mirrors about half of the crops (names say nothing of left and right).
fn flip_some<B: Backend>(pixels: Tensor<B, 4>, rng: &mut StdRng) -> Tensor<B, 4> {
    let n = pixels.dims()[0];
    let flips: Vec<f32> = (0..n)
        .map(|_| if rng.random_bool(0.5) { 1.0 } else { 0.0 })
        .collect();
    let device = pixels.device();
    let m = Tensor::<B, 1>::from_data(TensorData::new(flips, [n]), &device).reshape([n, 1, 1, 1]);
    let flipped = pixels.clone().flip([3]);
    flipped * m.clone() + pixels * (m.neg() + 1.0)
}

fn logits<B: Backend>(
    clip: &Clip<B>,
    pixels: Tensor<B, 4>,
    ids: Tensor<B, 2, Int>,
) -> Result<Tensor<B, 2>> {
    let image = clip.vision.forward(pixels)?.image_embeds;
    let text = clip.text.forward(ids)?.text_embeds;
    let scale = clip.logit_scale.val().exp().reshape([1, 1]);
    Ok(l2_normalize(image).matmul(l2_normalize(text).transpose()) * scale)
}

fn scalar<B: Backend>(x: Tensor<B, 1>) -> f64 {
    x.into_data()
        .convert::<f64>()
        .to_vec::<f64>()
        .ok()
        .and_then(|v| v.first().copied())
        .unwrap_or(f64::NAN)
}

/// Top-1 accuracy of the crops against every concept name.
fn accuracy<B: AutodiffBackend>(
    clip: &Clip<B>,
    crops: &Crops,
    ids: Tensor<B, 2, Int>,
    device: &B::Device,
) -> Result<f64> {
    let clip = clip.valid();
    let ids = ids.inner();
    let mut right = 0usize;
    let rows: Vec<usize> = (0..crops.len()).collect();
    for chunk in rows.chunks(64) {
        let (pixels, labels) = crops.batch::<B::InnerBackend>(chunk, device);
        let pred = logits(&clip, pixels, ids.clone())?.argmax(1);
        let pred: Vec<i64> = pred
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        right += pred.iter().zip(&labels).filter(|(p, l)| p == l).count();
    }
    Ok(right as f64 / crops.len() as f64)
}
