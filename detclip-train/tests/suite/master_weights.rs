//! Master weights (`learner::train_mixed`): the optimiser's copy of the parameters in a wider
//! float type than the one the model computes in.
//!
//! `detclip train --precision f16` pairs `Wgpu<f16>`/`Cuda<f16>` with an f32 master copy. The
//! CPU backend has no half type, so the same code is checked here one step up: f32 compute
//! with f64 masters, where an f32 weight loses every update under half its ulp just as an f16
//! weight does. With masters of the compute type itself the run must be the one-copy run,
//! bit for bit, and resume like it.

use burn::backend::{Autodiff, NdArray};
use burn::prelude::*;
use detclip_train::learner::{
    Decay, LossScaler, RunFiles, copy_params, copy_state, copy_trained, init_model, load_trained,
    read_log, train, train_mixed,
};
use detclip_train::recipes::ShapesRecipe;

use crate::harness::{floats, init_lock, locked, materialised, quiet, scratch};

fn checkpoint_floats<B: Backend>(out: &std::path::Path, device: &B::Device) -> Vec<f32> {
    let (_, model) =
        locked(|| load_trained::<ShapesRecipe, B>(&RunFiles::of(out).checkpoint, device)).unwrap();
    floats(&model)
}

backend_test! {
    fn master_weights_of_the_compute_type_train_like_one_copy_and_resume<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 4;
        recipe.learner.checkpoint_every = 2;
        let (one, two, parts) = (scratch("mw-one"), scratch("mw-two"), scratch("mw-parts"));
        let scaled = |out: &std::path::Path| {
            let mut o = quiet(out);
            o.loss_scaling = Some(LossScaler::with(1024.0, 2));
            o
        };
        let _g = init_lock();
        let plain = train::<_, B>(&recipe, device, &scaled(&one)).unwrap();
        let mixed =
            train_mixed::<_, B, B>(&recipe, std::slice::from_ref(device), device, &scaled(&two)).unwrap();
        let losses = |s: &[detclip_train::learner::StepLog]| s.iter().map(|l| l.loss).collect::<Vec<_>>();
        assert_eq!(losses(&mixed.steps), losses(&plain.steps));
        assert_eq!(
            mixed.steps.iter().map(|s| s.grad_norm).collect::<Vec<_>>(),
            plain.steps.iter().map(|s| s.grad_norm).collect::<Vec<_>>()
        );
        drop(_g);
        let (a, b) = (
            checkpoint_floats::<B::InnerBackend>(&one, device),
            checkpoint_floats::<B::InnerBackend>(&two, device),
        );
        assert_eq!(a, b, "the checkpoints hold the same weights");

        // Stopped after step 2 and resumed: the masters and their moments come back from the
        // checkpoint, the compute copy from the masters.
        let mut first = scaled(&parts);
        first.stop_at = Some(2);
        let _g = init_lock();
        train_mixed::<_, B, B>(&recipe, std::slice::from_ref(device), device, &first).unwrap();
        let mut again = quiet(&parts);
        again.resume = true;
        train_mixed::<_, B, B>(&recipe, std::slice::from_ref(device), device, &again).unwrap();
        let log = read_log(&RunFiles::of(&parts).log).unwrap();
        assert_eq!(losses(&log), losses(&plain.steps));
    }
}

backend_test! {
    fn copying_parameters_between_models_of_different_configs_is_an_error<B>(device) {
        let small = ShapesRecipe::tiny();
        let mut wide = ShapesRecipe::tiny();
        wide.model.head_channels = 32;
        let (a, b) = locked(|| {
            (
                init_model::<_, B::InnerBackend>(&small, device).unwrap(),
                init_model::<_, B::InnerBackend>(&wide, device).unwrap(),
            )
        });
        let err = copy_params::<B::InnerBackend, B::InnerBackend, _, _>(&a, b, device)
            .unwrap_err()
            .to_string();
        assert!(err.contains("master") && err.contains("differ"), "{err}");
        // Same config: every value and id arrives.
        let c = locked(|| init_model::<_, B::InnerBackend>(&small, device).unwrap());
        let c = copy_params::<B::InnerBackend, B::InnerBackend, _, _>(&a, c, device).unwrap();
        assert_eq!(floats(&c), floats(&a));
    }
}

