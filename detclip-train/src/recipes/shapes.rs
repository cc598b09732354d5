//! `shapes`: a small open-vocabulary detector for the synthetic world, to build and test the
//! learner (and to run `detclip demo` on a laptop). The real methods replace it.
//!
//! - Image side: a five-stage strided CNN (GroupNorm, ReLU) giving P3–P5 (strides 8, 16, 32),
//!   1×1 laterals, and one dense head shared by the levels (ATSS / FCOS style): per location a
//!   region embedding, four box distances and a centerness logit.
//! - Text side: each concept name is a bag of hashed character trigrams of its words
//!   (`<re`, `red`, `ed>`, …), embedded by a learned table and a linear projection. A name made
//!   of seen words (`red ring`, when `red` and `ring` were seen apart) gets a meaningful
//!   embedding, which is what lets held-out concepts transfer.
//! - Classification: the cosine between region and concept embeddings, times a learned scale,
//!   plus a learned bias (DetCLIPv2's / GLIP's region–word dot product, per concept).
//! - Targets: ATSS (`detclip_core::assign`) on one square anchor per location; losses: sigmoid
//!   focal on the region–concept logits, GIoU on the positives' boxes, centerness BCE
//!   (`detclip_core::loss`); for image-text batches (no boxes), the max over regions of each
//!   concept's logit against whether the caption mentions it (DetCLIPv2's max aggregation).

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::ops::PadMode;
use detclip_core::Result;
use detclip_core::assign::{
    AtssOptions, LevelAnchors, atss_assign, decode_distances, decode_distances_batched,
};
use detclip_core::data::{Batch, SourceKind, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::loss::{
    Reduction, bce_with_logits, centerness_loss, centerness_targets, giou_loss, sigmoid_focal_loss,
};
use serde::{Deserialize, Serialize};

use super::dense::{DenseTestConfig, dense_detections};
use crate::data::{DataConfig, SourceConfig, SyntheticConfig};
use crate::learner::LearnerConfig;
use crate::recipe::{Detected, LossTerms, Recipe};

/// The model's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesModelConfig {
    /// Channels of the five backbone stages (strides 2…32).
    pub channels: [usize; 5],
    /// Channels of the head.
    pub head_channels: usize,
    /// 3×3 convolutions in the head's tower.
    pub head_convs: usize,
    /// Dimension of region and concept embeddings.
    pub embed_dim: usize,
    /// Hash buckets of the character-trigram table.
    pub trigram_buckets: usize,
    /// Dimension of a trigram embedding.
    pub word_dim: usize,
    /// Anchor side as a multiple of the level's stride.
    pub anchor_scale: f32,
    /// GroupNorm groups.
    pub norm_groups: usize,
}

/// Loss settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesLossConfig {
    /// Focal α.
    pub focal_alpha: f32,
    /// Focal γ.
    pub focal_gamma: f32,
    /// ATSS candidates per level.
    pub atss_top_k: usize,
    /// Weight of the classification term.
    pub cls_weight: f32,
    /// Weight of the GIoU term.
    pub box_weight: f32,
    /// Weight of the centerness term.
    pub ctr_weight: f32,
    /// Weight of the image-text (max aggregation) term.
    pub image_text_weight: f32,
}

/// The `shapes` recipe: model, loss, inference, data and learner settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesRecipe {
    /// The model.
    pub model: ShapesModelConfig,
    /// The loss.
    pub loss: ShapesLossConfig,
    /// Inference.
    pub test: DenseTestConfig,
    /// Training sources and evaluation set.
    pub data: DataConfig,
    /// The learner.
    pub learner: LearnerConfig,
}

const STRIDES: [f32; 3] = [8.0, 16.0, 32.0];

