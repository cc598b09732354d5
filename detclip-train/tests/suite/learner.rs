//! The learner on the tiny `shapes` preset: the loss falls, a resumed run repeats the
//! uninterrupted one exactly, `init_from` starts a run from another's model, frozen groups
//! stay put, detections are written.

use detclip_models::shapes::ShapesDetector;
use detclip_train::detect::detect_and_write;
use detclip_train::learner::{RunFiles, StepLog, init_model, load_trained, read_log, train};
use detclip_train::recipe::ParamGroup;
use detclip_train::recipes::ShapesRecipe;

use crate::harness::{floats, init_lock, locked, quiet, scratch};

/// The log is JSON: its numbers round-trip to within an ulp or two.
fn assert_close_f64(a: &[f64], b: &[f64]) {
    assert_eq!(a.len(), b.len());
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-12 * y.abs().max(1.0), "{a:?} vs {b:?}");
    }
}

fn losses(log: &[StepLog]) -> Vec<f64> {
    log.iter().map(|l| l.loss).collect()
}

backend_test! {
    fn loss_falls_on_the_synthetic_world<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 40;
        recipe.learner.checkpoint_every = 0;
        let out = scratch("loss-falls");
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap()
        };
        let l = losses(&run.steps);
        assert_eq!(l.len(), 40);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&l[..8]), mean(&l[32..]));
        assert!(last < 0.7 * first, "loss did not fall: first {first:.4}, last {last:.4}: {l:?}");
        // Every step's terms and learning rates are logged, and the curve is drawn.
        let files = RunFiles::of(&out);
        let log = read_log(&files.log).unwrap();
        assert_close_f64(&losses(&log), &l);
        assert!(log.iter().all(|s| s.terms.contains_key("cls") && s.lr.contains_key("backbone")));
        assert!(log.iter().any(|s| s.sources == ["grounding"]));
        assert!(files.plot.exists() && files.config.exists() && files.checkpoint.exists());
    }
}

backend_test! {
    fn a_resumed_run_repeats_the_uninterrupted_run<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 12;
        recipe.learner.checkpoint_every = 4;
        recipe.learner.accumulate = 2;
        let (full, parts) = (scratch("resume-full"), scratch("resume-parts"));
        let _g = init_lock();
        let uninterrupted = train::<_, B>(&recipe, device, &quiet(&full)).unwrap();
        // Killed after step 7: the checkpoint of step 4 is the last one on disk... emulate by
        // stopping at 8 (the checkpoint of step 8 is written), then resume.
        let mut first = quiet(&parts);
        first.stop_at = Some(8);
        let before = train::<_, B>(&recipe, device, &first).unwrap();
        assert_eq!(before.steps.len(), 8);
        let mut again = quiet(&parts);
        again.resume = true;
        let after = train::<_, B>(&recipe, device, &again).unwrap();
        assert_eq!(after.steps.first().map(|s| s.step), Some(8));
        let resumed: Vec<f64> = losses(&before.steps).into_iter().chain(losses(&after.steps)).collect();
        assert_eq!(resumed, losses(&uninterrupted.steps), "resumed losses differ");
        let log = read_log(&RunFiles::of(&parts).log).unwrap();
        assert_close_f64(&losses(&log), &losses(&uninterrupted.steps));
        let sources = |s: &[StepLog]| s.iter().map(|l| l.sources.clone()).collect::<Vec<_>>();
        assert_eq!(sources(&log), sources(&uninterrupted.steps));
    }
}

backend_test! {
    fn frozen_groups_do_not_change<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 3;
        recipe.learner.optim.frozen = vec![ParamGroup::Backbone, ParamGroup::Language];
        let out = scratch("frozen");
        let initial: ShapesDetector<B::InnerBackend> = {
            let _g = init_lock();
            let m = init_model::<_, B::InnerBackend>(&recipe, device).unwrap();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap();
            m
        };
        let (_, trained) =
            locked(|| load_trained::<ShapesRecipe, B::InnerBackend>(&RunFiles::of(&out).checkpoint, device)).unwrap();
        assert_eq!(floats(&trained.backbone), floats(&initial.backbone), "backbone moved");
        assert_eq!(floats(&trained.text), floats(&initial.text), "language side moved");
        assert_ne!(floats(&trained.head), floats(&initial.head), "the head did not train");
    }
}

