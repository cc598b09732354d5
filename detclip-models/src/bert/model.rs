use std::ops::Range;

use burn::nn::{Embedding, EmbeddingConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use detclip_core::DetError;

use crate::attention::{multi_head_attention, padding_bias};
use crate::import::KeyMap;
use crate::layers::linear_rows;

/// Sizes of a BERT encoder (the fields of HF's `BertConfig` that shape the weights).
#[derive(Config, Debug)]
pub struct BertConfig {
    /// Vocabulary size.
    #[config(default = 30522)]
    pub vocab_size: usize,
    /// Width of the hidden states.
    #[config(default = 768)]
    pub hidden_size: usize,
    /// Number of layers.
    #[config(default = 12)]
    pub num_layers: usize,
    /// Attention heads per layer.
    #[config(default = 12)]
    pub num_heads: usize,
    /// Width of the feed-forward layer.
    #[config(default = 3072)]
    pub intermediate_size: usize,
    /// Longest sequence the position embeddings cover.
    #[config(default = 512)]
    pub max_position_embeddings: usize,
    /// Number of token types (segments).
    #[config(default = 2)]
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    #[config(default = 1e-12)]
    pub layer_norm_eps: f64,
    /// Whether the model has the pooler (`tanh(dense(h[CLS]))`).
    #[config(default = true)]
    pub with_pooler: bool,
}

impl BertConfig {
    /// `bert-base-uncased`, GLIP's language encoder.
    pub fn base() -> Self {
        Self::new()
    }

    /// Builds the encoder with freshly initialised weights.
    pub fn init<B: Backend>(&self, device: &B::Device) -> Bert<B> {
        let norm = || {
            LayerNormConfig::new(self.hidden_size)
                .with_epsilon(self.layer_norm_eps)
                .init(device)
        };
        let linear = |i, o| LinearConfig::new(i, o).init(device);
        let h = self.hidden_size;
        Bert {
            embeddings: BertEmbeddings {
                word_embeddings: EmbeddingConfig::new(self.vocab_size, h).init(device),
                position_embeddings: EmbeddingConfig::new(self.max_position_embeddings, h)
                    .init(device),
                token_type_embeddings: EmbeddingConfig::new(self.type_vocab_size, h).init(device),
                norm: norm(),
            },
            layers: (0..self.num_layers)
                .map(|_| BertLayer {
                    query: linear(h, h),
                    key: linear(h, h),
                    value: linear(h, h),
                    attention_output: linear(h, h),
                    attention_norm: norm(),
                    intermediate: linear(h, self.intermediate_size),
                    output: linear(self.intermediate_size, h),
                    output_norm: norm(),
                    num_heads: self.num_heads,
                })
                .collect(),
            pooler: self.with_pooler.then(|| linear(h, h)),
            max_positions: self.max_position_embeddings,
        }
    }
}

/// Word + position + token-type embeddings, then LayerNorm.
#[derive(Module, Debug)]
pub struct BertEmbeddings<B: Backend> {
    /// Token embeddings `[vocab, D]`.
    pub word_embeddings: Embedding<B>,
    /// Absolute position embeddings `[max_positions, D]`.
    pub position_embeddings: Embedding<B>,
    /// Segment embeddings `[type_vocab, D]`.
    pub token_type_embeddings: Embedding<B>,
    /// LayerNorm over the sum.
    pub norm: LayerNorm<B>,
}

/// One post-norm transformer layer: self-attention and a GELU feed-forward, each followed by
/// a residual LayerNorm.
#[derive(Module, Debug)]
pub struct BertLayer<B: Backend> {
    /// Query projection.
    pub query: Linear<B>,
    /// Key projection.
    pub key: Linear<B>,
    /// Value projection.
    pub value: Linear<B>,
    /// Attention output projection.
    pub attention_output: Linear<B>,
    /// LayerNorm after the attention residual.
    pub attention_norm: LayerNorm<B>,
    /// Feed-forward expansion.
    pub intermediate: Linear<B>,
    /// Feed-forward contraction.
    pub output: Linear<B>,
    /// LayerNorm after the feed-forward residual.
    pub output_norm: LayerNorm<B>,
    /// Attention heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> BertLayer<B> {
    /// `[N, L, D]` hidden states and the additive attention bias `[N, 1, 1, L]` → `[N, L, D]`.
    pub fn forward(&self, x: Tensor<B, 3>, bias: Tensor<B, 4>) -> Tensor<B, 3> {
        let context = multi_head_attention(
            linear_rows(&self.query, x.clone()),
            linear_rows(&self.key, x.clone()),
            linear_rows(&self.value, x.clone()),
            self.num_heads,
            Some(bias),
        );
        let x = self
            .attention_norm
            .forward(linear_rows(&self.attention_output, context) + x);
        let y = linear_rows(
            &self.output,
            gelu(linear_rows(&self.intermediate, x.clone())),
        );
        self.output_norm.forward(y + x)
    }
}

/// The BERT encoder (HF `BertModel`).
#[derive(Module, Debug)]
pub struct Bert<B: Backend> {
    /// Input embeddings.
    pub embeddings: BertEmbeddings<B>,
    /// The transformer layers.
    pub layers: Vec<BertLayer<B>>,
    /// `dense` of the pooler, when the model has one.
    pub pooler: Option<Linear<B>>,
    #[module(skip)]
    max_positions: usize,
}

/// What [`Bert::forward`] returns.
#[derive(Debug, Clone)]
pub struct BertOutput<B: Backend> {
    /// The embedding output followed by each layer's output: `num_layers + 1` tensors
    /// `[N, L, D]` (HF's `hidden_states`).
    pub hidden_states: Vec<Tensor<B, 3>>,
    /// `tanh(dense(h_last[:, 0]))`, `[N, D]`, when the model has a pooler.
    pub pooled: Option<Tensor<B, 2>>,
}

impl<B: Backend> BertOutput<B> {
    /// The last layer's hidden states `[N, L, D]`.
    pub fn last_hidden_state(&self) -> Tensor<B, 3> {
        self.hidden_states
            .last()
            .expect("hidden_states always holds the embedding output")
            .clone()
    }
}

impl<B: Backend> Bert<B> {
    /// Number of transformer layers.
    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Embeds `input_ids` and runs every layer.
    ///
    /// # Shapes
    /// - `input_ids`: `[N, L]`, `L ≤ max_position_embeddings`
    /// - `attention_mask`: `[N, L]`, 1 for tokens, 0 for padding
    /// - `token_type_ids`: `[N, L]` or `None` (all zero)
    ///
    /// # Errors
    /// [`DetError::Shape`] when the shapes disagree or `L` exceeds the position embeddings.
    pub fn forward(
        &self,
        input_ids: Tensor<B, 2, Int>,
        attention_mask: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> detclip_core::Result<BertOutput<B>> {
        let hidden = self.embed(input_ids, token_type_ids)?;
        let hidden_states = self.forward_layers(hidden, attention_mask, 0..self.layers.len())?;
        let pooled = self.pool(hidden_states.last().expect("non-empty").clone());
        Ok(BertOutput {
            hidden_states,
            pooled,
        })
    }

    /// The embedding output `[N, L, D]` (word + position + token type, LayerNorm).
    ///
    /// # Errors
    /// [`DetError::Shape`] as for [`Bert::forward`].
    pub fn embed(
        &self,
        input_ids: Tensor<B, 2, Int>,
        token_type_ids: Option<Tensor<B, 2, Int>>,
    ) -> detclip_core::Result<Tensor<B, 3>> {
        let [n, l] = input_ids.dims();
        if l == 0 || l > self.max_positions {
            return Err(shape_error(
                "input_ids",
                &[n, l],
                format!("[N, L] with 1 ≤ L ≤ {}", self.max_positions),
            ));
        }
        let device = input_ids.device();
        let token_type_ids = match token_type_ids {
            Some(t) if t.dims() != [n, l] => {
                return Err(shape_error(
                    "token_type_ids",
                    &t.dims(),
                    format!("[{n}, {l}] like input_ids"),
                ));
            }
            Some(t) => t,
            None => Tensor::zeros([n, l], &device),
        };
        let positions = Tensor::<B, 1, Int>::arange(0..l as i64, &device)
            .reshape([1, l])
            .expand([n, l]);
        let e = &self.embeddings;
        let sum = e.word_embeddings.forward(input_ids)
            + e.position_embeddings.forward(positions)
            + e.token_type_embeddings.forward(token_type_ids);
        Ok(e.norm.forward(sum))
    }

    /// Runs layers `range` on `hidden` (the output of layer `range.start - 1`, or of the
    /// embeddings when it is 0) and returns its input followed by each layer's output
    /// (`range.len() + 1` tensors). GLIP runs the first layers alone and the last ones
    /// interleaved with its cross-modal fusion.
    ///
    /// # Shapes
    /// - `hidden`: `[N, L, D]`; `attention_mask`: `[N, L]` (1 keep, 0 padding)
    ///
    /// # Errors
    /// [`DetError::Shape`] on a mask of the wrong shape; [`DetError::InvalidOption`] when
    /// `range` is not within `0..num_layers`.
    pub fn forward_layers(
        &self,
        hidden: Tensor<B, 3>,
        attention_mask: Tensor<B, 2, Int>,
        range: Range<usize>,
    ) -> detclip_core::Result<Vec<Tensor<B, 3>>> {
        let [n, l, _] = hidden.dims();
        if attention_mask.dims() != [n, l] {
            return Err(shape_error(
                "attention_mask",
                &attention_mask.dims(),
                format!("[{n}, {l}] like the hidden states"),
            ));
        }
        if range.start > range.end || range.end > self.layers.len() {
            return Err(DetError::InvalidOption {
                op: "Bert::forward_layers",
                why: format!(
                    "layer range {range:?} is not within 0..{}",
                    self.layers.len()
                ),
            });
        }
        let bias = padding_bias(attention_mask);
        let mut states = vec![hidden];
        for layer in &self.layers[range] {
            let last = states.last().expect("non-empty").clone();
            states.push(layer.forward(last, bias.clone()));
        }
        Ok(states)
    }

    /// The pooler on the first ([CLS]) token of `last`, `[N, L, D]` → `[N, D]`.
    pub fn pool(&self, last: Tensor<B, 3>) -> Option<Tensor<B, 2>> {
        let [n, _, d] = last.dims();
        self.pooler.as_ref().map(|dense| {
            dense
                .forward(last.slice(s![.., 0..1, ..]).reshape([n, d]))
                .tanh()
        })
    }
}

fn shape_error(what: &'static str, got: &[usize], expected: String) -> DetError {
    DetError::Shape {
        op: "Bert",
        what,
        got: got.to_vec(),
        expected,
    }
}

/// Key map of Hugging Face BERT checkpoints (`BertModel`, or `BertFor*` with a `bert.` prefix)
/// onto [`Bert`]: `encoder.layer.{i}.attention.self.{query,key,value}` →
/// `layers.{i}.{query,key,value}`, `attention.output.{dense,LayerNorm}` →
/// `attention_output` / `attention_norm`, `intermediate.dense` → `intermediate`,
/// `output.{dense,LayerNorm}` → `output` / `output_norm`, `pooler.dense` → `pooler`. Ignored:
/// the `position_ids` buffer and pre-training heads (`cls.*`); also the pooler, when the
/// model is built without one.
pub fn hf_bert_keys() -> KeyMap {
    KeyMap::new()
        .rename(r"^bert\.", "")
        .rename(r"^embeddings\.LayerNorm\.", "embeddings.norm.")
        .rename(r"^encoder\.layer\.(\d+)\.", "layers.$1.")
        .rename(r"\.attention\.self\.(query|key|value)\.", ".$1.")
        .rename(r"\.attention\.output\.dense\.", ".attention_output.")
        .rename(r"\.attention\.output\.LayerNorm\.", ".attention_norm.")
        .rename(r"\.intermediate\.dense\.", ".intermediate.")
        .rename(r"\.output\.dense\.", ".output.")
        .rename(r"\.output\.LayerNorm\.", ".output_norm.")
        .rename(r"^pooler\.dense\.", "pooler.")
        .ignore(r"position_ids$")
        .ignore(r"^cls\.")
        .ignore(r"^pooler\.")
}