impl ShapesRecipe {
    /// The demo preset: a detection and a grounding source of the synthetic world at two
    /// resolutions, about three minutes of training on two CPU cores (release build).
    pub fn demo() -> Self {
        let world =
            |seed, images, kind| SyntheticConfig::new(seed, images, (112, 160), (3, 20), kind);
        Self {
            model: ShapesModelConfig {
                channels: [16, 32, 48, 64, 64],
                head_channels: 48,
                head_convs: 1,
                embed_dim: 32,
                trigram_buckets: 512,
                word_dim: 32,
                anchor_scale: 4.0,
                norm_groups: 8,
            },
            loss: ShapesLossConfig {
                focal_alpha: 0.25,
                focal_gamma: 2.0,
                atss_top_k: 9,
                cls_weight: 1.0,
                box_weight: 2.0,
                ctr_weight: 1.0,
                image_text_weight: 0.5,
            },
            test: DenseTestConfig {
                short_side: 128,
                max_long: Some(192),
                pre_nms_top_k: 300,
                nms_iou: 0.5,
                max_detections: 50,
            },
            data: DataConfig {
                sources: vec![
                    SourceConfig {
                        max_long: Some(192),
                        weight: 2.0,
                        ..SourceConfig::synthetic(
                            "detection",
                            world(1, 2000, SourceKind::Detection),
                            8,
                            vec![112, 128, 144],
                        )
                    },
                    SourceConfig {
                        max_long: Some(224),
                        ..SourceConfig::synthetic(
                            "grounding",
                            world(2, 1000, SourceKind::Grounding),
                            4,
                            vec![160],
                        )
                    },
                ],
                eval: Some(world(3, 150, SourceKind::Grounding).into()),
                size_divisor: 32,
            },
            learner: LearnerConfig::adamw(400, 3e-3),
        }
    }

    /// A tiny preset for tests: small images, narrow layers, a few dozen steps.
    pub fn tiny() -> Self {
        let mut r = Self::demo();
        r.model.channels = [8, 8, 16, 16, 16];
        r.model.head_channels = 16;
        r.model.embed_dim = 16;
        r.model.trigram_buckets = 64;
        r.model.word_dim = 8;
        r.model.norm_groups = 4;
        r.test.short_side = 64;
        r.test.max_long = Some(96);
        let kinds = [SourceKind::Detection, SourceKind::Grounding];
        for (i, s) in r.data.sources.iter_mut().enumerate() {
            let mut world = tiny_world(i as u64 + 1, 16);
            world.kind = kinds[i % 2];
            s.dataset = crate::data::DatasetConfig::Synthetic(world);
            s.short_sides = vec![64];
            s.max_long = Some(96);
            s.batch_size = 2;
        }
        r.data.eval = Some(tiny_world(3, 4).into());
        r.learner.steps = 30;
        r.learner.schedule.warmup_steps = 3;
        r.learner.checkpoint_every = 10;
        r.learner.eval_batch_size = 4;
        r
    }
}

fn tiny_world(seed: u64, images: u64) -> SyntheticConfig {
    SyntheticConfig::new(seed, images, (64, 80), (2, 16), SourceKind::Detection)
}

/// A k×k convolution (stride 1, zero "same" padding) as im2col and one matrix product.
///
/// Burn 0.21's ndarray backend runs `conv2d` and its backward (`conv_transpose2d`) as direct
/// loops, which took over 90% of a CPU training step of this model; shifted slices and a
/// matmul (matrixmultiply on the CPU) are an order of magnitude faster there, and the same on
/// the GPU backends. Weights are `[k·k·C_in, C_out]`, `(dy, dx)`-major.
#[derive(Module, Debug)]
pub struct MatConv<B: Backend> {
    weight: Param<Tensor<B, 2>>,
    bias: Param<Tensor<B, 1>>,
}

impl<B: Backend> MatConv<B> {
    /// PyTorch's default initialisation: uniform in `±1/sqrt(fan_in)`.
    pub fn new(cin: usize, cout: usize, kernel: usize, device: &B::Device) -> Self {
        let fan_in = cin * kernel * kernel;
        let bound = 1.0 / (fan_in as f64).sqrt();
        let uniform = Distribution::Uniform(-bound, bound);
        Self {
            weight: Param::from_tensor(Tensor::random([fan_in, cout], uniform, device)),
            bias: Param::from_tensor(Tensor::random([cout], uniform, device)),
        }
    }

    /// # Shapes
    /// - `x`: `[N, C_in, H, W]`; out: `[N, C_out, H, W]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [n, c, h, w] = x.dims();
        let [rows, cout] = self.weight.dims();
        let k = (rows / c).isqrt();
        let p = k / 2;
        let padded = if p > 0 {
            x.pad((p, p, p, p), PadMode::Constant(0.0))
        } else {
            x
        };
        let mut cols = Vec::with_capacity(k * k);
        for dy in 0..k {
            for dx in 0..k {
                cols.push(padded.clone().slice([0..n, 0..c, dy..dy + h, dx..dx + w]));
            }
        }
        let cols = Tensor::cat(cols, 1)
            .permute([0, 2, 3, 1])
            .reshape([n * h * w, rows]);
        let y = cols.matmul(self.weight.val()) + self.bias.val().unsqueeze_dim(0);
        y.reshape([n, h, w, cout]).permute([0, 3, 1, 2])
    }
}

