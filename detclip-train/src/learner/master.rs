//! Master weights: the optimiser's copy of the model, kept in a wider float type than the one
//! the model computes in (Micikevicius et al. 2018, "Mixed Precision Training", §3.1; apex's
//! O2, PyTorch AMP with an f32 model).
//!
//! A half precision step loses every update smaller than half an ulp of its weight: at a weight
//! of 1, f16's ulp is 2⁻¹⁰ ≈ 1e-3, so an AdamW step of `lr = 1e-4` does nothing at all. With
//! master weights the compute model (`B`, e.g. `Wgpu<f16>`) only runs the forward and backward
//! passes; its gradients are widened to the master backend (`M`, e.g. `Wgpu<f32>`), unscaled,
//! clipped and applied there by AdamW, whose moments are `M`'s too; then the updated masters
//! are narrowed back into the compute model.
//!
//! Burn 0.21 fixes a backend's float type at compile time, so the two copies live on two
//! backends over the same device and cross between them as [`TensorData`] (device → host →
//! device, converted on the host). That costs two copies of the parameters and one of the
//! gradients per step: small next to the forward and backward passes of a detector at batch
//! size 8 or more, and the price of an exact update. Parameters are matched by visiting order
//! (the two models come from the same config), and the compute copy takes the masters'
//! `ParamId`s, so its gradients are keyed like the masters' optimiser state.

use burn::module::{AutodiffModule, Module, ModuleMapper, ModuleVisitor, Param, ParamId};
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::tensor::backend::AutodiffBackend;
use burn::tensor::ops::FloatElem;
use burn::tensor::{DType, Element, TensorData};
use detclip_core::{DetError, Result};

/// Which float tensors of a module take part in a copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Part {
    /// Every one.
    All,
    /// Those that train (`require_grad`): what the optimiser changes.
    Trained,
    /// The others: frozen parameters and running statistics (`RunningState`), which the
    /// forward pass may change and the optimiser never does.
    Rest,
}

impl Part {
    fn takes(self, require_grad: bool) -> bool {
        match self {
            Part::All => true,
            Part::Trained => require_grad,
            Part::Rest => !require_grad,
        }
    }
}

/// One parameter as it crosses between backends.
struct Crossing {
    id: ParamId,
    data: TensorData,
    require_grad: bool,
}

struct Gather {
    part: Part,
    out: Vec<Crossing>,
}

impl<B: Backend> ModuleVisitor<B> for Gather {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<B, D>>) {
        let tensor = param.val();
        let require_grad = tensor.is_require_grad();
        if self.part.takes(require_grad) {
            self.out.push(Crossing {
                id: param.id,
                require_grad,
                data: tensor.into_data(),
            });
        }
    }
}

struct Scatter<'a, B: Backend> {
    part: Part,
    from: std::vec::IntoIter<Crossing>,
    device: &'a B::Device,
    error: Option<String>,
    index: usize,
}

impl<B: Backend> ModuleMapper<B> for Scatter<'_, B> {
    fn map_float<const D: usize>(&mut self, param: Param<Tensor<B, D>>) -> Param<Tensor<B, D>> {
        if self.part != Part::All && !self.part.takes(param.val().is_require_grad()) {
            return param;
        }
        let index = self.index;
        self.index += 1;
        let Some(c) = self.from.next() else {
            self.error
                .get_or_insert_with(|| format!("the target has more parameters ({index}+)"));
            return param;
        };
        let want = param.lazy_shape();
        if c.data.shape != want {
            self.error.get_or_insert_with(|| {
                format!(
                    "parameter {index} is {:?} in the source and {:?} in the target",
                    c.data.shape.as_slice(),
                    want.as_slice()
                )
            });
            return param;
        }
        if self.part == Part::Rest {
            // Only what the forward pass changed: a tensor whose value, narrowed, is still the
            // source's keeps its own (wider) value.
            let own = param.val().into_data();
            if own.convert_dtype(c.data.dtype) == c.data {
                return param;
            }
        }
        let tensor = Tensor::<B, D>::from_data(c.data, (self.device, float_dtype::<B>()))
            .set_require_grad(c.require_grad);
        Param::initialized(c.id, tensor)
    }
}

