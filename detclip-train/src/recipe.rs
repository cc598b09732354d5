//! The Recipe trait: what a method says about itself (model, targets, loss, inference), so
//! that the learner can do everything else the same way for every method.
//!
//! A recipe is a typed struct, read from JSON with unknown fields refused, and saved as JSON
//! with every run and every checkpoint (ARCHITECTURE.md, principle 5).

use std::collections::BTreeMap;

use burn::prelude::*;
use detclip_core::data::{Batch, TestTransform};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::{DetError, Result};
use detclip_models::dense::Detections;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::data::DataConfig;
use crate::learner::LearnerConfig;
use crate::mask::Rle;

/// The parameter groups the learner gives their own learning rate, and may freeze.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, serde::Deserialize,
)]
#[serde(rename_all = "snake_case")]
pub enum ParamGroup {
    /// The image backbone (usually pre-trained: a smaller learning rate).
    Backbone,
    /// The language side (text encoder, word embeddings).
    Language,
    /// Everything else: necks, heads, fusion — the layers trained from scratch.
    New,
    /// Learned prompt embeddings added to the language side's output (GLIP's prompt tuning,
    /// `tunable_linear`); trained at the language side's learning rate.
    Prompt,
    /// The final prediction layers: box, centerness and alignment outputs (what GLIP's linear
    /// probing trains); trained at the new layers' learning rate.
    Output,
}

impl ParamGroup {
    /// Every group.
    pub const ALL: [ParamGroup; 5] = [
        ParamGroup::Backbone,
        ParamGroup::Language,
        ParamGroup::New,
        ParamGroup::Prompt,
        ParamGroup::Output,
    ];

    /// Its name in logs and configs.
    pub fn name(self) -> &'static str {
        match self {
            ParamGroup::Backbone => "backbone",
            ParamGroup::Language => "language",
            ParamGroup::New => "new",
            ParamGroup::Prompt => "prompt",
            ParamGroup::Output => "output",
        }
    }
}

/// The named loss terms of one batch. Their sum is what is minimised; each is logged.
pub struct LossTerms<B: Backend> {
    /// `(name, value)` with `value` of shape `[1]`, already weighted.
    pub terms: Vec<(&'static str, Tensor<B, 1>)>,
}

impl<B: Backend> LossTerms<B> {
    /// No terms yet.
    pub fn new() -> Self {
        Self { terms: Vec::new() }
    }

    /// Adds a term.
    pub fn push(&mut self, name: &'static str, value: Tensor<B, 1>) {
        self.terms.push((name, value));
    }

    /// The sum of the terms (`[1]`); an error when there are none.
    pub fn total(&self) -> Result<Tensor<B, 1>> {
        let mut it = self.terms.iter().map(|(_, v)| v.clone());
        let first = it.next().ok_or_else(|| DetError::InvalidOption {
            op: "LossTerms::total",
            why: "the recipe returned no loss term for this batch".into(),
        })?;
        Ok(it.fold(first, |a, b| a + b))
    }

    /// The terms' values on the host (one read-back for all of them), and their sum.
    pub fn values(&self) -> (BTreeMap<String, f64>, f64) {
        if self.terms.is_empty() {
            return (BTreeMap::new(), 0.0);
        }
        let stacked = Tensor::cat(self.terms.iter().map(|(_, v)| v.clone()).collect(), 0);
        let data: Vec<f32> = stacked
            .into_data()
            .convert::<f32>()
            .to_vec()
            .unwrap_or_default();
        let map: BTreeMap<String, f64> = self
            .terms
            .iter()
            .zip(&data)
            .map(|((n, _), &v)| (n.to_string(), v as f64))
            .collect();
        let total = data.iter().map(|&v| v as f64).sum();
        (map, total)
    }
}

impl<B: Backend> Default for LossTerms<B> {
    fn default() -> Self {
        Self::new()
    }
}

/// One detection in the frame of the batch it was computed on.
#[derive(Debug, Clone, PartialEq)]
pub struct Detected {
    /// `[x1, y1, x2, y2]` in pixels of the (resized, unpadded) image.
    pub bbox: [f32; 4],
    /// Index into the vocabulary the detector was given.
    pub label: usize,
    /// Confidence in `[0, 1]`.
    pub score: f32,
    /// The object's mask in the same frame, from recipes that segment (RegionSpot's SAM).
    pub mask: Option<Rle>,
}

impl Detected {
    /// Every detection of one image's [`Detections`], in their order, without masks.
    pub fn all(d: Detections) -> Vec<Detected> {
        d.boxes
            .into_iter()
            .zip(d.scores)
            .zip(d.classes)
            .map(|((bbox, score), label)| Detected {
                bbox,
                label,
                score,
                mask: None,
            })
            .collect()
    }
}

/// A method: its model, its targets and loss, its inference, and its typed configuration.
///
/// Loss and inference run on backends with detclip's custom ops ([`DetclipOps`]), so a model
/// may use the deformable convolution kernel.
///
/// The learner needs, besides these methods, `Self::Model<B>: AutodiffModule<B, InnerModule =
/// Self::Model<B::InnerBackend>>` for an autodiff `B`, which every `#[derive(Module)]` struct
/// generic over its backend satisfies.
pub trait Recipe: Serialize + DeserializeOwned + Clone + Send + 'static {
    /// The recipe's name: `detclip train --recipe NAME`, and the tag checkpoints carry.
    const NAME: &'static str;

    /// Whether the recipe classifies boxes it is given rather than finding its own
    /// (RegionSpot): [`Recipe::detect`] scores each sample's instances, and `detclip detect`
    /// needs `--boxes`.
    const GIVEN_BOXES: bool = false;

