//! Training data: the sources a recipe names (detection, grounding, image-text), each with its
//! own batch size, resolution and sampling weight, and the joint sampler that draws one source
//! per iteration (DetCLIPv2 §4, "joint training with per-type batches").
//!
//! Determinism: every random choice of iteration `k` comes from a generator seeded by
//! `(seed, k)`, and each source walks through a per-epoch permutation seeded by
//! `(seed, source, epoch)`. The sampler's whole state is therefore the step and one cursor per
//! source ([`SamplerState`]), which checkpoints store; a resumed run draws exactly the batches
//! the uninterrupted one would have.

use std::path::PathBuf;

use burn::prelude::*;
use detclip_core::data::synthetic::{Naming, Split, World, WorldConfig};
use detclip_core::data::{
    Batch, Loaded, Normalize, OnError, Orientation, ReadOptions, Sample, SourceKind,
    TrainTransform, collate, read_coco, read_odvg, read_pairs,
};
use detclip_core::{DetError, Result};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Where a source's samples come from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum DatasetConfig {
    /// A slice of the synthetic world (its training split unless `split` says otherwise).
    Synthetic(SyntheticConfig),
    /// A COCO / Objects365 / LVIS instances json and its image folder.
    Coco {
        /// The annotation file.
        annotations: PathBuf,
        /// The image folder.
        images: PathBuf,
        /// The categories this source trains on (names as the file spells them, or with `_`
        /// read as a space); `None`: all. The boxes of the others are dropped and their
        /// images kept, as open-vocabulary protocols do ([`crate::splits`]).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        categories: Option<Vec<String>>,
        /// Drop the boxes of LVIS rare categories (`frequency` `"r"`): LVIS rare-as-novel.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        drop_rare: bool,
    },
    /// An ODVG jsonl file (detection or grounding lines) and its image folder.
    Odvg {
        /// The jsonl file.
        annotations: PathBuf,
        /// The image folder.
        images: PathBuf,
    },
    /// Image-text pairs (jsonl) and their image folder.
    Pairs {
        /// The jsonl file.
        annotations: PathBuf,
        /// The image folder.
        images: PathBuf,
    },
}

/// A slice of the synthetic world.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SyntheticConfig {
    /// The world's seed.
    pub seed: u64,
    /// How many images.
    pub images: u64,
    /// Smallest image side.
    pub min_side: u32,
    /// Largest image side.
    pub max_side: u32,
    /// Most objects per image.
    pub max_objects: usize,
    /// Smallest object side.
    pub min_object: u32,
    /// How the samples are presented: as detection (names, no caption), grounding (caption
    /// with spans) or image-text (caption and concepts, no boxes).
    pub kind: SourceKind,
    /// Which split the images come from. A training source normally draws the training split
    /// (no held-out concept); an image-text source may draw the test split's kind of image,
    /// whose captions mention held-out concepts (DetCLIPv2's point: captions teach concepts
    /// that no box label has), from a world seed other than the evaluation set's.
    #[serde(default)]
    pub split: SyntheticSplit,
    /// How concepts are named: `"color_shape"` (`red star`, the default) or `"shape"`
    /// (`star`; the colour is still said in captions). Omitted from JSON when default.
    #[serde(default, skip_serializing_if = "SyntheticNaming::is_default")]
    pub naming: SyntheticNaming,
}

impl SyntheticConfig {
    /// `images` images of world `seed`'s training split as `kind` samples: image sides in
    /// `sides` (min, max), up to `objects.0` objects of side at least `objects.1`. Presets set
    /// `split` to draw the test split.
    pub fn new(
        seed: u64,
        images: u64,
        sides: (u32, u32),
        objects: (usize, u32),
        kind: SourceKind,
    ) -> Self {
        Self {
            seed,
            images,
            min_side: sides.0,
            max_side: sides.1,
            max_objects: objects.0,
            min_object: objects.1,
            kind,
            split: SyntheticSplit::Train,
            naming: SyntheticNaming::ColorShape,
        }
    }
}

/// How a synthetic world names its concepts (JSON: `"color_shape"` or `"shape"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticNaming {
    /// `red star`: colour and shape.
    #[default]
    ColorShape,
    /// `star`: the shape alone (held-out colour–shape pairs then name nothing new).
    Shape,
}

