//! A pretrained sentence encoder as the `shapes` detector's language side: a tiny
//! sentence-transformers folder (detclip-models' fixture) trains, checkpoints, reloads and
//! detects; prompts with words no training data had are scored; bad settings are refused.

use detclip_core::DetError;
use detclip_core::data::synthetic::Split;
use detclip_models::shapes::ShapesDetector;
use detclip_train::evaluate::EvalSet;
use detclip_train::learner::{RunFiles, load_trained, train};
use detclip_train::recipe::Recipe;
use detclip_train::recipes::ShapesRecipe;
use detclip_train::unseen::{Rewrite, rewrite, unseen_word_report};

use crate::harness::{init_lock, quiet, scratch};

fn tiny_folder() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../detclip-models/tests/fixtures/hf_bert_tiny")
}

backend_test! {
    fn a_sentence_encoder_drives_the_shapes_detector<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.text_model = Some(tiny_folder());
        recipe.model.text_features = Some(96);
        recipe.learner.steps = 12;
        recipe.learner.checkpoint_every = 0;
        recipe.validate().unwrap();
        let out = scratch("text-model");
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap()
        };
        assert!(run.steps.iter().all(|s| s.loss.is_finite()));
        // The checkpoint carries the folder; a reloaded model detects with its cached texts.
        let (loaded, model): (ShapesRecipe, ShapesDetector<B::InnerBackend>) =
            load_trained(&RunFiles::of(&out).checkpoint, device).unwrap();
        assert_eq!(loaded.text_model, recipe.text_model);
        assert!(model.features.is_some());
        let cx = loaded.context().unwrap();
        let text = cx.text.as_ref().expect("a text model");
        let names = vec!["red circle".to_string(), "crimson disc".to_string()];
        let a = text.features(&names).unwrap();
        let b = text.features(&names).unwrap();
        assert_eq!(a.len(), 2 * 96);
        assert_eq!(a, b, "cached embeddings are the computed ones");
        let set = EvalSet::of(&loaded).unwrap().unwrap();
        let report = unseen_word_report(&loaded, &cx, &model, &set, 4, device).unwrap();
        let wordings: Vec<&str> = report.iter().map(|w| w.wording).collect();
        assert_eq!(wordings, ["names", "colour_synonyms", "shape_synonyms", "both_synonyms"]);
        assert!(report.iter().all(|w| w.report.all.AP.is_finite()));
        assert_eq!(rewrite(&set.vocabulary[0], Rewrite::Both), report[3].example);
        let world = loaded.data.eval.as_ref().unwrap().synthetic().unwrap().world().unwrap();
        assert!(!world.vocabulary(Split::Train).iter().any(|n| n.contains("crimson")));
    }
}

backend_test! {
    fn mismatched_text_model_settings_are_refused<B>(device) {
        let _ = device;
        let mut recipe = ShapesRecipe::tiny();
        recipe.text_model = Some(tiny_folder());
        let e = recipe.validate().unwrap_err().to_string();
        assert!(e.contains("text_model") && e.contains("text_features"), "{e}");
        recipe.model.text_features = Some(384);
        let e = recipe.context().err().expect("a width mismatch").to_string();
        assert!(e.contains("96") && e.contains("384"), "{e}");
        recipe.text_model = Some("/nonexistent/minilm".into());
        let e = recipe.context().err().expect("a missing folder");
        assert!(matches!(e, DetError::Io { .. }), "{e}");
        assert!(e.to_string().contains("/nonexistent/minilm"), "{e}");
    }
}

backend_test! {
    fn glip_starts_its_bert_from_a_hugging_face_folder<B>(device) {
        use detclip_train::recipes::GlipRecipe;
        // The sizes must be the folder's: a recipe that only names the folder is refused.
        let mut bare = GlipRecipe::tiny();
        bare.text.model = Some(tiny_folder());
        let e = bare.validate().unwrap_err().to_string();
        assert!(e.contains("text.model") && e.contains("with_text_model"), "{e}");
        let mut recipe = GlipRecipe::tiny().with_text_model(&tiny_folder(), 0.1).unwrap();
        recipe.learner.steps = 3;
        recipe.learner.checkpoint_every = 0;
        recipe.data.eval = None;
        recipe.validate().unwrap();
        assert_eq!(recipe.model.bert.hidden_size, 32);
        assert_eq!(recipe.learner.optim.lr_mult.language, 0.1);
        // prepare() puts the folder's weights into the language side.
        let built = {
            let _g = init_lock();
            recipe.build::<B>(device).unwrap()
        };
        let prepared = recipe.prepare(built, device).unwrap();
        let reference = detclip_models::hf::load_bert::<B>(&tiny_folder(), None, false, device).unwrap();
        let got = prepared.glip.language.embeddings.word_embeddings.weight.val();
        let want = reference.model.embeddings.word_embeddings.weight.val();
        assert_eq!(got.into_data().to_vec::<f32>().unwrap(), want.into_data().to_vec::<f32>().unwrap());
        // Prompts are tokenised by the folder's tokenizer.
        let cx = recipe.context().unwrap();
        assert_eq!(cx.test.vocab_size(), 22);
        let out = scratch("glip-text-model");
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap()
        };
        assert!(run.steps.iter().all(|s| s.loss.is_finite()));
    }
}
