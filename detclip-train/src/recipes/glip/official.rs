//! GLIP's official configuration files (yacs YAML as in microsoft/GLIP's `configs/`, e.g.
//! `configs/pretrain/glip_Swin_T_O365_GoldG.yaml`, or the `config.yml` a run writes) read into
//! a [`GlipRecipe`]: what a user holding a released `.pth`, its yaml and the
//! `bert-base-uncased` folder has.
//!
//! Files are merged in order over the official defaults (`maskrcnn_benchmark/config/
//! defaults.py`, the keys read here), then `KEY=VALUE` overrides as the official tools take
//! them on their command line (`TEST.CHUNKED_EVALUATION=40`). Values are read as yacs reads
//! them: YAML scalars, and strings that are Python literals (`(64, 128, 256)`, `True`,
//! `1e-4`) as those literals.
//!
//! Every key that decides the released model's sizes, its test-time mechanics or its prompts
//! is read; a value this implementation does not reproduce (another backbone, a fusion type
//! other than `MHA-B`, a contrastive or MLM head, other pixel statistics, multi-scale
//! testing, …) is refused with the key named, rather than imported into a model that would
//! give other detections. Keys not listed are training settings or other tasks' and are not
//! read.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use detclip_core::{DetError, Result};
use detclip_models::glip::{GlipBackboneConfig, GlipPromptConfig};
use detclip_models::swin::SwinConfig;
use yaml_rust2::{Yaml, YamlLoader};

use super::GlipRecipe;

/// Largest configuration file read (GLIP's full `config.yml` dumps are about 30 KB).
const MAX_FILE_BYTES: u64 = 4 << 20;

/// A value of a yacs configuration.
#[derive(Debug, Clone, PartialEq)]
pub enum YacsValue {
    /// An integer.
    Int(i64),
    /// A float.
    Float(f64),
    /// `True` / `False`.
    Bool(bool),
    /// A string that is no Python literal.
    Str(String),
    /// A list or tuple.
    List(Vec<YacsValue>),
    /// `None` / `null`.
    None,
}

impl YacsValue {
    fn describe(&self) -> String {
        match self {
            YacsValue::Int(i) => i.to_string(),
            YacsValue::Float(f) => f.to_string(),
            YacsValue::Bool(b) => if *b { "True" } else { "False" }.into(),
            YacsValue::Str(s) => format!("{s:?}"),
            YacsValue::List(v) => format!(
                "({})",
                v.iter().map(Self::describe).collect::<Vec<_>>().join(", ")
            ),
            YacsValue::None => "None".into(),
        }
    }
}

/// A Python literal as `ast.literal_eval` reads the ones yacs configs hold: numbers,
/// `True`/`False`/`None`, quoted strings, tuples and lists of those. `None` when `s` is none.
fn python_literal(s: &str) -> Option<YacsValue> {
    let t = s.trim();
    match t {
        "True" => return Some(YacsValue::Bool(true)),
        "False" => return Some(YacsValue::Bool(false)),
        "None" => return Some(YacsValue::None),
        _ => {}
    }
    if let Ok(i) = t.parse::<i64>() {
        return Some(YacsValue::Int(i));
    }
    if t.bytes().any(|b| b.is_ascii_digit())
        && t.bytes()
            .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b))
        && let Ok(f) = t.parse::<f64>()
    {
        return Some(YacsValue::Float(f));
    }
    let quoted = |q: char| t.len() >= 2 && t.starts_with(q) && t.ends_with(q);
    if quoted('"') || quoted('\'') {
        let inner = &t[1..t.len() - 1];
        if inner.contains(['"', '\'', '\\']) {
            return None;
        }
        return Some(YacsValue::Str(inner.to_string()));
    }
    let bracketed = |o: char, c: char| t.len() >= 2 && t.starts_with(o) && t.ends_with(c);
    if bracketed('(', ')') || bracketed('[', ']') {
        let inner = t[1..t.len() - 1].trim();
        if inner.is_empty() {
            return Some(YacsValue::List(Vec::new()));
        }
        if inner.contains(['(', '[', '{']) {
            return None;
        }
        let items = inner.strip_suffix(',').unwrap_or(inner);
        return items
            .split(',')
            .map(python_literal)
            .collect::<Option<Vec<_>>>()
            .map(YacsValue::List);
    }
    None
}

