//! The cycle benchmark (see `support/harness.rs` and BENCHMARKS.md).
//!
//! ```text
//! cargo bench -p referral-sync-bench --bench cycle -- [--sizes 50000,1000000]
//!     [--layouts odata-file,odata,csv,jsonl] [--max-cycle-size N]
//!     [--push-sizes N,…|none (default: the smallest size)] [--push-records 2000] [--concurrency 1,4,16]
//!     [--latency 0,50] [--cycle-concurrency 16] [--repeats 3] [--page-size 5000]
//!     [--seed 1] [--work DIR] [--out BENCHMARKS.md]
//! ```
//!
//! Writes the results section of `--out` and prints it. Relative paths are
//! taken from the workspace root, as `scripts/bench.sh` runs from there.

#[path = "support/harness.rs"]
mod harness;

use std::path::Path;
use std::process::ExitCode;

use anyhow::Context;
use harness::{Binaries, Layout, Plan};

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<()> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("the bench crate is not inside the workspace")?;
    let mut plan = Plan::default_for(root.join("target/bench-work"));
    let mut out = root.join("BENCHMARKS.md");

    // The push matrix runs at the smallest size unless told otherwise.
    let mut push_sizes_given = false;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        // cargo bench passes --bench to every bench binary.
        if flag == "--bench" {
            continue;
        }
        let mut value = || {
            args.next()
                .ok_or_else(|| anyhow::anyhow!("{flag} needs a value"))
        };
        match flag.as_str() {
            "--sizes" => plan.sizes = list(&value()?)?,
            "--layouts" => {
                plan.layouts = value()?
                    .split(',')
                    .map(|name| Layout::parse(name.trim()))
                    .collect::<anyhow::Result<_>>()?
            }
            "--push-sizes" => {
                let text = value()?;
                push_sizes_given = true;
                plan.push_sizes = if text == "none" {
                    Vec::new()
                } else {
                    list(&text)?
                }
            }
            "--max-cycle-size" => plan.max_cycle_size = value()?.parse()?,
            "--push-records" => plan.push_records = value()?.parse()?,
            "--concurrency" => plan.concurrencies = list(&value()?)?,
            "--latency" => plan.latencies_ms = list(&value()?)?,
            "--cycle-concurrency" => plan.cycle_concurrency = value()?.parse()?,
            "--repeats" => plan.repeats = value()?.parse()?,
            "--page-size" => plan.page_size = value()?.parse()?,
            "--seed" => plan.seed = value()?.parse()?,
            "--work" => plan.work_dir = root.join(value()?),
            "--out" => out = root.join(value()?),
            other => anyhow::bail!("unknown argument {other}; see bench/benches/cycle.rs"),
        }
    }

    if !push_sizes_given {
        plan.push_sizes = plan.sizes.iter().min().copied().into_iter().collect();
    }

    let bins = Binaries::find()?;
    let started = std::time::Instant::now();
    let report = harness::run(&plan, &bins, &mut |line| {
        eprintln!("{:>7.1}s {line}", started.elapsed().as_secs_f64());
    })?;
    let results = report.markdown();
    let document = std::fs::read_to_string(&out).unwrap_or_default();
    std::fs::write(&out, harness::splice_results(&document, &results))?;
    println!("{results}");
    eprintln!("results written to {}", out.display());
    Ok(())
}

fn list<T: std::str::FromStr>(text: &str) -> anyhow::Result<Vec<T>>
where
    T::Err: std::fmt::Display,
{
    text.split(',')
        .map(|item| {
            item.trim()
                .replace('_', "")
                .parse()
                .map_err(|e| anyhow::anyhow!("{item:?}: {e}"))
        })
        .collect()
}
