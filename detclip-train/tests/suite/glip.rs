//! The `glip` recipe on the tiny preset: the loss falls with every term logged, each
//! fine-tuning mode trains only its groups, descriptions are written into prompts, and a
//! trained model detects through the learner's evaluation.

use std::collections::BTreeMap;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use detclip_core::data::prompt::PromptFormat;
use detclip_models::glip::GlipDetector;
use detclip_models::glip::described_prompts;
use detclip_train::learner::{RunFiles, init_model, load_trained, read_log, train};
use detclip_train::recipe::{ParamGroup, Recipe};
use detclip_train::recipes::GlipRecipe;
use detclip_train::recipes::glip::FineTune;

use crate::harness::{Collect, locked, quiet, scratch};

backend_test! {
    fn glip_loss_falls_and_every_term_is_logged<B>(device) {
        let mut recipe = GlipRecipe::tiny();
        recipe.learner.steps = 36;
        recipe.learner.checkpoint_every = 0;
        let out = scratch("glip-loss-falls");
        let run = locked(|| train::<_, B>(&recipe, device, &quiet(&out))).unwrap();
        let l: Vec<f64> = run.steps.iter().map(|s| s.loss).collect();
        assert_eq!(l.len(), 36);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&l[..8]), mean(&l[28..]));
        assert!(last < 0.8 * first, "loss did not fall: first {first:.4}, last {last:.4}: {l:?}");
        let log = read_log(&RunFiles::of(&out).log).unwrap();
        assert_eq!(log.len(), 36);
        for s in &log {
            for term in ["token", "giou", "centerness"] {
                assert!(s.terms.get(term).is_some_and(|v| v.is_finite()), "step {}: {term} missing", s.step);
            }
            assert!(s.lr.contains_key("prompt") && s.lr.contains_key("output"));
        }
        assert!(log.iter().any(|s| s.sources == ["grounding"]));
        assert!(log.iter().any(|s| s.sources == ["detection"]));
    }
}

/// The floats of each parameter group of a GLIP model.
fn groups<B: Backend>(m: &GlipDetector<B>) -> BTreeMap<ParamGroup, Vec<f32>> {
    struct ByGroup(Vec<String>, BTreeMap<ParamGroup, Vec<f32>>);
    impl<B: Backend> ModuleVisitor<B> for ByGroup {
        fn enter_module(&mut self, name: &str, _: &str) {
            self.0.push(name.to_string());
        }
        fn exit_module(&mut self, _: &str, _: &str) {
            self.0.pop();
        }
        fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
            let mut c = Collect(Vec::new());
            c.visit_float(p);
            self.1
                .entry(GlipRecipe::param_group(&self.0))
                .or_default()
                .extend(c.0);
        }
    }
    let mut v = ByGroup(Vec::new(), BTreeMap::new());
    m.visit(&mut v);
    v.1
}

backend_test! {
    fn each_fine_tuning_mode_trains_only_its_groups<B>(device) {
        for mode in [FineTune::Full, FineTune::PromptTuning, FineTune::LinearProbe] {
            let mut recipe = GlipRecipe::tiny().with_fine_tune(mode);
            recipe.learner.steps = 3;
            recipe.learner.schedule.warmup_steps = 0;
            let out = scratch(&format!("glip-mode-{mode:?}"));
            let initial = locked(|| {
                let m = init_model::<_, B::InnerBackend>(&recipe, device).unwrap();
                train::<_, B>(&recipe, device, &quiet(&out)).unwrap();
                m
            });
            let (_, trained) = locked(|| {
                load_trained::<GlipRecipe, B::InnerBackend>(&RunFiles::of(&out).checkpoint, device)
            })
            .unwrap();
            let (before, after) = (groups(&initial), groups(&trained));
            assert_eq!(before.keys().collect::<Vec<_>>(), ParamGroup::ALL.iter().collect::<Vec<_>>());
            let frozen = mode.frozen();
            for g in ParamGroup::ALL {
                if frozen.contains(&g) {
                    assert_eq!(before[&g], after[&g], "{mode:?}: frozen group {g:?} moved");
                } else {
                    assert_ne!(before[&g], after[&g], "{mode:?}: group {g:?} did not train");
                }
            }
        }
    }
}

#[test]
fn a_mode_and_its_frozen_groups_must_agree() {
    let mut recipe = GlipRecipe::tiny().with_fine_tune(FineTune::PromptTuning);
    assert!(recipe.validate().is_ok());
    recipe.learner.optim.frozen = vec![ParamGroup::Backbone];
    let err = recipe.validate().unwrap_err().to_string();
    assert!(err.contains("fine_tune"), "{err}");
}