/// The reason for master weights, shown one float width up: at `lr = 4e-9` an AdamW step
/// (at most ~1.3·lr in 30 steps, with Adam's bias corrections) is under half an ulp of every
/// f32 weight with |w| ≥ 1/8 (half ulp 7.45e-9), so a plain f32 run leaves all those weights
/// bit-identical, while f64 masters accumulate the steps until the f32 compute copy moves
/// too.
#[test]
fn f64_master_weights_keep_the_updates_that_f32_weights_round_away() {
    type F32 = Autodiff<NdArray<f32>>;
    type F64 = Autodiff<NdArray<f64>>;
    let device = Default::default();
    let mut recipe = ShapesRecipe::tiny();
    recipe.learner.steps = 30;
    recipe.learner.checkpoint_every = 0;
    recipe.learner.optim.lr = 4e-9;
    recipe.learner.schedule.warmup_steps = 0;
    recipe.learner.schedule.decay = Decay::Constant;
    recipe.learner.optim.weight_decay = 0.0;
    recipe.learner.optim.clip_grad_norm = None;
    let (plain_out, mixed_out) = (scratch("mw-f32"), scratch("mw-f64"));
    let (initial, plain, mixed) = locked(|| {
        let initial = floats(&init_model::<_, NdArray<f32>>(&recipe, &device).unwrap());
        let plain = train::<_, F32>(&recipe, &device, &quiet(&plain_out)).unwrap();
        let mixed = train_mixed::<_, F32, F64>(
            &recipe,
            std::slice::from_ref(&device),
            &device,
            &quiet(&mixed_out),
        )
        .unwrap();
        (initial, plain, mixed)
    });
    assert_eq!(plain.steps.len(), 30);
    assert_eq!(mixed.steps.len(), 30);
    // The first step runs on the same weights in both runs.
    assert_eq!(mixed.steps[0].loss, plain.steps[0].loss);
    let after_plain = checkpoint_floats::<NdArray<f32>>(&plain_out, &device);
    let after_mixed = checkpoint_floats::<NdArray<f32>>(&mixed_out, &device);
    let large: Vec<usize> = (0..initial.len())
        .filter(|&i| initial[i].abs() >= 0.125)
        .collect();
    assert!(large.len() > 1000, "{} weights with |w| ≥ 1/8", large.len());
    let moved = |after: &[f32]| large.iter().filter(|&&i| after[i] != initial[i]).count();
    assert_eq!(
        moved(&after_plain),
        0,
        "f32 weights take no update under half an ulp"
    );
    let mixed_moved = moved(&after_mixed);
    assert!(
        mixed_moved * 4 > large.len(),
        "with f64 masters {mixed_moved} of {} weights moved",
        large.len()
    );
    eprintln!(
        "f64 masters moved {mixed_moved} of {} f32 weights with |w| ≥ 1/8; plain f32 moved 0",
        large.len()
    );
    // Every move is what 30 steps of at most ~1.3·lr add up to, plus the final rounding.
    for &i in &large {
        let step = (after_mixed[i] - initial[i]).abs();
        assert!(
            step <= 30.0 * 4e-9 * 1.5 + f32::EPSILON * initial[i].abs(),
            "{step}"
        );
    }
}

/// A layer that trains, a frozen one and a batch norm (running statistics that the forward
/// pass updates).
#[derive(burn::module::Module, Debug)]
struct Net<B: Backend> {
    trained: burn::nn::Linear<B>,
    frozen: burn::nn::Linear<B>,
    norm: burn::nn::BatchNorm<B>,
}

impl<B: Backend> Net<B> {
    fn new(device: &B::Device) -> Self {
        use burn::module::Module;
        Self {
            trained: burn::nn::LinearConfig::new(3, 4).init(device),
            frozen: burn::nn::LinearConfig::new(4, 4).init(device).no_grad(),
            norm: burn::nn::BatchNormConfig::new(4).init(device),
        }
    }
    fn forward(&self, x: Tensor<B, 2>) -> Tensor<B, 2> {
        let h = self.frozen.forward(self.trained.forward(x));
        let [n, c] = h.dims();
        self.norm.forward(h.reshape([n, c, 1])).reshape([n, c])
    }
}

backend_test! {
    fn master_steps_copy_only_trained_weights_and_checkpoints_take_running_statistics<B>(device) {
        let (compute, master) = locked(|| {
            let compute = materialised(Net::<B>::new(device));
            let master = materialised(Net::<B>::new(device));
            (compute, master)
        });
        let master = copy_params::<B, B, _, _>(&compute, master, device).unwrap();
        let before = floats(&master);
        let initial_stats = {
            let v = master.norm.running_mean.value_sync().into_data().convert::<f32>();
            v.to_vec::<f32>().unwrap()
        };
        // A forward pass in training mode moves the compute copy's running statistics.
        let x = Tensor::<B, 2>::from_floats([[1.0, 2.0, 3.0], [-1.0, 0.5, 4.0]], device);
        let _ = compute.forward(x.clone());
        let stats = |n: &Net<B>| {
            let v = n.norm.running_mean.value_sync().into_data().convert::<f32>();
            v.to_vec::<f32>().unwrap()
        };
        assert_ne!(stats(&compute), stats(&master));
        // A second update stays pending (per thread) until something synchronises it.
        let _ = compute.forward(x * 2.0);
        // "An optimiser step" on the masters: every trained float shifted.
        let stepped = master.map(&mut Shift(0.5));
        // Only what trains comes back to the compute copy.
        let compute = copy_trained::<B, B, _, _>(&stepped, compute, device).unwrap();
        assert_eq!(floats(&compute.trained), floats(&stepped.trained));
        // For the checkpoint the running statistics go to the masters (with the pending
        // second update); frozen weights, unchanged in the compute copy, keep the masters'
        // own.
        let saved = copy_state::<B, B, _, _>(&compute, stepped.clone(), device).unwrap();
        assert_eq!(stats(&saved), stats(&compute));
        assert_ne!(stats(&saved), initial_stats, "the statistics arrived");
        assert_eq!(floats(&saved.frozen), floats(&stepped.frozen));
        assert_eq!(floats(&saved.trained), floats(&stepped.trained));
        assert_ne!(floats(&saved), before);
    }
}

/// Adds a constant to every float tensor that trains.
struct Shift(f32);

impl<B: Backend> burn::module::ModuleMapper<B> for Shift {
    fn map_float<const D: usize>(
        &mut self,
        param: burn::module::Param<Tensor<B, D>>,
    ) -> burn::module::Param<Tensor<B, D>> {
        let (id, tensor, mapper) = param.consume();
        let rg = tensor.is_require_grad();
        if !rg {
            return burn::module::Param::from_mapped_value(id, tensor, mapper);
        }
        let device = tensor.device();
        let data = tensor.detach().add_scalar(self.0).into_data();
        let t = Tensor::<B, D>::from_data(data, &device);
        burn::module::Param::from_mapped_value(id, t.set_require_grad(rg), mapper)
    }
}
