//! `detclip eval`: the printed numbers are the evaluator's, bad input exits with code 2.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../detclip-core/tests/fixtures/eval")
        .join(name)
}

fn detclip(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_detclip"))
        .args(args)
        .output()
        .expect("run detclip")
}

fn path(name: &str) -> String {
    fixture(name).display().to_string()
}

#[test]
fn eval_coco_json_prints_the_pycocotools_numbers() {
    let out = detclip(&[
        "eval",
        "coco",
        "--gt",
        &path("coco_synth_gt.json"),
        "--dt",
        &path("coco_synth_dt.json"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = std::fs::read_to_string(fixture("coco_synth_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    let keys = [
        "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
    ];
    for (i, key) in keys.iter().enumerate() {
        let (g, e) = (
            got[key].as_f64().unwrap(),
            expected["stats"][i].as_f64().unwrap(),
        );
        assert!((g - e).abs() <= 1e-4, "{key}: {g} vs {e}");
    }
}

#[test]
fn eval_lvis_table_has_thirteen_lines() {
    let out = detclip(&[
        "eval",
        "lvis",
        "--gt",
        &path("lvis_synth_gt.json"),
        "--dt",
        &path("lvis_synth_dt.json"),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert_eq!(text.lines().count(), 13, "{text}");
    assert!(text.contains("maxDets=300 catIds=  r] = "), "{text}");
}

/// `--fixed-ap`: Fixed AP (top K per category, no cap per image) as the reference script
/// computes it; the table says `maxDets= -1` as the lvis package prints it; K must be positive
/// and goes with `--fixed-ap`.
#[test]
fn eval_lvis_fixed_ap_prints_the_reference_numbers() {
    let (gt, dt) = (path("lvis_synth_gt.json"), path("lvis_synth_dt.json"));
    let text = std::fs::read_to_string(fixture("lvis_synth_fixed_expected.json")).unwrap();
    let expected: serde_json::Value = serde_json::from_str(&text).unwrap();
    for case in expected["cases"].as_array().unwrap() {
        let k = case["dets_per_cat"].to_string();
        let out = detclip(&[
            "eval",
            "lvis",
            "--gt",
            &gt,
            "--dt",
            &dt,
            "--fixed-ap",
            "--dets-per-cat",
            &k,
            "--json",
        ]);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let got: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        for key in ["AP", "APr", "APc", "APf"] {
            let (g, e) = (
                got[key].as_f64().unwrap(),
                case["results"][key].as_f64().unwrap(),
            );
            assert!((g - e).abs() <= 1e-12, "K={k} {key}: {g} vs {e}");
        }
    }
    let out = detclip(&["eval", "lvis", "--gt", &gt, "--dt", &dt, "--fixed-ap"]);
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("maxDets= -1 catIds=  r] = "), "{table}");
    for bad in [
        vec!["--fixed-ap", "--dets-per-cat", "0"],
        vec!["--dets-per-cat", "50"],
    ] {
        let mut args = vec!["eval", "lvis", "--gt", &gt, "--dt", &dt];
        args.extend(bad.iter().copied());
        let out = detclip(&args);
        assert_eq!(out.status.code(), Some(2), "{bad:?}");
    }
}

#[test]
fn eval_bad_input_exits_2_naming_the_file() {
    let out = detclip(&[
        "eval",
        "coco",
        "--gt",
        &path("coco_synth_gt.json"),
        "--dt",
        &path("lvis_synth_dt.json"),
    ]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("lvis_synth_dt.json: detection 0: image_id"),
        "{err}"
    );
    let out = detclip(&["eval", "odinw", "--config", "/nonexistent/list.json"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/list.json: cannot read"));
}

#[test]
fn eval_grounding_and_odinw_json() {
    let out = detclip(&[
        "eval",
        "grounding",
        "--input",
        &path("grounding_small.json"),
        "--k",
        "1,5,10",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["R@1"], 0.0);
    assert_eq!(v["R@5"], 1.0 / 3.0);
    assert_eq!(v["R@10"], 2.0 / 3.0);
    assert_eq!(v["phrases"], 3);

    let out = detclip(&[
        "eval",
        "odinw",
        "--config",
        &path("odinw_list.json"),
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let (a, b) = (
        v["datasets"]["coco_synth"]["AP"].as_f64().unwrap(),
        v["datasets"]["coco_small"]["AP"].as_f64().unwrap(),
    );
    assert!((v["mean_AP"].as_f64().unwrap() - (a + b) / 2.0).abs() < 1e-12);
}
