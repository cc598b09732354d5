//! This suite's view of [`detclip_core::testing`], plus what the learner tests share.

#![allow(dead_code, unused_imports)]

pub use detclip_core::testing::*;

use burn::module::{Module, ModuleVisitor, Param};
use burn::prelude::*;
use std::path::PathBuf;
use std::sync::{Mutex, MutexGuard};

/// Model initialisation draws from the backend's global generator: tests that compare runs
/// hold this lock so that no other test draws in between the seed and the build.
pub fn init_lock() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|e| e.into_inner())
}

/// Runs `f` holding [`init_lock`]: every call that seeds or draws from the backend's global
/// RNG (training, building or loading a model) must, or a test that compares initial weights
/// sees another test's draws.
pub fn locked<T>(f: impl FnOnce() -> T) -> T {
    let _g = init_lock();
    f()
}

/// A fresh, empty scratch folder for one test.
pub fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("detclip-train-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch folder");
    dir
}

/// A module built under [`init_lock`] must be materialised inside it: Burn draws lazily
/// initialised parameters at first use, which would fall outside the lock, in the middle of
/// another test's seeded build.
pub use detclip_train::learner::materialised;

/// Every float of a module, in visiting order.
pub struct Collect(pub Vec<f32>);

impl<B: Backend> ModuleVisitor<B> for Collect {
    fn visit_float<const D: usize>(&mut self, p: &Param<Tensor<B, D>>) {
        self.0.extend(
            p.val()
                .into_data()
                .convert::<f32>()
                .to_vec::<f32>()
                .expect("f32 parameters"),
        );
    }
}

/// Every float of a module, in visiting order.
pub fn floats<B: Backend, M: Module<B>>(m: &M) -> Vec<f32> {
    let mut c = Collect(Vec::new());
    m.visit(&mut c);
    c.0
}

/// Run options for tests: no progress bar, no evaluation.
pub fn quiet(out: &std::path::Path) -> detclip_train::learner::RunOptions {
    let mut o = detclip_train::learner::RunOptions::new(out);
    o.progress = false;
    o.evaluate = false;
    o
}
