//! The shared learner: one training loop for every recipe.
//!
//! Per optimiser step: `accumulate` micro-batches, each drawn by the [joint
//! sampler](crate::data::JointSampler) from one source; the recipe turns each into named loss
//! terms; gradients are accumulated (Burn's `GradientsAccumulator`), clipped by their global
//! norm and applied by [`GroupedAdamW`] with the schedule's learning rate per group. Every step
//! is logged as a JSON line (`log.jsonl`: step, sources, learning rates, each loss term, the
//! gradient norm) and shown on a progress bar with ETA; checkpoints are written atomically
//! every `checkpoint_every` steps and at the end; `eval_every` steps the evaluation set is
//! scored with COCO AP; at the end the loss curve is drawn into `loss.png`.
//!
//! Why a loop of our own rather than Burn's `Learner`/`SupervisedTraining`: those iterate one
//! `DataLoader` of one item type per epoch, while joint training draws a different source
//! (batch size, resolution) each iteration, and resuming exactly needs the sampler's position
//! and the schedule's step in the checkpoint. The pieces below are Burn's (AdamW, gradient
//! containers and accumulator, records); the loop around them is ours.

mod checkpoint;
mod config;
mod master;
mod optim;
mod parallel;
mod precision;
mod schedule;

pub use checkpoint::{Checkpoint, Header, write_atomic};
pub use config::LearnerConfig;
pub use master::{convert_grads, copy_params, copy_state, copy_trained};
pub use optim::{GroupMultipliers, GroupedAdamW, OptimConfig, ParamLayout, StepInfo};
pub use parallel::{StepGrads, step_grads};
pub use precision::{LossScaler, ScaleChange};
pub use schedule::{Decay, ScheduleConfig};

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::time::Instant;

use burn::module::AutodiffModule;
use burn::optim::GradientsParams;
use burn::prelude::*;
use burn::record::{BinBytesRecorder, FullPrecisionSettings, Recorder};
use detclip_core::ext::{DetclipAutodiffBackend, DetclipOps};
use detclip_core::{DetError, Result};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::data::{JointSampler, Source};
use crate::draw::{Curve, plot};
pub use crate::evaluate::EvalSet;
use crate::evaluate::{EvalReport, evaluate_set, predict};
use crate::recipe::{ParamGroup, Recipe};

/// How to run: where to write, whether to resume, what to show.
#[derive(Debug, Clone, PartialEq)]
pub struct RunOptions {
    /// The run's folder: `config.json`, `log.jsonl`, `checkpoint.bin`, `loss.png`,
    /// `eval.json`.
    pub out: PathBuf,
    /// Continue from `out/checkpoint.bin`.
    pub resume: bool,
    /// Show a progress bar (on stderr, when it is a terminal).
    pub progress: bool,
    /// Stop after this many steps in total, as if the process had been killed after the
    /// checkpoint of that step (for tests of resuming); `None`: run to the end.
    pub stop_at: Option<u64>,
    /// Evaluate at all (periodic and final evaluation).
    pub evaluate: bool,
    /// Dynamic loss scaling (half precision runs); `None`: off. On resume the checkpoint's
    /// scaler state replaces it.
    pub loss_scaling: Option<LossScaler>,
    /// In half precision (`detclip train --precision f16|bf16`), keep f32 master weights and
    /// f32 optimiser moments ([`train_mixed`]); `false` keeps everything in the half type.
    /// f32 runs ignore it.
    pub master_weights: bool,
}

impl RunOptions {
    /// Defaults: no resume, a progress bar, evaluation on, master weights in half precision.
    pub fn new(out: impl Into<PathBuf>) -> Self {
        Self {
            out: out.into(),
            resume: false,
            progress: true,
            stop_at: None,
            evaluate: true,
            loss_scaling: None,
            master_weights: true,
        }
    }
}