impl SyntheticNaming {
    fn is_default(&self) -> bool {
        *self == Self::default()
    }
}

impl From<SyntheticNaming> for Naming {
    fn from(n: SyntheticNaming) -> Naming {
        match n {
            SyntheticNaming::ColorShape => Naming::ColorShape,
            SyntheticNaming::Shape => Naming::Shape,
        }
    }
}

/// The split a synthetic source draws from (JSON: `"train"` or `"test"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SyntheticSplit {
    /// Images without held-out concepts.
    #[default]
    Train,
    /// Images with at least one held-out concept each.
    Test,
}

impl From<SyntheticSplit> for Split {
    fn from(s: SyntheticSplit) -> Split {
        match s {
            SyntheticSplit::Train => Split::Train,
            SyntheticSplit::Test => Split::Test,
        }
    }
}

impl SyntheticConfig {
    /// The world these settings describe (default held-out concepts).
    pub fn world(&self) -> Result<World> {
        World::new(WorldConfig {
            seed: self.seed,
            min_side: self.min_side,
            max_side: self.max_side,
            max_objects: self.max_objects,
            min_object: self.min_object,
            naming: self.naming.into(),
            ..WorldConfig::default()
        })
    }

    /// The samples of `split`, presented as [`SyntheticConfig::kind`].
    pub fn samples(&self, split: Split) -> Result<Vec<Sample>> {
        let world = self.world()?;
        Ok(world
            .samples(split, self.images)
            .into_iter()
            .map(|s| present_as(s, self.kind))
            .collect())
    }
}

/// A synthetic (grounding) sample presented as another kind of source.
fn present_as(sample: Sample, kind: SourceKind) -> Sample {
    match kind {
        SourceKind::Grounding => sample,
        SourceKind::Detection => World::as_detection(&sample),
        SourceKind::ImageText => {
            let mut s = sample;
            s.kind = SourceKind::ImageText;
            s.instances.clear();
            s
        }
    }
}

/// One training source.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// Its name in logs.
    pub name: String,
    /// Where its samples come from.
    pub dataset: DatasetConfig,
    /// Images per batch.
    pub batch_size: usize,
    /// Shorter image side after resizing (one or several: multi-scale).
    pub short_sides: Vec<u32>,
    /// Cap on the longer side.
    pub max_long: Option<u32>,
    /// Relative sampling weight.
    pub weight: f64,
    /// Probability of a horizontal flip.
    pub flip_prob: f64,
}

impl SourceConfig {
    /// Source `name` over the synthetic slice `world`: `batch` images per step at short sides
    /// `short`, the long side capped at 1.5 times the largest, weight 1, flips with probability
    /// 0.5. Presets change what differs.
    pub fn synthetic(name: &str, world: SyntheticConfig, batch: usize, short: Vec<u32>) -> Self {
        let max_long = short.iter().max().map(|s| s * 3 / 2);
        Self {
            name: name.into(),
            dataset: DatasetConfig::Synthetic(world),
            batch_size: batch,
            short_sides: short,
            max_long,
            weight: 1.0,
            flip_prob: 0.5,
        }
    }
}

/// The evaluation set of a run.
///
/// JSON: `{"synthetic": {…}}` (a [`SyntheticConfig`]: its test split, whose held-out concepts
/// are the world's) or `{"coco": {…}}` (a [`CocoEvalConfig`]: a COCO or LVIS instances json).
/// A bare synthetic object, as configs written before the COCO option have it, is read as
/// `{"synthetic": …}`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EvalConfig {
    /// The test split of a synthetic world.
    Synthetic(SyntheticConfig),
    /// A COCO-format instances json (COCO, LVIS, Objects365) and its image folder.
    Coco(CocoEvalConfig),
}

impl From<SyntheticConfig> for EvalConfig {
    fn from(c: SyntheticConfig) -> Self {
        EvalConfig::Synthetic(c)
    }
}

impl EvalConfig {
    /// The synthetic world's settings, when the set is synthetic.
    pub fn synthetic(&self) -> Option<&SyntheticConfig> {
        match self {
            EvalConfig::Synthetic(s) => Some(s),
            EvalConfig::Coco(_) => None,
        }
    }
}

/// The tagged form of [`EvalConfig`] (what `Deserialize` reads after the legacy check).
#[derive(Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
enum TaggedEval {
    Synthetic(SyntheticConfig),
    Coco(CocoEvalConfig),
}

