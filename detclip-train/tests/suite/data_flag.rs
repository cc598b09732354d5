//! `detclip train --data FILE`: the data block replaces the config's; a bad one (unknown field,
//! wrong type, missing path) gives one clear message, a non-zero exit code and no run folder.

use std::path::Path;
use std::process::{Command, Output};

use detclip_train::commands::AnyRecipe;
use detclip_train::data::{DataConfig, DatasetConfig};
use detclip_train::recipe::{Recipe, read_data_config};
use detclip_train::recipes::{GlipRecipe, ShapesRecipe};
use serde_json::Value;

use crate::harness::scratch;

fn detclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detclip"))
        .args(args)
        .output()
        .expect("run detclip")
}

/// The tiny preset's data block with one source's world reseeded and the eval set shrunk.
fn other_data() -> DataConfig {
    let mut data = ShapesRecipe::tiny().data;
    if let DatasetConfig::Synthetic(w) = &mut data.sources[0].dataset {
        w.seed = 77;
        w.images = 5;
    }
    data.sources.truncate(1);
    data.size_divisor = 16;
    data
}

fn write_json(path: &Path, v: &Value) {
    std::fs::write(path, serde_json::to_string_pretty(v).unwrap()).unwrap();
}

#[test]
fn the_data_block_replaces_the_configs() {
    let dir = scratch("data-flag");
    let file = dir.join("data.json");
    write_json(&file, &serde_json::to_value(other_data()).unwrap());
    let data = read_data_config(&file).unwrap();
    assert_eq!(data, other_data());
    let tiny = ShapesRecipe::tiny();
    let replaced = tiny.with_data(data.clone()).unwrap();
    assert_eq!(replaced.data, other_data());
    // Everything else is the config's.
    assert_eq!(replaced.model, tiny.model);
    assert_eq!(replaced.learner, tiny.learner);
    // Through the recipe enum, for another recipe too.
    let AnyRecipe::Glip(glip) = AnyRecipe::load("glip", None)
        .unwrap()
        .with_data(data)
        .unwrap()
    else {
        panic!("the glip recipe")
    };
    assert_eq!(glip.data, other_data());
    assert_eq!(
        serde_json::to_value(&glip.model).unwrap(),
        serde_json::to_value(GlipRecipe::synthetic().model).unwrap()
    );
}

#[test]
fn a_bad_data_file_is_refused_by_name() {
    let dir = scratch("data-flag-bad");
    let file = dir.join("data.json");
    let good = serde_json::to_value(other_data()).unwrap();

    let mut v = good.clone();
    v["sources"][0]["batch"] = 3.into();
    write_json(&file, &v);
    let err = read_data_config(&file).unwrap_err().to_string();
    assert!(
        err.contains("data.json") && err.contains("unknown field `batch`"),
        "{err}"
    );

    let mut v = good.clone();
    v["size_divisor"] = "32".into();
    write_json(&file, &v);
    let err = read_data_config(&file).unwrap_err().to_string();
    assert!(
        err.contains("data.json") && err.contains("invalid type"),
        "{err}"
    );

    let mut v = good;
    v["sources"] = Value::Array(Vec::new());
    write_json(&file, &v);
    let err = read_data_config(&file).unwrap_err().to_string();
    assert!(err.contains("at least one source"), "{err}");

    let err = read_data_config(&dir.join("absent.json"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("absent.json"), "{err}");
}

#[test]
fn the_command_refuses_a_bad_data_file_and_writes_nothing() {
    let dir = scratch("data-flag-cli");
    let out = dir.join("run");
    let out_arg = out.display().to_string();
    let file = dir.join("data.json");
    let file_arg = file.display().to_string();
    let args = |file: &str| {
        vec![
            "train", "--recipe", "shapes", "--data", file, "--device", "cpu", "--out",
        ]
        .into_iter()
        .map(String::from)
        .chain([out_arg.clone()])
        .collect::<Vec<_>>()
    };
    let run = |a: Vec<String>| detclip(&a.iter().map(String::as_str).collect::<Vec<_>>());

    // A wrong type.
    let mut v = serde_json::to_value(other_data()).unwrap();
    v["sources"][0]["weight"] = "heavy".into();
    write_json(&file, &v);
    let o = run(args(&file_arg));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("data.json") && stderr.contains("invalid type"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(!out.exists());

    // A COCO source whose annotation file does not exist.
    let mut v = serde_json::to_value(other_data()).unwrap();
    v["sources"][0]["dataset"] = serde_json::json!({
        "coco": {"annotations": dir.join("missing.json"), "images": dir}
    });
    write_json(&file, &v);
    let o = run(args(&file_arg));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("missing.json") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!out.exists());

    // An evaluation set whose image folder does not exist.
    let mut v = serde_json::to_value(other_data()).unwrap();
    v["eval"] = serde_json::json!({
        "coco": {"annotations": file, "images": dir.join("no-images")}
    });
    write_json(&file, &v);
    let o = run(args(&file_arg));
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no-images") && stderr.contains("does not exist"),
        "{stderr}"
    );
    assert!(!out.exists());
}
