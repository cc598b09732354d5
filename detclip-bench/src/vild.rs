//! ViLD: throughput of `detclip vild precompute` (CLIP crops embedded per second, with the
//! proposal network's time included) and the time of one training step (forward, ViLD's
//! whole loss, backward, AdamW update). No reference runs beside it: there is no PyTorch ViLD
//! to compare with here (the official code is TensorFlow 1). Weights are random; images are
//! the synthetic world's.

use std::path::PathBuf;
use std::time::Instant;

use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::Distribution;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::data::sample::SourceKind;
use detclip_core::data::synthetic::Split;
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_models::clip::{ClipConfig, ClipLayout, l2_normalize};
use detclip_models::vild::{
    SampleRng, TeacherRegions, VildConfig, VildLossConfig, VildTarget, vild_loss,
};
use detclip_train::data::SyntheticConfig;
use detclip_train::vild::{PrecomputeOptions, precompute};

use crate::common::{feature_flag, machine, median};

/// Arguments of `detclip-bench vild`.
#[derive(clap::Args, Debug)]
pub struct VildArgs {
    /// Device (cpu | wgpu[:N] | cuda[:N]).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Detector size: `r50` (ResNet-50 FPN, Mask R-CNN sizes) or `tiny`.
    #[arg(long, default_value = "r50")]
    detector: String,
    /// Images run through the precompute.
    #[arg(long, default_value_t = 2)]
    images: u64,
    /// Proposals kept per image (two crops each).
    #[arg(long, default_value_t = 32)]
    proposals: usize,
    /// Shorter side of the detector's input.
    #[arg(long, default_value_t = 512)]
    short_side: u32,
    /// Training steps timed (after one warm-up), batch of 2 images at `short_side`.
    #[arg(long, default_value_t = 2)]
    steps: usize,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/vild.md")]
    out: PathBuf,
}

struct Task(VildArgs);

#[derive(Debug)]
struct Numbers {
    precompute_s: f64,
    crops: usize,
    step_ms: f64,
}

impl BackendTask for Task {
    type Output = Result<Numbers, String>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let a = &self.0;
        let clip = ClipConfig::vit_b_32(ClipLayout::Hf);
        let e = clip.vision.embed_dim;
        let config = match a.detector.as_str() {
            "r50" => VildConfig::r50(e),
            "tiny" => VildConfig::tiny(e),
            other => return Err(format!("unknown --detector `{other}` (r50, tiny)")),
        };
        let err = |e: detclip_core::DetError| e.to_string();
        // Precompute (inference backend).
        let detector = config.init::<B::InnerBackend>(&device).map_err(err)?;
        let vision = clip.vision.init::<B::InnerBackend>(&device);
        let side = a.short_side;
        let sides = (side, side * 4 / 3);
        let samples =
            SyntheticConfig::new(0, a.images, sides, (4, side / 8), SourceKind::Detection)
                .samples(Split::Train)
                .map_err(err)?;
        let dir = std::env::temp_dir().join(format!("detclip-bench-vild-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let options = PrecomputeOptions {
            proposals: a.proposals,
            shard_size: 1,
            short_side: side,
            max_long: Some(side * 5 / 3),
            ..Default::default()
        };
        // Warm-up on the first image, then the timed run over all.
        precompute(
            &detector,
            &vision,
            &samples[..1],
            &dir.join("warmup"),
            &options,
            &device,
        )
        .map_err(err)?;
        let t0 = Instant::now();
        let report = precompute(
            &detector,
            &vision,
            &samples,
            &dir.join("run"),
            &options,
            &device,
        )
        .map_err(err)?;
        let precompute_s = t0.elapsed().as_secs_f64();
        let _ = std::fs::remove_dir_all(&dir);

        // Training steps (autodiff backend), batch 2.
        let mut model = config.init::<B>(&device).map_err(err)?;
        let [h, w] = [side as usize / 32 * 32, side as usize * 4 / 3 / 32 * 32];
        let images = Tensor::<B, 4>::random([2, 3, h, w], Distribution::Normal(0.0, 1.0), &device);
        let classes = l2_normalize(Tensor::<B, 2>::random(
            [20, e],
            Distribution::Normal(0.0, 1.0),
            &device,
        ));
        // Boxes as fractions of the image, so that any size works.
        let at = |b: [f32; 4]| {
            [
                b[0] * w as f32,
                b[1] * h as f32,
                b[2] * w as f32,
                b[3] * h as f32,
            ]
        };
        let target = |shift: f32| VildTarget {
            boxes: vec![
                at([0.1 + shift, 0.1, 0.5, 0.6]),
                at([0.55, 0.3 + shift, 0.95, 0.9]),
            ],
            labels: vec![3, 7],
            masks: None,
            teacher: Some(TeacherRegions {
                boxes: (0..a.proposals)
                    .map(|i| {
                        let f = i as f32 / a.proposals as f32;
                        at([0.5 * f, 0.4 * f, 0.5 * f + 0.3, 0.4 * f + 0.5])
                    })
                    .collect(),
                embeddings: l2_normalize(Tensor::random(
                    [a.proposals, e],
                    Distribution::Normal(0.0, 1.0),
                    &device,
                )),
            }),
        };
        let targets = vec![target(0.0), target(0.05)];
        let mut optim = AdamWConfig::new().init();
        let loss_config = VildLossConfig::new();
        let mut times = Vec::new();
        for step in 0..=a.steps {
            let t0 = Instant::now();
            let losses = vild_loss(
                &model,
                images.clone(),
                &targets,
                classes.clone(),
                &loss_config,
                &mut SampleRng::new(step as u64),
            )
            .map_err(err)?;
            let grads = GradientsParams::from_grads(losses.total.backward(), &model);
            model = optim.step(1e-4, model, grads);
            // Wait for the update: read one parameter back.
            let _ = model.background.val().into_data();
            if step > 0 {
                times.push(t0.elapsed().as_secs_f64() * 1e3);
            }
        }
        Ok(Numbers {
            precompute_s,
            crops: report.crops,
            step_ms: median(times),
        })
    }
}

