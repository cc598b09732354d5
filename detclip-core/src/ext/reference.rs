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
