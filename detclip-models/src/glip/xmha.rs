//! GLIP's cross-modality multi-head attention (X-MHA), paper eq. (4)–(5):
//!
//! `Attn = O Wq_I (P Wq_L)ᵀ / √d`, `O_t2i = SoftMax(Attn) P Wv_L Wout_I`,
//! `P_i2t = SoftMax(Attnᵀ) O Wv_I Wout_L`,
//!
//! as the released model computes it (`BiMultiHeadAttention` and
//! `BiAttentionBlockForCheckpoint` in `maskrcnn_benchmark/utils/fuse_helper.py`): both inputs
//! pass a LayerNorm first, the attention logits are optionally shifted by their global maximum
//! (`STABLE_SOFTMAX_2D`) and clamped to ±50 000, the text→image direction subtracts its row
//! maximum, padding tokens are masked only where the image attends over the words, and each
//! direction's update is scaled by a learnable layer-scale vector (`gamma_v`, `gamma_l`) and
//! added to the *normalised* input.

use burn::module::{Module, Param};
use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::softmax;

use detclip_core::DetError;

use detclip_core::Result as DetResult;

/// The logit bound of the released model (`torch.clamp(…, min=-50000, max=50000)`).
pub const ATTN_CLAMP: f64 = 50_000.0;
/// What the released model adds to the logits of padding tokens.
const MASKED: f64 = -9e15;

/// Configuration of [`BiMultiHeadAttention`].
#[derive(Config, Debug)]
pub struct BiMultiHeadAttentionConfig {
    /// Width of the visual features (GLIP-T: 256).
    pub v_dim: usize,
    /// Width of the word features (GLIP-T: 768).
    pub l_dim: usize,
    /// Width of the joint attention space (GLIP-T: 2048).
    pub embed_dim: usize,
    /// Number of heads (GLIP-T: 8).
    pub num_heads: usize,
    /// Dropout on both attention maps (training only).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Subtract the global maximum of the logits before clamping (`STABLE_SOFTMAX_2D`,
    /// off in GLIP-T).
    #[config(default = false)]
    pub stable_softmax_2d: bool,
    /// Clamp the logits at `-50 000` (`CLAMP_MIN_FOR_UNDERFLOW`, on in GLIP-T).
    #[config(default = true)]
    pub clamp_min: bool,
    /// Clamp the logits at `+50 000` (`CLAMP_MAX_FOR_OVERFLOW`, on in GLIP-T).
    #[config(default = true)]
    pub clamp_max: bool,
}

/// Bidirectional multi-head attention between image positions and words.
#[derive(Module, Debug)]
pub struct BiMultiHeadAttention<B: Backend> {
    /// Image queries `Wq_I`.
    pub v_proj: Linear<B>,
    /// Word keys `Wq_L`.
    pub l_proj: Linear<B>,
    /// Image values `Wv_I`.
    pub values_v_proj: Linear<B>,
    /// Word values `Wv_L`.
    pub values_l_proj: Linear<B>,
    /// Back to the visual width, `Wout_I`.
    pub out_v_proj: Linear<B>,
    /// Back to the word width, `Wout_L`.
    pub out_l_proj: Linear<B>,
    dropout: Dropout,
    num_heads: usize,
    stable_softmax_2d: bool,
    clamp_min: bool,
    clamp_max: bool,
}

impl BiMultiHeadAttentionConfig {
    /// Builds the layer (Xavier-uniform weights, zero biases, as released).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] when `embed_dim` is not divisible by `num_heads`.
    pub fn init<B: Backend>(&self, device: &B::Device) -> DetResult<BiMultiHeadAttention<B>> {
        if self.num_heads == 0 || !self.embed_dim.is_multiple_of(self.num_heads) {
            return Err(DetError::InvalidOption {
                op: "BiMultiHeadAttention",
                why: format!(
                    "embed_dim {} is not divisible by num_heads {}",
                    self.embed_dim, self.num_heads
                ),
            });
        }
        let linear = |i: usize, o: usize| {
            LinearConfig::new(i, o)
                .with_initializer(burn::nn::Initializer::XavierUniform { gain: 1.0 })
                .init(device)
        };
        Ok(BiMultiHeadAttention {
            v_proj: linear(self.v_dim, self.embed_dim),
            l_proj: linear(self.l_dim, self.embed_dim),
            values_v_proj: linear(self.v_dim, self.embed_dim),
            values_l_proj: linear(self.l_dim, self.embed_dim),
            out_v_proj: linear(self.embed_dim, self.v_dim),
            out_l_proj: linear(self.embed_dim, self.l_dim),
            dropout: DropoutConfig::new(self.dropout).init(),
            num_heads: self.num_heads,
            stable_softmax_2d: self.stable_softmax_2d,
            clamp_min: self.clamp_min,
            clamp_max: self.clamp_max,
        })
    }
}

