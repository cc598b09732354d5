//! NMS and RoIAlign, detclip against torchvision, on identical inputs.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::ops::{RoiAlignOptions, batched_nms, nms, roi_align};
use safetensors::tensor::{Dtype, TensorView};

/// Arguments of `detclip-bench ops`.
#[derive(clap::Args, Debug)]
pub struct OpsArgs {
    /// Device of detclip's ops (cpu | wgpu[:N] | cuda[:N]); torchvision runs on the CPU, and
    /// also on CUDA when the device is CUDA and PyTorch sees a GPU.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Timed repetitions per case (the median is reported).
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/ops.md")]
    out: PathBuf,
    /// The Python interpreter with torch and torchvision.
    #[arg(long, default_value = "python3")]
    python: String,
}

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

/// Boxes clustered around a few objects, as a detector's raw output is.
fn detector_boxes(rng: &mut Rng, n: usize, width: f32, height: f32) -> Vec<f32> {
    let objects: Vec<[f32; 4]> = (0..n.div_ceil(40))
        .map(|_| {
            let (w, h) = (16.0 + rng.next() * 300.0, 16.0 + rng.next() * 300.0);
            let (x, y) = (rng.next() * (width - w), rng.next() * (height - h));
            [x, y, w, h]
        })
        .collect();
    (0..n)
        .flat_map(|i| {
            let [x, y, w, h] = objects[i % objects.len()];
            let j = |r: &mut Rng, s: f32| (r.next() - 0.5) * 0.3 * s;
            let (x1, y1) = (x + j(rng, w), y + j(rng, h));
            let (w2, h2) = (w * (0.8 + 0.4 * rng.next()), h * (0.8 + 0.4 * rng.next()));
            [x1, y1, x1 + w2, y1 + h2]
        })
        .collect()
}

pub(crate) struct Inputs {
    pub(crate) tensors: BTreeMap<String, (Vec<usize>, Vec<u8>, Dtype)>,
}

