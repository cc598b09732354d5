use crate::layers::linear_rows;
use burn::nn::{LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use burn::tensor::Distribution;
use burn::tensor::activation::gelu;
use burn::tensor::ops::PadMode;

use super::{PatchMerging, WindowAttention, relative_position_index, shifted_window_mask};

/// The two-layer MLP of a Swin block (`C → 4C → C`, GELU).
#[derive(Module, Debug)]
pub struct Mlp<B: Backend> {
    /// First layer.
    pub fc1: Linear<B>,
    /// Second layer.
    pub fc2: Linear<B>,
}

/// A Swin block: `x + DropPath(W-MSA(LN(x)))`, then `x + DropPath(MLP(LN(x)))`; odd blocks of a
/// stage shift the windows by `⌊ws/2⌋`.
#[derive(Module, Debug)]
pub struct SwinBlock<B: Backend> {
    /// Norm before attention.
    pub norm1: LayerNorm<B>,
    /// (Shifted) window attention.
    pub attn: WindowAttention<B>,
    /// Norm before the MLP.
    pub norm2: LayerNorm<B>,
    /// The MLP.
    pub mlp: Mlp<B>,
    #[module(skip)]
    shift: usize,
    #[module(skip)]
    drop_path: f64,
}

/// The inputs a stage computes once for all its blocks.
#[derive(Debug, Clone)]
pub struct WindowContext<B: Backend> {
    /// Window size.
    pub window: usize,
    /// [`relative_position_index`] of the window.
    pub index: Tensor<B, 1, Int>,
    /// [`shifted_window_mask`] of the padded map (for shifted blocks).
    pub mask: Tensor<B, 3>,
}

impl<B: Backend> SwinBlock<B> {
    /// Builds a block; `shift` is 0 or `⌊ws/2⌋`, `drop_path` its stochastic-depth rate.
    pub fn new(
        dim: usize,
        heads: usize,
        window: usize,
        shift: usize,
        drop_path: f64,
        device: &B::Device,
    ) -> Self {
        Self {
            norm1: LayerNormConfig::new(dim).init(device),
            attn: WindowAttention::new(dim, heads, window, device),
            norm2: LayerNormConfig::new(dim).init(device),
            mlp: Mlp {
                fc1: LinearConfig::new(dim, 4 * dim).init(device),
                fc2: LinearConfig::new(4 * dim, dim).init(device),
            },
            shift,
            drop_path,
        }
    }

    /// # Shapes
    /// `[n, h, w, C]` → `[n, h, w, C]`
    pub fn forward(&self, x: Tensor<B, 4>, ctx: &WindowContext<B>) -> Tensor<B, 4> {
        let attn = self.attend(self.norm1.forward(x.clone()), ctx);
        let x = x + drop_path(attn, self.drop_path);
        let mlp = linear_rows(
            &self.mlp.fc2,
            gelu(linear_rows(&self.mlp.fc1, self.norm2.forward(x.clone()))),
        );
        x.clone() + drop_path(mlp, self.drop_path)
    }

    /// Pad to the window, shift, attend per window, undo the shift, crop.
    fn attend(&self, x: Tensor<B, 4>, ctx: &WindowContext<B>) -> Tensor<B, 4> {
        let [n, h, w, c] = x.dims();
        let ws = ctx.window;
        let (hp, wp) = (h.next_multiple_of(ws), w.next_multiple_of(ws));
        let mut x = x.pad([(0, hp - h), (0, wp - w), (0, 0)], PadMode::Constant(0.0));
        let s = self.shift;
        if s > 0 {
            x = roll_up_left(x, s, s);
        }
        let (nh, nw) = (hp / ws, wp / ws);
        let windows = x
            .reshape([n, nh, ws, nw, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([n * nh * nw, ws * ws, c]);
        let mask = (s > 0).then(|| ctx.mask.clone());
        let out = self.attn.forward(windows, ctx.index.clone(), mask);
        let mut x = out
            .reshape([n, nh, nw, ws, ws, c])
            .permute([0, 1, 3, 2, 4, 5])
            .reshape([n, hp, wp, c]);
        if s > 0 {
            x = roll_up_left(x, hp - s, wp - s);
        }
        x.slice([0..n, 0..h, 0..w, 0..c])
    }
}

/// The cyclic shift of `[n, h, w, c]` that moves row `dy` and column `dx` to the origin
/// (`torch.roll(x, (−dy, −dx), (1, 2))`); shifting by `(h − dy, w − dx)` undoes it.
fn roll_up_left<B: Backend>(x: Tensor<B, 4>, dy: usize, dx: usize) -> Tensor<B, 4> {
    let roll = |x: Tensor<B, 4>, s: usize, dim: usize| {
        let size = x.dims()[dim];
        Tensor::cat(
            vec![x.clone().slice_dim(dim, s..size), x.slice_dim(dim, 0..s)],
            dim,
        )
    };
    roll(roll(x, dy, 1), dx, 2)
}

/// Stochastic depth: while training (autodiff), drops the branch per sample with probability
/// `rate` and rescales the kept ones; the identity at inference.
fn drop_path<B: Backend>(x: Tensor<B, 4>, rate: f64) -> Tensor<B, 4> {
    if rate <= 0.0 || !B::ad_enabled(&x.device()) {
        return x;
    }
    let keep = 1.0 - rate;
    let n = x.dims()[0];
    let mask = Tensor::<B, 4>::random([n, 1, 1, 1], Distribution::Bernoulli(keep), &x.device());
    x * mask.div_scalar(keep)
}

/// One stage (`BasicLayer`): its blocks, then optionally PatchMerging.
#[derive(Module, Debug)]
pub struct SwinStage<B: Backend> {
    /// The blocks, shifted windows in the odd ones.
    pub blocks: Vec<SwinBlock<B>>,
    /// Patch merging at the end of the stage (all but the last).
    pub downsample: Option<PatchMerging<B>>,
    #[module(skip)]
    window: usize,
}

impl<B: Backend> SwinStage<B> {
    /// Builds a stage of `drop_paths.len()` blocks.
    pub fn new(
        dim: usize,
        heads: usize,
        window: usize,
        drop_paths: &[f64],
        downsample: bool,
        device: &B::Device,
    ) -> Self {
        let blocks = drop_paths
            .iter()
            .enumerate()
            .map(|(i, &dp)| {
                let shift = if i % 2 == 1 { window / 2 } else { 0 };
                SwinBlock::new(dim, heads, window, shift, dp, device)
            })
            .collect();
        Self {
            blocks,
            downsample: downsample.then(|| PatchMerging::new(dim, device)),
            window,
        }
    }

    /// Returns the stage output (before merging) and the input of the next stage.
    ///
    /// # Shapes
    /// `[n, h, w, C]` → (`[n, h, w, C]`, `[n, ⌈h/2⌉, ⌈w/2⌉, 2C]` or `None`)
    pub fn forward(&self, x: Tensor<B, 4>) -> (Tensor<B, 4>, Option<Tensor<B, 4>>) {
        let [_, h, w, _] = x.dims();
        let device = x.device();
        let ws = self.window;
        let ctx = WindowContext {
            window: ws,
            index: relative_position_index(ws, &device),
            mask: shifted_window_mask(
                h.next_multiple_of(ws),
                w.next_multiple_of(ws),
                ws,
                ws / 2,
                &device,
            ),
        };
        let x = self.blocks.iter().fold(x, |x, b| b.forward(x, &ctx));
        let next = self.downsample.as_ref().map(|d| d.forward(x.clone()));
        (x, next)
    }
}
