//! The GLIP model: backbone → FPN P3–P7 → VLDyHead (X-MHA fusion, a BERT layer on the words,
//! a DyHead block; repeated) → ATSS outputs with token-level alignment logits.

use burn::module::{Module, Param};
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Initializer, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use detclip_core::nn::conv2d;

use detclip_core::DetError;
use detclip_core::Result as DetResult;
use detclip_core::assign::AnchorGenerator;
use detclip_core::ext::DetclipOps;
use detclip_core::ops::DeltaBoxCoder;

use super::{BiMultiHeadAttentionConfig, DyConv, DyConvConfig, XMhaFusion, XMhaFusionConfig};
use crate::attention::padding_bias;
use crate::bert::{Bert, BertConfig, BertLayer};
use crate::fpn::{ExtraLevels, Fpn, FpnConfig};
use crate::layers::l2_normalize_eps;
use crate::resnet::{ResNet, ResNetConfig};
use crate::swin::{SwinConfig, SwinTransformer};

/// GLIP with the prompt-tuning table: what a GLIP run trains and a GLIP checkpoint holds.
#[derive(Module, Debug)]
pub struct GlipDetector<B: Backend> {
    /// The model.
    pub glip: Glip<B>,
    /// Learned prompt embeddings `[max_tokens, bert_hidden]`, added to BERT's output (the
    /// released `rpn.tunable_linear.weight`), initialised to zero.
    pub prompt: Param<Tensor<B, 2>>,
}

/// The released clamp of the alignment logits (`CLAMP_DOT_PRODUCT`).
const LOGIT_CLAMP: f64 = 50_000.0;

/// Which image backbone feeds the FPN (C3–C5).
#[derive(Config, Debug)]
pub enum GlipBackboneConfig {
    /// Swin Transformer (GLIP-T: Swin-T); built with outputs of stages 1–3 only.
    Swin(SwinConfig),
    /// ResNet (GLIP's R50 variants).
    ResNet(ResNetConfig),
}

/// Configuration of [`Glip`].
#[derive(Config, Debug)]
pub struct GlipConfig {
    /// Image backbone.
    pub backbone: GlipBackboneConfig,
    /// Language encoder.
    pub bert: BertConfig,
    /// Channels of the FPN and of the head (`MODEL.DYHEAD.CHANNELS`, 256).
    #[config(default = 256)]
    pub channels: usize,
    /// Fusion + BERT layer + DyHead block repeats (`MODEL.DYHEAD.NUM_CONVS`, 6).
    #[config(default = 6)]
    pub num_layers: usize,
    /// Width of X-MHA's joint space (2048 in the released model).
    #[config(default = 2048)]
    pub fusion_embed_dim: usize,
    /// X-MHA heads (8).
    #[config(default = 8)]
    pub fusion_heads: usize,
    /// GroupNorm groups in the DyHead blocks (16); 0 leaves the GroupNorms out (an ablation).
    #[config(default = 16)]
    pub norm_groups: usize,
    /// Prior probability setting the initial alignment bias `bias0` (0.01).
    #[config(default = 0.01)]
    pub prior_prob: f64,
    /// Initial `log_scale` of the alignment logits (`MODEL.DYHEAD.LOG_SCALE`, 0).
    #[config(default = 0.0)]
    pub log_scale: f64,
    /// The deep fusion: an X-MHA block and a BERT layer before each DyHead block
    /// (`MODEL.DYHEAD.FUSE_CONFIG.EARLY_FUSE_ON`). `false` keeps the DyHead blocks and leaves
    /// the fusion out, the paper's GLIP-T (A) ablation: the head aligns the DyHead's regions
    /// with BERT's words.
    #[config(default = true)]
    pub fusion: bool,
    /// Initial layer scale γ of the X-MHA blocks; `None`: `1 / num_layers`, as the released
    /// model (`init_values=1.0 / NUM_CONVS`).
    #[config(default = "None")]
    pub fusion_gamma: Option<f64>,
    /// Modulated deformable convolutions in the DyHead blocks (`MODEL.DYHEAD.USE_DFCONV`, on
    /// in every released model); `false` makes them plain 3×3 convolutions (an ablation).
    #[config(default = true)]
    pub deformable: bool,
    /// Scale-aware attention in the DyHead blocks (`MODEL.DYHEAD.USE_DYFUSE`, on in every
    /// released model); `false` averages the three levels' maps (an ablation).
    #[config(default = true)]
    pub scale_attention: bool,
    /// DyReLU, the task-aware attention of the DyHead blocks (`MODEL.DYHEAD.USE_DYRELU`, on
    /// in every released model); `false` makes it a plain ReLU (an ablation).
    #[config(default = true)]
    pub dyrelu: bool,
    /// Whether the box and centerness outputs' gradients reach the tower, as released (one
    /// tower shared by every output). `false` detaches their input, so the tower learns from
    /// the alignment loss alone and the box outputs read it as fixed features (an ablation:
    /// does box regression wash the class out of a shared tower?).
    #[config(default = true)]
    pub box_gradient_to_tower: bool,
    /// The DyHead blocks of the tower, as released. `false` keeps the X-MHA fusion and its
    /// BERT layers and leaves the DyHead blocks out, so each layer is
    /// `O^{i+1} = O^i + O_t2i` (an ablation: deep fusion without the DyHead tower).
    #[config(default = true)]
    pub dyhead: bool,
    /// X-MHA adds its image update to the LayerNorm-ed image features, as released
    /// (`BiAttentionBlock`); `false` adds it to the incoming features, so nothing normalises
    /// the image path between the FPN and the head when `dyhead` is also off (an ablation).
    #[config(default = true)]
    pub fusion_image_norm: bool,
    /// Anchor side as a multiple of the level's stride: one square anchor per position
    /// (`MODEL.ATSS.ANCHOR_SIZES` over `MODEL.ATSS.ANCHOR_STRIDES`, 8).
    #[config(default = 8.0)]
    pub anchor_scale: f32,
}

