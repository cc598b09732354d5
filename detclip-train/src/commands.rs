//! The `train`, `detect` and `demo` commands as library functions: the device string picks the
//! backend at run time ([`run_on`]) and the recipe name picks the recipe ([`AnyRecipe`], a
//! typed enum: adding a recipe adds a variant, there is no string registry).

use std::path::{Path, PathBuf};

use detclip_core::backend::{
    BackendTask, DeviceSpec, DevicesTask, Precision, parse_device_list, run_on, run_on_devices,
};
use detclip_core::data::synthetic::Split;
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::{DetError, Result};

use crate::detect::{DetectReport, attach_boxes, detect_and_write, image_samples, parse_prompt};
use crate::evaluate::EvalReport;
use crate::import::import_checkpoint;
use crate::learner::{
    Checkpoint, EvalSet, LossScaler, RunOptions, RunSummary, load_trained, train, train_mixed,
    train_on_devices,
};
use crate::recipe::{Recipe, read_config};
use crate::recipes::regionspot::{CacheReport, cache_features};
use crate::recipes::{DetClipV2Recipe, GlipRecipe, RegionSpotRecipe, ShapesRecipe, VildRecipe};

/// Every recipe this build knows.
/// (Built once per command: the variants' sizes do not matter.)
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Clone)]
pub enum AnyRecipe {
    /// [`ShapesRecipe`].
    Shapes(ShapesRecipe),
    /// [`RegionSpotRecipe`].
    RegionSpot(RegionSpotRecipe),
    /// [`DetClipV2Recipe`].
    DetClipV2(DetClipV2Recipe),
    /// [`GlipRecipe`].
    Glip(GlipRecipe),
    /// [`VildRecipe`].
    Vild(VildRecipe),
}

/// `$body` with `$r` bound to the recipe inside `$any` (an `AnyRecipe` or a reference to one),
/// whatever its kind: the one match over the recipes. Adding a recipe adds a variant above,
/// an arm here and its preset in [`AnyRecipe::presets`].
macro_rules! with_recipe {
    ($any:expr, $r:ident => $body:expr) => {
        match $any {
            AnyRecipe::Shapes($r) => $body,
            AnyRecipe::RegionSpot($r) => $body,
            AnyRecipe::DetClipV2($r) => $body,
            AnyRecipe::Glip($r) => $body,
            AnyRecipe::Vild($r) => $body,
        }
    };
}

impl AnyRecipe {
    /// Every recipe's default preset (what `--recipe NAME` trains without `--config`).
    pub fn presets() -> Vec<AnyRecipe> {
        vec![
            AnyRecipe::Shapes(ShapesRecipe::demo()),
            AnyRecipe::RegionSpot(RegionSpotRecipe::synthetic()),
            AnyRecipe::DetClipV2(DetClipV2Recipe::synthetic()),
            AnyRecipe::Glip(GlipRecipe::synthetic()),
            AnyRecipe::Vild(VildRecipe::synthetic()),
        ]
    }

