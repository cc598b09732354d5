//! Data-parallel training and dynamic loss scaling on the tiny `shapes` preset.
//!
//! Two replicas on the one test device (`cpu,cpu` on the CPU) run the multi-device code path:
//! fork, concurrent backward passes, gradients gathered on the main device. It must train like
//! one device accumulating the same micro-batches.

use burn::module::{Module, Param};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use detclip_core::DetError;
use detclip_core::backend::Precision;
use detclip_train::commands::{AnyRecipe, train_devices_command};
use detclip_train::learner::{
    LossScaler, RunFiles, ScaleChange, StepLog, init_model, load_trained, read_log, train,
    train_on_devices,
};
use detclip_train::recipes::ShapesRecipe;

use crate::harness::{floats, init_lock, locked, quiet, scratch};

fn losses(log: &[StepLog]) -> Vec<f64> {
    log.iter().map(|l| l.loss).collect()
}

fn assert_rel_close(a: &[f64], b: &[f64], tol: f64, what: &str) {
    assert_eq!(a.len(), b.len(), "{what}: lengths");
    for (x, y) in a.iter().zip(b) {
        assert!(
            (x - y).abs() <= tol * y.abs().max(1.0),
            "{what}: {a:?} vs {b:?}"
        );
    }
}

fn trained_floats<B: Backend>(out: &std::path::Path, device: &B::Device) -> Vec<f32> {
    let (_, model) =
        locked(|| load_trained::<ShapesRecipe, B>(&RunFiles::of(out).checkpoint, device)).unwrap();
    floats(&model)
}

backend_test! {
    fn two_devices_train_like_one_device_accumulating_their_micro_batches<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 6;
        recipe.learner.checkpoint_every = 3;
        recipe.learner.accumulate = 1;
        let mut accumulating = recipe.clone();
        accumulating.learner.accumulate = 2;
        let (two, one, parts) = (scratch("dp-two"), scratch("dp-one"), scratch("dp-parts"));
        let devices = vec![device.clone(), device.clone()];
        let _g = init_lock();
        let parallel = train_on_devices::<_, B>(&recipe, &devices, &quiet(&two)).unwrap();
        let sequential = train::<_, B>(&accumulating, device, &quiet(&one)).unwrap();

        // The same micro-batches, in the same order: micro-batch 2k on device 0, 2k+1 on 1.
        let sources = |s: &[StepLog]| s.iter().map(|l| l.sources.clone()).collect::<Vec<_>>();
        assert_eq!(sources(&parallel.steps), sources(&sequential.steps));
        assert!(parallel.steps.iter().all(|s| s.sources.len() == 2));
        assert_rel_close(&losses(&parallel.steps), &losses(&sequential.steps), 1e-5, "losses");
        let norms = |s: &[StepLog]| s.iter().map(|l| l.grad_norm.unwrap()).collect::<Vec<_>>();
        assert_rel_close(&norms(&parallel.steps), &norms(&sequential.steps), 1e-4, "grad norms");

        // The same parameters after 6 steps.
        drop(_g);
        let (a, b) = (trained_floats::<B::InnerBackend>(&two, device), trained_floats::<B::InnerBackend>(&one, device));
        assert_eq!(a.len(), b.len());
        let diff = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(diff <= 1e-4, "parameters differ by {diff}");

        // Stopped after step 3 and resumed, the two-device run repeats itself.
        let _g = init_lock();
        let mut first = quiet(&parts);
        first.stop_at = Some(3);
        let before = train_on_devices::<_, B>(&recipe, &devices, &first).unwrap();
        let mut again = quiet(&parts);
        again.resume = true;
        let after = train_on_devices::<_, B>(&recipe, &devices, &again).unwrap();
        let resumed: Vec<f64> = losses(&before.steps).into_iter().chain(losses(&after.steps)).collect();
        assert_rel_close(&resumed, &losses(&parallel.steps), 1e-6, "resumed losses");
    }
}