/// Where GLIP's head places its anchors and how its box outputs are coded against them: what
/// the loss and the inference of one model share.
#[derive(Debug, Clone, PartialEq)]
pub struct GlipGeometry {
    /// One square anchor per position of P3–P7, in maskrcnn-benchmark's `x2 − x1 + 1`
    /// convention as released (centres at `k·s + (s − 1)/2`).
    pub anchors: AnchorGenerator,
    /// The box coder (`(10, 10, 5, 5)`, `x2 − x1 + 1`, as released).
    pub coder: DeltaBoxCoder,
}

impl Default for GlipGeometry {
    /// The released geometry: anchors of 8 strides, weights `(10, 10, 5, 5)`.
    fn default() -> Self {
        GlipConfig::glip_t().geometry()
    }
}

impl GlipConfig {
    /// GLIP-T: Swin-T, BERT-base, 256 channels, six fusion/DyHead layers
    /// (`configs/pretrain/glip_Swin_T_O365_GoldG.yaml`).
    pub fn glip_t() -> Self {
        Self::new(
            GlipBackboneConfig::Swin(SwinConfig::tiny()),
            BertConfig::base().with_with_pooler(false),
        )
    }

    /// A small configuration for tests: a two-block Swin of width 8, a two-layer BERT of
    /// width 16 over a 64-token vocabulary, 16 channels, two fusion/DyHead layers.
    pub fn small() -> Self {
        let swin = SwinConfig::new(8, [1, 1, 1, 1], [1, 1, 2, 2])
            .with_window_size(4)
            .with_drop_path_rate(0.0);
        let bert = BertConfig::new()
            .with_vocab_size(64)
            .with_hidden_size(16)
            .with_num_layers(2)
            .with_num_heads(2)
            .with_intermediate_size(32)
            .with_max_position_embeddings(32)
            .with_with_pooler(false);
        Self::new(GlipBackboneConfig::Swin(swin), bert)
            .with_channels(16)
            .with_num_layers(2)
            .with_fusion_embed_dim(32)
            .with_fusion_heads(4)
            .with_norm_groups(4)
    }