impl<B: Backend> BiMultiHeadAttention<B> {
    /// Returns `(Δv, Δl)`: the word context for every image position and the image context
    /// for every word.
    ///
    /// # Shapes
    /// - `v`: `[N, S, v_dim]` (image positions), `l`: `[N, T, l_dim]` (words)
    /// - `mask`: `[N, T]`, 1 for words and 0 for padding
    /// - output: `[N, S, v_dim]`, `[N, T, l_dim]`
    pub fn forward(
        &self,
        v: Tensor<B, 3>,
        l: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Int>>,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let [n, s, _] = v.dims();
        let [_, t, _] = l.dims();
        let embed = self.v_proj.weight.dims()[1];
        let head_dim = embed / self.num_heads;
        let scale = (head_dim as f64).powf(-0.5);

        let query = self.heads(self.v_proj.forward(v.clone()) * scale);
        let key = self.heads(self.l_proj.forward(l.clone()));
        let value_v = self.heads(self.values_v_proj.forward(v));
        let value_l = self.heads(self.values_l_proj.forward(l));

        // [N, H, S, T]
        let mut attn = query.matmul(key.swap_dims(2, 3));
        if self.stable_softmax_2d {
            attn = attn.clone() - attn.max().reshape([1, 1, 1, 1]);
        }
        attn = self.clamp(attn);

        // image → text: every word attends over all image positions.
        let attn_t = attn.clone().swap_dims(2, 3);
        let attn_l = self.clamp(attn_t.clone() - attn_t.max_dim(3));
        let probs_l = self.dropout.forward(softmax(attn_l, 3));

        // text → image: every position attends over the words, padding masked out.
        let attn_v = match mask {
            Some(mask) => {
                let bias = mask.equal_elem(0).float().reshape([n, 1, 1, t]) * MASKED;
                attn + bias
            }
            None => attn,
        };
        let probs_v = self.dropout.forward(softmax(attn_v, 3));

        let out_v = merge_heads(probs_v.matmul(value_l), [n, s, embed]);
        let out_l = merge_heads(probs_l.matmul(value_v), [n, t, embed]);
        (
            self.out_v_proj.forward(out_v),
            self.out_l_proj.forward(out_l),
        )
    }

    fn heads(&self, x: Tensor<B, 3>) -> Tensor<B, 4> {
        let [n, len, e] = x.dims();
        x.reshape([n, len, self.num_heads, e / self.num_heads])
            .swap_dims(1, 2)
    }

    fn clamp(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = if self.clamp_min {
            x.clamp_min(-ATTN_CLAMP)
        } else {
            x
        };
        if self.clamp_max {
            x.clamp_max(ATTN_CLAMP)
        } else {
            x
        }
    }
}

/// `[N, H, L, d]` → `[N, L, H·d]`.
fn merge_heads<B: Backend>(x: Tensor<B, 4>, shape: [usize; 3]) -> Tensor<B, 3> {
    x.swap_dims(1, 2).reshape(shape)
}

/// Configuration of [`XMhaFusion`].
#[derive(Config, Debug)]
pub struct XMhaFusionConfig {
    /// The attention itself.
    pub attention: BiMultiHeadAttentionConfig,
    /// Initial value of the layer scales `gamma_v`, `gamma_l`. The released class defaults
    /// to `1e-4`; GLIP's `VLFuse` passes `1 / NUM_CONVS` (1/6 in GLIP-T).
    #[config(default = 1e-4)]
    pub init_gamma: f64,
    /// LayerNorm epsilon (PyTorch's default).
    #[config(default = 1e-5)]
    pub norm_eps: f64,
    /// Whether the image update is added to the LayerNorm-ed image features, as released
    /// (`v' = LN(v) + γ·Δv`). `false` adds it to the features as they came in
    /// (`v' = v + γ·Δv`; the attention still reads `LN(v)`), so no normalisation sits on
    /// the image path (an ablation). The word side is unchanged.
    #[config(default = true)]
    pub norm_image_residual: bool,
}

/// One X-MHA fusion block (`BiAttentionBlockForCheckpoint` with one joint attention over all
/// pyramid levels): pre-LayerNorm, bidirectional attention, layer-scaled residuals.
#[derive(Module, Debug)]
pub struct XMhaFusion<B: Backend> {
    /// LayerNorm of the visual features.
    pub layer_norm_v: LayerNorm<B>,
    /// LayerNorm of the word features.
    pub layer_norm_l: LayerNorm<B>,
    /// The bidirectional attention.
    pub attn: BiMultiHeadAttention<B>,
    /// Layer scale of the image update, `[v_dim]`.
    pub gamma_v: Param<Tensor<B, 1>>,
    /// Layer scale of the word update, `[l_dim]`.
    pub gamma_l: Param<Tensor<B, 1>>,
    norm_image_residual: bool,
}

