//! Test support shared by the test suites of every detclip crate: backend selection from
//! `DETCLIP_BACKEND`, the [`backend_test!`](crate::backend_test) macro, safetensors fixtures,
//! tolerance checks and the location of `../shared/data`.
//!
//! Each suite keeps a two-line `harness.rs` that re-exports this module and says where its own
//! fixtures are.

use crate::backend::{BackendTask, DeviceSpec, run_on};
use burn::prelude::*;
use burn::tensor::TensorData;
use safetensors::{Dtype, SafeTensors};

/// The backend the tests run on, from `DETCLIP_BACKEND` (default `cpu`).
pub fn spec() -> DeviceSpec {
    let s = std::env::var("DETCLIP_BACKEND").unwrap_or_else(|_| "cpu".into());
    s.parse().unwrap_or_else(|e| panic!("DETCLIP_BACKEND: {e}"))
}

/// Runs a test body on the selected backend. A backend that is asked for but not compiled in
/// (or has no device) fails the test: it is never skipped silently.
pub fn run<T: BackendTask<Output = ()>>(task: T) {
    run_on(spec(), task).unwrap_or_else(|e| panic!("cannot run on the selected backend: {e}"));
}

/// Defines a `#[test]` whose body is generic over the backend `B` (an autodiff backend with
/// the detclip extensions) and receives `device: &B::Device`.
#[macro_export]
macro_rules! backend_test {
    ($(#[$m:meta])* fn $name:ident<$B:ident>($dev:ident) $body:block) => {
        $(#[$m])*
        #[test]
        fn $name() {
            struct Task;
            impl $crate::backend::BackendTask for Task {
                type Output = ();
                fn run<$B: $crate::ext::DetclipAutodiffBackend>(self, device: $B::Device) {
                    let $dev = &device;
                    $body
                }
            }
            $crate::testing::run(Task);
        }
    };
}

/// A safetensors fixture file from `tests/fixtures/`.
pub struct Fixture {
    name: String,
    bytes: Vec<u8>,
}

impl Fixture {
    /// Reads fixture `name` from the directory `dir` (a suite's `tests/fixtures`).
    pub fn load(dir: impl AsRef<std::path::Path>, name: &str) -> Self {
        let path = dir.as_ref().join(name);
        let bytes = std::fs::read(&path).unwrap_or_else(|e| {
            panic!(
                "fixture {} is missing ({e}); run scripts/fixtures/*.py",
                path.display()
            )
        });
        Self {
            name: name.into(),
            bytes,
        }
    }

    fn view(&self, key: &str) -> (Dtype, Vec<usize>, Vec<u8>) {
        let st = SafeTensors::deserialize(&self.bytes).expect("valid safetensors");
        let t = st
            .tensor(key)
            .unwrap_or_else(|_| panic!("{}: no tensor `{key}`", self.name));
        (t.dtype(), t.shape().to_vec(), t.data().to_vec())
    }

    /// The shape of tensor `key`.
    pub fn shape(&self, key: &str) -> Vec<usize> {
        self.view(key).1
    }

    /// Tensor `key` as f32 values (it must be stored as f32).
    pub fn f32s(&self, key: &str) -> Vec<f32> {
        let (dtype, _, data) = self.view(key);
        assert_eq!(dtype, Dtype::F32, "{}: `{key}` is not f32", self.name);
        data.chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()
    }

    /// Tensor `key` as i64 values (it must be stored as i64).
    pub fn i64s(&self, key: &str) -> Vec<i64> {
        let (dtype, _, data) = self.view(key);
        assert_eq!(dtype, Dtype::I64, "{}: `{key}` is not i64", self.name);
        data.chunks_exact(8)
            .map(|b| i64::from_le_bytes(b.try_into().unwrap()))
            .collect()
    }

    /// Tensor `key` on `device` (f32, rank `D`).
    pub fn tensor<B: Backend, const D: usize>(
        &self,
        key: &str,
        device: &B::Device,
    ) -> Tensor<B, D> {
        let shape = self.shape(key);
        assert_eq!(
            shape.len(),
            D,
            "{}: `{key}` has rank {}",
            self.name,
            shape.len()
        );
        Tensor::from_data(TensorData::new(self.f32s(key), shape), device)
    }
}

/// A float tensor's values as f32, row-major.
pub fn to_vec<B: Backend, const D: usize>(t: Tensor<B, D>) -> Vec<f32> {
    t.into_data().convert::<f32>().to_vec().unwrap()
}

/// An int tensor's values as i64.
pub fn to_i64<B: Backend>(t: Tensor<B, 1, Int>) -> Vec<i64> {
    t.into_data().convert::<i64>().to_vec().unwrap()
}

/// Asserts `|a − e| ≤ atol + rtol·|e|` elementwise (NaN matches NaN only).
pub fn assert_close(what: &str, actual: &[f32], expected: &[f32], atol: f32, rtol: f32) {
    assert_eq!(
        actual.len(),
        expected.len(),
        "{what}: length {} vs {}",
        actual.len(),
        expected.len()
    );
    for (i, (&a, &e)) in actual.iter().zip(expected).enumerate() {
        if a.is_nan() && e.is_nan() {
            continue;
        }
        let err = (a - e).abs();
        assert!(
            err <= atol + rtol * e.abs(),
            "{what}: element {i}: got {a}, expected {e} (|diff| {err} > {atol} + {rtol}·|e|)"
        );
    }
}

/// Max absolute difference, printed in the parity notes.
pub fn max_abs_diff(actual: &[f32], expected: &[f32]) -> f32 {
    actual
        .iter()
        .zip(expected)
        .map(|(a, e)| (a - e).abs())
        .fold(0.0, f32::max)
}

/// `../shared/data` beside the repository (override with `DETCLIP_SHARED_DATA`), or `None`
/// with a clear message on stderr when it is absent: tests that read real data then return
/// early and say so, they never pass by pretending.
pub fn shared_data(test: &str) -> Option<std::path::PathBuf> {
    // Every crate sits one level below the repository root, so detclip-core's manifest
    // directory locates `../shared` for all of them.
    let dir = std::env::var_os("DETCLIP_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data")
        });
    if dir.join("README.md").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "{test}: SKIPPED, shared data not found at {} (set DETCLIP_SHARED_DATA)",
            dir.display()
        );
        None
    }
}

/// `../shared/models/<name>` beside the repository (override the folder with
/// `DETCLIP_SHARED_MODELS`), or `None` with a clear message on stderr when it is absent: tests
/// that read real weights then return early and say so.
pub fn shared_model(test: &str, name: &str) -> Option<std::path::PathBuf> {
    let dir = std::env::var_os("DETCLIP_SHARED_MODELS")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| {
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/models")
        })
        .join(name);
    if dir.join("config.json").is_file() {
        Some(dir)
    } else {
        eprintln!(
            "{test}: SKIPPED, model folder not found at {} (set DETCLIP_SHARED_MODELS)",
            dir.display()
        );
        None
    }
}
