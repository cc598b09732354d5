//! The `detclipv2` recipe on its tiny preset: the loss falls, every term is logged by the
//! learner, image-text batches carry only the contrastive term, and the config round-trips.

use detclip_train::data::{DatasetConfig, SyntheticConfig, SyntheticSplit};
use detclip_train::learner::{RunFiles, read_log, train};
use detclip_train::recipe::{Recipe, parse_config};
use detclip_train::recipes::DetClipV2Recipe;

use crate::harness::{init_lock, quiet, scratch};

backend_test! {
    fn detclipv2_loss_falls_and_every_term_is_logged<B>(device) {
        let mut recipe = DetClipV2Recipe::tiny();
        recipe.learner.steps = 36;
        recipe.learner.checkpoint_every = 0;
        let out = scratch("detclipv2-loss-falls");
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&out)).unwrap()
        };
        let log = read_log(&RunFiles::of(&out).log).unwrap();
        assert_eq!(log.len(), 36);
        // Per source: its own terms, every one logged, all finite.
        let by_source = |name: &str| log.iter().filter(|s| s.sources == [name]).collect::<Vec<_>>();
        for (source, expected) in [
            ("detection", vec!["align", "centerness", "reg"]),
            ("grounding", vec!["align", "centerness", "reg"]),
            ("captions", vec!["contrastive"]),
        ] {
            let steps = by_source(source);
            assert!(!steps.is_empty(), "no {source} step in {:?}", log.iter().map(|s| &s.sources).collect::<Vec<_>>());
            for s in steps {
                assert_eq!(s.terms.keys().map(String::as_str).collect::<Vec<_>>(), expected, "{source}");
                assert!(s.terms.values().all(|v| v.is_finite()), "{source}: {:?}", s.terms);
            }
        }
        // The detection loss falls (compared within the detection source, whose batches are
        // alike).
        let det: Vec<f64> = by_source("detection").iter().map(|s| s.loss).collect();
        let k = (det.len() / 3).max(1);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&det[..k]), mean(&det[det.len() - k..]));
        assert!(last < 0.8 * first, "detection loss did not fall: {first:.4} → {last:.4}: {det:?}");
        assert_eq!(run.steps.len(), 36);
    }
}

#[test]
fn detclipv2_config_round_trips_and_old_synthetic_configs_parse() {
    let recipe = DetClipV2Recipe::synthetic();
    let text = serde_json::to_string_pretty(&recipe).unwrap();
    let back: DetClipV2Recipe = parse_config(&text, "detclipv2.json").unwrap();
    assert_eq!(
        serde_json::to_string(&back).unwrap(),
        serde_json::to_string(&recipe).unwrap()
    );
    let captions = recipe
        .data
        .sources
        .iter()
        .find(|s| s.name == "captions")
        .unwrap();
    assert!(
        matches!(&captions.dataset, DatasetConfig::Synthetic(w) if w.split == SyntheticSplit::Test)
    );
    // A synthetic source written before `split` existed reads as the training split.
    let old = r#"{"seed": 1, "images": 4, "min_side": 64, "max_side": 64, "max_objects": 2,
                  "min_object": 16, "kind": "Detection"}"#;
    let w: SyntheticConfig = serde_json::from_str(old).unwrap();
    assert_eq!(w.split, SyntheticSplit::Train);
    // An image-text source of one image per batch has no negatives.
    let mut bad = DetClipV2Recipe::tiny();
    bad.data
        .sources
        .iter_mut()
        .find(|s| s.name == "captions")
        .unwrap()
        .batch_size = 1;
    assert!(bad.validate().is_err());
    assert_eq!(DetClipV2Recipe::detection_only().data.sources.len(), 1);
    assert_eq!(
        DetClipV2Recipe::detection_and_captions().data.sources.len(),
        2
    );
}

/// The experiment's configs (the book's commands train from them) are the presets, written
/// out: `DETCLIP_WRITE_CONFIGS=1 cargo test -p detclip-train --test suite detclipv2` rewrites
/// them after a preset changes.
#[test]
fn detclipv2_experiment_configs_are_the_presets() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    for (file, recipe) in [
        (
            "detclipv2-detection-only.json",
            DetClipV2Recipe::detection_only(),
        ),
        (
            "detclipv2-detection-captions.json",
            DetClipV2Recipe::detection_and_captions(),
        ),
    ] {
        let path = dir.join(file);
        let text = serde_json::to_string_pretty(&recipe).unwrap() + "\n";
        if std::env::var_os("DETCLIP_WRITE_CONFIGS").is_some() {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &text).unwrap();
        }
        let on_disk = std::fs::read_to_string(&path).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (write it with DETCLIP_WRITE_CONFIGS=1)",
                path.display()
            )
        });
        assert_eq!(on_disk, text, "{} differs from the preset", path.display());
        let parsed: DetClipV2Recipe = parse_config(&on_disk, file).unwrap();
        assert_eq!(parsed.learner.steps, recipe.learner.steps);
    }
}
