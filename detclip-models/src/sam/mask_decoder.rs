//! SAM's mask decoder: output tokens (an IoU token and one token per mask) join the prompt
//! tokens in a two-way transformer; the mask tokens then become per-pixel weights (through
//! hypernetwork MLPs) over an upscaled image embedding
//! (`segment_anything/modeling/mask_decoder.py`).

use burn::nn::conv::{ConvTranspose2d, ConvTranspose2dConfig};
use burn::nn::{Embedding, EmbeddingConfig};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use detclip_core::DetError;
use detclip_core::ops::conv_transpose2d_forward;

use super::common::{LayerNorm2d, LayerNorm2dConfig, Mlp};
use super::transformer::{TwoWayTransformer, TwoWayTransformerConfig};

/// Configuration of a [`MaskDecoder`].
#[derive(Config, Debug)]
pub struct MaskDecoderConfig {
    /// Token width (the prompt embedding width).
    #[config(default = 256)]
    pub transformer_dim: usize,
    /// The two-way transformer.
    #[config(default = "TwoWayTransformerConfig::new()")]
    pub transformer: TwoWayTransformerConfig,
    /// Masks predicted when disambiguating (besides the single-mask output).
    #[config(default = 3)]
    pub num_multimask_outputs: usize,
    /// Layers of the IoU prediction MLP.
    #[config(default = 3)]
    pub iou_head_depth: usize,
    /// Hidden width of the IoU prediction MLP.
    #[config(default = 256)]
    pub iou_head_hidden_dim: usize,
}

impl MaskDecoderConfig {
    /// Builds the decoder with Burn's default initialisation.
    pub fn init<B: Backend>(&self, device: &B::Device) -> MaskDecoder<B> {
        let d = self.transformer_dim;
        let num_mask_tokens = self.num_multimask_outputs + 1;
        let up = |i, o| {
            ConvTranspose2dConfig::new([i, o], [2, 2])
                .with_stride([2, 2])
                .init(device)
        };
        MaskDecoder {
            transformer: self.transformer.init(device),
            iou_token: EmbeddingConfig::new(1, d).init(device),
            mask_tokens: EmbeddingConfig::new(num_mask_tokens, d).init(device),
            output_upscaling: OutputUpscaling {
                conv1: up(d, d / 4),
                norm: LayerNorm2dConfig::new(d / 4).init(device),
                conv2: up(d / 4, d / 8),
            },
            output_hypernetworks_mlps: (0..num_mask_tokens)
                .map(|_| Mlp::new(d, d, d / 8, 3, device))
                .collect(),
            iou_prediction_head: Mlp::new(
                d,
                self.iou_head_hidden_dim,
                num_mask_tokens,
                self.iou_head_depth,
                device,
            ),
        }
    }
}

/// SAM's mask decoder (`MaskDecoder`).
#[derive(Module, Debug)]
pub struct MaskDecoder<B: Backend> {
    /// The two-way transformer.
    pub transformer: TwoWayTransformer<B>,
    /// The IoU output token, `[1, C]`.
    pub iou_token: Embedding<B>,
    /// The mask output tokens, `[num_multimask_outputs + 1, C]` (token 0: single-mask output).
    pub mask_tokens: Embedding<B>,
    /// 4× upscaling of the image embedding to `C/8` channels.
    pub output_upscaling: OutputUpscaling<B>,
    /// One hypernetwork per mask token: token → `C/8` per-pixel weights.
    pub output_hypernetworks_mlps: Vec<Mlp<B>>,
    /// IoU token → one predicted IoU per mask token.
    pub iou_prediction_head: Mlp<B>,
}

/// What [`MaskDecoder::forward`] returns.
#[derive(Debug, Clone)]
pub struct MaskDecoderOutput<B: Backend> {
    /// Mask logits at 4× the embedding size, `[B, K, 4h, 4w]` (K = 3 with
    /// `multimask_output`, else 1).
    pub masks: Tensor<B, 4>,
    /// Predicted IoU of each returned mask, `[B, K]`.
    pub iou_predictions: Tensor<B, 2>,
    /// Every token after the two-way transformer (the final LayerNorm included),
    /// `[B, 1 + M + N, C]`: the IoU token, the `M` mask tokens, then the `N` prompt tokens.
    /// RegionSpot's position-aware tokens are these.
    pub tokens: Tensor<B, 3>,
    /// `M`, the number of mask tokens.
    pub num_mask_tokens: usize,
}

impl<B: Backend> MaskDecoderOutput<B> {
    /// The IoU token after the transformer, `[B, C]`.
    pub fn iou_token(&self) -> Tensor<B, 2> {
        self.tokens.clone().narrow(1, 0, 1).squeeze_dim(1)
    }

    /// The mask tokens after the transformer, `[B, M, C]` (all of them, whatever
    /// `multimask_output` was).
    pub fn mask_tokens(&self) -> Tensor<B, 3> {
        self.tokens.clone().narrow(1, 1, self.num_mask_tokens)
    }
}

impl<B: Backend> MaskDecoder<B> {
    /// The number of mask tokens (`num_multimask_outputs + 1`).
    pub fn num_mask_tokens(&self) -> usize {
        self.mask_tokens.weight.dims()[0]
    }