/// One line of `log.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// The optimiser step (0-based).
    pub step: u64,
    /// The sources of its micro-batches.
    pub sources: Vec<String>,
    /// Learning rate per group.
    pub lr: BTreeMap<String, f64>,
    /// The loss (sum of the terms, averaged over micro-batches).
    pub loss: f64,
    /// Each named term, averaged over the micro-batches that had it.
    pub terms: BTreeMap<String, f64>,
    /// Global gradient norm before clipping (when clipping is on).
    pub grad_norm: Option<f64>,
    /// Seconds since the (resumed) run started.
    pub seconds: f64,
    /// The loss scale the step's backward pass used (loss scaling on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub loss_scale: Option<f64>,
    /// The gradients were not finite: the step was skipped (loss scaling on).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub skipped: bool,
}

/// What a run did.
#[derive(Debug, Clone)]
pub struct RunSummary {
    /// The steps run in this process.
    pub steps: Vec<StepLog>,
    /// The last evaluation, if any.
    pub eval: Option<EvalReport>,
    /// Wall-clock seconds.
    pub seconds: f64,
}

type Rec = BinBytesRecorder<FullPrecisionSettings>;

/// The model record as bytes.
pub fn model_bytes<B: Backend, M: Module<B>>(model: &M) -> Result<Vec<u8>> {
    Recorder::<B>::record(&Rec::default(), model.clone().into_record(), ()).map_err(|e| {
        DetError::Checkpoint {
            file: "<model>".into(),
            why: e.to_string(),
        }
    })
}

/// Loads a model record written by [`model_bytes`].
pub fn load_model_bytes<B: Backend, M: Module<B>>(
    model: M,
    bytes: &[u8],
    device: &B::Device,
    file: &Path,
) -> Result<M> {
    let record = Recorder::<B>::load(&Rec::default(), bytes.to_vec(), device).map_err(|e| {
        DetError::Checkpoint {
            file: file.display().to_string(),
            why: format!("the model record does not fit this recipe's model: {e}"),
        }
    })?;
    Ok(model.load_record(record))
}

/// The files of a run folder.
pub struct RunFiles {
    /// `config.json`.
    pub config: PathBuf,
    /// `log.jsonl`.
    pub log: PathBuf,
    /// `checkpoint.bin`.
    pub checkpoint: PathBuf,
    /// `loss.png`.
    pub plot: PathBuf,
    /// `eval.json`.
    pub eval: PathBuf,
}

impl RunFiles {
    /// The files of folder `out`.
    pub fn of(out: &Path) -> Self {
        Self {
            config: out.join("config.json"),
            log: out.join("log.jsonl"),
            checkpoint: out.join("checkpoint.bin"),
            plot: out.join("loss.png"),
            eval: out.join("eval.json"),
        }
    }
}

fn io_err(path: &Path, e: std::io::Error) -> DetError {
    DetError::Io {
        path: path.display().to_string(),
        msg: e.to_string(),
    }
}

/// Reads `log.jsonl` (skipping a last line cut short by a kill).
pub fn read_log(path: &Path) -> Result<Vec<StepLog>> {
    let f = File::open(path).map_err(|e| io_err(path, e))?;
    Ok(BufReader::new(f)
        .lines()
        .map_while(|l| l.ok())
        .filter_map(|l| serde_json::from_str::<StepLog>(&l).ok())
        .collect())
}

/// Draws the loss curve of a log: the total and each term, smoothed over a window.
pub fn loss_plot(log: &[StepLog], title: &str) -> image::RgbImage {
    let window = (log.len() / 50).max(1);
    let smooth = |vals: Vec<(f64, f64)>| -> Vec<(f64, f64)> {
        vals.chunks(window)
            .map(|c| {
                let n = c.len() as f64;
                (
                    c.iter().map(|p| p.0).sum::<f64>() / n,
                    c.iter().map(|p| p.1).sum::<f64>() / n,
                )
            })
            .collect()
    };
    let mut curves = vec![Curve {
        name: "loss".into(),
        points: smooth(log.iter().map(|l| (l.step as f64, l.loss)).collect()),
    }];
    let names: std::collections::BTreeSet<&String> =
        log.iter().flat_map(|l| l.terms.keys()).collect();
    for name in names {
        curves.push(Curve {
            name: name.clone(),
            points: smooth(
                log.iter()
                    .filter_map(|l| l.terms.get(name).map(|&v| (l.step as f64, v)))
                    .collect(),
            ),
        });
    }
    plot(&curves, title, 900, 420)
}

