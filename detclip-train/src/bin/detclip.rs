//! The `detclip` command.
//!
//! ```text
//! detclip check [--device cpu|wgpu[:N]|cuda[:N]|auto] [--seed N] [--json]
//! detclip eval coco --gt GT.json --dt DETECTIONS.json [--json] [--per-category]
//! detclip eval lvis --gt GT.json --dt DETECTIONS.json [--json] [--per-category] [--fixed-ap]
//! detclip eval odinw --config LIST.json [--json]
//! detclip eval grounding --input PHRASES.json [--k 1,5,10] [--iou 0.5] [--json]
//! detclip train --recipe NAME [--config FILE] [--data FILE] [--device auto] [--out DIR] [--resume]
//!     [--devices cuda:0,cuda:1] [--precision f32|f16|bf16 [--no-master-weights]]
//! detclip detect --checkpoint C --image PATH|DIR --prompt "cat. dog." [--threshold 0.3] [--out DIR]
//!                [--boxes DETECTIONS.json [--min-box-score S]]   (regionspot: classify given boxes)
//! detclip unseen --checkpoint C [--json FILE]
//! detclip demo [--out DIR] [--device cpu] [--steps N] [--seed S] [--text-model DIR]
//! detclip import --recipe NAME --checkpoint OFFICIAL [--checkpoint …] [--config FILE] --out DIR
//! detclip regionspot cache [--config FILE | --checkpoint C] --out DIR [--device auto]
//! detclip vild precompute --annotations GT.json --images DIR --detector MASKRCNN.pth --clip CLIP
//!     [--clip-model vit-b-32] [--clip-layout hf|openai] [--out DIR] [--proposals 300]
//!     [--shard-size 256] [--max-shards N] [--device auto]
//! ```
//! `check` runs every core op on the device and compares it with the CPU reference. `eval`
//! computes COCO / LVIS box AP (pycocotools / lvis parity), ODinW means and grounding recall;
//! bad input exits with code 2 and a message naming the file and the problem. `train` runs a
//! recipe through the shared learner, `detect` writes COCO JSON and annotated pictures, `demo`
//! trains the synthetic-world detector on the CPU and reports seen and held-out AP.

use std::process::ExitCode;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use detclip_core::backend::{DeviceSpec, run_on};
use detclip_core::check::Check;
use detclip_train::commands::{self, AnyRecipe};
use detclip_train::eval_cli::{self, Format};
use detclip_train::learner::RunOptions;

