//! The `regionspot` recipe on the learner: only the module trains (SAM and CLIP stay
//! bit-identical through training), the cache gives the same losses as computing on the fly,
//! a second cache pass computes nothing (with the module's position options on), and
//! image-text sources are refused.

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
        // Both position options: the cache file holds no boxes, the query positions need them.
        recipe.model.head.key_positions = true;
        recipe.model.head.query_positions = true;
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
    assert_eq!(
        serde_json::to_value(&back).unwrap(),
        serde_json::to_value(RegionSpotRecipe::tiny()).unwrap()
    );
    let bad = json.replacen("\"templates\"", "\"templatez\"", 1);
    assert!(detclip_train::recipe::parse_config::<RegionSpotRecipe>(&bad, "x.json").is_err());
}

/// `detclip detect --boxes`: RegionSpot scores exactly the boxes of a COCO-format file (matched
/// by path or by file name, low-scored ones dropped, a box half a pixel over the border
/// clipped), every box against every name; bad box files and a missing `--boxes` are errors
/// that name the fault.
#[test]
fn regionspot_detect_classifies_the_given_boxes() {
    use detclip_core::DetError;
    use detclip_core::data::Orientation;
    use detclip_core::data::synthetic::Split;
    use detclip_core::error::DataFault;
    use detclip_train::commands::{AnyRecipe, detect_command, train_command};

    let mut recipe = RegionSpotRecipe::tiny();
    recipe.learner.steps = 1;
    let dir = scratch("regionspot-detect");
    let run = dir.join("run");
    locked(|| train_command(AnyRecipe::RegionSpot(recipe.clone()), "cpu", quiet(&run))).unwrap();
    let checkpoint = RunFiles::of(&run).checkpoint;

    let DatasetConfig::Synthetic(world) = &recipe.data.sources[0].dataset else {
        panic!("the tiny recipe trains on the synthetic world")
    };
    let samples = world.samples(Split::Train).unwrap();
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let (a, b) = (images.join("a.png"), images.join("b.png"));
    for (s, p) in samples.iter().zip([&a, &b]) {
        s.load_image(Orientation::Apply).unwrap().save(p).unwrap();
    }
    let (w, h) = (samples[1].width as f32, samples[1].height as f32);
    let mut names: Vec<String> = Vec::new();
    for c in samples.iter().flat_map(|s| &s.concepts) {
        if !names.contains(&c.name) {
            names.push(c.name.clone());
        }
    }
    names.truncate(2);
    assert_eq!(names.len(), 2, "{names:?}");
    let prompt = format!("{}. {}.", names[0], names[1]);

    let write = |name: &str, json: serde_json::Value| {
        let p = dir.join(name);
        std::fs::write(&p, json.to_string()).unwrap();
        p
    };
    let images_json = serde_json::json!([
        {"id": 7, "file_name": "elsewhere/a.png"},
        {"id": 9, "file_name": b.display().to_string()},
        {"id": 11, "file_name": "not-given.png"},
    ]);
    let boxes = write(
        "boxes.json",
        serde_json::json!({
            "images": images_json,
            "annotations": [
                {"id": 1, "image_id": 7, "bbox": [2.0, 3.0, 20.0, 10.0], "score": 0.9},
                {"id": 2, "image_id": 7, "bbox": [10.0, 12.0, 8.0, 30.0]},
                {"id": 3, "image_id": 9, "bbox": [w - 12.0, h - 9.5, 12.5, 10.0], "score": 0.8},
                {"id": 4, "image_id": 9, "bbox": [0.0, 0.0, 5.0, 5.0], "score": 0.2},
                {"id": 5, "image_id": 11, "bbox": [0.0, 0.0, 5.0, 5.0]},
            ],
        }),
    );
    let detect = |boxes: Option<&std::path::Path>, out: &str| {
        locked(|| {
            detect_command(
                &checkpoint,
                &images,
                &prompt,
                0.0,
                &dir.join(out),
                "cpu",
                boxes.map(|p| (p, 0.5)),
            )
        })
    };
    let report = detect(Some(&boxes), "det").unwrap();
    let expect: [&[[f32; 4]]; 2] = [
        &[[2.0, 3.0, 22.0, 13.0], [10.0, 12.0, 18.0, 42.0]],
        &[[w - 12.0, h - 9.5, w, h]],
    ];
    assert_eq!(report.detections.len(), 2);
    for (dets, want) in report.detections.iter().zip(expect) {
        assert_eq!(dets.len(), want.len() * names.len(), "{dets:?}");
        for given in want {
            let labels: Vec<usize> = dets
                .iter()
                .filter(|d| d.bbox.iter().zip(given).all(|(x, y)| (x - y).abs() < 1e-2))
                .map(|d| d.label)
                .collect();
            assert_eq!(
                labels.len(),
                names.len(),
                "box {given:?} is not scored against every name: {dets:?}"
            );
            assert!(labels.contains(&0) && labels.contains(&1), "{labels:?}");
        }
        assert!(
            dets.iter().all(|d| (0.0..=1.0).contains(&d.score)),
            "{dets:?}"
        );
    }

    // SAM's mask of each box comes with its detections, at the image's size, in the JSON too.
    for (dets, s) in report.detections.iter().zip(&samples) {
        for d in dets {
            let m = d
                .mask
                .as_ref()
                .expect("a RegionSpot detection carries its mask");
            assert_eq!(m.size, [s.height as usize, s.width as usize]);
            assert_eq!(
                m.counts.iter().map(|&c| c as usize).sum::<usize>(),
                m.size[0] * m.size[1]
            );
            let twin = dets
                .iter()
                .find(|o| o.bbox == d.bbox && o.label != d.label)
                .unwrap();
            assert_eq!(twin.mask.as_ref(), Some(m), "one box, one mask");
        }
    }
    let written: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&report.json).unwrap()).unwrap();
    for a in written["annotations"].as_array().unwrap() {
        let size = &a["segmentation"]["size"];
        let total: u64 = a["segmentation"]["counts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c.as_u64().unwrap())
            .sum();
        assert_eq!(
            total,
            size[0].as_u64().unwrap() * size[1].as_u64().unwrap(),
            "{a}"
        );
    }
    // A box's detector score multiplies its class scores: the same boxes without scores.
    let mut plain =
        serde_json::from_str::<serde_json::Value>(&std::fs::read_to_string(&boxes).unwrap())
            .unwrap();
    for a in plain["annotations"].as_array_mut().unwrap() {
        a.as_object_mut().unwrap().remove("score");
    }
    plain["annotations"]
        .as_array_mut()
        .unwrap()
        .retain(|a| a["id"] != 4);
    let plain = write("plain.json", plain);
    let unscored = detect(Some(&plain), "det-plain").unwrap();
    for (scored, bare) in report.detections.iter().zip(&unscored.detections) {
        assert_eq!(scored.len(), bare.len());
        for d in scored {
            let b = bare
                .iter()
                .find(|b| b.bbox == d.bbox && b.label == d.label)
                .unwrap();
            let factor = if (d.bbox[0] - 2.0).abs() < 1e-2 {
                0.9
            } else if (d.bbox[0] - 10.0).abs() < 1e-2 {
                1.0
            } else {
                0.8
            };
            assert!((d.score - b.score * factor).abs() < 1e-5, "{d:?} vs {b:?}");
        }
    }

    let err = detect(None, "det-none").unwrap_err().to_string();
    assert!(err.contains("--boxes"), "{err}");
    let bad_json = dir.join("bad.json");
    std::fs::write(&bad_json, "{\"images\": [").unwrap();
    assert!(matches!(
        detect(Some(&bad_json), "x"),
        Err(DetError::Json { .. })
    ));
    let outside = write(
        "outside.json",
        serde_json::json!({
            "images": images_json,
            "annotations": [{"id": 12, "image_id": 9, "bbox": [w - 5.0, 0.0, 10.0, 5.0]}],
        }),
    );
    match detect(Some(&outside), "x") {
        Err(DetError::Data {
            kind: DataFault::InvalidBox,
            msg,
            ..
        }) => assert!(msg.contains("outside"), "{msg}"),
        other => panic!("{other:?}"),
    }
    let orphan = write(
        "orphan.json",
        serde_json::json!({
            "images": images_json,
            "annotations": [{"id": 13, "image_id": 99, "bbox": [0.0, 0.0, 5.0, 5.0]}],
        }),
    );
    assert!(matches!(
        detect(Some(&orphan), "x"),
        Err(DetError::Data {
            kind: DataFault::UnknownImage,
            ..
        })
    ));
    assert!(
        !dir.join("x").exists(),
        "a refused call wrote its output folder"
    );
}