impl<'de> Deserialize<'de> for EvalConfig {
    fn deserialize<D: serde::Deserializer<'de>>(
        deserializer: D,
    ) -> std::result::Result<Self, D::Error> {
        use serde::de::Error;
        let value = serde_json::Value::deserialize(deserializer)?;
        let tagged = value
            .as_object()
            .is_some_and(|o| o.len() == 1 && o.keys().all(|k| k == "synthetic" || k == "coco"));
        if tagged {
            return match serde_json::from_value::<TaggedEval>(value).map_err(D::Error::custom)? {
                TaggedEval::Synthetic(s) => Ok(EvalConfig::Synthetic(s)),
                TaggedEval::Coco(c) => Ok(EvalConfig::Coco(c)),
            };
        }
        serde_json::from_value::<SyntheticConfig>(value)
            .map(EvalConfig::Synthetic)
            .map_err(|e| {
                D::Error::custom(format!(
                    "the eval set is {{\"synthetic\": {{…}}}} or {{\"coco\": {{…}}}}; read as a \
                     synthetic world: {e}"
                ))
            })
    }
}

/// An evaluation set read from a COCO-format instances json.
///
/// Every category of the file is in the vocabulary the detector is prompted with (its name
/// with `_` read as a space, as [`detclip_core::data::Category::concept_name`]); AP is computed
/// by `detclip_core`'s COCO evaluator against the file's own ground truth, over all
/// categories, the seen ones and the held-out ones.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CocoEvalConfig {
    /// The annotation file.
    pub annotations: PathBuf,
    /// The image folder (`file_name`s are relative to it).
    pub images: PathBuf,
    /// Names of the categories held out of training (as the file spells them, or with `_`
    /// read as a space).
    #[serde(default)]
    pub held_out: Vec<String>,
    /// Also hold out the categories whose LVIS `frequency` is `"r"` (the open-vocabulary LVIS
    /// protocol: rare categories are the novel ones).
    #[serde(default)]
    pub held_out_rare: bool,
    /// Evaluate the first this many images of the file only (a quicker periodic evaluation).
    #[serde(default)]
    pub max_images: Option<usize>,
    /// The categories evaluated (names as the file spells them, or with `_` read as a space);
    /// `None`: all. COCO 48/17 evaluates 65 of COCO's 80 ([`crate::splits`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub categories: Option<Vec<String>>,
}

/// The training sources and the evaluation set of a run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// The sources; each iteration draws one by weight.
    pub sources: Vec<SourceConfig>,
    /// The evaluation set, if any: the synthetic world's test split or a COCO-format file.
    pub eval: Option<EvalConfig>,
    /// Batches are padded to a multiple of this.
    pub size_divisor: usize,
}

impl DataConfig {
    /// Checks sizes and weights.
    pub fn validate(&self) -> Result<()> {
        let bad = |why: String| Err(DetError::InvalidOption { op: "data", why });
        if self.sources.is_empty() {
            return bad("at least one source is needed".into());
        }
        if self.size_divisor == 0 {
            return bad("size_divisor must be positive".into());
        }
        if let Some(EvalConfig::Coco(c)) = &self.eval
            && c.max_images == Some(0)
        {
            return bad("eval: max_images must be positive".into());
        }
        for s in &self.sources {
            if s.batch_size == 0 || s.short_sides.is_empty() || s.short_sides.contains(&0) {
                return bad(format!(
                    "source `{}`: batch_size and short_sides must be positive",
                    s.name
                ));
            }
            if !(s.weight.is_finite() && s.weight > 0.0) {
                return bad(format!(
                    "source `{}`: weight must be positive, got {}",
                    s.name, s.weight
                ));
            }
        }
        Ok(())
    }
}

/// A source with its samples read.
#[derive(Debug, Clone)]
pub struct Source {
    /// Its settings.
    pub config: SourceConfig,
    /// Its samples.
    pub samples: Vec<Sample>,
    /// Every concept name of its samples, sorted: the classes its batches are scored against.
    pub vocabulary: Vec<String>,
    /// Its training transform (the learner sets the normalisation to the recipe's).
    pub transform: TrainTransform,
}

fn must_exist(path: &std::path::Path, what: &str) -> Result<()> {
    if path.exists() {
        Ok(())
    } else {
        Err(DetError::Io {
            path: path.display().to_string(),
            msg: format!("the {what} does not exist"),
        })
    }
}