    /// The anchors and box coder of this model's head.
    pub fn geometry(&self) -> GlipGeometry {
        GlipGeometry {
            anchors: AnchorGenerator::glip(self.anchor_scale),
            coder: DeltaBoxCoder::glip(),
        }
    }

    /// Checks the sizes: positive widths and counts, heads and groups that divide their
    /// widths, a positive anchor scale.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] naming the first bad value.
    pub fn validate(&self) -> DetResult<()> {
        let bad = |why: String| {
            Err(DetError::InvalidOption {
                op: "glip model",
                why,
            })
        };
        let b = &self.bert;
        let sizes = [
            ("bert.hidden_size", b.hidden_size),
            ("bert.num_layers", b.num_layers),
            ("bert.num_heads", b.num_heads),
            ("bert.intermediate_size", b.intermediate_size),
            ("bert.vocab_size", b.vocab_size),
            ("bert.max_position_embeddings", b.max_position_embeddings),
            ("channels", self.channels),
            ("fusion_embed_dim", self.fusion_embed_dim),
            ("fusion_heads", self.fusion_heads),
        ];
        if let Some((name, _)) = sizes.iter().find(|(_, v)| *v == 0) {
            return bad(format!("{name} must be positive"));
        }
        if !(self.anchor_scale.is_finite() && self.anchor_scale > 0.0) {
            return bad(format!(
                "anchor_scale must be positive, got {}",
                self.anchor_scale
            ));
        }
        if !b.hidden_size.is_multiple_of(b.num_heads)
            || !self.fusion_embed_dim.is_multiple_of(self.fusion_heads)
            || (self.norm_groups > 0 && !self.channels.is_multiple_of(self.norm_groups))
        {
            return bad(
                "bert.hidden_size, fusion_embed_dim and channels must be divisible by their \
                 heads / groups"
                    .into(),
            );
        }
        if let GlipBackboneConfig::Swin(swin) = &self.backbone
            && (swin.embed_dim == 0 || swin.window_size == 0)
        {
            return bad("the Swin backbone's embed_dim and window_size must be positive".into());
        }
        Ok(())
    }

    /// Builds the model with the prompt-tuning table of `max_tokens` rows (zero).
    ///
    /// # Errors
    /// As [`GlipConfig::init`].
    pub fn init_detector<B: Backend>(
        &self,
        max_tokens: usize,
        device: &B::Device,
    ) -> DetResult<GlipDetector<B>> {
        Ok(GlipDetector {
            glip: self.init(device)?,
            prompt: Param::from_tensor(Tensor::zeros([max_tokens, self.bert.hidden_size], device)),
        })
    }