impl XMhaFusionConfig {
    /// Builds the block.
    ///
    /// # Errors
    /// As [`BiMultiHeadAttentionConfig::init`].
    pub fn init<B: Backend>(&self, device: &B::Device) -> DetResult<XMhaFusion<B>> {
        let a = &self.attention;
        let norm = |d: usize| {
            LayerNormConfig::new(d)
                .with_epsilon(self.norm_eps)
                .init(device)
        };
        let gamma = |d: usize| Param::from_tensor(Tensor::full([d], self.init_gamma, device));
        Ok(XMhaFusion {
            layer_norm_v: norm(a.v_dim),
            layer_norm_l: norm(a.l_dim),
            attn: a.init(device)?,
            gamma_v: gamma(a.v_dim),
            gamma_l: gamma(a.l_dim),
            norm_image_residual: self.norm_image_residual,
        })
    }
}

impl<B: Backend> XMhaFusion<B> {
    /// Fuses flattened image positions with words:
    /// `v' = LN(v) + γ_v ⊙ Δv`, `l' = LN(l) + γ_l ⊙ Δl` (with `norm_image_residual` off,
    /// `v' = v + γ_v ⊙ Δv`).
    ///
    /// # Shapes
    /// - `v`: `[N, S, v_dim]`, `l`: `[N, T, l_dim]`, `mask`: `[N, T]` (1 word, 0 padding)
    ///
    /// # Errors
    /// [`DetError::Shape`] when the widths, batch sizes or the mask disagree.
    pub fn forward(
        &self,
        v: Tensor<B, 3>,
        l: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Int>>,
    ) -> DetResult<(Tensor<B, 3>, Tensor<B, 3>)> {
        self.check(&v.dims(), &l.dims(), mask.as_ref().map(|m| m.dims()))?;
        let v_norm = self.layer_norm_v.forward(v.clone());
        let l = self.layer_norm_l.forward(l);
        let (dv, dl) = self.attn.forward(v_norm.clone(), l.clone(), mask);
        let gv = self.gamma_v.val().reshape([1, 1, -1]);
        let gl = self.gamma_l.val().reshape([1, 1, -1]);
        let v = if self.norm_image_residual { v_norm } else { v };
        Ok((v + dv * gv, l + dl * gl))
    }

    /// Fuses a feature pyramid with words: all levels are flattened into one sequence of
    /// image positions (as the released model does without `SEPARATE_BIDIRECTIONAL`), fused,
    /// and split back.
    ///
    /// # Shapes
    /// - `levels`: each `[N, v_dim, H_i, W_i]`; `l`: `[N, T, l_dim]`; `mask`: `[N, T]`
    ///
    /// # Errors
    /// [`DetError::Shape`] on an empty pyramid or disagreeing shapes.
    pub fn forward_levels(
        &self,
        levels: &[Tensor<B, 4>],
        l: Tensor<B, 3>,
        mask: Option<Tensor<B, 2, Int>>,
    ) -> DetResult<(Vec<Tensor<B, 4>>, Tensor<B, 3>)> {
        let Some(first) = levels.first() else {
            return Err(DetError::Shape {
                op: "XMhaFusion",
                what: "levels",
                got: vec![0],
                expected: "at least one pyramid level".into(),
            });
        };
        let [n, c, _, _] = first.dims();
        let mut sizes = Vec::with_capacity(levels.len());
        let mut flat = Vec::with_capacity(levels.len());
        for level in levels {
            let [ni, ci, h, w] = level.dims();
            if ni != n || ci != c {
                return Err(DetError::Shape {
                    op: "XMhaFusion",
                    what: "pyramid level",
                    got: level.dims().to_vec(),
                    expected: format!("[{n}, {c}, H, W] like the first level"),
                });
            }
            sizes.push([h, w]);
            flat.push(level.clone().reshape([n, c, h * w]).swap_dims(1, 2));
        }
        let (v, l) = self.forward(Tensor::cat(flat, 1), l, mask)?;
        let v = v.swap_dims(1, 2);
        let mut start = 0;
        let out = sizes
            .into_iter()
            .map(|[h, w]| {
                let level = v.clone().narrow(2, start, h * w).reshape([n, c, h, w]);
                start += h * w;
                level
            })
            .collect();
        Ok((out, l))
    }

    fn check(&self, v: &[usize; 3], l: &[usize; 3], mask: Option<[usize; 2]>) -> DetResult<()> {
        let v_dim = self.gamma_v.dims()[0];
        let l_dim = self.gamma_l.dims()[0];
        let bad = |what: &'static str, got: &[usize], expected: String| DetError::Shape {
            op: "XMhaFusion",
            what,
            got: got.to_vec(),
            expected,
        };
        if v[2] != v_dim {
            return Err(bad("visual features", v, format!("[N, S, {v_dim}]")));
        }
        if l[0] != v[0] || l[2] != l_dim {
            return Err(bad("word features", l, format!("[{}, T, {l_dim}]", v[0])));
        }
        match mask {
            Some(m) if m != [l[0], l[1]] => {
                Err(bad("text mask", &m, format!("[{}, {}]", l[0], l[1])))
            }
            _ => Ok(()),
        }
    }
}
