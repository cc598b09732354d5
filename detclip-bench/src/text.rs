//! Text encoders on a whole vocabulary: LVIS's 1203 category names encoded by
//! all-MiniLM-L6-v2 (real weights, read from its Hugging Face folder; sentence embeddings),
//! BERT-base (random weights; last hidden states) and CLIP ViT-B's text tower (random
//! weights; projected end-of-text states, every name padded to the 77-token context as ViLD
//! and RegionSpot encode their classes), detclip vs sentence-transformers / transformers in the
//! same run, on the same names and token ids. The MiniLM embeddings of both sides are compared.

use std::path::PathBuf;

use burn::prelude::*;
use burn::tensor::TensorData;
use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_models::bert::BertConfig;
use detclip_models::clip::{ClipLayout, ClipTextConfig, EotPooling};
use detclip_models::hf::{SentenceEncoder, load_bert, pad_batch};

use crate::common::{Inputs, feature_flag, machine, run_reference, time_median};

/// Arguments of `detclip-bench text`.
#[derive(clap::Args, Debug)]
pub struct TextArgs {
    /// Device of detclip's models (cpu | wgpu[:N] | cuda[:N]).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// Timed passes over the vocabulary per model, after one warm-up (the median is reported).
    #[arg(long, default_value_t = 1)]
    reps: usize,
    /// Names per batch.
    #[arg(long, default_value_t = 128)]
    batch: usize,
    /// CPU threads of torch.
    #[arg(long, default_value_t = 2)]
    torch_threads: usize,
    /// The sentence-transformers folder of all-MiniLM-L6-v2.
    #[arg(long, default_value = "../shared/models/all-MiniLM-L6-v2")]
    minilm: PathBuf,
    /// LVIS's category list (a JSON list of objects with `name`).
    #[arg(long, default_value = "../shared/data/vocab/lvis_v1_categories.json")]
    vocabulary: PathBuf,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/text.md")]
    out: PathBuf,
    /// The Python interpreter with torch, transformers and sentence-transformers.
    #[arg(long, default_value = "python3")]
    python: String,
}

/// CLIP's context length, start and end-of-text ids.
const CLIP_CONTEXT: usize = 77;
const CLIP_SOT: i64 = 49406;
const CLIP_EOT: i64 = 49407;

/// The category names of an LVIS-style list, underscores as spaces (how LVIS prompts are
/// written).
fn read_names(path: &std::path::Path) -> Result<Vec<String>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let v: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let list = v
        .as_array()
        .or_else(|| v["categories"].as_array())
        .ok_or_else(|| format!("{}: not a list of categories", path.display()))?;
    list.iter()
        .map(|c| {
            c["name"]
                .as_str()
                .map(|n| n.replace('_', " "))
                .ok_or_else(|| format!("{}: a category without a name", path.display()))
        })
        .collect()
}

struct Measured {
    ms: f64,
    shape: String,
    params: usize,
}

struct Ours {
    args_batch: usize,
    reps: usize,
    minilm: PathBuf,
    names: Vec<String>,
    clip_ids: Vec<i64>,
}

fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