fn progress_bar(total: u64, start: u64, show: bool) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if !show {
        bar.set_draw_target(ProgressDrawTarget::hidden());
    }
    bar.set_style(
        ProgressStyle::with_template(
            "{spinner} [{elapsed_precise} < {eta_precise}] {wide_bar} {pos}/{len} {msg}",
        )
        .expect("a valid template"),
    );
    bar.set_position(start);
    bar.reset_eta();
    bar
}

/// Where a run starts: fresh (nothing in `out` yet) or from `out/checkpoint.bin`.
fn prepare_out<R: Recipe>(
    recipe: &R,
    options: &RunOptions,
    files: &RunFiles,
) -> Result<Option<Checkpoint>> {
    if options.resume {
        if !files.checkpoint.exists() {
            return Err(DetError::Io {
                path: files.checkpoint.display().to_string(),
                msg: "--resume was given but there is no checkpoint to resume from".into(),
            });
        }
        let ckpt = Checkpoint::read(&files.checkpoint)?;
        ckpt.expect_recipe(R::NAME, &files.checkpoint)?;
        // Compared as text after a round trip: an f32 field's JSON value differs from the
        // value `to_value` makes of it in memory.
        let saved = serde_json::from_value::<R>(ckpt.header.config.clone())
            .ok()
            .map(|r| serde_json::to_string(&r).expect("a recipe serialises"));
        if saved.as_deref() != Some(&serde_json::to_string(recipe).expect("a recipe serialises")) {
            return Err(DetError::Checkpoint {
                file: files.checkpoint.display().to_string(),
                why: "it was made with a different config than the one given; resume with \
                      the run's own config.json"
                    .into(),
            });
        }
        return Ok(Some(ckpt));
    }
    if files.checkpoint.exists() || files.log.exists() {
        return Err(DetError::InvalidOption {
            op: "train",
            why: format!(
                "{} already holds a run; pass --resume to continue it or choose another --out",
                options.out.display()
            ),
        });
    }
    Ok(None)
}

/// Keeps the log lines of steps before `step` (a resumed run rewrites what follows).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let kept: Vec<String> = match read_log(path) {
        Ok(log) => log
            .into_iter()
            .filter(|l| l.step < step)
            .map(|l| serde_json::to_string(&l).expect("a log line serialises"))
            .collect(),
        Err(_) => Vec::new(),
    };
    let mut text = kept.join("\n");
    if !text.is_empty() {
        text.push('\n');
    }
    write_atomic(path, text.as_bytes())
}

/// Trains `recipe` on `device`.
///
/// Bad input (a missing data path, an out folder that already holds a run, a checkpoint of
/// another recipe or config) is reported before anything is written.
pub fn train<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    device: &B::Device,
    options: &RunOptions,
) -> Result<RunSummary>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
{
    train_on_devices::<R, B>(recipe, std::slice::from_ref(device), options)
}

/// Trains `recipe` data-parallel on `devices` (see [`parallel`](self::step_grads)): each step
/// trains on `accumulate × devices.len()` micro-batches, one per device at a time; the model,
/// the optimiser and evaluation live on `devices[0]`. One device is [`train`].
pub fn train_on_devices<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    devices: &[B::Device],
    options: &RunOptions,
) -> Result<RunSummary>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
{
    run::<R, B, Plain<R, B>>(recipe, devices, &(), options)
}

/// Trains `recipe` like [`train_on_devices`], with master weights: the model computes on `B`
/// (e.g. `Autodiff<Cuda<f16>>`) while the optimiser keeps its own copy of the parameters and
/// its moments on `M`, device `master` (`detclip train --precision f16` uses the CPU backend in
/// f32, as ZeRO-Offload does); see [`copy_params`](self::copy_params). [`Recipe::prepare`]
/// runs on the compute model. Checkpoints hold the master copy, so they read like any f32
/// run's; evaluation runs on the compute copy, on the compute device.
pub fn train_mixed<R: Recipe, B: DetclipAutodiffBackend, M: DetclipAutodiffBackend>(
    recipe: &R,
    devices: &[B::Device],
    master: &M::Device,
    options: &RunOptions,
) -> Result<RunSummary>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
    R::Model<M>: AutodiffModule<M, InnerModule = R::Model<M::InnerBackend>>,
{
    run::<R, B, Mastered<R, B, M>>(recipe, devices, master, options)
}

