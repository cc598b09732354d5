//! DetCLIPv2: inference cost against the vocabulary size, and the memory of max vs soft-max
//! region aggregation.
//!
//! - Latency: for 80 (COCO), 1203 (LVIS) and 13,204 (V3Det) concepts, the vocabulary is
//!   encoded once into a [`ConceptCache`](detclip_models::detclipv2::ConceptCache) (timed
//!   apart), then one image is scored against it: the image side does not depend on the
//!   vocabulary, only the final `[A, D] × [D, C]` product and the read-back of the scores do.
//! - Memory: the image-text contrastive loss at batch 64 (64 captions × 64 images × M concepts
//!   × K proposals of region–concept scores), forward and backward, with max matching and with
//!   soft-max aggregation: the size of one score tensor, and the peak resident memory the
//!   process gains (Linux `VmHWM`, reset before each run through `/proc/self/clear_refs`).
//!
//! There is no reference implementation to compare with (DetCLIPv2's code was not released).

use std::path::PathBuf;
use std::time::Instant;

use burn::prelude::*;
use burn::tensor::Distribution;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_models::align::{
    Aggregation, cross_scores, image_caption_similarity, text_to_image_contrastive,
};
use detclip_models::detclipv2::{ConceptCache, DetClipV2, DetClipV2Config};
use detclip_models::layers::l2_normalize_eps;

use crate::common::{feature_flag, machine, median};

/// Arguments of `detclip-bench detclipv2`.
#[derive(clap::Args, Debug)]
pub struct DetClipV2Args {
    /// Device (cpu | wgpu[:N] | cuda[:N]).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// The model: `small` (the synthetic-world preset) or `swin-t` (DetCLIPv2-T sizes).
    #[arg(long, default_value = "small")]
    model: String,
    /// Side of the square test image.
    #[arg(long, default_value_t = 320)]
    side: usize,
    /// Vocabulary sizes, comma-separated.
    #[arg(long, default_value = "80,1203,13204")]
    vocab: String,
    /// Concepts encoded per text-tower call while building the cache.
    #[arg(long, default_value_t = 1024)]
    chunk: usize,
    /// Timed images per vocabulary (after one warm-up); the median is reported.
    #[arg(long, default_value_t = 5)]
    reps: usize,
    /// Batch of the aggregation-memory measurement (captions = images).
    #[arg(long, default_value_t = 64)]
    batch: usize,
    /// Concepts per caption in the memory measurement.
    #[arg(long, default_value_t = 16)]
    concepts: usize,
    /// Proposals per image in the memory measurement (the paper's k).
    #[arg(long, default_value_t = 100)]
    proposals: usize,
    /// Embedding width in the memory measurement (DetCLIPv2-T: 512).
    #[arg(long, default_value_t = 512)]
    dim: usize,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/detclipv2.md")]
    out: PathBuf,
}

/// One vocabulary size's timings.
struct Latency {
    concepts: usize,
    encode_ms: f64,
    image_ms: f64,
    scored_ms: f64,
    anchors: usize,
}

/// One aggregation's memory and time.
struct Memory {
    name: String,
    score_bytes: usize,
    peak_gain: Option<u64>,
    ms: f64,
    loss: f32,
}

struct Task {
    args: DetClipV2Args,
}

/// Deterministic concept names of two words from a 400-word pool (hashed-word ids, as the
/// synthetic world's), distinct for up to 160,000 concepts.
fn vocabulary(n: usize) -> Vec<String> {
    (0..n)
        .map(|i| format!("w{} v{}", i % 400, i / 400))
        .collect()
}

fn config(name: &str) -> Result<DetClipV2Config, String> {
    match name {
        "small" => Ok(DetClipV2Config::small()),
        "swin-t" => Ok(DetClipV2Config::swin_t()),
        other => Err(format!("--model: unknown model `{other}` (small, swin-t)")),
    }
}

fn build_cache<B: Backend>(
    model: &DetClipV2<B>,
    names: &[String],
    chunk: usize,
) -> Result<ConceptCache<B>, String> {
    let mut parts = Vec::new();
    for c in names.chunks(chunk.max(1)) {
        parts.push(model.encode_concepts(c).map_err(|e| e.to_string())?);
    }
    Ok(ConceptCache {
        names: names.to_vec(),
        embeddings: Tensor::cat(parts, 0),
    })
}

fn sync<B: Backend>(device: &B::Device) -> Result<(), String> {
    B::sync(device).map_err(|e| format!("{e:?}"))
}