#[derive(Parser)]
#[command(
    name = "detclip",
    version,
    about = "Open-vocabulary object detection on Burn"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run every core op on the device and compare it with the CPU reference backend.
    Check {
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "auto")]
        device: String,
        /// Seed of the random inputs.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Evaluate detections: COCO / LVIS box AP, ODinW, grounding recall.
    Eval {
        #[command(subcommand)]
        what: EvalCommand,
    },
    /// Train a recipe with the shared learner.
    Train {
        /// The recipe (`shapes`, `regionspot`, `detclipv2`, `glip`, `vild`).
        #[arg(long)]
        recipe: String,
        /// The recipe's config as JSON (default: the recipe's preset).
        #[arg(long)]
        config: Option<PathBuf>,
        /// A data block as JSON (sources, eval, size_divisor) that replaces the config's.
        #[arg(long)]
        data: Option<PathBuf>,
        /// A Hugging Face text model folder as the language side (shapes: a frozen
        /// sentence-transformers encoder; glip: BERT weights to start from), e.g.
        /// ../shared/models/all-MiniLM-L6-v2.
        #[arg(long)]
        text_model: Option<PathBuf>,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "auto")]
        device: String,
        /// The run's folder (config.json, log.jsonl, checkpoint.bin, loss.png, eval.json).
        #[arg(long, default_value = "runs/train")]
        out: PathBuf,
        /// Continue the run in --out from its checkpoint.
        #[arg(long)]
        resume: bool,
        /// Data-parallel over several devices of one backend, e.g. cuda:0,cuda:1 (replaces
        /// --device; `cpu,cpu` runs the multi-device path on the CPU).
        #[arg(long, conflicts_with = "device")]
        devices: Option<String>,
        /// f32 | f16 (wgpu, cuda) | bf16 (cuda); half precision scales the loss dynamically
        /// and keeps f32 master weights and optimiser moments.
        #[arg(long, default_value = "f32")]
        precision: String,
        /// With --precision f16|bf16: keep the weights and AdamW's moments in the half type
        /// too (no f32 master copy: less memory, but updates under half an ulp are lost).
        #[arg(long)]
        no_master_weights: bool,
    },
    /// Detect concepts in images with a trained checkpoint.
    Detect {
        /// A checkpoint written by `detclip train`.
        #[arg(long)]
        checkpoint: PathBuf,
        /// An image, or a folder of .jpg/.png images.
        #[arg(long)]
        image: PathBuf,
        /// Concept names separated by periods: "cat. dog."
        #[arg(long)]
        prompt: String,
        /// Minimum score.
        #[arg(long, default_value_t = 0.3)]
        threshold: f32,
        /// Output folder (detections.json and annotated pictures).
        #[arg(long, default_value = "detections")]
        out: PathBuf,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "auto")]
        device: String,
        /// The boxes to classify, for a recipe that is given its boxes (regionspot): a
        /// COCO-format file (another detector's detections.json, or ground truth); images
        /// are matched by file name.
        #[arg(long)]
        boxes: Option<PathBuf>,
        /// With --boxes: use only boxes scored at least this.
        #[arg(long, default_value_t = 0.0, requires = "boxes")]
        min_box_score: f32,
    },
    /// Score a trained checkpoint on its synthetic evaluation set with the world's names and
    /// with names made of words no training data had (near-synonyms).
    Unseen {
        /// A checkpoint written by `detclip train` (or `demo`).
        #[arg(long)]
        checkpoint: PathBuf,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "auto")]
        device: String,
        /// Also write the table as JSON here.
        #[arg(long)]
        json: Option<PathBuf>,
    },
    /// Turn an official checkpoint into a run folder (config.json, checkpoint.bin at step 0).
    Import {
        /// The recipe (`glip`: the released GLIP .pth; `regionspot`: the official RegionSpot
        /// .pth, or SAM's then CLIP's).
        #[arg(long)]
        recipe: String,
        /// The official file(s), .pth or .safetensors; repeat for several.
        #[arg(long, required = true)]
        checkpoint: Vec<PathBuf>,
        /// The recipe's config with the checkpoint's sizes (default: the recipe's preset).
        #[arg(long)]
        config: Option<PathBuf>,
        /// glip: the official yacs config the checkpoint was trained with (e.g.
        /// glip_Swin_T_O365_GoldG.yaml); repeat to merge several in order (a task config
        /// after the model's). Needs --text-model.
        #[arg(long)]
        official_config: Vec<PathBuf>,
        /// glip: KEY=VALUE over the official config, as the official tools take them
        /// (TEST.CHUNKED_EVALUATION=40); repeat for several.
        #[arg(long)]
        official_set: Vec<String>,
        /// glip: the Hugging Face bert-base-uncased folder (config.json, tokenizer.json);
        /// alone, it imports the released GLIP-T. regionspot: the CLIP folder
        /// (openai/clip-vit-base-patch16 for RegionSpot-BB), for its sizes and tokenizer.
        #[arg(long)]
        text_model: Option<PathBuf>,
        /// The run folder to create.
        #[arg(long)]
        out: PathBuf,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "cpu")]
        device: String,
    },
    /// ViLD tools.
    Vild {
        #[command(subcommand)]
        what: VildCommand,
    },
    /// Train a small detector on the synthetic world and measure held-out-concept AP.
    Demo {
        /// Output folder.
        #[arg(long, default_value = "detclip-demo")]
        out: PathBuf,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "cpu")]
        device: String,
        /// Training steps (default: the preset's).
        #[arg(long)]
        steps: Option<u64>,
        /// The learner's seed (default: the preset's).
        #[arg(long)]
        seed: Option<u64>,
        /// A sentence-transformers folder (e.g. ../shared/models/all-MiniLM-L6-v2) as the
        /// frozen language side, instead of the trigram encoder trained from scratch.
        #[arg(long)]
        text_model: Option<PathBuf>,
    },
    /// RegionSpot tools.
    Regionspot {
        #[command(subcommand)]
        what: RegionSpotCommand,
    },
}

