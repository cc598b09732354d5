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

    fn modulated_deform_conv2d(
        input: FloatTensor<Self>,
        offset: FloatTensor<Self>,
        mask: Option<FloatTensor<Self>>,
        weight: FloatTensor<Self>,
        bias: Option<FloatTensor<Self>>,
        options: crate::ops::DeformConv2dOptions,
    ) -> FloatTensor<Self> {
        deform_conv2d::<B, C>(input, offset, mask, weight, bias, options)
    }
}

/// Hand-written backward of the modulated deformable convolution: the forward runs the inner
/// backend's op (a kernel on the Cube backends) and the backward its
/// `modulated_deform_conv2d_backward`. Absent mask/bias take an untracked placeholder parent.
pub(super) fn deform_conv2d<B: DetclipOps, C: CheckpointStrategy>(
    input: FloatTensor<Autodiff<B, C>>,
    offset: FloatTensor<Autodiff<B, C>>,
    mask: Option<FloatTensor<Autodiff<B, C>>>,
    weight: FloatTensor<Autodiff<B, C>>,
    bias: Option<FloatTensor<Autodiff<B, C>>>,
    options: crate::ops::DeformConv2dOptions,
) -> FloatTensor<Autodiff<B, C>> {
    type State = (
        NodeId,
        NodeId,
        Option<NodeId>,
        NodeId,
        bool,
        crate::ops::DeformConv2dOptions,
    );

    #[derive(Debug)]
    struct DeformConv2dBackward;

    impl<B: DetclipOps> Backward<B, 5> for DeformConv2dBackward {
        type State = State;

        fn backward(
            self,
            ops: Ops<Self::State, 5>,
            grads: &mut Gradients,
            checkpointer: &mut Checkpointer,
        ) {
            let [node_x, node_offset, node_mask, node_weight, node_bias] = ops.parents;
            let grad = grads.consume::<B>(&ops.node);
            let (xs, offs, masks, ws, has_bias, options) = ops.state;
            let x: FloatTensor<B> = checkpointer.retrieve_node_output(xs);
            let off: FloatTensor<B> = checkpointer.retrieve_node_output(offs);
            let mask: Option<FloatTensor<B>> = masks.map(|m| checkpointer.retrieve_node_output(m));
            let w: FloatTensor<B> = checkpointer.retrieve_node_output(ws);
            let g = B::modulated_deform_conv2d_backward(x, off, mask, w, has_bias, grad, options);
            if let Some(node) = node_x {
                grads.register::<B>(node.id, g.input);
            }
            if let Some(node) = node_offset {
                grads.register::<B>(node.id, g.offset);
            }
            if let (Some(node), Some(gm)) = (node_mask, g.mask) {
                grads.register::<B>(node.id, gm);
            }
            if let Some(node) = node_weight {
                grads.register::<B>(node.id, g.weight);
            }
            if let (Some(node), Some(gb)) = (node_bias, g.bias) {
                grads.register::<B>(node.id, gb);
            }
        }
    }

    // Untracked stand-ins for absent optional inputs keep the parent count at five.
    let placeholder = || FloatTensor::<Autodiff<B, C>>::new(input.primitive.clone());
    let mask_node = mask.clone().unwrap_or_else(placeholder);
    let bias_node = bias.clone().unwrap_or_else(placeholder);
    match DeformConv2dBackward
        .prepare::<C>([
            input.node.clone(),
            offset.node.clone(),
            mask_node.node.clone(),
            weight.node.clone(),
            bias_node.node.clone(),
        ])
        .compute_bound()
        .stateful()
    {
        OpsKind::Tracked(mut prep) => {
            let xs = prep.checkpoint(&input);
            let offs = prep.checkpoint(&offset);
            let masks = mask.as_ref().map(|m| prep.checkpoint(m));
            let ws = prep.checkpoint(&weight);
            let has_bias = bias.is_some();
            let out = B::modulated_deform_conv2d(
                input.primitive,
                offset.primitive,
                mask.map(|m| m.primitive),
                weight.primitive,
                bias.map(|b| b.primitive),
                options.clone(),
            );
            prep.finish((xs, offs, masks, ws, has_bias, options), out)
        }
        OpsKind::UnTracked(prep) => prep.finish(B::modulated_deform_conv2d(
            input.primitive,
            offset.primitive,
            mask.map(|m| m.primitive),
            weight.primitive,
            bias.map(|b| b.primitive),
            options,
        )),
    }
}
