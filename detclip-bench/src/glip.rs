//! GLIP-T: inference latency at 800×1333 for one prompt of 80 classes (COCO) and for the 1203
//! LVIS classes in prompt chunks, and the time of one training step, with random weights.
//!
//! Protocol (the figures published for GLIP-T range from 0.12 to 6 FPS because it differs):
//! batch 1; the image is `[1, 3, H, W]` (800×1333 by default, already resized and
//! normalised: no decoding or resizing is timed); every prompt is padded to 256 tokens as the
//! released model (`PAD_MAX`); times include the language encoder, the fusion tower, the head
//! and the post-processing (phrase scores, decoding, NMS, [`glip_detect`]). LVIS: GLIP's
//! chunked evaluation (`TEST.CHUNKED_EVALUATION: 40`, 40 classes per prompt, 31 prompts); the
//! image side (Swin-T + FPN) runs once and its pyramid is reused by every chunk
//! ([`Glip::image_features`] / [`Glip::forward_features`]); the total is image side + the sum
//! of the chunks. Training step: forward, [`glip_loss`] against random boxes, backward and one
//! AdamW update, on the autodiff backend.

use std::path::PathBuf;
use std::time::Instant;

use burn::module::{AutodiffModule, Module};
use burn::optim::{AdamWConfig, GradientsParams, Optimizer};
use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_models::glip::{
    Glip, GlipConfig, GlipLossConfig, GlipTarget, GlipTestConfig, PhraseTokens, glip_detect,
    glip_loss,
};

use crate::common::{Rng, feature_flag, machine, median};

/// Arguments of `detclip-bench glip`.
#[derive(clap::Args, Debug)]
pub struct GlipArgs {
    /// Device (cpu | wgpu[:N] | cuda[:N]).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Image height.
    #[arg(long, default_value_t = 800)]
    height: usize,
    /// Image width.
    #[arg(long, default_value_t = 1333)]
    width: usize,
    /// Timed repetitions of the 80-class forward (the median is reported), after one warm-up
    /// when `--warmup`.
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Run one untimed forward first.
    #[arg(long)]
    warmup: bool,
    /// LVIS chunks to time (of 31); the rest are counted at the mean of the timed ones, and
    /// the results say so. 0: all.
    #[arg(long, default_value_t = 0)]
    lvis_chunks: usize,
    /// Skip the training step.
    #[arg(long)]
    no_train: bool,
    /// Only the training step (the results file then has no inference rows).
    #[arg(long)]
    train_only: bool,
    /// Height and width of the training step's image (default: the inference size).
    #[arg(long, num_args = 2)]
    train_size: Option<Vec<usize>>,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/glip.md")]
    out: PathBuf,
}

/// Tokens per prompt (the released model pads every prompt to 256).
const TOKENS: usize = 256;
/// COCO classes in one prompt.
const COCO_CLASSES: usize = 80;
/// LVIS classes.
const LVIS_CLASSES: usize = 1203;
/// Classes per LVIS chunk (`TEST.CHUNKED_EVALUATION`).
const LVIS_CHUNK: usize = 40;

/// Random token ids (BERT's vocabulary, `[CLS]`/`[SEP]` at the ends) and the phrases of
/// `classes` classes laid out in the prompt as `tokens_per_class` tokens and a `.` each.
fn prompt<B: Backend>(
    classes: std::ops::Range<usize>,
    tokens_per_class: usize,
    rng: &mut Rng,
    device: &B::Device,
) -> (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Vec<PhraseTokens>) {
    let vocab = 30522.0;
    let mut ids: Vec<i64> = (0..TOKENS)
        .map(|_| 1000 + (rng.next() * (vocab - 1001.0)) as i64)
        .collect();
    ids[0] = 101;
    let mut phrases = Vec::new();
    let mut t = 1;
    for class in classes {
        phrases.push(PhraseTokens {
            class,
            tokens: (t..t + tokens_per_class).collect(),
        });
        t += tokens_per_class + 1;
    }
    assert!(t < TOKENS, "the phrases fit the prompt");
    ids[t] = 102;
    let mask: Vec<i64> = (0..TOKENS).map(|i| i64::from(i <= t)).collect();
    (
        Tensor::from_data(TensorData::new(ids, [1, TOKENS]), device),
        Tensor::from_data(TensorData::new(mask, [1, TOKENS]), device),
        phrases,
    )
}

