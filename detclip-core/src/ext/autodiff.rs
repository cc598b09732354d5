//! Hand-written backward passes of the custom ops on `Autodiff<B>`.

use burn::backend::Autodiff;
use burn::backend::autodiff::NodeId;
use burn::backend::autodiff::checkpoint::base::Checkpointer;
use burn::backend::autodiff::checkpoint::strategy::CheckpointStrategy;
use burn::backend::autodiff::grads::Gradients;
use burn::backend::autodiff::ops::{Backward, Ops, OpsKind};
use burn::tensor::ops::FloatTensor;

use super::DetclipOps;

impl<B: DetclipOps, C: CheckpointStrategy> DetclipOps for Autodiff<B, C> {
    fn sigmoid_gate(x: FloatTensor<Self>, gate: FloatTensor<Self>) -> FloatTensor<Self> {
        #[derive(Debug)]
        struct SigmoidGateBackward;

        impl<B: DetclipOps> Backward<B, 2> for SigmoidGateBackward {
            type State = (NodeId, NodeId);

            fn backward(
                self,
                ops: Ops<Self::State, 2>,
                grads: &mut Gradients,
                checkpointer: &mut Checkpointer,
            ) {
                let [node_x, node_gate] = ops.parents;
                let grad = grads.consume::<B>(&ops.node);
                let (x_state, gate_state) = ops.state;
                let x: FloatTensor<B> = checkpointer.retrieve_node_output(x_state);
                let gate: FloatTensor<B> = checkpointer.retrieve_node_output(gate_state);
                let [dx, dgate] = B::sigmoid_gate_backward(x, gate, grad);
                if let Some(node) = node_x {
                    grads.register::<B>(node.id, dx);
                }
                if let Some(node) = node_gate {
                    grads.register::<B>(node.id, dgate);
                }
            }
        }

        match SigmoidGateBackward
            .prepare::<C>([x.node.clone(), gate.node.clone()])
            .compute_bound()
            .stateful()
        {
            OpsKind::Tracked(mut prep) => {
                let xs = prep.checkpoint(&x);
                let gs = prep.checkpoint(&gate);
                let out = B::sigmoid_gate(x.primitive, gate.primitive);
                prep.finish((xs, gs), out)
            }
            OpsKind::UnTracked(prep) => prep.finish(B::sigmoid_gate(x.primitive, gate.primitive)),
        }
    }
}
