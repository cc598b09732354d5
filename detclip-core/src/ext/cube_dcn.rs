//! CubeCL kernel of the modulated deformable convolution's forward pass.
//!
//! Implicit GEMM with no im2col buffer: one unit per output element `(n, o, y, x)` walks the
//! `C/weight_groups × kh × kw` reduction, samples the input bilinearly on the fly (torchvision's
//! border rules) and accumulates in f32. Peak memory is inputs + output. The backward pass uses
//! the reference body for now.

use burn::tensor::DType;
use burn::tensor::ops::FloatTensor;
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::ops::numeric::empty_device_dtype;
use burn_cubecl::tensor::CubeTensor;
use burn_cubecl::{BoolElement, CubeBackend, CubeRuntime, FloatElement, IntElement};
use cubecl::prelude::*;
use cubecl::{CubeDim, calculate_cube_count_elemwise};

use crate::ops::DeformConv2dOptions;

#[cube]
fn load_f32<F: Float>(t: &Tensor<F>, idx: usize) -> f32 {
    f32::cast_from(t[idx])
}

/// Bilinear sample of channel plane `base` of `input` (`h × w`, row stride `sy`), zero outside.
#[cube]
#[allow(clippy::too_many_arguments)]
fn bilinear<F: Float>(
    input: &Tensor<F>,
    base: usize,
    sy: usize,
    sx: usize,
    h: usize,
    w: usize,
    y: f32,
    x: f32,
) -> f32 {
    let mut val = 0.0f32;
    let hf = f32::cast_from(h);
    let wf = f32::cast_from(w);
    if y > -1.0f32 && x > -1.0f32 && y < hf && x < wf {
        let y0f = f32::floor(y);
        let x0f = f32::floor(x);
        let ly = y - y0f;
        let lx = x - x0f;
        let hy = 1.0f32 - ly;
        let hx = 1.0f32 - lx;
        let y0 = i32::cast_from(y0f);
        let x0 = i32::cast_from(x0f);
        let y1 = y0 + 1;
        let x1 = x0 + 1;
        let hi = i32::cast_from(h) - 1;
        let wi = i32::cast_from(w) - 1;
        if y0 >= 0 && x0 >= 0 {
            val += hy
                * hx
                * load_f32::<F>(
                    input,
                    base + usize::cast_from(y0) * sy + usize::cast_from(x0) * sx,
                );
        }
        if y0 >= 0 && x1 <= wi {
            val += hy
                * lx
                * load_f32::<F>(
                    input,
                    base + usize::cast_from(y0) * sy + usize::cast_from(x1) * sx,
                );
        }
        if y1 <= hi && x0 >= 0 {
            val += ly
                * hx
                * load_f32::<F>(
                    input,
                    base + usize::cast_from(y1) * sy + usize::cast_from(x0) * sx,
                );
        }
        if y1 <= hi && x1 <= wi {
            val += ly
                * lx
                * load_f32::<F>(
                    input,
                    base + usize::cast_from(y1) * sy + usize::cast_from(x1) * sx,
                );
        }
    }
    val
}

#[cube(launch)]
#[allow(clippy::too_many_arguments)]
fn deform_conv2d_kernel<F: Float>(
    input: &Tensor<F>,
    offset: &Tensor<F>,
    mask: &Tensor<F>,
    weight: &Tensor<F>,
    bias: &Tensor<F>,
    out: &mut Tensor<F>,
    #[comptime] stride_h: usize,
    #[comptime] stride_w: usize,
    #[comptime] pad_h: usize,
    #[comptime] pad_w: usize,
    #[comptime] dil_h: usize,
    #[comptime] dil_w: usize,
    #[comptime] has_mask: bool,
    #[comptime] has_bias: bool,
) {
    if ABSOLUTE_POS >= out.len() {
        terminate!();
    }
    let out_w = out.shape(3);
    let out_h = out.shape(2);
    let out_c = out.shape(1);
    let ox = ABSOLUTE_POS % out_w;
    let rest = ABSOLUTE_POS / out_w;
    let oy = rest % out_h;
    let rest2 = rest / out_h;
    let o = rest2 % out_c;
    let n = rest2 / out_c;

    let channels = input.shape(1);
    let h = input.shape(2);
    let w = input.shape(3);
    let cw = weight.shape(1);
    let kh = weight.shape(2);
    let kw = weight.shape(3);
    let taps = kh * kw;
    let groups = offset.shape(1) / (2 * taps);
    let per_group = channels / groups;
    let out_per_wgroup = out_c / (channels / cw);
    let c_start = (o / out_per_wgroup) * cw;

    let off_base = n * offset.stride(0) + oy * offset.stride(2) + ox * offset.stride(3);
    let y_base = f32::cast_from(oy * stride_h) - f32::cast_from(pad_h);
    let x_base = f32::cast_from(ox * stride_w) - f32::cast_from(pad_w);

    let mut acc = 0.0f32;
    for ci in 0..cw {
        let c = c_start + ci;
        let g = c / per_group;
        let plane = n * input.stride(0) + c * input.stride(1);
        for i in 0..kh {
            for j in 0..kw {
                let tap = i * kw + j;
                let ch = g * 2 * taps + 2 * tap;
                let dy = load_f32::<F>(offset, off_base + ch * offset.stride(1));
                let dx = load_f32::<F>(offset, off_base + (ch + 1) * offset.stride(1));
                let y = y_base + f32::cast_from(i * dil_h) + dy;
                let x = x_base + f32::cast_from(j * dil_w) + dx;
                let mut m = 1.0f32;
                if has_mask {
                    m = load_f32::<F>(
                        mask,
                        n * mask.stride(0)
                            + (g * taps + tap) * mask.stride(1)
                            + oy * mask.stride(2)
                            + ox * mask.stride(3),
                    );
                }
                let v = bilinear::<F>(input, plane, input.stride(2), input.stride(3), h, w, y, x);
                let wv = load_f32::<F>(
                    weight,
                    o * weight.stride(0)
                        + ci * weight.stride(1)
                        + i * weight.stride(2)
                        + j * weight.stride(3),
                );
                acc += wv * m * v;
            }
        }
    }
    if has_bias {
        acc += load_f32::<F>(bias, o * bias.stride(0));
    }
    out[ABSOLUTE_POS] = F::cast_from(acc);
}

