//! Evaluation sets read from COCO-format files: the synthetic test split written out as a
//! COCO (and an LVIS-style) json with its own ids scores exactly as the synthetic set does,
//! held-out categories are named or LVIS-rare (and an LVIS file is also scored federated), bad
//! sets are refused, and training evaluates such a set periodically into the log and
//! `eval.json`. The open-vocabulary splits (`splits`: COCO 48/17, LVIS rare-as-novel) keep
//! only their base boxes in training and score the split's categories.

use std::path::{Path, PathBuf};

use detclip_core::data::ImageSource;
use detclip_train::data::{
    CocoEvalConfig, DataConfig, DatasetConfig, EvalConfig, Source, SyntheticConfig,
};
use detclip_train::evaluate::{EvalSet, evaluate_set};
use detclip_train::learner::{RunFiles, RunOptions, read_log, train};
use detclip_train::recipe::Detected;
use detclip_train::recipes::ShapesRecipe;
use detclip_train::splits::{COCO_BASE_48, COCO_NOVEL_17, coco_48_17};
use serde_json::{Value, json};

use crate::harness::{init_lock, scratch};

/// The tiny preset's synthetic evaluation world, with a few more images.
fn world() -> SyntheticConfig {
    let mut w = ShapesRecipe::tiny()
        .data
        .eval
        .as_ref()
        .and_then(|e| e.synthetic())
        .cloned()
        .unwrap();
    w.images = 6;
    w
}

/// Category id of vocabulary entry `v` in the written file (not `v + 1`, to test the mapping).
fn category_id(v: usize) -> i64 {
    100 + 3 * v as i64
}

/// Image id of sample `i` in the written file.
fn image_id(i: usize) -> i64 {
    1000 + 7 * i as i64
}

/// Writes `set` (a synthetic set) as a COCO instances json and PNG images under `dir`. Names
/// are written with `_` for spaces, as LVIS spells them; when `lvis` is set, `frequency` is
/// `"r"` for held-out categories and `"f"` for the others, and images have (empty) negative
/// and not-exhaustive lists.
fn write_coco(set: &EvalSet, dir: &Path, lvis: bool) -> (PathBuf, PathBuf) {
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).unwrap();
    let mut images = Vec::new();
    let mut annotations = Vec::new();
    for (i, s) in set.samples.iter().enumerate() {
        let ImageSource::Memory(pixels) = &s.image else {
            panic!("synthetic samples are in memory")
        };
        let file = format!("img{i}.png");
        pixels.save(images_dir.join(&file)).unwrap();
        let mut image =
            json!({"id": image_id(i), "file_name": file, "width": s.width, "height": s.height});
        if lvis {
            image["neg_category_ids"] = json!([]);
            image["not_exhaustive_category_ids"] = json!([]);
        }
        images.push(image);
        for inst in &s.instances {
            for &c in &inst.concepts {
                let v = set
                    .vocabulary
                    .iter()
                    .position(|n| n == &s.concepts[c].name)
                    .unwrap();
                let [x1, y1, x2, y2] = inst.bbox.map(f64::from);
                annotations.push(json!({
                    "id": annotations.len() + 1,
                    "image_id": image_id(i),
                    "category_id": category_id(v),
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "area": (x2 - x1) * (y2 - y1),
                    "iscrowd": inst.crowd as u8,
                }));
            }
        }
    }
    let categories: Vec<Value> = set
        .vocabulary
        .iter()
        .enumerate()
        .map(|(v, name)| {
            let mut c = json!({"id": category_id(v), "name": name.replace(' ', "_")});
            if lvis {
                c["frequency"] = if set.held_out.contains(name) {
                    "r"
                } else {
                    "f"
                }
                .into();
            }
            c
        })
        .collect();
    let file = dir.join("instances.json");
    let doc = json!({"images": images, "annotations": annotations, "categories": categories});
    std::fs::write(&file, doc.to_string()).unwrap();
    (file, images_dir)
}

