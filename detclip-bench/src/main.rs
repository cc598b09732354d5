//! detclip-bench: benchmarks measured side by side with the reference implementation in one
//! run, reported as ratios.
//!
//! ```text
//! cargo run -p detclip-bench --release -- ops [--device cpu|wgpu|cuda] [--out detclip-bench/results/ops.md]
//! cargo run -p detclip-bench --release -- dcn [--device …] [--shapes plain|dyhead|all]
//! cargo run -p detclip-bench --release -- models [--device …] [--models swin,bert,clip,sam] [--reps 2]
//! cargo run -p detclip-bench --release -- regionspot [--device …] [--boxes 100] [--reps 2]
//! cargo run -p detclip-bench --release -- vild [--device …] [--detector r50|tiny] [--proposals 32]
//! cargo run -p detclip-bench --release -- detclipv2 [--device …] [--model small|swin-t] [--vocab 80,1203,13204]
//! cargo run -p detclip-bench --release -- glip [--device …] [--lvis-chunks N] [--no-train]
//! cargo run -p detclip-bench --release -- precision [--device …] [--precision f32|f16|bf16] [--recipe shapes|glip]
//! ```
//! `ops` times NMS and RoIAlign against torchvision on the same inputs (written to a
//! safetensors file that `reference/torchvision_ops.py` reads), checks that both agree, and
//! writes a Markdown table with the machine and the command. `dcn` times deformable convolution
//! v2 against torchvision; `models` times the forward pass of whole model blocks (Swin-T,
//! BERT-base, CLIP ViT-B/16, SAM ViT-B) against their PyTorch implementations. `regionspot`
//! measures RegionSpot's regions per second (cached vs on the fly) and its training step
//! against PyTorch; `vild` ViLD's precompute throughput (crops embedded per second) and
//! training step time; `detclipv2` DetCLIPv2's latency against the vocabulary size (cache
//! built once) and the memory of max vs soft-max region aggregation (no reference: its code
//! was not released); `glip` GLIP-T's inference (80 classes; 1203 LVIS classes in chunks) and
//! a training step; `precision` the step time with f32 master weights on the CPU against one
//! copy of the weights.

mod common;
mod dcn;
mod detclipv2;
mod glip;
mod models;
mod ops;
mod precision;
mod regionspot;
mod text;
mod vild;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "detclip-bench",
    about = "Side-by-side benchmarks against the reference implementations"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// NMS and RoIAlign against torchvision.
    Ops(ops::OpsArgs),
    /// Deformable convolution v2 against torchvision, Burn's built-in op and a dense conv.
    Dcn(dcn::DcnArgs),
    /// Forward time of Swin-T, BERT-base, CLIP ViT-B/16 and SAM ViT-B against PyTorch.
    Models(models::ModelsArgs),
    /// RegionSpot: regions per second (cached vs on the fly) and training step against PyTorch.
    Regionspot(regionspot::RegionSpotArgs),
    /// ViLD: precompute crops embedded per second, training step time.
    Vild(vild::VildArgs),
    /// DetCLIPv2: latency against the vocabulary size, memory of max vs soft-max aggregation.
    Detclipv2(detclipv2::DetClipV2Args),
    /// GLIP-T: inference latency (80 classes, LVIS chunked) and a training step.
    Glip(glip::GlipArgs),
    /// Master weights: training step time with one copy and with f32 masters on the CPU.
    Precision(precision::PrecisionArgs),
    /// Text encoders (MiniLM, BERT-base, CLIP's text tower) on LVIS's names against PyTorch.
    Text(text::TextArgs),
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Ops(args) => ops::run(args),
        Command::Dcn(args) => dcn::run(args),
        Command::Models(args) => models::run(args),
        Command::Regionspot(args) => regionspot::run(args),
        Command::Vild(args) => vild::run(args),
        Command::Detclipv2(args) => detclipv2::run(args),
        Command::Glip(args) => glip::run(args),
        Command::Precision(args) => precision::run(args),
        Command::Text(args) => text::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("detclip-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
