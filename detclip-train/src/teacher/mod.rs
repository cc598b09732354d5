//! The CLIP teacher of the synthetic world, shared by the RegionSpot and ViLD recipes.
//!
//! RegionSpot borrows its open vocabulary from a
//! CLIP that has seen the whole web, novel classes included, while RegionSpot's own training
//! data holds base classes only. Released CLIP weights cannot be downloaded here, so the
//! recipe gives its small CLIP that knowledge itself before freezing it: both towers are
//! trained contrastively on crops of every concept of the synthetic world (held-out ones
//! included, from images of another seed than the training and evaluation sets) against
//! their names in the prompt template. A second term makes its feature map locally semantic,
//! as a web-trained CLIP's is and as RegionSpot needs (the module reads CLIP's patch tokens,
//! not its pooled embedding): on whole images, the projected patch tokens inside each
//! object's box are averaged and classified the same way. Then SAM and CLIP stay frozen and
//! only the RegionSpot module learns, from base classes only.

use burn::module::{AutodiffModule, Module, ModuleMapper, Param};
use burn::nn::loss::CrossEntropyLossConfig;
use burn::nn::{Linear, LinearConfig};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::data::synthetic::{Object, Split, World, WorldConfig};
use detclip_core::data::{Loaded, Orientation};
use detclip_core::{DetError, Result};
use detclip_models::clip::{CLIP_MEAN, CLIP_STD, Clip, l2_normalize};
use detclip_models::sam::Sam;
use image::imageops::{FilterType, resize};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

mod text;

use detclip_models::clip::SmallClip;
pub use text::{TextSide, words_of};

/// The small CLIP of the synthetic world's presets (RegionSpot and ViLD): 32-pixel crops in
/// 8-pixel patches, two blocks of width 64 and 4 heads per tower, a 32-wide joint space.
pub const SMALL_CLIP: SmallClip = SmallClip {
    image_size: 32,
    patch: 8,
    width: 64,
    text_width: 64,
    layers: 2,
    heads: 4,
    embed_dim: 32,
};

/// The tests' tiny CLIP: 16-pixel crops, one block of width 16 and 2 heads per tower.
pub const TINY_CLIP: SmallClip = SmallClip {
    image_size: 16,
    patch: 8,
    width: 16,
    text_width: 16,
    layers: 1,
    heads: 2,
    embed_dim: 16,
};

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
    /// Whole images per step for the feature-map term (0: crops only).
    pub scenes_per_step: usize,
    /// Steps of SAM's pre-training (0: SAM keeps its initial weights).
    pub sam_steps: usize,
    /// What SAM's pre-training segments for each box prompt: the object's mask (the default)
    /// or the filled box.
    #[serde(default)]
    pub sam_target: SamTarget,
    /// Weight of a position term in SAM's pre-training (0: none): a linear probe, dropped
    /// afterwards, regresses each box (centre and size, as fractions of the input) from the
    /// box's position-aware token, so the token itself must carry where the object is.
    #[serde(default)]
    pub sam_token_box_weight: f32,
}

/// The target of SAM's pre-training for a box prompt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SamTarget {
    /// The object's own pixels (the synthetic world's masks), as SAM is trained on SA-1B.
    #[default]
    Mask,
    /// The whole box: SAM then only needs the prompt's position, not the image.
    Box,
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

/// Whole teacher images at CLIP's input side (padded to a square at the bottom and right with
/// the mean pixel, as the recipe presents images), with every object's box and concept.
pub struct Scenes {
    /// Pixels, image-major `[3, S, S]` each, CLIP-normalised.
    pub pixels: Vec<f32>,
    /// Per image: `(box in pixels of the S × S input, concept index)`.
    pub objects: Vec<Vec<([f32; 4], usize)>>,
    /// The input side.
    pub side: usize,
    /// Per-channel mean and standard deviation of pixels in `0..=1`.
    pub norm: ([f32; 3], [f32; 3]),
    /// Per image: the input's scale from the original image, and the objects of `objects`
    /// (same order) with their masks.
    pub shapes: Vec<(f32, Vec<Object>)>,
}