fn image<B: Backend>(h: usize, w: usize, rng: &mut Rng, device: &B::Device) -> Tensor<B, 4> {
    let v: Vec<f32> = (0..3 * h * w).map(|_| rng.next() * 4.0 - 2.0).collect();
    Tensor::from_data(TensorData::new(v, [1, 3, h, w]), device)
}

/// What was measured.
#[derive(Debug, Default)]
struct Measured {
    params: usize,
    coco_ms: Vec<f64>,
    coco_detections: usize,
    lvis_image_ms: f64,
    lvis_chunk_ms: Vec<f64>,
    lvis_detections: usize,
    train_ms: Option<f64>,
    train_loss: Option<f32>,
}

struct Task {
    inference: bool,
    args_h: usize,
    args_w: usize,
    reps: usize,
    warmup: bool,
    lvis_chunks: usize,
    train: Option<[usize; 2]>,
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl Task {
    fn inference<B: DetclipOps>(
        &self,
        model: &Glip<B>,
        device: &B::Device,
        m: &mut Measured,
    ) -> Result<(), String> {
        let mut rng = Rng(7);
        let img = image::<B>(self.args_h, self.args_w, &mut rng, device);
        let config = GlipTestConfig::default();
        let geometry = GlipConfig::glip_t().geometry();
        // 80 classes: 2 tokens and a separator each (241 of 256 tokens).
        let (ids, mask, phrases) = prompt::<B>(0..COCO_CLASSES, 2, &mut rng, device);
        let coco = || -> Result<usize, String> {
            let out = model
                .forward(img.clone(), ids.clone(), mask.clone())
                .map_err(err)?;
            let dets = glip_detect(
                &out,
                std::slice::from_ref(&phrases),
                &[0],
                &[(self.args_h, self.args_w)],
                &config,
                &geometry,
            )
            .map_err(err)?;
            Ok(dets[0].scores.len())
        };
        if self.warmup {
            eprintln!("glip: warm-up…");
            coco()?;
        }
        for r in 0..self.reps.max(1) {
            eprintln!("glip: 80 classes, run {}…", r + 1);
            let t = Instant::now();
            m.coco_detections = coco()?;
            B::sync(device).map_err(|e| format!("{e:?}"))?;
            m.coco_ms.push(ms_since(t));
        }
        // LVIS: the image side once, then every chunk (5 tokens per class: 40·6 + 1 tokens).
        let chunks = LVIS_CLASSES.div_ceil(LVIS_CHUNK);
        let timed = if self.lvis_chunks == 0 {
            chunks
        } else {
            self.lvis_chunks.min(chunks)
        };
        let t = Instant::now();
        let levels = model.image_features(img.clone()).map_err(err)?;
        B::sync(device).map_err(|e| format!("{e:?}"))?;
        m.lvis_image_ms = ms_since(t);
        for c in 0..timed {
            let classes = c * LVIS_CHUNK..((c + 1) * LVIS_CHUNK).min(LVIS_CLASSES);
            let (ids, mask, phrases) = prompt::<B>(classes, 5, &mut rng, device);
            eprintln!("glip: LVIS chunk {}/{chunks}…", c + 1);
            let t = Instant::now();
            let out = model
                .forward_features(levels.clone(), ids, mask, None)
                .map_err(err)?;
            let dets = glip_detect(
                &out,
                &[phrases],
                &[0],
                &[(self.args_h, self.args_w)],
                &config,
                &geometry,
            )
            .map_err(err)?;
            B::sync(device).map_err(|e| format!("{e:?}"))?;
            m.lvis_chunk_ms.push(ms_since(t));
            m.lvis_detections += dets[0].scores.len();
        }
        Ok(())
    }

    fn train_step<B: DetclipAutodiffBackend>(
        &self,
        model: Glip<B>,
        [h, w]: [usize; 2],
        device: &B::Device,
        m: &mut Measured,
    ) -> Result<(), String>
    where
        Glip<B>: AutodiffModule<B>,
    {
        let mut rng = Rng(11);
        let img = image::<B>(h, w, &mut rng, device);
        let (ids, mask, phrases) = prompt::<B>(0..COCO_CLASSES, 2, &mut rng, device);
        // Ten random boxes, each grounded to one class's tokens.
        let target = GlipTarget {
            boxes: (0..10)
                .map(|_| {
                    let (x, y) = (rng.next() * w as f32 * 0.7, rng.next() * h as f32 * 0.7);
                    let s = 32.0 + rng.next() * 200.0;
                    [x, y, (x + s).min(w as f32), (y + s).min(h as f32)]
                })
                .collect(),
            tokens: (0..10).map(|i| phrases[i * 7].tokens.clone()).collect(),
        };
        m.params = model.num_params();
        let mut optim = AdamWConfig::new().init::<B, Glip<B>>();
        eprintln!("glip: training step at {h}×{w}…");
        let t = Instant::now();
        let out = model.forward(img, ids, mask.clone()).map_err(err)?;
        let losses = glip_loss(
            &out,
            mask,
            &[target],
            &GlipLossConfig::default(),
            &GlipConfig::glip_t().geometry(),
        )
        .map_err(err)?;
        let total = losses.total();
        let grads = GradientsParams::from_grads(total.backward(), &model);
        let model = optim.step(1e-4, model, grads);
        B::sync(device).map_err(|e| format!("{e:?}"))?;
        m.train_ms = Some(ms_since(t));
        m.train_loss = Some(losses.total().into_scalar().elem::<f32>());
        drop(model);
        Ok(())
    }
}

impl BackendTask for Task {
    type Output = Result<Measured, String>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let mut m = Measured::default();
        if self.inference {
            eprintln!("glip: building GLIP-T…");
            let model = GlipConfig::glip_t()
                .init::<B::InnerBackend>(&device)
                .map_err(err)?;
            m.params = model.num_params();
            self.inference(&model, &device, &mut m)?;
        }
        if let Some(size) = self.train {
            let model = GlipConfig::glip_t().init::<B>(&device).map_err(err)?;
            self.train_step(model, size, &device, &mut m)?;
        }
        Ok(m)
    }
}

