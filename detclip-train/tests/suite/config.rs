//! Bad configs and bad data paths: one clear message, nothing written.

use detclip_train::commands::AnyRecipe;
use detclip_train::data::DatasetConfig;
use detclip_train::learner::{RunOptions, train};
use detclip_train::recipe::parse_config;
use detclip_train::recipes::ShapesRecipe;

use crate::harness::{locked, scratch};

fn tiny_json() -> serde_json::Value {
    serde_json::to_value(ShapesRecipe::tiny()).unwrap()
}

#[test]
fn the_config_round_trips_through_json() {
    let text = serde_json::to_string_pretty(&ShapesRecipe::tiny()).unwrap();
    let back: ShapesRecipe = parse_config(&text, "tiny.json").unwrap();
    assert_eq!(back, ShapesRecipe::tiny());
}

/// `naming: "shape"` names concepts by shape alone (`star`), so only whole shapes are held
/// out; the default is left out of the JSON, so configs written before it read the same.
#[test]
fn a_synthetic_world_can_name_concepts_by_shape() {
    use detclip_core::data::synthetic::Split;
    use detclip_train::data::SyntheticNaming;

    let tiny = ShapesRecipe::tiny();
    let text = serde_json::to_string(&tiny).unwrap();
    assert!(
        !text.contains("naming"),
        "the default naming is written out"
    );
    let DatasetConfig::Synthetic(mut world) = tiny.data.sources[0].dataset.clone() else {
        panic!("the tiny recipe trains on the synthetic world")
    };
    let paired = world.world().unwrap();
    assert!(
        paired
            .vocabulary(Split::Test)
            .iter()
            .all(|n| n.contains(' '))
    );
    world.naming = SyntheticNaming::Shape;
    let json = serde_json::to_value(&world).unwrap();
    assert_eq!(json["naming"], "shape");
    let back: detclip_train::data::SyntheticConfig = serde_json::from_value(json).unwrap();
    assert_eq!(back, world);
    let shapes = back.world().unwrap();
    assert_eq!(shapes.held_out_vocabulary(), ["star"]);
    let test = shapes.vocabulary(Split::Test);
    assert!(
        test.iter().all(|n| !n.contains(' ')) && test.contains(&"star".to_string()),
        "{test:?}"
    );
    assert!(
        !shapes
            .vocabulary(Split::Train)
            .contains(&"star".to_string())
    );
    let samples = back.samples(Split::Train).unwrap();
    assert!(
        samples
            .iter()
            .flat_map(|s| &s.concepts)
            .all(|c| !c.name.contains(' '))
    );
}

#[test]
fn an_unknown_field_is_refused() {
    let mut v = tiny_json();
    v["learner"]["optim"]["learning_rate"] = 0.1.into();
    let err = parse_config::<ShapesRecipe>(&v.to_string(), "cfg.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cfg.json") && err.contains("unknown field `learning_rate`"),
        "{err}"
    );
}

#[test]
fn a_wrong_type_is_refused() {
    let mut v = tiny_json();
    v["learner"]["steps"] = "many".into();
    let err = parse_config::<ShapesRecipe>(&v.to_string(), "cfg.json")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cfg.json") && err.contains("invalid type"),
        "{err}"
    );
}

#[test]
fn an_invalid_value_is_refused() {
    let mut v = tiny_json();
    v["data"]["sources"][0]["weight"] = (-1.0).into();
    let err = parse_config::<ShapesRecipe>(&v.to_string(), "cfg.json")
        .unwrap_err()
        .to_string();
    assert!(err.contains("weight must be positive"), "{err}");
}

#[test]
fn an_unknown_recipe_or_missing_config_file_is_refused() {
    let err = AnyRecipe::load("glop", None).unwrap_err().to_string();
    assert!(
        err.contains("unknown recipe `glop`") && err.contains("shapes"),
        "{err}"
    );
    let err = AnyRecipe::load("shapes", Some("/nonexistent/cfg.json".as_ref()))
        .unwrap_err()
        .to_string();
    assert!(err.contains("/nonexistent/cfg.json"), "{err}");
}

#[test]
fn a_device_that_is_not_there_is_refused() {
    let err = detclip_train::commands::train_command(
        AnyRecipe::Shapes(ShapesRecipe::tiny()),
        "cuda:3",
        RunOptions::new(scratch("device").join("run")),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("device `cuda:3`"), "{err}");
    let err = "tpu"
        .parse::<detclip_core::backend::DeviceSpec>()
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected one of"), "{err}");
}

backend_test! {
    fn a_missing_data_path_is_refused_before_writing<B>(device) {
        let mut recipe = ShapesRecipe::tiny();
        recipe.data.sources[0].dataset = DatasetConfig::Coco {
            annotations: "/nonexistent/instances.json".into(),
            images: "/nonexistent/images".into(),
            categories: None,
            drop_rare: false,
        };
        let out = scratch("missing-data").join("run");
        let mut o = RunOptions::new(&out);
        o.progress = false;
        let err = locked(|| train::<_, B>(&recipe, device, &o)).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/instances.json") && err.contains("does not exist"), "{err}");
        assert!(!out.exists(), "the run folder was created");
    }
}