fn copy_part<S: Backend, T: Backend, MS: Module<S>, MT: Module<T>>(
    part: Part,
    from: &MS,
    to: MT,
    device: &T::Device,
) -> Result<MT> {
    let mut gather = Gather {
        part,
        out: Vec::new(),
    };
    from.visit(&mut gather);
    let count = gather.out.len();
    let mut scatter = Scatter::<T> {
        part,
        from: gather.out.into_iter(),
        device,
        error: None,
        index: 0,
    };
    let to = to.map(&mut scatter);
    let left = scatter.from.len();
    match scatter.error {
        None if left == 0 => Ok(to),
        None => Err(mismatch(format!(
            "the source has {count} parameters, the target {}",
            count - left
        ))),
        Some(why) => Err(mismatch(why)),
    }
}

/// Copies the float parameters of `from` (backend `S`) into `to` (backend `T`, on `device`),
/// converting each to `T`'s float type; `to` takes `from`'s parameter ids and their
/// `require_grad` flags. The two must have the same parameters in the same order (models of
/// one config); anything else is an error and `to` is not returned.
pub fn copy_params<S: Backend, T: Backend, MS: Module<S>, MT: Module<T>>(
    from: &MS,
    to: MT,
    device: &T::Device,
) -> Result<MT> {
    copy_part(Part::All, from, to, device)
}

/// [`copy_params`] for the parameters that train (`require_grad`) only: what an optimiser
/// step changes. Frozen parameters and running statistics of `to` stay as they are, so they
/// are neither copied every step nor overwritten.
pub fn copy_trained<S: Backend, T: Backend, MS: Module<S>, MT: Module<T>>(
    from: &MS,
    to: MT,
    device: &T::Device,
) -> Result<MT> {
    copy_part(Part::Trained, from, to, device)
}

/// The way back for what does not train: each tensor of `from` (the compute model) that
/// does not train and differs from `to`'s (the master copy's) value narrowed to `from`'s
/// type — running statistics the forward pass updated — is copied into `to`; frozen
/// parameters, unchanged, keep `to`'s wider values.
pub fn copy_state<S: AutodiffBackend, T: Backend, MS: AutodiffModule<S>, MT: Module<T>>(
    from: &MS,
    to: MT,
    device: &T::Device,
) -> Result<MT> {
    // Running statistics hold their updates per thread until synchronised; `valid` does
    // that (visiting does not).
    let _ = from.valid();
    copy_part(Part::Rest, from, to, device)
}

/// The float type of backend `B`'s element. Tensors are created in it explicitly: a device's
/// *default* float type is fixed per device (not per backend) the first time the device is
/// used, so `NdArray<f64>` on a CPU that an `NdArray<f32>` model used first would otherwise
/// get f32 tensors.
fn float_dtype<B: Backend>() -> DType {
    FloatElem::<B>::dtype()
}

fn mismatch(why: String) -> DetError {
    DetError::InvalidOption {
        op: "master weights",
        why: format!("the compute model and the master copy differ: {why}"),
    }
}

struct Widen<'a, T: AutodiffBackend> {
    from: GradientsParams,
    to: GradientsParams,
    device: &'a T::Device,
}

impl<S: AutodiffBackend, T: AutodiffBackend> ModuleVisitor<S> for Widen<'_, T> {
    fn visit_float<const D: usize>(&mut self, param: &Param<Tensor<S, D>>) {
        if let Some(grad) = self.from.remove::<S::InnerBackend, D>(param.id) {
            let grad = Tensor::<T::InnerBackend, D>::from_data(
                grad.into_data(),
                (self.device, float_dtype::<T::InnerBackend>()),
            );
            self.to.register(param.id, grad);
        }
    }
}

/// Moves the gradients of `model`'s parameters (backend `S`) to backend `T` on `device`,
/// converting them to `T`'s float type; the ids stay. Gradients of tensors that are not
/// parameters of `model` are dropped.
pub fn convert_grads<S: AutodiffBackend, T: AutodiffBackend, M: AutodiffModule<S>>(
    model: &M,
    grads: GradientsParams,
    device: &T::Device,
) -> GradientsParams {
    let mut widen = Widen::<T> {
        from: grads,
        to: GradientsParams::new(),
        device,
    };
    model.visit(&mut widen);
    widen.to
}