    /// Builds the model.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for bad sizes ([`GlipConfig::validate`]) or from any
    /// block's configuration.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DetResult<Glip<B>> {
        self.validate()?;
        let (backbone, in_channels) = match &self.backbone {
            GlipBackboneConfig::Swin(swin) => {
                let swin = swin.clone().with_out_indices(vec![1, 2, 3]);
                let c = swin.stage_channels();
                (
                    GlipBackbone::Swin(swin.init(device)?),
                    vec![c[1], c[2], c[3]],
                )
            }
            GlipBackboneConfig::ResNet(resnet) => {
                let c = resnet.out_channels();
                (
                    GlipBackbone::ResNet(resnet.init(device)?),
                    vec![c[1], c[2], c[3]],
                )
            }
        };
        let fpn = FpnConfig::new(in_channels, self.channels)
            .with_extra(ExtraLevels::P6P7FromP5)
            .init(device)?;
        let lang = self.bert.hidden_size;
        let fusion = XMhaFusionConfig::new(BiMultiHeadAttentionConfig::new(
            self.channels,
            lang,
            self.fusion_embed_dim,
            self.fusion_heads,
        ))
        .with_init_gamma(
            self.fusion_gamma
                .unwrap_or(1.0 / self.num_layers.max(1) as f64),
        )
        .with_norm_image_residual(self.fusion_image_norm);
        let fused_layers = if self.fusion { self.num_layers } else { 0 };
        let dyconv = DyConvConfig::new(self.channels, self.channels)
            .with_norm_groups((self.norm_groups > 0).then_some(self.norm_groups))
            .with_deformable(self.deformable)
            .with_scale_attention(self.scale_attention)
            .with_dyrelu(self.dyrelu);
        let mut fusions = Vec::with_capacity(self.num_layers);
        let mut dyconvs = Vec::with_capacity(self.num_layers);
        for i in 0..self.num_layers {
            if i < fused_layers {
                fusions.push(fusion.init(device)?);
            }
            if self.dyhead {
                dyconvs.push(dyconv.init(device)?);
            }
        }
        let text_layers = (0..fused_layers)
            .map(|_| bert_layer(&self.bert, device))
            .collect();
        let prior_logit = -((1.0 - self.prior_prob) / self.prior_prob).ln();
        let head = GlipHead {
            bbox_pred: head_conv(self.channels, 4, device),
            centerness: head_conv(self.channels, 1, device),
            scales: (0..5)
                .map(|_| Scale {
                    scale: Param::from_tensor(Tensor::ones([1], device)),
                })
                .collect(),
            dot_product_projection_text: LinearConfig::new(lang, self.channels).init(device),
            log_scale: Param::from_tensor(Tensor::full([1], self.log_scale, device)),
            bias_lang: Param::from_tensor(Tensor::zeros([lang], device)),
            bias0: Param::from_tensor(Tensor::full([1], prior_logit, device)),
            box_gradient_to_tower: self.box_gradient_to_tower,
        };
        Ok(Glip {
            backbone,
            fpn,
            language: self.bert.init(device),
            fusions,
            text_layers,
            dyconvs,
            head,
        })
    }
}

/// One BERT layer as HF's `BertLayer` (the layers `VLDyHead` adds after each fusion).
fn bert_layer<B: Backend>(c: &BertConfig, device: &B::Device) -> BertLayer<B> {
    let h = c.hidden_size;
    let linear = |i, o| LinearConfig::new(i, o).init(device);
    let norm = || {
        LayerNormConfig::new(h)
            .with_epsilon(c.layer_norm_eps)
            .init(device)
    };
    BertLayer {
        query: linear(h, h),
        key: linear(h, h),
        value: linear(h, h),
        attention_output: linear(h, h),
        attention_norm: norm(),
        intermediate: linear(h, c.intermediate_size),
        output: linear(c.intermediate_size, h),
        output_norm: norm(),
        num_heads: c.num_heads,
    }
}

fn head_conv<B: Backend>(c: usize, o: usize, device: &B::Device) -> Conv2d<B> {
    Conv2dConfig::new([c, o], [1, 1])
        .with_initializer(Initializer::Normal {
            mean: 0.0,
            std: 0.01,
        })
        .init(device)
}

/// The image backbone of [`Glip`].
// One backbone per model, built once: the size difference of the variants costs nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Module, Debug)]
pub enum GlipBackbone<B: Backend> {
    /// Swin Transformer.
    Swin(SwinTransformer<B>),
    /// ResNet.
    ResNet(ResNet<B>),
}

impl<B: Backend> GlipBackbone<B> {
    /// C3–C5.
    fn forward(&self, images: Tensor<B, 4>) -> DetResult<Vec<Tensor<B, 4>>> {
        match self {
            Self::Swin(swin) => swin.forward(images),
            Self::ResNet(resnet) => {
                let [_, c3, c4, c5] = resnet.forward(images)?.levels;
                Ok(vec![c3, c4, c5])
            }
        }
    }
}

/// A learnable scalar multiplier (maskrcnn-benchmark's `Scale`).
#[derive(Module, Debug)]
pub struct Scale<B: Backend> {
    /// `[1]`, initialised to 1.
    pub scale: Param<Tensor<B, 1>>,
}