/// Space-to-depth: `[N, C, H, W]` → `[N, 4C, H/2, W/2]` (a lossless stride-2 downsampling).
fn space_to_depth<B: Backend>(x: Tensor<B, 4>) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    x.reshape([n, c, h / 2, 2, w / 2, 2])
        .permute([0, 1, 3, 5, 2, 4])
        .reshape([n, c * 4, h / 2, w / 2])
}

/// (Space-to-depth when downsampling,) 3×3 convolution, GroupNorm, ReLU.
#[derive(Module, Debug)]
pub struct ConvBlock<B: Backend> {
    conv: MatConv<B>,
    norm: GroupNorm<B>,
}

impl<B: Backend> ConvBlock<B> {
    fn new(cin: usize, cout: usize, stride: usize, groups: usize, device: &B::Device) -> Self {
        let cin = if stride == 2 { cin * 4 } else { cin };
        Self {
            conv: MatConv::new(cin, cout, 3, device),
            norm: GroupNormConfig::new(groups.min(cout), cout).init(device),
        }
    }

    fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let [_, c, _, _] = x.dims();
        let [rows, _] = self.conv.weight.dims();
        // A downsampling block's weights expect 4·C input channels.
        let x = if rows == 9 * c * 4 {
            space_to_depth(x)
        } else {
            x
        };
        relu(self.norm.forward(self.conv.forward(x)))
    }
}

/// The backbone: five strided stages; returns the stride-8, 16 and 32 maps.
#[derive(Module, Debug)]
pub struct TinyBackbone<B: Backend> {
    stages: Vec<ConvBlock<B>>,
}

impl<B: Backend> TinyBackbone<B> {
    /// # Shapes
    /// - `x`: `[N, 3, H, W]` with `H`, `W` multiples of 32; out: `[N, C_i, H/s, W/s]` for
    ///   `s = 8, 16, 32`
    pub fn forward(&self, x: Tensor<B, 4>) -> Vec<Tensor<B, 4>> {
        let mut out = Vec::new();
        let mut x = x;
        for (i, stage) in self.stages.iter().enumerate() {
            x = stage.forward(x);
            if i >= 2 {
                out.push(x.clone());
            }
        }
        out
    }
}

/// The dense head shared by the levels.
#[derive(Module, Debug)]
pub struct DenseHead<B: Backend> {
    laterals: Vec<MatConv<B>>,
    tower: Vec<ConvBlock<B>>,
    embed: MatConv<B>,
    bbox: MatConv<B>,
    centerness: MatConv<B>,
    scales: Param<Tensor<B, 1>>,
}

/// The trigram text encoder.
#[derive(Module, Debug)]
pub struct TrigramText<B: Backend> {
    table: Param<Tensor<B, 2>>,
    proj: Linear<B>,
}

/// The `shapes` detector.
#[derive(Module, Debug)]
pub struct ShapesDetector<B: Backend> {
    /// Image backbone.
    pub backbone: TinyBackbone<B>,
    /// Dense head.
    pub head: DenseHead<B>,
    /// Concept-name encoder.
    pub text: TrigramText<B>,
    /// `[log scale, bias]` of the region–concept logits.
    pub logit: Param<Tensor<B, 1>>,
}

/// Raw outputs over all anchors of all levels.
pub struct HeadOutput<B: Backend> {
    /// `[N, A, D]` unit-length region embeddings.
    pub embed: Tensor<B, 3>,
    /// `[N, A, 4]` raw box distances (log scale, per level scale applied).
    pub bbox: Tensor<B, 3>,
    /// `[N, A]` centerness logits.
    pub centerness: Tensor<B, 2>,
    /// `(h, w)` of each level.
    pub sizes: Vec<[usize; 2]>,
}

/// Unit-length rows along the last axis.
fn l2_normalize<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    let norm = x
        .clone()
        .powi_scalar(2)
        .sum_dim(D - 1)
        .sqrt()
        .clamp_min(1e-6);
    x / norm
}