    /// The recipe's name ([`Recipe::NAME`]).
    pub fn name(&self) -> &'static str {
        fn name_of<R: Recipe>(_: &R) -> &'static str {
            R::NAME
        }
        with_recipe!(self, r => name_of(r))
    }

    /// The names `--recipe` accepts.
    pub fn names() -> Vec<&'static str> {
        Self::presets().iter().map(AnyRecipe::name).collect()
    }

    /// The default preset of the recipe called `name`.
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] listing the known names.
    pub fn preset(name: &str) -> Result<Self> {
        Self::presets()
            .into_iter()
            .find(|r| r.name() == name)
            .ok_or_else(|| DetError::InvalidOption {
                op: "train",
                why: format!(
                    "unknown recipe `{name}`; this build has: {}",
                    Self::names().join(", ")
                ),
            })
    }

    /// The recipe `name` with its default preset, or the config read from `config`.
    pub fn load(name: &str, config: Option<&Path>) -> Result<Self> {
        fn read_as<R: Recipe>(_: &R, path: &Path) -> Result<R> {
            read_config(path)
        }
        let preset = Self::preset(name)?;
        match config {
            None => Ok(preset),
            Some(p) => Ok(with_recipe!(&preset, r => read_as(r, p)?.into())),
        }
    }

    /// This recipe with a pretrained text model from a Hugging Face folder as its language
    /// side (`detclip train --text-model DIR`): `shapes` encodes names with the folder's
    /// sentence encoder (frozen), `glip` starts its BERT from the folder's weights (trained at
    /// a tenth of the base rate).
    ///
    /// # Errors
    /// [`DetError::InvalidOption`] for the other recipes; the folder's errors.
    pub fn with_text_model(self, dir: &Path) -> Result<Self> {
        match self {
            AnyRecipe::Shapes(mut r) => {
                r.model.text_features = Some(crate::recipes::shapes::sentence_dim(dir)?);
                r.text_model = Some(dir.to_path_buf());
                r.validate()?;
                Ok(r.into())
            }
            AnyRecipe::Glip(r) => {
                let r = r.with_text_model(dir, 0.1)?;
                r.validate()?;
                Ok(r.into())
            }
            other => Err(DetError::InvalidOption {
                op: "train --text-model",
                why: format!(
                    "recipe `{}` takes no text model folder yet (shapes and glip do)",
                    other.name()
                ),
            }),
        }
    }

    /// The preset of the recipe that wrote `checkpoint` (its header names it), for the
    /// commands that take any recipe's checkpoint.
    ///
    /// # Errors
    /// The checkpoint's read errors; [`DetError::Checkpoint`] for a recipe this build lacks.
    pub fn of_checkpoint(checkpoint: &Path) -> Result<Self> {
        let header = Checkpoint::read(checkpoint)?.header;
        Self::preset(&header.recipe).map_err(|_| DetError::Checkpoint {
            file: checkpoint.display().to_string(),
            why: format!(
                "made by recipe `{}`, which this build does not have",
                header.recipe
            ),
        })
    }

    /// The recipe `detclip import` builds: `--config`'s, or the recipe's preset; for `glip`
    /// with `--text-model BERT_DIR` the released GLIP ([`GlipRecipe::released`]), or the one
    /// that GLIP's official yaml files describe (`--official-config`, merged in order, then
    /// `--official-set KEY=VALUE`; [`GlipRecipe::from_official`]); for `regionspot` with
    /// `--text-model CLIP_DIR` the released RegionSpot of that CLIP
    /// ([`RegionSpotRecipe::released_from_clip_folder`]).
    ///
    /// # Errors
    /// Options that do not go together (an official yaml with `--config`, or without the
    /// BERT folder, or for a recipe that has none); the files' errors.
    pub fn for_import(
        name: &str,
        config: Option<&Path>,
        official: &[PathBuf],
        overrides: &[String],
        text_model: Option<&Path>,
    ) -> Result<Self> {
        let refuse = |why: String| Err(DetError::InvalidOption { op: "import", why });
        let official_given = !official.is_empty() || !overrides.is_empty();
        if !overrides.is_empty() && official.is_empty() {
            return refuse(
                "--official-set overrides keys of an --official-config file; give the file".into(),
            );
        }
        match (name, config, text_model) {
            (_, Some(_), _) if official_given || text_model.is_some() => refuse(
                "--config is a recipe config of ours with every size in it; --official-config \
                 and --text-model build one instead (give one or the other)"
                    .into(),
            ),
            ("glip", None, Some(dir)) if official_given => {
                Ok(GlipRecipe::from_official(official, overrides, dir)?.into())
            }
            ("glip", None, Some(dir)) => {
                let r = GlipRecipe::released(dir)?;
                r.validate()?;
                Ok(r.into())
            }
            ("regionspot", None, Some(dir)) if !official_given => {
                let r = RegionSpotRecipe::released_from_clip_folder(dir)?;
                r.validate()?;
                Ok(r.into())
            }
            ("glip", None, None) if official_given => refuse(
                "an official GLIP config needs the BERT it names: pass --text-model with the \
                 Hugging Face bert-base-uncased folder (config.json, tokenizer.json)"
                    .into(),
            ),
            (other, _, _) if official_given || text_model.is_some() => refuse(format!(
                "--official-config is read for recipe `glip` and --text-model for `glip` and \
                 `regionspot`; not for `{other}` (or not together)"
            )),
            _ => Self::load(name, config),
        }
    }

    /// This recipe with its data block replaced (`detclip train --data FILE`).
    pub fn with_data(self, data: crate::data::DataConfig) -> Result<Self> {
        Ok(with_recipe!(self, r => r.with_data(data)?.into()))
    }
}