/// Every config committed under `detclip-train/configs/` (named `RECIPE-….json`) still reads
/// and validates as its recipe's config: a renamed or retyped field breaks this test rather
/// than a user's run.
#[test]
fn every_committed_config_loads() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("configs");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dir).expect("configs folder") {
        let path = entry.expect("a folder entry").path();
        if path.extension().is_none_or(|e| e != "json") {
            continue;
        }
        let stem = path
            .file_stem()
            .and_then(|s| s.to_str())
            .expect("a UTF-8 name");
        let recipe = stem.split('-').next().expect("a recipe prefix");
        if let Err(e) = AnyRecipe::load(recipe, Some(&path)) {
            panic!("{}: {e}", path.display());
        }
        checked += 1;
    }
    assert!(
        checked >= 5,
        "only {checked} configs found in {}",
        dir.display()
    );
}

/// Every recipe's model section is its model's own config: every preset validates, a bad size
/// is refused by the model's `validate` with the field's name, and each preset's JSON reads
/// back as the same config.
#[test]
fn every_recipe_embeds_its_models_config_and_the_model_checks_it() {
    use detclip_train::recipe::Recipe;
    use detclip_train::recipes::{DetClipV2Recipe, GlipRecipe, RegionSpotRecipe, VildRecipe};

    let names = AnyRecipe::names();
    assert_eq!(names, ["shapes", "regionspot", "detclipv2", "glip", "vild"]);
    for preset in AnyRecipe::presets() {
        let name = preset.name();
        let loaded = AnyRecipe::load(name, None).unwrap();
        assert_eq!(loaded.name(), name);
    }
    fn round_trip<R: Recipe>(r: &R) {
        r.validate().unwrap();
        let json = serde_json::to_string(r).unwrap();
        let back: R = parse_config(&json, "preset.json").unwrap();
        assert_eq!(serde_json::to_string(&back).unwrap(), json, "{}", R::NAME);
    }
    round_trip(&GlipRecipe::synthetic());
    round_trip(&VildRecipe::synthetic());
    round_trip(&RegionSpotRecipe::synthetic());
    round_trip(&DetClipV2Recipe::synthetic());
    round_trip(&ShapesRecipe::demo());

    // One field of a model is one edit, and the model's own check names it.
    let mut glip = GlipRecipe::tiny();
    glip.model.fusion_heads = 3;
    let err = glip.validate().unwrap_err().to_string();
    assert!(err.contains("divisible"), "{err}");
    let mut glip = GlipRecipe::tiny();
    glip.model.anchor_scale = 0.0;
    let err = glip.validate().unwrap_err().to_string();
    assert!(err.contains("anchor_scale"), "{err}");
    let mut glip = GlipRecipe::tiny();
    glip.model.bert.max_position_embeddings = 8;
    let err = glip.validate().unwrap_err().to_string();
    assert!(err.contains("max_position_embeddings"), "{err}");
    let mut vild = VildRecipe::tiny();
    vild.clip.vision.heads = 3;
    let err = vild.validate().unwrap_err().to_string();
    assert!(err.contains("heads"), "{err}");
    let mut rs = RegionSpotRecipe::tiny();
    rs.model.clip_input = 33;
    let err = rs.validate().unwrap_err().to_string();
    assert!(err.contains("clip_input"), "{err}");
    let mut rs = RegionSpotRecipe::tiny();
    rs.model.head.text_dim += 1;
    let err = rs.validate().unwrap_err().to_string();
    assert!(err.contains("module"), "{err}");
    let mut shapes = ShapesRecipe::tiny();
    shapes.model.anchor_scale = f32::NAN;
    let err = shapes.validate().unwrap_err().to_string();
    assert!(err.contains("anchor_scale"), "{err}");
}

/// GLIP's anchors and coder are the model's: the preset's scale of 4 strides reaches the
/// geometry the loss and inference use, and the default geometry is the released one.
#[test]
fn glip_geometry_comes_from_the_model_config() {
    use detclip_models::glip::{GlipConfig, GlipGeometry};
    use detclip_train::recipes::GlipRecipe;

    let g = GlipRecipe::synthetic().model.geometry();
    let sizes: Vec<f32> = g
        .anchors
        .levels
        .iter()
        .map(|l| l.sizes[0] / l.stride)
        .collect();
    assert_eq!(sizes, vec![4.0; 5]);
    let released = GlipGeometry::default();
    assert_eq!(released, GlipConfig::glip_t().geometry());
    assert!(
        released
            .anchors
            .levels
            .iter()
            .all(|l| l.sizes == vec![8.0 * l.stride])
    );
}
