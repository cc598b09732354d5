//! The `vild` recipe on the learner: the loss falls, held-out concepts are never targets, the
//! ViLD-image term exists only with `w > 0` and its target is the teacher's (on the fly or
//! precomputed), a released CLIP is loaded and its class embeddings match torch's, and bad
//! configs are errors.

use burn::module::AutodiffModule;
use burn::prelude::*;
use detclip_core::data::synthetic::Split;
use detclip_train::commands::AnyRecipe;
use detclip_train::data::{DatasetConfig, JointSampler, Source, SyntheticSplit};
use detclip_train::learner::{
    EvalSet, RunFiles, evaluate_model, init_model, load_trained, start_model, train,
};
use detclip_train::recipe::{Recipe, parse_config};
use detclip_train::recipes::VildRecipe;
use detclip_train::recipes::vild::VildModel;
use detclip_train::vild::{PrecomputeOptions, load_teachers, precompute};

use crate::harness::{Fixture, floats, init_lock, locked, materialised, quiet, scratch};

fn mean(s: &[f64]) -> f64 {
    s.iter().sum::<f64>() / s.len() as f64
}

/// A batch of the recipe's first source.
fn first_batch<B: Backend>(
    recipe: &VildRecipe,
    device: &B::Device,
) -> (detclip_core::data::Batch<B>, Vec<String>) {
    let source = Source::load(&recipe.data.sources[0]).unwrap();
    let vocabulary = source.vocabulary.clone();
    let mut sampler = JointSampler::new(vec![source], 0, recipe.data.size_divisor);
    (sampler.next_batch::<B>(device).unwrap().batch, vocabulary)
}

fn term(terms: &detclip_train::recipe::LossTerms<impl Backend>, name: &str) -> Option<f64> {
    terms.values().0.get(name).copied()
}

backend_test! {
    fn vild_loss_falls_and_the_model_detects_seen_and_held_out<B>(device) {
        let mut recipe = VildRecipe::tiny();
        recipe.learner.steps = 36;
        recipe.learner.checkpoint_every = 0;
        let out = scratch("vild-recipe-train");
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap()
        };
        let l: Vec<f64> = run.steps.iter().map(|s| s.loss).collect();
        assert!(l.iter().all(|v| v.is_finite()), "{l:?}");
        assert!(mean(&l[l.len() - 8..]) < mean(&l[..8]), "loss did not fall: {l:?}");
        let names: Vec<&str> = run.steps[0].terms.keys().map(String::as_str).collect();
        assert_eq!(names, ["box", "image", "mask", "rpn_box", "rpn_objectness", "text"]);

        // The checkpoint holds the trained detector and the prepared CLIP; evaluation scores
        // base and held-out names together.
        let (loaded, model) = {
            let _g = init_lock();
            load_trained::<VildRecipe, B::InnerBackend>(&out.join("checkpoint.bin"), device).unwrap()
        };
        let set = EvalSet::of(&loaded).unwrap().unwrap();
        assert!(!set.held_out.is_empty());
        let cx = loaded.context().unwrap();
        let report = evaluate_model(&loaded, &cx, &model, &set, 4, device).unwrap();
        assert!(report.held_out.is_some(), "the evaluation reports held-out AP");
        assert!(report.all.AP.is_finite() && report.all.AP >= 0.0);
        assert_eq!(
            cx.cached_classes(),
            set.vocabulary.len(),
            "every evaluated name's embedding is computed once and cached"
        );
    }
}