macro_rules! from_recipe {
    ($($variant:ident($ty:ty)),*) => {
        $(impl From<$ty> for AnyRecipe {
            fn from(r: $ty) -> Self {
                AnyRecipe::$variant(r)
            }
        })*
    };
}
from_recipe!(
    Shapes(ShapesRecipe),
    RegionSpot(RegionSpotRecipe),
    DetClipV2(DetClipV2Recipe),
    Glip(GlipRecipe),
    Vild(VildRecipe)
);

struct TrainTask {
    recipe: AnyRecipe,
    options: RunOptions,
}

impl DevicesTask for TrainTask {
    type Output = Result<RunSummary>;
    fn run<B: DetclipAutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        let (d, o) = (&devices, &self.options);
        with_recipe!(&self.recipe, r => train_on_devices::<_, B>(r, d, o))
    }

    fn run_half<B: DetclipAutodiffBackend, F: DetclipAutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        master: Option<F::Device>,
    ) -> Self::Output {
        if !self.options.master_weights {
            return self.run::<B>(devices);
        }
        let Some(m) = &master else {
            return Err(DetError::InvalidOption {
                op: "train",
                why: "f32 master weights live on the CPU backend, which this build lacks \
                      (feature `ndarray`); pass --no-master-weights to train in half precision \
                      throughout"
                    .into(),
            });
        };
        let (d, o) = (&devices, &self.options);
        with_recipe!(&self.recipe, r => train_mixed::<_, B, F>(r, d, m, o))
    }
}

struct ImportTask {
    recipe: AnyRecipe,
    checkpoints: Vec<PathBuf>,
    out: PathBuf,
}

impl BackendTask for ImportTask {
    type Output = Result<PathBuf>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let (c, o) = (&self.checkpoints, &self.out);
        with_recipe!(&self.recipe, r => import_checkpoint::<_, B>(r, c, o, &device))
    }
}

/// `detclip import`: an official checkpoint (or the several files a recipe's release has) as
/// a run folder `out` with `config.json` and `checkpoint.bin` at step 0.
pub fn import_command(
    recipe: AnyRecipe,
    checkpoints: Vec<PathBuf>,
    out: &Path,
    device: &str,
) -> Result<PathBuf> {
    let spec: DeviceSpec = device.parse()?;
    run_on(
        spec,
        ImportTask {
            recipe,
            checkpoints,
            out: out.to_path_buf(),
        },
    )?
}

/// `detclip train --device D` (f32).
pub fn train_command(recipe: AnyRecipe, device: &str, options: RunOptions) -> Result<RunSummary> {
    train_devices_command(recipe, device, Precision::F32, options)
}

/// `detclip train --devices D1,D2,… --precision P`: data-parallel over the listed devices of
/// one backend (one device: plain training), computing in `precision`. Half precision turns
/// on dynamic loss scaling (PyTorch's `GradScaler` defaults) unless `options` sets a scaler,
/// and keeps f32 master weights unless `options.master_weights` is off.
/// A device list that names a device that is not there, or a precision the backend does not
/// have, is refused before anything is written.
pub fn train_devices_command(
    recipe: AnyRecipe,
    devices: &str,
    precision: Precision,
    mut options: RunOptions,
) -> Result<RunSummary> {
    let specs = parse_device_list(devices)?;
    if precision.is_half() && options.loss_scaling.is_none() {
        options.loss_scaling = Some(LossScaler::for_half());
    }
    run_on_devices(&specs, precision, TrainTask { recipe, options })?
}