fn latency<B: DetclipOps>(
    model: &DetClipV2<B>,
    args: &DetClipV2Args,
    concepts: usize,
    device: &B::Device,
) -> Result<Latency, String> {
    let names = vocabulary(concepts);
    // Warm-up of the text tower, then the timed one-off encoding.
    build_cache(model, &names[..names.len().min(8)], args.chunk)?;
    let t0 = Instant::now();
    let cache = build_cache(model, &names, args.chunk)?;
    sync::<B>(device)?;
    let encode_ms = t0.elapsed().as_secs_f64() * 1e3;
    let image = Tensor::<B, 4>::random(
        [1, 3, args.side, args.side],
        Distribution::Normal(0.0, 1.0),
        device,
    );
    let mut anchors = 0;
    let mut run = |with_scores: bool| -> Result<f64, String> {
        let t0 = Instant::now();
        if with_scores {
            let (out, logits) = model
                .forward_cached(image.clone(), &cache)
                .map_err(|e| e.to_string())?;
            let [n, a, c] = logits.dims();
            anchors = a;
            let scores = (burn::tensor::activation::sigmoid(logits)
                * burn::tensor::activation::sigmoid(out.centerness).reshape([n, a, 1]))
            .sqrt();
            // The read-back every detector does before NMS.
            let v: Vec<f32> = scores
                .into_data()
                .convert::<f32>()
                .to_vec()
                .map_err(|e| format!("{e:?}"))?;
            if v.len() != n * a * c {
                return Err("short read-back".into());
            }
        } else {
            let out = model
                .forward_image(image.clone())
                .map_err(|e| e.to_string())?;
            let _ = out.regions.into_data();
        }
        Ok(t0.elapsed().as_secs_f64() * 1e3)
    };
    run(true)?;
    let scored: Vec<f64> = (0..args.reps.max(1))
        .map(|_| run(true))
        .collect::<Result<_, _>>()?;
    let image_only: Vec<f64> = (0..args.reps.max(1))
        .map(|_| run(false))
        .collect::<Result<_, _>>()?;
    Ok(Latency {
        concepts,
        encode_ms,
        image_ms: median(image_only),
        scored_ms: median(scored),
        anchors,
    })
}

/// `VmHWM` and `VmRSS` in KiB (Linux).
fn rss_kib() -> Option<(u64, u64)> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<u64>().ok())
    };
    Some((field("VmHWM:")?, field("VmRSS:")?))
}

/// Resets `VmHWM` to the current RSS (Linux ≥ 4.0); false when it cannot.
fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn memory<B: DetclipAutodiffBackend>(
    args: &DetClipV2Args,
    aggregation: Aggregation,
    device: &B::Device,
) -> Result<Memory, String> {
    let (b, m, k, d) = (args.batch, args.concepts, args.proposals, args.dim);
    let normal = Distribution::Normal(0.0, 1.0);
    let captions = l2_normalize_eps(Tensor::<B, 3>::random([b, m, d], normal, device), 1e-6)
        .detach()
        .require_grad();
    let proposals = l2_normalize_eps(Tensor::<B, 3>::random([b, k, d], normal, device), 1e-6)
        .detach()
        .require_grad();
    let cmask = Tensor::<B, 2>::ones([b, m], device);
    let pmask = Tensor::<B, 2>::ones([b, k], device);
    sync::<B>(device)?;
    let resettable = reset_peak();
    let before = rss_kib().map(|(_, rss)| rss);
    let t0 = Instant::now();
    let scores = cross_scores(captions.clone(), proposals.clone()).map_err(|e| e.to_string())?;
    let sim =
        image_caption_similarity(scores, cmask, pmask, aggregation).map_err(|e| e.to_string())?;
    let loss = text_to_image_contrastive(sim, 0.5).map_err(|e| e.to_string())?;
    let grads = loss.backward();
    let g = captions.grad(&grads).ok_or("no gradient")?;
    let _ = g.into_data();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    let peak = rss_kib().map(|(hwm, _)| hwm);
    let loss: f32 = loss.into_scalar().elem();
    Ok(Memory {
        name: match aggregation {
            Aggregation::Max => "max matching".into(),
            Aggregation::Softmax { tau } => format!("soft-max (τ_t = {tau})"),
        },
        score_bytes: b * b * m * k * 4,
        peak_gain: match (resettable, before, peak) {
            (true, Some(r), Some(p)) => Some(p.saturating_sub(r) * 1024),
            _ => None,
        },
        ms,
        loss,
    })
}