/// Detections with some jitter, some wrong labels and distinct scores: AP strictly between 0
/// and 1, and no score ties (whose order would depend on ids).
fn fake_detections(set: &EvalSet) -> Vec<Vec<Detected>> {
    let mut k = 0;
    set.samples
        .iter()
        .map(|s| {
            let mut out = Vec::new();
            for inst in &s.instances {
                let name = &s.concepts[inst.concepts[0]].name;
                let v = set.vocabulary.iter().position(|n| n == name).unwrap();
                k += 1;
                let shift = (k % 5) as f32 * 1.5;
                let [x1, y1, x2, y2] = inst.bbox;
                let label = if k % 4 == 0 {
                    (v + 1) % set.vocabulary.len()
                } else {
                    v
                };
                out.push(Detected {
                    bbox: [x1 + shift, y1, x2 + shift, y2 - shift],
                    label,
                    score: 0.9 - 0.013 * k as f32,
                    mask: None,
                });
            }
            out
        })
        .collect()
}

fn coco_config(file: PathBuf, images: PathBuf, held_out: Vec<String>) -> CocoEvalConfig {
    CocoEvalConfig {
        annotations: file,
        images,
        held_out,
        held_out_rare: false,
        max_images: None,
        categories: None,
    }
}

#[test]
fn a_coco_file_scores_as_the_synthetic_set_it_was_written_from() {
    let synthetic = EvalSet::synthetic(&world()).unwrap();
    assert!(!synthetic.held_out.is_empty());
    let dets = fake_detections(&synthetic);
    let expected = evaluate_set(&synthetic, &dets).unwrap();
    let held = expected.held_out.expect("the world holds concepts out");
    assert!(
        expected.all.AP > 0.05 && expected.all.AP < 0.99,
        "{expected:?}"
    );
    assert!(expected.seen.AP > 0.0 && held.AP > 0.0, "{expected:?}");

    let dir = scratch("coco-eval-set");
    let (file, images) = write_coco(&synthetic, &dir, false);
    // Held-out names as the file spells them (`_`) or as the vocabulary does (space).
    let mut held_out = synthetic.held_out.clone();
    held_out[0] = held_out[0].replace(' ', "_");
    let set = EvalSet::coco(&coco_config(file, images, held_out)).unwrap();
    assert_eq!(set.vocabulary, synthetic.vocabulary);
    assert_eq!(set.held_out, synthetic.held_out);
    assert_eq!(set.samples.len(), synthetic.samples.len());
    let truth = set.truth.as_ref().unwrap();
    assert_eq!(truth.image_ids[1], image_id(1));
    assert_eq!(truth.category_ids[2], category_id(2));
    assert_eq!(evaluate_set(&set, &dets).unwrap(), expected);
}

#[test]
fn lvis_rare_categories_are_the_held_out_ones() {
    let synthetic = EvalSet::synthetic(&world()).unwrap();
    let dets = fake_detections(&synthetic);
    let dir = scratch("lvis-eval-set");
    let (file, images) = write_coco(&synthetic, &dir, true);
    let mut config = coco_config(file.clone(), images.clone(), Vec::new());
    config.held_out_rare = true;
    let set = EvalSet::coco(&config).unwrap();
    assert_eq!(set.held_out, synthetic.held_out);
    let (file_report, expected) = (
        evaluate_set(&set, &dets).unwrap(),
        evaluate_set(&synthetic, &dets).unwrap(),
    );
    assert_eq!(
        (file_report.all, file_report.seen, file_report.held_out),
        (expected.all, expected.seen, expected.held_out)
    );
    // The file has frequencies, so the federated LVIS evaluation runs too. With no negative
    // image lists, a category's detections count only on images that have it: never more
    // false positives than the COCO score of the same categories.
    assert!(expected.lvis.is_none());
    let lvis = file_report.lvis.expect("an LVIS file is scored federated");
    let (held, seen) = (expected.held_out.unwrap(), expected.seen);
    assert!(
        lvis.APr > 0.0 && lvis.APr >= held.AP - 1e-9,
        "{lvis:?} vs {held:?}"
    );
    assert!(
        lvis.APf > 0.0 && lvis.APf >= seen.AP - 1e-9,
        "{lvis:?} vs {seen:?}"
    );
    assert_eq!(lvis.APc, -1.0, "no category is common");
    // Without frequencies there is nothing rare: a clear error, not an empty held-out set.
    let (file, images) = write_coco(&synthetic, &dir.join("coco"), false);
    let mut config = coco_config(file, images, Vec::new());
    config.held_out_rare = true;
    let err = EvalSet::coco(&config).unwrap_err().to_string();
    assert!(
        err.contains("held_out_rare needs LVIS category frequencies"),
        "{err}"
    );
}