struct DetectTask {
    checkpoint: PathBuf,
    images: Vec<PathBuf>,
    names: Vec<String>,
    threshold: f32,
    out: PathBuf,
    boxes: Option<(PathBuf, f32)>,
}

/// `detect` with the checkpoint's recipe `R` (`_kind` only names it).
fn detect_with<R: Recipe, B: DetclipAutodiffBackend>(
    _kind: &R,
    t: &DetectTask,
    device: &B::Device,
) -> Result<DetectReport> {
    let mut samples = image_samples(&t.images)?;
    let refuse = |why: String| Err(DetError::InvalidOption { op: "detect", why });
    match (&t.boxes, R::GIVEN_BOXES) {
        (Some((path, min_score)), true) => {
            attach_boxes(path, &mut samples, *min_score)?;
        }
        (None, false) => {}
        (Some(_), false) => {
            return refuse(format!(
                "--boxes is for recipes that classify given boxes (regionspot); `{}` finds its \
                 own",
                R::NAME
            ));
        }
        (None, true) => {
            return refuse(format!(
                "`{}` classifies given boxes: pass --boxes FILE (COCO format, e.g. another \
                 detector's detections.json)",
                R::NAME
            ));
        }
    }
    let (recipe, model) = load_trained::<R, B::InnerBackend>(&t.checkpoint, device)?;
    detect_and_write(
        &recipe,
        &model,
        &samples,
        &t.names,
        t.threshold,
        &t.out,
        device,
    )
}

impl BackendTask for DetectTask {
    type Output = Result<DetectReport>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let kind = AnyRecipe::of_checkpoint(&self.checkpoint)?;
        with_recipe!(&kind, r => detect_with::<_, B>(r, &self, &device))
    }
}

struct UnseenTask {
    checkpoint: PathBuf,
}

/// [`unseen_command`] with the checkpoint's recipe `R`.
fn unseen_with<R: Recipe, B: DetclipAutodiffBackend>(
    _kind: &R,
    checkpoint: &Path,
    device: &B::Device,
) -> Result<Vec<crate::unseen::WordingAp>> {
    let (recipe, model) = load_trained::<R, B::InnerBackend>(checkpoint, device)?;
    if !matches!(
        recipe.data().eval.as_ref().map(|e| e.synthetic().is_some()),
        Some(true)
    ) {
        return Err(DetError::InvalidOption {
            op: "unseen",
            why: format!(
                "{}: the run's evaluation set is not a synthetic world (the synonyms replace \
                 its colour and shape words)",
                checkpoint.display()
            ),
        });
    }
    let set = EvalSet::of(&recipe)?.expect("checked above");
    let cx = recipe.context()?;
    crate::unseen::unseen_word_report(
        &recipe,
        &cx,
        &model,
        &set,
        recipe.learner().eval_batch_size,
        device,
    )
}

impl BackendTask for UnseenTask {
    type Output = Result<Vec<crate::unseen::WordingAp>>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let kind = AnyRecipe::of_checkpoint(&self.checkpoint)?;
        with_recipe!(&kind, r => unseen_with::<_, B>(r, &self.checkpoint, &device))
    }
}

/// `detclip unseen`: a trained checkpoint of any recipe whose evaluation set is a synthetic
/// world, scored with the world's names and with names made of unseen words
/// ([`crate::unseen`]).
pub fn unseen_command(checkpoint: &Path, device: &str) -> Result<Vec<crate::unseen::WordingAp>> {
    let spec: DeviceSpec = device.parse()?;
    Checkpoint::read(checkpoint)?;
    run_on(
        spec,
        UnseenTask {
            checkpoint: checkpoint.to_path_buf(),
        },
    )?
}