backend_test! {
    fn vild_never_trains_on_held_out_concepts<B>(device) {
        let mut recipe = VildRecipe::tiny();
        // Test-split images: each holds at least one held-out object.
        if let DatasetConfig::Synthetic(w) = &mut recipe.data.sources[0].dataset {
            w.split = SyntheticSplit::Test;
        }
        recipe.loss.image_weight = 0.0;
        let (batch, vocabulary) = first_batch::<B>(&recipe, device);
        let cx = recipe.context().unwrap();
        let held: Vec<&String> = batch
            .samples
            .iter()
            .flat_map(|s| s.instances.iter().map(move |i| &s.concepts[i.concepts[0]].name))
            .filter(|n| recipe.held_out.contains(n))
            .collect();
        assert!(!held.is_empty(), "the batch shows held-out objects");
        let base = recipe.base_names(&vocabulary);
        assert!(base.iter().all(|n| !recipe.held_out.contains(n)));
        assert!(vocabulary.iter().any(|n| recipe.held_out.contains(n)));
        let mut kept = 0;
        for i in 0..batch.samples.len() {
            let (boxes, labels) = recipe.targets_of(&batch, i, &base);
            assert_eq!(boxes.len(), labels.len());
            for l in labels {
                assert!(!recipe.held_out.contains(&base[l]), "held-out `{}` is a target", base[l]);
                kept += 1;
            }
        }
        let total: usize = batch.samples.iter().map(|s| s.instances.len()).sum();
        assert_eq!(kept + held.len(), total, "every base box is kept, every held-out one dropped");
        // The loss still runs on such a batch (the held-out objects are background).
        let model = {
            let _g = init_lock();
            init_model::<_, B>(&recipe, device).unwrap()
        };
        let terms = recipe.loss(&cx, &model, &batch, &vocabulary).unwrap();
        assert!(term(&terms, "text").unwrap().is_finite());
    }
}

backend_test! {
    fn vild_image_term_only_with_a_weight_and_its_target_is_the_teacher<B>(device) {
        let mut recipe = VildRecipe::tiny();
        recipe.teacher = None;
        let (batch, vocabulary) = first_batch::<B>(&recipe, device);
        let cx = recipe.context().unwrap();
        let (model, other_vision) = {
            let _g = init_lock();
            let model = init_model::<_, B>(&recipe, device).unwrap();
            B::seed(device, 99);
            let other = materialised(recipe.clip.init::<B>(device).vision);
            (model, other)
        };
        recipe.loss.image_weight = 0.0;
        let without = recipe.loss(&cx, &model, &batch, &vocabulary).unwrap();
        assert_eq!(term(&without, "image"), None);
        recipe.loss.image_weight = 0.5;
        let with = recipe.loss(&cx, &model, &batch, &vocabulary).unwrap();
        let image = term(&with, "image").unwrap();
        assert!(image > 0.0 && image.is_finite());

        // The teacher: M proposals per image, unit embeddings from CLIP's image tower.
        let teachers = recipe.teacher_regions(&cx, &model, &batch).unwrap();
        assert_eq!(teachers.len(), batch.samples.len());
        for t in &teachers {
            assert!(!t.boxes.is_empty() && t.boxes.len() <= recipe.loss.proposals);
            let norms: Vec<f32> = t.embeddings.clone().powi_scalar(2).sum_dim(1).sqrt()
                .into_data().convert::<f32>().to_vec().unwrap();
            assert!(norms.iter().all(|n| (n - 1.0).abs() < 1e-4), "{norms:?}");
        }
        // Another image tower (same detector, same text tower): the image term changes, the
        // text term does not.
        let swapped = VildModel::new(model.detector.clone(), detclip_models::clip::Clip {
            vision: other_vision,
            text: model.clip.text.clone(),
            logit_scale: model.clip.logit_scale.clone(),
        });
        let changed = recipe.loss(&cx, &swapped, &batch, &vocabulary).unwrap();
        let (t0, t1) = (term(&with, "text").unwrap(), term(&changed, "text").unwrap());
        assert!((t0 - t1).abs() < 1e-5, "text {t0} vs {t1}");
        let i1 = term(&changed, "image").unwrap();
        assert!((image - i1).abs() > 1e-4, "image {image} vs {i1}: not the teacher's target");
    }
}