/// `recognizer: "pooled_clip"` scores the given boxes with CLIP's pooled feature map alone: a
/// model whose module is wrecked (projector zeroed) gives the same detections, while with the
/// module recognizer it gives different ones.
#[test]
fn regionspot_pooled_clip_baseline_ignores_the_module() {
    use burn::module::Param;
    use burn::prelude::*;
    use detclip_models::regionspot::{RegionSpot, RegionSpotHead};
    use detclip_train::evaluate::{EvalSet, predict};
    use detclip_train::recipes::regionspot::Recognizer;
    type B = burn::backend::NdArray;

    let device = Default::default();
    let mut recipe = RegionSpotRecipe::tiny();
    let model: RegionSpot<B> = locked(|| {
        let m = init_model::<_, burn::backend::Autodiff<B>>(&recipe, &device).unwrap();
        recipe.prepare(m, &device).unwrap().valid()
    });
    let [d, e] = model.head.projector.weight.dims();
    let wrecked = RegionSpot {
        head: RegionSpotHead {
            projector: burn::nn::Linear {
                weight: Param::from_tensor(Tensor::zeros([d, e], &device)),
                bias: Some(Param::from_tensor(Tensor::ones([e], &device))),
            },
            ..model.head.clone()
        },
        ..model.clone()
    };
    let set = EvalSet::of(&recipe).unwrap().unwrap();
    let samples = &set.samples[..4];
    let run = |recipe: &RegionSpotRecipe, m: &RegionSpot<B>| {
        predict(recipe, &(), m, samples, &set.vocabulary, 0.0, 2, &device).unwrap()
    };
    let key = |dets: Vec<Vec<detclip_train::recipe::Detected>>| -> Vec<(usize, [u32; 4], u32)> {
        dets.iter()
            .flatten()
            .map(|x| (x.label, x.bbox.map(f32::to_bits), x.score.to_bits()))
            .collect()
    };
    assert_ne!(
        key(run(&recipe, &model)),
        key(run(&recipe, &wrecked)),
        "the module recognizer ignores the module"
    );
    recipe.recognizer = Recognizer::PooledClip;
    let (a, b) = (run(&recipe, &model), run(&recipe, &wrecked));
    assert!(a.iter().any(|d| !d.is_empty()), "no detections");
    assert_eq!(key(a), key(b), "the pooled-CLIP recognizer read the module");
}
