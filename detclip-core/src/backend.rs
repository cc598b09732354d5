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

/// The float type a model computes in (`--precision f32|f16|bf16`).
///
/// Burn 0.21 has no autocast: a half precision run instantiates the whole model on the backend
/// whose float element is the half type (`Wgpu<f16>`, `Cuda<f16>`, `Cuda<bf16>`). The CPU
/// backend (ndarray) computes in f32 only.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Single precision (the default).
    #[default]
    F32,
    /// IEEE half precision (wgpu, CUDA).
    F16,
    /// bfloat16 (CUDA).
    Bf16,
}

impl Precision {
    /// Whether this is a 16-bit float type (and so wants loss scaling).
    pub fn is_half(self) -> bool {
        self != Precision::F32
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
            Precision::Bf16 => "bf16",
        })
    }
}

impl FromStr for Precision {
    type Err = DetError;

    fn from_str(s: &str) -> Result<Self> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "fp32" | "float32" => Ok(Precision::F32),
            "f16" | "fp16" | "float16" | "half" => Ok(Precision::F16),
            "bf16" | "bfloat16" => Ok(Precision::Bf16),
            _ => Err(DetError::InvalidOption {
                op: "precision",
                why: format!("unknown precision `{s}`; expected f32, f16 or bf16"),
            }),
        }
    }
}

/// How many CUDA devices the NVIDIA driver reports (`/proc/driver/nvidia/gpus/*`), when it
/// can be told without initialising CUDA; `None` where the driver does not list them there.
pub fn cuda_device_count() -> Option<usize> {
    let dir = std::fs::read_dir("/proc/driver/nvidia/gpus").ok()?;
    Some(dir.filter_map(|e| e.ok()).count())
}

/// Parses a device list for data-parallel training: `cuda:0,cuda:1`, `wgpu:0,wgpu:1`, or the
/// CPU repeated (`cpu,cpu`: one model replica per entry on the same CPU device, which runs
/// the multi-device code path where there is no second GPU, e.g. in tests).
///
/// Every entry must name the same kind of backend, a GPU may be listed once, and `auto` only
/// stands alone. Each entry is [`resolve`]d, so a backend that is not compiled in or a CUDA
/// device that is not there is reported here, before any work starts.
pub fn parse_device_list(list: &str) -> Result<Vec<DeviceSpec>> {
    let err = |why: String| DetError::Device {
        spec: list.to_string(),
        why,
    };
    let specs = list
        .split(',')
        .map(|s| s.trim())
        .map(|s| {
            if s.is_empty() {
                Err(err("an empty entry in the device list".into()))
            } else {
                s.parse::<DeviceSpec>()
            }
        })
        .collect::<Result<Vec<_>>>()?;
    if specs.len() > 1 && specs.contains(&DeviceSpec::Auto) {
        return Err(err(
            "`auto` picks one device; list the devices explicitly (e.g. cuda:0,cuda:1)".into(),
        ));
    }
    // One kind before anything is resolved: a mixed list is refused as such, whether or not
    // its GPU entries are there.
    let kind = |s: &DeviceSpec| std::mem::discriminant(s);
    if specs.iter().any(|s| kind(s) != kind(&specs[0])) {
        return Err(err(
            "all devices must be of one kind (one backend): e.g. cuda:0,cuda:1 or wgpu:0,wgpu:1"
                .into(),
        ));
    }
    let specs = specs.into_iter().map(resolve).collect::<Result<Vec<_>>>()?;
    for (i, s) in specs.iter().enumerate() {
        if *s != DeviceSpec::Cpu && specs[..i].contains(s) {
            return Err(err(format!("{s} is listed twice")));
        }
    }
    if let (DeviceSpec::Cuda(_), Some(count)) = (specs[0], cuda_device_count())
        && let Some(missing) = specs
            .iter()
            .find(|s| matches!(s, DeviceSpec::Cuda(n) if *n >= count))
    {
        return Err(err(format!(
            "{missing} is not there: the driver reports {count} CUDA device(s)"
        )));
    }
    Ok(specs)
}