#[test]
fn max_images_evaluates_the_first_images_only() {
    let synthetic = EvalSet::synthetic(&world()).unwrap();
    let dir = scratch("coco-eval-max-images");
    let (file, images) = write_coco(&synthetic, &dir, false);
    let mut config = coco_config(file, images, synthetic.held_out.clone());
    config.max_images = Some(2);
    let set = EvalSet::coco(&config).unwrap();
    assert_eq!(set.samples.len(), 2);
    let truth = set.truth.as_ref().unwrap();
    assert_eq!(truth.ground_truth.images.len(), 2);
    assert!(
        truth
            .ground_truth
            .annotations
            .iter()
            .all(|a| a.image_id <= image_id(1))
    );
    // The same two images as a synthetic set score the same.
    let mut two = synthetic.clone();
    two.samples.truncate(2);
    let dets = fake_detections(&two);
    assert_eq!(
        evaluate_set(&set, &dets).unwrap(),
        evaluate_set(&two, &dets).unwrap()
    );
}

#[test]
fn a_bad_coco_eval_set_is_refused_with_a_clear_message() {
    let synthetic = EvalSet::synthetic(&world()).unwrap();
    let dir = scratch("coco-eval-bad");
    let (file, images) = write_coco(&synthetic, &dir, false);
    let err = EvalSet::coco(&coco_config(
        file.clone(),
        images.clone(),
        vec!["purple cow".into()],
    ))
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("held-out categories not in the file") && err.contains("purple cow"),
        "{err}"
    );
    let err = EvalSet::coco(&coco_config(dir.join("nope.json"), images, Vec::new()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("nope.json") && err.contains("annotation file does not exist"),
        "{err}"
    );
    let err = EvalSet::coco(&coco_config(file, dir.join("no-images"), Vec::new()))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("no-images") && err.contains("image folder does not exist"),
        "{err}"
    );
}

#[test]
fn eval_configs_read_tagged_and_legacy_json() {
    let w = world();
    let legacy =
        json!({"sources": [], "eval": serde_json::to_value(&w).unwrap(), "size_divisor": 32});
    let data: DataConfig = serde_json::from_value(legacy).unwrap();
    assert_eq!(data.eval, Some(EvalConfig::Synthetic(w.clone())));
    // Written tagged, read back the same.
    let text = serde_json::to_string(&data).unwrap();
    assert!(text.contains("\"eval\":{\"synthetic\":{"), "{text}");
    assert_eq!(serde_json::from_str::<DataConfig>(&text).unwrap(), data);
    let coco = json!({"coco": {"annotations": "a.json", "images": "img", "held_out": ["cat"]}});
    match serde_json::from_value::<EvalConfig>(coco).unwrap() {
        EvalConfig::Coco(c) => {
            assert_eq!(c.held_out, ["cat"]);
            assert!(!c.held_out_rare && c.max_images.is_none());
        }
        other => panic!("{other:?}"),
    }
    let typo = json!({"coco": {"annotations": "a.json", "images": "img", "held_outs": []}});
    let err = serde_json::from_value::<EvalConfig>(typo)
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `held_outs`"), "{err}");
    let neither = json!({"seed": 1});
    let err = serde_json::from_value::<EvalConfig>(neither)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("{\"synthetic\": {…}} or {\"coco\": {…}}") && err.contains("missing field"),
        "{err}"
    );
}

