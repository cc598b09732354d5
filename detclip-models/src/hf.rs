//! Text models from their Hugging Face folder: one call per model kind reads `config.json` as
//! transformers writes it, the weights (`model.safetensors` or `pytorch_model.bin`) through
//! the family's key map, and the fast tokenizer (`tokenizer.json`, with the padding token and
//! length limit of `tokenizer_config.json`).
//!
//! - [`load_bert`]: a BERT (`model_type: bert`, absolute positions, GELU), e.g.
//!   `bert-base-uncased` or `all-MiniLM-L6-v2`.
//! - [`SentenceEncoder::load`]: a sentence-transformers folder (`modules.json`: a Transformer,
//!   a Pooling module, optionally Normalize) — sentence embeddings as sentence-transformers
//!   computes them (its `cls` / `max` / `mean` / `mean_sqrt_len_tokens` pooling, concatenated
//!   in its order, then the L2 norm). Both the v2–v5 folder format (`pooling_mode_*_tokens`
//!   flags, `max_seq_length` in `sentence_bert_config.json`) and the v6 one (`pooling_mode`
//!   list, the limit in `tokenizer_config.json`) are read.
//! - [`load_clip`] / [`load_clip_text`]: a `CLIPModel` folder (nested `text_config` and
//!   `vision_config`, `projection_dim`, transformers' end-of-text pooling rule: `argmax` of the
//!   ids when `eos_token_id` is 2, else the first `eos_token_id`), or the text tower alone.
//!
//! Every file is size-checked before it is read and every field validated; a bad folder gives
//! one error naming the file and the field. The parameter count a config implies is checked
//! against the weight file's size before anything is allocated.

use std::path::{Path, PathBuf};

use burn::prelude::*;
use detclip_core::{DetError, Result};
use serde_json::Value;

use crate::bert::{Bert, BertConfig, hf_bert_keys};
use crate::clip::{
    Clip, ClipConfig, ClipLayout, ClipText, ClipTextConfig, ClipVisionConfig, EotPooling,
    hf_clip_keys, text_tower_keys,
};
use crate::import::{LoadOptions, load_checkpoint};
use crate::tokenizer::{TextTokenizer, TokenizedText, TokenizerOptions};

/// Largest JSON file of a model folder read (tokenizer.json of large vocabularies is ~10 MB).
const MAX_JSON_BYTES: u64 = 64 << 20;

/// Upper bounds on config sizes, so that a corrupt config cannot ask for terabytes.
const MAX_WIDTH: usize = 1 << 14;
const MAX_LAYERS: usize = 256;
const MAX_VOCAB: usize = 1 << 21;
const MAX_POSITIONS: usize = 1 << 16;

/// A JSON file of a model folder, read with a size cap.
struct JsonFile {
    path: String,
    value: Value,
}

fn dataset(file: &str, why: String) -> DetError {
    DetError::Dataset {
        file: file.to_string(),
        why,
    }
}

impl JsonFile {
    fn read(path: &Path) -> Result<Self> {
        let name = path.display().to_string();
        let meta = std::fs::metadata(path).map_err(|e| DetError::Io {
            path: name.clone(),
            msg: e.to_string(),
        })?;
        if !meta.is_file() {
            return Err(dataset(&name, "not a regular file".into()));
        }
        if meta.len() > MAX_JSON_BYTES {
            return Err(dataset(
                &name,
                format!(
                    "{} bytes, more than the {} a model folder's JSON may have",
                    meta.len(),
                    MAX_JSON_BYTES
                ),
            ));
        }
        let bytes = std::fs::read(path).map_err(|e| DetError::Io {
            path: name.clone(),
            msg: e.to_string(),
        })?;
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| DetError::Json {
            file: name.clone(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(dataset(&name, "the top level is not a JSON object".into()));
        }
        Ok(Self { path: name, value })
    }

    /// `true` when the file exists (a missing optional file is not an error).
    fn read_optional(path: &Path) -> Result<Option<Self>> {
        if path.exists() {
            Self::read(path).map(Some)
        } else {
            Ok(None)
        }
    }

    fn err(&self, field: &str, why: impl std::fmt::Display) -> DetError {
        dataset(&self.path, format!("field `{field}`: {why}"))
    }

    /// Field `key` of `obj` (a sub-object named `prefix` in messages, or the root).
    fn field<'a>(&self, obj: &'a Value, key: &str) -> Option<&'a Value> {
        obj.get(key).filter(|v| !v.is_null())
    }

    fn usize_in(
        &self,
        obj: &Value,
        prefix: &str,
        key: &str,
        default: Option<usize>,
        max: usize,
    ) -> Result<usize> {
        let name = format!("{prefix}{key}");
        let v = match (self.field(obj, key), default) {
            (Some(v), _) => v
                .as_u64()
                .ok_or_else(|| self.err(&name, format!("{v} is not a non-negative integer")))?
                as usize,
            (None, Some(d)) => d,
            (None, None) => return Err(self.err(&name, "missing")),
        };
        if v == 0 || v > max {
            return Err(self.err(&name, format!("{v} is not within 1..={max}")));
        }
        Ok(v)
    }

    fn f64_in(&self, obj: &Value, prefix: &str, key: &str, default: f64) -> Result<f64> {
        let name = format!("{prefix}{key}");
        match self.field(obj, key) {
            None => Ok(default),
            Some(v) => match v.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 && x < 1.0 => Ok(x),
                _ => Err(self.err(&name, format!("{v} is not a number in (0, 1)"))),
            },
        }
    }

    fn str_in<'a>(&self, obj: &'a Value, prefix: &str, key: &str) -> Result<Option<&'a str>> {
        match self.field(obj, key) {
            None => Ok(None),
            Some(v) => v
                .as_str()
                .map(Some)
                .ok_or_else(|| self.err(&format!("{prefix}{key}"), format!("{v} is not a string"))),
        }
    }

    fn bool_in(&self, obj: &Value, key: &str) -> Result<bool> {
        match self.field(obj, key) {
            None => Ok(false),
            Some(v) => v
                .as_bool()
                .ok_or_else(|| self.err(key, format!("{v} is not true or false"))),
        }
    }
}

