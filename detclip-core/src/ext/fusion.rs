//! `Fusion<B>` forwards the custom ops to its inner backend as custom fusion operations (the
//! fusion runtime cannot fuse a kernel it does not know, so it must be told explicitly).

use std::marker::PhantomData;

use burn::tensor::ops::FloatTensor;
use burn_fusion::stream::{Operation, OperationStreams};
use burn_fusion::{Fusion, FusionBackend, FusionRuntime};
use burn_ir::{CustomOpIr, HandleContainer, OperationIr, OperationOutput, TensorIr};

use super::DetclipOps;

type Handles<B> =
    HandleContainer<<<B as FusionBackend>::FusionRuntime as FusionRuntime>::FusionHandle>;

#[derive(Clone, Debug)]
struct SigmoidGateOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + DetclipOps> Operation<B::FusionRuntime> for SigmoidGateOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let ([x, gate], [out]) = self.desc.as_fixed();
        let x = handles.get_float_tensor::<B>(x);
        let gate = handles.get_float_tensor::<B>(gate);
        handles.register_float_tensor::<B>(&out.id, B::sigmoid_gate(x, gate));
    }
}

#[derive(Clone, Debug)]
struct SigmoidGateBackwardOp<B> {
    desc: CustomOpIr,
    _b: PhantomData<B>,
}

impl<B: FusionBackend + DetclipOps> Operation<B::FusionRuntime> for SigmoidGateBackwardOp<B> {
    fn execute(&self, handles: &mut Handles<B>) {
        let ([x, gate, grad], [dx, dgate]) = self.desc.as_fixed();
        let x = handles.get_float_tensor::<B>(x);
        let gate = handles.get_float_tensor::<B>(gate);
        let grad = handles.get_float_tensor::<B>(grad);
        let [gx, gg] = B::sigmoid_gate_backward(x, gate, grad);
        handles.register_float_tensor::<B>(&dx.id, gx);
        handles.register_float_tensor::<B>(&dgate.id, gg);
    }
}

impl<B: FusionBackend + DetclipOps> DetclipOps for Fusion<B> {
    fn sigmoid_gate(x: FloatTensor<Self>, gate: FloatTensor<Self>) -> FloatTensor<Self> {
        let client = x.client.clone();
        let streams = OperationStreams::with_inputs([&x, &gate]);
        let out = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
        let desc = CustomOpIr::new(
            "detclip_sigmoid_gate",
            &[x.into_ir(), gate.into_ir()],
            &[out],
        );
        client
            .register(
                streams,
                OperationIr::Custom(desc.clone()),
                SigmoidGateOp::<B> {
                    desc,
                    _b: PhantomData,
                },
            )
            .output()
    }

    fn sigmoid_gate_backward(
        x: FloatTensor<Self>,
        gate: FloatTensor<Self>,
        grad: FloatTensor<Self>,
    ) -> [FloatTensor<Self>; 2] {
        let client = x.client.clone();
        let streams = OperationStreams::with_inputs([&x, &gate, &grad]);
        let dx = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
        let dgate = TensorIr::uninit(client.create_empty_handle(), x.shape.clone(), x.dtype);
        let desc = CustomOpIr::new(
            "detclip_sigmoid_gate_backward",
            &[x.into_ir(), gate.into_ir(), grad.into_ir()],
            &[dx, dgate],
        );
        client
            .register(
                streams,
                OperationIr::Custom(desc.clone()),
                SigmoidGateBackwardOp::<B> {
                    desc,
                    _b: PhantomData,
                },
            )
            .outputs()
    }
}