    /// The model.
    type Model<B: Backend>: Module<B>;

    /// What a run derives once from the config and reuses for every batch — tokenizers,
    /// caches of class embeddings, precomputed teachers — passed to [`Recipe::loss`] and
    /// [`Recipe::detect`]. Never saved: every run and command builds its own
    /// ([`Recipe::context`]), after the model is built, prepared or loaded.
    type Context: Send + Sync;

    /// Builds a freshly initialised model from the config.
    fn build<B: Backend>(&self, device: &B::Device) -> Result<Self::Model<B>>;

    /// Builds the run's [`Recipe::Context`].
    fn context(&self) -> Result<Self::Context>;

    /// The learner's settings: steps, optimiser, schedule, checkpoints, evaluation.
    fn learner(&self) -> &LearnerConfig;

    /// The training sources and the evaluation set.
    fn data(&self) -> &DataConfig;

    /// The group of a parameter, from its module path (`["backbone", "stem", "weight"]`).
    /// The default, for models with a top-level `backbone` and `text` module: those two are
    /// the backbone and language groups, everything else is new.
    fn param_group(path: &[String]) -> ParamGroup {
        match path.first().map(String::as_str) {
            Some("backbone") => ParamGroup::Backbone,
            Some("text") => ParamGroup::Language,
            _ => ParamGroup::New,
        }
    }

    /// The transform evaluation and `detect` apply to an image.
    fn test_transform(&self) -> TestTransform;

    /// The named loss terms of a batch. `vocabulary` is the source's concept names: the
    /// classes a detection sample's boxes are scored against.
    fn loss<B: DetclipAutodiffBackend>(
        &self,
        cx: &Self::Context,
        model: &Self::Model<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
    ) -> Result<LossTerms<B>>;

    /// Detections per image for the concept names in `vocabulary`, with scores ≥ `threshold`.
    fn detect<B: DetclipOps>(
        &self,
        cx: &Self::Context,
        model: &Self::Model<B>,
        batch: &Batch<B>,
        vocabulary: &[String],
        threshold: f32,
    ) -> Result<Vec<Vec<Detected>>>;

    /// Prepares a freshly built model before its first training step (never on resume: the
    /// checkpoint holds the prepared weights). Recipes with frozen pre-trained parts load or
    /// pre-train them here (RegionSpot's CLIP teacher); the default leaves the model as built.
    fn prepare<B: DetclipAutodiffBackend>(
        &self,
        model: Self::Model<B>,
        _device: &B::Device,
    ) -> Result<Self::Model<B>> {
        Ok(model)
    }

    /// Loads the method's officially released weights (`checkpoints`: the files the method
    /// releases, in the order its recipe documents) into a freshly built `model`, for
    /// `detclip import`. A missing, unexpected or mis-shaped key is a
    /// [`DetError::Checkpoint`] listing them. The default: the recipe has no official
    /// checkpoint format.
    fn import_official<B: Backend>(
        &self,
        _model: Self::Model<B>,
        _checkpoints: &[std::path::PathBuf],
        _device: &B::Device,
    ) -> Result<Self::Model<B>> {
        Err(DetError::InvalidOption {
            op: "import",
            why: format!(
                "recipe `{}` has no official checkpoint format to import",
                Self::NAME
            ),
        })
    }

    /// Checks the config beyond what its types say (positive sizes, consistent settings).
    fn validate(&self) -> Result<()> {
        self.learner().validate()?;
        self.data().validate()
    }

    /// This config with its data block (sources and evaluation set) replaced by `data`
    /// (`detclip train --data FILE`). The default swaps the `data` field of the config's
    /// JSON, which every recipe whose [`Recipe::data`] is a field named `data` fits; the
    /// result is validated.
    fn with_data(&self, data: DataConfig) -> Result<Self> {
        let mut json = serde_json::to_value(self).expect("a recipe serialises");
        let slot = json
            .get_mut("data")
            .ok_or_else(|| DetError::InvalidOption {
                op: "train --data",
                why: format!("recipe `{}` has no `data` block to replace", Self::NAME),
            })?;
        *slot = serde_json::to_value(&data).expect("a data config serialises");
        let recipe: Self = serde_json::from_value(json).map_err(|e| DetError::InvalidOption {
            op: "train --data",
            why: format!("the data block does not fit recipe `{}`: {e}", Self::NAME),
        })?;
        recipe.validate()?;
        Ok(recipe)
    }
}

/// Reads a recipe config from JSON text: unknown fields and wrong types are errors that name
/// the file, line and column.
pub fn parse_config<R: Recipe>(text: &str, file: &str) -> Result<R> {
    let recipe: R = serde_json::from_str(text).map_err(|e| DetError::Json {
        file: file.to_string(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    recipe.validate()?;
    Ok(recipe)
}

/// Reads a data block (`detclip train --data FILE`): a [`DataConfig`] as JSON, unknown fields
/// and wrong types refused with file, line and column, values checked.
pub fn read_data_config(path: &std::path::Path) -> Result<DataConfig> {
    let text = std::fs::read_to_string(path).map_err(|e| DetError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    let data: DataConfig = serde_json::from_str(&text).map_err(|e| DetError::Json {
        file: path.display().to_string(),
        line: e.line(),
        column: e.column(),
        msg: e.to_string(),
    })?;
    data.validate()?;
    Ok(data)
}

/// Reads a recipe config file.
pub fn read_config<R: Recipe>(path: &std::path::Path) -> Result<R> {
    let text = std::fs::read_to_string(path).map_err(|e| DetError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    })?;
    parse_config(&text, &path.display().to_string())
}