/// FNV-1a, for trigram buckets.
fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// The bag of trigram buckets of a name: per word, its trigrams with weight `1 / count`,
/// summed over words. Row of a `[C, buckets]` matrix.
pub fn trigram_bag(name: &str, buckets: usize) -> Vec<f32> {
    let mut row = vec![0.0f32; buckets];
    for word in name.split_whitespace() {
        let padded: Vec<char> = format!("<{}>", word.to_lowercase()).chars().collect();
        let grams: Vec<String> = padded.windows(3).map(|w| w.iter().collect()).collect();
        let n = grams.len().max(1) as f32;
        for g in grams {
            row[(fnv(&g) % buckets as u64) as usize] += 1.0 / n;
        }
    }
    row
}

impl ShapesModelConfig {
    /// Builds the detector.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ShapesDetector<B> {
        let c = self.channels;
        let g = self.norm_groups;
        let mut stages = Vec::new();
        let mut cin = 3;
        for &cout in &c {
            stages.push(ConvBlock::new(cin, cout, 2, g, device));
            cin = cout;
        }
        let h = self.head_channels;
        let head = DenseHead {
            laterals: [c[2], c[3], c[4]]
                .iter()
                .map(|&ci| MatConv::new(ci, h, 1, device))
                .collect(),
            tower: (0..self.head_convs)
                .map(|_| ConvBlock::new(h, h, 1, g, device))
                .collect(),
            embed: MatConv::new(h, self.embed_dim, 3, device),
            bbox: MatConv::new(h, 4, 3, device),
            centerness: MatConv::new(h, 1, 3, device),
            scales: Param::from_tensor(Tensor::ones([STRIDES.len()], device)),
        };
        let text = TrigramText {
            table: Param::from_tensor(Tensor::random(
                [self.trigram_buckets, self.word_dim],
                Distribution::Normal(0.0, 1.0),
                device,
            )),
            proj: LinearConfig::new(self.word_dim, self.embed_dim).init(device),
        };
        // Scale e^{ln 10}, bias −ln 99: a fresh detector says p ≈ 0.01 everywhere (focal
        // loss's prior-probability initialisation).
        let logit = Param::from_tensor(Tensor::from_data(
            TensorData::new(vec![10f32.ln(), -(99f32.ln())], [2]),
            device,
        ));
        ShapesDetector {
            backbone: TinyBackbone { stages },
            head,
            text,
            logit,
        }
    }
}

impl<B: Backend> ShapesDetector<B> {
    /// Region embeddings, box distances and centerness over every level.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`, `H`, `W` multiples of 32
    pub fn forward_image(&self, images: Tensor<B, 4>) -> HeadOutput<B> {
        let feats = self.backbone.forward(images);
        let (mut embeds, mut boxes, mut ctrs, mut sizes) = (vec![], vec![], vec![], vec![]);
        for (level, (f, lateral)) in feats.into_iter().zip(&self.head.laterals).enumerate() {
            let mut x = lateral.forward(f);
            for block in &self.head.tower {
                x = block.forward(x);
            }
            let [n, _, h, w] = x.dims();
            sizes.push([h, w]);
            let flat = |t: Tensor<B, 4>| {
                let c = t.dims()[1];
                t.reshape([n, c, h * w]).swap_dims(1, 2)
            };
            embeds.push(flat(self.head.embed.forward(x.clone())));
            let scale = self
                .head
                .scales
                .val()
                .narrow(0, level, 1)
                .reshape([1, 1, 1]);
            boxes.push(flat(self.head.bbox.forward(x.clone())) * scale);
            ctrs.push(flat(self.head.centerness.forward(x)).reshape([n, h * w]));
        }
        HeadOutput {
            embed: l2_normalize(Tensor::cat(embeds, 1)),
            bbox: Tensor::cat(boxes, 1),
            centerness: Tensor::cat(ctrs, 1),
            sizes,
        }
    }

    /// Unit-length concept embeddings, `[C, D]`.
    pub fn forward_text(&self, names: &[String], buckets: usize) -> Tensor<B, 2> {
        let device = self.logit.device();
        let bags: Vec<f32> = names.iter().flat_map(|n| trigram_bag(n, buckets)).collect();
        let bags =
            Tensor::<B, 2>::from_data(TensorData::new(bags, [names.len(), buckets]), &device);
        l2_normalize(self.text.proj.forward(bags.matmul(self.text.table.val())))
    }

