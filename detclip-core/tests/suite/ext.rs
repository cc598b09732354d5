//! The backend extension: the custom op runs (kernel on Cube backends, through fusion) and
//! differentiates through its hand-written backward, on the selected backend.

use burn::prelude::*;
use burn::tensor::{Distribution, activation::sigmoid};
use detclip_core::ext::sigmoid_gate;

use crate::harness::{assert_close, to_vec};

backend_test! {
    fn sigmoid_gate_forward_matches_closed_form<B>(device) {
        let x = Tensor::<B, 3>::random([2, 3, 37], Distribution::Normal(0.0, 2.0), device);
        let g = Tensor::<B, 3>::random([2, 3, 37], Distribution::Normal(0.0, 3.0), device);
        let xs = to_vec(x.clone());
        let gs = to_vec(g.clone());
        let expected: Vec<f32> = xs.iter().zip(&gs).map(|(x, g)| x / (1.0 + (-g).exp())).collect();
        let out = sigmoid_gate(x.clone(), g.clone()).unwrap();
        assert_eq!(out.dims(), [2, 3, 37]);
        assert_close("sigmoid_gate", &to_vec(out), &expected, 1e-6, 1e-5);
        // the inner (non-autodiff) backend runs the kernel too
        let inner = sigmoid_gate(x.inner(), g.inner()).unwrap();
        assert_close("sigmoid_gate inner", &to_vec(inner), &expected, 1e-6, 1e-5);
    }
}

backend_test! {
    fn sigmoid_gate_backward_matches_autodiff_of_tensor_ops<B>(device) {
        let x0 = Tensor::<B, 2>::random([5, 41], Distribution::Normal(0.0, 1.5), device);
        let g0 = Tensor::<B, 2>::random([5, 41], Distribution::Normal(0.0, 2.0), device);
        let w = Tensor::<B, 2>::random([5, 41], Distribution::Normal(0.0, 1.0), device);
        // through the custom op (hand-written backward)
        let (x, g) = (x0.clone().require_grad(), g0.clone().require_grad());
        let loss = (sigmoid_gate(x.clone(), g.clone()).unwrap() * w.clone()).sum();
        let grads = loss.backward();
        let (dx, dg) = (x.grad(&grads).unwrap(), g.grad(&grads).unwrap());
        // through Burn's own ops (Burn's autodiff)
        let (x2, g2) = (x0.require_grad(), g0.require_grad());
        let loss2 = (x2.clone() * sigmoid(g2.clone()) * w).sum();
        let grads2 = loss2.backward();
        assert_close("d/dx", &to_vec(dx), &to_vec(x2.grad(&grads2).unwrap()), 1e-6, 1e-5);
        assert_close("d/dgate", &to_vec(dg), &to_vec(g2.grad(&grads2).unwrap()), 1e-6, 1e-5);
    }
}

backend_test! {
    fn sigmoid_gate_only_tracks_what_requires_grad<B>(device) {
        let x = Tensor::<B, 1>::from_floats([1.0, -2.0, 3.0], device).require_grad();
        let g = Tensor::<B, 1>::from_floats([0.0, 0.0, 0.0], device);
        let grads = sigmoid_gate(x.clone(), g).unwrap().sum().backward();
        assert_close("d/dx at gate 0", &to_vec(x.grad(&grads).unwrap()), &[0.5, 0.5, 0.5], 1e-7, 0.0);
    }
}

backend_test! {
    fn sigmoid_gate_rejects_mismatched_shapes<B>(device) {
        let x = Tensor::<B, 2>::zeros([2, 3], device);
        let g = Tensor::<B, 2>::zeros([3, 2], device);
        let err = sigmoid_gate(x, g).unwrap_err().to_string();
        assert!(err.contains("sigmoid_gate") && err.contains("[3, 2]"), "{err}");
    }
}

backend_test! {
    fn the_selected_backend_is_the_one_that_runs<B>(device) {
        let name = B::name(device).to_lowercase();
        let spec = crate::harness::spec().to_string();
        let want = match spec.split(':').next().unwrap() {
            "cpu" => "ndarray",
            other => other,
        };
        eprintln!("DETCLIP_BACKEND={spec}: running on {name}");
        assert!(name.contains(want), "asked for {spec}, running on {name}");
        assert!(name.contains("autodiff"), "{name}");
    }
}