/// `detclip detect`. `boxes`: for a recipe that classifies given boxes (RegionSpot), the
/// COCO-format file that holds them and the lowest score of a box to use (see
/// [`attach_boxes`]).
pub fn detect_command(
    checkpoint: &Path,
    image: &Path,
    prompt: &str,
    threshold: f32,
    out: &Path,
    device: &str,
    boxes: Option<(&Path, f32)>,
) -> Result<DetectReport> {
    let spec: DeviceSpec = device.parse()?;
    let names = parse_prompt(prompt)?;
    let images = crate::detect::image_paths(image)?;
    if !(0.0..=1.0).contains(&threshold) {
        return Err(DetError::InvalidOption {
            op: "detect",
            why: format!("--threshold must be in [0, 1], got {threshold}"),
        });
    }
    // Read and check the checkpoint before choosing a device or writing anything.
    Checkpoint::read(checkpoint)?;
    run_on(
        spec,
        DetectTask {
            checkpoint: checkpoint.to_path_buf(),
            images,
            names,
            threshold,
            out: out.to_path_buf(),
            boxes: boxes.map(|(p, s)| (p.to_path_buf(), s)),
        },
    )?
}

/// What `detclip demo` produced.
#[derive(Debug, Clone)]
pub struct DemoReport {
    /// The training run.
    pub run: RunSummary,
    /// AP on the test split: all, seen and held-out concepts.
    pub eval: Option<EvalReport>,
    /// Pictures of detections of held-out concepts.
    pub pictures: Vec<PathBuf>,
    /// The loss curve.
    pub loss_plot: PathBuf,
    /// The held-out concept names.
    pub held_out: Vec<String>,
    /// AP of the test split prompted with the world's names and with unseen synonyms
    /// ([`crate::unseen`]).
    pub unseen: Vec<crate::unseen::WordingAp>,
    /// Pictures of detections for prompts made only of unseen words.
    pub unseen_pictures: Vec<PathBuf>,
}

/// What `detclip demo` is asked for beyond the preset.
#[derive(Debug, Clone, Default)]
pub struct DemoOptions {
    /// Training steps (None: the preset's).
    pub steps: Option<u64>,
    /// The learner's seed (None: the preset's).
    pub seed: Option<u64>,
    /// A sentence-transformers folder for the language side (None: the trigram encoder).
    pub text_model: Option<PathBuf>,
}

struct DemoTask {
    recipe: ShapesRecipe,
    out: PathBuf,
    progress: bool,
}

impl BackendTask for DemoTask {
    type Output = Result<DemoReport>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let run_dir = self.out.join("run");
        let mut options = RunOptions::new(&run_dir);
        options.progress = self.progress;
        let run = train::<_, B>(&self.recipe, &device, &options)?;
        let files = crate::learner::RunFiles::of(&run_dir);
        let (recipe, model) =
            load_trained::<ShapesRecipe, B::InnerBackend>(&files.checkpoint, &device)?;
        let set = EvalSet::of(&recipe)?.ok_or_else(|| DetError::InvalidOption {
            op: "demo",
            why: "the demo recipe has no evaluation set".into(),
        })?;
        // Pictures: test images with a held-out concept, prompted with the held-out names only.
        let world = recipe
            .data
            .eval
            .as_ref()
            .and_then(|e| e.synthetic())
            .ok_or_else(|| DetError::InvalidOption {
                op: "demo",
                why: "the demo recipe's evaluation set is not synthetic".into(),
            })?
            .world()?;
        let samples: Vec<_> = (0..8).map(|i| world.image(Split::Test, i).sample).collect();
        let pictures = detect_and_write(
            &recipe,
            &model,
            &samples,
            &set.held_out,
            0.3,
            &self.out.join("held_out"),
            &device,
        )?
        .pictures;
        let cx = recipe.context()?;
        let unseen = crate::unseen::unseen_word_report(
            &recipe,
            &cx,
            &model,
            &set,
            recipe.learner.eval_batch_size,
            &device,
        )?;
        let unseen_prompts: Vec<String> = set
            .vocabulary
            .iter()
            .map(|n| crate::unseen::rewrite(n, crate::unseen::Rewrite::Both))
            .collect();
        let unseen_pictures = detect_and_write(
            &recipe,
            &model,
            &samples,
            &unseen_prompts,
            0.3,
            &self.out.join("unseen_words"),
            &device,
        )?
        .pictures;
        crate::learner::write_atomic(
            &self.out.join("unseen_words.json"),
            serde_json::to_string_pretty(&unseen)
                .expect("a report serialises")
                .as_bytes(),
        )?;
        Ok(DemoReport {
            eval: run.eval,
            run,
            pictures,
            loss_plot: files.plot,
            held_out: set.held_out,
            unseen,
            unseen_pictures,
        })
    }
}

