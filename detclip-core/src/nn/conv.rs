use burn::nn::PaddingConfig2d;
use burn::nn::conv::Conv2d;
use burn::prelude::*;

/// The forward pass of a [`Conv2d`], the one way the workspace runs a 2-D convolution
/// (`clippy.toml` disallows `Conv2d::forward`).
///
/// A pointwise convolution (1×1 kernel, stride 1, no padding, one group) is computed here as a
/// matrix product on the NCHW tensor, `W[O, C] · X[n][C, H·W]`, plus the bias. Every other
/// convolution goes to Burn's `Conv2d::forward`.
///
/// Why: burn-cubecl 0.21 (wgpu, CUDA) autotunes convolutions among a direct kernel and a
/// pointwise "im2col" path (`conv_im2col_1x1`). The latter returns wrong values for some
/// shapes with batch > 1 (on lavapipe: FPN laterals off by ~0.9, ResNet bottleneck outputs
/// off by ~0.02 against torchvision). Which kernel wins depends on timing, so the error came
/// and went between CI runs. Forcing that path for every pointwise key in the autotune cache
/// made `fpn_matches_torchvision` and both ResNet parity tests fail every time; with this
/// function they pass under the same cache. A matrix product is also what that path computes,
/// so nothing is lost in speed.
pub fn conv2d<B: Backend>(conv: &Conv2d<B>, x: Tensor<B, 4>) -> Tensor<B, 4> {
    let zero_padding = match conv.padding {
        PaddingConfig2d::Valid | PaddingConfig2d::Same => true,
        PaddingConfig2d::Explicit(a, b, c, d) => a == 0 && b == 0 && c == 0 && d == 0,
    };
    let pointwise =
        conv.kernel_size == [1, 1] && conv.stride == [1, 1] && conv.groups == 1 && zero_padding;
    if !pointwise {
        #[allow(clippy::disallowed_methods)]
        return conv.forward(x);
    }
    let [n, c, h, w] = x.dims();
    let [o, ..] = conv.weight.dims();
    let weight = conv.weight.val().reshape([1, o, c]);
    let y = weight.matmul(x.reshape([n, c, h * w]));
    let y = match &conv.bias {
        Some(bias) => y + bias.val().reshape([1, o, 1]),
        None => y,
    };
    y.reshape([n, o, h, w])
}