/// A YAML node as yacs holds it (strings that are Python literals read as such).
fn from_yaml(node: &Yaml) -> std::result::Result<YacsValue, String> {
    Ok(match node {
        Yaml::Integer(i) => YacsValue::Int(*i),
        Yaml::Real(r) => YacsValue::Float(
            r.parse::<f64>()
                .map_err(|_| format!("`{r}` is not a number"))?,
        ),
        Yaml::Boolean(b) => YacsValue::Bool(*b),
        Yaml::Null => YacsValue::None,
        Yaml::String(s) => python_literal(s).unwrap_or_else(|| YacsValue::Str(s.clone())),
        Yaml::Array(items) => YacsValue::List(
            items
                .iter()
                .map(from_yaml)
                .collect::<std::result::Result<_, _>>()?,
        ),
        Yaml::Hash(_) => return Err("a mapping where a value was expected".into()),
        Yaml::Alias(_) | Yaml::BadValue => return Err("an unsupported YAML node".into()),
    })
}

/// GLIP's configuration: dotted keys (`MODEL.SWINT.EMBED_DIM`) to values, after merging.
#[derive(Debug, Clone, Default)]
pub struct OfficialGlipConfig {
    values: BTreeMap<String, YacsValue>,
    /// Where each key was last set (a file, or `override`).
    origin: BTreeMap<String, String>,
}

impl OfficialGlipConfig {
    /// Reads `files` in order (each over the ones before), then `overrides` (`KEY=VALUE`).
    ///
    /// # Errors
    /// A missing, oversized or malformed file (not YAML, a top level that is not a mapping,
    /// `_BASE_` inheritance, which yacs does not have), an override without `=`.
    pub fn read(files: &[PathBuf], overrides: &[String]) -> Result<Self> {
        let mut cfg = Self::default();
        for path in files {
            cfg.merge_file(path)?;
        }
        for o in overrides {
            let Some((key, value)) = o.split_once('=') else {
                return Err(DetError::InvalidOption {
                    op: "glip official config",
                    why: format!(
                        "override `{o}` is not KEY=VALUE (e.g. TEST.CHUNKED_EVALUATION=40)"
                    ),
                });
            };
            let key = key.trim().to_string();
            let value = python_literal(value)
                .or_else(|| from_yaml(&Yaml::from_str(value.trim())).ok())
                .unwrap_or_else(|| YacsValue::Str(value.trim().to_string()));
            cfg.origin.insert(key.clone(), "an override".into());
            cfg.values.insert(key, value);
        }
        Ok(cfg)
    }