#[test]
fn dyhead_ablation_switches_reach_the_model_and_zero_groups_means_no_group_norm() {
    let mut recipe = GlipRecipe::tiny();
    // Defaults: the released block.
    let config = &recipe.model;
    assert!(config.scale_attention && config.dyrelu && config.deformable);
    assert!(config.norm_groups > 0 && config.fusion_image_norm);
    recipe.model.scale_attention = false;
    recipe.model.dyrelu = false;
    recipe.model.norm_groups = 0;
    recipe.model.fusion_image_norm = false;
    assert!(recipe.validate().is_ok());
    // The switches reach the built model: no GroupNorm in the DyHead blocks.
    let model = locked(|| recipe.build::<burn::backend::NdArray>(&Default::default())).unwrap();
    assert!(
        model
            .glip
            .dyconvs
            .iter()
            .all(|b| b.convs.iter().all(|c| c.bn.is_none()))
    );
    // The model section is `GlipConfig` as Burn writes it: every field named (a missing one
    // is refused by its name), and set switches read back.
    let mut json = serde_json::to_value(GlipRecipe::tiny()).unwrap();
    json["model"]
        .as_object_mut()
        .unwrap()
        .remove("scale_attention");
    let err = serde_json::from_value::<GlipRecipe>(json)
        .unwrap_err()
        .to_string();
    assert!(err.contains("scale_attention"), "{err}");
    let saved = serde_json::to_value(&recipe).unwrap();
    let back: GlipRecipe = serde_json::from_value(saved.clone()).unwrap();
    assert_eq!(serde_json::to_value(&back).unwrap(), saved);
    // Groups that do not divide the channels are still refused.
    recipe.model.norm_groups = recipe.model.channels + 1;
    let err = recipe.validate().unwrap_err().to_string();
    assert!(err.contains("divisible"), "{err}");
}

#[test]
fn descriptions_follow_the_name_and_spans_point_at_the_name() {
    let names = ["red ring", "blue star", "green cross"];
    let descriptions = BTreeMap::from([("red ring".to_string(), "a small red ring".to_string())]);
    let prompts = described_prompts(
        &names,
        &descriptions,
        &PromptFormat::default(),
        1000,
        str::len,
    )
    .unwrap();
    assert_eq!(prompts.len(), 1);
    let p = &prompts[0];
    assert_eq!(
        p.text,
        "red ring, a small red ring. blue star. green cross."
    );
    let spans: Vec<&str> = (0..3).map(|i| p.name(i)).collect();
    assert_eq!(spans, names);
    // A budget that fits two described names splits the vocabulary; spans stay on the names.
    let chunks = described_prompts(
        &names,
        &descriptions,
        &PromptFormat::default(),
        40,
        str::len,
    )
    .unwrap();
    assert_eq!(chunks.len(), 2);
    assert_eq!(chunks[0].text, "red ring, a small red ring. blue star.");
    assert_eq!(chunks[1].name(0), "green cross");
    assert_eq!(chunks[1].entries[0].source, 2);
}

backend_test! {
    fn detection_runs_every_prompt_chunk_of_every_image<B>(device) {
        let mut recipe = GlipRecipe::tiny();
        recipe.test.descriptions.insert("red ring".into(), "a round red thing".into());
        recipe.test.candidate_threshold = 0.0;
        recipe.test.max_detections = 10_000;
        recipe.test.pre_nms_top_k = 100_000;
        recipe.test.nms_iou = 1.0;
        let eval = recipe.data.eval.as_ref().and_then(|e| e.synthetic()).unwrap();
        let world = eval.world().unwrap();
        let vocabulary = world.vocabulary(detclip_core::data::synthetic::Split::Test);
        // 42 concepts do not fit one 32-token prompt.
        let tokenizer = recipe.tokenizer(detclip_models::tokenizer::Overflow::Error).unwrap();
        let count = |t: &str| tokenizer.encode(t).map_or(usize::MAX, |e| e.attention_mask.iter().filter(|&&m| m == 1).count());
        let chunks = described_prompts(&vocabulary, &recipe.test.descriptions, &PromptFormat::default(), 32, count).unwrap();
        assert!(chunks.len() >= 3, "{} chunks", chunks.len());
        let model = locked(|| init_model::<_, B::InnerBackend>(&recipe, device)).unwrap();
        let samples = eval.samples(detclip_core::data::synthetic::Split::Test).unwrap();
        let cx = recipe.context().unwrap();
        let dets = detclip_train::evaluate::predict(&recipe, &cx, &model, &samples[..2], &vocabulary, 0.0, 2, device).unwrap();
        assert_eq!(dets.len(), 2);
        for d in &dets {
            // Every class of every chunk is scored at every anchor (no NMS, no threshold).
            let mut labels: Vec<usize> = d.iter().map(|x| x.label).collect();
            labels.sort_unstable();
            labels.dedup();
            assert_eq!(labels, (0..vocabulary.len()).collect::<Vec<_>>());
            assert!(d.iter().all(|x| (0.0..=1.0).contains(&x.score)));
        }
    }
}

#[test]
fn the_wordpiece_vocabulary_covers_the_world_and_spells_other_words() {
    use detclip_core::data::Span;
    use detclip_models::tokenizer::Overflow;

    let recipe = GlipRecipe::tiny();
    let tok = recipe.tokenizer(Overflow::Truncate).unwrap();
    // 5 special tokens, 32 punctuation marks, 23 world words, 36 letters and digits as word
    // starts and 36 as `##` pieces, less the word `a` that is also a letter.
    assert_eq!(tok.vocab_size(), 131);
    let e = tok.encode("Red ring, a zebra.").unwrap();
    let id = |t: &str| tok.token_id(t).unwrap();
    // [CLS] red ring , a z ##e ##b ##r ##a . [SEP], padded to 32.
    let want: Vec<u32> = [
        "[CLS]", "red", "ring", ",", "a", "z", "##e", "##b", "##r", "##a", ".", "[SEP]",
    ]
    .into_iter()
    .map(id)
    .collect();
    assert_eq!(e.ids[..12], want[..]);
    assert_eq!(e.len(), 32);
    assert_eq!(e.attention_mask.iter().sum::<u32>(), 12);
    assert_eq!(e.tokens_for_span(Span::new(12, 17)), Some(5..10));
}