fn device_error(devices: &str, precision: Precision, out: &std::path::Path) -> String {
    let recipe = AnyRecipe::Shapes(ShapesRecipe::tiny());
    let err = locked(|| train_devices_command(recipe, devices, precision, quiet(out))).unwrap_err();
    assert!(matches!(err, DetError::Device { .. }), "{err:?}");
    assert!(!out.exists(), "{devices}: something was written");
    err.to_string()
}

#[test]
fn a_device_list_with_a_device_that_is_not_there_is_refused_before_anything_is_written() {
    let dir = scratch("dp-bad");
    let out = dir.join("run");
    // A second kind of backend, a GPU listed twice, `auto` in a list, an empty entry.
    let mixed = device_error("cpu,cuda:7", Precision::F32, &out);
    assert!(
        mixed.contains("cuda") && (mixed.contains("one kind") || mixed.contains("no `cuda`")),
        "{mixed}"
    );
    let twice = device_error("cuda:0,cuda:0", Precision::F32, &out);
    assert!(
        twice.contains("twice") || twice.contains("no `cuda`") || twice.contains("driver"),
        "{twice}"
    );
    let auto = device_error("auto,cpu", Precision::F32, &out);
    assert!(auto.contains("auto"), "{auto}");
    let empty = device_error("cpu,,cpu", Precision::F32, &out);
    assert!(empty.contains("empty entry"), "{empty}");
    let number = device_error("cuda:x", Precision::F32, &out);
    assert!(number.contains("device number"), "{number}");
}

#[test]
fn half_precision_on_the_cpu_is_refused_with_what_it_needs() {
    let out = scratch("half-cpu").join("run");
    for p in [Precision::F16, Precision::Bf16] {
        let err = device_error("cpu", p, &out);
        assert!(
            err.contains(&format!("precision {p} needs --device wgpu or cuda")),
            "{err}"
        );
    }
    assert_eq!("bf16".parse::<Precision>().unwrap(), Precision::Bf16);
    assert!("f8".parse::<Precision>().is_err());
}

#[derive(Module, Debug)]
struct Two<B: Backend> {
    a: Param<Tensor<B, 1>>,
    b: Param<Tensor<B, 2>>,
}

fn grads_of<B: AutodiffBackend>(
    m: &Two<B>,
    a: [f32; 2],
    b: [f32; 4],
    device: &B::Device,
) -> GradientsParams {
    let mut g = GradientsParams::new();
    g.register(m.a.id, Tensor::<B::InnerBackend, 1>::from_floats(a, device));
    g.register(
        m.b.id,
        Tensor::<B::InnerBackend, 1>::from_floats(b, device).reshape([2, 2]),
    );
    g
}

backend_test! {
    fn the_loss_scaler_unscales_detects_overflow_and_moves_its_scale<B>(device) {
        let m = Two::<B> {
            a: Param::from_tensor(Tensor::zeros([2], device)),
            b: Param::from_tensor(Tensor::zeros([2, 2], device)),
        };
        let scaler = LossScaler::with(1024.0, 3);
        let (g, finite) = scaler.unscale::<B, _>(&m, grads_of(&m, [1024.0, -2048.0], [512.0, 0.0, 1.0, 4096.0], device));
        assert!(finite);
        let a: Vec<f32> = g.get::<B::InnerBackend, 1>(m.a.id).unwrap().into_data().to_vec().unwrap();
        let b: Vec<f32> = g.get::<B::InnerBackend, 2>(m.b.id).unwrap().into_data().to_vec().unwrap();
        assert_eq!(a, [1.0, -2.0]);
        assert_eq!(b, [0.5, 0.0, 1.0 / 1024.0, 4.0]);
        for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
            let (_, finite) = scaler.unscale::<B, _>(&m, grads_of(&m, [1.0, 2.0], [0.0, bad, 0.0, 0.0], device));
            assert!(!finite, "{bad} not detected");
        }

        // Growth after `growth_interval` finite steps, halving (and a fresh count) on overflow.
        let mut s = LossScaler::with(1024.0, 3);
        let changes: Vec<ScaleChange> = [true, true, true, true, false, true, true, true]
            .into_iter()
            .map(|ok| s.update(ok))
            .collect();
        use ScaleChange::*;
        assert_eq!(changes, [Kept, Kept, Grown, Kept, Backed, Kept, Kept, Grown]);
        assert_eq!(s.scale, 2048.0);
        assert!(LossScaler::with(0.0, 3).validate().is_err());
        assert!(LossScaler::with(8.0, 0).validate().is_err());
    }
}