impl Inputs {
    pub(crate) fn f32(&mut self, key: &str, shape: Vec<usize>, v: &[f32]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors.insert(key.into(), (shape, bytes, Dtype::F32));
    }
    fn i64(&mut self, key: &str, v: &[i64]) {
        let bytes = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.tensors
            .insert(key.into(), (vec![v.len()], bytes, Dtype::I64));
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

/// A benchmark case: name, and what each side ran.
#[derive(Clone)]
struct Case {
    name: String,
    what: String,
}

struct Ours {
    reps: usize,
    nms_sizes: Vec<usize>,
    roi_cases: Vec<(String, RoiAlignOptions)>,
    inputs_path: PathBuf,
}

/// Median milliseconds per case, and a digest of each result for the agreement check.
type Timings = BTreeMap<String, (f64, String)>;

pub(crate) fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
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

impl BackendTask for Ours {
    type Output = Result<Timings, String>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let bytes = std::fs::read(&self.inputs_path).map_err(|e| e.to_string())?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
        let mut out = Timings::new();
        let sync = || B::sync(&device).map_err(|e| format!("{e:?}"));
        // `f(true)` also returns a digest of the result (read back and reduced in f64 on the
        // host, outside the timing); `f(false)` only waits for the result.
        let time =
            |f: &mut dyn FnMut(bool) -> Result<String, String>| -> Result<(f64, String), String> {
                let digest = f(true)?; // also the warm-up (kernel compilation, autotune)
                let mut ms = Vec::new();
                for _ in 0..self.reps {
                    let t0 = Instant::now();
                    f(false)?;
                    ms.push(t0.elapsed().as_secs_f64() * 1e3);
                }
                Ok((median(ms), digest))
            };
        for &n in &self.nms_sizes {
            let (bs, b) = read_f32(&st, &format!("nms{n}_boxes"));
            let (_, s) = read_f32(&st, &format!("nms{n}_scores"));
            let classes: Vec<i64> = st
                .tensor(&format!("nms{n}_classes"))
                .expect("classes")
                .data()
                .chunks_exact(8)
                .map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes")))
                .collect();
            let boxes =
                Tensor::<B::InnerBackend, 2>::from_data(TensorData::new(b, [bs[0], 4]), &device);
            let scores =
                Tensor::<B::InnerBackend, 1>::from_data(TensorData::new(s, [bs[0]]), &device);
            let cls = Tensor::<B::InnerBackend, 1, Int>::from_data(
                TensorData::new(classes, [bs[0]]),
                &device,
            );
            let r = time(&mut |_| {
                let keep = nms(boxes.clone(), scores.clone(), 0.5).map_err(|e| e.to_string())?;
                Ok(format!("{} kept", keep.dims()[0]))
            })?;
            out.insert(format!("nms_{n}"), r);
            let r = time(&mut |_| {
                let keep = batched_nms(boxes.clone(), scores.clone(), cls.clone(), 0.5)
                    .map_err(|e| e.to_string())?;
                Ok(format!("{} kept", keep.dims()[0]))
            })?;
            out.insert(format!("batched_nms_{n}"), r);
        }
        let (fs, f) = read_f32(&st, "roi_features");
        let (rs, r) = read_f32(&st, "roi_rois");
        let feats =
            Tensor::<B, 4>::from_data(TensorData::new(f, [fs[0], fs[1], fs[2], fs[3]]), &device);
        let rois = Tensor::<B, 2>::from_data(TensorData::new(r, [rs[0], 5]), &device);
        for (name, opts) in &self.roi_cases {
            let inner_feats = feats.clone().inner();
            let inner_rois = rois.clone().inner();
            let r = time(&mut |digest| {
                let y = roi_align(inner_feats.clone(), inner_rois.clone(), opts)
                    .map_err(|e| e.to_string())?;
                sync()?;
                Ok(if digest {
                    format!("sum {:.6}", host_sum(y, false))
                } else {
                    String::new()
                })
            })?;
            out.insert(format!("roi_align_{name}_fwd"), r);
            let r = time(&mut |digest| {
                let x = feats.clone().require_grad();
                let y = roi_align(x.clone(), rois.clone(), opts).map_err(|e| e.to_string())?;
                let grads = y.sum().backward();
                let g = x.grad(&grads).ok_or("no gradient")?;
                sync()?;
                Ok(if digest {
                    format!("|grad| {:.6}", host_sum(g, true))
                } else {
                    String::new()
                })
            })?;
            out.insert(format!("roi_align_{name}_fwd_bwd"), r);
        }
        Ok(out)
    }
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
    format!("{cpu}, {cores} cores, {mem:.0} GiB")
}

/// Runs the ops benchmark.
pub fn run(args: OpsArgs) -> Result<(), String> {
    let spec: DeviceSpec = args
        .device
        .parse()
        .map_err(|e: detclip_core::DetError| e.to_string())?;
    let dir = std::env::temp_dir().join("detclip-bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let inputs_path = dir.join("ops_inputs.safetensors");
    let ref_path = dir.join("ops_torchvision.json");

    // Inputs: detector-like boxes for NMS; an 800×1216 image's stride-8 map for RoIAlign.
    let mut rng = Rng(2024);
    let mut inputs = Inputs {
        tensors: BTreeMap::new(),
    };
    let nms_sizes = vec![1000, 5000, 20000];
    let mut cases = Vec::new();
    for &n in &nms_sizes {
        let b = detector_boxes(&mut rng, n, 1216.0, 800.0);
        let s: Vec<f32> = (0..n).map(|_| rng.next()).collect();
        let c: Vec<i64> = (0..n).map(|_| (rng.next() * 80.0) as i64).collect();
        inputs.f32(&format!("nms{n}_boxes"), vec![n, 4], &b);
        inputs.f32(&format!("nms{n}_scores"), vec![n], &s);
        inputs.i64(&format!("nms{n}_classes"), &c);
        cases.push(Case {
            name: format!("nms_{n}"),
            what: format!("nms, {n} boxes, IoU 0.5"),
        });
        cases.push(Case {
            name: format!("batched_nms_{n}"),
            what: format!("batched_nms, {n} boxes, 80 classes"),
        });
    }
    let (c, h, w, k) = (256usize, 100usize, 152usize, 512usize);
    let feats: Vec<f32> = (0..2 * c * h * w).map(|_| rng.next() * 2.0 - 1.0).collect();
    inputs.f32("roi_features", vec![2, c, h, w], &feats);
    let boxes = detector_boxes(&mut rng, k, 1216.0, 800.0);
    let rois: Vec<f32> = boxes
        .chunks_exact(4)
        .enumerate()
        .flat_map(|(i, b)| [(i % 2) as f32, b[0], b[1], b[2], b[3]])
        .collect();
    inputs.f32("roi_rois", vec![k, 5], &rois);
    inputs.write(&inputs_path)?;
    let roi_cases = vec![
        (
            "s2".to_string(),
            RoiAlignOptions {
                output_size: [7, 7],
                spatial_scale: 0.125,
                sampling_ratio: 2,
                aligned: true,
            },
        ),
        (
            "adaptive".to_string(),
            RoiAlignOptions {
                output_size: [7, 7],
                spatial_scale: 0.125,
                sampling_ratio: 0,
                aligned: true,
            },
        ),
    ];
    for (name, o) in &roi_cases {
        let sr = if o.sampling_ratio == 0 {
            "adaptive".to_string()
        } else {
            o.sampling_ratio.to_string()
        };
        for pass in ["fwd", "fwd_bwd"] {
            cases.push(Case {
                name: format!("roi_align_{name}_{pass}"),
                what: format!("roi_align {pass}, [2,{c},{h},{w}], {k} RoIs, 7×7, sampling {sr}"),
            });
        }
    }

    // The reference, on the same inputs.
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/torchvision_ops.py");
    let want_cuda = matches!(spec, DeviceSpec::Cuda(_));
    eprintln!("running torchvision ({})…", script.display());
    let status = Command::new(&args.python)
        .arg(&script)
        .arg(&inputs_path)
        .arg(&ref_path)
        .arg(args.reps.to_string())
        .arg(if want_cuda { "cuda" } else { "cpu" })
        .status()
        .map_err(|e| format!("could not start {}: {e}", args.python))?;
    if !status.success() {
        return Err(format!("the torchvision reference failed ({status})"));
    }
    let reference: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&ref_path).map_err(|e| e.to_string())?)
            .map_err(|e| e.to_string())?;