/// `detclip-bench vild`.
pub fn run(args: VildArgs) -> Result<(), String> {
    let spec: DeviceSpec = args
        .device
        .parse()
        .map_err(|e: detclip_core::DetError| e.to_string())?;
    let (detector, images, proposals, side, steps, out) = (
        args.detector.clone(),
        args.images,
        args.proposals,
        args.short_side,
        args.steps,
        args.out.clone(),
    );
    let device = args.device.clone();
    let n = run_on(spec, Task(args)).map_err(|e| e.to_string())??;
    let table = format!(
        "# ViLD: precompute throughput and training step time\n\n\
         Machine: {}. Device: `{device}` (feature `{}`), release build.\n\n\
         Command: `cargo run -p detclip-bench --release -- vild --device {device} --detector {detector} \
         --images {images} --proposals {proposals} --short-side {side} --steps {steps}`\n\n\
         Random weights; CLIP ViT-B/32 image tower (224² crops); detector `{detector}`; synthetic images \
         with shorter side {side}.\n\n\
         | measure | value |\n|---|---|\n\
         | precompute: images | {images} |\n\
         | precompute: crops embedded (2 per proposal) | {} |\n\
         | precompute: wall time (RPN + crops + CLIP + write) | {:.2} s |\n\
         | **precompute: crops embedded per second** | **{:.1}** |\n\
         | training step (batch 2, {}×{}, forward + loss + backward + AdamW), median of {steps} | {:.0} ms |\n",
        machine(),
        match feature_flag(spec) {
            "" => "default, ndarray",
            f => f,
        },
        n.crops,
        n.precompute_s,
        n.crops as f64 / n.precompute_s,
        side / 32 * 32,
        side * 4 / 3 / 32 * 32,
        n.step_ms,
    );
    print!("{table}");
    if let Some(p) = out.parent() {
        std::fs::create_dir_all(p).map_err(|e| e.to_string())?;
    }
    std::fs::write(&out, table).map_err(|e| format!("{}: {e}", out.display()))
}