/// The weights a run trains: the model the passes run on and the optimiser that updates it.
trait Weights<R: Recipe, B: DetclipAutodiffBackend>: Sized {
    /// Where the optimiser's copy lives, besides the compute device.
    type Place;
    /// A fresh run's weights ([`start_model`]), or a resumed run's from its checkpoint.
    fn start(
        recipe: &R,
        device: &B::Device,
        place: &Self::Place,
        resume: Option<(&Checkpoint, &Path)>,
    ) -> Result<Self>;
    /// The model the forward and backward passes run on.
    fn compute(&self) -> &R::Model<B>;
    /// Unscales `grads` (the compute model's) when `scaler` is set and, when they are finite,
    /// applies them at schedule factor `factor`; also says whether they were finite.
    fn step(
        self,
        grads: GradientsParams,
        factor: f64,
        scaler: Option<&LossScaler>,
    ) -> Result<(Self, StepInfo, bool)>;
    /// The learning rate of `group` at schedule factor `factor`.
    fn lr(&self, group: ParamGroup, factor: f64) -> f64;
    /// The model record and the optimiser state, as a checkpoint stores them.
    fn to_bytes(&self) -> Result<(Vec<u8>, Vec<u8>)>;
}

/// One copy: the optimiser updates the compute model itself.
struct Plain<R: Recipe, B: DetclipAutodiffBackend>
where
    R::Model<B>: AutodiffModule<B>,
{
    model: R::Model<B>,
    optim: GroupedAdamW<B, R::Model<B>>,
}

impl<R: Recipe, B: DetclipAutodiffBackend> Weights<R, B> for Plain<R, B>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
{
    type Place = ();

    fn start(
        recipe: &R,
        device: &B::Device,
        _: &(),
        resume: Option<(&Checkpoint, &Path)>,
    ) -> Result<Self> {
        let model = init_model::<R, B>(recipe, device)?;
        let model = match resume {
            Some((ckpt, file)) => load_model_bytes(model, &ckpt.model, device, file)?,
            None => start_model(recipe, model, device)?,
        };
        let optim = optimizer::<R, B>(recipe, &model, device, resume)?;
        Ok(Self { model, optim })
    }

    fn compute(&self) -> &R::Model<B> {
        &self.model
    }

    fn step(
        mut self,
        grads: GradientsParams,
        factor: f64,
        scaler: Option<&LossScaler>,
    ) -> Result<(Self, StepInfo, bool)> {
        let (grads, finite) = match scaler {
            Some(s) => s.unscale::<B, _>(&self.model, grads),
            None => (grads, true),
        };
        let mut info = StepInfo { grad_norm: None };
        if finite {
            (self.model, info) = self.optim.step(self.model, grads, factor);
        }
        Ok((self, info, finite))
    }

    fn lr(&self, group: ParamGroup, factor: f64) -> f64 {
        self.optim.lr(group, factor)
    }

    fn to_bytes(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        Ok((model_bytes::<B, _>(&self.model)?, self.optim.to_bytes()?))
    }
}

/// Master weights: the compute model on `B`, the parameters the optimiser updates (and its
/// moments) on `M`.
struct Mastered<R: Recipe, B: DetclipAutodiffBackend, M: DetclipAutodiffBackend>
where
    R::Model<M>: AutodiffModule<M>,
{
    compute: R::Model<B>,
    master: R::Model<M>,
    optim: GroupedAdamW<M, R::Model<M>>,
    device: B::Device,
    master_device: M::Device,
}

