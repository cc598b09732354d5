//! The one place that maps a device string (`--device cpu|wgpu[:N]|cuda[:N]|auto`) to a
//! concrete Burn backend type.
//!
//! Models and ops are generic over `B: Backend` (plus [`DetclipOps`](crate::ext::DetclipOps));
//! nothing else in the workspace names a backend. Code that must run on a device the user picks
//! at run time implements [`BackendTask`] once and calls [`run_on`]: the task is
//! monomorphised for every backend compiled in (cargo features `ndarray`, `wgpu`, `cuda`).

use std::fmt;
use std::str::FromStr;

use burn::backend::Autodiff;

use crate::error::{DetError, Result};
use crate::ext::DetclipAutodiffBackend;

/// The CPU reference backend.
#[cfg(feature = "ndarray")]
pub type NdArrayBackend = burn::backend::NdArray<f32>;
/// wgpu (Vulkan, Metal, DX12, WebGPU) through CubeCL, with kernel fusion.
#[cfg(feature = "wgpu")]
pub type WgpuBackend = burn::backend::Wgpu<f32, i32>;
/// CUDA through CubeCL (NVRTC at run time), with kernel fusion.
#[cfg(feature = "cuda")]
pub type CudaBackend = burn::backend::Cuda<f32, i32>;

/// Which kind of backend and which device of that kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceSpec {
    /// The CPU (ndarray). `cpu` and `ndarray` both name it.
    Cpu,
    /// A wgpu adapter: `None` = the default adapter, `Some(n)` = the n-th discrete GPU.
    Wgpu(Option<usize>),
    /// A CUDA device by ordinal.
    Cuda(usize),
    /// The fastest backend compiled in whose device is present: CUDA, then wgpu, then the CPU.
    Auto,
}

impl fmt::Display for DeviceSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Cpu => write!(f, "cpu"),
            DeviceSpec::Wgpu(None) => write!(f, "wgpu"),
            DeviceSpec::Wgpu(Some(n)) => write!(f, "wgpu:{n}"),
            DeviceSpec::Cuda(n) => write!(f, "cuda:{n}"),
            DeviceSpec::Auto => write!(f, "auto"),
        }
    }
}

impl FromStr for DeviceSpec {
    type Err = DetError;

    fn from_str(s: &str) -> Result<Self> {
        let err = |why: &str| DetError::Device {
            spec: s.to_string(),
            why: why.to_string(),
        };
        let lower = s.trim().to_ascii_lowercase();
        let (kind, index) = match lower.split_once(':') {
            Some((k, i)) => {
                let n = i
                    .parse::<usize>()
                    .map_err(|_| err("the part after `:` must be a device number"))?;
                (k.to_string(), Some(n))
            }
            None => (lower.clone(), None),
        };
        match (kind.as_str(), index) {
            ("cpu" | "ndarray", None) => Ok(DeviceSpec::Cpu),
            ("cpu" | "ndarray", Some(_)) => Err(err("the CPU backend takes no device number")),
            ("wgpu" | "vulkan" | "metal", n) => Ok(DeviceSpec::Wgpu(n)),
            ("cuda", n) => Ok(DeviceSpec::Cuda(n.unwrap_or(0))),
            ("auto", None) => Ok(DeviceSpec::Auto),
            _ => Err(err(
                "expected one of cpu, ndarray, wgpu[:N], cuda[:N], auto",
            )),
        }
    }
}

/// Work that runs on whichever backend the user picked at run time.
///
/// `B` is always an autodiff backend whose inner backend carries the detclip extensions, so a
/// task can train (`B`) or run inference (`B::InnerBackend`).
pub trait BackendTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B`, device `device`.
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output;
}

/// Whether a CUDA driver library can be found (without it CubeCL's CUDA runtime panics on
/// first use, on a thread the caller cannot catch).
pub fn cuda_driver_present() -> bool {
    const CANDIDATES: [&str; 6] = [
        "/usr/lib/x86_64-linux-gnu/libcuda.so.1",
        "/usr/lib64/libcuda.so.1",
        "/usr/lib/libcuda.so.1",
        "/usr/local/nvidia/lib64/libcuda.so.1",
        "/usr/lib/wsl/lib/libcuda.so.1",
        "/usr/lib/aarch64-linux-gnu/libcuda.so.1",
    ];
    if CANDIDATES.iter().any(|p| std::path::Path::new(p).exists()) {
        return true;
    }
    std::env::var("LD_LIBRARY_PATH")
        .unwrap_or_default()
        .split(':')
        .filter(|d| !d.is_empty())
        .any(|d| std::path::Path::new(d).join("libcuda.so.1").exists())
}

/// Resolves `auto` to a concrete spec; checks that the spec's backend is compiled in.
pub fn resolve(spec: DeviceSpec) -> Result<DeviceSpec> {
    let not_built = |feature: &str| DetError::Device {
        spec: spec.to_string(),
        why: format!("this build has no `{feature}` backend; rebuild with `--features {feature}`"),
    };
    match spec {
        DeviceSpec::Auto => {
            if cfg!(feature = "cuda") && cuda_driver_present() {
                Ok(DeviceSpec::Cuda(0))
            } else if cfg!(feature = "wgpu") {
                Ok(DeviceSpec::Wgpu(None))
            } else if cfg!(feature = "ndarray") {
                Ok(DeviceSpec::Cpu)
            } else {
                Err(DetError::Device {
                    spec: spec.to_string(),
                    why: "no backend is compiled in".into(),
                })
            }
        }
        DeviceSpec::Cpu if !cfg!(feature = "ndarray") => Err(not_built("ndarray")),
        DeviceSpec::Wgpu(_) if !cfg!(feature = "wgpu") => Err(not_built("wgpu")),
        DeviceSpec::Cuda(_) if !cfg!(feature = "cuda") => Err(not_built("cuda")),
        DeviceSpec::Cuda(_) if !cuda_driver_present() => Err(DetError::Device {
            spec: spec.to_string(),
            why: "no CUDA driver (libcuda.so.1) was found on this machine".into(),
        }),
        other => Ok(other),
    }
}

/// Runs `task` on the backend and device that `spec` names.
pub fn run_on<T: BackendTask>(spec: DeviceSpec, task: T) -> Result<T::Output> {
    let spec = resolve(spec)?;
    let _ = &task;
    match spec {
        #[cfg(feature = "ndarray")]
        DeviceSpec::Cpu => Ok(task.run::<Autodiff<NdArrayBackend>>(Default::default())),
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(n) => {
            use burn::backend::wgpu::WgpuDevice;
            let device = match n {
                None => WgpuDevice::DefaultDevice,
                Some(n) => WgpuDevice::DiscreteGpu(n),
            };
            Ok(task.run::<Autodiff<WgpuBackend>>(device))
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(n) => {
            let device = burn::backend::cuda::CudaDevice::new(n);
            Ok(task.run::<Autodiff<CudaBackend>>(device))
        }
        other => Err(DetError::Device {
            spec: other.to_string(),
            why: "this backend is not compiled in".into(),
        }),
    }
}
