//! Transposed convolutions whose kernel equals their stride, as one matrix product.
//!
//! A `k×k` transposed convolution with stride `k`, no padding, no dilation and one group (the
//! 2×2 stride-2 "deconvolutions" of SAM's output upscaling and of mask heads) writes each input
//! pixel into its own `k×k` output block: the blocks never overlap. So it is a matrix product
//! `[N·H·W, C] × [C, O·k·k]` followed by a reshuffle of the blocks into place — the same
//! arithmetic as `torch.nn.ConvTranspose2d`, but through the backend's matmul instead of a
//! direct convolution loop. Burn 0.21's ndarray backend runs transposed convolutions as a
//! scalar loop per output channel, which made SAM's decoder on 100 box prompts take minutes;
//! the product takes a fraction of that on every backend, and autodiff goes through it as
//! through any matmul.

use burn::nn::conv::ConvTranspose2d;
use burn::prelude::*;

/// Whether `conv` is a transposed convolution that [`conv_transpose2d_blocks`] computes
/// exactly: kernel = stride, no padding, no output padding, dilation 1, one group.
pub fn is_block_transpose<B: Backend>(conv: &ConvTranspose2d<B>) -> bool {
    conv.kernel_size == conv.stride
        && conv.padding == [0, 0]
        && conv.padding_out == [0, 0]
        && conv.dilation == [1, 1]
        && conv.groups == 1
}

/// `conv.forward(x)`, through [`conv_transpose2d_blocks`] when [`is_block_transpose`] holds
/// and through Burn's transposed convolution otherwise.
///
/// # Shapes
/// - `x`: `[N, C, H, W]` → `[N, O, H·k, W·k]` (the block case)
pub fn conv_transpose2d_forward<B: Backend>(
    conv: &ConvTranspose2d<B>,
    x: Tensor<B, 4>,
) -> Tensor<B, 4> {
    if is_block_transpose(conv) {
        conv_transpose2d_blocks(x, conv.weight.val(), conv.bias.as_ref().map(|b| b.val()))
    } else {
        conv.forward(x)
    }
}

/// A transposed convolution with kernel = stride (no padding, dilation 1, one group) as a
/// matrix product.
///
/// # Shapes
/// - `x`: `[N, C, H, W]`
/// - `weight`: `[C, O, kh, kw]` (PyTorch's `ConvTranspose2d` layout)
/// - `bias`: `[O]`
/// - output: `[N, O, H·kh, W·kw]`
///
/// # Panics
/// When `x`'s channels differ from `weight`'s first dimension (a wiring error, not input).
pub fn conv_transpose2d_blocks<B: Backend>(
    x: Tensor<B, 4>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
) -> Tensor<B, 4> {
    let [n, c, h, w] = x.dims();
    let [wc, o, kh, kw] = weight.dims();
    assert_eq!(c, wc, "input channels {c} against weight channels {wc}");
    let rows = x.permute([0, 2, 3, 1]).reshape([n * h * w, c]);
    let y = rows.matmul(weight.reshape([c, o * kh * kw]));
    // [N·H, W, O, kh, kw] → [N, O, H, kh, W·kw]: each input pixel's block in place.
    let y = y
        .reshape([n * h, w, o, kh, kw])
        .permute([0, 2, 3, 1, 4])
        .reshape([n, h, o, kh, w * kw])
        .permute([0, 2, 1, 3, 4])
        .reshape([n, o, h * kh, w * kw]);
    match bias {
        Some(b) => y + b.reshape([1, o, 1, 1]),
        None => y,
    }
}