impl BackendTask for Ours {
    type Output = Result<(Vec<(&'static str, Measured)>, Vec<f32>), String>;

    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        type I<B> = <B as burn::tensor::backend::AutodiffBackend>::InnerBackend;
        let batch = self.args_batch.max(1);
        let sync = || I::<B>::sync(&device).map_err(|e| format!("{e:?}"));
        let mut out = Vec::new();
        // MiniLM: tokenise, encode, pool, normalise.
        eprintln!(
            "detclip: MiniLM sentence embeddings of {} names…",
            self.names.len()
        );
        let st = SentenceEncoder::<I<B>>::load(&self.minilm, &device).map_err(err)?;
        let mut embeddings = Vec::new();
        let (ms, _) = time_median(self.reps, &mut |first| {
            let e = st.encode(&self.names, batch).map_err(err)?;
            if first {
                embeddings = e
                    .clone()
                    .into_data()
                    .convert::<f32>()
                    .to_vec()
                    .map_err(|e| format!("{e:?}"))?;
            }
            sync()?;
            Ok(String::new())
        })?;
        out.push((
            "minilm",
            Measured {
                ms,
                shape: format!("[{}, {}]", self.names.len(), st.dim()),
                params: st.bert.model.num_params(),
            },
        ));
        // BERT-base (random weights) over the same WordPiece tokens.
        eprintln!("detclip: BERT-base…");
        let tokenizer = load_bert::<I<B>>(&self.minilm, None, false, &device)
            .map_err(err)?
            .tokenizer;
        let bert = BertConfig::base()
            .with_with_pooler(false)
            .init::<I<B>>(&device);
        let (ms, _) = time_median(self.reps, &mut |_| {
            for chunk in self.names.chunks(batch) {
                let enc = tokenizer.encode_batch(chunk).map_err(err)?;
                let (ids, mask, types) = pad_batch::<I<B>>(&enc, 0, &device).map_err(err)?;
                let _ = bert
                    .forward(ids, mask, Some(types))
                    .map_err(err)?
                    .last_hidden_state();
            }
            sync()?;
            Ok(String::new())
        })?;
        out.push((
            "bert",
            Measured {
                ms,
                shape: format!("[{}, L, 768]", self.names.len()),
                params: bert.num_params(),
            },
        ));
        // CLIP ViT-B text tower (random weights), 77-token rows.
        eprintln!("detclip: CLIP text tower…");
        let clip = ClipTextConfig::new()
            .with_layout(ClipLayout::Hf)
            .with_pooling(EotPooling::TokenId(CLIP_EOT as u32))
            .init::<I<B>>(&device);
        let rows: Vec<&[i64]> = self.clip_ids.chunks(CLIP_CONTEXT).collect();
        let (ms, _) = time_median(self.reps, &mut |_| {
            for chunk in rows.chunks(batch) {
                let flat: Vec<i64> = chunk.iter().flat_map(|r| r.iter().copied()).collect();
                let ids = Tensor::<I<B>, 2, Int>::from_data(
                    TensorData::new(flat, [chunk.len(), CLIP_CONTEXT]),
                    &device,
                );
                let _ = clip.forward(ids).map_err(err)?.text_embeds;
            }
            sync()?;
            Ok(String::new())
        })?;
        out.push((
            "clip",
            Measured {
                ms,
                shape: format!("[{}, 512]", self.names.len()),
                params: clip.num_params(),
            },
        ));
        Ok((out, embeddings))
    }
}

/// CLIP rows: start, the name's WordPiece ids (clamped below the start id), end, then end
/// tokens as padding to 77 (the HF tokenizer's padding) — the lengths of real CLIP prompts
/// up to BPE-vs-WordPiece differences, the same ids on both sides.
fn clip_rows(minilm: &std::path::Path, names: &[String]) -> Result<Vec<i64>, String> {
    type Cpu = detclip_core::backend::NdArrayBackend;
    let tok = load_bert::<Cpu>(minilm, None, false, &Default::default())
        .map_err(err)?
        .tokenizer;
    let mut rows = Vec::with_capacity(names.len() * CLIP_CONTEXT);
    for n in names {
        let enc = tok.encode(n).map_err(err)?;
        let inner = &enc.ids[1..enc.ids.len() - 1];
        let mut row = vec![CLIP_SOT];
        row.extend(
            inner
                .iter()
                .take(CLIP_CONTEXT - 2)
                .map(|&i| (i as i64).min(CLIP_SOT - 1)),
        );
        row.push(CLIP_EOT);
        row.resize(CLIP_CONTEXT, CLIP_EOT);
        rows.extend(row);
    }
    Ok(rows)
}

pub fn run(args: TextArgs) -> Result<(), String> {
    let spec: DeviceSpec = args.device.parse().map_err(err)?;
    if !args.minilm.join("config.json").is_file() {
        return Err(format!(
            "{}: no all-MiniLM-L6-v2 folder (../shared/models holds it; --minilm DIR)",
            args.minilm.display()
        ));
    }
    let names = read_names(&args.vocabulary)?;
    let clip_ids = clip_rows(&args.minilm, &names)?;
    let dir = std::env::temp_dir().join("detclip-bench");
    std::fs::create_dir_all(&dir).map_err(err)?;
    let inputs_path = dir.join("text_inputs.safetensors");
    let names_path = dir.join("text_names.json");
    let ref_path = dir.join("text_pytorch.json");
    std::fs::write(&names_path, serde_json::to_string(&names).map_err(err)?).map_err(err)?;
    let mut inputs = Inputs {
        tensors: Default::default(),
    };
    inputs.i64_shaped("clip_ids", vec![names.len(), CLIP_CONTEXT], &clip_ids);
    inputs.write(&inputs_path)?;
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("reference/pytorch_text.py");
    let reference = run_reference(
        &args.python,
        &script,
        &inputs_path,
        &ref_path,
        args.reps,
        spec,
        &[
            names_path.display().to_string(),
            args.minilm.display().to_string(),
            args.batch.to_string(),
            args.torch_threads.to_string(),
        ],
    )?;
    eprintln!("running detclip on {spec}…");
    let (ours, embeddings) = run_on(
        spec,
        Ours {
            args_batch: args.batch,
            reps: args.reps,
            minilm: args.minilm.clone(),
            names: names.clone(),
            clip_ids,
        },
    )
    .map_err(err)??;
    let theirs_embed: Vec<f32> = reference["minilm_embeddings"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_f64())
                .map(|v| v as f32)
                .collect()
        })
        .unwrap_or_default();
    let diff = if theirs_embed.len() == embeddings.len() && !embeddings.is_empty() {
        embeddings
            .iter()
            .zip(&theirs_embed)
            .map(|(a, b)| (a - b).abs())
            .fold(0f32, f32::max)
    } else {
        f32::NAN
    };
    let dev = reference["devices"]
        .as_array()
        .and_then(|d| d.last())
        .and_then(|d| d.as_str())
        .unwrap_or("cpu")
        .to_string();
    let mut md = format!(
        "# Text encoders on LVIS's {} names: detclip vs sentence-transformers / transformers\n\n",
        names.len()
    );
    md.push_str(&format!(
        "- machine: {}\n- detclip on device `{spec}` (inner backend, no autodiff); PyTorch on `{dev}`; PyTorch first, then detclip\n- reference: {}\n",
        machine(),
        reference["version"].as_str().unwrap_or("?")
    ));
    md.push_str(&format!(
        "- command: `cargo run -p detclip-bench --release{} -- text --device {} --reps {} --batch {} --torch-threads {}`\n",
        feature_flag(spec),
        args.device,
        args.reps,
        args.batch,
        args.torch_threads
    ));
    md.push_str(&format!(
        "- {} names per batch; time of the whole vocabulary (tokenising included for MiniLM and BERT), median of {} pass(es) after one warm-up\n",
        args.batch,
        args.reps.max(1)
    ));
    md.push_str("- minilm: all-MiniLM-L6-v2 from its folder, `SentenceEncoder::encode` vs `SentenceTransformer.encode` (mean pooling, L2 norm); real weights\n");
    md.push_str("- bert: `BertConfig::base()` vs `BertModel(BertConfig(), add_pooling_layer=False)`, random weights, MiniLM's tokenizer (the bert-base-uncased vocabulary), rows padded to the batch's longest\n");
    md.push_str("- clip: `ClipTextConfig::new()` (ViT-B text tower, HF layout) vs `CLIPTextModelWithProjection(CLIPTextConfig(eos_token_id=49407))`, random weights, rows of 77 ids\n");
    md.push_str(&format!(
        "- MiniLM embeddings of the two sides: max |diff| {diff:.2e}\n\n"
    ));
    md.push_str("| encoder | detclip ms | PyTorch ms | ratio | detclip names/s | PyTorch names/s | params (detclip / PyTorch) |\n|---|---:|---:|---:|---:|---:|---|\n");
    for (key, m) in &ours {
        let t = &reference["results"][&dev][*key];
        let t_ms = t["ms"].as_f64().unwrap_or(f64::NAN);
        let per_s = |ms: f64| names.len() as f64 / (ms / 1e3);
        md.push_str(&format!(
            "| {key} {} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} | {} / {} |\n",
            m.shape,
            m.ms,
            t_ms,
            m.ms / t_ms,
            per_s(m.ms),
            per_s(t_ms),
            m.params,
            t["params"].as_u64().unwrap_or(0)
        ));
    }
    if let Some(parent) = args.out.parent() {
        std::fs::create_dir_all(parent).map_err(err)?;
    }
    std::fs::write(&args.out, &md).map_err(|e| format!("{}: {e}", args.out.display()))?;
    println!("{md}\nwritten to {}", args.out.display());
    if diff.is_nan() || diff > 1e-4 {
        return Err(format!("MiniLM embeddings disagree: max |diff| {diff}"));
    }
    Ok(())
}
