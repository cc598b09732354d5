//! The `regionspot` recipe on the learner: only the module trains (SAM and CLIP stay
//! bit-identical through training), the cache gives the same losses as computing on the fly,
//! a second cache pass computes nothing, and image-text sources are refused.

use burn::module::AutodiffModule;
use detclip_core::data::SourceKind;
use detclip_train::data::DatasetConfig;
use detclip_train::learner::{RunFiles, StepLog, init_model, load_trained, read_log, train};
use detclip_train::recipe::Recipe;
use detclip_train::recipes::RegionSpotRecipe;
use detclip_train::recipes::regionspot::cache_features;

use crate::harness::{floats, init_lock, locked, quiet, scratch};

fn losses(log: &[StepLog]) -> Vec<f64> {
    log.iter().map(|l| l.loss).collect()
}

backend_test! {
    fn regionspot_trains_only_the_module<B>(device) {
        let mut recipe = RegionSpotRecipe::tiny();
        recipe.learner.steps = 24;
        recipe.learner.checkpoint_every = 0;
        let out = scratch("regionspot-train");
        let (prepared, run) = {
            let _g = init_lock();
            let model = init_model::<_, B>(&recipe, device).unwrap();
            let prepared = recipe.prepare(model, device).unwrap().valid();
            (prepared, train::<_, B>(&recipe, device, &quiet(&out)).unwrap())
        };
        let l = losses(&run.steps);
        let mean = |s: &[f64]| s.iter().sum::<f64>() / s.len() as f64;
        let (first, last) = (mean(&l[..6]), mean(&l[18..]));
        assert!(last < 0.8 * first, "loss did not fall: {first:.4} → {last:.4}: {l:?}");
        let log = read_log(&RunFiles::of(&out).log).unwrap();
        assert!(log.iter().all(|s| s.terms.contains_key("focal")));
        let (_, trained) = locked(|| {
            load_trained::<RegionSpotRecipe, B::InnerBackend>(&RunFiles::of(&out).checkpoint, device)
        })
        .unwrap();
        assert_eq!(floats(&trained.sam), floats(&prepared.sam), "SAM moved");
        assert_eq!(floats(&trained.clip), floats(&prepared.clip), "CLIP moved");
        assert_ne!(floats(&trained.head), floats(&prepared.head), "the module did not train");
    }
}

backend_test! {
    fn regionspot_cache_gives_the_same_losses_and_is_filled_once<B>(device) {
        let mut recipe = RegionSpotRecipe::tiny();
        recipe.learner.steps = 3;
        recipe.learner.checkpoint_every = 0;
        let dir = scratch("regionspot-cache");
        let plain = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &quiet(&scratch("regionspot-plain"))).unwrap()
        };
        recipe.cache_dir = Some(dir.clone());
        let model = locked(|| {
            let m = init_model::<_, B>(&recipe, device).unwrap();
            recipe.prepare(m, device).unwrap().valid()
        });
        let first = cache_features(&recipe, &model, device, |_, _| {}).unwrap();
        assert_eq!(first.images, 12, "{first:?}");
        assert_eq!((first.written, first.present), (12, 0));
        let second = cache_features(&recipe, &model, device, |_, _| {}).unwrap();
        assert_eq!((second.written, second.present), (0, 12));
        let files = std::fs::read_dir(&dir).unwrap().count();
        let cached = locked(|| train::<_, B>(&recipe, device, &quiet(&scratch("regionspot-cached"))).unwrap());
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), files, "training missed the cache");
        let (a, b) = (losses(&plain.steps), losses(&cached.steps));
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() <= 1e-5 * x.abs().max(1.0), "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn regionspot_refuses_image_text_sources_and_bad_templates() {
    let mut recipe = RegionSpotRecipe::tiny();
    if let DatasetConfig::Synthetic(s) = &mut recipe.data.sources[0].dataset {
        s.kind = SourceKind::ImageText;
    }
    let e = recipe.validate().unwrap_err().to_string();
    assert!(e.contains("image-text"), "{e}");
    let mut recipe = RegionSpotRecipe::tiny();
    recipe.templates = vec!["no placeholder".into()];
    assert!(recipe.validate().is_err());
    let json = serde_json::to_string(&RegionSpotRecipe::tiny()).unwrap();
    let back: RegionSpotRecipe = detclip_train::recipe::parse_config(&json, "x.json").unwrap();
    assert_eq!(back, RegionSpotRecipe::tiny());
    let bad = json.replacen("\"templates\"", "\"templatez\"", 1);
    assert!(detclip_train::recipe::parse_config::<RegionSpotRecipe>(&bad, "x.json").is_err());
}
