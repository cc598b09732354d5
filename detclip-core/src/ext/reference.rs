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

/// The four bilinear corners of a set of sample positions, with torchvision's border rules
/// (`bilinear_interpolate` of its deformable convolution): a sample is zero unless
/// `−1 < y < h` and `−1 < x < w`, and each corner outside the map contributes zero.
struct Corners<B: Backend> {
    /// Flat `y·w + x` index of each corner (clamped into the map), `[N, G, Cg, P]`.
    idx: [Tensor<B, 4, burn::tensor::Int>; 4],
    /// Bilinear weight of each corner times its validity, `[N, G, 1, P]`.
    w: [Tensor<B, 4>; 4],
    /// ∂weight/∂y and ∂weight/∂x of each corner (times validity), `[N, G, 1, P]`.
    dy: [Tensor<B, 4>; 4],
    dx: [Tensor<B, 4>; 4],
}

fn corners<B: Backend>(
    ys: Tensor<B, 3>,
    xs: Tensor<B, 3>,
    h: usize,
    w: usize,
    cg: usize,
) -> Corners<B> {
    let [n, g, p] = ys.dims();
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
    let pos = [
        (y0.clone(), x0.clone()),
        (y0.clone(), x0.clone() + 1.0),
        (y0.clone() + 1.0, x0.clone()),
        (y0 + 1.0, x0 + 1.0),
    ];
    let weights = [
        hy.clone() * hx.clone(),
        hy.clone() * lx.clone(),
        ly.clone() * hx.clone(),
        ly.clone() * lx.clone(),
    ];
    let d_dy = [hx.clone().neg(), lx.clone().neg(), hx, lx];
    let d_dx = [hy.clone().neg(), hy, ly.clone().neg(), ly];
    let r = |t: Tensor<B, 3>| t.reshape([n, g, 1, p]);
    let mut out_idx = Vec::with_capacity(4);
    let mut out_w = Vec::with_capacity(4);
    let mut out_dy = Vec::with_capacity(4);
    let mut out_dx = Vec::with_capacity(4);
    for (c, (yc, xc)) in pos.into_iter().enumerate() {
        let inside = yc.clone().greater_equal_elem(0.0).float()
            * yc.clone().lower_equal_elem(hf - 1.0).float()
            * xc.clone().greater_equal_elem(0.0).float()
            * xc.clone().lower_equal_elem(wf - 1.0).float()
            * valid.clone();
        let idx = (yc.clamp(0.0, hf - 1.0) * wf + xc.clamp(0.0, wf - 1.0)).int();
        out_idx.push(idx.reshape([n, g, 1, p]).expand([n, g, cg, p]));
        out_w.push(r(weights[c].clone() * inside.clone()));
        out_dy.push(r(d_dy[c].clone().detach() * inside.clone()));
        out_dx.push(r(d_dx[c].clone().detach() * inside));
    }
    let arr = |v: Vec<Tensor<B, 4>>| -> [Tensor<B, 4>; 4] {
        v.try_into()
            .unwrap_or_else(|_| unreachable!("four corners"))
    };
    Corners {
        idx: out_idx
            .try_into()
            .unwrap_or_else(|_| unreachable!("four corners")),
        w: arr(out_w),
        dy: arr(out_dy),
        dx: arr(out_dx),
    }
}

/// Everything the reference body needs per kernel tap.
struct DcnGeometry<B: Backend> {
    n: usize,
    c: usize,
    h: usize,
    w: usize,
    out_c: usize,
    cw: usize,
    kh: usize,
    kw: usize,
    ho: usize,
    wo: usize,
    g: usize,
    wg: usize,
    device: B::Device,
}

impl<B: Backend> DcnGeometry<B> {
    fn new(
        input: &Tensor<B, 4>,
        weight: &Tensor<B, 4>,
        offset: &Tensor<B, 4>,
        o: &crate::ops::DeformConv2dOptions,
    ) -> Self {
        let [n, c, h, w] = input.dims();
        let [out_c, cw, kh, kw] = weight.dims();
        let [_, _, ho, wo] = offset.dims();
        Self {
            n,
            c,
            h,
            w,
            out_c,
            cw,
            kh,
            kw,
            ho,
            wo,
            g: o.offset_groups,
            wg: o.weight_groups,
            device: input.device(),
        }
    }

    fn channels(&self, f: impl Fn(usize) -> usize) -> Tensor<B, 1, burn::tensor::Int> {
        let idx: Vec<i64> = (0..self.g).map(|gi| f(gi) as i64).collect();
        Tensor::from_data(burn::tensor::TensorData::new(idx, [self.g]), &self.device)
    }

