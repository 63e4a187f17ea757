//! Calibrating the latency model on the machine at hand: the executor runs TopFormer-T/S/B at a few sizes,
//! every step is timed, and each kernel family's cost law is fitted to its steps by non-negative least squares.

use super::bench::quantile;
use super::latency::{features, nnls3, Device, Family, FamilyFit};
use crate::error::{Error, Result};
use crate::exec::{Executor, NodeParams};
use crate::graph::Graph;
use crate::spec::{load_embedded, MbBlock};
use std::collections::BTreeMap;

/// The networks and sizes calibration times (spec, height, width), plus [`STRIDED_DEPTHWISE_PROBE`].
/// Held-out checks use others.
pub const CALIBRATION_CASES: [(&str, usize, usize); 6] = [
    ("topformer-tiny", 512, 512),
    ("topformer-small", 512, 512),
    ("topformer-base", 512, 512),
    ("topformer-tiny", 384, 384),
    ("topformer-small", 384, 384),
    ("topformer-base", 384, 384),
];

/// TopFormer-T at 512x512 with its first block (expand ratio 1, so its depthwise conv runs unfused) at stride 2:
/// the family networks have no unfused stride-2 depthwise conv of their own.
pub const STRIDED_DEPTHWISE_PROBE: &str = "topformer-tiny with a stride-2 first block";

/// Networks calibration times, counting the probe.
pub const CALIBRATION_RUNS: usize = CALIBRATION_CASES.len() + 1;

/// The graphs calibration times, by description.
fn calibration_graphs() -> Result<Vec<(String, Graph)>> {
    let mut graphs = Vec::with_capacity(CALIBRATION_RUNS);
    for (spec, h, w) in CALIBRATION_CASES {
        graphs.push((format!("{spec} at {h}x{w}"), load_embedded(spec)?.compile(h, w)?));
    }
    let mut probe = load_embedded("topformer-tiny")?;
    let first = &mut probe.spec.token_pyramid.blocks[0];
    *first = MbBlock(first.kernel(), 1.0, first.out(), 2);
    graphs.push((format!("{STRIDED_DEPTHWISE_PROBE} at 512x512"), probe.compile(512, 512)?));
    Ok(graphs)
}

/// Timed runs per case (after one warm-up run).
pub const RUNS_PER_CASE: usize = 7;

/// By default, calibration gives up when the median run of a case is this much slower than its fastest run.
pub const MAX_SPREAD: f64 = 1.25;

/// One timed step: its family, its features and its median time over the runs.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Kernel family.
    pub family: Family,
    /// `[work, bytes, 1]`.
    pub features: [f64; 3],
    /// Median time, nanoseconds.
    pub nanos: f64,
}

/// A graph's timed runs: per step, the median time (the model predicts `bench`'s median run).
#[derive(Clone, Debug)]
pub struct TimedRuns {
    /// One sample per step of the plan.
    pub samples: Vec<Sample>,
    /// Wall time of every run, milliseconds.
    pub totals_ms: Vec<f64>,
    /// The median over runs of the wall time outside the steps, nanoseconds.
    pub outside_steps_ns: f64,
}

/// A graph's plan steps timed over `runs` warm runs on `threads` threads.
pub fn time_steps(graph: &Graph, threads: usize, runs: usize, tick: &dyn Fn()) -> Result<TimedRuns> {
    let exec = Executor::new(graph, NodeParams::random(graph, 0), threads)?;
    let input = vec![0.5f32; crate::ops::numel(graph.input_shape()) as usize];
    exec.run(&input, graph.output(), &[])?;
    let plan = exec.plan();
    let mut times: Vec<Vec<f64>> = vec![Vec::with_capacity(runs); plan.steps.len()];
    let mut totals_ms = Vec::with_capacity(runs);
    let mut outside = Vec::with_capacity(runs);
    for _ in 0..runs {
        let started = std::time::Instant::now();
        let run = exec.run(&input, graph.output(), &[])?;
        let wall_ns = started.elapsed().as_secs_f64() * 1e9;
        for (all, stat) in times.iter_mut().zip(&run.steps) {
            all.push(stat.time.as_secs_f64() * 1e9);
        }
        let steps_ns: f64 = run.steps.iter().map(|s| s.time.as_secs_f64() * 1e9).sum();
        outside.push((wall_ns - steps_ns).max(0.0));
        totals_ms.push(wall_ns / 1e6);
        tick();
    }
    let samples = plan
        .steps
        .iter()
        .zip(times)
        .map(|(step, all)| Sample {
            family: Family::of(step, graph),
            features: features(step, graph),
            nanos: quantile(&all, 0.5),
        })
        .collect();
    Ok(TimedRuns { samples, totals_ms, outside_steps_ns: quantile(&outside, 0.5) })
}

