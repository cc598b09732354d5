//! The `shapes` detector: a small open-vocabulary detector for the synthetic world, to build
//! and test the learner (and to run `detclip demo` on a laptop). The real methods replace it.
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
//! - Inference ([`ShapesDetector::detect`]): score `√(σ(logit) · σ(centerness))`, boxes
//!   decoded from one square anchor per location, [`dense_detections`].

use burn::module::Param;
use burn::nn::{GroupNorm, GroupNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::TensorData;
use burn::tensor::activation::{relu, sigmoid};
use burn::tensor::ops::PadMode;
use detclip_core::Result;
use detclip_core::assign::{LevelAnchors, decode_distances_batched};
use serde::{Deserialize, Serialize};

use crate::dense::{DenseTestConfig, Detections, dense_detections};
use crate::layers::l2_normalize_eps;

/// The model's sizes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShapesConfig {
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
    /// Width of pretrained text features (a sentence encoder's, e.g. MiniLM's 384): when
    /// set, concept embeddings are a trained linear projection of those features
    /// ([`ShapesDetector::forward_text_features`]) instead of the trigram encoder.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text_features: Option<usize>,
}

/// The strides of P3–P5.
const STRIDES: [f32; 3] = [8.0, 16.0, 32.0];

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
    /// Projection of pretrained text features into the region space (when
    /// [`ShapesConfig::text_features`] is set).
    pub features: Option<Linear<B>>,
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

impl ShapesConfig {
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
            features: self
                .text_features
                .map(|d| LinearConfig::new(d, self.embed_dim).init(device)),
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
            embed: l2_normalize_eps(Tensor::cat(embeds, 1), 1e-6),
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
        l2_normalize_eps(
            self.text.proj.forward(bags.matmul(self.text.table.val())),
            1e-6,
        )
    }

    /// Unit-length concept embeddings `[C, D]` from pretrained text features `[C, F]` (one
    /// row per concept, e.g. MiniLM sentence embeddings), through the trained projection.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`](detclip_core::DetError::InvalidOption) when the model has
    /// no projection ([`ShapesConfig::text_features`] unset), [`DetError::Shape`](detclip_core::DetError::Shape)
    /// when `F` is not its width.
    pub fn forward_text_features(&self, features: Tensor<B, 2>) -> Result<Tensor<B, 2>> {
        let proj =
            self.features.as_ref().ok_or_else(|| {
                detclip_core::DetError::InvalidOption {
            op: "shapes text",
            why: "this model has no projection of pretrained text features (text_features is unset)"
                .into(),
        }
            })?;
        let want = proj.weight.dims()[0];
        if features.dims()[1] != want {
            return Err(detclip_core::DetError::Shape {
                op: "shapes text",
                what: "features",
                got: features.dims().to_vec(),
                expected: format!("[C, {want}]"),
            });
        }
        Ok(l2_normalize_eps(proj.forward(features), 1e-6))
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

    /// Detections of the concepts whose unit-length embeddings are `text` (`[C, D]`, from
    /// [`ShapesDetector::forward_text`] or [`ShapesDetector::forward_text_features`]) in a
    /// batch of images: score `√(σ(logit) · σ(centerness))`,
    /// boxes decoded from the anchors, [`dense_detections`] with `test`'s settings.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]`, `H`, `W` multiples of 32; `image_sizes`: `N` unpadded
    ///   `(height, width)`
    ///
    /// # Errors
    /// A non-positive anchor scale; shape errors.
    #[allow(clippy::too_many_arguments)]
    pub fn detect(
        &self,
        config: &ShapesConfig,
        images: Tensor<B, 4>,
        image_sizes: &[(usize, usize)],
        text: Tensor<B, 2>,
        threshold: f32,
        test: &DenseTestConfig,
    ) -> Result<Vec<Detections>> {
        let out = self.forward_image(images);
        let anchors = LevelAnchors::new(&out.sizes, config.anchor_scale)?;
        let logits = self.logits(out.embed, text);
        let [n, a, _] = logits.dims();
        let scores = (sigmoid(logits) * sigmoid(out.centerness).reshape([n, a, 1])).sqrt();
        let boxes = decode_distances_batched(out.bbox, &anchors);
        dense_detections(scores, boxes, image_sizes, threshold, test)
    }
}

impl ShapesConfig {
    /// Checks the sizes: positive, channels divisible by the norm groups.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`](detclip_core::DetError::InvalidOption) otherwise.
    pub fn validate(&self) -> Result<()> {
        let c = self.channels;
        if c.contains(&0)
            || self.head_channels == 0
            || self.embed_dim == 0
            || self.trigram_buckets == 0
            || self.word_dim == 0
            || self.norm_groups == 0
            || self.text_features == Some(0)
            || [c[0], c[1], c[2], c[3], c[4], self.head_channels]
                .iter()
                .any(|ch| ch % self.norm_groups.min(*ch) != 0)
        {
            return Err(detclip_core::DetError::InvalidOption {
                op: "shapes model",
                why: "sizes must be positive and channels divisible by norm_groups".into(),
            });
        }
        if !(self.anchor_scale.is_finite() && self.anchor_scale > 0.0) {
            return Err(detclip_core::DetError::InvalidOption {
                op: "shapes model",
                why: format!("anchor_scale must be positive, got {}", self.anchor_scale),
            });
        }
        Ok(())
    }
}