/// `detclip demo`: trains the `shapes` recipe on the synthetic world, evaluates seen and
/// held-out AP and the AP of unseen-word prompts, and draws detections of held-out concepts
/// and of unseen-word prompts.
pub fn demo_command(
    out: &Path,
    device: &str,
    options: &DemoOptions,
    progress: bool,
) -> Result<DemoReport> {
    let spec: DeviceSpec = device.parse()?;
    let mut recipe = match &options.text_model {
        None => ShapesRecipe::demo(),
        Some(dir) => ShapesRecipe::demo_with_text_model(dir)?,
    };
    if let Some(s) = options.steps {
        recipe.learner.steps = s;
    }
    if let Some(s) = options.seed {
        recipe.learner.seed = s;
    }
    recipe.validate()?;
    run_on(
        spec,
        DemoTask {
            recipe,
            out: out.to_path_buf(),
            progress,
        },
    )?
}

struct RegionSpotCacheTask {
    recipe: RegionSpotRecipe,
    checkpoint: Option<PathBuf>,
    progress: bool,
}

impl BackendTask for RegionSpotCacheTask {
    type Output = Result<CacheReport>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        let model = match &self.checkpoint {
            Some(path) => load_trained::<RegionSpotRecipe, B::InnerBackend>(path, &device)?.1,
            None => {
                // A fresh run's frozen weights: built and prepared (or taken from
                // `learner.init_from`) exactly as `train` does.
                let model =
                    crate::learner::init_model::<RegionSpotRecipe, B>(&self.recipe, &device)?;
                burn::module::AutodiffModule::valid(&crate::learner::start_model(
                    &self.recipe,
                    model,
                    &device,
                )?)
            }
        };
        let bar = indicatif::ProgressBar::new(0);
        if !self.progress {
            bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
        }
        let report = cache_features(&self.recipe, &model, &device, |done, total| {
            bar.set_length(total as u64);
            bar.set_position(done as u64);
        })?;
        bar.finish_and_clear();
        Ok(report)
    }
}

/// `detclip regionspot cache`: SAM's and CLIP's outputs for every training image of the
/// recipe, written to `out` (which replaces the recipe's `cache_dir`). The frozen weights are
/// a checkpoint's, or, without one, those a fresh `train` run of this recipe would use.
pub fn regionspot_cache_command(
    config: Option<&Path>,
    checkpoint: Option<&Path>,
    out: &Path,
    device: &str,
    progress: bool,
) -> Result<CacheReport> {
    let spec: DeviceSpec = device.parse()?;
    let mut recipe = match (config, checkpoint) {
        (Some(p), _) => read_config::<RegionSpotRecipe>(p)?,
        (None, Some(c)) => {
            let ckpt = Checkpoint::read(c)?;
            ckpt.expect_recipe(RegionSpotRecipe::NAME, c)?;
            serde_json::from_value(ckpt.header.config).map_err(|e| DetError::Checkpoint {
                file: c.display().to_string(),
                why: format!("its config does not fit recipe `regionspot`: {e}"),
            })?
        }
        (None, None) => RegionSpotRecipe::synthetic(),
    };
    recipe.cache_dir = Some(out.to_path_buf());
    recipe.validate()?;
    run_on(
        spec,
        RegionSpotCacheTask {
            recipe,
            checkpoint: checkpoint.map(Path::to_path_buf),
            progress,
        },
    )?
}