/// Work that runs on several devices of one backend (data-parallel training); the first
/// device is the main one.
pub trait DevicesTask {
    /// What the task returns.
    type Output;
    /// Runs the task on backend `B`, devices `devices` (at least one).
    fn run<B: DetclipAutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output;
    /// Runs the task in half precision: `B` computes in the half type; `F` is the CPU backend
    /// in f32, on device `master`, for f32 master weights (`None` when this build has no CPU
    /// backend). A task that does not need `F` calls `self.run::<B>(devices)`.
    fn run_half<B: DetclipAutodiffBackend, F: DetclipAutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        master: Option<F::Device>,
    ) -> Self::Output;
}

/// [`DevicesTask::run_half`] with the CPU backend for the f32 master weights.
#[cfg(any(feature = "wgpu", feature = "cuda"))]
fn run_half<T: DevicesTask, B: DetclipAutodiffBackend>(
    task: T,
    devices: Vec<B::Device>,
) -> T::Output {
    #[cfg(feature = "ndarray")]
    return task.run_half::<B, Autodiff<NdArrayBackend>>(devices, Some(Default::default()));
    #[cfg(not(feature = "ndarray"))]
    return task.run_half::<B, B>(devices, None);
}

/// Runs `task` on the devices `specs` name (from [`parse_device_list`]), on the backend whose
/// float element is `precision`.
///
/// Half precision needs a Cube backend: f16 on wgpu or CUDA, bf16 on CUDA.
pub fn run_on_devices<T: DevicesTask>(
    specs: &[DeviceSpec],
    precision: Precision,
    task: T,
) -> Result<T::Output> {
    let specs = specs
        .iter()
        .map(|&s| resolve(s))
        .collect::<Result<Vec<_>>>()?;
    let Some(&first) = specs.first() else {
        return Err(DetError::Device {
            spec: String::new(),
            why: "no device was given".into(),
        });
    };
    let _ = &task;
    let unsupported = |why: &str| DetError::Device {
        spec: first.to_string(),
        why: why.to_string(),
    };
    match first {
        #[cfg(feature = "ndarray")]
        DeviceSpec::Cpu => match precision {
            Precision::F32 => {
                Ok(task.run::<Autodiff<NdArrayBackend>>(vec![Default::default(); specs.len()]))
            }
            half => Err(unsupported(&format!(
                "precision {half} needs --device wgpu or cuda (the CPU backend computes in f32 \
                 only)"
            ))),
        },
        #[cfg(feature = "wgpu")]
        DeviceSpec::Wgpu(_) => {
            use burn::backend::wgpu::WgpuDevice;
            let devices: Vec<WgpuDevice> = specs
                .iter()
                .map(|s| match s {
                    DeviceSpec::Wgpu(Some(n)) => WgpuDevice::DiscreteGpu(*n),
                    _ => WgpuDevice::DefaultDevice,
                })
                .collect();
            match precision {
                Precision::F32 => Ok(task.run::<Autodiff<WgpuBackend>>(devices)),
                Precision::F16 => {
                    Ok(run_half::<_, Autodiff<burn::backend::Wgpu<half::f16, i32>>>(task, devices))
                }
                Precision::Bf16 => Err(unsupported(
                    "precision bf16 needs --device cuda (WGSL has no bfloat16); use f16 on wgpu",
                )),
            }
        }
        #[cfg(feature = "cuda")]
        DeviceSpec::Cuda(_) => {
            use burn::backend::cuda::CudaDevice;
            let devices: Vec<CudaDevice> = specs
                .iter()
                .map(|s| match s {
                    DeviceSpec::Cuda(n) => CudaDevice::new(*n),
                    _ => CudaDevice::new(0),
                })
                .collect();
            match precision {
                Precision::F32 => Ok(task.run::<Autodiff<CudaBackend>>(devices)),
                Precision::F16 => {
                    Ok(run_half::<_, Autodiff<burn::backend::Cuda<half::f16, i32>>>(task, devices))
                }
                Precision::Bf16 => Ok(
                    run_half::<_, Autodiff<burn::backend::Cuda<half::bf16, i32>>>(task, devices),
                ),
            }
        }
        other => Err(DetError::Device {
            spec: other.to_string(),
            why: "this backend is not compiled in".into(),
        }),
    }
}
