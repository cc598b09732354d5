use burn::module::{Initializer, Param};
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::sigmoid;

use crate::attention::multi_head_attention;
use crate::layers::linear_rows;

/// Which official checkpoint layout a CLIP model's parameters follow.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum ClipLayout {
    /// Hugging Face `CLIPModel`: separate `q_proj`/`k_proj`/`v_proj`, projections as
    /// bias-free `Linear` layers (`[out, in]` in the file).
    Hf,
    /// OpenAI `clip`: fused `in_proj_weight` (`[3D, D]`, q then k then v), projections as
    /// matrices stored `[in, out]`.
    OpenAi,
}

/// Multi-head self-attention with either separate or fused q/k/v projections.
#[derive(Module, Debug)]
pub struct ClipAttention<B: Backend> {
    /// Query projection ([`ClipLayout::Hf`]).
    pub q_proj: Option<Linear<B>>,
    /// Key projection ([`ClipLayout::Hf`]).
    pub k_proj: Option<Linear<B>>,
    /// Value projection ([`ClipLayout::Hf`]).
    pub v_proj: Option<Linear<B>>,
    /// Fused q/k/v projection `D → 3D` ([`ClipLayout::OpenAi`]).
    pub in_proj: Option<Linear<B>>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Attention heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> ClipAttention<B> {
    fn new(width: usize, num_heads: usize, layout: ClipLayout, device: &B::Device) -> Self {
        let linear = |o| Some(LinearConfig::new(width, o).init(device));
        let hf = layout == ClipLayout::Hf;
        Self {
            q_proj: if hf { linear(width) } else { None },
            k_proj: if hf { linear(width) } else { None },
            v_proj: if hf { linear(width) } else { None },
            in_proj: if hf { None } else { linear(3 * width) },
            out_proj: LinearConfig::new(width, width).init(device),
            num_heads,
        }
    }

    /// `[N, L, D]` → `[N, L, D]`, with an optional additive bias `[*, *, L, L]` (causal mask).
    pub fn forward(&self, x: Tensor<B, 3>, bias: Option<Tensor<B, 4>>) -> Tensor<B, 3> {
        let (q, k, v) = self.qkv(x);
        linear_rows(
            &self.out_proj,
            multi_head_attention(q, k, v, self.num_heads, bias),
        )
    }

    fn qkv(&self, x: Tensor<B, 3>) -> (Tensor<B, 3>, Tensor<B, 3>, Tensor<B, 3>) {
        if let Some(fused) = &self.in_proj {
            let mut parts = linear_rows(fused, x).chunk(3, 2).into_iter();
            let mut next = || parts.next().expect("three chunks");
            return (next(), next(), next());
        }
        let project = |p: &Option<Linear<B>>| {
            linear_rows(
                p.as_ref()
                    .expect("a CLIP attention has separate or fused projections"),
                x.clone(),
            )
        };
        (
            project(&self.q_proj),
            project(&self.k_proj),
            project(&self.v_proj),
        )
    }
}

/// A pre-norm residual block: `x + attn(ln1(x))`, then `x + fc2(quick_gelu(fc1(ln2(x))))`.
#[derive(Module, Debug)]
pub struct ClipBlock<B: Backend> {
    /// LayerNorm before attention (`layer_norm1` / `ln_1`).
    pub norm1: LayerNorm<B>,
    /// Self-attention.
    pub attn: ClipAttention<B>,
    /// LayerNorm before the MLP (`layer_norm2` / `ln_2`).
    pub norm2: LayerNorm<B>,
    /// MLP expansion (`mlp.fc1` / `mlp.c_fc`).
    pub fc1: Linear<B>,
    /// MLP contraction (`mlp.fc2` / `mlp.c_proj`).
    pub fc2: Linear<B>,
}

/// The sizes of a stack of [`ClipBlock`]s.
#[derive(Debug, Clone, Copy)]
pub(crate) struct BlockSizes {
    pub width: usize,
    pub heads: usize,
    pub mlp: usize,
    pub eps: f64,
    pub layout: ClipLayout,
}

impl BlockSizes {
    pub fn norm<B: Backend>(&self, device: &B::Device) -> LayerNorm<B> {
        LayerNormConfig::new(self.width)
            .with_epsilon(self.eps)
            .init(device)
    }

    pub fn blocks<B: Backend>(&self, n: usize, device: &B::Device) -> Vec<ClipBlock<B>> {
        (0..n)
            .map(|_| ClipBlock {
                norm1: self.norm(device),
                attn: ClipAttention::new(self.width, self.heads, self.layout, device),
                norm2: self.norm(device),
                fc1: LinearConfig::new(self.width, self.mlp).init(device),
                fc2: LinearConfig::new(self.mlp, self.width).init(device),
            })
            .collect()
    }
}

impl<B: Backend> ClipBlock<B> {
    /// `[N, L, D]` → `[N, L, D]`; `bias` as in [`ClipAttention::forward`].
    pub fn forward(&self, x: Tensor<B, 3>, bias: Option<Tensor<B, 4>>) -> Tensor<B, 3> {
        let x = x.clone() + self.attn.forward(self.norm1.forward(x), bias);
        let h = linear_rows(&self.fc1, self.norm2.forward(x.clone()));
        x + linear_rows(&self.fc2, quick_gelu(h))
    }
}

/// CLIP's activation, `x · σ(1.702 x)`.
pub fn quick_gelu<B: Backend, const D: usize>(x: Tensor<B, D>) -> Tensor<B, D> {
    x.clone() * sigmoid(x * 1.702)
}

/// A bias-free projection into the joint embedding space, in either checkpoint layout.
#[derive(Module, Debug)]
pub struct Projection<B: Backend> {
    /// HF: a `Linear` without bias.
    pub linear: Option<Linear<B>>,
    /// OpenAI: the matrix `[in, out]`, applied as `x @ matrix`.
    pub matrix: Option<Param<Tensor<B, 2>>>,
}

impl<B: Backend> Projection<B> {
    pub(crate) fn new(d_in: usize, d_out: usize, layout: ClipLayout, device: &B::Device) -> Self {
        match layout {
            ClipLayout::Hf => Self {
                linear: Some(LinearConfig::new(d_in, d_out).with_bias(false).init(device)),
                matrix: None,
            },
            ClipLayout::OpenAi => Self {
                linear: None,
                matrix: Some(
                    Initializer::Normal {
                        mean: 0.0,
                        std: (d_in as f64).powf(-0.5),
                    }
                    .init([d_in, d_out], device),
                ),
            },
        }
    }

    /// `[..., in]` → `[..., out]`.
    pub fn forward<const D: usize>(&self, x: Tensor<B, D>) -> Tensor<B, D> {
        match (&self.linear, &self.matrix) {
            (Some(linear), _) => linear_rows(linear, x),
            (None, Some(m)) => {
                // As rows `[…, in] · [in, out]`, so no backend has to broadcast a batch.
                let dims = x.dims();
                let [d_in, d_out] = m.dims();
                let rows = dims[..D - 1].iter().product::<usize>();
                let mut out = dims;
                out[D - 1] = d_out;
                x.reshape([rows, d_in]).matmul(m.val()).reshape(out)
            }
            (None, None) => unreachable!("a projection holds a Linear or a matrix"),
        }
    }
}
