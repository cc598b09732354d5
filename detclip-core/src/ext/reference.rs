//! Reference bodies of the custom ops, in portable tensor ops. They define the semantics and
//! serve as the test oracle of the kernels.

use burn::prelude::Backend;
use burn::tensor::activation::sigmoid;
use burn::tensor::ops::FloatTensor;
use burn::tensor::{Tensor, TensorPrimitive};

fn wrap<B: Backend>(t: FloatTensor<B>) -> Tensor<B, 1> {
    // Rank does not matter for elementwise work: flatten to 1-D and restore afterwards.
    let t: Tensor<B, 1> = {
        let prim = TensorPrimitive::Float(t);
        let dims = burn::tensor::TensorMetadata::shape(&prim).num_elements();
        Tensor::<B, 1>::from_primitive(TensorPrimitive::Float(reshape_prim::<B>(prim, dims)))
    };
    t
}

fn reshape_prim<B: Backend>(p: TensorPrimitive<B>, n: usize) -> FloatTensor<B> {
    B::float_reshape(p.tensor(), burn::tensor::Shape::new([n]))
}

fn unwrap<B: Backend>(t: Tensor<B, 1>, shape: burn::tensor::Shape) -> FloatTensor<B> {
    B::float_reshape(t.into_primitive().tensor(), shape)
}

pub(crate) fn sigmoid_gate<B: Backend>(x: FloatTensor<B>, gate: FloatTensor<B>) -> FloatTensor<B> {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let (x, g) = (wrap::<B>(x), wrap::<B>(gate));
    unwrap(x * sigmoid(g), shape)
}

pub(crate) fn sigmoid_gate_backward<B: Backend>(
    x: FloatTensor<B>,
    gate: FloatTensor<B>,
    grad: FloatTensor<B>,
) -> [FloatTensor<B>; 2] {
    let shape = burn::tensor::TensorMetadata::shape(&x);
    let (x, g, dy) = (wrap::<B>(x), wrap::<B>(gate), wrap::<B>(grad));
    let s = sigmoid(g);
    let dx = dy.clone() * s.clone();
    let dg = dy * x * s.clone() * (s.neg() + 1.0);
    [unwrap(dx, shape.clone()), unwrap(dg, shape)]
}

/// Bilinear samples of `x` (`[N, G, Cg, H·W]`, an `h × w` map) at `(y, x)` (`[N, G, P]`),
/// zero outside the image, as torchvision's deformable-conv `bilinear_interpolate`:
/// a sample is zero unless `−1 < y < h` and `−1 < x < w`, and each corner outside the map
/// contributes zero. Differentiable in `x` and in the positions. Returns `[N, G, Cg, P]`.
fn bilinear_sample<B: Backend>(
    x: Tensor<B, 4>,
    ys: Tensor<B, 3>,
    xs: Tensor<B, 3>,
    h: usize,
    w: usize,
) -> Tensor<B, 4> {
    let [n, g, cg, _] = x.dims();
    let [_, _, p] = ys.dims();
    let (hf, wf) = (h as f32, w as f32);
    let y0 = ys.clone().detach().floor();
    let x0 = xs.clone().detach().floor();
    let ly = ys.clone() - y0.clone();
    let lx = xs.clone() - x0.clone();
    let (hy, hx) = (ly.clone().neg() + 1.0, lx.clone().neg() + 1.0);
    let valid = ys.clone().greater_elem(-1.0).float()
        * ys.detach().lower_elem(hf).float()
        * xs.clone().greater_elem(-1.0).float()
        * xs.detach().lower_elem(wf).float();
    let corners = [
        (y0.clone(), x0.clone(), hy.clone() * hx.clone()),
        (y0.clone(), x0.clone() + 1.0, hy * lx.clone()),
        (y0.clone() + 1.0, x0.clone(), ly.clone() * hx),
        (y0 + 1.0, x0 + 1.0, ly * lx),
    ];
    let mut acc: Option<Tensor<B, 4>> = None;
    for (yc, xc, wt) in corners {
        let inside = yc.clone().greater_equal_elem(0.0).float()
            * yc.clone().lower_equal_elem(hf - 1.0).float()
            * xc.clone().greater_equal_elem(0.0).float()
            * xc.clone().lower_equal_elem(wf - 1.0).float();
        let idx = (yc.clamp(0.0, hf - 1.0) * wf + xc.clamp(0.0, wf - 1.0)).int();
        let idx = idx.reshape([n, g, 1, p]).expand([n, g, cg, p]);
        let v = x.clone().gather(3, idx) * (wt * inside * valid.clone()).reshape([n, g, 1, p]);
        acc = Some(match acc {
            None => v,
            Some(a) => a + v,
        });
    }
    acc.expect("four corners")
}