backend_test! {
    fn vild_reads_precomputed_teachers<B>(device) {
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let mut recipe = VildRecipe::tiny();
        recipe.teacher = None;
        let model = {
            let _g = init_lock();
            init_model::<_, B>(&recipe, device).unwrap()
        };
        let inner = model.valid();
        let samples = match &recipe.data.sources[0].dataset {
            DatasetConfig::Synthetic(w) => w.samples(Split::Train).unwrap(),
            _ => unreachable!("the tiny preset is synthetic"),
        };
        let dir = scratch("vild-recipe-teachers");
        let options = PrecomputeOptions {
            proposals: 5,
            shard_size: 4,
            short_side: 64,
            max_long: Some(96),
            crop_size: recipe.clip.vision.image_size as u32,
            ..Default::default()
        };
        precompute::<I<B>>(&inner.detector, &inner.clip.vision, &samples, &dir, &options, device)
            .unwrap();
        recipe.teacher_dir = Some(dir.clone());
        recipe.validate().unwrap();
        let stored = load_teachers(&dir).unwrap();
        let (batch, vocabulary) = first_batch::<B>(&recipe, device);
        let cx = recipe.context().unwrap();
        let teachers = recipe.teacher_regions(&cx, &model, &batch).unwrap();
        for (s, t) in batch.samples.iter().zip(&teachers) {
            let want = &stored[&s.key];
            assert_eq!(t.boxes.len(), want.boxes.len());
            let got: Vec<f32> = t.embeddings.clone().into_data().convert::<f32>().to_vec().unwrap();
            assert_eq!(got, want.embeddings, "the stored embeddings are the target");
        }
        let terms = recipe.loss(&cx, &model, &batch, &vocabulary).unwrap();
        assert!(term(&terms, "image").unwrap() > 0.0);
    }
}

#[test]
fn vild_bad_configs_are_errors() {
    let ok = VildRecipe::tiny();
    ok.validate().unwrap();
    let mut r = ok.clone();
    r.loss.image_weight = -0.5;
    assert!(r.validate().is_err(), "w < 0");
    let mut r = ok.clone();
    r.loss.image_weight = f32::NAN;
    assert!(r.validate().is_err(), "w NaN");
    let mut r = ok.clone();
    r.teacher_dir = Some("/nonexistent/vild-teachers".into());
    assert!(r.validate().is_err(), "missing teacher dir");
    let mut r = ok.clone();
    r.teacher_dir = Some(std::env::temp_dir());
    r.data.sources[0].flip_prob = 0.5;
    assert!(r.validate().is_err(), "flips with precomputed boxes");
    let mut r = ok.clone();
    r.loss.image_weight = 0.0;
    r.loss.ensemble = true;
    assert!(r.validate().is_err(), "ensemble without distillation");
    let mut r = ok.clone();
    r.templates = vec!["no slot".into()];
    assert!(r.validate().is_err(), "template without {{}}");
    let mut r = ok.clone();
    r.clip.vision.image_size = 18;
    assert!(r.validate().is_err(), "side not a multiple of the patch");
    let mut r = ok.clone();
    r.clip.text.vocab_size += 1;
    let err = r.validate().unwrap_err().to_string();
    assert!(
        err.contains("vocab_size"),
        "the word vocabulary must size CLIP's text: {err}"
    );
    let mut r = ok.clone();
    r.model.embed_dim += 1;
    let err = r.validate().unwrap_err().to_string();
    assert!(err.contains("embed_dim"), "{err}");
    // A released CLIP: its weights must exist, it is not pre-trained, and it reads names
    // through its tokenizer.
    let (released, _) = released_tiny();
    let mut r = released.clone();
    r.teacher = ok.teacher.clone();
    assert!(r.validate().unwrap_err().to_string().contains("teacher"));
    let mut r = released.clone();
    r.text = ok.text.clone();
    assert!(r.validate().unwrap_err().to_string().contains("tokenizer"));
    let mut r = released.clone();
    r.clip_weights = Some("/nonexistent/clip.pt".into());
    assert!(
        r.validate()
            .unwrap_err()
            .to_string()
            .contains("/nonexistent/clip.pt")
    );
    let mut r = released.clone();
    r.model.backbone.width = 0;
    let err = r.validate().unwrap_err().to_string();
    assert!(err.contains("backbone"), "{err}");
    released.validate().unwrap();

    // JSON: the preset round-trips; unknown fields and bad values are errors, not panics.
    let json = serde_json::to_string(&ok).unwrap();
    let back: VildRecipe = parse_config(&json, "vild.json").unwrap();
    assert_eq!(serde_json::to_string(&back).unwrap(), json);
    let unknown = json.replacen('{', "{\"surprise\": 1, ", 1);
    assert!(parse_config::<VildRecipe>(&unknown, "vild.json").is_err());
    let negative = json.replace("\"image_weight\":0.5", "\"image_weight\":-1.0");
    assert_ne!(negative, json);
    assert!(parse_config::<VildRecipe>(&negative, "vild.json").is_err());
    assert!(matches!(
        AnyRecipe::load("vild", None),
        Ok(AnyRecipe::Vild(_))
    ));
}

