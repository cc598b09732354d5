//! RegionSpot: regions recognised per second at 100 boxes per image, with SAM's and CLIP's
//! outputs cached (read from the cache file, then the module) or computed on the fly (SAM
//! ViT-B at 1024², CLIP ViT-B/16 at 224², then the module), and the module's training step,
//! side by side with PyTorch (segment_anything, transformers and the module re-implemented
//! after the official code) at the official `CLIP_400M` sizes, random weights.

use std::path::PathBuf;

use burn::module::AutodiffModule;
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_models::regionspot::{
    FrozenFeatures, RegionSpot, RegionSpotConfig, RegionSpotLossConfig, read_frozen_features,
    regionspot_loss, write_frozen_features,
};

use crate::common::{Rng, feature_flag, machine, run_reference, time_median};

/// Arguments of `detclip-bench regionspot`.
#[derive(clap::Args, Debug)]
pub struct RegionSpotArgs {
    /// Device of detclip (cpu | wgpu[:N] | cuda[:N]); torch runs on CUDA too when `cuda`.
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Box prompts per image.
    #[arg(long, default_value_t = 100)]
    boxes: usize,
    /// Timed repetitions after one warm-up (the on-the-fly path runs half as many).
    #[arg(long, default_value_t = 2)]
    reps: usize,
    /// CPU threads of torch.
    #[arg(long, default_value_t = 2)]
    torch_threads: usize,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/regionspot.md")]
    out: PathBuf,
    /// The Python interpreter with torch, transformers and segment_anything.
    #[arg(long, default_value = "python3")]
    python: String,
}

const CLASSES: usize = 80;

/// Milliseconds per measurement, by name.
struct Timings {
    module: f64,
    cached: f64,
    on_the_fly: f64,
    train_step: f64,
    shapes: String,
}

struct Ours {
    boxes: usize,
    reps: usize,
    dir: PathBuf,
}

fn random<B: Backend, const D: usize>(
    rng: &mut Rng,
    shape: [usize; D],
    device: &B::Device,
) -> Tensor<B, D> {
    let n = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| rng.next() * 2.0 - 1.0).collect();
    Tensor::from_data(TensorData::new(v, shape), device)
}

impl BackendTask for Ours {
    type Output = Result<Timings, String>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let e = |e: detclip_core::DetError| e.to_string();
        let config = RegionSpotConfig::vit_b_16();
        let model: RegionSpot<B> = config.init(&device).map_err(e)?;
        let inner = model.valid();
        let mut rng = Rng(9);
        let n = self.boxes;
        let boxes: Vec<f32> = (0..n)
            .flat_map(|_| {
                let (x, y) = (rng.next() * 800.0, rng.next() * 800.0);
                let (w, h) = (rng.next() * 200.0 + 16.0, rng.next() * 200.0 + 16.0);
                [x, y, x + w, y + h]
            })
            .collect();
        let boxes =
            Tensor::<B::InnerBackend, 3>::from_data(TensorData::new(boxes, [1, n, 4]), &device);
        let image = random::<B::InnerBackend, 4>(&mut rng, [1, 3, 1024, 1024], &device);
        let pixels = random::<B::InnerBackend, 4>(&mut rng, [1, 3, 224, 224], &device);
        let text = detclip_models::clip::l2_normalize(random::<B::InnerBackend, 2>(
            &mut rng,
            [CLASSES, 512],
            &device,
        ));
        let sync = || B::InnerBackend::sync(&device).map_err(|e| format!("{e:?}"));

        eprintln!("detclip: on the fly (SAM ViT-B + CLIP ViT-B/16 + module)…");
        let (on_the_fly, shapes) = time_median(self.reps.div_ceil(2), &mut |_| {
            let out = inner
                .forward(image.clone(), boxes.clone(), pixels.clone(), text.clone())
                .map_err(e)?;
            sync()?;
            Ok(format!("logits {:?}", out.logits.dims()))
        })?;

        let features = inner
            .frozen_features(image.clone(), boxes.clone(), pixels.clone())
            .map_err(e)?;
        let file = self.dir.join("regionspot_bench.safetensors");
        write_frozen_features(&file, "bench", &features).map_err(e)?;
        eprintln!("detclip: module from cached features…");
        let (module, _) = time_median(self.reps, &mut |_| {
            let out = inner.forward_cached(&features, text.clone()).map_err(e)?;
            sync()?;
            Ok(format!("{:?}", out.logits.dims()))
        })?;
        let (cached, _) = time_median(self.reps, &mut |_| {
            let read: FrozenFeatures<B::InnerBackend> =
                read_frozen_features(&file, "bench", &device)
                    .map_err(e)?
                    .ok_or("the cache file vanished")?;
            let out = inner.forward_cached(&read, text.clone()).map_err(e)?;
            sync()?;
            Ok(format!("{:?}", out.logits.dims()))
        })?;