/// A folder's file, or an error naming the folder and what it lacks.
fn required(dir: &Path, file: &str, what: &str) -> Result<PathBuf> {
    let path = dir.join(file);
    if path.is_file() {
        Ok(path)
    } else if !dir.is_dir() {
        Err(DetError::Io {
            path: dir.display().to_string(),
            msg: "no such folder (a Hugging Face model folder was expected)".into(),
        })
    } else {
        Err(DetError::Io {
            path: path.display().to_string(),
            msg: format!("no such file: a Hugging Face model folder holds {what}"),
        })
    }
}

/// The weights of a folder: `model.safetensors`, else `pytorch_model.bin`.
fn weights_file(dir: &Path) -> Result<PathBuf> {
    for name in ["model.safetensors", "pytorch_model.bin"] {
        let p = dir.join(name);
        if p.is_file() {
            return Ok(p);
        }
    }
    let sharded = [
        "model.safetensors.index.json",
        "pytorch_model.bin.index.json",
    ]
    .iter()
    .any(|n| dir.join(n).is_file());
    Err(DetError::Io {
        path: dir.join("model.safetensors").display().to_string(),
        msg: if sharded {
            "sharded weights (an `*.index.json` and several files) are not read; merge them into \
             one model.safetensors"
                .into()
        } else {
            "no such file, and no pytorch_model.bin either: the folder has no weights".into()
        },
    })
}

/// Refuses a config whose parameters cannot fit in the weight file (16 bits each at least),
/// before any of them is allocated.
fn check_weight_size(weights: &Path, config: &Path, params: u128) -> Result<()> {
    let len = std::fs::metadata(weights)
        .map_err(|e| DetError::Io {
            path: weights.display().to_string(),
            msg: e.to_string(),
        })?
        .len() as u128;
    if params * 2 > len {
        return Err(dataset(
            &config.display().to_string(),
            format!(
                "the sizes it gives mean {params} parameters, at least {} bytes, but {} holds \
                 {len} bytes: the config does not describe these weights",
                params * 2,
                weights.display()
            ),
        ));
    }
    Ok(())
}

/// The special token a `tokenizer_config.json` names under `key` (a string, or an added-token
/// object with `content`).
fn special_token(cfg: &JsonFile, key: &str) -> Result<Option<String>> {
    match cfg.field(&cfg.value, key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => v
            .get("content")
            .and_then(Value::as_str)
            .map(|s| Some(s.to_string()))
            .ok_or_else(|| cfg.err(key, format!("{v} is neither a string nor a token object"))),
    }
}

/// What the folder's tokenizer files say: the padding id and the length limit
/// (`model_max_length`, absent or absurd values meaning none).
fn tokenizer_settings(dir: &Path) -> Result<(Option<String>, Option<usize>)> {
    let Some(cfg) = JsonFile::read_optional(&dir.join("tokenizer_config.json"))? else {
        return Ok((None, None));
    };
    let pad = special_token(&cfg, "pad_token")?;
    let max = cfg
        .field(&cfg.value, "model_max_length")
        .and_then(Value::as_u64)
        .filter(|&m| m > 0 && m <= MAX_POSITIONS as u64)
        .map(|m| m as usize);
    Ok((pad, max))
}

