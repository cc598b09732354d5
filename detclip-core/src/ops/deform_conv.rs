//! Modulated deformable convolution (DCNv2; Zhu et al., CVPR 2019, eq. 3) with
//! torchvision's semantics and layout:
//!
//! `y(p) = Σ_g Σ_k w_k · m_{g,k}(p) · x_g(p0 + p_k + Δp_{g,k}(p))` summed over the input
//! channels of each weight group, where `x_g(·)` samples offset group `g` bilinearly (zero
//! outside the image).
//!
//! - input `[N, C, H, W]`
//! - offset `[N, 2·G·kh·kw, Ho, Wo]`: for offset group `g` and tap `(i, j)`, channel
//!   `g·2·kh·kw + 2·(i·kw + j)` is `Δy` and the next one `Δx`
//! - mask (optional) `[N, G·kh·kw, Ho, Wo]`: channel `g·kh·kw + i·kw + j`
//! - weight `[O, C / weight_groups, kh, kw]`, bias (optional) `[O]`
//! - output `[N, O, Ho, Wo]`, `Ho = (H + 2·pad − dil·(kh − 1) − 1) / stride + 1`

use burn::prelude::*;
use burn::tensor::TensorPrimitive;

use crate::error::{DetError, Result};
use crate::ext::DetclipOps;

/// Stride, padding, dilation and groups of [`deform_conv2d`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub struct DeformConv2dOptions {
    /// Stride `(h, w)`.
    pub stride: [usize; 2],
    /// Zero padding `(h, w)`.
    pub padding: [usize; 2],
    /// Dilation `(h, w)`.
    pub dilation: [usize; 2],
    /// Groups of the weight (`C` and `O` must be divisible by it).
    pub weight_groups: usize,
    /// Groups of the offsets and mask (`C` must be divisible by it).
    pub offset_groups: usize,
}

impl Default for DeformConv2dOptions {
    fn default() -> Self {
        Self {
            stride: [1, 1],
            padding: [0, 0],
            dilation: [1, 1],
            weight_groups: 1,
            offset_groups: 1,
        }
    }
}

impl DeformConv2dOptions {
    /// Output `(Ho, Wo)` for an input of `(h, w)` and a kernel of `(kh, kw)`, or `None` when the
    /// kernel does not fit.
    pub fn output_size(&self, [h, w]: [usize; 2], [kh, kw]: [usize; 2]) -> Option<[usize; 2]> {
        let one = |i: usize, k: usize, s: usize, p: usize, d: usize| {
            let span = d * (k - 1) + 1;
            (s > 0 && i + 2 * p >= span).then(|| (i + 2 * p - span) / s + 1)
        };
        Some([
            one(h, kh, self.stride[0], self.padding[0], self.dilation[0])?,
            one(w, kw, self.stride[1], self.padding[1], self.dilation[1])?,
        ])
    }
}

fn shape_err(what: &'static str, got: &[usize], expected: String) -> DetError {
    DetError::Shape {
        op: "deform_conv2d",
        what,
        got: got.to_vec(),
        expected,
    }
}

/// Checks every shape of a deformable convolution; returns `(Ho, Wo)`.
pub fn check_deform_conv2d(
    input: &[usize; 4],
    offset: &[usize; 4],
    mask: Option<&[usize; 4]>,
    weight: &[usize; 4],
    bias: Option<&[usize; 1]>,
    o: &DeformConv2dOptions,
) -> Result<[usize; 2]> {
    let [n, c, h, w] = *input;
    let [out_c, cw, kh, kw] = *weight;
    let (wg, g) = (o.weight_groups, o.offset_groups);
    let opt = |why: String| DetError::InvalidOption {
        op: "deform_conv2d",
        why,
    };
    if wg == 0 || g == 0 || o.stride.contains(&0) || o.dilation.contains(&0) {
        return Err(opt(format!(
            "groups, stride and dilation must be positive, got {o:?}"
        )));
    }
    if kh == 0 || kw == 0 || out_c == 0 {
        return Err(shape_err(
            "weight",
            weight,
            "[O, C/weight_groups, kh, kw] with O, kh, kw > 0".into(),
        ));
    }
    if c % wg != 0 || out_c % wg != 0 || cw * wg != c {
        return Err(shape_err(
            "weight",
            weight,
            format!(
                "[O, {}, {kh}, {kw}] with O divisible by weight_groups = {wg} (input has C = {c})",
                c / wg.max(1)
            ),
        ));
    }
    if c % g != 0 {
        return Err(opt(format!(
            "input channels C = {c} are not divisible by offset_groups = {g}"
        )));
    }
    let [ho, wo] = o.output_size([h, w], [kh, kw]).ok_or_else(|| {
        shape_err(
            "input",
            input,
            format!("[N, C, H, W] large enough for a {kh}×{kw} kernel with {o:?}"),
        )
    })?;
    let want = [n, 2 * g * kh * kw, ho, wo];
    if *offset != want {
        return Err(shape_err(
            "offset",
            offset,
            format!("{want:?} = [N, 2·offset_groups·kh·kw, Ho, Wo]"),
        ));
    }
    if let Some(m) = mask {
        let want = [n, g * kh * kw, ho, wo];
        if *m != want {
            return Err(shape_err(
                "mask",
                m,
                format!("{want:?} = [N, offset_groups·kh·kw, Ho, Wo]"),
            ));
        }
    }
    if let Some(b) = bias
        && b[0] != out_c
    {
        return Err(shape_err(
            "bias",
            b,
            format!("[{out_c}] (one per output channel)"),
        ));
    }
    Ok([ho, wo])
}

/// Modulated deformable convolution (DCNv2) through the backend extension: a CubeCL kernel on
/// the Cube backends, the reference body in tensor ops elsewhere; differentiable with respect
/// to all five inputs. Shapes and layout: see the [module docs](self).
///
/// # Errors
/// Any shape that does not match the layout (offset channels not `2·G·kh·kw`, `C` not
/// divisible by the groups, a mask or bias of the wrong size, a kernel larger than the padded
/// input), named with the expected shape.
pub fn deform_conv2d<B: DetclipOps>(
    input: Tensor<B, 4>,
    offset: Tensor<B, 4>,
    mask: Option<Tensor<B, 4>>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    options: &DeformConv2dOptions,
) -> Result<Tensor<B, 4>> {
    check_deform_conv2d(
        &input.dims(),
        &offset.dims(),
        mask.as_ref().map(|m| m.dims()).as_ref(),
        &weight.dims(),
        bias.as_ref().map(|b| b.dims()).as_ref(),
        options,
    )?;
    let p = |t: Tensor<B, 4>| t.into_primitive().tensor();
    let out = B::modulated_deform_conv2d(
        p(input),
        p(offset),
        mask.map(p),
        p(weight),
        bias.map(|b| b.into_primitive().tensor()),
        options.clone(),
    );
    Ok(Tensor::from_primitive(TensorPrimitive::Float(out)))
}