backend_test! {
    fn loss_scaling_in_f32_trains_like_no_scaling_and_resumes_with_its_scale<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 4;
        recipe.learner.checkpoint_every = 2;
        let (plain, scaled, parts) = (scratch("ls-plain"), scratch("ls-scaled"), scratch("ls-parts"));
        let scaling = |out: &std::path::Path| {
            let mut o = quiet(out);
            o.loss_scaling = Some(LossScaler::with(1024.0, 2));
            o
        };
        let _g = init_lock();
        let reference = train::<_, B>(&recipe, device, &quiet(&plain)).unwrap();
        let run = train::<_, B>(&recipe, device, &scaling(&scaled)).unwrap();
        // Scaling by a power of two and unscaling is exact up to rounding of sums.
        assert_rel_close(&losses(&run.steps), &losses(&reference.steps), 1e-5, "losses");
        let scales: Vec<f64> = run.steps.iter().map(|s| s.loss_scale.unwrap()).collect();
        assert_eq!(scales, [1024.0, 1024.0, 2048.0, 2048.0]);
        assert!(run.steps.iter().all(|s| !s.skipped) && reference.steps.iter().all(|s| s.loss_scale.is_none()));

        // The checkpoint carries the scaler: a resumed run continues with its scale.
        let mut first = scaling(&parts);
        first.stop_at = Some(2);
        train::<_, B>(&recipe, device, &first).unwrap();
        let mut again = quiet(&parts); // no scaler given: the checkpoint's is used
        again.resume = true;
        train::<_, B>(&recipe, device, &again).unwrap();
        let log = read_log(&RunFiles::of(&parts).log).unwrap();
        assert_eq!(log.iter().map(|s| s.loss_scale.unwrap()).collect::<Vec<_>>(), scales);
        assert_rel_close(&losses(&log), &losses(&run.steps), 1e-6, "resumed losses");
    }
}

backend_test! {
    fn a_step_whose_scaled_gradients_overflow_is_skipped_and_the_scale_halved<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 3;
        let out = scratch("ls-overflow");
        let mut options = quiet(&out);
        let huge = f32::MAX as f64;
        options.loss_scaling = Some(LossScaler::with(huge, 100));
        let (initial, run) = {
            let _g = init_lock();
            let m = init_model::<_, B::InnerBackend>(&recipe, device).unwrap();
            (m, train::<_, B>(&recipe, device, &options).unwrap())
        };
        assert!(run.steps.iter().all(|s| s.skipped), "{:?}", run.steps);
        assert!(run.steps.iter().all(|s| s.loss.is_finite()), "the logged loss is the unscaled one");
        let scales: Vec<f64> = run.steps.iter().map(|s| s.loss_scale.unwrap()).collect();
        let expected = [huge, huge / 2.0, huge / 4.0].map(|s| s as f32 as f64);
        assert_eq!(scales, expected);
        let log = read_log(&RunFiles::of(&out).log).unwrap();
        assert!(log.iter().all(|s| s.skipped));
        // Skipped steps leave the model as it was.
        assert_eq!(trained_floats::<B::InnerBackend>(&out, device), floats(&initial));
    }
}