impl BackendTask for Task {
    type Output = Result<(Vec<Latency>, Vec<Memory>, usize), String>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let args = &self.args;
        let cfg = config(&args.model)?;
        let model = cfg
            .init::<B::InnerBackend>(&device)
            .map_err(|e| e.to_string())?;
        let params = model.num_params();
        let mut lat = Vec::new();
        for v in args.vocab.split(',') {
            let c: usize = v
                .trim()
                .parse()
                .map_err(|e| format!("--vocab `{v}`: {e}"))?;
            eprintln!("detclipv2: {c} concepts…");
            lat.push(latency(&model, args, c, &device)?);
        }
        drop(model);
        let mut mem = Vec::new();
        // Soft-max first: if the allocator keeps freed pages, max matching cannot look
        // smaller for that reason.
        for aggregation in [Aggregation::Softmax { tau: 0.5 }, Aggregation::Max] {
            eprintln!("detclipv2: aggregation memory, {aggregation:?}…");
            mem.push(memory::<B>(args, aggregation, &device)?);
        }
        Ok((lat, mem, params))
    }
}

fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / 1048576.0)
}

/// Runs the DetCLIPv2 benchmark and writes its Markdown.
pub fn run(args: DetClipV2Args) -> Result<(), String> {
    let spec: DeviceSpec = args
        .device
        .parse()
        .map_err(|e: detclip_core::DetError| e.to_string())?;
    config(&args.model)?;
    let out = args.out.clone();
    let command = format!(
        "cargo run -p detclip-bench --release{} -- detclipv2 --device {} --model {} --side {} \
         --vocab {} --reps {} --batch {} --concepts {} --proposals {} --dim {}",
        feature_flag(spec),
        args.device,
        args.model,
        args.side,
        args.vocab,
        args.reps,
        args.batch,
        args.concepts,
        args.proposals,
        args.dim
    );
    let (side, model_name, batch, m, k, d) = (
        args.side,
        args.model.clone(),
        args.batch,
        args.concepts,
        args.proposals,
        args.dim,
    );
    let (lat, mem, params) = run_on(spec, Task { args }).map_err(|e| e.to_string())??;
    let mut md = String::new();
    md.push_str("# DetCLIPv2: vocabulary size and region aggregation\n\n");
    md.push_str(&format!("- machine: {} ({spec})\n", machine()));
    md.push_str(&format!("- command: `{command}`\n"));
    md.push_str(&format!(
        "- model: `DetClipV2Config::{}()`, {params} parameters, random weights; one \
         {side}×{side} image; concept names of two hashed words\n\n",
        if model_name == "swin-t" {
            "swin_t"
        } else {
            "small"
        }
    ));
    md.push_str("## Latency against the vocabulary\n\n");
    md.push_str(
        "The vocabulary is encoded once (`encode`); per image, `image side` is backbone + FPN + \
         head alone and `scored` adds the region–concept logits against the cache, the scores \
         and their read-back to the host (what precedes NMS). Medians.\n\n",
    );
    md.push_str("| concepts | encode once (ms) | image side (ms) | scored (ms) | scored / image side | score tensor |\n");
    md.push_str("|---:|---:|---:|---:|---:|---:|\n");
    for l in &lat {
        md.push_str(&format!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.2} | 1×{}×{} |\n",
            l.concepts,
            l.encode_ms,
            l.image_ms,
            l.scored_ms,
            l.scored_ms / l.image_ms,
            l.anchors,
            l.concepts
        ));
    }
    md.push_str(&format!(
        "\n## Memory of the image-text loss at batch {batch}\n\n\
         {batch} captions × {batch} images × {m} concepts × {k} proposals, width {d}: \
         `cross_scores` → `image_caption_similarity` → `text_to_image_contrastive`, forward and \
         backward on the autodiff backend. `peak gain` is the rise of the process's peak \
         resident memory over the run (VmHWM reset first).\n\n"
    ));
    md.push_str("| aggregation | one score tensor | peak gain | time (ms) | loss |\n|---|---:|---:|---:|---:|\n");
    for r in &mem {
        md.push_str(&format!(
            "| {} | {} | {} | {:.0} | {:.4} |\n",
            r.name,
            mib(r.score_bytes as f64),
            r.peak_gain
                .map(|g| mib(g as f64))
                .unwrap_or_else(|| "n/a".into()),
            r.ms,
            r.loss
        ));
    }
    if let Some(parent) = out.parent() {
        std::fs::create_dir_all(parent).map_err(|e| e.to_string())?;
    }
    std::fs::write(&out, &md).map_err(|e| format!("writing {}: {e}", out.display()))?;
    println!("{md}\nwritten to {}", out.display());
    Ok(())
}
