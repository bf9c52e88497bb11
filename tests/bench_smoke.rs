//! The cycle benchmark end to end at a tiny size, so that its code keeps
//! compiling and working: every step of the plan runs against the real
//! binaries and yields its row. Timings are not checked; what each step
//! sent is.

#[path = "../benches/support/harness.rs"]
mod harness;

use harness::{Binaries, Format, Plan, RESULTS_BEGIN, RESULTS_END, Step};

fn binaries() -> Binaries {
    Binaries {
        referral_sync: env!("CARGO_BIN_EXE_referral-sync").into(),
        pc_emulator: env!("CARGO_BIN_EXE_pc-emulator").into(),
        gen_export: env!("CARGO_BIN_EXE_gen-export").into(),
    }
}

#[test]
fn a_tiny_run_yields_every_row_of_the_table() {
    let work = tempfile::tempdir().unwrap();
    let plan = Plan {
        // 500 records in pages of 200: three page files, one of them short.
        // The second size is only read: it is above max_cycle_size.
        sizes: vec![500, 700],
        page_size: 200,
        max_cycle_size: 500,
        push_records: 20,
        concurrencies: vec![1, 4],
        latencies_ms: vec![0, 20],
        cycle_concurrency: 4,
        repeats: 1,
        seed: 7,
        work_dir: work.path().join("bench"),
    };
    let mut progress = Vec::new();
    let report = harness::run(&plan, &binaries(), &mut |line| {
        progress.push(line.to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}\nprogress:\n{}", progress.join("\n")));

    let steps: Vec<(u64, Format, Step)> = report
        .rows
        .iter()
        .map(|row| (row.size, row.format, row.step))
        .collect();
    let mut expected = Vec::new();
    for &size in &plan.sizes {
        for (format, step) in harness::expected_steps(&plan, size) {
            expected.push((size, format, step));
        }
    }
    assert_eq!(steps, expected);
    assert_eq!(
        expected.len(),
        5 + 3 + 4 + 5,
        "the 500-record plan and the read-only 700"
    );

    let gnu_time = std::path::Path::new("/usr/bin/time").exists();
    for row in &report.rows {
        let sent = match row.step {
            Step::ReadExport | Step::BareParse | Step::BareParseInMemory | Step::NoChange => 0,
            Step::FirstCycle => 500,
            Step::OnePercent => 5,
            Step::Push { .. } => 20,
        };
        assert_eq!(row.pushed, sent, "{row:?}");
        // Without GNU time the peak RSS is polled, which can miss a step
        // this small; with it, every step has one.
        assert!(row.seconds > 0.0, "{row:?}");
        assert!(!gnu_time || row.peak_rss_kb > 0, "{row:?}");
        let is_cycle = !matches!(
            row.step,
            Step::ReadExport | Step::BareParse | Step::BareParseInMemory
        );
        assert_eq!(row.scan_seconds.is_some(), is_cycle, "{row:?}");
        assert!(row.export_bytes > 0, "{row:?}");
    }

    let results = report.markdown();
    for (size, _, step) in &expected {
        let row = match step {
            Step::Push {
                latency_ms,
                concurrency,
            } => format!("| {size} | {latency_ms} | {concurrency} | 20 |"),
            _ => format!("| {size} | "),
        };
        assert!(results.contains(&row), "no row for {step:?}:\n{results}");
        if !matches!(step, Step::Push { .. }) {
            assert!(
                results.contains(&step.label()),
                "no row for {step:?}:\n{results}"
            );
        }
    }
    let targets = report.target_checks();
    assert_eq!(
        targets
            .iter()
            .filter(|t| t.starts_with("500: push at 20 ms"))
            .count(),
        2,
        "{targets:?}"
    );
    // Against the limit, and against the daemon's own reader.
    assert!(
        targets.iter().any(|t| t.starts_with("500: no-change cycle")
            && t.contains("(streaming serde_json)")
            && t.contains("against `read_export` alone")),
        "{targets:?}"
    );
    assert!(targets.iter().any(|t| t.starts_with("500: peak RSS")));
    assert!(
        !targets
            .iter()
            .any(|t| t.starts_with("700:") && !t.contains("parse"))
    );

    // The work directory is cleaned up size by size.
    assert_eq!(std::fs::read_dir(&plan.work_dir).unwrap().count(), 0);

    // Only the results section of BENCHMARKS.md is replaced.
    let document = format!(
        "# Benchmarks\n\nProse.\n\n{RESULTS_BEGIN}\nold table\n{RESULTS_END}\n\nMore prose.\n"
    );
    let spliced = harness::splice_results(&document, &results);
    assert!(spliced.starts_with("# Benchmarks\n\nProse.\n\n<!-- results:begin -->"));
    assert!(
        spliced.ends_with("<!-- results:end -->\n\nMore prose.\n"),
        "{spliced}"
    );
    assert!(!spliced.contains("old table"));
    assert_eq!(harness::splice_results(&spliced, &results), spliced);
}
