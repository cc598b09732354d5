//! Checkpoint import: every file format, key maps, and one clear error listing every missing,
//! unexpected and mis-shaped key.

use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{BatchNorm, BatchNormConfig, LayerNorm, LayerNormConfig, Linear, LinearConfig};
use burn::prelude::*;
use detclip_core::DetError;
use detclip_models::import::{KeyMap, LoadOptions, load_checkpoint};

use crate::harness::{Fixture, assert_close, fixtures, to_vec};

#[derive(Module, Debug)]
struct Tiny<B: Backend> {
    fc: Linear<B>,
    norm: LayerNorm<B>,
    conv: Conv2d<B>,
    bn: BatchNorm<B>,
}

fn tiny<B: Backend>(device: &B::Device) -> Tiny<B> {
    Tiny {
        fc: LinearConfig::new(4, 3).init(device),
        norm: LayerNormConfig::new(3).init(device),
        conv: Conv2dConfig::new([2, 3], [3, 3]).init(device),
        bn: BatchNormConfig::new(3).init(device),
    }
}

fn keys() -> KeyMap {
    KeyMap::new()
        .rename(r"^encoder\.", "")
        .ignore(r"\.num_batches_tracked$")
}

fn assert_loaded<B: Backend>(m: &Tiny<B>, what: &str) {
    let e = Fixture::load(fixtures(), "import_tiny_expected.safetensors");
    let check = |name: &str, got: Vec<f32>| {
        assert_close(&format!("{what} {name}"), &got, &e.f32s(name), 0.0, 0.0)
    };
    check("fc.weight", to_vec(m.fc.weight.val()));
    check("fc.bias", to_vec(m.fc.bias.as_ref().unwrap().val()));
    check("norm.weight", to_vec(m.norm.gamma.val()));
    check("norm.bias", to_vec(m.norm.beta.as_ref().unwrap().val()));
    check("conv.weight", to_vec(m.conv.weight.val()));
    check("conv.bias", to_vec(m.conv.bias.as_ref().unwrap().val()));
    check("bn.weight", to_vec(m.bn.gamma.val()));
    check("bn.bias", to_vec(m.bn.beta.val()));
    check("bn.running_mean", to_vec(m.bn.running_mean.value()));
    check("bn.running_var", to_vec(m.bn.running_var.value()));
}

backend_test! {
    fn import_reads_zip_legacy_nested_and_safetensors<B>(device) {
        let cases = [
            ("import_tiny_zip.pth", None),
            ("import_tiny_legacy.pth", None),
            ("import_tiny_nested.pth", Some("model")),
            ("import_tiny.safetensors", None),
            // Expecting `model`: a file with `state_dict`, or a bare state dict, loads too.
            ("import_tiny_state_dict.pth", Some("model")),
            ("import_tiny_zip.pth", Some("model")),
        ];
        for (file, top) in cases {
            let mut m = tiny::<B>(device);
            let options = LoadOptions { allow_partial: false, top_level_key: top.map(String::from) };
            let report = load_checkpoint(&mut m, &fixtures().join(file), &keys(), &options)
                .unwrap_or_else(|e| panic!("{file}: {e}"));
            assert_eq!(report.applied.len(), 10, "{file}: {report:?}");
            assert_loaded(&m, file);
        }
    }
}

backend_test! {
    fn import_names_the_top_level_keys_a_file_has<B>(device) {
        let mut m = tiny::<B>(device);
        let options = LoadOptions { allow_partial: false, top_level_key: Some("model".into()) };
        let err = load_checkpoint(&mut m, &fixtures().join("import_tiny_other_key.pth"), &keys(), &options)
            .unwrap_err()
            .to_string();
        for needle in ["model", "weights", "epoch"] {
            assert!(err.contains(needle), "`{needle}` not in: {err}");
        }
    }
}

backend_test! {
    fn import_lists_every_bad_key_in_one_error<B>(device) {
        let path = fixtures().join("import_tiny_bad.pth");
        let mut m = tiny::<B>(device);
        let err = load_checkpoint(&mut m, &path, &keys(), &LoadOptions::default()).unwrap_err();
        let DetError::Checkpoint { file, why } = &err else { panic!("wrong error kind: {err}") };
        assert!(file.ends_with("import_tiny_bad.pth"));
        for needle in ["fc.weight", "norm.beta", "head.weight", "missing", "unexpected", "partial"] {
            assert!(why.contains(needle), "`{needle}` not in: {why}");
        }
        // A partial load is an explicit opt-in: missing and unexpected keys are reported, but
        // a mis-shaped key still fails.
        let partial = LoadOptions { allow_partial: true, top_level_key: None };
        let err = load_checkpoint(&mut m, &path, &keys(), &partial).unwrap_err();
        assert!(err.to_string().contains("fc.weight"), "{err}");
        let good = fixtures().join("import_tiny_zip.pth");
        let only_fc = KeyMap::new().rename(r"^encoder\.", "").ignore(r"^(norm|conv|bn)\.");
        let mut m = tiny::<B>(device);
        let report = load_checkpoint(&mut m, &good, &only_fc, &partial).unwrap();
        assert!(report.unexpected.is_empty(), "{report:?}");
        assert_eq!(report.applied.len(), 10);
    }
}

backend_test! {
    fn import_refuses_missing_and_corrupt_files<B>(device) {
        let mut m = tiny::<B>(device);
        let missing = load_checkpoint(&mut m, &fixtures().join("no_such.pth"), &keys(), &LoadOptions::default());
        assert!(matches!(missing, Err(DetError::Checkpoint { .. })), "{missing:?}");
        // A truncated zip checkpoint.
        let bytes = std::fs::read(fixtures().join("import_tiny_zip.pth")).unwrap();
        let dir = std::env::temp_dir().join(format!("detclip-import-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let cut = dir.join("truncated.pth");
        std::fs::write(&cut, &bytes[..bytes.len() / 2]).unwrap();
        let err = load_checkpoint(&mut m, &cut, &keys(), &LoadOptions::default());
        assert!(matches!(err, Err(DetError::Checkpoint { .. })), "{err:?}");
        let bad_rule = KeyMap::new().rename("(", "");
        let err = load_checkpoint(&mut m, &fixtures().join("import_tiny_zip.pth"), &bad_rule, &LoadOptions::default());
        assert!(matches!(err, Err(DetError::Checkpoint { .. })), "{err:?}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
