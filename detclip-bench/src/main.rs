//! detclip-bench: benchmarks measured side by side with the reference implementation in one
//! run, reported as ratios.
//!
//! ```text
//! cargo run -p detclip-bench --release -- ops [--device cpu|wgpu|cuda] [--out detclip-bench/results/ops.md]
//! cargo run -p detclip-bench --release -- dcn [--device …] [--shapes plain|dyhead|all]
//! ```
//! `ops` times NMS and RoIAlign against torchvision on the same inputs (written to a
//! safetensors file that `reference/torchvision_ops.py` reads), checks that both agree, and
//! writes a Markdown table with the machine and the command.

mod common;
mod dcn;
mod ops;

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
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Command::Ops(args) => ops::run(args),
        Command::Dcn(args) => dcn::run(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("detclip-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
