//! Cold start of the forward pass in a fresh process: seeded random weights, executor creation, the
//! first run and the median of warm runs, the page faults of the first two runs and the process's peak
//! resident set, for one network at 512×512 and one thread count.
//!
//! `cargo bench --bench cold -- VARIANT THREADS` prints one JSON line; `benches/run.sh` runs it once
//! per network and thread count, each in its own process, so that nothing is warm from another case.

use std::time::Instant;
use toparch::exec::{Executor, NodeParams};
use toparch::graph::compile;
use toparch::kernels::vector_isa;
use toparch::spec::load_embedded;

/// Warm runs whose median is reported.
const WARM_RUNS: usize = 15;

/// Minor page faults of this process so far (field 10 of `/proc/self/stat`; 0 where there is none).
fn minor_faults() -> u64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name, which is in parentheses and may hold spaces.
    let fields: Vec<&str> = stat.rsplit_once(')').map_or("", |(_, rest)| rest).split_whitespace().collect();
    fields.get(7).and_then(|f| f.parse().ok()).unwrap_or(0)
}

/// Peak resident set of this process in MB (`VmHWM` of `/proc/self/status`; 0 where there is none).
fn peak_rss_mb() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let kb = status.lines().find_map(|l| l.strip_prefix("VmHWM:")).and_then(|v| v.trim().strip_suffix("kB"));
    kb.and_then(|v| v.trim().parse::<f64>().ok()).map_or(0.0, |kb| kb / 1024.0)
}

fn main() {
    // `cargo bench` appends `--bench`; the first two other arguments are the variant and thread count.
    let args: Vec<String> = std::env::args().skip(1).filter(|a| !a.starts_with("--")).collect();
    let variant = args.first().map_or("tiny", String::as_str);
    let threads: usize = args.get(1).map_or(Ok(1), |t| t.parse()).expect("THREADS is a number");
    let ms = |start: Instant| start.elapsed().as_secs_f64() * 1e3;

    let spec = load_embedded(variant).expect("an embedded spec").spec;
    let graph = compile(&spec, 512, 512).expect("compiles");
    let logits = graph.tap_node("logits").expect("a segmentation spec");
    let input: Vec<f32> = (0..3 * 512 * 512).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();

    let start = Instant::now();
    let params = NodeParams::random(&graph, 0);
    let weights_ms = ms(start);
    let start = Instant::now();
    let exec = Executor::new(&graph, params, threads).expect("executor");
    let create_ms = ms(start);
    let faults = minor_faults();
    let start = Instant::now();
    exec.run(&input, logits, &[logits]).expect("runs");
    let first_ms = ms(start);
    let first_faults = minor_faults() - faults;
    let faults = minor_faults();
    exec.run(&input, logits, &[logits]).expect("runs");
    let second_faults = minor_faults() - faults;
    let mut warm: Vec<f64> = (0..WARM_RUNS)
        .map(|_| {
            let start = Instant::now();
            std::hint::black_box(exec.run(&input, logits, &[logits]).expect("runs"));
            ms(start)
        })
        .collect();
    warm.sort_by(f64::total_cmp);
    let warm_ms = warm[WARM_RUNS / 2];
    println!(
        "{{\"variant\": \"{variant}\", \"threads\": {threads}, \"isa\": \"{}\", \"random_weights_ms\": {weights_ms:.2}, \
         \"create_ms\": {create_ms:.2}, \"first_run_ms\": {first_ms:.2}, \"warm_median_ms\": {warm_ms:.2}, \
         \"first_run_page_faults\": {first_faults}, \"second_run_page_faults\": {second_faults}, \
         \"peak_rss_mb\": {:.1}}}",
        vector_isa().name(),
        peak_rss_mb()
    );
}