/// The ATSS head of `VLDyHead` with the dot-product alignment of regions and words.
#[derive(Module, Debug)]
pub struct GlipHead<B: Backend> {
    /// Box regression, `C → 4` (one anchor per position).
    pub bbox_pred: Conv2d<B>,
    /// Centerness, `C → 1`.
    pub centerness: Conv2d<B>,
    /// One learnable scale of the box regression per level (P3–P7).
    pub scales: Vec<Scale<B>>,
    /// Word features → region-feature space.
    pub dot_product_projection_text: Linear<B>,
    /// Temperature: logits are divided by `exp(log_scale)`, `[1]`.
    pub log_scale: Param<Tensor<B, 1>>,
    /// Per-word bias direction, `[lang_dim]`.
    pub bias_lang: Param<Tensor<B, 1>>,
    /// Bias offset, `[1]` (the focal-loss prior).
    pub bias0: Param<Tensor<B, 1>>,
    /// `false`: the box and centerness outputs read the levels detached
    /// ([`GlipConfig::box_gradient_to_tower`]).
    pub box_gradient_to_tower: bool,
}

/// GLIP (see the [module docs](super)).
#[derive(Module, Debug)]
pub struct Glip<B: Backend> {
    /// Image backbone (`backbone.body`).
    pub backbone: GlipBackbone<B>,
    /// FPN P3–P7 (`backbone.fpn`).
    pub fpn: Fpn<B>,
    /// Language encoder (`language_backbone.body.model`).
    pub language: Bert<B>,
    /// X-MHA before each DyHead block (`rpn.head.dyhead_tower.{3i}.b_attn`).
    pub fusions: Vec<XMhaFusion<B>>,
    /// BERT layer on the fused words (`rpn.head.dyhead_tower.{3i+1}`).
    pub text_layers: Vec<BertLayer<B>>,
    /// DyHead blocks (`rpn.head.dyhead_tower.{3i+2}`).
    pub dyconvs: Vec<DyConv<B>>,
    /// Box, centerness and alignment outputs (`rpn.head.*`).
    pub head: GlipHead<B>,
}

/// Raw outputs of [`Glip::forward`], one entry per pyramid level (P3 first). Positions are
/// flattened row-major (`y·W + x`), one anchor per position.
#[derive(Debug, Clone)]
pub struct GlipOutput<B: Backend> {
    /// Alignment logits `S_ground`, `[N, H·W, T]` per level.
    pub logits: Vec<Tensor<B, 3>>,
    /// Box regression deltas, `[N, 4, H, W]` per level (already multiplied by the level's
    /// scale).
    pub bbox_reg: Vec<Tensor<B, 4>>,
    /// Centerness logits, `[N, 1, H, W]` per level.
    pub centerness: Vec<Tensor<B, 4>>,
    /// The pyramid sizes `[H, W]`.
    pub sizes: Vec<[usize; 2]>,
}

/// What [`Glip::word_stages`] returns.
#[derive(Debug, Clone)]
pub struct WordStages<B: Backend> {
    /// The words after BERT, then after each X-MHA and each fused BERT layer, `[N, T, D]`.
    pub words: Vec<Tensor<B, 3>>,
    /// The fused pyramid the head reads, `[N, C, H_l, W_l]` per level.
    pub levels: Vec<Tensor<B, 4>>,
}