#[derive(Subcommand)]
enum RegionSpotCommand {
    /// Compute SAM's and CLIP's outputs for every training image once and cache them.
    Cache {
        /// The recipe config (default: the synthetic preset).
        #[arg(long)]
        config: Option<PathBuf>,
        /// Take the frozen weights (and the config) from this checkpoint.
        #[arg(long)]
        checkpoint: Option<PathBuf>,
        /// The cache folder (set it as `cache_dir` in the training config).
        #[arg(long)]
        out: PathBuf,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

#[derive(Subcommand)]
enum VildCommand {
    /// CLIP embeddings of every training image's proposals (1× and 1.5× crops), for
    /// ViLD-image; resumable (whole shards are skipped).
    Precompute {
        /// COCO/LVIS instances json of the training images.
        #[arg(long)]
        annotations: PathBuf,
        /// Their image folder.
        #[arg(long)]
        images: PathBuf,
        /// torchvision maskrcnn_resnet50_fpn state dict (the proposal network).
        #[arg(long)]
        detector: PathBuf,
        /// CLIP checkpoint.
        #[arg(long)]
        clip: PathBuf,
        /// vit-b-32 | vit-b-16 | vit-l-14
        #[arg(long, default_value = "vit-b-32")]
        clip_model: String,
        /// hf | openai
        #[arg(long, default_value = "hf")]
        clip_layout: String,
        /// Output folder of the shards.
        #[arg(long, default_value = "vild-teacher")]
        out: PathBuf,
        /// Proposals kept per image.
        #[arg(long, default_value_t = 300)]
        proposals: usize,
        /// Images per shard.
        #[arg(long, default_value_t = 256)]
        shard_size: usize,
        /// Stop after writing this many shards.
        #[arg(long)]
        max_shards: Option<usize>,
        /// cpu | ndarray | wgpu[:N] | cuda[:N] | auto
        #[arg(long, default_value = "auto")]
        device: String,
    },
}

fn run_vild(what: VildCommand) -> ExitCode {
    use detclip_models::clip::ClipLayout;
    use detclip_train::vild::{
        ClipModel, PrecomputeCommand, PrecomputeOptions, precompute_command,
    };
    let VildCommand::Precompute {
        annotations,
        images,
        detector,
        clip,
        clip_model,
        clip_layout,
        out,
        proposals,
        shard_size,
        max_shards,
        device,
    } = what;
    let clip_model: ClipModel = match clip_model.parse() {
        Ok(m) => m,
        Err(e) => return fail("vild precompute", e),
    };
    let clip_layout = match clip_layout.as_str() {
        "hf" => ClipLayout::Hf,
        "openai" => ClipLayout::OpenAi,
        other => {
            return fail(
                "vild precompute",
                format!("unknown --clip-layout `{other}` (hf, openai)"),
            );
        }
    };
    let command = PrecomputeCommand {
        annotations,
        images,
        detector,
        clip,
        clip_model,
        clip_layout,
        out: out.clone(),
        options: PrecomputeOptions {
            proposals,
            shard_size,
            max_shards,
            ..Default::default()
        },
    };
    match precompute_command(command, &device) {
        Ok(r) => {
            println!(
                "{} shards: {} written, {} already there, {} crops embedded{}; folder {}",
                r.shards,
                r.written,
                r.skipped,
                r.crops,
                if r.complete {
                    ""
                } else {
                    " (stopped early: run again to resume)"
                },
                out.display()
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("vild precompute", e),
    }
}

#[derive(Subcommand)]
enum EvalCommand {
    /// COCO box AP, as pycocotools' COCOeval (iouType bbox).
    Coco {
        /// Ground truth (COCO instances json).
        #[arg(long)]
        gt: PathBuf,
        /// Detections (COCO results json: image_id, category_id, bbox [x,y,w,h], score).
        #[arg(long)]
        dt: PathBuf,
        /// Print one JSON object of named numbers.
        #[arg(long)]
        json: bool,
        /// Also report AP@[.5:.95] per category id.
        #[arg(long)]
        per_category: bool,
    },
    /// LVIS box AP, as the lvis package's LVISEval (federated, 300 detections per image), or
    /// Fixed AP (`--fixed-ap`).
    Lvis {
        /// Ground truth (LVIS json with neg/not-exhaustive ids and category frequencies).
        #[arg(long)]
        gt: PathBuf,
        /// Detections (COCO results json).
        #[arg(long)]
        dt: PathBuf,
        /// Print one JSON object of named numbers.
        #[arg(long)]
        json: bool,
        /// Also report AP@[.5:.95] per category id.
        #[arg(long)]
        per_category: bool,
        /// Fixed AP (Dave et al. 2021; what GLIP, DetCLIPv2 and YOLO-World report on LVIS
        /// minival): the top `--dets-per-cat` detections of each category over the dataset,
        /// no cap per image.
        #[arg(long)]
        fixed_ap: bool,
        /// Fixed AP's detections per category.
        #[arg(long, default_value_t = detclip_core::eval::FIXED_AP_DETS_PER_CATEGORY,
              requires = "fixed_ap", value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        dets_per_cat: usize,
    },
    /// COCO AP of every dataset in a list file, and their mean.
    Odinw {
        /// JSON list: {"datasets": [{"name", "gt", "dt"}, ...]}.
        #[arg(long)]
        config: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Phrase grounding Recall@k with merged ground-truth boxes.
    Grounding {
        /// Grounding json: {"images": [{"image_id", "phrases": [{"gt_boxes", "predictions"}]}]}.
        #[arg(long)]
        input: PathBuf,
        /// The k of Recall@k, comma-separated.
        #[arg(long, value_delimiter = ',', default_value = "1,5,10")]
        k: Vec<usize>,
        /// IoU threshold.
        #[arg(long, default_value_t = 0.5)]
        iou: f64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

fn format(json: bool) -> Format {
    if json { Format::Json } else { Format::Table }
}

fn run_eval(what: EvalCommand) -> ExitCode {
    let report = match what {
        EvalCommand::Coco {
            gt,
            dt,
            json,
            per_category,
        } => eval_cli::coco(&gt, &dt, format(json), per_category),
        EvalCommand::Lvis {
            gt,
            dt,
            json,
            per_category,
            fixed_ap,
            dets_per_cat,
        } => eval_cli::lvis(
            &gt,
            &dt,
            format(json),
            per_category,
            fixed_ap.then_some(dets_per_cat),
        ),
        EvalCommand::Odinw { config, json } => eval_cli::odinw(&config, format(json)),
        EvalCommand::Grounding {
            input,
            k,
            iou,
            json,
        } => eval_cli::grounding(&input, &k, iou, format(json)),
    };
    match report {
        Ok(text) => {
            print!("{text}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("detclip eval: {e}");
            ExitCode::from(2)
        }
    }
}

fn fail(command: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("detclip {command}: {e}");
    ExitCode::from(2)
}

fn print_ap(what: &str, s: &detclip_core::eval::CocoStats) {
    println!(
        "  {what:<10} AP {:.3}  AP50 {:.3}  AR100 {:.3}",
        s.AP, s.AP50, s.AR100
    );
}

fn print_unseen(table: &[detclip_train::unseen::WordingAp]) {
    println!("prompts with unseen words (COCO AP, AP50; all / seen / held-out concepts):");
    for w in table {
        let h = w.report.held_out.map_or(f64::NAN, |h| h.AP);
        println!(
            "  {:<16} e.g. {:<20} AP {:.3} / {:.3} / {:.3}  AP50 {:.3}",
            w.wording,
            format!("\"{}\"", w.example),
            w.report.all.AP,
            w.report.seen.AP,
            h,
            w.report.all.AP50
        );
    }
}

fn run_unseen(checkpoint: PathBuf, device: &str, json: Option<PathBuf>) -> ExitCode {
    match commands::unseen_command(&checkpoint, device) {
        Ok(table) => {
            print_unseen(&table);
            if let Some(path) = json {
                let text = serde_json::to_string_pretty(&table).expect("a report serialises");
                if let Err(e) = detclip_train::learner::write_atomic(&path, text.as_bytes()) {
                    return fail("unseen", e);
                }
                println!("written to {}", path.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("unseen", e),
    }
}

#[allow(clippy::too_many_arguments)]
fn run_train(
    recipe: &str,
    config: Option<PathBuf>,
    data: Option<PathBuf>,
    text_model: Option<PathBuf>,
    device: &str,
    options: RunOptions,
    precision: &str,
) -> ExitCode {
    let recipe = AnyRecipe::load(recipe, config.as_deref())
        .and_then(|r| match &data {
            Some(path) => r.with_data(detclip_train::recipe::read_data_config(path)?),
            None => Ok(r),
        })
        .and_then(|r| match &text_model {
            Some(dir) => r.with_text_model(dir),
            None => Ok(r),
        });
    let recipe = match recipe {
        Ok(r) => r,
        Err(e) => return fail("train", e),
    };
    let precision = match precision.parse() {
        Ok(p) => p,
        Err(e) => return fail("train", e),
    };
    let out = options.out.clone();
    match commands::train_devices_command(recipe, device, precision, options) {
        Ok(summary) => {
            let last = summary.steps.last().map(|s| s.loss).unwrap_or(f64::NAN);
            println!(
                "trained {} steps in {:.0} s, last loss {last:.4}; run folder {}",
                summary.steps.len(),
                summary.seconds,
                out.display()
            );
            if let Some(e) = &summary.eval {
                print_ap("all", &e.all);
                print_ap("seen", &e.seen);
                if let Some(h) = &e.held_out {
                    print_ap("held-out", h);
                }
                if let Some(l) = &e.lvis {
                    println!(
                        "  LVIS (federated) AP {:.3}  APr {:.3}  APc {:.3}  APf {:.3}",
                        l.AP, l.APr, l.APc, l.APf
                    );
                }
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("train", e),
    }
}

fn run_demo(out: PathBuf, device: &str, options: commands::DemoOptions) -> ExitCode {
    let text = options.text_model.as_ref().map_or_else(
        || "trigram text encoder".to_string(),
        |d| format!("text model {}", d.display()),
    );
    println!(
        "detclip demo: training the `shapes` detector on the synthetic world ({device}, {text})"
    );
    match commands::demo_command(&out, device, &options, true) {
        Ok(r) => {
            println!(
                "trained {} steps in {:.0} s",
                r.run.steps.len(),
                r.run.seconds
            );
            if let Some(e) = &r.eval {
                println!("COCO box AP on the test split:");
                print_ap("all", &e.all);
                print_ap("seen", &e.seen);
                if let Some(h) = &e.held_out {
                    print_ap("held-out", h);
                }
            }
            println!("held-out concepts: {}", r.held_out.join(", "));
            print_unseen(&r.unseen);
            if let Some(p) = r.unseen_pictures.first().and_then(|p| p.parent()) {
                println!("detections of unseen-word prompts: {}", p.display());
            }
            println!("loss curve: {}", r.loss_plot.display());
            if let Some(p) = r.pictures.first().and_then(|p| p.parent()) {
                println!("detections of held-out concepts: {}", p.display());
            }
            ExitCode::SUCCESS
        }
        Err(e) => fail("demo", e),
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Train {
            recipe,
            config,
            data,
            text_model,
            device,
            out,
            resume,
            devices,
            precision,
            no_master_weights,
        } => {
            let mut options = RunOptions::new(&out);
            options.resume = resume;
            options.master_weights = !no_master_weights;
            run_train(
                &recipe,
                config,
                data,
                text_model,
                devices.as_deref().unwrap_or(&device),
                options,
                &precision,
            )
        }
        Command::Detect {
            checkpoint,
            image,
            prompt,
            threshold,
            out,
            device,
            boxes,
            min_box_score,
        } => match commands::detect_command(
            &checkpoint,
            &image,
            &prompt,
            threshold,
            &out,
            &device,
            boxes.as_deref().map(|p| (p, min_box_score)),
        ) {
            Ok(r) => {
                let n: usize = r.detections.iter().map(Vec::len).sum();
                println!(
                    "{n} detections in {} images: {} and {} pictures in {}",
                    r.detections.len(),
                    r.json.display(),
                    r.pictures.len(),
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail("detect", e),
        },
        Command::Unseen {
            checkpoint,
            device,
            json,
        } => run_unseen(checkpoint, &device, json),
        Command::Demo {
            out,
            device,
            steps,
            seed,
            text_model,
        } => run_demo(
            out,
            &device,
            commands::DemoOptions {
                steps,
                seed,
                text_model,
            },
        ),
        Command::Eval { what } => run_eval(what),
        Command::Regionspot {
            what:
                RegionSpotCommand::Cache {
                    config,
                    checkpoint,
                    out,
                    device,
                },
        } => match commands::regionspot_cache_command(
            config.as_deref(),
            checkpoint.as_deref(),
            &out,
            &device,
            true,
        ) {
            Ok(r) => {
                println!(
                    "{} images: {} cached now, {} already cached, in {}",
                    r.images,
                    r.written,
                    r.present,
                    out.display()
                );
                ExitCode::SUCCESS
            }
            Err(e) => fail("regionspot cache", e),
        },
        Command::Vild { what } => run_vild(what),
        Command::Import {
            recipe,
            checkpoint,
            config,
            official_config,
            official_set,
            text_model,
            out,
            device,
        } => {
            let imported = AnyRecipe::for_import(
                &recipe,
                config.as_deref(),
                &official_config,
                &official_set,
                text_model.as_deref(),
            )
            .and_then(|r| commands::import_command(r, checkpoint, &out, &device));
            match imported {
                Ok(path) => {
                    println!("imported into {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => fail("import", e),
            }
        }
        Command::Check { device, seed, json } => {
            let result = device
                .parse::<DeviceSpec>()
                .and_then(|spec| run_on(spec, Check { seed }))
                .and_then(|r| r);
            let report = match result {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("detclip check: {e}");
                    return ExitCode::from(2);
                }
            };
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).expect("serialisable")
                );
            } else {
                println!("detclip check on {}", report.backend);
                println!(
                    "{:<58} {:>11} {:>9} {:>10}  ",
                    "op", "max |err|", "tol", "ms"
                );
                for l in &report.lines {
                    let verdict = if l.ok() { "ok" } else { "FAIL" };
                    println!(
                        "{:<58} {:>11.2e} {:>9.0e} {:>10.1}  {verdict}",
                        l.op, l.max_abs_err, l.tolerance, l.millis
                    );
                }
            }
            if report.ok() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