    /// Region–concept logits `[N, A, C]`.
    pub fn logits(&self, embed: Tensor<B, 3>, text: Tensor<B, 2>) -> Tensor<B, 3> {
        let [n, _, _] = embed.dims();
        let [c, d] = text.dims();
        let sim = embed.matmul(text.transpose().reshape([1, d, c]).expand([n, d, c]));
        let l = self.logit.val();
        sim * l.clone().narrow(0, 0, 1).exp().reshape([1, 1, 1])
            + l.narrow(0, 1, 1).reshape([1, 1, 1])
    }
}

/// Targets of one batch, built on the host.
struct Targets {
    /// Rows (images) with boxes, and rows of image-text samples.
    box_rows: Vec<usize>,
    text_rows: Vec<usize>,
    /// `[box_rows, A, C]` one-hot classification targets.
    cls: Vec<f32>,
    /// Flat positive indices into `[N·A]`, their anchor index, and target box.
    pos_flat: Vec<i64>,
    pos_anchor: Vec<i64>,
    pos_boxes: Vec<f32>,
    /// `[text_rows, C]` whether the caption mentions each concept.
    presence: Vec<f32>,
}

impl ShapesRecipe {
    fn targets<B: Backend>(
        &self,
        batch: &Batch<B>,
        anchors: &LevelAnchors,
        vocabulary: &[String],
    ) -> Result<Targets> {
        let (a, c) = (anchors.boxes.len(), vocabulary.len());
        let options = AtssOptions {
            top_k: self.loss.atss_top_k,
            ..AtssOptions::default()
        };
        let mut t = Targets {
            box_rows: vec![],
            text_rows: vec![],
            cls: vec![],
            pos_flat: vec![],
            pos_anchor: vec![],
            pos_boxes: vec![],
            presence: vec![],
        };
        let index_of = |name: &str| vocabulary.iter().position(|v| v == name);
        for (row, sample) in batch.samples.iter().enumerate() {
            if sample.kind == SourceKind::ImageText {
                t.text_rows.push(row);
                let mut p = vec![0.0; c];
                for concept in &sample.concepts {
                    if let Some(i) = index_of(&concept.name) {
                        p[i] = 1.0;
                    }
                }
                t.presence.extend(p);
                continue;
            }
            t.box_rows.push(row);
            let (gt, labels): (Vec<[f32; 4]>, Vec<Option<usize>>) = sample
                .training_instances()
                .map(|i| {
                    let label = i
                        .concepts
                        .first()
                        .and_then(|&k| index_of(&sample.concepts[k].name));
                    (i.bbox, label)
                })
                .unzip();
            let assignment = atss_assign(&anchors.boxes, &anchors.counts, &gt, &options)?;
            let mut cls = vec![0.0f32; a * c];
            for (anchor, g) in assignment.gt_index.iter().enumerate() {
                let Some(g) = *g else { continue };
                if let Some(label) = labels[g] {
                    cls[anchor * c + label] = 1.0;
                }
                t.pos_flat.push((row * a + anchor) as i64);
                t.pos_anchor.push(anchor as i64);
                t.pos_boxes.extend(gt[g]);
            }
            t.cls.extend(cls);
        }
        Ok(t)
    }
}

fn index<B: Backend>(values: &[i64], device: &B::Device) -> Tensor<B, 1, Int> {
    Tensor::from_data(TensorData::new(values.to_vec(), [values.len()]), device)
}

impl Recipe for ShapesRecipe {
    const NAME: &'static str = "shapes";
    type Model<B: Backend> = ShapesDetector<B>;

    fn build<B: Backend>(&self, device: &B::Device) -> Result<ShapesDetector<B>> {
        Ok(self.model.init(device))
    }

    fn learner(&self) -> &LearnerConfig {
        &self.learner
    }

    fn data(&self) -> &DataConfig {
        &self.data
    }

    fn test_transform(&self) -> TestTransform {
        self.test.transform()
    }