/// Reads the tokenizer of a folder with `max_len` and the folder's padding token, and checks
/// its vocabulary against the model's.
fn folder_tokenizer(
    dir: &Path,
    max_len: usize,
    default_pad: &str,
    vocab_size: usize,
    config: &Path,
) -> Result<TextTokenizer> {
    let path = required(dir, "tokenizer.json", "tokenizer.json (the fast tokenizer)")?;
    let len = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
    if len > MAX_JSON_BYTES {
        return Err(dataset(
            &path.display().to_string(),
            format!("{len} bytes, more than {MAX_JSON_BYTES}"),
        ));
    }
    let (pad, _) = tokenizer_settings(dir)?;
    let probe = TextTokenizer::from_file(&path, TokenizerOptions::new(max_len))?;
    let pad_token = pad.unwrap_or_else(|| default_pad.to_string());
    let pad_id = probe.token_id(&pad_token).ok_or_else(|| {
        dataset(
            &dir.join("tokenizer_config.json").display().to_string(),
            format!(
                "field `pad_token`: `{pad_token}` is not in {}",
                path.display()
            ),
        )
    })?;
    if probe.vocab_size() != vocab_size {
        return Err(dataset(
            &path.display().to_string(),
            format!(
                "its vocabulary has {} tokens but {} says `vocab_size` {vocab_size}: the \
                 tokenizer is not this model's",
                probe.vocab_size(),
                config.display()
            ),
        ));
    }
    TextTokenizer::from_file(
        &path,
        TokenizerOptions::new(max_len)
            .with_pad_id(pad_id)
            .with_pad_to_max_len(false),
    )
}

/// Reads a BERT `config.json` as transformers writes it (`num_hidden_layers`,
/// `num_attention_heads`, …; absent fields take transformers' defaults). The model is built
/// without the pooler; see [`load_bert`].
///
/// # Errors
/// [`DetError::Io`] / [`DetError::Json`] for an unreadable file; [`DetError::Dataset`] naming
/// the field for another architecture (`model_type` other than `bert`), a
/// `position_embedding_type` other than `absolute`, a `hidden_act` other than `gelu`, and
/// sizes out of range or inconsistent.
pub fn read_bert_config(path: &Path) -> Result<BertConfig> {
    let f = JsonFile::read(path)?;
    let root = &f.value;
    match f.str_in(root, "", "model_type")? {
        Some("bert") => {}
        Some(other) => {
            return Err(f.err(
                "model_type",
                format!("`{other}` is not supported: this loader reads BERT (`bert`) models"),
            ));
        }
        None => return Err(f.err("model_type", "missing")),
    }
    if let Some(p) = f.str_in(root, "", "position_embedding_type")?
        && p != "absolute"
    {
        return Err(f.err(
            "position_embedding_type",
            format!("`{p}` is not supported (only `absolute`)"),
        ));
    }
    if let Some(a) = f.str_in(root, "", "hidden_act")?
        && a != "gelu"
    {
        return Err(f.err(
            "hidden_act",
            format!("`{a}` is not supported (only `gelu`)"),
        ));
    }
    let hidden = f.usize_in(root, "", "hidden_size", Some(768), MAX_WIDTH)?;
    let heads = f.usize_in(root, "", "num_attention_heads", Some(12), MAX_WIDTH)?;
    if !hidden.is_multiple_of(heads) {
        return Err(f.err(
            "num_attention_heads",
            format!("{heads} does not divide hidden_size {hidden}"),
        ));
    }
    Ok(BertConfig::new()
        .with_vocab_size(f.usize_in(root, "", "vocab_size", Some(30522), MAX_VOCAB)?)
        .with_hidden_size(hidden)
        .with_num_layers(f.usize_in(root, "", "num_hidden_layers", Some(12), MAX_LAYERS)?)
        .with_num_heads(heads)
        .with_intermediate_size(f.usize_in(
            root,
            "",
            "intermediate_size",
            Some(3072),
            4 * MAX_WIDTH,
        )?)
        .with_max_position_embeddings(f.usize_in(
            root,
            "",
            "max_position_embeddings",
            Some(512),
            MAX_POSITIONS,
        )?)
        .with_type_vocab_size(f.usize_in(root, "", "type_vocab_size", Some(2), 1024)?)
        .with_layer_norm_eps(f.f64_in(root, "", "layer_norm_eps", 1e-12)?)
        .with_with_pooler(false))
}

fn bert_params(c: &BertConfig) -> u128 {
    let (h, i) = (c.hidden_size as u128, c.intermediate_size as u128);
    let emb = (c.vocab_size + c.max_position_embeddings + c.type_vocab_size) as u128 * h + 2 * h;
    let layer = 4 * (h * h + h) + 2 * (h * i) + i + h + 4 * h;
    emb + c.num_layers as u128 * layer
}

/// A BERT and its tokenizer, read from a Hugging Face folder.
#[derive(Debug)]
pub struct HfBert<B: Backend> {
    /// The encoder (without the pooler unless asked for).
    pub model: Bert<B>,
    /// Its sizes.
    pub config: BertConfig,
    /// The folder's fast tokenizer: truncation at `max_len`, no fixed padding (rows keep their
    /// length; [`pad_batch`] pads a batch with the folder's padding id).
    pub tokenizer: TextTokenizer,
    /// The folder.
    pub dir: PathBuf,
}