impl<R: Recipe, B: DetclipAutodiffBackend, M: DetclipAutodiffBackend> Weights<R, B>
    for Mastered<R, B, M>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
    R::Model<M>: AutodiffModule<M, InnerModule = R::Model<M::InnerBackend>>,
{
    type Place = M::Device;

    fn start(
        recipe: &R,
        device: &B::Device,
        master_device: &M::Device,
        resume: Option<(&Checkpoint, &Path)>,
    ) -> Result<Self> {
        // The compute model is built like a one-copy run's, so that `B`'s generator (dropout,
        // sampling in the loss) is seeded and advanced as it would be.
        let compute = init_model::<R, B>(recipe, device)?;
        let (compute, master) = match resume {
            Some((ckpt, file)) => {
                let master = recipe.build::<M>(master_device)?;
                let master = load_model_bytes(master, &ckpt.model, master_device, file)?;
                // Loaded tensors take the device's default float type: make them `M`'s.
                let master = copy_params::<M, M, _, _>(&master, master.clone(), master_device)?;
                let compute = copy_params::<M, B, _, _>(&master, compute, device)?;
                (compute, master)
            }
            None => {
                let compute = start_model(recipe, compute, device)?;
                let master = recipe.build::<M>(master_device)?;
                let master = copy_params::<B, M, _, _>(&compute, master, master_device)?;
                (compute, master)
            }
        };
        let optim = optimizer::<R, M>(recipe, &master, master_device, resume)?;
        Ok(Self {
            compute,
            master,
            optim,
            device: device.clone(),
            master_device: master_device.clone(),
        })
    }

    fn compute(&self) -> &R::Model<B> {
        &self.compute
    }

    fn step(
        mut self,
        grads: GradientsParams,
        factor: f64,
        scaler: Option<&LossScaler>,
    ) -> Result<(Self, StepInfo, bool)> {
        let grads = convert_grads::<B, M, _>(&self.compute, grads, &self.master_device);
        let (grads, finite) = match scaler {
            Some(s) => s.unscale::<M, _>(&self.master, grads),
            None => (grads, true),
        };
        let mut info = StepInfo { grad_norm: None };
        if finite {
            (self.master, info) = self.optim.step(self.master, grads, factor);
            self.compute = copy_trained::<M, B, _, _>(&self.master, self.compute, &self.device)?;
        }
        Ok((self, info, finite))
    }

    fn lr(&self, group: ParamGroup, factor: f64) -> f64 {
        self.optim.lr(group, factor)
    }

    fn to_bytes(&self) -> Result<(Vec<u8>, Vec<u8>)> {
        // Running statistics change in the compute model's forward passes, not in the masters.
        let master =
            copy_state::<B, M, _, _>(&self.compute, self.master.clone(), &self.master_device)?;
        Ok((model_bytes::<M, _>(&master)?, self.optim.to_bytes()?))
    }
}

/// The optimiser of `model`: fresh, or with the state of the checkpoint `resume`.
fn optimizer<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    model: &R::Model<B>,
    device: &B::Device,
    resume: Option<(&Checkpoint, &Path)>,
) -> Result<GroupedAdamW<B, R::Model<B>>>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
{
    let optim =
        GroupedAdamW::<B, R::Model<B>>::new(recipe.learner().optim.clone(), model, R::param_group);
    match resume {
        Some((ckpt, _)) => optim.load_bytes(&ckpt.optim, device),
        None => Ok(optim),
    }
}

