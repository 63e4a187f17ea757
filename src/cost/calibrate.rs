//! Calibrating the latency model on the machine at hand: the executor runs TopFormer-T/S/B at a few sizes,
//! every step is timed, and each kernel family's cost law is fitted to its steps by non-negative least squares.

use super::bench::quantile;
use super::latency::{features, nnls, run_features, Caches, Device, Family, FamilyFit, FEATURES, PROFILE_FORMAT};
use crate::error::{Error, Result};
use crate::exec::{Executor, NodeParams};
use crate::graph::Graph;
use crate::spec::load_embedded;
use std::collections::BTreeMap;

/// The networks and sizes calibration times (spec, height, width): the family from 224² to 512², so that the
/// laws see steps whose maps stay in L2 as well as ones that stream from memory, and small steps that run on
/// fewer threads. Held-out checks use other networks and sizes.
pub const CALIBRATION_CASES: [(&str, usize, usize); 12] = [
    ("topformer-tiny", 512, 512),
    ("topformer-small", 512, 512),
    ("topformer-base", 512, 512),
    ("topformer-tiny", 384, 384),
    ("topformer-small", 384, 384),
    ("topformer-base", 384, 384),
    ("topformer-tiny", 320, 320),
    ("topformer-small", 256, 256),
    ("topformer-base", 256, 256),
    ("topformer-tiny", 224, 224),
    ("topformer-small", 224, 224),
    ("topformer-base", 224, 224),
];

/// Networks calibration times.
pub const CALIBRATION_RUNS: usize = CALIBRATION_CASES.len();

/// The graphs calibration times, by description.
fn calibration_graphs() -> Result<Vec<(String, Graph)>> {
    CALIBRATION_CASES
        .iter()
        .map(|&(spec, h, w)| Ok((format!("{spec} at {h}x{w}"), load_embedded(spec)?.compile(h, w)?)))
        .collect()
}

/// Rounds over the cases: each case's runs are spread over this many moments of the calibration, so that a
/// few seconds in which a shared machine runs slower weigh on every case alike instead of on whichever cases
/// they fell on.
pub const ROUNDS: usize = 3;

/// Timed runs per case and round (after one warm-up run of a fresh executor).
pub const RUNS_PER_ROUND: usize = 5;

/// Timed runs per case.
pub const RUNS_PER_CASE: usize = ROUNDS * RUNS_PER_ROUND;

/// By default, calibration gives up when the median run of a case is this much slower than its fastest run.
pub const MAX_SPREAD: f64 = 1.25;

/// One timed step: its family, its features and its median time over the runs.
#[derive(Clone, Debug)]
pub struct Sample {
    /// Kernel family.
    pub family: Family,
    /// The step's [`features`].
    pub features: [f64; FEATURES],
    /// Median time, nanoseconds.
    pub nanos: f64,
}

/// A graph's timed runs: per step, the median time (the model predicts `bench`'s median run).
#[derive(Clone, Debug)]
struct TimedRuns {
    /// One sample per step of the plan.
    samples: Vec<Sample>,
    /// Wall time of every run, milliseconds.
    totals_ms: Vec<f64>,
    /// The median over runs of the wall time outside the steps, nanoseconds.
    outside_steps_ns: f64,
}

/// The times of a graph's runs so far: per plan step (with its family and features), and per run its wall
/// time and its time outside the steps.
#[derive(Default)]
struct RunTimes {
    steps: Vec<(Family, [f64; FEATURES], Vec<f64>)>,
    totals_ms: Vec<f64>,
    outside_ns: Vec<f64>,
}

impl RunTimes {
    /// Adds `runs` warm runs of `graph` on `threads` threads, by a fresh executor after one warm-up run, with
    /// the steps' features for `caches`.
    fn time(&mut self, graph: &Graph, threads: usize, caches: &Caches, runs: usize, tick: &dyn Fn()) -> Result<()> {
        let exec = Executor::new(graph, NodeParams::random(graph, 0), threads)?;
        let input = vec![0.5f32; crate::ops::numel(graph.input_shape()) as usize];
        exec.run(&input, graph.output(), &[])?;
        if self.steps.is_empty() {
            let step = |s| (Family::of(s, graph), features(s, graph, threads, caches), Vec::new());
            self.steps = exec.plan().steps.iter().map(step).collect();
        }
        for _ in 0..runs {
            let started = std::time::Instant::now();
            let run = exec.run(&input, graph.output(), &[])?;
            let wall_ns = started.elapsed().as_secs_f64() * 1e9;
            debug_assert_eq!(run.steps.len(), self.steps.len(), "every executor of a graph runs the same plan");
            for ((_, _, all), stat) in self.steps.iter_mut().zip(&run.steps) {
                all.push(stat.time.as_secs_f64() * 1e9);
            }
            let steps_ns: f64 = run.steps.iter().map(|s| s.time.as_secs_f64() * 1e9).sum();
            self.outside_ns.push((wall_ns - steps_ns).max(0.0));
            self.totals_ms.push(wall_ns / 1e6);
            tick();
        }
        Ok(())
    }