/// Whether `name` names category `c`: as the file spells it, or with `_` read as a space.
pub fn names_category(c: &detclip_core::data::Category, name: &str) -> bool {
    name == c.name || name == c.concept_name()
}

/// The concept names of the categories of a file that a source or an evaluation set keeps:
/// those named in `names` (all when `None`; as the file spells them, or with `_` read as a
/// space), less the rare ones when `drop_rare`. A name not in the file, or `drop_rare` on a
/// file without frequencies, is an error.
pub fn kept_categories(
    categories: &[detclip_core::data::Category],
    names: Option<&[String]>,
    drop_rare: bool,
    file: &std::path::Path,
) -> Result<std::collections::HashSet<String>> {
    let bad = |why: String| {
        Err(DetError::InvalidOption {
            op: "data",
            why: format!("{}: {why}", file.display()),
        })
    };
    let named = |c: &detclip_core::data::Category, n: &String| names_category(c, n);
    if let Some(names) = names {
        let unknown: Vec<&String> = names
            .iter()
            .filter(|n| !categories.iter().any(|c| named(c, n)))
            .collect();
        if !unknown.is_empty() {
            return bad(format!("categories not in the file: {unknown:?}"));
        }
    }
    if drop_rare && categories.iter().all(|c| c.frequency.is_none()) {
        return bad("drop_rare needs LVIS category frequencies, and the file has none".into());
    }
    Ok(categories
        .iter()
        .filter(|c| names.is_none_or(|names| names.iter().any(|n| named(c, n))))
        .filter(|c| !(drop_rare && c.frequency == Some(detclip_core::data::Frequency::Rare)))
        .map(|c| c.concept_name())
        .collect())
}

/// Keeps the concepts of `sample` named in `keep`, and the instances that still have one.
fn restrict_sample(sample: &mut Sample, keep: &std::collections::HashSet<String>) {
    let mut map = vec![None; sample.concepts.len()];
    let mut kept = Vec::with_capacity(sample.concepts.len());
    for (i, c) in std::mem::take(&mut sample.concepts).into_iter().enumerate() {
        if keep.contains(&c.name) {
            map[i] = Some(kept.len());
            kept.push(c);
        }
    }
    sample.concepts = kept;
    sample.instances.retain_mut(|inst| {
        inst.concepts = inst.concepts.iter().filter_map(|&c| map[c]).collect();
        !inst.concepts.is_empty()
    });
    sample.negatives.retain(|c| keep.contains(&c.name));
    sample.not_exhaustive.retain(|c| keep.contains(&c.name));
}

impl Source {
    /// Reads the source's samples (every sample must be good: a bad one stops the run).
    pub fn load(config: &SourceConfig) -> Result<Self> {
        let options = ReadOptions::default().on_error(OnError::Stop);
        let samples = match &config.dataset {
            DatasetConfig::Synthetic(s) => s.samples(s.split.into())?,
            DatasetConfig::Coco {
                annotations,
                images,
                categories,
                drop_rare,
            } => {
                must_exist(annotations, "annotation file")?;
                must_exist(images, "image folder")?;
                let dataset = read_coco(annotations, images, options)?;
                let keep = kept_categories(
                    &dataset.categories,
                    categories.as_deref(),
                    *drop_rare,
                    annotations,
                )?;
                let mut samples = dataset.samples;
                for s in &mut samples {
                    restrict_sample(s, &keep);
                }
                samples
            }
            DatasetConfig::Odvg {
                annotations,
                images,
            } => {
                must_exist(annotations, "annotation file")?;
                must_exist(images, "image folder")?;
                read_odvg(annotations, images, None, options)?.samples
            }
            DatasetConfig::Pairs {
                annotations,
                images,
            } => {
                must_exist(annotations, "annotation file")?;
                must_exist(images, "image folder")?;
                read_pairs(annotations, images, options)?.samples
            }
        };
        if samples.is_empty() {
            return Err(DetError::InvalidOption {
                op: "data",
                why: format!("source `{}` has no samples", config.name),
            });
        }
        let mut vocabulary: Vec<String> = samples
            .iter()
            .flat_map(|s| s.concepts.iter().map(|c| c.name.clone()))
            .collect();
        vocabulary.sort();
        vocabulary.dedup();
        let transform = TrainTransform {
            short_sides: config.short_sides.clone(),
            max_long: config.max_long,
            flip_prob: config.flip_prob,
            crop: None,
            normalize: Normalize::imagenet(),
        };
        Ok(Self {
            config: config.clone(),
            samples,
            vocabulary,
            transform,
        })
    }
}