fn run<R: Recipe, B: DetclipAutodiffBackend, W: Weights<R, B>>(
    recipe: &R,
    devices: &[B::Device],
    place: &W::Place,
    options: &RunOptions,
) -> Result<RunSummary>
where
    R::Model<B>: AutodiffModule<B, InnerModule = R::Model<B::InnerBackend>>,
{
    let device = devices.first().ok_or_else(|| DetError::InvalidOption {
        op: "train",
        why: "no device to train on".into(),
    })?;
    if let Some(s) = &options.loss_scaling {
        s.validate()?;
    }
    let started = Instant::now();
    recipe.validate()?;
    let cfg = recipe.learner();
    if let Some(path) = &cfg.init_from
        && !options.resume
        && !path.is_file()
    {
        return Err(DetError::Io {
            path: path.display().to_string(),
            msg: "learner.init_from: no such checkpoint file".into(),
        });
    }
    let files = RunFiles::of(&options.out);
    let resume_from = prepare_out(recipe, options, &files)?;
    // Training normalises pixels as the recipe's test transform does (GLIP: BGR in 0–255).
    let normalize = recipe.test_transform().normalize;
    let sources = recipe
        .data()
        .sources
        .iter()
        .map(|c| {
            Source::load(c).map(|mut s| {
                s.transform.normalize = normalize;
                s
            })
        })
        .collect::<Result<Vec<_>>>()?;
    let eval_set = if options.evaluate {
        EvalSet::of(recipe)?
    } else {
        None
    };
    let mut sampler = JointSampler::new(sources, cfg.seed, recipe.data().size_divisor);

    let mut weights = W::start(
        recipe,
        device,
        place,
        resume_from
            .as_ref()
            .map(|c| (c, files.checkpoint.as_path())),
    )?;
    let cx = recipe.context()?;
    let mut start = 0;
    if let Some(ckpt) = &resume_from {
        sampler.restore(ckpt.header.sampler.clone())?;
        start = ckpt.header.step;
        truncate_log(&files.log, start)?;
    } else {
        fs::create_dir_all(&options.out).map_err(|e| io_err(&options.out, e))?;
        let json = serde_json::to_string_pretty(recipe).expect("a recipe serialises");
        write_atomic(&files.config, json.as_bytes())?;
    }
    let mut log_file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&files.log)
        .map_err(|e| io_err(&files.log, e))?;

    let mut scaler = options.loss_scaling.clone();
    if let Some(saved) = resume_from
        .as_ref()
        .and_then(|c| c.header.loss_scaler.clone())
    {
        scaler = Some(saved);
    }
    let end = options.stop_at.unwrap_or(cfg.steps).min(cfg.steps);
    let bar = progress_bar(cfg.steps, start, options.progress);
    let mut summary = RunSummary {
        steps: Vec::new(),
        eval: None,
        seconds: 0.0,
    };
    for step in start..end {
        let factor = cfg.schedule.factor(step, cfg.steps);
        let loss_scale = scaler.as_ref().map(|s| s.scale());
        let micro = step_grads(
            recipe,
            &cx,
            weights.compute(),
            &mut sampler,
            devices,
            cfg.accumulate,
            loss_scale.unwrap_or(1.0),
        )?;
        // A step with infinite or NaN gradients (checked when the loss is scaled) leaves the
        // model and the optimiser as they were.
        let (next, info, finite) = weights.step(micro.grads, factor, scaler.as_ref())?;
        weights = next;
        if let Some(s) = &mut scaler {
            s.update(finite);
        }
        let (sources, term_sums, loss_sum) = (micro.sources, micro.terms, micro.loss_sum);
        let entry = StepLog {
            step,
            sources,
            lr: ParamGroup::ALL
                .iter()
                .map(|&g| (g.name().to_string(), weights.lr(g, factor)))
                .collect(),
            loss: loss_sum / micro.micro_batches as f64,
            terms: term_sums
                .into_iter()
                .map(|(k, (s, n))| (k, s / n as f64))
                .collect(),
            grad_norm: info.grad_norm,
            seconds: started.elapsed().as_secs_f64(),
            loss_scale: loss_scale.map(f64::from),
            skipped: !finite,
        };
        let line = serde_json::to_string(&entry).expect("a log line serialises");
        writeln!(log_file, "{line}").map_err(|e| io_err(&files.log, e))?;
        bar.set_message(format!("loss {:.4}", entry.loss));
        bar.inc(1);
        summary.steps.push(entry);

        let done = step + 1;
        let last = done == cfg.steps;
        if last || (cfg.checkpoint_every > 0 && done.is_multiple_of(cfg.checkpoint_every)) {
            log_file.flush().map_err(|e| io_err(&files.log, e))?;
            let (model, optim) = weights.to_bytes()?;
            Checkpoint {
                header: Header {
                    recipe: R::NAME.to_string(),
                    config: serde_json::to_value(recipe).expect("a recipe serialises"),
                    step: done,
                    sampler: sampler.state().clone(),
                    model_len: 0,
                    optim_len: 0,
                    loss_scaler: scaler.clone(),
                },
                model,
                optim,
            }
            .write(&files.checkpoint)?;
        }
        let periodic = cfg.eval_every > 0 && done.is_multiple_of(cfg.eval_every);
        if let Some(set) = &eval_set
            && (periodic || last)
        {
            bar.set_message("evaluating");
            // The compute copy, on the compute device (the masters may sit on the CPU).
            let model = weights.compute().valid();
            let report = evaluate_model(recipe, &cx, &model, set, cfg.eval_batch_size, device)?;
            let line = serde_json::json!({ "step": step, "eval": report });
            writeln!(log_file, "{line}").map_err(|e| io_err(&files.log, e))?;
            summary.eval = Some(report);
        }
    }
    bar.finish_and_clear();
    log_file.flush().map_err(|e| io_err(&files.log, e))?;
    if end == cfg.steps {
        let log = read_log(&files.log)?;
        let png = loss_plot(&log, &format!("{} loss", R::NAME));
        png.save(&files.plot).map_err(|e| DetError::Io {
            path: files.plot.display().to_string(),
            msg: e.to_string(),
        })?;
        if let Some(report) = &summary.eval {
            let json = serde_json::to_string_pretty(report).expect("a report serialises");
            write_atomic(&files.eval, json.as_bytes())?;
        }
    }
    summary.seconds = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// The model a fresh run starts from: `learner.init_from`'s model when it is set (a checkpoint