/// Modulated deformable convolution in tensor ops, one kernel tap at a time so the sampled
/// columns never exceed `N·C·Ho·Wo` values (no full im2col buffer).
pub(crate) fn deform_conv2d<B: Backend>(
    input: Tensor<B, 4>,
    offset: Tensor<B, 4>,
    mask: Option<Tensor<B, 4>>,
    weight: Tensor<B, 4>,
    bias: Option<Tensor<B, 1>>,
    o: &crate::ops::DeformConv2dOptions,
) -> Tensor<B, 4> {
    use burn::tensor::{Int, TensorData};
    let [n, c, h, w] = input.dims();
    let [out_c, cw, kh, kw] = weight.dims();
    let [_, _, ho, wo] = offset.dims();
    let (g, wg) = (o.offset_groups, o.weight_groups);
    let (cg, k, p) = (c / g, kh * kw, ho * wo);
    let device = input.device();
    let x = input.reshape([n, g, cg, h * w]);
    let channels = |f: &dyn Fn(usize) -> usize| {
        let idx: Vec<i64> = (0..g).map(|gi| f(gi) as i64).collect();
        Tensor::<B, 1, Int>::from_data(TensorData::new(idx, [g]), &device)
    };
    let grid = |len: usize, stride: usize, pad: usize, tap: usize| {
        let v: Vec<f32> = (0..len)
            .map(|i| (i * stride + tap) as f32 - pad as f32)
            .collect();
        Tensor::<B, 1>::from_data(TensorData::new(v, [len]), &device)
    };
    let mut out: Option<Tensor<B, 4>> = None;
    for i in 0..kh {
        let base_y = grid(ho, o.stride[0], o.padding[0], i * o.dilation[0]).reshape([1, 1, ho, 1]);
        for j in 0..kw {
            let tap = i * kw + j;
            let base_x =
                grid(wo, o.stride[1], o.padding[1], j * o.dilation[1]).reshape([1, 1, 1, wo]);
            let dy = offset
                .clone()
                .select(1, channels(&|gi| gi * 2 * k + 2 * tap));
            let dx = offset
                .clone()
                .select(1, channels(&|gi| gi * 2 * k + 2 * tap + 1));
            let ys = (dy + base_y.clone()).reshape([n, g, p]);
            let xs = (dx + base_x).reshape([n, g, p]);
            let mut col = bilinear_sample(x.clone(), ys, xs, h, w); // [N, G, Cg, P]
            if let Some(m) = &mask {
                let m = m
                    .clone()
                    .select(1, channels(&|gi| gi * k + tap))
                    .reshape([n, g, 1, p]);
                col = col * m;
            }
            let col = col.reshape([n, wg, cw, p]);
            let wk = weight
                .clone()
                .slice([0..out_c, 0..cw, i..i + 1, j..j + 1])
                .reshape([1, wg, out_c / wg, cw])
                .expand([n, wg, out_c / wg, cw]);
            let y = wk.matmul(col); // [N, wg, O/wg, P]
            out = Some(match out {
                None => y,
                Some(a) => a + y,
            });
        }
    }
    let out = out.expect("at least one tap").reshape([n, out_c, ho, wo]);
    match bias {
        Some(b) => out + b.reshape([1, out_c, 1, 1]),
        None => out,
    }
}
