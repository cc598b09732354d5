//! The `detclip` command.
//!
//! ```text
//! detclip check [--device cpu|wgpu[:N]|cuda[:N]|auto] [--seed N] [--json]
//! ```
//! `check` runs every core op on the device and compares it with the CPU reference. The
//! training, evaluation, detection and import commands arrive with their issues.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use detclip_core::backend::{DeviceSpec, run_on};
use detclip_train::check::Check;

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
}

fn main() -> ExitCode {
    match Cli::parse().command {
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