    fn validate(&self) -> Result<()> {
        self.learner.validate()?;
        self.data.validate()?;
        self.test.validate()?;
        let m = &self.model;
        if m.channels.contains(&0)
            || m.head_channels == 0
            || m.embed_dim == 0
            || m.trigram_buckets == 0
            || m.word_dim == 0
            || m.norm_groups == 0
            || [
                m.channels[0],
                m.channels[1],
                m.channels[2],
                m.channels[3],
                m.channels[4],
                m.head_channels,
            ]
            .iter()
            .any(|ch| ch % m.norm_groups.min(*ch) != 0)
        {
            return Err(detclip_core::DetError::InvalidOption {
                op: "shapes model",
                why: "sizes must be positive and channels divisible by norm_groups".into(),
            });
        }
        Ok(())
    }

    fn loss<B: DetclipAutodiffBackend>(
        &self,
        model: &ShapesDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>> {
        let device = batch.images.device();
        let out = model.forward_image(batch.images.clone());
        let anchors = LevelAnchors::new(&out.sizes, self.model.anchor_scale)?;
        let targets = self.targets(batch, &anchors, vocabulary)?;
        let text = model.forward_text(vocabulary, self.model.trigram_buckets);
        let logits = model.logits(out.embed, text);
        let [n, a, c] = logits.dims();
        let l = &self.loss;
        let mut terms = LossTerms::new();
        if !targets.box_rows.is_empty() {
            let rows = index::<B>(
                &targets
                    .box_rows
                    .iter()
                    .map(|&r| r as i64)
                    .collect::<Vec<_>>(),
                &device,
            );
            let nb = targets.box_rows.len();
            let cls_logits = logits.clone().select(0, rows);
            let cls_targets =
                Tensor::<B, 3>::from_data(TensorData::new(targets.cls, [nb, a, c]), &device);
            let num_pos = targets.pos_flat.len().max(1) as f32;
            let focal = sigmoid_focal_loss(
                cls_logits,
                cls_targets,
                l.focal_alpha,
                l.focal_gamma,
                Reduction::Sum,
            )?;
            terms.push("cls", focal.reshape([1]) * (l.cls_weight / num_pos));
            if !targets.pos_flat.is_empty() {
                let p = targets.pos_flat.len();
                let flat = index::<B>(&targets.pos_flat, &device);
                let per_anchor = index::<B>(&targets.pos_anchor, &device);
                let (centres, halves) = anchors.tensors::<B>(&device);
                let raw = out.bbox.reshape([n * a, 4]).select(0, flat.clone());
                let centres = centres.select(0, per_anchor.clone());
                let pred = decode_distances(raw, centres.clone(), halves.select(0, per_anchor));
                let gt =
                    Tensor::<B, 2>::from_data(TensorData::new(targets.pos_boxes, [p, 4]), &device);
                let giou = giou_loss(pred, gt.clone(), Reduction::Mean, 1e-7)?;
                terms.push("box", giou * l.box_weight);
                let ctr_target = centerness_targets(centres, gt)?;
                let ctr_logits = out.centerness.reshape([n * a]).select(0, flat);
                let ctr = centerness_loss(ctr_logits, ctr_target, Reduction::Mean)?;
                terms.push("centerness", ctr * l.ctr_weight);
            }
        }
        if !targets.text_rows.is_empty() {
            let rows = index::<B>(
                &targets
                    .text_rows
                    .iter()
                    .map(|&r| r as i64)
                    .collect::<Vec<_>>(),
                &device,
            );
            let nt = targets.text_rows.len();
            let image_logits = logits.select(0, rows).max_dim(1).reshape([nt, c]);
            let presence =
                Tensor::<B, 2>::from_data(TensorData::new(targets.presence, [nt, c]), &device);
            let bce = bce_with_logits(image_logits, presence).mean();
            terms.push("image_text", bce * l.image_text_weight);
        }
        Ok(terms)
    }

    fn detect<B: DetclipOps>(
        &self,
        model: &ShapesDetector<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>> {
        let out = model.forward_image(batch.images.clone());
        let anchors = LevelAnchors::new(&out.sizes, self.model.anchor_scale)?;
        let text = model.forward_text(vocabulary, self.model.trigram_buckets);
        let logits = model.logits(out.embed, text);
        let [n, a, _] = logits.dims();
        let scores = (sigmoid(logits) * sigmoid(out.centerness).reshape([n, a, 1])).sqrt();
        let boxes = decode_distances_batched(out.bbox, &anchors);
        dense_detections(scores, boxes, &batch.image_sizes, threshold, &self.test)
    }
}