    /// Predicts masks for each prompt set.
    ///
    /// Unlike the reference, which takes one image, `image_embeddings` may also hold one
    /// embedding per prompt set (batch `B`) instead of one shared embedding (batch 1).
    ///
    /// # Shapes
    /// - `image_embeddings`: `[1 or B, C, h, w]`; `image_pe`: `[1, C, h, w]`
    ///   ([`super::PromptEncoder::get_dense_pe`]); `sparse`: `[B, N, C]`; `dense`: `[B, C, h, w]`
    /// - output: see [`MaskDecoderOutput`]
    ///
    /// # Errors
    /// [`DetError::Shape`] when the shapes disagree.
    pub fn forward(
        &self,
        image_embeddings: Tensor<B, 4>,
        image_pe: Tensor<B, 4>,
        sparse: Tensor<B, 3>,
        dense: Tensor<B, 4>,
        multimask_output: bool,
    ) -> Result<MaskDecoderOutput<B>, DetError> {
        self.check(&image_embeddings, &image_pe, &sparse, &dense)?;
        let m = self.num_mask_tokens();
        let (masks, iou, tokens) = self.predict_masks(image_embeddings, image_pe, sparse, dense);
        let [b, _, h, w] = masks.dims();
        let (start, k) = if multimask_output { (1, m - 1) } else { (0, 1) };
        Ok(MaskDecoderOutput {
            masks: masks.slice([0..b, start..start + k, 0..h, 0..w]),
            iou_predictions: iou.slice([0..b, start..start + k]),
            tokens,
            num_mask_tokens: m,
        })
    }

    fn check(
        &self,
        image_embeddings: &Tensor<B, 4>,
        image_pe: &Tensor<B, 4>,
        sparse: &Tensor<B, 3>,
        dense: &Tensor<B, 4>,
    ) -> Result<(), DetError> {
        let c = self.iou_token.weight.dims()[1];
        let err = |what: &'static str, got: [usize; 4], expected: String| {
            Err(DetError::Shape {
                op: "sam mask decoder",
                what,
                got: got.to_vec(),
                expected,
            })
        };
        let [b, _, cs] = sparse.dims();
        if cs != c {
            return Err(DetError::Shape {
                op: "sam mask decoder",
                what: "sparse prompt embeddings",
                got: sparse.dims().to_vec(),
                expected: format!("[B, N, {c}]"),
            });
        }
        let e = image_embeddings.dims();
        if (e[0] != 1 && e[0] != b) || e[1] != c {
            return err("image embeddings", e, format!("[1 or {b}, {c}, h, w]"));
        }
        let [h, w] = [e[2], e[3]];
        if image_pe.dims() != [1, c, h, w] {
            return err("image pe", image_pe.dims(), format!("[1, {c}, {h}, {w}]"));
        }
        if dense.dims() != [b, c, h, w] {
            return err(
                "dense prompt embeddings",
                dense.dims(),
                format!("[{b}, {c}, {h}, {w}]"),
            );
        }
        Ok(())
    }

    /// All `M` masks and IoU predictions, and the transformer's output tokens.
    fn predict_masks(
        &self,
        image_embeddings: Tensor<B, 4>,
        image_pe: Tensor<B, 4>,
        sparse: Tensor<B, 3>,
        dense: Tensor<B, 4>,
    ) -> (Tensor<B, 4>, Tensor<B, 2>, Tensor<B, 3>) {
        let [b, _, c] = sparse.dims();
        let m = self.num_mask_tokens();
        let output_tokens = Tensor::cat(
            vec![self.iou_token.weight.val(), self.mask_tokens.weight.val()],
            0,
        )
        .unsqueeze_dim::<3>(0)
        .expand([b, 1 + m, c]);
        let tokens = Tensor::cat(vec![output_tokens, sparse], 1);
        let [_, _, h, w] = dense.dims();
        let src = image_embeddings.expand([b, c, h, w]) + dense;
        let pos_src = image_pe.expand([b, c, h, w]);

        let (hs, src) = self.transformer.forward(src, pos_src, tokens);
        let iou_token_out = hs.clone().narrow(1, 0, 1).squeeze_dim::<2>(1);
        let src = src.swap_dims(1, 2).reshape([b, c, h, w]);
        let upscaled = self.output_upscaling.forward(src);
        let [_, c8, uh, uw] = upscaled.dims();
        let hyper_in = Tensor::stack::<3>(
            self.output_hypernetworks_mlps
                .iter()
                .enumerate()
                .map(|(i, mlp)| mlp.forward(hs.clone().narrow(1, 1 + i, 1).squeeze_dim::<2>(1)))
                .collect(),
            1,
        );
        let masks = hyper_in
            .matmul(upscaled.reshape([b, c8, uh * uw]))
            .reshape([b, m, uh, uw]);
        let iou = self.iou_prediction_head.forward(iou_token_out);
        (masks, iou, hs)
    }
}

/// The 4× upscaling (`output_upscaling`): transposed conv, LayerNorm2d, GELU, transposed
/// conv, GELU.
#[derive(Module, Debug)]
pub struct OutputUpscaling<B: Backend> {
    /// `output_upscaling.0`: C → C/4, 2×2 stride 2.
    pub conv1: ConvTranspose2d<B>,
    /// `output_upscaling.1`.
    pub norm: LayerNorm2d<B>,
    /// `output_upscaling.3`: C/4 → C/8, 2×2 stride 2.
    pub conv2: ConvTranspose2d<B>,
}

impl<B: Backend> OutputUpscaling<B> {
    /// # Shapes
    /// - `x`: `[B, C, h, w]` → `[B, C/8, 4h, 4w]`
    pub fn forward(&self, x: Tensor<B, 4>) -> Tensor<B, 4> {
        // Both are 2×2 stride-2: one matrix product each (`conv_transpose2d_blocks`).
        let x = gelu(self.norm.forward(conv_transpose2d_forward(&self.conv1, x)));
        gelu(conv_transpose2d_forward(&self.conv2, x))
    }
}