/// The names and templates of `scripts/fixtures/vild_recipe_clip.py`.
pub(crate) const CLIP_NAMES: [&str; 3] = ["red ring", "blue star", "green square"];
const CLIP_TEMPLATES: [&str; 2] = ["a photo of {} in the scene.", "a photo of a {}."];

/// The tiny preset with the fixture's released-layout CLIP (OpenAI keys, the tiny BPE
/// tokenizer's 536 ids) instead of the small pre-trained one; and the fixture folder.
pub(crate) fn released_tiny() -> (VildRecipe, std::path::PathBuf) {
    use detclip_models::clip::{
        ClipConfig, ClipLayout, ClipTextConfig, ClipVisionConfig, EotPooling,
    };
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let fixtures = root.join("tests/fixtures");
    let layout = ClipLayout::OpenAi;
    let config = ClipConfig::new(
        ClipVisionConfig::new()
            .with_image_size(32)
            .with_patch_size(8)
            .with_width(32)
            .with_layers(2)
            .with_heads(4)
            .with_mlp_width(64)
            .with_embed_dim(16)
            .with_layout(layout),
        ClipTextConfig::new()
            .with_vocab_size(536)
            .with_context_length(48)
            .with_width(32)
            .with_layers(2)
            .with_heads(4)
            .with_mlp_width(64)
            .with_embed_dim(16)
            .with_layout(layout)
            .with_pooling(EotPooling::ArgMax),
    );
    let mut r = VildRecipe::tiny().with_released_clip(
        config,
        fixtures.join("vild_clip_openai.safetensors"),
        root.join("../detclip-models/tests/fixtures/tokenizer_clip_tiny.json"),
    );
    r.templates = CLIP_TEMPLATES.iter().map(|t| t.to_string()).collect();
    (r, fixtures)
}

backend_test! {
    fn vild_loads_a_released_clip_and_its_class_embeddings_match_torch<B>(device) {
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let (mut recipe, fixtures) = released_tiny();
        recipe.learner.steps = 2;
        let built = locked(|| {
            let m = init_model::<_, B>(&recipe, device)?;
            start_model(&recipe, m, device)
        })
        .unwrap();
        let names: Vec<String> = CLIP_NAMES.iter().map(|n| n.to_string()).collect();
        let cx = recipe.context().unwrap();
        let got = recipe.class_embeddings(&cx, &built, &names, device).unwrap();
        let got = got.into_data().convert::<f32>().to_vec::<f32>().unwrap();
        let want = Fixture::load(&fixtures, "vild_clip_io.safetensors").f32s("class_embeddings");
        let diff = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        eprintln!("released CLIP class embeddings vs torch: max abs diff {diff:e}");
        assert_eq!(got.len(), want.len());
        assert!(diff < 1e-4, "class embeddings differ from torch by {diff}");

        // A run trains the detector on top of it and leaves CLIP as loaded.
        let out = scratch("vild-released-clip");
        let run = locked(|| train::<_, B>(&recipe, device, &quiet(&out))).unwrap();
        assert!(run.steps.iter().all(|s| s.loss.is_finite()));
        let (_, trained) = locked(|| load_trained::<VildRecipe, I<B>>(&RunFiles::of(&out).checkpoint, device)).unwrap();
        assert_eq!(floats(&trained.clip), floats(&built.clip.valid()), "CLIP moved");
    }
}