/// Reads a BERT folder: `config.json` ([`read_bert_config`]), the weights through
/// [`hf_bert_keys`] (the pooler loaded when `with_pooler`), `tokenizer.json`. `max_len` is the
/// tokenizer's limit, special tokens included (`None`: `tokenizer_config.json`'s
/// `model_max_length`, capped at `max_position_embeddings`).
///
/// # Errors
/// As [`read_bert_config`]; [`DetError::Io`] naming a missing file; [`DetError::Checkpoint`]
/// for weights whose keys or shapes disagree with the config; [`DetError::Dataset`] for a
/// tokenizer whose vocabulary size is not the config's, or a config that implies more
/// parameters than the weight file holds.
pub fn load_bert<B: Backend>(
    dir: &Path,
    max_len: Option<usize>,
    with_pooler: bool,
    device: &B::Device,
) -> Result<HfBert<B>> {
    let config_path = required(dir, "config.json", "config.json")?;
    let config = read_bert_config(&config_path)?.with_with_pooler(with_pooler);
    let weights = weights_file(dir)?;
    check_weight_size(&weights, &config_path, bert_params(&config))?;
    let (_, folder_max) = tokenizer_settings(dir)?;
    let max_len = max_len
        .or(folder_max)
        .unwrap_or(config.max_position_embeddings)
        .min(config.max_position_embeddings);
    let tokenizer = folder_tokenizer(dir, max_len, "[PAD]", config.vocab_size, &config_path)?;
    let mut model = config.init::<B>(device);
    load_checkpoint(
        &mut model,
        &weights,
        &hf_bert_keys(),
        &LoadOptions::default(),
    )?;
    Ok(HfBert {
        model,
        config,
        tokenizer,
        dir: dir.to_path_buf(),
    })
}

/// Loads the weights of the BERT folder `dir` (`model.safetensors` or `pytorch_model.bin`,
/// through [`hf_bert_keys`]) into `bert`, which must have the folder's sizes — the language
/// side of a detector built from [`read_bert_config`] (GLIP's BERT slot).
///
/// # Errors
/// [`DetError::Io`] when the folder has no weights; [`DetError::Checkpoint`] for keys or
/// shapes that disagree.
pub fn load_bert_weights<B: Backend>(bert: &mut Bert<B>, dir: &Path) -> Result<()> {
    let weights = weights_file(dir)?;
    load_checkpoint(bert, &weights, &hf_bert_keys(), &LoadOptions::default())?;
    Ok(())
}

/// Token ids, attention mask and token-type ids of a padded batch, each `[N, L]`.
pub type PaddedBatch<B> = (Tensor<B, 2, Int>, Tensor<B, 2, Int>, Tensor<B, 2, Int>);

/// A batch of encodings padded to the longest with `pad_id`: `(ids, attention_mask,
/// type_ids)`, each `[N, L]`.
///
/// # Errors
/// [`DetError::InvalidOption`] for an empty batch.
pub fn pad_batch<B: Backend>(
    texts: &[TokenizedText],
    pad_id: u32,
    device: &B::Device,
) -> Result<PaddedBatch<B>> {
    let len = texts
        .iter()
        .map(|t| t.len())
        .max()
        .ok_or_else(|| DetError::InvalidOption {
            op: "pad_batch",
            why: "no texts".into(),
        })?;
    let rows = |f: &dyn Fn(&TokenizedText) -> &Vec<u32>, pad: u32| {
        let data: Vec<i64> = texts
            .iter()
            .flat_map(|t| {
                let row = f(t);
                row.iter()
                    .map(|&v| v as i64)
                    .chain(std::iter::repeat_n(pad as i64, len - row.len()))
                    .collect::<Vec<_>>()
            })
            .collect();
        Tensor::<B, 2, Int>::from_data(TensorData::new(data, [texts.len(), len]), device)
    };
    Ok((
        rows(&|t| &t.ids, pad_id),
        rows(&|t| &t.attention_mask, 0),
        rows(&|t| &t.type_ids, 0),
    ))
}

/// One of sentence-transformers' pooling modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PoolingMode {
    /// The first token's state.
    Cls,
    /// The element-wise maximum over the tokens.
    Max,
    /// The mean over the tokens.
    Mean,
    /// The sum over the tokens divided by the square root of their count.
    MeanSqrtLen,
}

impl PoolingMode {
    fn parse(name: &str) -> Option<Self> {
        Some(match name {
            "cls" => Self::Cls,
            "max" => Self::Max,
            "mean" => Self::Mean,
            "mean_sqrt_len_tokens" => Self::MeanSqrtLen,
            _ => return None,
        })
    }
}