/// Runs the GLIP benchmark.
pub fn run(args: GlipArgs) -> Result<(), String> {
    let spec: DeviceSpec = args
        .device
        .parse()
        .map_err(|e: detclip_core::DetError| e.to_string())?;
    let train = if args.no_train {
        None
    } else {
        match args.train_size.as_deref() {
            Some([h, w]) => Some([*h, *w]),
            Some(_) => return Err("--train-size takes a height and a width".into()),
            None => Some([args.height, args.width]),
        }
    };
    let started = Instant::now();
    let task = |inference, train| Task {
        inference,
        args_h: args.height,
        args_w: args.width,
        reps: args.reps,
        warmup: args.warmup,
        lvis_chunks: args.lvis_chunks,
        train,
    };
    // Inference first, written before the (memory-hungry) training step runs.
    let mut m = Measured::default();
    if !args.train_only {
        m = run_on(spec, task(true, None)).map_err(err)??;
        write_report(&args, spec, None, &m, started.elapsed().as_secs_f64())?;
    }
    if train.is_some() {
        let t = run_on(spec, task(false, train)).map_err(err)??;
        m.train_ms = t.train_ms;
        m.train_loss = t.train_loss;
        write_report(&args, spec, train, &m, started.elapsed().as_secs_f64())?;
    }
    Ok(())
}

fn write_report(
    args: &GlipArgs,
    spec: DeviceSpec,
    train: Option<[usize; 2]>,
    m: &Measured,
    seconds: f64,
) -> Result<(), String> {
    let md = report(args, spec, train, m, seconds);
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(&args.out, &md).map_err(|e| format!("writing {}: {e}", args.out.display()))?;
    println!("{md}\nwritten to {}", args.out.display());
    Ok(())
}

