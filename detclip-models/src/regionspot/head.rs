use burn::nn::{Dropout, DropoutConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::activation::relu;
use detclip_core::DetError;

use crate::attention::multi_head_attention;

/// Sizes of the trainable RegionSpot module ([`RegionSpotHead`]). The defaults are the
/// official `build_decoder` defaults with CLIP ViT-L/14 (`clip_type = CLIP_400M_Large`).
#[derive(Config, Debug)]
pub struct RegionSpotHeadConfig {
    /// Width of SAM's tokens (`transformer_dim`, 256 for every released SAM).
    #[config(default = 256)]
    pub sam_dim: usize,
    /// Width of CLIP's vision tokens (`clip_dim`: 768 for ViT-B/16, 1024 for ViT-L/14); the
    /// decoder runs at this width.
    #[config(default = 1024)]
    pub clip_dim: usize,
    /// Width of CLIP's joint embedding space (`text_dim`: 512 for ViT-B/16, 768 for ViT-L/14).
    #[config(default = 768)]
    pub text_dim: usize,
    /// Attention heads of the decoder.
    #[config(default = 8)]
    pub heads: usize,
    /// Decoder layers.
    #[config(default = 3)]
    pub layers: usize,
    /// Hidden width of the decoder's feed-forward network.
    #[config(default = 2048)]
    pub ffn_dim: usize,
    /// Dropout in the decoder (active only while training, on an autodiff backend).
    #[config(default = 0.1)]
    pub dropout: f64,
    /// Whether the cross-attention keys carry SAM's positional encoding of each CLIP patch
    /// centre (`key_pos`, not in the official module; see [`RegionSpotHead::key_pos`]).
    #[config(default = false)]
    pub key_positions: bool,
    /// Whether the cross-attention queries carry SAM's positional encoding of each box's
    /// centre (`query_pos`, not in the official module; see [`RegionSpotHead::query_pos`]).
    #[config(default = false)]
    pub query_positions: bool,
    /// Whether CLIP's tokens are layer-normalised (no affine parameters) before the decoder
    /// reads them: the official `ln_clip`, which the official module defines but never calls.
    #[config(default = false)]
    pub clip_norm: bool,
}

impl RegionSpotHeadConfig {
    /// The official sizes for CLIP ViT-B/16 (`clip_type = CLIP_400M`).
    pub fn vit_b_16() -> Self {
        Self::new().with_clip_dim(768).with_text_dim(512)
    }

    /// The official sizes for CLIP ViT-L/14 (`CLIP_400M_Large`, also `…_Large_336`).
    pub fn vit_l_14() -> Self {
        Self::new()
    }

    /// Builds the module with fresh weights.
    ///
    /// # Panics
    /// When `clip_dim` is not a multiple of `heads` (a configuration error).
    pub fn init<B: Backend>(&self, device: &B::Device) -> RegionSpotHead<B> {
        assert!(
            self.heads > 0 && self.clip_dim.is_multiple_of(self.heads),
            "RegionSpotHeadConfig: clip_dim {} is not a multiple of heads {}",
            self.clip_dim,
            self.heads
        );
        let layer = || DecoderLayer {
            self_attn: MultiheadAttention::new(self.clip_dim, self.heads, device),
            multihead_attn: MultiheadAttention::new(self.clip_dim, self.heads, device),
            linear1: LinearConfig::new(self.clip_dim, self.ffn_dim).init(device),
            linear2: LinearConfig::new(self.ffn_dim, self.clip_dim).init(device),
            norm1: LayerNormConfig::new(self.clip_dim).init(device),
            norm2: LayerNormConfig::new(self.clip_dim).init(device),
            norm3: LayerNormConfig::new(self.clip_dim).init(device),
            dropout: DropoutConfig::new(self.dropout).init(),
        };
        RegionSpotHead {
            to_clip: LinearConfig::new(self.sam_dim, self.clip_dim).init(device),
            decoder: RegionDecoder {
                layers: (0..self.layers).map(|_| layer()).collect(),
                norm: LayerNormConfig::new(self.clip_dim).init(device),
            },
            projector: LinearConfig::new(self.clip_dim, self.text_dim).init(device),
            key_pos: self
                .key_positions
                .then(|| LinearConfig::new(self.sam_dim, self.clip_dim).init(device)),
            query_pos: self
                .query_positions
                .then(|| LinearConfig::new(self.sam_dim, self.clip_dim).init(device)),
            clip_norm: self.clip_norm,
        }
    }
}

/// RegionSpot's trainable module (Yang et al., "Recognize Any Regions", NeurIPS 2024, §3.2):
/// SAM's position-aware tokens, projected to CLIP's width (`to_clip`), query CLIP's image
/// feature map through a transformer decoder (`decoder`: self-attention among the regions,
/// cross-attention to every CLIP token, FFN, post-norm), and the result is projected into
/// CLIP's joint space (`projector`) as one semantic token per region.
///
/// The official `ln_clip` (a `LayerNorm` without parameters) is never called in the official
/// forward and is left out; neither does the official code add positional encodings to the
/// queries or keys (the decoder supports them, RegionSpot passes none), so neither do we by
/// default: the CLIP tokens already carry CLIP's own position embeddings. The optional
/// [`Self::key_pos`] adds SAM's positions to the keys.
#[derive(Module, Debug)]
pub struct RegionSpotHead<B: Backend> {
    /// SAM width → CLIP vision width.
    pub to_clip: Linear<B>,
    /// The cross-attention decoder.
    pub decoder: RegionDecoder<B>,
    /// CLIP vision width → joint embedding width.
    pub projector: Linear<B>,
    /// Optional (not in the official module): SAM's positional encoding of each CLIP patch
    /// centre (the random-Fourier encoding SAM's decoder adds to its own image tokens and box
    /// corners), mapped to CLIP's width and added to the cross-attention keys, as DETR adds
    /// `pos` to its memory keys. The queries come from SAM tokens, which were computed in that
    /// encoding's terms, so a query can find its box's patches by position.
    pub key_pos: Option<Linear<B>>,
    /// Optional (not in the official module): SAM's positional encoding of the box's centre,
    /// mapped to CLIP's width and added to the cross-attention queries (DETR's `query_pos`),
    /// so that a query states where its box is even when SAM's token does not.
    pub query_pos: Option<Linear<B>>,
    /// Whether CLIP's tokens pass the official `ln_clip` (a `LayerNorm` without parameters,
    /// defined but never called by the official forward) before the decoder.
    #[module(skip)]
    pub clip_norm: bool,
}

impl<B: Backend> RegionSpotHead<B> {
    /// Semantic tokens for regions.
    ///
    /// # Shapes
    /// - `region_tokens`: `[B, N, sam_dim]` (SAM's position-aware tokens, N regions per image)
    /// - `clip_features`: `[B, L, clip_dim]` (CLIP's feature map: class token and patch tokens)
    /// - `key_positions`: `[1, L, sam_dim]`, SAM's encoding of each token's position (zero for
    ///   the class token); read only when the module has [`Self::key_pos`]
    /// - output: `[B, N, text_dim]` (not normalised)
    ///
    /// # Errors
    /// [`DetError::Shape`] when the widths or batch sizes disagree with the module, or when
    /// the module has `key_pos` and `key_positions` is missing or mis-shaped.
    pub fn forward(
        &self,
        region_tokens: Tensor<B, 3>,
        clip_features: Tensor<B, 3>,
        key_positions: Option<Tensor<B, 3>>,
    ) -> Result<Tensor<B, 3>, DetError> {
        self.forward_with_positions(region_tokens, clip_features, key_positions, None)
    }

    /// [`Self::forward`] with the boxes' positions for [`Self::query_pos`].
    ///
    /// # Shapes
    /// - `query_positions`: `[B, N, sam_dim]`, SAM's encoding of each box's centre; read only
    ///   when the module has `query_pos`
    ///
    /// # Errors
    /// As [`Self::forward`]; also when the module has `query_pos` and `query_positions` is
    /// missing or mis-shaped.
    pub fn forward_with_positions(
        &self,
        region_tokens: Tensor<B, 3>,
        clip_features: Tensor<B, 3>,
        key_positions: Option<Tensor<B, 3>>,
        query_positions: Option<Tensor<B, 3>>,
    ) -> Result<Tensor<B, 3>, DetError> {
        let [sam_dim, clip_dim] = self.to_clip.weight.dims();
        let [b, n, d] = region_tokens.dims();
        if d != sam_dim || n == 0 || b == 0 {
            return Err(DetError::Shape {
                op: "RegionSpotHead",
                what: "region_tokens",
                got: vec![b, n, d],
                expected: format!("[B ≥ 1, N ≥ 1, {sam_dim}]"),
            });
        }
        let [bf, l, df] = clip_features.dims();
        if bf != b || df != clip_dim || l == 0 {
            return Err(DetError::Shape {
                op: "RegionSpotHead",
                what: "clip_features",
                got: vec![bf, l, df],
                expected: format!("[{b}, L ≥ 1, {clip_dim}]"),
            });
        }
        let pos = project_positions(
            &self.key_pos,
            key_positions,
            [1, l, sam_dim],
            "key_positions",
        )?
        .map(|p| p.expand([b, l, clip_dim]));
        let query_pos = project_positions(
            &self.query_pos,
            query_positions,
            [b, n, sam_dim],
            "query_positions",
        )?;
        let queries = self.to_clip.forward(region_tokens);
        let clip_features = if self.clip_norm {
            let (var, mean) = clip_features.clone().var_mean_bias(2);
            (clip_features - mean) / (var + 1e-5).sqrt()
        } else {
            clip_features
        };
        Ok(self.projector.forward(self.decoder.forward_with_query_pos(
            queries,
            clip_features,
            pos,
            query_pos,
        )))
    }

    /// Width of the joint embedding space the semantic tokens live in.
    pub fn text_dim(&self) -> usize {
        self.projector.weight.dims()[1]
    }
}

/// `linear(positions)` when the module has that projection (`None` when it has not); an
/// error naming `what` when it has one and the positions are missing or not `[…] = dims`.
fn project_positions<B: Backend>(
    linear: &Option<Linear<B>>,
    positions: Option<Tensor<B, 3>>,
    dims: [usize; 3],
    what: &'static str,
) -> Result<Option<Tensor<B, 3>>, DetError> {
    match (linear, positions) {
        (None, _) => Ok(None),
        (Some(linear), Some(pe)) if pe.dims() == dims => Ok(Some(linear.forward(pe))),
        (Some(_), pe) => Err(DetError::Shape {
            op: "RegionSpotHead",
            what,
            got: pe.map(|p| p.dims().to_vec()).unwrap_or_default(),
            expected: format!("{dims:?} (the module adds these positions to its attention)"),
        }),
    }
}

/// DETR's transformer decoder as RegionSpot builds it (`build_decoder`): post-norm layers and
/// a final `LayerNorm`.
#[derive(Module, Debug)]
pub struct RegionDecoder<B: Backend> {
    /// The layers.
    pub layers: Vec<DecoderLayer<B>>,
    /// The final norm.
    pub norm: LayerNorm<B>,
}

impl<B: Backend> RegionDecoder<B> {
    /// `[B, N, D]` queries over `[B, L, D]` memory (keys plus `pos`, when given) → `[B, N, D]`.
    pub fn forward(
        &self,
        queries: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        pos: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        self.forward_with_query_pos(queries, memory, pos, None)
    }

    /// [`Self::forward`] with `query_pos` `[B, N, D]` added to the cross-attention's queries
    /// (DETR's `query_pos`).
    pub fn forward_with_query_pos(
        &self,
        queries: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        pos: Option<Tensor<B, 3>>,
        query_pos: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let keys = match pos {
            Some(pos) => memory.clone() + pos,
            None => memory.clone(),
        };
        let x = self.layers.iter().fold(queries, |x, layer| {
            layer.forward(x, keys.clone(), memory.clone(), query_pos.clone())
        });
        self.norm.forward(x)
    }
}

/// One post-norm decoder layer (`TransformerDecoderLayer.forward_post`):
/// `x = norm1(x + self_attn(x))`, `x = norm2(x + cross_attn(x, memory))`,
/// `x = norm3(x + linear2(relu(linear1(x))))`; the cross-attention's keys are the memory
/// plus its positions, and its queries plus the boxes' positions, when the module has them
/// (DETR's `with_pos_embed`).
#[derive(Module, Debug)]
pub struct DecoderLayer<B: Backend> {
    /// Self-attention among the region queries.
    pub self_attn: MultiheadAttention<B>,
    /// Cross-attention: region queries, CLIP tokens as keys and values.
    pub multihead_attn: MultiheadAttention<B>,
    /// FFN, first layer.
    pub linear1: Linear<B>,
    /// FFN, second layer.
    pub linear2: Linear<B>,
    /// Norm after self-attention.
    pub norm1: LayerNorm<B>,
    /// Norm after cross-attention.
    pub norm2: LayerNorm<B>,
    /// Norm after the FFN.
    pub norm3: LayerNorm<B>,
    /// Dropout (the reference's `dropout`, `dropout1..3` share one rate).
    pub dropout: Dropout,
}

impl<B: Backend> DecoderLayer<B> {
    /// `[B, N, D]` queries (plus `query_pos` in the cross-attention), `[B, L, D]` keys and
    /// memory (values) → `[B, N, D]`.
    pub fn forward(
        &self,
        x: Tensor<B, 3>,
        keys: Tensor<B, 3>,
        memory: Tensor<B, 3>,
        query_pos: Option<Tensor<B, 3>>,
    ) -> Tensor<B, 3> {
        let attended = self.self_attn.forward(x.clone(), x.clone(), x.clone());
        let x = self.norm1.forward(x + self.dropout.forward(attended));
        let query = match query_pos {
            Some(pos) => x.clone() + pos,
            None => x.clone(),
        };
        let attended = self.multihead_attn.forward(query, keys, memory);
        let x = self.norm2.forward(x + self.dropout.forward(attended));
        let hidden = self.dropout.forward(relu(self.linear1.forward(x.clone())));
        let ffn = self.linear2.forward(hidden);
        self.norm3.forward(x + self.dropout.forward(ffn))
    }
}

/// `torch.nn.MultiheadAttention` (batch first): one fused input projection `D → 3D` (q, k, v
/// in that order, the official `in_proj_weight`/`in_proj_bias`) and `out_proj`.
#[derive(Module, Debug)]
pub struct MultiheadAttention<B: Backend> {
    /// Fused q/k/v projection.
    pub in_proj: Linear<B>,
    /// Output projection.
    pub out_proj: Linear<B>,
    /// Heads.
    #[module(skip)]
    pub num_heads: usize,
}

impl<B: Backend> MultiheadAttention<B> {
    fn new(width: usize, num_heads: usize, device: &B::Device) -> Self {
        Self {
            in_proj: LinearConfig::new(width, 3 * width).init(device),
            out_proj: LinearConfig::new(width, width).init(device),
            num_heads,
        }
    }

    /// Attention of `query` `[B, Nq, D]` over `key`/`value` `[B, Nk, D]` → `[B, Nq, D]`.
    pub fn forward(
        &self,
        query: Tensor<B, 3>,
        key: Tensor<B, 3>,
        value: Tensor<B, 3>,
    ) -> Tensor<B, 3> {
        let q = self.project(query, 0);
        let k = self.project(key, 1);
        let v = self.project(value, 2);
        self.out_proj
            .forward(multi_head_attention(q, k, v, self.num_heads, None))
    }

    /// The `part`-th third of the fused projection (0 = q, 1 = k, 2 = v) applied to `x`.
    fn project(&self, x: Tensor<B, 3>, part: usize) -> Tensor<B, 3> {
        let d = self.in_proj.weight.dims()[0];
        let cols = part * d..(part + 1) * d;
        let weight = self.in_proj.weight.val().slice(s![.., cols.clone()]);
        let out = x.matmul(weight.unsqueeze());
        match &self.in_proj.bias {
            Some(bias) => out + bias.val().slice(s![cols]).unsqueeze(),
            None => out,
        }
    }
}