backend_test! {
    fn training_evaluates_a_coco_set_periodically<B>(device) {
        let synthetic = EvalSet::synthetic(&world()).unwrap();
        let dir = scratch("coco-eval-train");
        let (file, images) = write_coco(&synthetic, &dir, false);
        let mut recipe = ShapesRecipe::tiny();
        recipe.data.eval = Some(EvalConfig::Coco(coco_config(file, images, synthetic.held_out.clone())));
        recipe.learner.steps = 4;
        recipe.learner.eval_every = 2;
        let out = dir.join("run");
        let mut options = RunOptions::new(&out);
        options.progress = false;
        let run = {
            let _g = init_lock();
            train::<_, B>(&recipe, device, &options).unwrap()
        };
        let report = run.eval.expect("the final evaluation");
        assert!(report.held_out.is_some());
        // Steps 1 and 3 (after 2 and 4 optimiser steps) are evaluated, into the log...
        let text = std::fs::read_to_string(RunFiles::of(&out).log).unwrap();
        let evals: Vec<Value> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v.get("eval").is_some())
            .collect();
        assert_eq!(evals.iter().map(|v| v["step"].as_u64().unwrap()).collect::<Vec<_>>(), [1, 3]);
        assert!(evals.iter().all(|v| v["eval"]["held_out"]["AP"].is_number() && v["eval"]["seen"]["AP"].is_number()));
        // ...and the last one into eval.json; the step lines are still read as the log.
        let json: Value = serde_json::from_str(&std::fs::read_to_string(RunFiles::of(&out).eval).unwrap()).unwrap();
        assert_eq!(json["all"]["AP"].as_f64().unwrap(), report.all.AP);
        assert_eq!(read_log(&RunFiles::of(&out).log).unwrap().len(), 4);
    }
}

/// The split's names against the shared COCO category list: 48 + 17 distinct COCO categories.
#[test]
fn coco_48_17_names_are_coco_categories() {
    let Some(data) = crate::harness::shared_data("coco_48_17_names_are_coco_categories") else {
        return;
    };
    let list: Vec<Value> = serde_json::from_str(
        &std::fs::read_to_string(data.join("vocab/coco_categories.json")).unwrap(),
    )
    .unwrap();
    let coco: Vec<&str> = list.iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(coco.len(), 80);
    let mut names: Vec<&str> = COCO_BASE_48.iter().chain(&COCO_NOVEL_17).copied().collect();
    assert!(names.iter().all(|n| coco.contains(n)), "{names:?}");
    names.sort();
    names.dedup();
    assert_eq!(names.len(), 65, "base and novel overlap");
}

/// COCO 48/17 on the shared COCO subset: training keeps every image but only the base boxes;
/// evaluation scores the 65 categories with the 17 novel ones held out, and perfect
/// detections of them score AP 1 (the 15 other categories are not evaluated at all).
#[test]
fn coco_48_17_trains_on_base_boxes_and_scores_65_categories() {
    let Some(data) = crate::harness::shared_data("coco_48_17_trains_on_base_boxes") else {
        return;
    };
    let ann = data.join("annotations/coco2017_subset/instances.json");
    let img = data.join("images/coco2017");
    let split = coco_48_17((&ann, &img), (&ann, &img));
    let file: Value = serde_json::from_str(&std::fs::read_to_string(&ann).unwrap()).unwrap();
    let name_of = |id: &Value| {
        file["categories"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| &c["id"] == id)
            .map(|c| c["name"].as_str().unwrap().to_string())
            .unwrap()
    };
    let base_boxes = file["annotations"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| COCO_BASE_48.contains(&name_of(&a["category_id"]).as_str()))
        .count();

    let source = Source::load(&split.sources[0]).unwrap();
    assert_eq!(
        source.samples.len(),
        file["images"].as_array().unwrap().len(),
        "images dropped"
    );
    let boxes: usize = source.samples.iter().map(|s| s.instances.len()).sum();
    assert_eq!(boxes, base_boxes);
    assert!(
        source
            .vocabulary
            .iter()
            .all(|n| COCO_BASE_48.contains(&n.as_str())),
        "{:?}",
        source.vocabulary
    );
    assert!(
        source
            .samples
            .iter()
            .all(|s| s.instances.iter().all(|i| !i.concepts.is_empty()))
    );

    let set = EvalSet::from_config(split.eval.as_ref().unwrap()).unwrap();
    assert_eq!(set.vocabulary.len(), 65);
    let mut held = set.held_out.clone();
    held.sort();
    let mut novel: Vec<String> = COCO_NOVEL_17.iter().map(|s| s.to_string()).collect();
    novel.sort();
    assert_eq!(held, novel);
    let truth = set.truth.as_ref().unwrap();
    assert!(
        truth
            .ground_truth
            .annotations
            .iter()
            .all(|a| truth.category_ids.contains(&a.category_id))
    );
    let mut k = 0;
    let perfect: Vec<Vec<Detected>> = set
        .samples
        .iter()
        .map(|s| {
            s.instances
                .iter()
                .filter_map(|inst| {
                    let label = set
                        .vocabulary
                        .iter()
                        .position(|n| *n == s.concepts[inst.concepts[0]].name)?;
                    k += 1;
                    Some(Detected {
                        bbox: inst.bbox,
                        label,
                        score: 1.0 - 1e-4 * k as f32,
                        mask: None,
                    })
                })
                .collect()
        })
        .collect();
    let report = evaluate_set(&set, &perfect).unwrap();
    let held_ap = report.held_out.unwrap().AP;
    assert!(
        report.all.AP > 0.999 && report.seen.AP > 0.999 && held_ap > 0.999,
        "{report:?}"
    );
    assert!(report.lvis.is_none(), "a COCO file is not scored federated");
}