backend_test! {
    fn init_from_starts_a_fresh_run_from_another_runs_model<B>(device) {
        let mut first = ShapesRecipe::tiny();
        first.learner.steps = 3;
        let (a, b) = (scratch("init-from-a"), scratch("init-from-b"));
        locked(|| train::<_, B>(&first, device, &quiet(&a))).unwrap();
        let checkpoint = RunFiles::of(&a).checkpoint;
        // The second stage: every group frozen, so its model must be the first run's exactly.
        let mut second = ShapesRecipe::tiny();
        second.learner.steps = 2;
        second.learner.seed = 7;
        second.learner.init_from = Some(checkpoint.clone());
        second.learner.optim.frozen = vec![ParamGroup::Backbone, ParamGroup::Language, ParamGroup::New];
        let run = locked(|| train::<_, B>(&second, device, &quiet(&b))).unwrap();
        assert_eq!(run.steps.first().map(|s| s.step), Some(0), "a fresh run starts at step 0");
        let load = |p: &std::path::Path| {
            locked(|| load_trained::<ShapesRecipe, B::InnerBackend>(p, device)).unwrap().1
        };
        let (from_a, from_b) = (load(&checkpoint), load(&RunFiles::of(&b).checkpoint));
        assert_eq!(floats(&from_b), floats(&from_a), "the second run did not start from the first's model");
        let fresh = locked(|| init_model::<_, B::InnerBackend>(&second, device)).unwrap();
        assert_ne!(floats(&fresh), floats(&from_a));

        // A missing checkpoint is refused before anything is written.
        let c = scratch("init-from-missing");
        let out = c.join("run");
        second.learner.init_from = Some(c.join("nothing.bin"));
        let err = locked(|| train::<_, B>(&second, device, &quiet(&out))).unwrap_err().to_string();
        assert!(err.contains("nothing.bin") && err.contains("init_from"), "{err}");
        assert!(!out.exists(), "the run folder was written");
    }
}

backend_test! {
    fn detect_writes_coco_json_and_pictures<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.learner.steps = 2;
        let out = scratch("detect");
        {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out.join("run"))).unwrap();
        }
        let (recipe, model) =
            locked(|| load_trained::<ShapesRecipe, B::InnerBackend>(&RunFiles::of(&out.join("run")).checkpoint, device)).unwrap();
        let eval = recipe.data.eval.as_ref().and_then(|e| e.synthetic()).unwrap();
        let samples = eval.samples(detclip_core::data::synthetic::Split::Test).unwrap();
        let names = vec!["red ring".to_string(), "blue star".to_string()];
        let report = detect_and_write(&recipe, &model, &samples[..2], &names, 0.0, &out.join("det"), device).unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&report.json).unwrap()).unwrap();
        assert_eq!(json["images"].as_array().unwrap().len(), 2);
        assert_eq!(json["categories"][1]["name"], "blue star");
        let anns = json["annotations"].as_array().unwrap();
        assert!(!anns.is_empty() && anns.len() <= 2 * recipe.test.max_detections);
        assert!(anns.iter().all(|a| a["bbox"].as_array().unwrap().len() == 4 && a["score"].as_f64().unwrap() >= 0.0));
        assert_eq!(report.pictures.len(), 2);
        let pic = image::open(&report.pictures[0]).unwrap();
        assert_eq!((pic.width(), pic.height()), (samples[0].width, samples[0].height));
    }
}

backend_test! {
    fn image_text_batches_train_the_max_aggregation_term<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        let mut pairs = recipe.data.sources[0].clone();
        pairs.name = "pairs".into();
        if let detclip_train::data::DatasetConfig::Synthetic(w) = &mut pairs.dataset {
            w.kind = detclip_core::data::SourceKind::ImageText;
        }
        pairs.weight = 100.0;
        recipe.data.sources.push(pairs);
        recipe.learner.steps = 3;
        let out = scratch("image-text");
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap()
        };
        let pair_steps: Vec<&StepLog> = run.steps.iter().filter(|s| s.sources == ["pairs"]).collect();
        assert!(!pair_steps.is_empty());
        for s in pair_steps {
            assert_eq!(s.terms.keys().collect::<Vec<_>>(), ["image_text"]);
            assert!(s.loss.is_finite() && s.loss > 0.0);
        }
    }
}
