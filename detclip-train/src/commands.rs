//! The `train`, `detect` and `demo` commands as library functions: the device string picks the
//! backend at run time ([`run_on`]) and the recipe name picks the recipe ([`AnyRecipe`], a
//! typed enum: adding a recipe adds a variant, there is no string registry).

use std::path::{Path, PathBuf};

use detclip_core::backend::{BackendTask, DeviceSpec, run_on};
use detclip_core::data::synthetic::Split;
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_core::{DetError, Result};

use crate::detect::{DetectReport, detect_and_write, image_samples, parse_prompt};
use crate::evaluate::EvalReport;
use crate::learner::{Checkpoint, EvalSet, RunOptions, RunSummary, load_trained, train};
use crate::recipe::{Recipe, read_config};
use crate::recipes::{GlipRecipe, ShapesRecipe};

/// Every recipe this build knows.
#[derive(Debug, Clone)]
pub enum AnyRecipe {
    /// [`ShapesRecipe`].
    Shapes(ShapesRecipe),
    /// [`GlipRecipe`].
    Glip(GlipRecipe),
}

/// The recipe names `--recipe` accepts.
pub const RECIPES: [&str; 2] = [ShapesRecipe::NAME, GlipRecipe::NAME];

impl AnyRecipe {
    /// The recipe `name` with its default preset, or the config read from `config`.
    pub fn load(name: &str, config: Option<&Path>) -> Result<Self> {
        match name {
            n if n == ShapesRecipe::NAME => Ok(AnyRecipe::Shapes(match config {
                Some(p) => read_config(p)?,
                None => ShapesRecipe::demo(),
            })),
            n if n == GlipRecipe::NAME => Ok(AnyRecipe::Glip(match config {
                Some(p) => read_config(p)?,
                None => GlipRecipe::synthetic(),
            })),
            _ => Err(DetError::InvalidOption {
                op: "train",
                why: format!(
                    "unknown recipe `{name}`; this build has: {}",
                    RECIPES.join(", ")
                ),
            }),
        }
    }
}

struct TrainTask {
    recipe: AnyRecipe,
    options: RunOptions,
}

impl BackendTask for TrainTask {
    type Output = Result<RunSummary>;
    fn run<B: DetclipAutodiffBackend>(self, device: B::Device) -> Self::Output {
        match &self.recipe {
            AnyRecipe::Shapes(r) => train::<_, B>(r, &device, &self.options),
            AnyRecipe::Glip(r) => train::<_, B>(r, &device, &self.options),
        }
    }
}

/// `detclip train`.
pub fn train_command(recipe: AnyRecipe, device: &str, options: RunOptions) -> Result<RunSummary> {
    let spec: DeviceSpec = device.parse()?;
    run_on(spec, TrainTask { recipe, options })?
}

struct DetectTask {
    checkpoint: PathBuf,
    images: Vec<PathBuf>,
    names: Vec<String>,
    threshold: f32,
    out: PathBuf,
}

fn detect_with<R: Recipe, B: DetclipAutodiffBackend>(
    t: &DetectTask,
    device: &B::Device,
) -> Result<DetectReport> {
    let samples = image_samples(&t.images)?;
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
        let header = Checkpoint::read(&self.checkpoint)?.header;
        match header.recipe.as_str() {
            n if n == ShapesRecipe::NAME => detect_with::<ShapesRecipe, B>(&self, &device),
            n if n == GlipRecipe::NAME => detect_with::<GlipRecipe, B>(&self, &device),
            other => Err(DetError::Checkpoint {
                file: self.checkpoint.display().to_string(),
                why: format!("made by recipe `{other}`, which this build does not have"),
            }),
        }
    }
}

/// `detclip detect`.
pub fn detect_command(
    checkpoint: &Path,
    image: &Path,
    prompt: &str,
    threshold: f32,
    out: &Path,
    device: &str,
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
            .map(|c| c.world())
            .transpose()?
            .expect("checked above");
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
        Ok(DemoReport {
            eval: run.eval,
            run,
            pictures,
            loss_plot: files.plot,
            held_out: set.held_out,
        })
    }
}

/// `detclip demo`: trains the `shapes` recipe on the synthetic world, evaluates seen and
/// held-out AP, and draws detections of held-out concepts. `steps` overrides the preset's.
pub fn demo_command(
    out: &Path,
    device: &str,
    steps: Option<u64>,
    progress: bool,
) -> Result<DemoReport> {
    let spec: DeviceSpec = device.parse()?;
    let mut recipe = ShapesRecipe::demo();
    if let Some(s) = steps {
        recipe.learner.steps = s;
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
