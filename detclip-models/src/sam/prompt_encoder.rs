//! SAM's prompt encoder: points and box corners become sparse tokens (random Fourier position
//! features plus a learned type embedding), a mask prompt becomes a dense map through a small
//! conv stack, and no mask becomes a learned constant map
//! (`segment_anything/modeling/prompt_encoder.py`).

use detclip_core::nn::conv2d;
use std::f64::consts::PI;

use burn::module::Param;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{Embedding, EmbeddingConfig, Initializer};
use burn::prelude::*;
use burn::tensor::activation::gelu;
use detclip_core::DetError;

use super::common::{LayerNorm2d, LayerNorm2dConfig};

/// Configuration of a [`PromptEncoder`].
#[derive(Config, Debug)]
pub struct PromptEncoderConfig {
    /// Width of the prompt embeddings (the image encoder's `out_chans`).
    #[config(default = 256)]
    pub embed_dim: usize,
    /// `[H, W]` of the image embedding.
    #[config(default = "[64, 64]")]
    pub image_embedding_size: [usize; 2],
    /// `[H, W]` of the padded image given to the image encoder (prompt coordinates live here).
    #[config(default = "[1024, 1024]")]
    pub input_image_size: [usize; 2],
    /// Hidden channels of the mask downscaling stack.
    #[config(default = 16)]
    pub mask_in_chans: usize,
}

impl PromptEncoderConfig {
    /// Builds the encoder (random Fourier matrix and embeddings drawn from N(0, 1), as the
    /// reference initialises them; load a checkpoint for the trained ones).
    pub fn init<B: Backend>(&self, device: &B::Device) -> PromptEncoder<B> {
        let d = self.embed_dim;
        let m = self.mask_in_chans;
        let embedding = || EmbeddingConfig::new(1, d).init(device);
        PromptEncoder {
            pe_layer: PositionEmbeddingRandom {
                positional_encoding_gaussian_matrix: Initializer::Normal {
                    mean: 0.0,
                    std: 1.0,
                }
                .init([2, d / 2], device)
                .set_require_grad(false),
            },
            point_embeddings: (0..NUM_POINT_EMBEDDINGS).map(|_| embedding()).collect(),
            not_a_point_embed: embedding(),
            mask_downscaling: MaskDownscaling {
                conv1: Conv2dConfig::new([1, m / 4], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                norm1: LayerNorm2dConfig::new(m / 4).init(device),
                conv2: Conv2dConfig::new([m / 4, m], [2, 2])
                    .with_stride([2, 2])
                    .init(device),
                norm2: LayerNorm2dConfig::new(m).init(device),
                conv3: Conv2dConfig::new([m, d], [1, 1]).init(device),
            },
            no_mask_embed: embedding(),
            embed_dim: d,
            image_embedding_size: self.image_embedding_size,
            input_image_size: self.input_image_size,
        }
    }
}

/// Positive/negative point, top-left and bottom-right box corner.
const NUM_POINT_EMBEDDINGS: usize = 4;

/// Point labels understood by [`PromptEncoder::forward`].
pub mod point_label {
    /// A padding point: its position encoding is replaced by `not_a_point_embed`.
    pub const NOT_A_POINT: i64 = -1;
    /// A background (negative) click.
    pub const NEGATIVE: i64 = 0;
    /// A foreground (positive) click.
    pub const POSITIVE: i64 = 1;
}

/// SAM's prompt encoder (`PromptEncoder`).
#[derive(Module, Debug)]
pub struct PromptEncoder<B: Backend> {
    /// Random Fourier features of positions.
    pub pe_layer: PositionEmbeddingRandom<B>,
    /// Negative point, positive point, box top-left, box bottom-right: each `[1, embed_dim]`.
    pub point_embeddings: Vec<Embedding<B>>,
    /// Embedding of padding points, `[1, embed_dim]`.
    pub not_a_point_embed: Embedding<B>,
    /// The conv stack that encodes a mask prompt.
    pub mask_downscaling: MaskDownscaling<B>,
    /// The dense embedding when there is no mask prompt, `[1, embed_dim]`.
    pub no_mask_embed: Embedding<B>,
    #[module(skip)]
    embed_dim: usize,
    #[module(skip)]
    image_embedding_size: [usize; 2],
    #[module(skip)]
    input_image_size: [usize; 2],
}

/// Point prompts: coordinates in the input frame and one label per point (see
/// [`point_label`]).
#[derive(Debug, Clone)]
pub struct PointPrompts<B: Backend> {
    /// `[B, N, 2]` as `(x, y)` pixels of the padded input image.
    pub coords: Tensor<B, 3>,
    /// `[B, N]`: −1 padding, 0 negative, 1 positive.
    pub labels: Tensor<B, 2, Int>,
}

impl<B: Backend> PromptEncoder<B> {
    /// Width of the prompt embeddings.
    pub fn embed_dim(&self) -> usize {
        self.embed_dim
    }