    /// Sample positions `(y, x)` of tap `(i, j)`, `[N, G, Ho·Wo]` each.
    fn positions(
        &self,
        offset: &Tensor<B, 4>,
        i: usize,
        j: usize,
        o: &crate::ops::DeformConv2dOptions,
    ) -> (Tensor<B, 3>, Tensor<B, 3>) {
        let k = self.kh * self.kw;
        let tap = i * self.kw + j;
        let grid = |len: usize, stride: usize, pad: usize, t: usize| {
            let v: Vec<f32> = (0..len)
                .map(|q| (q * stride + t) as f32 - pad as f32)
                .collect();
            Tensor::<B, 1>::from_data(burn::tensor::TensorData::new(v, [len]), &self.device)
        };
        let base_y =
            grid(self.ho, o.stride[0], o.padding[0], i * o.dilation[0]).reshape([1, 1, self.ho, 1]);
        let base_x =
            grid(self.wo, o.stride[1], o.padding[1], j * o.dilation[1]).reshape([1, 1, 1, self.wo]);
        let dy = offset
            .clone()
            .select(1, self.channels(|gi| gi * 2 * k + 2 * tap));
        let dx = offset
            .clone()
            .select(1, self.channels(|gi| gi * 2 * k + 2 * tap + 1));
        let p = self.ho * self.wo;
        (
            (dy + base_y).reshape([self.n, self.g, p]),
            (dx + base_x).reshape([self.n, self.g, p]),
        )
    }

    /// The mask of tap `tap`, `[N, G, 1, Ho·Wo]`.
    fn mask(&self, mask: &Tensor<B, 4>, tap: usize) -> Tensor<B, 4> {
        let k = self.kh * self.kw;
        mask.clone()
            .select(1, self.channels(|gi| gi * k + tap))
            .reshape([self.n, self.g, 1, self.ho * self.wo])
    }

    /// The weight of tap `(i, j)` per weight group, `[N, wg, O/wg, C/wg]`.
    fn weight_tap(&self, weight: &Tensor<B, 4>, i: usize, j: usize) -> Tensor<B, 4> {
        let og = self.out_c / self.wg;
        weight
            .clone()
            .slice([0..self.out_c, 0..self.cw, i..i + 1, j..j + 1])
            .reshape([1, self.wg, og, self.cw])
            .expand([self.n, self.wg, og, self.cw])
    }
}

/// Bilinear values at the corners' positions, `[N, G, Cg, P]`.
fn sample<B: Backend>(x: &Tensor<B, 4>, k: &Corners<B>) -> Tensor<B, 4> {
    let mut acc = x.clone().gather(3, k.idx[0].clone()) * k.w[0].clone();
    for c in 1..4 {
        acc = acc + x.clone().gather(3, k.idx[c].clone()) * k.w[c].clone();
    }
    acc
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
    let d = DcnGeometry::new(&input, &weight, &offset, o);
    let (cg, p) = (d.c / d.g, d.ho * d.wo);
    let x = input.reshape([d.n, d.g, cg, d.h * d.w]);
    let mut out: Option<Tensor<B, 4>> = None;
    for i in 0..d.kh {
        for j in 0..d.kw {
            let (ys, xs) = d.positions(&offset, i, j, o);
            let mut col = sample(&x, &corners(ys, xs, d.h, d.w, cg)); // [N, G, Cg, P]
            if let Some(m) = &mask {
                col = col * d.mask(m, i * d.kw + j);
            }
            let y = d
                .weight_tap(&weight, i, j)
                .matmul(col.reshape([d.n, d.wg, d.cw, p])); // [N, wg, O/wg, P]
            out = Some(match out {
                None => y,
                Some(a) => a + y,
            });
        }
    }
    let out = out
        .expect("at least one tap")
        .reshape([d.n, d.out_c, d.ho, d.wo]);
    match bias {
        Some(b) => out + b.reshape([1, d.out_c, 1, 1]),
        None => out,
    }
}