impl<B: DetclipOps> Glip<B> {
    /// Detects the words of a tokenised prompt in images.
    ///
    /// # Shapes
    /// - `images`: `[N, 3, H, W]` (normalised pixels; H, W multiples of 32 keep the pyramid
    ///   halving exactly, as GLIP's `SIZE_DIVISIBILITY`)
    /// - `input_ids`, `attention_mask`: `[N, T]` (1 for tokens, 0 for padding)
    ///
    /// # Errors
    /// [`DetError::Shape`] from any block on inputs of the wrong shape.
    pub fn forward(
        &self,
        images: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> DetResult<GlipOutput<B>> {
        self.forward_prompted(images, input_ids, attention_mask, None)
    }

    /// [`Glip::forward`] with learned prompt embeddings added to the language encoder's
    /// output before the fusion tower (the released `tunable_linear` of prompt tuning,
    /// `MODEL.DYHEAD.FUSE_CONFIG.ADD_LINEAR_LAYER`): token `t` gets row `t` of `prompt`.
    ///
    /// # Shapes
    /// - as [`Glip::forward`]; `prompt`: `[L, lang_dim]` with `L ≥ T`
    ///
    /// # Errors
    /// [`DetError::Shape`] as [`Glip::forward`], and for a `prompt` that is too short or of
    /// the wrong width.
    pub fn forward_prompted(
        &self,
        images: Tensor<B, 4>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        prompt: Option<Tensor<B, 2>>,
    ) -> DetResult<GlipOutput<B>> {
        let [n, _, _, _] = images.dims();
        let [nt, _] = input_ids.dims();
        if nt != n {
            return Err(DetError::Shape {
                op: "Glip",
                what: "input_ids",
                got: input_ids.dims().to_vec(),
                expected: format!("[{n}, T]: one prompt per image"),
            });
        }
        let levels = self.image_features(images)?;
        self.forward_features(levels, input_ids, attention_mask, prompt)
    }

    /// The image side alone: backbone and FPN, P3–P7 `[N, C, H_l, W_l]`. With
    /// [`Glip::forward_features`], a vocabulary split into several prompts runs the image
    /// side once per image rather than once per prompt (select the rows of each image).
    ///
    /// # Errors
    /// [`DetError::Shape`] from the backbone or the FPN.
    pub fn image_features(&self, images: Tensor<B, 4>) -> DetResult<Vec<Tensor<B, 4>>> {
        self.fpn.forward(&self.backbone.forward(images)?)
    }

    /// [`Glip::forward_prompted`] from the pyramid of [`Glip::image_features`]: the language
    /// encoder, the fusion tower and the head.
    ///
    /// # Errors
    /// [`DetError::Shape`] when the levels and the prompts disagree in batch size, and as
    /// [`Glip::forward_prompted`].
    pub fn forward_features(
        &self,
        levels: Vec<Tensor<B, 4>>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        prompt: Option<Tensor<B, 2>>,
    ) -> DetResult<GlipOutput<B>> {
        let n = levels.first().map_or(0, |l| l.dims()[0]);
        if levels.iter().any(|l| l.dims()[0] != n) || input_ids.dims()[0] != n {
            return Err(DetError::Shape {
                op: "Glip",
                what: "input_ids",
                got: input_ids.dims().to_vec(),
                expected: format!("[{n}, T]: one prompt per row of the pyramid"),
            });
        }
        let words = self
            .language
            .forward(input_ids, attention_mask.clone(), None)?
            .last_hidden_state();
        let words = match prompt {
            Some(p) => add_prompt(words, p)?,
            None => words,
        };
        let (levels, words) = self.fuse(levels, words, attention_mask, None)?;
        Ok(self.head.forward(&levels, words))
    }

    /// The word features at each stage of the language side, for analysing what the fused
    /// words carry (e.g. how much of them is the word and how much its prompt position):
    /// BERT's output, then for each fusion layer the words after X-MHA and after the layer's
    /// BERT layer (`1 + 2·num_layers` tensors, each `[N, T, lang_dim]`; the last one is what
    /// the head aligns with the regions); and the fused pyramid the head reads.
    ///
    /// # Errors
    /// As [`Glip::forward_features`].
    pub fn word_stages(
        &self,
        levels: Vec<Tensor<B, 4>>,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
    ) -> DetResult<WordStages<B>> {
        let words = self
            .language
            .forward(input_ids, attention_mask.clone(), None)?
            .last_hidden_state();
        let mut stages = vec![words.clone()];
        let (levels, _) = self.fuse(levels, words, attention_mask, Some(&mut stages))?;
        Ok(WordStages {
            words: stages,
            levels,
        })
    }

    /// The VLDyHead tower: per layer, X-MHA on (levels, words), a BERT layer on the words, a
    /// DyHead block on the levels. `trace` collects the words after each X-MHA and each BERT
    /// layer.
    fn fuse(
        &self,
        mut levels: Vec<Tensor<B, 4>>,
        mut words: Tensor<B, 3>,
        mask: Tensor<B, 2, Int>,
        mut trace: Option<&mut Vec<Tensor<B, 3>>>,
    ) -> DetResult<(Vec<Tensor<B, 4>>, Tensor<B, 3>)> {
        let bias = padding_bias(mask.clone());
        let layers = self.dyconvs.len().max(self.fusions.len());
        for i in 0..layers {
            // Without fusion (GLIP-T (A)) the levels go straight to the DyHead block.
            let v = match (self.fusions.get(i), self.text_layers.get(i)) {
                (Some(fusion), Some(text)) => {
                    let (v, l) = fusion.forward_levels(&levels, words, Some(mask.clone()))?;
                    if let Some(t) = trace.as_mut() {
                        t.push(l.clone());
                    }
                    words = text.forward(l, bias.clone());
                    if let Some(t) = trace.as_mut() {
                        t.push(words.clone());
                    }
                    v
                }
                _ => levels,
            };
            // Without DyHead blocks the fused levels go straight on.
            levels = match self.dyconvs.get(i) {
                Some(dyconv) => dyconv.forward(&v)?,
                None => v,
            };
        }
        Ok((levels, words))
    }
}

impl<B: Backend> GlipHead<B> {
    /// # Shapes
    /// - `levels`: `[N, C, H_l, W_l]`; `words`: `[N, T, lang_dim]` (fused)
    pub fn forward(&self, levels: &[Tensor<B, 4>], words: Tensor<B, 3>) -> GlipOutput<B> {
        let [n, t, _] = words.dims();
        // Unit-length words, halved, projected; a per-word bias from the same unit vectors.
        let unit = l2_normalize_eps(words, 1e-12);
        let tokens = self.dot_product_projection_text.forward(unit.clone() / 2.0);
        let token_bias = unit
            .matmul(self.bias_lang.val().reshape([1, -1, 1]))
            .reshape([n, 1, t])
            + self.bias0.val().reshape([1, 1, 1]);
        let temperature = self.log_scale.val().exp().reshape([1, 1, 1]);
        let tokens_t = tokens.swap_dims(1, 2);
        let mut out = GlipOutput {
            logits: Vec::with_capacity(levels.len()),
            bbox_reg: Vec::with_capacity(levels.len()),
            centerness: Vec::with_capacity(levels.len()),
            sizes: Vec::with_capacity(levels.len()),
        };
        for (x, scale) in levels.iter().zip(&self.scales) {
            let [_, c, h, w] = x.dims();
            let scale = scale.scale.val();
            let boxes_in = if self.box_gradient_to_tower {
                x.clone()
            } else {
                x.clone().detach()
            };
            out.bbox_reg
                .push(conv2d(&self.bbox_pred, boxes_in.clone()) * scale.reshape([1, 1, 1, 1]));
            out.centerness.push(conv2d(&self.centerness, boxes_in));
            let queries = x.clone().reshape([n, c, h * w]).swap_dims(1, 2);
            let logits =
                queries.matmul(tokens_t.clone()) / temperature.clone() + token_bias.clone();
            out.logits.push(logits.clamp(-LOGIT_CLAMP, LOGIT_CLAMP));
            out.sizes.push([h, w]);
        }
        out
    }
}

/// `words + prompt[..T]` for `words` `[N, T, D]` and `prompt` `[L, D]`, `L ≥ T`.
fn add_prompt<B: Backend>(words: Tensor<B, 3>, prompt: Tensor<B, 2>) -> DetResult<Tensor<B, 3>> {
    let [_, t, d] = words.dims();
    let [l, pd] = prompt.dims();
    if pd != d || l < t {
        return Err(DetError::Shape {
            op: "Glip",
            what: "prompt",
            got: vec![l, pd],
            expected: format!("[L ≥ {t}, {d}]"),
        });
    }
    Ok(words + prompt.narrow(0, 0, t).unsqueeze_dim(0))
}
