//! This suite's view of [`detclip_core::testing`]: everything, plus where the fixtures are.

pub use detclip_core::testing::*;

/// This package's `tests/fixtures` directory.
pub fn fixtures() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

use burn::module::{ModuleVisitor, Param};
use burn::prelude::*;

/// Every parameter's path, the type of the module holding it (Burn reports a parameter's
/// field under its parent's container type) and its shape, read without materialising lazily
/// initialised parameters: `(path, container, shape)` in `found`.
#[derive(Default)]
pub struct LazyShapes {
    path: Vec<String>,
    containers: Vec<String>,
    /// `(dotted path, container type, shape)` per parameter, in visiting order.
    pub found: Vec<(String, String, Vec<usize>)>,
}

impl<B: Backend> ModuleVisitor<B> for LazyShapes {
    fn enter_module(&mut self, name: &str, container_type: &str) {
        self.path.push(name.into());
        self.containers.push(container_type.into());
    }

    fn exit_module(&mut self, _name: &str, _container_type: &str) {
        self.path.pop();
        self.containers.pop();
    }

    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let container = self.containers.last().cloned().unwrap_or_default();
        self.found
            .push((self.path.join("."), container, param.lazy_shape().to_vec()));
    }
}