    /// `[H, W]` of the image embedding.
    pub fn image_embedding_size(&self) -> [usize; 2] {
        self.image_embedding_size
    }

    /// `[H, W]` of a mask prompt: four times the image embedding.
    pub fn mask_input_size(&self) -> [usize; 2] {
        self.image_embedding_size.map(|s| 4 * s)
    }

    /// The position encoding of every cell centre of the image embedding (`get_dense_pe`).
    ///
    /// # Shapes
    /// - output: `[1, embed_dim, H, W]`
    pub fn get_dense_pe(&self) -> Tensor<B, 4> {
        self.pe_layer
            .forward_grid(self.image_embedding_size)
            .unsqueeze_dim(0)
    }

    /// Embeds the prompts into sparse tokens (points first, then box corners) and a dense map.
    /// Points are padded with one not-a-point when there are no boxes, as in the reference.
    ///
    /// # Shapes
    /// - `points`: coords `[B, N, 2]`, labels `[B, N]`; `boxes`: `[B, 4]` as `(x1, y1, x2, y2)`;
    ///   `masks`: `[B, 1, 4·H, 4·W]`
    /// - output: sparse `[B, N (+1) + 2·[boxes], embed_dim]`, dense `[B, embed_dim, H, W]`
    ///
    /// # Errors
    /// [`DetError::Shape`] when a prompt has the wrong shape or the prompts disagree on `B`.
    pub fn forward(
        &self,
        points: Option<PointPrompts<B>>,
        boxes: Option<Tensor<B, 2>>,
        masks: Option<Tensor<B, 4>>,
    ) -> Result<(Tensor<B, 3>, Tensor<B, 4>), DetError> {
        let batch = self.check_prompts(points.as_ref(), boxes.as_ref(), masks.as_ref())?;
        let device = self.no_mask_embed.weight.device();
        let mut sparse = Vec::new();
        if let Some(p) = points {
            sparse.push(self.embed_points(p.coords, p.labels, boxes.is_none()));
        }
        if let Some(b) = boxes {
            sparse.push(self.embed_boxes(b));
        }
        let sparse = if sparse.is_empty() {
            Tensor::zeros([batch, 0, self.embed_dim], &device)
        } else {
            Tensor::cat(sparse, 1)
        };
        let dense = match masks {
            Some(m) => self.mask_downscaling.forward(m),
            None => {
                let [h, w] = self.image_embedding_size;
                self.no_mask_embed
                    .weight
                    .val()
                    .reshape([1, self.embed_dim, 1, 1])
                    .expand([batch, self.embed_dim, h, w])
            }
        };
        Ok((sparse, dense))
    }