/// Where the joint sampler stands: the next step and, per source, how many samples it has
/// handed out. Together with the seed this is all its randomness.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SamplerState {
    /// The next iteration.
    pub step: u64,
    /// Samples drawn so far, per source.
    pub cursors: Vec<u64>,
}

/// A batch drawn by the sampler, with where it came from.
pub struct Drawn<B: Backend> {
    /// The index of the source.
    pub source: usize,
    /// The batch.
    pub batch: Batch<B>,
}

/// Draws one source per iteration by weight, and a batch of that source at its own size and
/// resolution.
#[derive(Debug, Clone)]
pub struct JointSampler {
    sources: Vec<Source>,
    seed: u64,
    size_divisor: usize,
    state: SamplerState,
}

/// SplitMix64, to derive independent seeds from `(seed, tag, index)`.
pub fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl JointSampler {
    /// A sampler at step 0.
    pub fn new(sources: Vec<Source>, seed: u64, size_divisor: usize) -> Self {
        let n = sources.len();
        Self {
            sources,
            seed,
            size_divisor,
            state: SamplerState {
                step: 0,
                cursors: vec![0; n],
            },
        }
    }

    /// The sources.
    pub fn sources(&self) -> &[Source] {
        &self.sources
    }

    /// The current state (for checkpoints).
    pub fn state(&self) -> &SamplerState {
        &self.state
    }

    /// Continues from a saved state.
    pub fn restore(&mut self, state: SamplerState) -> Result<()> {
        if state.cursors.len() != self.sources.len() {
            return Err(DetError::InvalidOption {
                op: "resume",
                why: format!(
                    "the checkpoint's sampler has {} sources, this config {}",
                    state.cursors.len(),
                    self.sources.len()
                ),
            });
        }
        self.state = state;
        Ok(())
    }

    fn step_rng(&self, step: u64) -> StdRng {
        StdRng::seed_from_u64(mix(self.seed ^ mix(step ^ 0x5354_4550)))
    }

    /// The source iteration `step` draws (a pure function of seed and step).
    pub fn source_at(&self, step: u64) -> usize {
        let mut rng = self.step_rng(step);
        self.pick_source(&mut rng)
    }

    fn pick_source(&self, rng: &mut StdRng) -> usize {
        let total: f64 = self.sources.iter().map(|s| s.config.weight).sum();
        let mut x = rng.random::<f64>() * total;
        for (i, s) in self.sources.iter().enumerate() {
            if x < s.config.weight {
                return i;
            }
            x -= s.config.weight;
        }
        self.sources.len() - 1
    }

    /// Sample index `k` of the endless, per-epoch-shuffled stream of source `source`.
    fn stream_index(&self, source: usize, k: u64) -> usize {
        let n = self.sources[source].samples.len() as u64;
        let (epoch, within) = (k / n, k % n);
        let mut order: Vec<usize> = (0..n as usize).collect();
        let seed = mix(self.seed ^ mix(source as u64 + 1) ^ mix(epoch ^ 0x4550_4f43));
        order.shuffle(&mut StdRng::seed_from_u64(seed));
        order[within as usize]
    }

    /// Draws the next batch and advances the state.
    pub fn next_batch<B: Backend>(&mut self, device: &B::Device) -> Result<Drawn<B>> {
        let step = self.state.step;
        let mut rng = self.step_rng(step);
        let source = self.pick_source(&mut rng);
        let src = &self.sources[source];
        let start = self.state.cursors[source];
        let size = src.config.batch_size as u64;
        let mut items = Vec::with_capacity(size as usize);
        for k in start..start + size {
            let sample = src.samples[self.stream_index(source, k)].clone();
            let loaded = Loaded::load(sample, Orientation::Apply)?;
            items.push(src.transform.apply(loaded, &mut rng)?);
        }
        let batch = collate(items, self.size_divisor, device)?;
        self.state.cursors[source] += size;
        self.state.step += 1;
        Ok(Drawn { source, batch })
    }
}
