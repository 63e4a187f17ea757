//! Measured latency and memory of the executor, in the spirit of onnxruntime_perf_test and trtexec: the cold
//! first run, then the warm distribution, per-stage times, the measured activation peak and the process's
//! peak resident memory.

use crate::error::{Error, Result};
use crate::exec::{Executor, NodeParams};
use crate::graph::Graph;
use crate::ops::numel;
use std::time::Instant;

/// How to benchmark.
#[derive(Clone, Copy, Debug)]
pub struct BenchOptions {
    /// Images per timed run; the executor runs them one after another.
    pub batch: usize,
    /// Worker threads.
    pub threads: usize,
    /// Warm runs measured.
    pub runs: usize,
    /// Runs discarded between the cold run and the measured ones.
    pub warmup: usize,
}

/// What a benchmark measured.
#[derive(Clone, Debug)]
pub struct BenchResult {
    /// The first run, milliseconds (page faults and cold caches included).
    pub cold_ms: f64,
    /// Every measured warm run, milliseconds, in order.
    pub warm_ms: Vec<f64>,
    /// Per stage (name, median warm milliseconds), in network order.
    pub stages: Vec<(&'static str, f64)>,
    /// The executor's measured high-water mark of live activation bytes (one image at a time).
    pub peak_activation_bytes: u64,
    /// The process's peak resident set, when the platform reports it.
    pub peak_rss_bytes: Option<u64>,
}

/// The `q`-quantile (0..=1) of `values` by the nearest-rank method.
pub fn quantile(values: &[f64], q: f64) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len().max(1));
    sorted.get(rank - 1).copied().unwrap_or(0.0)
}

impl BenchResult {
    /// Median warm milliseconds.
    pub fn median_ms(&self) -> f64 {
        quantile(&self.warm_ms, 0.5)
    }

    /// Fastest warm milliseconds.
    pub fn min_ms(&self) -> f64 {
        self.warm_ms.iter().copied().fold(f64::INFINITY, f64::min)
    }

    /// 90th percentile of the warm milliseconds.
    pub fn p90_ms(&self) -> f64 {
        quantile(&self.warm_ms, 0.9)
    }
}

/// Most measured (or warm-up) runs a benchmark takes.
pub const MAX_RUNS: usize = 100_000;

/// Runs `graph` (batch 1) with `params` as `options` say; `tick` is called after every run.
pub fn bench(graph: &Graph, params: NodeParams, options: BenchOptions, tick: &dyn Fn()) -> Result<BenchResult> {
    if options.runs == 0 || options.runs > MAX_RUNS || options.warmup > MAX_RUNS {
        return Err(Error::input(format!("--runs must be from 1 to {MAX_RUNS}, --warmup at most {MAX_RUNS}")));
    }
    if options.batch == 0 {
        return Err(Error::input("--batch must be at least 1"));
    }
    let exec = Executor::new(graph, params, options.threads)?;
    let len = numel(graph.input_shape()) as usize;
    // A deterministic, normalised-looking input.
    let input: Vec<f32> = (0..len).map(|i| ((i * 7919) % 255) as f32 / 64.0 - 2.0).collect();
    let stage_names: Vec<&'static str> = {
        let mut names: Vec<&'static str> = Vec::new();
        for (_, n) in graph.nodes().skip(1) {
            if !names.contains(&n.stage.name()) {
                names.push(n.stage.name());
            }
        }
        names
    };
    let mut peak = 0;
    let mut run_batch = || -> Result<(f64, Vec<f64>)> {
        let started = Instant::now();
        let mut stage_ms = vec![0.0; stage_names.len()];
        for _ in 0..options.batch {
            let run = exec.run(&input, graph.output(), &[])?;
            peak = peak.max(run.peak_activation_bytes);
            for step in &run.steps {
                let stage = graph.node(step.nodes[0]).stage.name();
                let index = stage_names.iter().position(|s| *s == stage).unwrap_or(0);
                stage_ms[index] += step.time.as_secs_f64() * 1e3;
            }
        }
        tick();
        Ok((started.elapsed().as_secs_f64() * 1e3, stage_ms))
    };
    let (cold_ms, _) = run_batch()?;
    for _ in 0..options.warmup {
        run_batch()?;
    }
    let mut warm_ms = Vec::with_capacity(options.runs);
    let mut per_stage: Vec<Vec<f64>> = vec![Vec::with_capacity(options.runs); stage_names.len()];
    for _ in 0..options.runs {
        let (total, stages) = run_batch()?;
        warm_ms.push(total);
        for (all, ms) in per_stage.iter_mut().zip(stages) {
            all.push(ms);
        }
    }
    let stages = stage_names.into_iter().zip(per_stage.iter().map(|v| quantile(v, 0.5))).collect();
    Ok(BenchResult { cold_ms, warm_ms, stages, peak_activation_bytes: peak, peak_rss_bytes: peak_rss_bytes() })
}

/// The process's peak resident set size (Linux `VmHWM`), if known.
pub fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_quantiles() {
        let v = [5.0, 1.0, 4.0, 2.0, 3.0];
        assert_eq!(quantile(&v, 0.5), 3.0);
        assert_eq!(quantile(&v, 0.9), 5.0);
        assert_eq!(quantile(&v, 0.0), 1.0);
        assert_eq!(quantile(&[7.0], 0.9), 7.0);
    }
}