/// Launches the forward kernel; `None` when the dtypes are not all f32, f16 or bf16 alike (the
/// caller then runs the reference body).
pub(super) fn deform_conv2d<R: CubeRuntime>(
    input: CubeTensor<R>,
    offset: CubeTensor<R>,
    mask: Option<CubeTensor<R>>,
    weight: CubeTensor<R>,
    bias: Option<CubeTensor<R>>,
    o: &DeformConv2dOptions,
) -> Option<CubeTensor<R>> {
    let dtype = input.dtype;
    let same = [&offset, &weight].iter().all(|t| t.dtype == dtype)
        && mask.as_ref().is_none_or(|m| m.dtype == dtype)
        && bias.as_ref().is_none_or(|b| b.dtype == dtype);
    if !same || !matches!(dtype, DType::F32 | DType::F16 | DType::BF16) {
        return None;
    }
    let [n, _, h, w] = [
        input.meta.shape()[0],
        input.meta.shape()[1],
        input.meta.shape()[2],
        input.meta.shape()[3],
    ];
    let [out_c, _, kh, kw] = [
        weight.meta.shape()[0],
        weight.meta.shape()[1],
        weight.meta.shape()[2],
        weight.meta.shape()[3],
    ];
    let [ho, wo] = o.output_size([h, w], [kh, kw])?;
    let input = into_contiguous(input);
    let offset = into_contiguous(offset);
    let weight = into_contiguous(weight);
    let (has_mask, has_bias) = (mask.is_some(), bias.is_some());
    // Absent optional inputs are never read: any tensor can stand in for them.
    let mask = mask.map(into_contiguous).unwrap_or_else(|| offset.clone());
    let bias = bias.map(into_contiguous).unwrap_or_else(|| weight.clone());
    let out = empty_device_dtype(
        input.client.clone(),
        input.device.clone(),
        [n, out_c, ho, wo].into(),
        dtype,
    );
    let count = n * out_c * ho * wo;
    let dim = CubeDim::new(&input.client, count);
    let cubes = calculate_cube_count_elemwise(&input.client, count, dim);
    let client = input.client.clone();
    macro_rules! launch {
        ($E:ty) => {
            deform_conv2d_kernel::launch::<$E, R>(
                &client,
                cubes,
                dim,
                input.into_tensor_arg(),
                offset.into_tensor_arg(),
                mask.into_tensor_arg(),
                weight.into_tensor_arg(),
                bias.into_tensor_arg(),
                out.clone().into_tensor_arg(),
                o.stride[0],
                o.stride[1],
                o.padding[0],
                o.padding[1],
                o.dilation[0],
                o.dilation[1],
                has_mask,
                has_bias,
            )
        };
    }
    match dtype {
        DType::F32 => launch!(f32),
        DType::F16 => launch!(half::f16),
        _ => launch!(half::bf16),
    }
    Some(out)
}

pub(super) fn forward<R: CubeRuntime, F: FloatElement, I: IntElement, BT: BoolElement>(
    input: FloatTensor<CubeBackend<R, F, I, BT>>,
    offset: FloatTensor<CubeBackend<R, F, I, BT>>,
    mask: Option<FloatTensor<CubeBackend<R, F, I, BT>>>,
    weight: FloatTensor<CubeBackend<R, F, I, BT>>,
    bias: Option<FloatTensor<CubeBackend<R, F, I, BT>>>,
    options: DeformConv2dOptions,
) -> FloatTensor<CubeBackend<R, F, I, BT>> {
    let fallback = (
        input.clone(),
        offset.clone(),
        mask.clone(),
        weight.clone(),
        bias.clone(),
    );
    deform_conv2d(input, offset, mask, weight, bias, &options).unwrap_or_else(|| {
        use burn::tensor::{Tensor, TensorPrimitive};
        type Be<R, F, I, BT> = CubeBackend<R, F, I, BT>;
        let t = |p| Tensor::<Be<R, F, I, BT>, 4>::from_primitive(TensorPrimitive::Float(p));
        let (x, off, m, wt, b) = fallback;
        super::reference::deform_conv2d(
            t(x),
            t(off),
            m.map(t),
            t(wt),
            b.map(|b| Tensor::<Be<R, F, I, BT>, 1>::from_primitive(TensorPrimitive::Float(b))),
            &options,
        )
        .into_primitive()
        .tensor()
    })
}