        eprintln!("detclip: training step (2 images)…");
        let two = FrozenFeatures::<B> {
            region_tokens: Tensor::from_inner(Tensor::cat(
                vec![features.region_tokens.clone(); 2],
                0,
            )),
            masks: Tensor::from_inner(features.masks.clone().narrow(0, 0, 1)).repeat_dim(0, 2),
            clip_features: Tensor::from_inner(Tensor::cat(
                vec![features.clip_features.clone(); 2],
                0,
            )),
            boxes: None,
        };
        let labels: Vec<i64> = (0..2 * n).map(|i| (i * 7 % CLASSES) as i64).collect();
        let labels = Tensor::<B, 2, Int>::from_data(TensorData::new(labels, [2, n]), &device);
        let text_ad = Tensor::<B, 2>::from_inner(text.clone());
        let mut optim = AdamWConfig::new().init::<B, RegionSpot<B>>();
        let mut train = Some(model);
        let loss_config = RegionSpotLossConfig::new();
        let (train_step, _) = time_median(self.reps, &mut |_| {
            let m = train.take().ok_or("model")?;
            let out = m.forward_cached(&two, text_ad.clone()).map_err(e)?;
            let loss = regionspot_loss(out.logits, labels.clone(), &loss_config)
                .map_err(e)?
                .total();
            let grads = GradientsParams::from_grads(loss.backward(), &m);
            let m = optim.step(1e-4, m, grads);
            B::sync(&device).map_err(|e| format!("{e:?}"))?;
            train = Some(m);
            Ok("loss [1]".into())
        })?;
        Ok(Timings {
            module,
            cached,
            on_the_fly,
            train_step,
            shapes,
        })
    }
}

/// Runs the RegionSpot benchmark.
pub fn run(args: RegionSpotArgs) -> Result<(), String> {
    let spec: DeviceSpec = args
        .device
        .parse()
        .map_err(|e: detclip_core::DetError| e.to_string())?;
    let dir = std::env::temp_dir().join("detclip-bench");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let ref_path = dir.join("regionspot_pytorch.json");
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/pytorch_regionspot.py");
    let reference = run_reference(
        &args.python,
        &script,
        &dir.join("unused"),
        &ref_path,
        args.reps,
        spec,
        &[args.boxes.to_string(), args.torch_threads.to_string()],
    )?;
    eprintln!("running detclip on {spec}…");
    let ours = run_on(
        spec,
        Ours {
            boxes: args.boxes,
            reps: args.reps,
            dir: dir.clone(),
        },
    )
    .map_err(|e| e.to_string())??;
    let dev = reference["devices"]
        .as_array()
        .and_then(|d| d.last())
        .and_then(|d| d.as_str())
        .unwrap_or("cpu")
        .to_string();
    let theirs = |k: &str| {
        reference["results"][&dev][k]["ms"]
            .as_f64()
            .unwrap_or(f64::NAN)
    };
    let shapes_agree = reference["results"][&dev]["on_the_fly"]["digest"].as_str()
        == Some(format!("logits [1, {}, {CLASSES}]", args.boxes).as_str())
        && ours.shapes == format!("logits [1, {}, {CLASSES}]", args.boxes);
    let per_s = |ms: f64| args.boxes as f64 / ms * 1e3;
    let rate = |r: f64| {
        if r >= 10.0 {
            format!("{r:.0}")
        } else {
            format!("{r:.2}")
        }
    };
    let mut md =
        String::from("# RegionSpot: regions per second and training step, detclip vs PyTorch\n\n");
    md.push_str(&format!(
        "- machine: {}\n- detclip on `{spec}`; PyTorch on `{dev}` ({})\n",
        machine(),
        reference["version"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "- command: `cargo run -p detclip-bench --release{} -- regionspot --device {} --boxes {} --reps {} --torch-threads {}`\n",
        feature_flag(spec),
        args.device,
        args.boxes,
        args.reps,
        args.torch_threads
    ));
    md.push_str(&format!(
        "- official `CLIP_400M` sizes (SAM ViT-B at 1024², CLIP ViT-B/16 at 224², module 3 layers × 8 heads, FFN 2048), random weights, {} boxes on one image, {CLASSES} classes; median of {} run(s) after a warm-up (on the fly: {}); output shapes agree: {}\n",
        args.boxes,
        args.reps.max(1),
        args.reps.div_ceil(2).max(1),
        if shapes_agree { "yes" } else { "NO" }
    ));
    md.push_str("- cached: the cache file read from disk, then the module (PyTorch has no cache reader: its figure is the module alone); train step: forward, focal loss, backward, AdamW on 2 images from cached features\n\n");
    md.push_str("| path | detclip ms | PyTorch ms | ratio | detclip regions/s | PyTorch regions/s |\n|---|---:|---:|---:|---:|---:|\n");
    let rows = [
        ("module (features in memory)", ours.module, theirs("module")),
        ("cached (file + module)", ours.cached, theirs("module")),
        (
            "on the fly (SAM + CLIP + module)",
            ours.on_the_fly,
            theirs("on_the_fly"),
        ),
    ];
    for (name, o, t) in rows {
        md.push_str(&format!(
            "| {name} | {o:.0} | {t:.0} | {:.2} | {} | {} |\n",
            o / t,
            rate(per_s(o)),
            rate(per_s(t))
        ));
    }
    let t = theirs("train_step");
    md.push_str(&format!(
        "| train step (2 × {} boxes) | {:.0} | {t:.0} | {:.2} | | |\n",
        args.boxes,
        ours.train_step,
        ours.train_step / t
    ));
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(&args.out, &md).map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    println!("{md}\nwritten to {}", args.out.display());
    if shapes_agree {
        Ok(())
    } else {
        Err("detclip and PyTorch disagree on the output shapes".into())
    }
}
