use burn::module::{Initializer, Param};
use burn::nn::{Embedding, EmbeddingConfig, LayerNorm};
use burn::prelude::*;
use detclip_core::DetError;

use super::block::{BlockSizes, ClipBlock, ClipLayout, Projection};
use crate::attention::{causal_bias, padding_bias};

/// Which token's state is the sentence embedding.
#[derive(Config, Debug, Copy, PartialEq, Eq)]
pub enum EotPooling {
    /// The token with the largest id (OpenAI CLIP, where end-of-text is the largest id; HF
    /// configs with `eos_token_id == 2` behave the same). Ties go to the first.
    ArgMax,
    /// The first occurrence of this id (HF `CLIPTextModel` with a proper `eos_token_id`).
    TokenId(u32),
}

/// Sizes of CLIP's text transformer.
#[derive(Config, Debug)]
pub struct ClipTextConfig {
    /// Vocabulary size.
    #[config(default = 49408)]
    pub vocab_size: usize,
    /// Context length (rows of the position embeddings).
    #[config(default = 77)]
    pub context_length: usize,
    /// Token width.
    #[config(default = 512)]
    pub width: usize,
    /// Number of blocks.
    #[config(default = 12)]
    pub layers: usize,
    /// Attention heads.
    #[config(default = 8)]
    pub heads: usize,
    /// MLP width.
    #[config(default = 2048)]
    pub mlp_width: usize,
    /// Width of the joint embedding space.
    #[config(default = 512)]
    pub embed_dim: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-5)]
    pub layer_norm_eps: f64,
    /// Checkpoint layout.
    #[config(default = "ClipLayout::Hf")]
    pub layout: ClipLayout,
    /// Sentence pooling.
    #[config(default = "EotPooling::ArgMax")]
    pub pooling: EotPooling,
}

impl ClipTextConfig {
    /// Builds the tower with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> ClipText<B> {
        let sizes = BlockSizes {
            width: self.width,
            heads: self.heads,
            mlp: self.mlp_width,
            eps: self.layer_norm_eps,
            layout: self.layout,
        };
        ClipText {
            token_embedding: EmbeddingConfig::new(self.vocab_size, self.width).init(device),
            position_embedding: Initializer::Normal {
                mean: 0.0,
                std: 0.01,
            }
            .init([self.context_length, self.width], device),
            layers: sizes.blocks(self.layers, device),
            final_norm: sizes.norm(device),
            projection: Projection::new(self.width, self.embed_dim, self.layout, device),
            pooling: self.pooling,
        }
    }
}

/// CLIP's text transformer: token + position embeddings, causal pre-norm blocks,
/// `ln_final`, the end-of-text token's state projected.
#[derive(Module, Debug)]
pub struct ClipText<B: Backend> {
    /// Token embeddings `[vocab, D]`.
    pub token_embedding: Embedding<B>,
    /// Position embeddings `[context, D]`.
    pub position_embedding: Param<Tensor<B, 2>>,
    /// The blocks (causal self-attention).
    pub layers: Vec<ClipBlock<B>>,
    /// `final_layer_norm` / `ln_final`.
    pub final_norm: LayerNorm<B>,
    /// `text_projection`.
    pub projection: Projection<B>,
    /// Sentence pooling.
    #[module(skip)]
    pub pooling: EotPooling,
}

/// What [`ClipText::forward`] returns.
#[derive(Debug, Clone)]
pub struct ClipTextOutput<B: Backend> {
    /// Every token's state after `ln_final`, `[N, L, D]`.
    pub hidden: Tensor<B, 3>,
    /// The projected end-of-text state, `[N, E]` (not normalised).
    pub text_embeds: Tensor<B, 2>,
}

impl<B: Backend> ClipText<B> {
    /// Encodes token ids. Padding after the end-of-text token needs no mask: the attention is
    /// causal, so the pooled state never sees it.
    ///
    /// # Shapes
    /// - `input_ids`: `[N, L]`, `1 ≤ L ≤ context_length`
    ///
    /// # Errors
    /// [`DetError::Shape`] when `L` is 0 or longer than the context.
    pub fn forward(&self, input_ids: Tensor<B, 2, Int>) -> detclip_core::Result<ClipTextOutput<B>> {
        self.forward_masked(input_ids, None)
    }

    /// [`ClipText::forward`] with transformers' `attention_mask` (1 token, 0 padding): padded
    /// keys are hidden from every query on top of the causal mask, so that every position's
    /// state — padding included — is what transformers' `CLIPTextModel` computes. The pooled
    /// embedding is the same with or without it.
    ///
    /// # Shapes
    /// - `input_ids`, `attention_mask`: `[N, L]`, `1 ≤ L ≤ context_length`
    ///
    /// # Errors
    /// As [`ClipText::forward`], and [`DetError::Shape`] for a mask of another shape.
    pub fn forward_masked(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Option<Tensor<B, 2, Int>>,
    ) -> detclip_core::Result<ClipTextOutput<B>> {
        let [n, l] = input_ids.dims();
        let [context, d] = self.position_embedding.dims();
        if l == 0 || l > context || n == 0 {
            return Err(DetError::Shape {
                op: "ClipText",
                what: "input_ids",
                got: vec![n, l],
                expected: format!("[N ≥ 1, L] with 1 ≤ L ≤ {context}"),
            });
        }
        let device = input_ids.device();
        let positions = self
            .position_embedding
            .val()
            .slice(s![0..l, ..])
            .unsqueeze();
        let mut x = self.token_embedding.forward(input_ids.clone()) + positions;
        let mut bias = causal_bias::<B>(l, &device);
        if let Some(mask) = attention_mask {
            if mask.dims() != [n, l] {
                return Err(DetError::Shape {
                    op: "ClipText",
                    what: "attention_mask",
                    got: mask.dims().to_vec(),
                    expected: format!("[{n}, {l}] like input_ids"),
                });
            }
            bias = bias + padding_bias(mask);
        }
        for block in &self.layers {
            x = block.forward(x, Some(bias.clone()));
        }
        let hidden = self.final_norm.forward(x);
        let at = self
            .eot_positions(input_ids)
            .reshape([n, 1, 1])
            .expand([n, 1, d]);
        let pooled = hidden.clone().gather(1, at).reshape([n, d]);
        Ok(ClipTextOutput {
            hidden,
            text_embeds: self.projection.forward(pooled),
        })
    }

    /// The position of each sequence's end-of-text token, `[N]`. Scores are made unique so
    /// that ties go to the first position on every backend: `ArgMax` ranks by
    /// `id · L + (L − 1 − pos)`, `TokenId` by `[id == eos] · (L − pos)`.
    fn eot_positions(&self, ids: Tensor<B, 2, Int>) -> Tensor<B, 1, Int> {
        let [n, l] = ids.dims();
        let reverse = Tensor::<B, 1, Int>::arange(0..l as i64, &ids.device())
            .neg()
            .add_scalar(l as i64 - 1)
            .reshape([1, l])
            .expand([n, l]);
        let score = match self.pooling {
            EotPooling::ArgMax => ids.mul_scalar(l as i64) + reverse,
            EotPooling::TokenId(eos) => ids.equal_elem(eos as i64).int() * reverse.add_scalar(1),
        };
        score.argmax(1).reshape([n])
    }
}