impl Scenes {
    fn batch<B: Backend>(
        &self,
        rows: &[usize],
        patch: usize,
        device: &B::Device,
    ) -> (Tensor<B, 4>, Tensor<B, 2>, Vec<i64>) {
        let per = 3 * self.side * self.side;
        let g = self.side / patch;
        let mut data = Vec::with_capacity(rows.len() * per);
        let mut weights = Vec::new();
        let mut labels = Vec::new();
        for (b, &r) in rows.iter().enumerate() {
            data.extend_from_slice(&self.pixels[r * per..][..per]);
            for &(bbox, label) in &self.objects[r] {
                weights.extend(box_weights(bbox, patch, g, b, rows.len()));
                labels.push(label as i64);
            }
        }
        let pixels = Tensor::from_data(
            TensorData::new(data, [rows.len(), 3, self.side, self.side]),
            device,
        );
        let cells = rows.len() * g * g;
        let weights = Tensor::from_data(TensorData::new(weights, [labels.len(), cells]), device);
        (pixels, weights, labels)
    }
}

/// One row of the pooling matrix: equal weights on the patches of image `b` whose centre lies
/// in the box (the patch under the box's centre when none does), zero elsewhere.
pub(crate) fn box_weights(
    bbox: [f32; 4],
    patch: usize,
    g: usize,
    b: usize,
    images: usize,
) -> Vec<f32> {
    let mut row = vec![0.0f32; images * g * g];
    let p = patch as f32;
    let mut cells = Vec::new();
    for y in 0..g {
        for x in 0..g {
            let (cx, cy) = ((x as f32 + 0.5) * p, (y as f32 + 0.5) * p);
            if cx >= bbox[0] && cx <= bbox[2] && cy >= bbox[1] && cy <= bbox[3] {
                cells.push(y * g + x);
            }
        }
    }
    if cells.is_empty() {
        let cx = (((bbox[0] + bbox[2]) / 2.0 / p) as usize).min(g - 1);
        let cy = (((bbox[1] + bbox[3]) / 2.0 / p) as usize).min(g - 1);
        cells.push(cy * g + cx);
    }
    let w = 1.0 / cells.len() as f32;
    for c in cells {
        row[b * g * g + c] = w;
    }
    row
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

/// The teacher's data from `config.images` test-split images of the default world with seed
/// `config.world_seed`.
pub struct TeacherData {
    /// Object crops at CLIP's training side.
    pub crops: Crops,
    /// Whole images at CLIP's input side, CLIP-normalised.
    pub clip_scenes: Scenes,
    /// Whole images at SAM's input side, ImageNet-normalised (SAM's normalisation).
    pub sam_scenes: Scenes,
}

/// Reads the teacher's images: crops at `crop_side`, whole images at `clip_side` and
/// `sam_side`.
///
/// # Errors
/// Image decoding errors.
pub fn teacher_data(
    config: &TeacherConfig,
    crop_side: usize,
    clip_side: usize,
    sam_side: usize,
) -> Result<TeacherData> {
    let world = World::new(WorldConfig {
        seed: config.world_seed,
        ..WorldConfig::default()
    })?;
    let names = world.vocabulary(Split::Test);
    let label = |o: &Object| {
        let name = world.concept_name(o.color, o.shape);
        names.iter().position(|n| *n == name)
    };
    let mut crops = Crops {
        pixels: Vec::new(),
        labels: Vec::new(),
        side: crop_side,
        names: names.clone(),
    };
    let imagenet = detclip_core::data::Normalize::imagenet();
    let scenes = |side, norm| Scenes {
        pixels: Vec::new(),
        objects: Vec::new(),
        side,
        norm,
        shapes: Vec::new(),
    };
    let mut clip_scenes = scenes(clip_side, (CLIP_MEAN, CLIP_STD));
    let mut sam_scenes = scenes(sam_side, (imagenet.mean, imagenet.std));
    for i in 0..config.images {
        let synthetic = world.image(Split::Test, i);
        let loaded = Loaded::load(synthetic.sample, Orientation::Apply)?;
        for object in &synthetic.objects {
            if let Some(l) = label(object) {
                crops.push(&loaded.image, object.bbox, config.margin, l);
            }
        }
        clip_scenes.push_image(&loaded.image, &synthetic.objects, label);
        sam_scenes.push_image(&loaded.image, &synthetic.objects, label);
    }
    Ok(TeacherData {
        crops,
        clip_scenes,
        sam_scenes,
    })
}

impl Scenes {
    fn push_image(
        &mut self,
        image: &image::RgbImage,
        objects: &[Object],
        label: impl Fn(&Object) -> Option<usize>,
    ) {
        let long = image.width().max(image.height());
        let mean = [124u8, 116, 104];
        let mut square = image::RgbImage::from_pixel(long, long, image::Rgb(mean));
        image::imageops::replace(&mut square, image, 0, 0);
        let s = self.side as u32;
        let resized = resize(&square, s, s, FilterType::Triangle);
        let (mean, std) = self.norm;
        for c in 0..3 {
            for p in resized.pixels() {
                self.pixels.push((p.0[c] as f32 / 255.0 - mean[c]) / std[c]);
            }
        }
        let k = self.side as f32 / long as f32;
        let kept: Vec<(Object, usize)> = objects
            .iter()
            .filter_map(|o| label(o).map(|l| (*o, l)))
            .collect();
        self.objects.push(
            kept.iter()
                .map(|(o, l)| (o.bbox.map(|v| v * k), *l))
                .collect(),
        );
        self.shapes
            .push((k, kept.into_iter().map(|(o, _)| o).collect()));
    }
}

impl Crops {
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

/// Trains both towers of `clip` on the crops (softmax over all concept names in `template`,
/// CLIP's logit scale) and, with `scenes_per_step` > 0, on the box-pooled feature maps of the
/// whole images, seeded by `seed`; returns the trained model, frozen again.
///
/// # Errors
/// [`DetError::InvalidOption`] when there are no crops; text and shape errors.
pub fn pretrain<B: AutodiffBackend>(
    clip: Clip<B>,
    data: &TeacherData,
    text: &TextSide,
    template: &str,
    config: &TeacherConfig,
    seed: u64,
    device: &B::Device,
) -> Result<(Clip<B>, TeacherReport)> {
    let (crops, scenes) = (&data.crops, &data.clip_scenes);
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
        let mut loss = ce.forward(logits, targets);
        if config.scenes_per_step > 0 && !scenes.objects.is_empty() {
            let images: Vec<usize> = (0..config.scenes_per_step)
                .map(|_| rng.random_range(0..scenes.objects.len()))
                .collect();
            if let Some(term) = scene_loss(&clip, scenes, &images, ids.clone(), &ce, device)? {
                loss = loss + term;
            }
        }
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

/// Cross-entropy of the box-pooled, projected patch tokens of whole images against every
/// concept name (`None` when the images hold no object).
fn scene_loss<B: Backend>(
    clip: &Clip<B>,
    scenes: &Scenes,
    images: &[usize],
    ids: Tensor<B, 2, Int>,
    ce: &burn::nn::loss::CrossEntropyLoss<B>,
    device: &B::Device,
) -> Result<Option<Tensor<B, 1>>> {
    let patch = clip.vision.patch_size();
    let (pixels, weights, labels) = scenes.batch::<B>(images, patch, device);
    if labels.is_empty() {
        return Ok(None);
    }
    let grid = clip.vision.forward(pixels)?.grid;
    let dense = clip.vision.project_grid(grid);
    let [n, e, h, w] = dense.dims();
    let tokens = dense
        .reshape([n, e, h * w])
        .swap_dims(1, 2)
        .reshape([n * h * w, e]);
    let pooled = weights.matmul(tokens);
    let text = clip.text.forward(ids)?.text_embeds;
    let scale = clip.logit_scale.val().exp().reshape([1, 1]);
    let logits = l2_normalize(pooled).matmul(l2_normalize(text).transpose()) * scale;
    let k = labels.len();
    let targets = Tensor::from_data(TensorData::new(labels, [k]), device);
    Ok(Some(ce.forward(logits, targets)))
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

/// Pre-trains SAM to segment objects from box prompts: the mask decoder's output for each box
/// is pulled towards the object's mask at the decoder's resolution (binary cross-entropy plus
/// dice; `SamTarget::Box` uses the filled box instead), so that the position-aware tokens
/// RegionSpot reads differ from box to box as a trained SAM's do; with
/// `sam_token_box_weight > 0` a linear probe also regresses each box from its token. Four
/// images per step, AdamW, seeded by `seed`; returns SAM frozen again and its [`SamReport`].
///
/// # Errors
/// Shape errors.
pub fn pretrain_sam<B: AutodiffBackend>(
    sam: Sam<B>,
    scenes: &Scenes,
    config: &TeacherConfig,
    seed: u64,
    device: &B::Device,
) -> Result<(Sam<B>, SamReport)> {
    let mut probed = Probed {
        probe: (config.sam_token_box_weight > 0.0).then(|| {
            LinearConfig::new(sam.mask_decoder.mask_tokens.weight.dims()[1], 4).init(device)
        }),
        sam: sam.map(&mut RequireGrad),
    };
    let mut optim = AdamWConfig::new().with_weight_decay(1e-4).init();
    let mut rng = StdRng::seed_from_u64(seed ^ 0x5a3_7ea);
    let usable: Vec<usize> = (0..scenes.objects.len())
        .filter(|&i| !scenes.objects[i].is_empty())
        .collect();
    if usable.is_empty() || config.sam_steps == 0 {
        let sam = probed.sam.no_grad();
        let token_cosine = token_cosine(&sam.valid(), scenes, device)?;
        return Ok((
            sam,
            SamReport {
                first_loss: f64::NAN,
                last_loss: f64::NAN,
                token_cosine,
            },
        ));
    }
    let per = 3 * scenes.side * scenes.side;
    let mut losses = Vec::with_capacity(config.sam_steps);
    for step in 0..config.sam_steps {
        let rows: Vec<usize> = (0..4)
            .map(|_| usable[rng.random_range(0..usable.len())])
            .collect();
        let mut data = Vec::with_capacity(rows.len() * per);
        for &r in &rows {
            data.extend_from_slice(&scenes.pixels[r * per..][..per]);
        }
        let images = Tensor::<B, 4>::from_data(
            TensorData::new(data, [rows.len(), 3, scenes.side, scenes.side]),
            device,
        );
        let sam = &probed.sam;
        let embeddings = sam.embed_images(images)?;
        let mut total: Option<Tensor<B, 1>> = None;
        for (b, &r) in rows.iter().enumerate() {
            let objects = &scenes.objects[r];
            let n = objects.len();
            let flat: Vec<f32> = objects.iter().flat_map(|(bbox, _)| *bbox).collect();
            let boxes = Tensor::<B, 2>::from_data(TensorData::new(flat, [n, 4]), device);
            let out = sam.decode(
                embeddings.clone().narrow(0, b, 1),
                None,
                Some(boxes),
                None,
                false,
            )?;
            let [_, _, mh, mw] = out.masks.dims();
            let target = match config.sam_target {
                SamTarget::Box => box_masks::<B>(objects, scenes.side, (mh, mw), device),
                SamTarget::Mask => {
                    let (k, shapes) = &scenes.shapes[r];
                    object_masks::<B>(shapes, *k, scenes.side, (mh, mw), device)
                }
            };
            let token = out.mask_tokens().narrow(1, 0, 1);
            let token = token.clone().reshape([n, token.dims()[2]]);
            let logits = out.masks.reshape([n, mh * mw]);
            let mut term = mask_loss(logits, target);
            if let Some(probe) = &probed.probe {
                let side = scenes.side as f32;
                let geometry: Vec<f32> = objects
                    .iter()
                    .flat_map(|(b, _)| {
                        [
                            (b[0] + b[2]) / 2.0 / side,
                            (b[1] + b[3]) / 2.0 / side,
                            (b[2] - b[0]) / side,
                            (b[3] - b[1]) / side,
                        ]
                    })
                    .collect();
                let geometry = Tensor::<B, 2>::from_data(TensorData::new(geometry, [n, 4]), device);
                let error = (probe.forward(token) - geometry).abs().mean().reshape([1]);
                term = term + error * config.sam_token_box_weight;
            }
            total = Some(match total {
                Some(t) => t + term,
                None => term,
            });
        }
        let Some(loss) = total.map(|t| t / rows.len() as f32) else {
            continue;
        };
        losses.push(scalar(loss.clone()));
        let grads = GradientsParams::from_grads(loss.backward(), &probed);
        let warm = ((step + 1) as f64 / 20.0).min(1.0);
        probed = optim.step(config.lr * warm, probed, grads);
    }
    let tenth = (losses.len() / 10).max(1);
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let sam = probed.sam.no_grad();
    let token_cosine = token_cosine(&sam.valid(), scenes, device)?;
    Ok((
        sam,
        SamReport {
            first_loss: mean(&losses[..tenth]),
            last_loss: mean(&losses[losses.len() - tenth..]),
            token_cosine,
        },
    ))
}

/// SAM with the position probe of its pre-training (`sam_token_box_weight`).
#[derive(Module, Debug)]
struct Probed<B: Backend> {
    sam: Sam<B>,
    probe: Option<Linear<B>>,
}

/// What SAM's pre-training achieved.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SamReport {
    /// Mean mask loss of the first and the last tenth of the steps (NaN without steps).
    pub first_loss: f64,
    /// See `first_loss`.
    pub last_loss: f64,
    /// Mean cosine similarity between the position-aware tokens (first mask token) of two
    /// boxes of the same image, over the pairs of up to 32 images with several objects: near 1,
    /// every box of an image gets the same token and RegionSpot cannot tell them apart.
    pub token_cosine: f64,
}

/// See [`SamReport::token_cosine`] (NaN when no image has two objects).
fn token_cosine<B: Backend>(sam: &Sam<B>, scenes: &Scenes, device: &B::Device) -> Result<f64> {
    let per = 3 * scenes.side * scenes.side;
    let (mut sum, mut pairs) = (0.0f64, 0usize);
    let images = (0..scenes.objects.len())
        .filter(|&i| scenes.objects[i].len() >= 2)
        .take(32);
    for r in images {
        let objects = &scenes.objects[r];
        let n = objects.len();
        let image = Tensor::<B, 4>::from_data(
            TensorData::new(
                scenes.pixels[r * per..][..per].to_vec(),
                [1, 3, scenes.side, scenes.side],
            ),
            device,
        );
        let flat: Vec<f32> = objects.iter().flat_map(|(bbox, _)| *bbox).collect();
        let boxes = Tensor::<B, 2>::from_data(TensorData::new(flat, [n, 4]), device);
        let out = sam.decode(sam.embed_images(image)?, None, Some(boxes), None, false)?;
        let tokens = l2_normalize(out.mask_tokens().narrow(1, 0, 1).squeeze_dim::<2>(1));
        let cos: Vec<f32> = tokens
            .clone()
            .matmul(tokens.transpose())
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        for i in 0..n {
            for j in i + 1..n {
                if let Some(c) = cos.get(i * n + j) {
                    sum += f64::from(*c);
                    pairs += 1;
                }
            }
        }
    }
    Ok(if pairs == 0 {
        f64::NAN
    } else {
        sum / pairs as f64
    })
}

/// Masks `[n, mh·mw]` at the mask decoder's resolution (`side` input pixels map to `mh × mw`
/// cells): cell `(x, y)` of mask `i` is 1 when `inside(i, cx, cy)` holds for the cell's centre
/// `(cx, cy)` in input pixels.
fn decoder_masks<B: Backend>(
    n: usize,
    side: usize,
    (mh, mw): (usize, usize),
    inside: impl Fn(usize, f32, f32) -> bool,
    device: &B::Device,
) -> Tensor<B, 2> {
    let (sy, sx) = (side as f32 / mh as f32, side as f32 / mw as f32);
    let mut data = Vec::with_capacity(n * mh * mw);
    for i in 0..n {
        for y in 0..mh {
            for x in 0..mw {
                let (cx, cy) = ((x as f32 + 0.5) * sx, (y as f32 + 0.5) * sy);
                data.push(if inside(i, cx, cy) { 1.0f32 } else { 0.0 });
            }
        }
    }
    Tensor::from_data(TensorData::new(data, [n, mh * mw]), device)
}

/// Filled boxes at the mask decoder's resolution (a cell is inside when its centre is).
fn box_masks<B: Backend>(
    objects: &[([f32; 4], usize)],
    side: usize,
    size: (usize, usize),
    device: &B::Device,
) -> Tensor<B, 2> {
    let inside = |i: usize, cx: f32, cy: f32| {
        let b = objects[i].0;
        cx >= b[0] && cx <= b[2] && cy >= b[1] && cy <= b[3]
    };
    decoder_masks(objects.len(), side, size, inside, device)
}

/// The objects' own masks at the mask decoder's resolution: a cell is inside when the
/// original-image pixel under its centre belongs to the object (the input is the original
/// scaled by `k`).
fn object_masks<B: Backend>(
    objects: &[Object],
    k: f32,
    side: usize,
    size: (usize, usize),
    device: &B::Device,
) -> Tensor<B, 2> {
    let inside = |i: usize, cx: f32, cy: f32| objects[i].covers((cx / k) as u32, (cy / k) as u32);
    decoder_masks(objects.len(), side, size, inside, device)
}

/// Mean binary cross-entropy plus mean dice loss of mask logits `[n, P]` against `{0, 1}`
/// targets, `[1]`.
fn mask_loss<B: Backend>(logits: Tensor<B, 2>, target: Tensor<B, 2>) -> Tensor<B, 1> {
    let bce = detclip_core::loss::bce_with_logits(logits.clone(), target.clone())
        .mean()
        .reshape([1]);
    let p = burn::tensor::activation::sigmoid(logits);
    let inter = (p.clone() * target.clone()).sum_dim(1);
    let sums = p.sum_dim(1) + target.sum_dim(1);
    let dice = (inter * 2.0 + 1.0) / (sums + 1.0);
    let n = dice.dims()[0];
    bce + (dice.neg() + 1.0).reshape([n]).mean()
}

/// The teacher's crop-classification accuracy on the base names and on the `held_out`
/// names (each crop against every name in `template`), from its own crops.
pub fn split_accuracy<B: Backend>(
    clip: &Clip<B>,
    data: &TeacherData,
    text: &TextSide,
    template: &str,
    held_out: &[String],
    device: &B::Device,
) -> Result<(f64, f64)> {
    let crops = &data.crops;
    let sentences: Vec<String> = crops
        .names
        .iter()
        .map(|n| template.replace("{}", n))
        .collect();
    let text = l2_normalize(
        clip.text
            .forward(text.ids::<B>(&sentences, device)?)?
            .text_embeds,
    );
    let per = 3 * crops.side * crops.side;
    let (mut right, mut total) = ([0usize; 2], [0usize; 2]);
    let rows: Vec<usize> = (0..crops.len()).collect();
    for chunk in rows.chunks(64) {
        let mut pixels = Vec::with_capacity(chunk.len() * per);
        for &r in chunk {
            pixels.extend_from_slice(&crops.pixels[r * per..][..per]);
        }
        let x = Tensor::<B, 4>::from_data(
            TensorData::new(pixels, [chunk.len(), 3, crops.side, crops.side]),
            device,
        );
        let image = l2_normalize(clip.vision.forward(x)?.image_embeds);
        let pred = image.matmul(text.clone().transpose()).argmax(1);
        let pred: Vec<i64> = pred
            .into_data()
            .convert::<i64>()
            .to_vec()
            .unwrap_or_default();
        for (&r, p) in chunk.iter().zip(pred) {
            let label = crops.labels[r];
            let novel = held_out.contains(&crops.names[label]) as usize;
            total[novel] += 1;
            right[novel] += (p as usize == label) as usize;
        }
    }
    let acc = |i: usize| right[i] as f64 / total[i].max(1) as f64;
    Ok((acc(0), acc(1)))
}
