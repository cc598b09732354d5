//! What master weights cost: the training step time of one recipe with one copy of the weights
//! and with an f32 master copy on the CPU (`learner::train_mixed`, what `detclip train
//! --precision f16` does).
//!
//! - `--precision f32` (any device): the plain f32 run against the same run with its AdamW
//!   step moved to an f32 copy on the CPU. The two train the same weights (the copies are
//!   exact); the difference is the cost of the copies and of stepping on the CPU.
//! - `--precision f16` (wgpu, cuda): pure half precision (`--no-master-weights`) against half
//!   precision with f32 masters.
//!
//! The reference here is our own one-copy run, not PyTorch: the quantity is the overhead
//! ratio. Step times are the median of the per-step wall-clock differences in `log.jsonl`,
//! leaving out the first `--warmup` steps (autotune, allocation).

use std::path::{Path, PathBuf};

use detclip_core::backend::{DevicesTask, Precision, parse_device_list, run_on_devices};
use detclip_core::ext::DetclipAutodiffBackend;
use detclip_train::learner::{RunOptions, RunSummary, train_mixed, train_on_devices};
use detclip_train::recipes::{GlipRecipe, ShapesRecipe};

use crate::common::{feature_flag, machine, median};

/// Arguments of `detclip-bench precision`.
#[derive(clap::Args, Debug)]
pub struct PrecisionArgs {
    /// Device (cpu | wgpu[:N] | cuda[:N]).
    #[arg(long, default_value = "cpu")]
    device: String,
    /// f32 | f16 (wgpu, cuda) | bf16 (cuda).
    #[arg(long, default_value = "f32")]
    precision: String,
    /// The recipe: `shapes` (the demo detector) or `glip` (the synthetic GLIP preset).
    #[arg(long, default_value = "shapes")]
    recipe: String,
    /// Steps per run.
    #[arg(long, default_value_t = 20)]
    steps: u64,
    /// Leading steps left out of the median.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Where the Markdown results go.
    #[arg(long, default_value = "detclip-bench/results/precision.md")]
    out: PathBuf,
}

/// One timed run.
struct Timed {
    mode: &'static str,
    step_ms: f64,
    last_loss: f64,
}

fn step_ms(run: &RunSummary, warmup: usize) -> f64 {
    let t: Vec<f64> = run.steps.iter().map(|s| s.seconds).collect();
    let d: Vec<f64> = t
        .windows(2)
        .skip(warmup)
        .map(|w| (w[1] - w[0]) * 1e3)
        .collect();
    if d.is_empty() { f64::NAN } else { median(d) }
}

/// The recipe under test (concrete types: the learner's bounds hold for each recipe's model,
/// not for a generic one). Built once per run: the variants' sizes do not matter.
#[allow(clippy::large_enum_variant)]
enum Which {
    Shapes(ShapesRecipe),
    Glip(GlipRecipe),
}

struct Bench {
    recipe: Which,
    scratch: PathBuf,
    warmup: usize,
}

impl Bench {
    fn options(&self, name: &str) -> RunOptions {
        let out = self.scratch.join(name);
        let _ = std::fs::remove_dir_all(&out);
        let mut o = RunOptions::new(out);
        o.progress = false;
        o.evaluate = false;
        o
    }

    fn timed(
        &self,
        mode: &'static str,
        run: detclip_core::Result<RunSummary>,
    ) -> Result<Timed, String> {
        let run = run.map_err(|e| format!("{mode}: {e}"))?;
        Ok(Timed {
            mode,
            step_ms: step_ms(&run, self.warmup),
            last_loss: run.steps.last().map(|s| s.loss).unwrap_or(f64::NAN),
        })
    }