    /// Each step's median time, with its family and features.
    fn summarise(self) -> TimedRuns {
        let samples = self
            .steps
            .into_iter()
            .map(|(family, features, all)| Sample { family, features, nanos: quantile(&all, 0.5) })
            .collect();
        TimedRuns { samples, totals_ms: self.totals_ms, outside_steps_ns: quantile(&self.outside_ns, 0.5) }
    }
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
        let rows: Vec<[f64; FEATURES]> = of_family.iter().map(|s| s.features.map(|f| f / s.nanos.sqrt())).collect();
        let targets: Vec<f64> = of_family.iter().map(|s| s.nanos.sqrt()).collect();
        let mut law = nnls(&rows, &targets);
        // A cache level none of the family's steps reached takes the rate of the nearest level that some did
        // (memory from L3, L3 from L2 or memory), so a larger step than any timed is not priced at nothing.
        let mut timed: [bool; 3] = std::array::from_fn(|l| of_family.iter().any(|s| s.features[1 + l] > 0.0));
        for level in [1, 2, 0, 1] {
            if !timed[level] {
                let nearest = [level.wrapping_sub(1), level + 1, level + 2].into_iter().find(|&l| l < 3 && timed[l]);
                if let Some(l) = nearest {
                    law[1 + level] = law[1 + l];
                    timed[level] = true;
                }
            }
        }
        fits.insert(family, FamilyFit::from_coefficients(law, of_family.len()));
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
        out.insert(family.name().to_string(), fit.unwrap_or(FamilyFit::from_coefficients([0.0; FEATURES], 0)));
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

/// Times [`CALIBRATION_CASES`] on `threads` threads and fits a device profile named `name`; `tick` is called
/// after every timed run. Refuses, naming the case, when the machine is too busy to time reliably: when a
/// case's median run is more than `max_spread` times its fastest.
pub fn calibrate(name: &str, threads: usize, max_spread: f64, tick: &dyn Fn()) -> Result<Calibration> {
    let mut samples = Vec::new();
    let mut cases = Vec::new();
    let caches = machine_caches();
    let (mut run_rows, mut run_targets) = (Vec::new(), Vec::new());
    let graphs = calibration_graphs()?;
    let mut times: Vec<RunTimes> = graphs.iter().map(|_| RunTimes::default()).collect();
    for _ in 0..ROUNDS {
        for ((_, graph), times) in graphs.iter().zip(&mut times) {
            times.time(graph, threads, &caches, RUNS_PER_ROUND, tick)?;
        }
    }
    for ((case, graph), times) in graphs.into_iter().zip(times) {
        let mut timed = times.summarise();
        run_rows.push(run_features(&graph));
        run_targets.push(timed.outside_steps_ns);
        let fastest = timed.totals_ms.iter().copied().fold(f64::INFINITY, f64::min);
        let spread = quantile(&timed.totals_ms, 0.5) / fastest;
        if !spread.is_finite() || spread > max_spread {
            return Err(Error::input(format!(
                "calibration cannot time reliably: {case} ran {spread:.2}x slower at the median than at \
                 its fastest (--max-spread {max_spread}); the machine is busy, no profile written"
            )));
        }
        cases.push((case, fastest, spread));
        samples.append(&mut timed.samples);
    }
    let device = Device {
        format: PROFILE_FORMAT,
        name: name.to_string(),
        cpu: cpu_model(),
        isa: vector_isa(),
        threads,
        toparch_version: env!("CARGO_PKG_VERSION").to_string(),
        date: today(),
        source: format!(
            "toparch calibrate: median of {RUNS_PER_CASE} runs per step ({ROUNDS} rounds over the cases) of {}; \
             worst median/fastest run {:.2}",
            cases.iter().map(|c| c.0.as_str()).collect::<Vec<_>>().join(", "),
            cases.iter().map(|c| c.2).fold(1.0, f64::max)
        ),
        caches,
        families: fit_families(&samples),
        run: FamilyFit::from_coefficients(nnls(&run_rows, &run_targets), run_rows.len()),
    };
    Ok(Calibration { device, cases })
}

/// This machine's cache sizes: the largest private (per-core) level below the last as L2 and the last
/// level shared by several cores as L3, from Linux's sysfs. Where they cannot be read, 1 MiB and 32 MiB
/// (typical of current x86 server cores) stand in, and the profile says so by the sizes it records. With
/// the output size from which this build's kernels stream a resize's output.
pub fn machine_caches() -> Caches {
    let dir = std::path::Path::new("/sys/devices/system/cpu/cpu0/cache");
    let mut levels: Vec<(u32, u64, bool)> = Vec::new();
    for index in 0..8 {
        let read = |name: &str| std::fs::read_to_string(dir.join(format!("index{index}/{name}"))).ok();
        let (Some(level), Some(kind), Some(size)) = (read("level"), read("type"), read("size")) else { continue };
        if kind.trim() == "Instruction" {
            continue;
        }
        let (Ok(level), Some(bytes)) = (level.trim().parse::<u32>(), parse_cache_size(size.trim())) else { continue };
        let shared = read("shared_cpu_list").is_some_and(|list| list.contains(',') || list.contains('-'));
        levels.push((level, bytes, shared));
    }
    let stream_min_bytes = crate::kernels::RESIZE_STREAM_MIN_BYTES.map(|bytes| bytes as u64);
    Caches { stream_min_bytes, ..caches_from_levels(&levels) }
}

/// [`Caches`] from `(level, bytes, shared by several cores)` of the data/unified caches.
fn caches_from_levels(levels: &[(u32, u64, bool)]) -> Caches {
    let private = levels.iter().filter(|l| !l.2 && l.0 >= 2).map(|l| l.1).max();
    let shared = levels.iter().filter(|l| l.2 && l.0 >= 2).max_by_key(|l| l.0).map(|l| l.1);
    match (private, shared) {
        (Some(l2), Some(l3)) => Caches { l2_bytes: l2, l3_bytes: l3.max(l2), stream_min_bytes: None },
        (Some(l2), None) => Caches { l2_bytes: l2, l3_bytes: l2, stream_min_bytes: None },
        // A shared L2 and nothing private beyond L1: the shared level is the only one.
        (None, Some(l2)) => Caches { l2_bytes: l2, l3_bytes: l2, stream_min_bytes: None },
        (None, None) => Caches { l2_bytes: 1 << 20, l3_bytes: 32 << 20, stream_min_bytes: None },
    }
}

/// A sysfs cache size such as `1024K` or `32768K` or `8M`, in bytes.
fn parse_cache_size(text: &str) -> Option<u64> {
    let (digits, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len()));
    let value: u64 = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1 << 10,
        "M" => 1 << 20,
        "G" => 1 << 30,
        _ => return None,
    };
    Some(value * scale)
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
        let law = [0.02, 0.1, 0.5, 0.9, 3000.0, 8000.0];
        let samples: Vec<Sample> = (1..60)
            .map(|i| {
                let bytes = ((i * 37) % 11 + 1) as f64 * 10_000.0;
                let mut features = [(i * 100_000) as f64, 0.0, 0.0, 0.0, 1.0, (i % 2) as f64];
                features[1 + i % 3] = bytes;
                let nanos = features.iter().zip(law).map(|(f, c)| f * c).sum();
                Sample { family: Family::Pointwise, features, nanos }
            })
            .collect();
        let fits = fit_families(&samples);
        let pointwise = fits["pointwise_conv"];
        assert_eq!(pointwise.samples, 59);
        for (got, want) in pointwise.coefficients().iter().zip(law) {
            assert!((got - want).abs() <= 1e-6 * want, "{pointwise:?}");
        }
        // Levels no step reached borrow the nearest timed level's byte rate.
        let in_l2: Vec<Sample> = samples.iter().filter(|s| s.features[1] > 0.0).cloned().collect();
        let l2_only = fit_families(&in_l2)["pointwise_conv"];
        assert!((l2_only.ns_per_byte_l2 - 0.1).abs() < 1e-6, "{l2_only:?}");
        assert_eq!(
            (l2_only.ns_per_byte_l3, l2_only.ns_per_byte_memory),
            (l2_only.ns_per_byte_l2, l2_only.ns_per_byte_l2)
        );
        // Untimed families borrow the nearest timed law and say they were not timed.
        assert_eq!(fits["matmul"].ns_per_work, pointwise.ns_per_work);
        assert_eq!(fits["matmul"].samples, 0);
        assert_eq!(fits.len(), Family::ALL.len());
    }

    #[test]
    fn cache_sizes_from_sysfs_levels() {
        assert_eq!(parse_cache_size("1024K"), Some(1 << 20));
        assert_eq!(parse_cache_size("8M"), Some(8 << 20));
        assert_eq!(parse_cache_size("12x"), None);
        // Private L1 and L2, shared L3.
        let epyc = [(1, 32 << 10, false), (2, 1 << 20, false), (3, 32 << 20, true)];
        assert_eq!(caches_from_levels(&epyc), Caches { l2_bytes: 1 << 20, l3_bytes: 32 << 20, stream_min_bytes: None });
        // A shared L2 is the last level.
        let shared_l2 = [(1, 64 << 10, false), (2, 4 << 20, true)];
        assert_eq!(
            caches_from_levels(&shared_l2),
            Caches { l2_bytes: 4 << 20, l3_bytes: 4 << 20, stream_min_bytes: None }
        );
        assert_eq!(caches_from_levels(&[]), Caches { l2_bytes: 1 << 20, l3_bytes: 32 << 20, stream_min_bytes: None });
        let caches = machine_caches();
        assert!(caches.l2_bytes > 0 && caches.l3_bytes >= caches.l2_bytes, "{caches:?}");
    }
}
