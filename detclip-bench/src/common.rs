//! What every benchmark shares: deterministic inputs written for the reference script,
//! timing, agreement of digests, the machine description, running the Python reference.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use burn::prelude::*;
use detclip_core::backend::DeviceSpec;
use safetensors::tensor::{Dtype, TensorView};

/// A deterministic generator (SplitMix64), so inputs are the same on every machine.
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> f32 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        ((z ^ (z >> 31)) >> 40) as f32 / (1u64 << 24) as f32
    }
}

/// Named tensors written to a safetensors file for the reference script.
pub(crate) struct Inputs {
    pub(crate) tensors: BTreeMap<String, (Vec<usize>, Vec<u8>, Dtype)>,
}

impl Inputs {
    pub(crate) fn f32(&mut self, key: &str, shape: Vec<usize>, v: &[f32]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.insert(key.into(), (shape, bytes, Dtype::F32));
    }
    pub(crate) fn i64(&mut self, key: &str, v: &[i64]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors
            .insert(key.into(), (vec![v.len()], bytes, Dtype::I64));
    }
    /// Integers of any shape (token ids).
    pub(crate) fn i64_shaped(&mut self, key: &str, shape: Vec<usize>, v: &[i64]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.insert(key.into(), (shape, bytes, Dtype::I64));
    }
    pub(crate) fn write(&self, path: &std::path::Path) -> Result<(), String> {
        let views: Vec<(String, TensorView<'_>)> = self
            .tensors
            .iter()
            .map(|(k, (shape, bytes, dtype))| {
                (
                    k.clone(),
                    TensorView::new(*dtype, shape.clone(), bytes).expect("consistent view"),
                )
            })
            .collect();
        safetensors::serialize_to_file(views, None, path)
            .map_err(|e| format!("writing {}: {e}", path.display()))
    }
}

/// The median (the mean of the two middle values for an even count, as Python's
/// `statistics.median`, which the reference scripts use).
pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let mid = v.len() / 2;
    if v.len().is_multiple_of(2) {
        (v[mid - 1] + v[mid]) / 2.0
    } else {
        v[mid]
    }
}

pub(crate) fn read_f32(st: &safetensors::SafeTensors<'_>, key: &str) -> (Vec<usize>, Vec<f32>) {
    let t = st.tensor(key).expect("input tensor");
    (
        t.shape().to_vec(),
        t.data()
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
    )
}

/// Sum (of absolute values) in f64 on the host.
pub(crate) fn host_sum<B: Backend, const D: usize>(t: Tensor<B, D>, abs: bool) -> f64 {
    let v: Vec<f32> = t.into_data().convert::<f32>().to_vec().expect("f32 data");
    v.iter()
        .map(|&x| if abs { (x as f64).abs() } else { x as f64 })
        .sum()
}

pub(crate) fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines().next().map(|l| {
                l.split_whitespace()
                    .nth(1)
                    .unwrap_or("0")
                    .parse::<f64>()
                    .unwrap_or(0.0)
                    / 1048576.0
            })
        })
        .unwrap_or(0.0);
    let gpu = Command::new("nvidia-smi")
        .args([
            "--query-gpu=name,driver_version,memory.total",
            "--format=csv,noheader",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .trim()
                .replace('\n', "; ")
        })
        .filter(|s| !s.is_empty())
        .map(|s| format!("; GPU: {s}"))
        .unwrap_or_default();
    format!("{cpu}, {cores} cores, {mem:.0} GiB{gpu}")
}

/// Times `f`: `f(true)` once (the warm-up: kernel compilation, autotune; it also returns a
/// digest of the result, read back and reduced on the host outside the timing), then `reps`
/// timed calls of `f(false)`, which only wait for the result. Median milliseconds and digest.
pub(crate) fn time_median(
    reps: usize,
    f: &mut dyn FnMut(bool) -> Result<String, String>,
) -> Result<(f64, String), String> {
    let digest = f(true)?;
    let mut ms = Vec::new();
    for _ in 0..reps.max(1) {
        let t0 = Instant::now();
        f(false)?;
        ms.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    Ok((median(ms), digest))
}

/// Runs `python script args…` and reads the JSON it writes to `out`.
pub(crate) fn run_reference(
    python: &str,
    script: &Path,
    inputs: &Path,
    out: &Path,
    reps: usize,
    spec: DeviceSpec,
    extra: &[String],
) -> Result<serde_json::Value, String> {
    eprintln!("running the reference ({})…", script.display());
    let status = Command::new(python)
        .arg(script)
        .arg(inputs)
        .arg(out)
        .arg(reps.to_string())
        .arg(if matches!(spec, DeviceSpec::Cuda(_)) {
            "cuda"
        } else {
            "cpu"
        })
        .args(extra)
        .status()
        .map_err(|e| format!("could not start {python}: {e}"))?;
    if !status.success() {
        return Err(format!("the reference script failed ({status})"));
    }
    serde_json::from_slice(&std::fs::read(out).map_err(|e| e.to_string())?)
        .map_err(|e| e.to_string())
}

/// The cargo feature a device needs, for the command line written into results files.
pub(crate) fn feature_flag(spec: DeviceSpec) -> &'static str {
    match spec {
        DeviceSpec::Wgpu(_) => " --features wgpu",
        DeviceSpec::Cuda(_) => " --features cuda",
        _ => "",
    }
}

/// Two digests agree when they hold the same numbers, each to a relative 1e-5 (exact for the
/// counts of kept boxes, which are below 10⁵).
pub(crate) fn digests_agree(ours: &str, theirs: &str) -> bool {
    let nums = |s: &str| {
        s.split_whitespace()
            .filter_map(|t| t.parse::<f64>().ok())
            .collect::<Vec<_>>()
    };
    let (a, b) = (nums(ours), nums(theirs));
    !a.is_empty()
        && a.len() == b.len()
        && a.iter()
            .zip(&b)
            .all(|(x, y)| (x - y).abs() <= 1e-5 * y.abs().max(1.0))
}