/// of another recipe, or of another model shape, is refused), else the freshly built `model`
/// after [`Recipe::prepare`].
pub fn start_model<R: Recipe, B: DetclipAutodiffBackend>(
    recipe: &R,
    model: R::Model<B>,
    device: &B::Device,
) -> Result<R::Model<B>> {
    match &recipe.learner().init_from {
        Some(path) => {
            let ckpt = Checkpoint::read(path)?;
            ckpt.expect_recipe(R::NAME, path)?;
            load_model_bytes(model, &ckpt.model, device, path)
        }
        None => recipe.prepare(model, device),
    }
}

/// Builds the recipe's model with the learner's seed and initialises every parameter at once,
/// in module order. (Burn initialises parameters lazily, on first use: without this, the order
/// in which a forward pass touches them — and anything else drawing from the backend's
/// generator in between — would decide their values.)
pub fn init_model<R: Recipe, B: Backend>(recipe: &R, device: &B::Device) -> Result<R::Model<B>> {
    B::seed(device, recipe.learner().seed);
    Ok(materialised(recipe.build::<B>(device)?))
}

/// `m` with every parameter drawn now, in module order. Burn initialises parameters lazily,
/// on first use, from the backend's global generator: a module used later would draw then,
/// after whatever else drew in between.
pub fn materialised<B: Backend, M: Module<B>>(m: M) -> M {
    struct Touch;
    impl<B: Backend> burn::module::ModuleVisitor<B> for Touch {
        fn visit_float<const D: usize>(&mut self, p: &burn::module::Param<Tensor<B, D>>) {
            let _ = p.val();
        }
    }
    m.visit(&mut Touch);
    m
}

/// COCO AP of a model on an evaluation set (all, seen and held-out concepts).
pub fn evaluate_model<R: Recipe, B: DetclipOps>(
    recipe: &R,
    cx: &R::Context,
    model: &R::Model<B>,
    set: &EvalSet,
    batch_size: usize,
    device: &B::Device,
) -> Result<EvalReport> {
    let dets = predict(
        recipe,
        cx,
        model,
        &set.samples,
        &set.vocabulary,
        0.05,
        batch_size,
        device,
    )?;
    evaluate_set(set, &dets)
}

/// Loads a trained model from a checkpoint, checking that `recipe` made it.
pub fn load_trained<R: Recipe, B: Backend>(
    path: &Path,
    device: &B::Device,
) -> Result<(R, R::Model<B>)> {
    let ckpt = Checkpoint::read(path)?;
    ckpt.expect_recipe(R::NAME, path)?;
    let recipe: R =
        serde_json::from_value(ckpt.header.config.clone()).map_err(|e| DetError::Checkpoint {
            file: path.display().to_string(),
            why: format!("its config does not fit recipe `{}`: {e}", R::NAME),
        })?;
    let model = recipe.build::<B>(device)?;
    let model = load_model_bytes(model, &ckpt.model, device, path)?;
    Ok((recipe, model))
}