/// Fits each family's cost law to its samples, relative errors weighted toward the larger steps (each row
/// divided by the square root of its time). A family without samples borrows its nearest family's law.
pub fn fit_families(samples: &[Sample]) -> BTreeMap<String, FamilyFit> {
    let mut fits: BTreeMap<Family, FamilyFit> = BTreeMap::new();
    for family in Family::ALL {
        let of_family: Vec<&Sample> = samples.iter().filter(|s| s.family == family && s.nanos > 0.0).collect();
        if of_family.is_empty() {
            continue;
        }
        let rows: Vec<[f64; 3]> = of_family.iter().map(|s| s.features.map(|f| f / s.nanos.sqrt())).collect();
        let targets: Vec<f64> = of_family.iter().map(|s| s.nanos.sqrt()).collect();
        let [ns_per_work, ns_per_byte, ns_per_call] = nnls3(&rows, &targets);
        fits.insert(family, FamilyFit { ns_per_work, ns_per_byte, ns_per_call, samples: of_family.len() });
    }
    let mut out = BTreeMap::new();
    for family in Family::ALL {
        let mut source = family;
        while !fits.contains_key(&source) {
            match nearest(source) {
                Some(next) => source = next,
                None => break,
            }
        }
        let fit = fits
            .get(&source)
            .copied()
            .map(|f| FamilyFit { samples: if source == family { f.samples } else { 0 }, ..f });
        out.insert(
            family.name().to_string(),
            fit.unwrap_or(FamilyFit { ns_per_work: 0.0, ns_per_byte: 0.0, ns_per_call: 0.0, samples: 0 }),
        );
    }
    out
}

/// The family whose law stands in for `family` when it was not timed.
fn nearest(family: Family) -> Option<Family> {
    Some(match family {
        Family::DepthwiseStride2 => Family::DepthwiseStride1,
        Family::DepthwiseStride1 => Family::ExpandDepthwise,
        Family::Dense | Family::MatMul | Family::ExpandDepthwise => Family::Pointwise,
        Family::Resize => Family::ResizeAdd,
        Family::ResizeAdd | Family::Softmax | Family::Pool => Family::Elementwise,
        Family::Pointwise | Family::Elementwise => return None,
    })
}

/// What calibration measured besides the profile.
#[derive(Clone, Debug)]
pub struct Calibration {
    /// The fitted profile.
    pub device: Device,
    /// Per case: (network and size, fastest total ms, median/fastest).
    pub cases: Vec<(String, f64, f64)>,
}