#[test]
fn split_categories_are_checked_and_rare_boxes_dropped() {
    // An LVIS-style file: the synthetic set's held-out categories are the rare ones.
    let synthetic = EvalSet::synthetic(&world()).unwrap();
    let dir = scratch("split-rare");
    let (file, images) = write_coco(&synthetic, &dir, true);
    let mut source = ShapesRecipe::tiny().data.sources[0].clone();
    let coco = |categories: Option<Vec<String>>, drop_rare: bool| DatasetConfig::Coco {
        annotations: file.clone(),
        images: images.clone(),
        categories,
        drop_rare,
    };
    source.dataset = coco(None, false);
    let all = Source::load(&source).unwrap();
    source.dataset = coco(None, true);
    let base = Source::load(&source).unwrap();
    let count = |s: &Source, held: bool| -> usize {
        s.samples
            .iter()
            .flat_map(|x| {
                x.instances
                    .iter()
                    .map(move |i| &x.concepts[i.concepts[0]].name)
            })
            .filter(|n| synthetic.held_out.contains(n) == held)
            .count()
    };
    assert!(count(&all, true) > 0 && count(&all, false) > 0);
    assert_eq!(count(&base, true), 0, "rare boxes were kept");
    assert_eq!(
        count(&base, false),
        count(&all, false),
        "base boxes were dropped"
    );
    assert_eq!(base.samples.len(), all.samples.len());

    // A name the file does not have, and drop_rare on a file without frequencies.
    source.dataset = coco(
        Some(vec![synthetic.vocabulary[0].clone(), "unicorn".into()]),
        false,
    );
    let err = Source::load(&source).err().unwrap().to_string();
    assert!(
        err.contains("unicorn") && err.contains("not in the file"),
        "{err}"
    );
    let (plain, plain_images) = write_coco(&synthetic, &dir.join("coco"), false);
    source.dataset = DatasetConfig::Coco {
        annotations: plain,
        images: plain_images,
        categories: None,
        drop_rare: true,
    };
    let err = Source::load(&source).err().unwrap().to_string();
    assert!(
        err.contains("drop_rare needs LVIS category frequencies"),
        "{err}"
    );
    // An evaluation set whose held-out names are outside its categories.
    let mut config = coco_config(file, images, vec![synthetic.held_out[0].clone()]);
    config.categories = Some(vec![
        synthetic
            .vocabulary
            .iter()
            .find(|n| !synthetic.held_out.contains(n))
            .unwrap()
            .clone(),
    ]);
    let err = EvalSet::coco(&config).unwrap_err().to_string();
    assert!(err.contains("held-out categories not in the file"), "{err}");
}