fn report(
    args: &GlipArgs,
    spec: DeviceSpec,
    train: Option<[usize; 2]>,
    m: &Measured,
    seconds: f64,
) -> String {
    let (h, w) = (args.height, args.width);
    let chunks = LVIS_CLASSES.div_ceil(LVIS_CHUNK);
    let timed = m.lvis_chunk_ms.len();
    let chunk_sum: f64 = m.lvis_chunk_ms.iter().sum();
    let chunk_mean = chunk_sum / timed.max(1) as f64;
    let lvis_total = m.lvis_image_ms + chunk_sum + chunk_mean * (chunks - timed) as f64;
    let mut md = String::from("# GLIP-T inference and training step\n\n");
    md.push_str(&format!(
        "- machine: {}; device `{spec}` (Burn {}; the CPU backend is ndarray)\n",
        machine(),
        if matches!(spec, DeviceSpec::Cpu) {
            "ndarray"
        } else {
            "CubeCL"
        }
    ));
    md.push_str(&format!(
        "- command: `cargo run -p detclip-bench --release{} -- glip --device {} --height {h} --width {w} --reps {}{}{}{}{}` ({seconds:.0} s in all)\n",
        feature_flag(spec),
        args.device,
        args.reps,
        if args.warmup { " --warmup" } else { "" },
        if args.lvis_chunks > 0 { format!(" --lvis-chunks {}", args.lvis_chunks) } else { String::new() },
        if args.train_only { " --train-only" } else { "" },
        match (args.no_train, &args.train_size) {
            (true, _) => " --no-train".to_string(),
            (false, Some(s)) => format!(" --train-size {} {}", s[0], s[1]),
            _ => String::new(),
        },
    ));
    md.push_str(&format!(
        "- model: `GlipConfig::glip_t()` (Swin-T, BERT-base, FPN P3–P7, six X-MHA/BERT-layer/DyHead layers, 256 channels), random weights, {:.1} M parameters\n",
        m.params as f64 / 1e6
    ));
    md.push_str(&format!(
        "- protocol: batch 1, one `[1, 3, {h}, {w}]` image (resize, normalisation and decoding not timed); prompts padded to {TOKENS} tokens as the released model; inference on the inner backend (no autodiff); times include the language encoder, fusion, head and post-processing (phrase scores, box decoding, NMS); {} timed run(s) of the 80-class prompt{} (median)\n",
        m.coco_ms.len(),
        if args.warmup { " after one warm-up" } else { ", no warm-up" }
    ));
    md.push_str(&format!(
        "- LVIS: {LVIS_CLASSES} classes in {chunks} prompts of {LVIS_CHUNK} classes (GLIP's `TEST.CHUNKED_EVALUATION: 40`); the image side (Swin-T + FPN) runs once, then each chunk runs the language encoder, fusion tower, head and post-processing on the shared pyramid; {timed} of {chunks} chunks timed{}\n\n",
        if timed < chunks {
            format!(", the other {} counted at the timed chunks' mean", chunks - timed)
        } else {
            String::new()
        }
    ));
    md.push_str("| measurement | ms | FPS |\n|---|---:|---:|\n");
    if !m.coco_ms.is_empty() {
        inference_rows(&mut md, m, chunks, lvis_total);
    }
    if let (Some([th, tw]), Some(ms)) = (train, m.train_ms) {
        md.push_str(&format!(
            "| training step, batch 1 at {th}×{tw}: forward, loss (10 boxes), backward, AdamW (loss {:.3}) | {ms:.0} | |\n",
            m.train_loss.unwrap_or(f32::NAN)
        ));
    }
    md
}

fn inference_rows(md: &mut String, m: &Measured, chunks: usize, lvis_total: f64) {
    let coco = median(m.coco_ms.clone());
    let timed = m.lvis_chunk_ms.len();
    let chunk_mean = m.lvis_chunk_ms.iter().sum::<f64>() / timed.max(1) as f64;
    md.push_str(&format!(
        "| 80 classes, one prompt ({} detections) | {coco:.0} | {:.3} |\n",
        m.coco_detections,
        1e3 / coco
    ));
    md.push_str(&format!(
        "| LVIS: image side once (Swin-T + FPN) | {:.0} | |\n",
        m.lvis_image_ms
    ));
    md.push_str(&format!(
        "| LVIS: per chunk, mean of {timed} (min {:.0}, max {:.0}) | {chunk_mean:.0} | |\n",
        m.lvis_chunk_ms
            .iter()
            .copied()
            .fold(f64::INFINITY, f64::min),
        m.lvis_chunk_ms.iter().copied().fold(0.0, f64::max),
    ));
    md.push_str(&format!(
        "| LVIS: total, {chunks} chunks ({} detections before the per-image cap) | {lvis_total:.0} | {:.4} |\n",
        m.lvis_detections,
        1e3 / lvis_total
    ));
}