    /// One run with one copy of the weights on `B`, one with masters on `M`.
    fn pair<B: DetclipAutodiffBackend, M: DetclipAutodiffBackend>(
        &self,
        devices: &[B::Device],
        master: &M::Device,
        modes: [&'static str; 2],
    ) -> Result<Vec<Timed>, String> {
        let (one, two) = (self.options("one"), self.options("masters"));
        let (plain, mixed) = match &self.recipe {
            Which::Shapes(r) => (
                train_on_devices::<_, B>(r, devices, &one),
                train_mixed::<_, B, M>(r, devices, master, &two),
            ),
            Which::Glip(r) => (
                train_on_devices::<_, B>(r, devices, &one),
                train_mixed::<_, B, M>(r, devices, master, &two),
            ),
        };
        Ok(vec![
            self.timed(modes[0], plain)?,
            self.timed(modes[1], mixed)?,
        ])
    }
}

impl DevicesTask for Bench {
    type Output = Result<Vec<Timed>, String>;

    fn run<B: DetclipAutodiffBackend>(self, devices: Vec<B::Device>) -> Self::Output {
        type Cpu = burn::backend::Autodiff<detclip_core::backend::NdArrayBackend>;
        self.pair::<B, Cpu>(
            &devices,
            &Default::default(),
            ["one f32 copy", "+ f32 masters on the CPU"],
        )
    }

    fn run_half<B: DetclipAutodiffBackend, F: DetclipAutodiffBackend>(
        self,
        devices: Vec<B::Device>,
        master: Option<F::Device>,
    ) -> Self::Output {
        let master = master.ok_or("this build has no CPU backend for the masters")?;
        self.pair::<B, F>(
            &devices,
            &master,
            [
                "half weights (--no-master-weights)",
                "half compute, f32 masters on the CPU",
            ],
        )
    }
}

/// Runs the benchmark and writes `args.out`.
pub fn run(args: PrecisionArgs) -> Result<(), String> {
    let precision: Precision = args.precision.parse().map_err(|e| format!("{e}"))?;
    let specs = parse_device_list(&args.device).map_err(|e| format!("{e}"))?;
    let scratch =
        std::env::temp_dir().join(format!("detclip-bench-precision-{}", std::process::id()));
    let steps = args.steps.max(args.warmup as u64 + 2);
    let recipe = match args.recipe.as_str() {
        "shapes" => {
            let mut r = ShapesRecipe::demo();
            prepare(&mut r.learner, steps);
            Which::Shapes(r)
        }
        "glip" => {
            let mut r = GlipRecipe::synthetic();
            prepare(&mut r.learner, steps);
            Which::Glip(r)
        }
        other => return Err(format!("unknown recipe `{other}` (shapes | glip)")),
    };
    let bench = Bench {
        recipe,
        scratch: scratch.clone(),
        warmup: args.warmup,
    };
    let rows = run_on_devices(&specs, precision, bench).map_err(|e| format!("{e}"))??;
    let _ = std::fs::remove_dir_all(&scratch);
    write(&args, &specs[0], steps, &rows, &args.out)
}

fn prepare(learner: &mut detclip_train::learner::LearnerConfig, steps: u64) {
    learner.steps = steps;
    learner.checkpoint_every = 0;
}

fn write(
    args: &PrecisionArgs,
    spec: &detclip_core::backend::DeviceSpec,
    steps: u64,
    rows: &[Timed],
    out: &Path,
) -> Result<(), String> {
    let base = rows.first().map(|r| r.step_ms).unwrap_or(f64::NAN);
    let mut md = String::from("# Master weights: training step time\n\n");
    md.push_str(&format!(
        "- command: `cargo run -p detclip-bench --release{} -- precision --device {} --precision {} --recipe {} --steps {} --warmup {}`\n",
        feature_flag(*spec),
        args.device,
        args.precision,
        args.recipe,
        steps,
        args.warmup
    ));
    md.push_str(&format!("- machine: {} ({spec})\n", machine()));
    md.push_str(&format!(
        "- median of the per-step times after the first {} steps\n\n",
        args.warmup
    ));
    md.push_str("| weights | step ms | ratio | last loss |\n|---|---:|---:|---:|\n");
    for r in rows {
        md.push_str(&format!(
            "| {} | {:.1} | {:.2} | {:.4} |\n",
            r.mode,
            r.step_ms,
            r.step_ms / base,
            r.last_loss
        ));
    }
    print!("{md}");
    if let Some(dir) = out.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    std::fs::write(out, md).map_err(|e| format!("{}: {e}", out.display()))
}