    eprintln!("running detclip on {spec}…");
    let ours = run_on(
        spec,
        Ours {
            reps: args.reps,
            nms_sizes,
            roi_cases,
            inputs_path,
        },
    )
    .map_err(|e| e.to_string())??;
    let backend = ours_backend_name(spec);

    let mut md = String::new();
    md.push_str("# NMS and RoIAlign: detclip vs torchvision\n\n");
    md.push_str(&format!("- machine: {}\n", machine()));
    md.push_str(&format!("- detclip: `{backend}` (device `{spec}`)\n"));
    md.push_str(&format!(
        "- reference: {}\n",
        reference["version"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "- command: `cargo run -p detclip-bench --release{} -- ops --device {} --reps {}`\n",
        match spec {
            DeviceSpec::Wgpu(_) => " --features wgpu",
            DeviceSpec::Cuda(_) => " --features cuda",
            _ => "",
        },
        args.device,
        args.reps
    ));
    md.push_str("- times: median of the repetitions, milliseconds, after one warm-up; results read back to the host\n");
    md.push_str("- ratio: detclip time / torchvision time (below 1 = detclip faster)\n\n");
    let ref_devices: Vec<String> = reference["devices"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|d| d.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default();
    md.push_str("| case | detclip ms |");
    for d in &ref_devices {
        md.push_str(&format!(" torchvision {d} ms | ratio vs {d} |"));
    }
    md.push_str(" agree |\n|---|---:|");
    for _ in &ref_devices {
        md.push_str("---:|---:|");
    }
    md.push_str("---|\n");
    let mut all_agree = true;
    for case in &cases {
        let (ms, digest) = ours
            .get(&case.name)
            .cloned()
            .unwrap_or((f64::NAN, String::new()));
        md.push_str(&format!("| {} | {ms:.2} |", case.what));
        let mut agree = true;
        for d in &ref_devices {
            let r = &reference["results"][d][&case.name];
            let rms = r["ms"].as_f64().unwrap_or(f64::NAN);
            md.push_str(&format!(" {rms:.2} | {:.2} |", ms / rms));
            agree &= digests_agree(&digest, r["digest"].as_str().unwrap_or(""));
        }
        all_agree &= agree;
        md.push_str(&format!(
            " {} |\n",
            if agree {
                "yes".to_string()
            } else {
                format!("NO ({digest})")
            }
        ));
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(&args.out, &md).map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    println!("{md}");
    println!("written to {}", args.out.display());
    if all_agree {
        Ok(())
    } else {
        Err("detclip and torchvision disagree on some case".into())
    }
}

fn ours_backend_name(spec: DeviceSpec) -> String {
    match spec {
        DeviceSpec::Cpu => "ndarray".into(),
        DeviceSpec::Wgpu(_) => "wgpu (fusion)".into(),
        DeviceSpec::Cuda(_) => "cuda (fusion)".into(),
        DeviceSpec::Auto => "auto".into(),
    }
}

/// Counts must match exactly; f64 sums of f32 results to a relative 1e-5.
fn digests_agree(ours: &str, theirs: &str) -> bool {
    let num = |s: &str| s.split_whitespace().find_map(|t| t.parse::<f64>().ok());
    match (num(ours), num(theirs)) {
        (Some(a), Some(b)) if ours.ends_with("kept") => a == b,
        (Some(a), Some(b)) => (a - b).abs() <= 1e-5 * b.abs().max(1.0),
        _ => false,
    }
}
