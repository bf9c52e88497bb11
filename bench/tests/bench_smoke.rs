//! The cycle benchmark end to end at a tiny size over every layout, so
//! that its code keeps compiling and working: every step of the plan runs
//! against the real binaries and yields its row, and the targets table has
//! every target. Timings are not checked (the machine is noisy); what each
//! step sent is.

#[path = "../benches/support/harness.rs"]
mod harness;

use harness::{Binaries, Layout, Plan, RESULTS_BEGIN, RESULTS_END, Step};

#[test]
fn a_tiny_run_yields_every_row_of_the_table() {
    let work = tempfile::tempdir().unwrap();
    let plan = Plan {
        // 300 records in pages of 120: three page files, one of them short.
        // The second size is only read: it is above max_cycle_size.
        sizes: vec![300, 400],
        layouts: Layout::ALL.to_vec(),
        page_size: 120,
        max_cycle_size: 300,
        push_sizes: vec![300],
        push_records: 10,
        concurrencies: vec![1, 4],
        latencies_ms: vec![0, 20],
        cycle_concurrency: 4,
        repeats: 1,
        seed: 7,
        work_dir: work.path().join("bench"),
    };
    let mut progress = Vec::new();
    let report = harness::run(&plan, &Binaries::find().unwrap(), &mut |line| {
        progress.push(line.to_owned())
    })
    .unwrap_or_else(|e| panic!("{e:#}\nprogress:\n{}", progress.join("\n")));

    let steps: Vec<(u64, Layout, Step)> = report
        .rows
        .iter()
        .map(|row| (row.size, row.layout, row.step))
        .collect();
    let mut expected = Vec::new();
    for &size in &plan.sizes {
        for (layout, step) in harness::expected_steps(&plan, size) {
            expected.push((size, layout, step));
        }
    }
    assert_eq!(steps, expected);
    // Reads: 4 comparators and read_export for each JSON layout, 2 for CSV.
    // Cycles: one first cycle for the JSON layouts and one for CSV, then 5
    // per layout. Then the push matrix; the 400 is read only.
    assert_eq!(expected.len(), (14 + 2 + 20 + 4) + 14, "{expected:?}");
    for layout in Layout::ALL {
        for step in [
            Step::FingerprintRefresh,
            Step::NoChange,
            Step::OneChanged,
            Step::OnePercent,
            Step::NoChangeAfter,
        ] {
            assert!(
                report.find(300, layout, step).is_some(),
                "{layout:?} {step:?}"
            );
        }
    }
    assert!(
        report
            .find(300, Layout::OdataFile, Step::FirstCycle)
            .is_some()
    );
    assert!(report.find(300, Layout::Csv, Step::FirstCycle).is_some());

    let gnu_time = std::path::Path::new("/usr/bin/time").exists();
    for row in &report.rows {
        let sent = match row.step {
            Step::FirstCycle => 300,
            Step::OneChanged => 1,
            Step::OnePercent => 3,
            Step::Push { .. } => 10,
            _ => 0,
        };
        assert_eq!(row.pushed, sent, "{row:?}");
        // Without GNU time the peak RSS is polled, which can miss a step
        // this small; with it, every step has one.
        assert!(row.seconds > 0.0, "{row:?}");
        assert!(!gnu_time || row.peak_rss_kb > 0, "{row:?}");
        assert_eq!(row.scan_seconds.is_some(), !row.step.is_read(), "{row:?}");
        assert_eq!(
            row.in_process_seconds.is_some(),
            row.step.is_read(),
            "{row:?}"
        );
        assert!(row.export_bytes > 0, "{row:?}");
    }

    let results = report.markdown();
    assert!(results.contains("**not the default plan**"), "{results}");
    assert!(
        results.contains("`scripts/bench.sh --sizes 300,400 --layouts odata-file,odata,csv,jsonl"),
        "{results}"
    );
    for (_, name) in Step::COMPARATORS {
        assert!(results.contains(name), "no column {name}:\n{results}");
    }
    for (size, layout, step) in &expected {
        let row = match step {
            Step::Push {
                latency_ms,
                concurrency,
            } => format!(
                "| {size} | {} | {latency_ms} | {concurrency} | 10 |",
                layout.label()
            ),
            _ => format!("| {size} | {} (", layout.label()),
        };
        assert!(results.contains(&row), "no row for {step:?}:\n{results}");
        let line = results
            .lines()
            .find(|line| line.starts_with(&row) && line.contains(&step.label()));
        assert!(
            matches!(step, Step::Push { .. }) || line.is_some(),
            "no row for {size} {layout:?} {step:?}:\n{results}"
        );
    }

    // The default plan, as the results section names it.
    assert_eq!(
        Plan::default_for(plan.work_dir.clone()).flags(),
        "--sizes 50000,1000000 --layouts odata-file,odata,csv,jsonl --page-size 5000 \
         --max-cycle-size 1000000 --push-sizes 50000 --push-records 2000 --concurrency 1,4,16 \
         --latency 0,50 --cycle-concurrency 16 --repeats 3 --seed 1"
    );

    // The targets table: every target of the issue that the plan measures.
    assert!(results.contains("### Targets"), "{results}");
    assert!(
        results.contains("| Target | Records | Layout | Measured | Value | Bound | Verdict |"),
        "{results}"
    );
    let targets = report.target_checks();
    let count = |size: u64, layout: Option<Layout>, starts: &str| {
        targets
            .iter()
            .filter(|t| t.size == size && t.layout == layout && t.target.starts_with(starts))
            .count()
    };
    let file = Some(Layout::OdataFile);
    assert_eq!(
        count(300, file, "one-changed cycle ≤ 0.5 × Value tree"),
        1,
        "{targets:#?}"
    );
    assert_eq!(
        count(300, file, "one-changed cycle ≤ 3 × validate only"),
        1,
        "{targets:#?}"
    );
    assert_eq!(
        count(
            300,
            Some(Layout::Csv),
            "no-change cycle ≤ 1.0 × field maps (csv crate)"
        ),
        1
    );
    assert_eq!(
        count(
            300,
            Some(Layout::Jsonl),
            "no-change cycle ≤ 1.0 × field maps (serde_json per line)"
        ),
        1
    );
    for layout in Layout::ALL {
        for size in [300, 400] {
            assert_eq!(
                count(size, Some(layout), "reader alone (read_export) ≤ 1.0 ×"),
                1
            );
            assert_eq!(count(size, Some(layout), "peak RSS ≤ 150 MB"), 1);
        }
        assert_eq!(count(300, Some(layout), "1%-changed cycle ≤ no-change"), 1);
        assert_eq!(count(400, Some(layout), "1%-changed cycle"), 0);
    }
    assert_eq!(count(300, Some(Layout::OdataPages), "push at 20 ms"), 2);
    assert_eq!(targets.len(), 18 + 8, "{targets:#?}");
    for check in &targets {
        let verdict = if check.met {
            "| met |"
        } else {
            "| **missed** |"
        };
        assert!(
            results
                .lines()
                .any(|line| line.starts_with(&format!("| {} |", check.target))
                    && line.ends_with(verdict)),
            "no targets row for {check:?}:\n{results}"
        );
    }

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