    /// Checks every prompt's shape; returns the batch size (1 with no prompt at all).
    fn check_prompts(
        &self,
        points: Option<&PointPrompts<B>>,
        boxes: Option<&Tensor<B, 2>>,
        masks: Option<&Tensor<B, 4>>,
    ) -> Result<usize, DetError> {
        let err = |what: &'static str, got: &[usize], expected: String| DetError::Shape {
            op: "sam prompt encoder",
            what,
            got: got.to_vec(),
            expected,
        };
        let mut batch = None;
        let mut agree = |what: &'static str, got: &[usize]| match batch {
            Some(b) if b != got[0] => {
                Err(err(what, got, format!("batch {b}, as the other prompts")))
            }
            _ => {
                batch = Some(got[0]);
                Ok(())
            }
        };
        if let Some(p) = points {
            let (c, l) = (p.coords.dims(), p.labels.dims());
            if c[2] != 2 {
                return Err(err("point coords", &c, "[B, N, 2]".into()));
            }
            if l != [c[0], c[1]] {
                return Err(err("point labels", &l, format!("[{}, {}]", c[0], c[1])));
            }
            agree("point coords", &c)?;
        }
        if let Some(b) = boxes {
            let d = b.dims();
            if d[1] != 4 {
                return Err(err("boxes", &d, "[B, 4] as (x1, y1, x2, y2)".into()));
            }
            agree("boxes", &d)?;
        }
        if let Some(m) = masks {
            let d = m.dims();
            let [h, w] = self.mask_input_size();
            if d[1..] != [1, h, w] {
                return Err(err("masks", &d, format!("[B, 1, {h}, {w}]")));
            }
            agree("masks", &d)?;
        }
        Ok(batch.unwrap_or(1))
    }

    /// Point tokens: position encoding of the pixel centre plus the label's embedding;
    /// padding points get `not_a_point_embed` instead of a position.
    fn embed_points(
        &self,
        coords: Tensor<B, 3>,
        labels: Tensor<B, 2, Int>,
        pad: bool,
    ) -> Tensor<B, 3> {
        let [b, _, _] = coords.dims();
        let device = coords.device();
        let (coords, labels) = if pad {
            (
                Tensor::cat(vec![coords, Tensor::zeros([b, 1, 2], &device)], 1),
                Tensor::cat(
                    vec![
                        labels,
                        Tensor::full([b, 1], point_label::NOT_A_POINT, &device),
                    ],
                    1,
                ),
            )
        } else {
            (coords, labels)
        };
        let pe = self
            .pe_layer
            .forward_with_coords(coords.add_scalar(0.5), self.input_image_size);
        let is = |label: i64| {
            labels
                .clone()
                .equal_elem(label)
                .float()
                .unsqueeze_dim::<3>(2)
        };
        let embedding = |e: &Embedding<B>| e.weight.val().unsqueeze_dim::<3>(0);
        let not_a_point = is(point_label::NOT_A_POINT);
        pe * (not_a_point.clone().neg() + 1.0)
            + not_a_point * embedding(&self.not_a_point_embed)
            + is(point_label::NEGATIVE) * embedding(&self.point_embeddings[0])
            + is(point_label::POSITIVE) * embedding(&self.point_embeddings[1])
    }

    /// Box tokens: the two corners' position encodings plus the corner embeddings.
    fn embed_boxes(&self, boxes: Tensor<B, 2>) -> Tensor<B, 3> {
        let [b, _] = boxes.dims();
        let corners = boxes.add_scalar(0.5).reshape([b, 2, 2]);
        let pe = self
            .pe_layer
            .forward_with_coords(corners, self.input_image_size);
        let corner_embeddings = Tensor::cat(
            vec![
                self.point_embeddings[2].weight.val(),
                self.point_embeddings[3].weight.val(),
            ],
            0,
        );
        pe + corner_embeddings.unsqueeze_dim(0)
    }
}

/// Random Fourier features of 2-D positions (`PositionEmbeddingRandom`, Tancik et al. 2020):
/// `[sin(2π·(2p − 1)·G), cos(2π·(2p − 1)·G)]` for `p` in `[0, 1]²`.
#[derive(Module, Debug)]
pub struct PositionEmbeddingRandom<B: Backend> {
    /// The Gaussian frequency matrix `G`, `[2, embed_dim / 2]` (a buffer in the reference;
    /// not trained).
    pub positional_encoding_gaussian_matrix: Param<Tensor<B, 2>>,
}