    fn merge_file(&mut self, path: &Path) -> Result<()> {
        let io = |msg: String| DetError::Io {
            path: path.display().to_string(),
            msg,
        };
        let meta = std::fs::metadata(path).map_err(|e| io(e.to_string()))?;
        if !meta.is_file() {
            return Err(io("not a file".into()));
        }
        if meta.len() > MAX_FILE_BYTES {
            return Err(io(format!(
                "{} bytes: larger than the {} MiB a GLIP configuration can be",
                meta.len(),
                MAX_FILE_BYTES >> 20
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| io(e.to_string()))?;
        let docs = YamlLoader::load_from_str(&text).map_err(|e| io(format!("not YAML: {e}")))?;
        let top = match docs.as_slice() {
            [] => return Ok(()),
            [Yaml::Hash(_) | Yaml::Null] => &docs[0],
            [_] => return Err(io("the top level is not a mapping of keys".into())),
            _ => {
                return Err(io(
                    "several YAML documents; a yacs configuration is one".into()
                ));
            }
        };
        let origin = path.display().to_string();
        let mut flat = Vec::new();
        flatten(top, String::new(), &mut flat).map_err(io)?;
        for (key, value) in flat {
            if key == "_BASE_" {
                return Err(io(
                    "`_BASE_` inheritance is detectron2's, not GLIP's yacs: pass the base file \
                     first as its own --official-config"
                        .into(),
                ));
            }
            self.origin.insert(key.clone(), origin.clone());
            self.values.insert(key, value);
        }
        Ok(())
    }

    fn get(&self, key: &str) -> Option<&YacsValue> {
        self.values.get(key)
    }

    fn bad(&self, key: &str, why: impl std::fmt::Display) -> DetError {
        let value = self
            .get(key)
            .map_or_else(|| "(default)".into(), YacsValue::describe);
        let from = self.origin.get(key).map_or("the defaults", String::as_str);
        DetError::InvalidOption {
            op: "glip official config",
            why: format!("{key} = {value} (from {from}): {why}"),
        }
    }

    fn int(&self, key: &str, default: i64) -> Result<i64> {
        match self.get(key) {
            None => Ok(default),
            Some(YacsValue::Int(i)) => Ok(*i),
            Some(_) => Err(self.bad(key, "expected an integer")),
        }
    }

    fn count(&self, key: &str, default: usize) -> Result<usize> {
        let v = self.int(key, default as i64)?;
        usize::try_from(v)
            .ok()
            .filter(|&v| v > 0)
            .ok_or_else(|| self.bad(key, "expected a positive integer"))
    }

    fn float(&self, key: &str, default: f64) -> Result<f64> {
        match self.get(key) {
            None => Ok(default),
            Some(YacsValue::Int(i)) => Ok(*i as f64),
            Some(YacsValue::Float(f)) if f.is_finite() => Ok(*f),
            Some(_) => Err(self.bad(key, "expected a finite number")),
        }
    }

    fn flag(&self, key: &str, default: bool) -> Result<bool> {
        match self.get(key) {
            None => Ok(default),
            Some(YacsValue::Bool(b)) => Ok(*b),
            // PyYAML (YAML 1.1) reads these as booleans.
            Some(YacsValue::Str(s)) if matches!(s.as_str(), "yes" | "on" | "Yes" | "On") => {
                Ok(true)
            }
            Some(YacsValue::Str(s)) if matches!(s.as_str(), "no" | "off" | "No" | "Off") => {
                Ok(false)
            }
            Some(_) => Err(self.bad(key, "expected True or False")),
        }
    }

    fn string(&self, key: &str, default: &str) -> Result<String> {
        match self.get(key) {
            None => Ok(default.to_string()),
            Some(YacsValue::Str(s)) => Ok(s.clone()),
            Some(_) => Err(self.bad(key, "expected a string")),
        }
    }

    fn numbers(&self, key: &str, default: &[f64]) -> Result<Vec<f64>> {
        match self.get(key) {
            None => Ok(default.to_vec()),
            Some(YacsValue::List(items)) => items
                .iter()
                .map(|v| match v {
                    YacsValue::Int(i) => Ok(*i as f64),
                    YacsValue::Float(f) if f.is_finite() => Ok(*f),
                    _ => Err(self.bad(key, "expected a list of numbers")),
                })
                .collect(),
            // A bare number where yacs configs sometimes write a one-element tuple.
            Some(YacsValue::Int(_) | YacsValue::Float(_)) => Ok(vec![self.float(key, 0.0)?]),
            Some(_) => Err(self.bad(key, "expected a list of numbers")),
        }
    }

    fn counts4(&self, key: &str, default: [usize; 4]) -> Result<[usize; 4]> {
        let d: Vec<f64> = default.iter().map(|&v| v as f64).collect();
        let v = self.numbers(key, &d)?;
        let ints: Vec<usize> = v
            .iter()
            .filter(|x| x.fract() == 0.0 && **x > 0.0)
            .map(|&x| x as usize)
            .collect();
        <[usize; 4]>::try_from(ints.as_slice())
            .map_err(|_| self.bad(key, "expected four positive integers (one per Swin stage)"))
    }

    /// The flag `key` (default `default`) must be `want`.
    fn require_flag(&self, key: &str, default: bool, want: bool) -> Result<()> {
        self.require(key, self.flag(key, default)?, want)
    }

    /// The string `key` (default `default`) must be `want`.
    fn require_str(&self, key: &str, default: &str, want: &str) -> Result<()> {
        self.require(key, self.string(key, default)?.as_str(), want)
    }

    /// `key` must be `want` (the only value reproduced here).
    fn require<T: PartialEq + std::fmt::Debug>(&self, key: &str, got: T, want: T) -> Result<()> {
        if got == want {
            Ok(())
        } else {
            Err(self.bad(
                key,
                format!("only {want:?} is implemented (the released GLIP models' value)"),
            ))
        }
    }

    /// `recipe` (whose `model.bert` and text side already hold the BERT folder's sizes and
    /// tokenizer) with everything this configuration decides: the Swin backbone, channels,
    /// fusion/DyHead tower and its switches, anchors, the head's test settings, the test
    /// resize and pixel statistics (checked), the size divisor, the prompt rule (separator,
    /// chunked evaluation, `clean_name`), the prompt length and the loss settings.
    ///
    /// # Errors
    /// The first key whose value is malformed or not reproduced here, named with its value
    /// and the file that set it.
    pub fn apply(&self, mut recipe: GlipRecipe) -> Result<GlipRecipe> {
        self.require_str(
            "MODEL.META_ARCHITECTURE",
            "GeneralizedRCNN",
            "GeneralizedVLRCNN",
        )?;
        self.require_str("MODEL.RPN_ARCHITECTURE", "RPN", "VLDYHEAD")?;
        self.require_flag("MODEL.RPN_ONLY", false, true)?;
        for key in ["MODEL.MASK_ON", "MODEL.KEYPOINT_ON", "TEST.USE_MULTISCALE"] {
            self.require_flag(key, false, false)?;
        }

        // Backbone: Swin (`SWINT-FPN-RETINANET`).
        self.require_str("MODEL.BACKBONE.CONV_BODY", "R-50-C4", "SWINT-FPN-RETINANET")?;
        let embed = self.count("MODEL.SWINT.EMBED_DIM", 96)?;
        let depths = self.counts4("MODEL.SWINT.DEPTHS", [2, 2, 6, 2])?;
        let heads = self.counts4("MODEL.SWINT.NUM_HEADS", [3, 6, 12, 24])?;
        let outs = self.counts4("MODEL.SWINT.OUT_CHANNELS", [96, 192, 384, 768])?;
        self.require(
            "MODEL.SWINT.OUT_CHANNELS",
            outs,
            [embed, 2 * embed, 4 * embed, 8 * embed],
        )?;
        self.require_flag("MODEL.SWINT.APE", false, false)?;
        self.require_str("MODEL.SWINT.VERSION", "v1", "v1")?;
        self.require(
            "MODEL.SWINT.MLP_RATIO",
            self.float("MODEL.SWINT.MLP_RATIO", 4.0)?,
            4.0,
        )?;
        self.require(
            "MODEL.SWINT.LAYER_SCALE",
            self.float("MODEL.SWINT.LAYER_SCALE", 0.0)?,
            0.0,
        )?;
        let swin = SwinConfig::new(embed, depths, heads)
            .with_window_size(self.count("MODEL.SWINT.WINDOW_SIZE", 7)?)
            .with_drop_path_rate(self.float("MODEL.SWINT.DROP_PATH_RATE", 0.2)?);
        let mut model = recipe.model.clone();
        model.backbone = GlipBackboneConfig::Swin(swin);

        // FPN and head channels.
        let channels = self.count("MODEL.DYHEAD.CHANNELS", 128)?;
        self.require(
            "MODEL.BACKBONE.OUT_CHANNELS",
            self.count("MODEL.BACKBONE.OUT_CHANNELS", 1024)?,
            channels,
        )?;
        model.channels = channels;

        // The VLDyHead tower.
        let dy = |k: &str| format!("MODEL.DYHEAD.{k}");
        let fuse = |k: &str| format!("MODEL.DYHEAD.FUSE_CONFIG.{k}");
        model.num_layers = self.count(&dy("NUM_CONVS"), 4)?;
        for key in [dy("USE_NSYNCBN"), dy("USE_SYNCBN")] {
            self.require_flag(&key, false, false)?;
        }
        model.norm_groups = if self.flag(&dy("USE_GN"), false)? {
            self.count("MODEL.GROUP_NORM.NUM_GROUPS", 16)?
        } else {
            0
        };
        if model.norm_groups > 0 && channels % model.norm_groups != 0 {
            return Err(self.bad(
                "MODEL.GROUP_NORM.NUM_GROUPS",
                format!("does not divide MODEL.DYHEAD.CHANNELS ({channels})"),
            ));
        }
        model.deformable = self.flag(&dy("USE_DFCONV"), false)?;
        model.dyrelu = self.flag(&dy("USE_DYRELU"), false)?;
        model.scale_attention = self.flag(&dy("USE_DYFUSE"), false)?;
        self.require_str(&dy("CONV_FUNC"), "", "")?;
        self.require(
            &dy("COSINE_SCALE"),
            self.float(&dy("COSINE_SCALE"), -1.0)?,
            -1.0,
        )?;
        self.require_str(&dy("SCORE_AGG"), "MEAN", "MEAN")?;
        model.log_scale = self.float(&dy("LOG_SCALE"), 0.0)?;
        model.prior_prob = self.float(&dy("PRIOR_PROB"), 0.01)?;
        if !(model.prior_prob > 0.0 && model.prior_prob < 1.0) {
            return Err(self.bad(&dy("PRIOR_PROB"), "expected a probability in (0, 1)"));
        }
        model.fusion = self.flag(&fuse("EARLY_FUSE_ON"), false)?;
        if model.fusion {
            self.require_str(&fuse("TYPE"), "", "MHA-B")?;
            // `VLFuse` builds MHA-B with 8 heads in a 2048-wide joint space, whatever the
            // configuration says.
            model.fusion_heads = 8;
            model.fusion_embed_dim = 2048;
            self.require_flag(&fuse("USE_LAYER_SCALE"), true, true)?;
            self.require_flag(&fuse("SEPARATE_BIDIRECTIONAL"), false, false)?;
            model.fusion_gamma = None;
        }
        self.require_flag(&fuse("USE_DOT_PRODUCT_TOKEN_LOSS"), false, true)?;
        self.require_flag(&fuse("USE_FUSED_FEATURES_DOT_PRODUCT"), false, true)?;
        for k in [
            "USE_CLASSIFICATION_LOSS",
            "USE_TOKEN_LOSS",
            "USE_CONTRASTIVE_ALIGN_LOSS",
            "MLM_LOSS",
            "USE_SHALLOW_CONTRASTIVE_LOSS",
            "USE_BACKBONE_SHALLOW_CONTRASTIVE_LOSS",
        ] {
            let key = fuse(k);
            self.require_flag(&key, false, false)?;
        }

        // Anchors: one square anchor of `scale × stride` per position of P3–P7.
        let strides = self.numbers("MODEL.RPN.ANCHOR_STRIDE", &[16.0])?;
        self.require(
            "MODEL.RPN.ANCHOR_STRIDE",
            strides.as_slice(),
            &[8.0, 16.0, 32.0, 64.0, 128.0][..],
        )?;
        let sizes = self.numbers("MODEL.RPN.ANCHOR_SIZES", &[32.0, 64.0, 128.0, 256.0, 512.0])?;
        let scale = sizes.first().copied().unwrap_or(0.0) / 8.0;
        if sizes.len() != 5
            || scale <= 0.0
            || sizes.iter().zip(&strides).any(|(s, t)| s / t != scale)
        {
            return Err(self.bad(
                "MODEL.RPN.ANCHOR_SIZES",
                "expected one size per stride, each the same multiple of its stride",
            ));
        }
        model.anchor_scale = scale as f32;
        self.require(
            "MODEL.RPN.ASPECT_RATIOS",
            self.numbers("MODEL.RPN.ASPECT_RATIOS", &[0.5, 1.0, 2.0])?
                .as_slice(),
            &[1.0][..],
        )?;
        self.require(
            "MODEL.RPN.SCALES_PER_OCTAVE",
            self.int("MODEL.RPN.SCALES_PER_OCTAVE", 3)?,
            1,
        )?;
        self.require_flag("MODEL.RPN.USE_FPN", false, true)?;

        // Language backbone: the folder's BERT.
        let lang = |k: &str| format!("MODEL.LANGUAGE_BACKBONE.{k}");
        for k in ["MODEL_TYPE", "TOKENIZER_TYPE"] {
            let key = lang(k);
            self.require_str(&key, "bert-base-uncased", "bert-base-uncased")?;
        }
        self.require(&lang("N_LAYERS"), self.int(&lang("N_LAYERS"), 1)?, 1)?;
        self.require_flag(&lang("MASK_SPECIAL"), false, false)?;
        self.require_flag(&lang("PAD_MAX"), true, true)?;
        let lang_dim = self.count(&lang("LANG_DIM"), 768)?;
        if lang_dim != model.bert.hidden_size {
            return Err(self.bad(
                &lang("LANG_DIM"),
                format!(
                    "the BERT folder's hidden size is {}",
                    model.bert.hidden_size
                ),
            ));
        }
        let max_query = self.count(&lang("MAX_QUERY_LEN"), 256)?;
        if max_query > model.bert.max_position_embeddings {
            return Err(self.bad(
                &lang("MAX_QUERY_LEN"),
                format!(
                    "longer than the BERT folder's {} positions",
                    model.bert.max_position_embeddings
                ),
            ));
        }
        recipe.text.max_tokens = max_query;

        // Pixels: the released BGR-255 statistics are the ones implemented.
        self.require_flag("INPUT.TO_BGR255", true, true)?;
        self.require_str("INPUT.FORMAT", "", "")?;
        self.require(
            "INPUT.PIXEL_MEAN",
            self.numbers("INPUT.PIXEL_MEAN", &[102.9801, 115.9465, 122.7717])?,
            vec![103.53, 116.28, 123.675],
        )?;
        self.require(
            "INPUT.PIXEL_STD",
            self.numbers("INPUT.PIXEL_STD", &[1.0, 1.0, 1.0])?,
            vec![57.375, 57.12, 58.395],
        )?;
        let short = self.count("INPUT.MIN_SIZE_TEST", 800)?;
        let long = self.int("INPUT.MAX_SIZE_TEST", 1333)?;
        let divisor = self.int("DATALOADER.SIZE_DIVISIBILITY", 0)?;
        let divisor = usize::try_from(divisor)
            .map_err(|_| self.bad("DATALOADER.SIZE_DIVISIBILITY", "expected 0 or more"))?;
        let to_u32 = |key: &str, v: usize| {
            u32::try_from(v).map_err(|_| self.bad(key, "too large for an image side"))
        };
        recipe.test.short_side = to_u32("INPUT.MIN_SIZE_TEST", short)?;
        recipe.test.max_long = if long <= 0 {
            None
        } else {
            Some(to_u32("INPUT.MAX_SIZE_TEST", long as usize)?)
        };
        // The backbone needs 32 at least (P5 of Swin); GLIP's configs all say 32.
        recipe.data.size_divisor = divisor.max(1);

        // Post-processing.
        let atss = |k: &str| format!("MODEL.ATSS.{k}");
        recipe.test.candidate_threshold = self.float(&atss("INFERENCE_TH"), 0.05)? as f32;
        recipe.test.nms_iou = self.float(&atss("NMS_TH"), 0.6)? as f32;
        recipe.test.pre_nms_top_k = self.count(&atss("PRE_NMS_TOP_N"), 1000)?;
        recipe.test.max_detections = self.count(&atss("DETECTIONS_PER_IMG"), 100)?;

        // Prompts, as the official evaluation builds them.
        for key in ["DATASETS.USE_CAPTION_PROMPT", "DATASETS.USE_SUPRESS_QUERY"] {
            self.require_flag(key, false, false)?;
        }
        let separator = self.string("DATASETS.SEPARATION_TOKENS", " ")?;
        let chunk = self.int("TEST.CHUNKED_EVALUATION", -1)?;
        let chunk = match chunk {
            -1 => None,
            c if c > 0 => Some(c as usize),
            _ => {
                return Err(self.bad(
                    "TEST.CHUNKED_EVALUATION",
                    "expected -1 (one prompt) or a positive number of classes",
                ));
            }
        };
        recipe.test.prompt = GlipPromptConfig::official(&separator, chunk);

        // Loss settings (fine-tuning from the import).
        recipe.loss.atss_top_k = self.count(&atss("TOPK"), 9)?;
        recipe.loss.reg_weight = self.float(&atss("REG_LOSS_WEIGHT"), 2.0)? as f32;
        recipe.loss.focal_alpha = self.float(&fuse("TOKEN_ALPHA"), 0.25)? as f32;
        recipe.loss.focal_gamma = self.float(&fuse("TOKEN_GAMMA"), 2.0)? as f32;

        recipe.model = model;
        Ok(recipe)
    }
}

/// Nested mappings as dotted keys.
fn flatten(
    node: &Yaml,
    prefix: String,
    out: &mut Vec<(String, YacsValue)>,
) -> std::result::Result<(), String> {
    match node {
        Yaml::Hash(map) => {
            for (k, v) in map {
                let name = match k {
                    Yaml::String(s) => s.clone(),
                    Yaml::Integer(i) => i.to_string(),
                    _ => return Err(format!("a key under `{prefix}` is not a name")),
                };
                let key = if prefix.is_empty() {
                    name
                } else {
                    format!("{prefix}.{name}")
                };
                flatten(v, key, out)?;
            }
            Ok(())
        }
        // `DATASETS:` with nothing under it.
        Yaml::Null if !prefix.is_empty() && !prefix.contains('.') => Ok(()),
        other => {
            let value = from_yaml(other).map_err(|e| format!("{prefix}: {e}"))?;
            out.push((prefix, value));
            Ok(())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_literals_as_yacs_reads_them() {
        use YacsValue::*;
        assert_eq!(
            python_literal("(64, 128, 256)"),
            Some(List(vec![Int(64), Int(128), Int(256)]))
        );
        assert_eq!(python_literal("(1.0,)"), Some(List(vec![Float(1.0)])));
        assert_eq!(python_literal("True"), Some(Bool(true)));
        assert_eq!(python_literal("1e-4"), Some(Float(1e-4)));
        assert_eq!(python_literal("'a. b'"), Some(Str("a. b".into())));
        assert_eq!(python_literal("bert-base-uncased"), Option::None);
        assert_eq!(python_literal("(a, b)"), Option::None);
    }
}
