//! NMS and RoIAlign, detclip against torchvision, on identical inputs.

use std::collections::BTreeMap;
use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::ops::{RoiAlignOptions, batched_nms, nms, roi_align};

use crate::common::{
    Inputs, Rng, digests_agree, feature_flag, host_sum, machine, read_f32, run_reference,
    time_median,
};

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

impl BackendTask for Ours {
    type Output = Result<Timings, String>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let bytes = std::fs::read(&self.inputs_path).map_err(|e| e.to_string())?;
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(|e| e.to_string())?;
        let mut out = Timings::new();
        let sync = || B::sync(&device).map_err(|e| format!("{e:?}"));
        let reps = self.reps;
        let time = |f: &mut dyn FnMut(bool) -> Result<String, String>| time_median(reps, f);
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
    let reference = run_reference(
        &args.python,
        &script,
        &inputs_path,
        &ref_path,
        args.reps,
        spec,
        &[],
    )?;

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
        feature_flag(spec),
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