/// How a sentence-transformers folder turns token states into one vector.
#[derive(Debug, Clone, PartialEq)]
pub struct SentencePooling {
    /// The modes, concatenated in this order.
    pub modes: Vec<PoolingMode>,
    /// Whether the result is divided by its L2 norm (a `Normalize` module).
    pub normalize: bool,
    /// Token limit (special tokens included).
    pub max_seq_length: Option<usize>,
    /// Whether texts are lower-cased before tokenising (`do_lower_case`).
    pub lower_case: bool,
}

/// Reads `modules.json` and the Pooling module's `config.json` of a sentence-transformers
/// folder.
///
/// # Errors
/// [`DetError::Dataset`] naming the file and field for a module type other than Transformer
/// (at the folder's root), Pooling and Normalize, for pooling modes other than `cls`, `max`,
/// `mean`, `mean_sqrt_len_tokens`, or no mode at all.
pub fn read_sentence_pooling(dir: &Path) -> Result<SentencePooling> {
    let modules_path = required(
        dir,
        "modules.json",
        "modules.json (a sentence-transformers model)",
    )?;
    let name = modules_path.display().to_string();
    let len = std::fs::metadata(&modules_path)
        .map(|m| m.len())
        .unwrap_or(0);
    if len > MAX_JSON_BYTES {
        return Err(dataset(&name, format!("{len} bytes")));
    }
    let text = std::fs::read(&modules_path).map_err(|e| DetError::Io {
        path: name.clone(),
        msg: e.to_string(),
    })?;
    let modules: Value = serde_json::from_slice(&text).map_err(|e| DetError::Json {
        file: name.clone(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    let list = modules
        .as_array()
        .ok_or_else(|| dataset(&name, "the top level is not a list of modules".into()))?;
    let mut pooling_dir = None;
    let mut normalize = false;
    let mut transformer = false;
    for (i, m) in list.iter().enumerate() {
        let kind = m.get("type").and_then(Value::as_str).unwrap_or("");
        let path = m.get("path").and_then(Value::as_str).unwrap_or("");
        match kind.rsplit('.').next().unwrap_or("") {
            "Transformer" if path.is_empty() => transformer = true,
            "Transformer" => {
                return Err(dataset(
                    &name,
                    format!(
                        "module {i}: the Transformer lives in `{path}`; only a Transformer at \
                         the folder's root is read"
                    ),
                ));
            }
            "Pooling" => {
                if path.contains("..") || Path::new(path).is_absolute() {
                    return Err(dataset(
                        &name,
                        format!("module {i}: path `{path}` leaves the folder"),
                    ));
                }
                pooling_dir = Some(dir.join(path));
            }
            "Normalize" => normalize = true,
            _ => {
                return Err(dataset(
                    &name,
                    format!(
                        "module {i}: type `{kind}` is not supported (Transformer, Pooling and \
                         Normalize are)"
                    ),
                ));
            }
        }
    }
    if !transformer {
        return Err(dataset(&name, "no Transformer module".into()));
    }
    let pooling_dir = pooling_dir.ok_or_else(|| dataset(&name, "no Pooling module".into()))?;
    let cfg = JsonFile::read(&required(
        &pooling_dir,
        "config.json",
        "the pooling config",
    )?)?;
    let mut modes = Vec::new();
    match cfg.field(&cfg.value, "pooling_mode") {
        // sentence-transformers ≥ 6: one name or a list, concatenated in that order.
        Some(v) => {
            let names: Vec<&Value> = match v {
                Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            for n in names {
                let s = n.as_str().unwrap_or("");
                modes.push(PoolingMode::parse(s).ok_or_else(|| {
                    cfg.err(
                        "pooling_mode",
                        format!("{n} is not supported (cls, max, mean, mean_sqrt_len_tokens are)"),
                    )
                })?);
            }
        }
        // Earlier versions: one flag per mode, concatenated in this order.
        None => {
            for (key, mode) in [
                ("pooling_mode_cls_token", Some(PoolingMode::Cls)),
                ("pooling_mode_max_tokens", Some(PoolingMode::Max)),
                ("pooling_mode_mean_tokens", Some(PoolingMode::Mean)),
                (
                    "pooling_mode_mean_sqrt_len_tokens",
                    Some(PoolingMode::MeanSqrtLen),
                ),
                ("pooling_mode_weightedmean_tokens", None),
                ("pooling_mode_lasttoken", None),
            ] {
                if cfg.bool_in(&cfg.value, key)? {
                    modes.push(mode.ok_or_else(|| cfg.err(key, "this mode is not supported"))?);
                }
            }
        }
    }
    if modes.is_empty() {
        return Err(cfg.err("pooling_mode", "no pooling mode is set"));
    }
    if let Some(false) = cfg
        .field(&cfg.value, "include_prompt")
        .and_then(Value::as_bool)
    {
        return Err(cfg.err("include_prompt", "false is not supported"));
    }
    let mut max_seq_length = None;
    let mut lower_case = false;
    if let Some(sb) = JsonFile::read_optional(&dir.join("sentence_bert_config.json"))? {
        if let Some(v) = sb.field(&sb.value, "max_seq_length") {
            max_seq_length = Some(
                v.as_u64()
                    .filter(|&m| m > 0 && m <= MAX_POSITIONS as u64)
                    .ok_or_else(|| sb.err("max_seq_length", format!("{v} is not within 1..")))?
                    as usize,
            );
        }
        lower_case = sb.bool_in(&sb.value, "do_lower_case")?;
    }
    Ok(SentencePooling {
        modes,
        normalize,
        max_seq_length,
        lower_case,
    })
}

impl SentencePooling {
    /// Pools token states `[N, L, D]` under `mask` `[N, L]` (1 token, 0 padding) into
    /// `[N, D · modes]`, as sentence-transformers' Pooling and Normalize modules.
    pub fn pool<B: Backend>(&self, tokens: Tensor<B, 3>, mask: Tensor<B, 2, Int>) -> Tensor<B, 2> {
        let [n, l, d] = tokens.dims();
        let keep = mask.clone().float().reshape([n, l, 1]);
        let count = keep.clone().sum_dim(1).reshape([n, 1]).clamp_min(1e-9);
        let sum = || (tokens.clone() * keep.clone()).sum_dim(1).reshape([n, d]);
        let parts: Vec<Tensor<B, 2>> = self
            .modes
            .iter()
            .map(|mode| match mode {
                PoolingMode::Cls => tokens.clone().slice(s![.., 0..1, ..]).reshape([n, d]),
                PoolingMode::Max => tokens
                    .clone()
                    .mask_fill(
                        mask.clone()
                            .equal_elem(0)
                            .reshape([n, l, 1])
                            .expand([n, l, d]),
                        f32::NEG_INFINITY,
                    )
                    .max_dim(1)
                    .reshape([n, d]),
                PoolingMode::Mean => sum() / count.clone(),
                PoolingMode::MeanSqrtLen => sum() / count.clone().sqrt(),
            })
            .collect();
        let out = Tensor::cat(parts, 1);
        if self.normalize {
            // torch.nn.functional.normalize: x / max(‖x‖, 1e-12).
            let norm = out
                .clone()
                .powi_scalar(2)
                .sum_dim(1)
                .sqrt()
                .clamp_min(1e-12);
            out / norm
        } else {
            out
        }
    }
}

/// A sentence-transformers model: a BERT, its tokenizer and the pooling.
#[derive(Debug)]
pub struct SentenceEncoder<B: Backend> {
    /// The BERT and its tokenizer (truncating at the folder's `max_seq_length`).
    pub bert: HfBert<B>,
    /// How token states become one vector.
    pub pooling: SentencePooling,
}

impl<B: Backend> SentenceEncoder<B> {
    /// Reads a sentence-transformers folder ([`read_sentence_pooling`], [`load_bert`] with the
    /// folder's `max_seq_length`).
    ///
    /// # Errors
    /// As those two.
    pub fn load(dir: &Path, device: &B::Device) -> Result<Self> {
        let pooling = read_sentence_pooling(dir)?;
        let bert = load_bert(dir, pooling.max_seq_length, false, device)?;
        Ok(Self { bert, pooling })
    }

    /// Width of the embeddings.
    pub fn dim(&self) -> usize {
        self.bert.config.hidden_size * self.pooling.modes.len()
    }

    /// The token ids, mask and type ids of `texts` as sentence-transformers tokenises them
    /// (trimmed, lower-cased when the folder says so, truncated, padded to the longest).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for an empty batch or an empty text.
    pub fn tokenize(&self, texts: &[impl AsRef<str>]) -> Result<PaddedBatch<B>> {
        let prepared: Vec<String> = texts
            .iter()
            .map(|t| {
                let t = t.as_ref().trim();
                if self.pooling.lower_case {
                    t.to_lowercase()
                } else {
                    t.to_string()
                }
            })
            .collect();
        let encoded = self.bert.tokenizer.encode_batch(&prepared)?;
        let pad = self.bert.tokenizer.options().pad_id;
        pad_batch(
            &encoded,
            pad,
            &self.bert.model.embeddings.norm.gamma.device(),
        )
    }

    /// Sentence embeddings `[N, dim]` of `texts`, encoded in batches of `batch` texts.
    ///
    /// # Errors
    /// As [`SentenceEncoder::tokenize`].
    pub fn encode(&self, texts: &[impl AsRef<str>], batch: usize) -> Result<Tensor<B, 2>> {
        let batch = batch.max(1);
        let mut out = Vec::new();
        for chunk in texts.chunks(batch) {
            let (ids, mask, types) = self.tokenize(chunk)?;
            let hidden = self
                .bert
                .model
                .forward(ids, mask.clone(), Some(types))?
                .last_hidden_state();
            out.push(self.pooling.pool(hidden, mask));
        }
        if out.is_empty() {
            return Err(DetError::InvalidOption {
                op: "SentenceEncoder::encode",
                why: "no texts".into(),
            });
        }
        Ok(Tensor::cat(out, 0))
    }
}

/// What a CLIP folder's `config.json` gives beyond the sizes.
#[derive(Debug, Clone)]
pub struct HfClipConfig {
    /// The sizes (HF layout; the vision tower is absent from a text-only folder and left at
    /// its defaults then).
    pub config: ClipConfig,
    /// Whether the folder holds the image tower (`model_type: clip`) or the text tower only
    /// (`clip_text_model`).
    pub has_vision: bool,
}

fn quick_gelu_only(f: &JsonFile, obj: &Value, prefix: &str) -> Result<()> {
    match f.str_in(obj, prefix, "hidden_act")? {
        None | Some("quick_gelu") => Ok(()),
        Some(a) => Err(f.err(
            &format!("{prefix}hidden_act"),
            format!("`{a}` is not supported (only `quick_gelu`, as OpenAI's CLIP)"),
        )),
    }
}

/// Reads a CLIP `config.json` as transformers writes it: a `CLIPModel` (`model_type: clip`,
/// nested `text_config` / `vision_config`, the top-level `projection_dim`) or a text tower
/// alone (`clip_text_model`, `CLIPTextModelWithProjection`). Absent fields take transformers'
/// defaults. The pooling follows transformers: `eos_token_id` 2 (the old configs) means the
/// `argmax` of the ids, any other id its first occurrence.
///
/// # Errors
/// As [`read_bert_config`], for `model_type` other than `clip`/`clip_text_model`, an
/// activation other than `quick_gelu`, or `num_channels` other than 3.
pub fn read_clip_config(path: &Path) -> Result<HfClipConfig> {
    let f = JsonFile::read(path)?;
    let root = &f.value;
    let (text, text_prefix, vision, has_vision) = match f.str_in(root, "", "model_type")? {
        Some("clip") => {
            let text = f.field(root, "text_config").cloned().unwrap_or(Value::Null);
            let vision = f
                .field(root, "vision_config")
                .cloned()
                .unwrap_or(Value::Null);
            for (v, k) in [(&text, "text_config"), (&vision, "vision_config")] {
                if !v.is_object() && !v.is_null() {
                    return Err(f.err(k, "not an object"));
                }
            }
            let obj = |v: Value| {
                if v.is_null() {
                    serde_json::json!({})
                } else {
                    v
                }
            };
            (obj(text), "text_config.", obj(vision), true)
        }
        Some("clip_text_model") => (root.clone(), "", serde_json::json!({}), false),
        Some(other) => {
            return Err(f.err(
                "model_type",
                format!(
                    "`{other}` is not supported: this loader reads CLIP (`clip`, \
                     `clip_text_model`)"
                ),
            ));
        }
        None => return Err(f.err("model_type", "missing")),
    };
    let projection = f.usize_in(
        if has_vision { root } else { &text },
        "",
        "projection_dim",
        Some(512),
        MAX_WIDTH,
    )?;
    quick_gelu_only(&f, &text, text_prefix)?;
    let tp = text_prefix;
    let width = f.usize_in(&text, tp, "hidden_size", Some(512), MAX_WIDTH)?;
    let heads = f.usize_in(&text, tp, "num_attention_heads", Some(8), MAX_WIDTH)?;
    let eos = f
        .field(&text, "eos_token_id")
        .map(|v| {
            v.as_u64()
                .ok_or_else(|| f.err(&format!("{tp}eos_token_id"), format!("{v} is not an id")))
        })
        .transpose()?
        .unwrap_or(49407);
    let pooling = if eos == 2 {
        EotPooling::ArgMax
    } else {
        EotPooling::TokenId(eos as u32)
    };
    let text_config = ClipTextConfig::new()
        .with_vocab_size(f.usize_in(&text, tp, "vocab_size", Some(49408), MAX_VOCAB)?)
        .with_context_length(f.usize_in(
            &text,
            tp,
            "max_position_embeddings",
            Some(77),
            MAX_POSITIONS,
        )?)
        .with_width(width)
        .with_layers(f.usize_in(&text, tp, "num_hidden_layers", Some(12), MAX_LAYERS)?)
        .with_heads(heads)
        .with_mlp_width(f.usize_in(&text, tp, "intermediate_size", Some(2048), 4 * MAX_WIDTH)?)
        .with_embed_dim(projection)
        .with_layer_norm_eps(f.f64_in(&text, tp, "layer_norm_eps", 1e-5)?)
        .with_layout(ClipLayout::Hf)
        .with_pooling(pooling);
    let vp = "vision_config.";
    let mut vision_config = ClipVisionConfig::new().with_embed_dim(projection);
    if has_vision {
        quick_gelu_only(&f, &vision, vp)?;
        if let Some(c) = f.field(&vision, "num_channels")
            && c.as_u64() != Some(3)
        {
            return Err(f.err("vision_config.num_channels", format!("{c} is not 3")));
        }
        vision_config = vision_config
            .with_image_size(f.usize_in(&vision, vp, "image_size", Some(224), MAX_WIDTH)?)
            .with_patch_size(f.usize_in(&vision, vp, "patch_size", Some(32), MAX_WIDTH)?)
            .with_width(f.usize_in(&vision, vp, "hidden_size", Some(768), MAX_WIDTH)?)
            .with_layers(f.usize_in(&vision, vp, "num_hidden_layers", Some(12), MAX_LAYERS)?)
            .with_heads(f.usize_in(&vision, vp, "num_attention_heads", Some(12), MAX_WIDTH)?)
            .with_mlp_width(f.usize_in(
                &vision,
                vp,
                "intermediate_size",
                Some(3072),
                4 * MAX_WIDTH,
            )?)
            .with_layer_norm_eps(f.f64_in(&vision, vp, "layer_norm_eps", 1e-5)?)
            .with_layout(ClipLayout::Hf);
    }
    let config = ClipConfig::new(vision_config, text_config);
    config
        .validate()
        .map_err(|e| dataset(&f.path, e.to_string()))?;
    Ok(HfClipConfig { config, has_vision })
}

fn clip_text_params(t: &ClipTextConfig) -> u128 {
    let (w, m) = (t.width as u128, t.mlp_width as u128);
    let block = 4 * (w * w + w) + 2 * w * m + m + w + 4 * w;
    (t.vocab_size + t.context_length) as u128 * w
        + t.layers as u128 * block
        + 2 * w
        + w * t.embed_dim as u128
}

fn clip_vision_params(v: &ClipVisionConfig) -> u128 {
    let (w, m) = (v.width as u128, v.mlp_width as u128);
    let block = 4 * (w * w + w) + 2 * w * m + m + w + 4 * w;
    let patches = (v.image_size / v.patch_size).pow(2) as u128 + 1;
    3 * (v.patch_size as u128).pow(2) * w
        + patches * w
        + w
        + v.layers as u128 * block
        + 4 * w
        + w * v.embed_dim as u128
}

/// A CLIP (or its text tower) and its tokenizer, read from a Hugging Face folder.
#[derive(Debug)]
pub struct HfClip<M> {
    /// The model: [`Clip`] from [`load_clip`], [`ClipText`] from [`load_clip_text`].
    pub model: M,
    /// Its sizes.
    pub config: ClipConfig,
    /// The folder's tokenizer (truncating at the context length, padding id from
    /// `tokenizer_config.json`, `<|endoftext|>` when it names none).
    pub tokenizer: TextTokenizer,
}

fn clip_parts(dir: &Path, text_only: bool) -> Result<(HfClipConfig, PathBuf, TextTokenizer)> {
    let config_path = required(dir, "config.json", "config.json")?;
    let hf = read_clip_config(&config_path)?;
    if !text_only && !hf.has_vision {
        return Err(dataset(
            &config_path.display().to_string(),
            "field `model_type`: `clip_text_model` holds the text tower only; load it with \
             load_clip_text"
                .into(),
        ));
    }
    let weights = weights_file(dir)?;
    let mut params = clip_text_params(&hf.config.text);
    if !text_only {
        params += clip_vision_params(&hf.config.vision);
    }
    check_weight_size(&weights, &config_path, params)?;
    let t = &hf.config.text;
    let tokenizer = folder_tokenizer(
        dir,
        t.context_length,
        "<|endoftext|>",
        t.vocab_size,
        &config_path,
    )?;
    Ok((hf, weights, tokenizer))
}

/// Reads a `CLIPModel` folder: both towers, the logit scale, the tokenizer.
///
/// # Errors
/// As [`read_clip_config`] and [`load_bert`].
pub fn load_clip<B: Backend>(dir: &Path, device: &B::Device) -> Result<HfClip<Clip<B>>> {
    let (hf, weights, tokenizer) = clip_parts(dir, false)?;
    let mut model = hf.config.init::<B>(device);
    load_checkpoint(
        &mut model,
        &weights,
        &hf_clip_keys(),
        &LoadOptions::default(),
    )?;
    Ok(HfClip {
        model,
        config: hf.config,
        tokenizer,
    })
}

/// Reads the text tower of a CLIP folder (`CLIPModel`, whose image tower is skipped, or
/// `CLIPTextModelWithProjection`).
///
/// # Errors
/// As [`load_clip`].
pub fn load_clip_text<B: Backend>(dir: &Path, device: &B::Device) -> Result<HfClip<ClipText<B>>> {
    let (hf, weights, tokenizer) = clip_parts(dir, true)?;
    let mut model = hf.config.text.init::<B>(device);
    load_checkpoint(
        &mut model,
        &weights,
        &text_tower_keys(hf_clip_keys()),
        &LoadOptions::default(),
    )?;
    Ok(HfClip {
        model,
        config: hf.config,
        tokenizer,
    })
}