/// Times [`CALIBRATION_CASES`] and the strided-depthwise probe on `threads` threads and fits a device profile named `name`; `tick` is called
/// after every timed run. Refuses, naming the case, when the machine is too busy to time reliably: when a
/// case's median run is more than `max_spread` times its fastest.
pub fn calibrate(name: &str, threads: usize, max_spread: f64, tick: &dyn Fn()) -> Result<Calibration> {
    let mut samples = Vec::new();
    let mut cases = Vec::new();
    let (mut run_rows, mut run_targets) = (Vec::new(), Vec::new());
    for (case, graph) in calibration_graphs()? {
        let mut timed = time_steps(&graph, threads, RUNS_PER_CASE, tick)?;
        run_rows.push([0.0, 4.0 * crate::ops::numel(graph.input_shape()) as f64, 1.0]);
        run_targets.push(timed.outside_steps_ns);
        let totals = &timed.totals_ms;
        let spread = quantile(totals, 0.5) / totals.iter().copied().fold(f64::INFINITY, f64::min);
        if !spread.is_finite() || spread > max_spread {
            return Err(Error::input(format!(
                "calibration cannot time reliably: {case} ran {spread:.2}x slower at the median than at \
                 its fastest (--max-spread {max_spread}); the machine is busy, no profile written"
            )));
        }
        cases.push((case, totals[0], spread));
        samples.append(&mut timed.samples);
    }
    let device = Device {
        name: name.to_string(),
        cpu: cpu_model(),
        isa: vector_isa(),
        threads,
        toparch_version: env!("CARGO_PKG_VERSION").to_string(),
        date: today(),
        source: format!(
            "toparch calibrate: median of {RUNS_PER_CASE} runs per step of TopFormer-T/S/B at 512x512 and 384x384 \
             and {STRIDED_DEPTHWISE_PROBE}; \
             worst median/fastest run {:.2}",
            cases.iter().map(|c| c.2).fold(1.0, f64::max)
        ),
        families: fit_families(&samples),
        run: {
            let [_, ns_per_byte, ns_per_call] = nnls3(&run_rows, &run_targets);
            FamilyFit { ns_per_work: 0.0, ns_per_byte, ns_per_call, samples: run_rows.len() }
        },
    };
    Ok(Calibration { device, cases })
}

/// The CPU's model name (Linux), else the architecture.
pub fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with("model name") || l.starts_with("Model"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| std::env::consts::ARCH.to_string())
}

/// The vector instruction sets available to the kernels.
pub fn vector_isa() -> String {
    #[cfg(target_arch = "x86_64")]
    {
        let mut isa = vec!["sse2"];
        if is_x86_feature_detected!("avx2") {
            isa.push("avx2");
        }
        if is_x86_feature_detected!("fma") {
            isa.push("fma");
        }
        if is_x86_feature_detected!("avx512f") {
            isa.push("avx512f");
        }
        isa.join("+")
    }
    #[cfg(target_arch = "aarch64")]
    {
        "neon".to_string()
    }
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    {
        "scalar".to_string()
    }
}

/// Today's UTC date as YYYY-MM-DD.
pub fn today() -> String {
    let days = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs() / 86_400);
    civil_date(days as i64)
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's days-to-civil algorithm).
fn civil_date(days: i64) -> String {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!("{year:04}-{month:02}-{day:02}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates() {
        assert_eq!(civil_date(0), "1970-01-01");
        assert_eq!(civil_date(11_016), "2000-02-29");
        assert_eq!(civil_date(20_788), "2026-12-01");
    }

    #[test]
    fn fitting_recovers_a_synthetic_law_per_family_and_fills_untimed_families() {
        let law = |f: [f64; 3]| 0.02 * f[0] + 0.5 * f[1] + 3000.0;
        let samples: Vec<Sample> = (1..30)
            .map(|i| {
                let features = [(i * 100_000) as f64, ((i * 37) % 11 + 1) as f64 * 10_000.0, 1.0];
                Sample { family: Family::Pointwise, features, nanos: law(features) }
            })
            .collect();
        let fits = fit_families(&samples);
        let pointwise = fits["pointwise_conv"];
        assert_eq!(pointwise.samples, 29);
        assert!((pointwise.ns_per_work - 0.02).abs() < 1e-9 && (pointwise.ns_per_byte - 0.5).abs() < 1e-6);
        assert!((pointwise.ns_per_call - 3000.0).abs() < 1e-3);
        // Untimed families borrow the nearest timed law and say they were not timed.
        assert_eq!(fits["matmul"].ns_per_work, pointwise.ns_per_work);
        assert_eq!(fits["matmul"].samples, 0);
        assert_eq!(fits.len(), Family::ALL.len());
    }
}