/// The backward of [`deform_conv2d`] written out (no autodiff), tap by tap: the oracle of the
/// backward kernels.
///
/// With `col = m·v` (v the bilinear sample) and `gc = Wᵀ·g_out`: `g_W = g_out·colᵀ`,
/// `g_m = Σ_c gc·v`, `g_Δy = Σ_c gc·m·∂v/∂y` (likewise x), and `g_x` scatter-adds
/// `gc·m·w_corner` into the four corners.
pub(crate) fn deform_conv2d_backward<B: Backend>(
    input: FloatTensor<B>,
    offset: FloatTensor<B>,
    mask: Option<FloatTensor<B>>,
    weight: FloatTensor<B>,
    has_bias: bool,
    grad_out: FloatTensor<B>,
    o: &crate::ops::DeformConv2dOptions,
) -> super::DeformConv2dGrads<B> {
    use burn::tensor::IndexingUpdateOp;
    let t4 = |p: FloatTensor<B>| Tensor::<B, 4>::from_primitive(TensorPrimitive::Float(p));
    let (input, offset, weight, grad_out) = (t4(input), t4(offset), t4(weight), t4(grad_out));
    let mask = mask.map(t4);
    let d = DcnGeometry::new(&input, &weight, &offset, o);
    let (cg, p, og) = (d.c / d.g, d.ho * d.wo, d.out_c / d.wg);
    let x = input.reshape([d.n, d.g, cg, d.h * d.w]);
    let gout = grad_out.clone().reshape([d.n, d.wg, og, p]);
    let mut grad_x = Tensor::<B, 4>::zeros([d.n, d.g, cg, d.h * d.w], &d.device);
    let (mut g_w, mut g_m, mut g_dy, mut g_dx) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for i in 0..d.kh {
        for j in 0..d.kw {
            let tap = i * d.kw + j;
            let (ys, xs) = d.positions(&offset, i, j, o);
            let cn = corners(ys, xs, d.h, d.w, cg);
            let vals: Vec<Tensor<B, 4>> = (0..4)
                .map(|c| x.clone().gather(3, cn.idx[c].clone()))
                .collect();
            let v = (1..4).fold(vals[0].clone() * cn.w[0].clone(), |a, c| {
                a + vals[c].clone() * cn.w[c].clone()
            });
            let dvdy = (1..4).fold(vals[0].clone() * cn.dy[0].clone(), |a, c| {
                a + vals[c].clone() * cn.dy[c].clone()
            });
            let dvdx = (1..4).fold(vals[0].clone() * cn.dx[0].clone(), |a, c| {
                a + vals[c].clone() * cn.dx[c].clone()
            });
            let m = mask.as_ref().map(|m| d.mask(m, tap));
            let col = match &m {
                Some(m) => v.clone() * m.clone(),
                None => v.clone(),
            };
            // weight: Σ_n g_out · colᵀ, [wg, O/wg, C/wg]
            let cols = col.reshape([d.n, d.wg, d.cw, p]).swap_dims(2, 3);
            g_w.push(
                gout.clone()
                    .matmul(cols)
                    .sum_dim(0)
                    .reshape([d.out_c, d.cw, 1]),
            );
            // columns: Wᵀ · g_out, [N, G, Cg, P]
            let gc = d
                .weight_tap(&weight, i, j)
                .swap_dims(2, 3)
                .matmul(gout.clone())
                .reshape([d.n, d.g, cg, p]);
            if m.is_some() {
                g_m.push((gc.clone() * v).sum_dim(2).reshape([d.n, d.g, 1, p]));
            }
            let gv = match m {
                Some(m) => gc * m,
                None => gc,
            };
            g_dy.push((gv.clone() * dvdy).sum_dim(2).reshape([d.n, d.g, 1, p]));
            g_dx.push((gv.clone() * dvdx).sum_dim(2).reshape([d.n, d.g, 1, p]));
            for c in 0..4 {
                grad_x = grad_x.scatter(
                    3,
                    cn.idx[c].clone(),
                    gv.clone() * cn.w[c].clone(),
                    IndexingUpdateOp::Add,
                );
            }
        }
    }
    let grad_offset = Tensor::cat(
        vec![
            Tensor::cat(g_dy, 2).unsqueeze_dim::<5>(3),
            Tensor::cat(g_dx, 2).unsqueeze_dim::<5>(3),
        ],
        3,
    ) // [N, G, K, 2, P]
    .reshape([d.n, 2 * d.g * d.kh * d.kw, d.ho, d.wo]);
    let grad_mask = (!g_m.is_empty())
        .then(|| Tensor::cat(g_m, 2).reshape([d.n, d.g * d.kh * d.kw, d.ho, d.wo]));
    let grad_weight = Tensor::cat(g_w, 2).reshape([d.out_c, d.cw, d.kh, d.kw]);
    let grad_bias = has_bias.then(|| grad_out.sum_dim(3).sum_dim(2).sum_dim(0).reshape([d.out_c]));
    super::DeformConv2dGrads {
        input: grad_x
            .reshape([d.n, d.c, d.h, d.w])
            .into_primitive()
            .tensor(),
        offset: grad_offset.into_primitive().tensor(),
        mask: grad_mask.map(|t| t.into_primitive().tensor()),
        weight: grad_weight.into_primitive().tensor(),
        bias: grad_bias.map(|t| t.into_primitive().tensor()),
    }
}