impl<B: Backend> PositionEmbeddingRandom<B> {
    /// Encodes positions already normalised to `[0, 1]`.
    ///
    /// # Shapes
    /// - `coords`: `[..., 2]` as `(x, y)` → `[..., embed_dim]`
    pub fn encode<const D: usize>(&self, coords: Tensor<B, D>) -> Tensor<B, D> {
        let g = self.positional_encoding_gaussian_matrix.val();
        let f = g.dims()[1];
        let dims = coords.dims();
        let rows = dims[..D - 1].iter().product::<usize>();
        let mut out_dims = dims;
        out_dims[D - 1] = f;
        let angles = (coords.mul_scalar(2.0).sub_scalar(1.0))
            .reshape([rows, 2])
            .matmul(g)
            .mul_scalar(2.0 * PI)
            .reshape(out_dims);
        Tensor::cat(vec![angles.clone().sin(), angles.cos()], D - 1)
    }

    /// The encoding of every cell centre of an `[H, W]` grid.
    ///
    /// # Shapes
    /// - output: `[embed_dim, H, W]`
    pub fn forward_grid(&self, size: [usize; 2]) -> Tensor<B, 3> {
        let [h, w] = size;
        let device = self.positional_encoding_gaussian_matrix.device();
        let centres = |n: usize| {
            Tensor::<B, 1, Int>::arange(0..n as i64, &device)
                .float()
                .add_scalar(0.5)
                .div_scalar(n as f64)
        };
        let x = centres(w).reshape([1, w, 1]).expand([h, w, 1]);
        let y = centres(h).reshape([h, 1, 1]).expand([h, w, 1]);
        self.encode(Tensor::cat(vec![x, y], 2)).permute([2, 0, 1])
    }

    /// Encodes pixel coordinates of an image of `image_size = [H, W]`.
    ///
    /// # Shapes
    /// - `coords`: `[B, N, 2]` as `(x, y)` → `[B, N, embed_dim]`
    pub fn forward_with_coords(
        &self,
        coords: Tensor<B, 3>,
        image_size: [usize; 2],
    ) -> Tensor<B, 3> {
        let [h, w] = image_size;
        let device = coords.device();
        let size = Tensor::<B, 1>::from_floats([w as f32, h as f32], &device);
        self.encode(coords / size.reshape([1, 1, 2]))
    }
}

/// The mask-prompt encoder (`mask_downscaling`): two stride-2 convs with LayerNorm2d and GELU
/// (4× down), then a 1×1 conv to `embed_dim`.
#[derive(Module, Debug)]
pub struct MaskDownscaling<B: Backend> {
    /// `mask_downscaling.0`: 1 → mask_in_chans/4, 2×2 stride 2.
    pub conv1: Conv2d<B>,
    /// `mask_downscaling.1`.
    pub norm1: LayerNorm2d<B>,
    /// `mask_downscaling.3`: mask_in_chans/4 → mask_in_chans, 2×2 stride 2.
    pub conv2: Conv2d<B>,
    /// `mask_downscaling.4`.
    pub norm2: LayerNorm2d<B>,
    /// `mask_downscaling.6`: mask_in_chans → embed_dim, 1×1.
    pub conv3: Conv2d<B>,
}

impl<B: Backend> MaskDownscaling<B> {
    /// # Shapes
    /// - `masks`: `[B, 1, 4·H, 4·W]` → `[B, embed_dim, H, W]`
    pub fn forward(&self, masks: Tensor<B, 4>) -> Tensor<B, 4> {
        let x = gelu(self.norm1.forward(conv2d(&self.conv1, masks)));
        let x = gelu(self.norm2.forward(conv2d(&self.conv2, x)));
        conv2d(&self.conv3, x)
    }
}
