//! `toparch bench` output: the stable JSON contract and a terminal table, predictions beside measurements.

use super::format::{bytes, shape, thousands};
use super::rows::{millis, Rows};
use super::table::terminal_table;
use crate::cost::bench::BenchResult;
use crate::cost::Profile;
use serde::Serialize;

/// What was benchmarked and, with a device, what the model predicted for it.
pub struct BenchReport<'a> {
    /// Profile of the benchmarked graph (batch 1), with predicted latency when a device was given.
    pub profile: &'a Profile,
    /// Images per run.
    pub batch: usize,
    /// Worker threads.
    pub threads: usize,
    /// The measurement.
    pub result: &'a BenchResult,
}

#[derive(Serialize)]
struct JsonBench<'a> {
    spec: &'a str,
    input: &'a [usize],
    batch: usize,
    threads: usize,
    runs: usize,
    latency_ms: JsonLatencies,
    throughput_per_s: f64,
    peak_activation_bytes: u64,
    peak_rss_bytes: Option<u64>,
    stages: Vec<JsonStage<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted: Option<JsonPredicted<'a>>,
}

#[derive(Serialize)]
struct JsonLatencies {
    cold: f64,
    median: f64,
    min: f64,
    p90: f64,
}

#[derive(Serialize)]
struct JsonStage<'a> {
    name: &'a str,
    latency_ms: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted_ms: Option<f64>,
}

#[derive(Serialize)]
struct JsonPredicted<'a> {
    device: &'a str,
    latency_ms: f64,
    peak_activation_bytes: u64,
}

impl BenchReport<'_> {
    /// Predicted milliseconds of a stage for the whole batch.
    fn predicted_stage(&self, name: &str) -> Option<f64> {
        let stage = self.profile.stages.iter().find(|g| g.name == name)?;
        stage.latency_ms.map(|ms| ms * self.batch as f64)
    }

    /// Predicted milliseconds of a run of the whole batch.
    fn predicted_total(&self) -> Option<f64> {
        self.profile.latency.as_ref().map(|l| l.prediction.total_ms * self.batch as f64)
    }

    /// Images per second at the median warm run.
    fn throughput(&self) -> f64 {
        self.batch as f64 / (self.result.median_ms() / 1e3)
    }

    /// The benchmark as pretty-printed JSON.
    pub fn json(&self) -> String {
        let r = self.result;
        let json = JsonBench {
            spec: &self.profile.spec,
            input: &self.profile.input,
            batch: self.batch,
            threads: self.threads,
            runs: r.warm_ms.len(),
            latency_ms: JsonLatencies { cold: r.cold_ms, median: r.median_ms(), min: r.min_ms(), p90: r.p90_ms() },
            throughput_per_s: self.throughput(),
            peak_activation_bytes: r.peak_activation_bytes,
            peak_rss_bytes: r.peak_rss_bytes,
            stages: r
                .stages
                .iter()
                .map(|&(name, ms)| JsonStage { name, latency_ms: ms, predicted_ms: self.predicted_stage(name) })
                .collect(),
            predicted: self.profile.latency.as_ref().map(|l| JsonPredicted {
                device: &l.device,
                latency_ms: l.prediction.total_ms * self.batch as f64,
                peak_activation_bytes: self.profile.memory.peak_activation_bytes,
            }),
        };
        let mut text = serde_json::to_string_pretty(&json).expect("a benchmark holds only strings and numbers");
        text.push('\n');
        text
    }

    /// The benchmark as terminal text: a summary, then measured (and predicted) time per stage.
    pub fn table(&self) -> String {
        let r = self.result;
        let with_device = self.profile.latency.is_some();
        let mut out = format!(
            "{} at {}, batch {}, {} thread(s): cold {} ms; warm over {} runs: median {} ms, min {} ms, p90 {} ms; \
             {:.2} images/s\n",
            self.profile.spec,
            shape(&self.profile.input),
            self.batch,
            self.threads,
            millis(r.cold_ms),
            r.warm_ms.len(),
            millis(r.median_ms()),
            millis(r.min_ms()),
            millis(r.p90_ms()),
            self.throughput()
        );
        out.push_str(&format!(
            "peak live activations {} ({} bytes, measured; the analytic model says {}); peak RSS {}\n",
            bytes(r.peak_activation_bytes),
            thousands(r.peak_activation_bytes),
            thousands(self.profile.memory.peak_activation_bytes),
            r.peak_rss_bytes.map_or("unknown".into(), bytes)
        ));
        let mut header = vec!["stage".to_string(), "median ms".into()];
        if with_device {
            header.extend(["predicted ms".into(), "error".into()]);
        }
        let error = |predicted: f64, measured: f64| format!("{:+.1} %", 100.0 * (predicted / measured - 1.0));
        let body = r
            .stages
            .iter()
            .map(|&(name, ms)| {
                let mut row = vec![name.to_string(), millis(ms)];
                if let Some(p) = self.predicted_stage(name) {
                    row.extend([millis(p), error(p, ms)]);
                }
                row
            })
            .collect();
        let mut total = vec!["total (median run)".to_string(), millis(r.median_ms())];
        if let Some(p) = self.predicted_total() {
            total.extend([millis(p), error(p, r.median_ms())]);
        }
        out.push_str(&terminal_table(&Rows { header, body, total }));
        if let Some(l) = &self.profile.latency {
            out.push_str(&format!("predicted on device '{}' ({} thread(s))\n", l.device, l.threads));
        }
        out
    }
}
