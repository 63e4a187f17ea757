//! Latency predicted from a device profile: every step of the executor's plan belongs to a kernel family,
//! and each family's time is a linear law in the step's [`features`]: its work and bytes on the busiest
//! thread (the kernels split a step into pieces as [`parallel_share`] follows), the bytes priced by the
//! cache level the step's working set fits (per-core L2, shared L3, or memory), a cost per call and one
//! per parallel split (fork/join). The six coefficients are fitted by non-negative least squares to timed
//! steps (`toparch calibrate`). The prediction follows the executor's own plan (its fusions included) and
//! never runs the network.

use crate::error::{Error, Result};
use crate::exec::{Plan, PlanStep, StepKind};
use crate::graph::Graph;
use crate::kernels;
use crate::ops::{numel, Op, Shape};
use crate::spec::Document;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A kernel family: the steps one fitted cost law describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Family {
    /// The stem and other dense k×k convolutions.
    Dense,
    /// 1×1 convolutions (GEMMs).
    Pointwise,
    /// Depthwise k×k convolutions at stride 1.
    DepthwiseStride1,
    /// Depthwise k×k convolutions at stride 2.
    DepthwiseStride2,
    /// A 1×1 conv and a depthwise convolution fused in bands: an expand and the depthwise conv that reads
    /// it, or a depthwise conv and the projection that reads it (with its residual add).
    ExpandDepthwise,
    /// Attention matmuls and linear layers.
    MatMul,
    /// Softmax.
    Softmax,
    /// Bilinear resize.
    Resize,
    /// A bilinear resize accumulated into an add.
    ResizeAdd,
    /// Adaptive and global average pooling.
    Pool,
    /// Activations, adds, multiplies, concatenation, slices, reshapes, unfused BatchNorms.
    Elementwise,
}

impl Family {
    /// Every family, in profile order.
    pub const ALL: [Family; 11] = [
        Family::Dense,
        Family::Pointwise,
        Family::DepthwiseStride1,
        Family::DepthwiseStride2,
        Family::ExpandDepthwise,
        Family::MatMul,
        Family::Softmax,
        Family::Resize,
        Family::ResizeAdd,
        Family::Pool,
        Family::Elementwise,
    ];

    /// The family's key in a device profile.
    pub fn name(self) -> &'static str {
        match self {
            Family::Dense => "dense_conv",
            Family::Pointwise => "pointwise_conv",
            Family::DepthwiseStride1 => "depthwise_stride1",
            Family::DepthwiseStride2 => "depthwise_stride2",
            Family::ExpandDepthwise => "expand_depthwise",
            Family::MatMul => "matmul",
            Family::Softmax => "softmax",
            Family::Resize => "resize",
            Family::ResizeAdd => "resize_add",
            Family::Pool => "pool",
            Family::Elementwise => "elementwise",
        }
    }

    /// The family of a step of the plan: one match arm per step kind.
    pub fn of(step: &PlanStep, graph: &Graph) -> Family {
        let first = &graph.node(step.nodes[0]).op;
        match (step.kind, first) {
            (StepKind::InvertedResidual { .. }, _) => Family::ExpandDepthwise,
            (StepKind::ResizeAdd, _) => Family::ResizeAdd,
            (StepKind::Conv, Op::Conv2d(c)) if c.groups > 1 && c.groups == c.in_channels => {
                if c.stride == 1 {
                    Family::DepthwiseStride1
                } else {
                    Family::DepthwiseStride2
                }
            }
            (StepKind::Conv, Op::Conv2d(c)) if c.kernel == 1 => Family::Pointwise,
            (StepKind::Conv, _) => Family::Dense,
            (StepKind::Op, Op::MatMul(_) | Op::Linear(_)) => Family::MatMul,
            (StepKind::Op, Op::Softmax(_)) => Family::Softmax,
            (StepKind::Op, Op::Resize(_)) => Family::Resize,
            (StepKind::Op, Op::AdaptiveAvgPool(_) | Op::GlobalAvgPool(_)) => Family::Pool,
            (StepKind::Op, _) => Family::Elementwise,
        }
    }
}

/// The cache sizes a profile's laws were fitted with: a step's bytes are priced by the smallest level its
/// working set fits. Read from the machine at calibration time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Caches {
    /// One core's L2 (or the largest private level), bytes.
    pub l2_bytes: u64,
    /// The shared last-level cache, bytes (0 when there is none beyond L2).
    pub l3_bytes: u64,
    /// The output size from which the machine's kernels write a resize's output with non-temporal stores
    /// (`kernels::RESIZE_STREAM_MIN_BYTES` where it was calibrated); absent where they never do.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stream_min_bytes: Option<u64>,
}

impl Caches {
    /// Index of the level a working set of `bytes` on one thread (`whole` on all threads) fits:
    /// 0 for L2, 1 for L3, 2 for memory.
    fn level(&self, per_thread: f64, whole: f64) -> usize {
        if per_thread <= self.l2_bytes as f64 {
            0
        } else if whole <= self.l3_bytes as f64 {
            1
        } else {
            2
        }
    }
}

/// Number of model features: see [`features`].
pub const FEATURES: usize = 6;

/// What a step costs in the model's terms on `threads` threads, as `[work, bytes in L2, bytes in L3, bytes
/// from memory, 1, forks]`: work is the multiply-accumulates of its nodes plus the elements they write, bytes
/// the f32 data it reads and writes (weights included; the output of a resize that writes it with
/// non-temporal stores, per [`Caches::stream_min_bytes`], at half, as those move each line once where other
/// stores read it in first), both times the busiest thread's share
/// ([`parallel_share`]); the bytes go to the one cache level their working set fits; `forks` is 1 when the
/// step is split across threads (a fork/join), else 0.
pub fn features(step: &PlanStep, graph: &Graph, threads: usize, caches: &Caches) -> [f64; FEATURES] {
    let work: u64 = step.nodes.iter().map(|&n| graph.node(n).cost.macs + numel(&graph.node(n).shape)).sum();
    let read: u64 = step.reads.iter().map(|&r| numel(&graph.node(r).shape)).sum();
    let written = numel(&graph.node(step.output()).shape);
    let weights: u64 = step.nodes.iter().flat_map(|&n| &graph.node(n).params).map(|p| numel(&p.shape)).sum();
    // A resize that streams its output moves each written line once; other stores read it in first.
    let streamed = step.kind == StepKind::Op
        && matches!(graph.node(step.nodes[0]).op, Op::Resize(_))
        && caches.stream_min_bytes.is_some_and(|min| 4 * written >= min);
    let written = if streamed { written / 2 } else { written };
    let bytes = 4.0 * (read + written + weights) as f64;
    let share = parallel_share(step, graph, threads);
    let mut f = [0.0; FEATURES];
    f[0] = share * work as f64;
    f[1 + caches.level(share * bytes, bytes)] = share * bytes;
    f[4] = 1.0;
    f[5] = if share < 1.0 { 1.0 } else { 0.0 };
    f
}

/// The share of a step's work that its busiest thread does on `threads` threads: 1 when the kernel runs it
/// serially, the busiest thread's share of the pieces when it splits it. Each kernel says how it splits
/// (`kernels::*_split`); steps of other ops run serially.
pub fn parallel_share(step: &PlanStep, graph: &Graph, threads: usize) -> f64 {
    if threads <= 1 {
        return 1.0;
    }
    let first = graph.node(step.nodes[0]);
    let input = &graph.node(first.inputs[0]).shape;
    let (c, h, w) = chw(&first.shape);
    let split = match (step.kind, &first.op) {
        (StepKind::InvertedResidual { depthwise_at, project_at, .. }, Op::Conv2d(first_conv)) => {
            let dw_node = graph.node(step.nodes[depthwise_at]);
            let Op::Conv2d(dw) = &dw_node.op else { return 1.0 };
            if depthwise_at == 0 {
                kernels::depthwise_project_split(&first_conv.dims(input, &first.shape), threads)
            } else {
                let hidden = &first.shape;
                let dw_dims = dw.dims(hidden, &dw_node.shape);
                kernels::expand_depthwise_split(
                    &first_conv.dims(input, hidden),
                    &dw_dims,
                    project_at.is_some(),
                    threads,
                )
            }
        }
        (StepKind::ResizeAdd, _) | (StepKind::Op, Op::Resize(_)) => {
            let (_, in_h, in_w) = chw(&graph.node(step.reads[0]).shape);
            let accumulate = step.kind == StepKind::ResizeAdd;
            kernels::resize_bilinear_split(c, (in_h, in_w), (h, w), accumulate, threads)
        }
        (StepKind::Conv, Op::Conv2d(conv)) => kernels::conv2d_split(&conv.dims(input, &first.shape), threads),
        (StepKind::Op, Op::MatMul(m)) => match m.dims(input, &graph.node(first.inputs[1]).shape) {
            Ok(d) => kernels::batched_matmul_split(d.batch, d.m, d.k, d.n, threads),
            Err(_) => return 1.0,
        },
        (StepKind::Op, Op::Softmax(_)) => {
            let row = first.shape.last().copied().unwrap_or(1).max(1);
            kernels::softmax_rows_split(numel(&first.shape) as usize / row, row, threads)
        }
        (StepKind::Op, Op::AdaptiveAvgPool(_) | Op::GlobalAvgPool(_)) => {
            let (ic, ih, iw) = chw(input);
            kernels::adaptive_avg_pool2d_split(ic, ih, iw, threads)
        }
        (StepKind::Op, Op::Elementwise(_)) => kernels::elementwise_split(numel(&first.shape) as usize),
        _ => return 1.0,
    };
    split.busiest_share(threads)
}

/// Channels, height and width of an NCHW shape (batch 1); other ranks as (elements, 1, 1).
fn chw(shape: &Shape) -> (usize, usize, usize) {
    match shape.len() {
        4 => (shape[1], shape[2], shape[3]),
        _ => (numel(shape) as usize, 1, 1),
    }
}

/// One family's fitted cost law: nanoseconds per unit of each of the [`features`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyFit {
    /// Nanoseconds per unit of work (multiply-accumulate or element written) on the busiest thread.
    pub ns_per_work: f64,
    /// Nanoseconds per byte read or written when the working set fits one core's L2.
    pub ns_per_byte_l2: f64,
    /// Nanoseconds per byte when it fits the shared L3.
    pub ns_per_byte_l3: f64,
    /// Nanoseconds per byte when it streams from memory.
    pub ns_per_byte_memory: f64,
    /// Nanoseconds per call.
    pub ns_per_call: f64,
    /// Nanoseconds per fork/join, when the step is split across threads.
    pub ns_per_fork: f64,
    /// Timed steps the fit used.
    pub samples: usize,
}

impl FamilyFit {
    /// A law from its coefficients, in [`features`] order.
    pub fn from_coefficients(c: [f64; FEATURES], samples: usize) -> Self {
        FamilyFit {
            ns_per_work: c[0],
            ns_per_byte_l2: c[1],
            ns_per_byte_l3: c[2],
            ns_per_byte_memory: c[3],
            ns_per_call: c[4],
            ns_per_fork: c[5],
            samples,
        }
    }

    /// The coefficients, in [`features`] order.
    pub fn coefficients(&self) -> [f64; FEATURES] {
        [
            self.ns_per_work,
            self.ns_per_byte_l2,
            self.ns_per_byte_l3,
            self.ns_per_byte_memory,
            self.ns_per_call,
            self.ns_per_fork,
        ]
    }

    /// Predicted nanoseconds of a step with `features`.
    pub fn nanos(&self, features: [f64; FEATURES]) -> f64 {
        self.coefficients().iter().zip(features).map(|(c, f)| c * f).sum()
    }
}

/// The device-profile format this toparch reads and writes (1: one byte rate per family, no caches).
pub const PROFILE_FORMAT: u32 = 2;

/// A device profile: where it was calibrated and the cost law of every kernel family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
    /// The profile format ([`PROFILE_FORMAT`]).
    pub format: u32,
    /// Short name (`snapdragon865`, or the calibrated machine's).
    pub name: String,
    /// CPU model.
    pub cpu: String,
    /// Vector instruction sets the kernels used.
    pub isa: String,
    /// Worker threads the profile is valid for.
    pub threads: usize,
    /// The toparch version that wrote it; another version's kernels time differently.
    pub toparch_version: String,
    /// Calibration date (UTC, YYYY-MM-DD).
    pub date: String,
    /// How the profile was obtained.
    pub source: String,
    /// The cache sizes the laws were fitted with.
    pub caches: Caches,
    /// Cost law per family, by [`Family::name`].
    pub families: BTreeMap<String, FamilyFit>,
    /// What a run costs outside its steps (the input's copy, the schedule): `ns_per_byte_memory` per byte
    /// of input and `ns_per_call` per run; the other coefficients are unused (0).
    pub run: FamilyFit,
}

macro_rules! embed_devices {
    ($($name:literal),*) => {
        &[$(($name, include_str!(concat!("../../specs/devices/", $name, ".toml")))),*]
    };
}

/// The device profiles compiled into the binary: (name, TOML text).
pub fn embedded_devices() -> &'static [(&'static str, &'static str)] {
    embed_devices!("snapdragon865")
}

impl Device {
    /// Parses a profile; an error names `origin`, the line and the key.
    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        // An older format is named as such, before its fields are found missing.
        if let Ok(table) = text.parse::<toml::Table>() {
            let format = table.get("format").map_or(Some(1), toml::Value::as_integer);
            if format.is_some_and(|f| f != i64::from(PROFILE_FORMAT)) {
                let found = format.unwrap_or(1);
                return Err(Error::input(format!(
                    "{origin}: format: profile format {found}, but this toparch reads format {PROFILE_FORMAT}; \
                     calibrate again (or derive-device from a new calibration)"
                )));
            }
        }
        let (device, doc): (Device, Document) = Document::parse(origin.to_string(), text, None)?;
        let version = env!("CARGO_PKG_VERSION");
        if device.toparch_version != version {
            let message =
                format!("written by toparch {} but this is {version}; calibrate again", device.toparch_version);
            return Err(doc.error("toparch_version", message));
        }
        if device.threads == 0 || device.threads > crate::exec::MAX_THREADS {
            return Err(doc.error("threads", format!("must be from 1 to {}", crate::exec::MAX_THREADS)));
        }
        let fits = Family::ALL.iter().map(|f| (format!("families.{}", f.name()), device.families.get(f.name())));
        for (key, fit) in fits.chain([("run".to_string(), Some(&device.run))]) {
            let fit = fit.ok_or_else(|| doc.error(&key, "missing"))?;
            if fit.coefficients().iter().any(|v| !v.is_finite() || *v < 0.0) {
                return Err(doc.error(&key, "coefficients must be finite and non-negative"));
            }
        }
        if let Some(unknown) = device.families.keys().find(|k| !Family::ALL.iter().any(|f| f.name() == *k)) {
            return Err(doc.error(&format!("families.{unknown}"), "not a kernel family"));
        }
        Ok(device)
    }

    /// An embedded profile by name, or a profile file.
    pub fn load(name_or_path: &str) -> Result<Self> {
        if let Some((name, text)) = embedded_devices().iter().find(|(n, _)| *n == name_or_path) {
            return Device::parse(text, &format!("embedded device {name}"));
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            let names: Vec<&str> = embedded_devices().iter().map(|(n, _)| *n).collect();
            return Err(Error::input(format!(
                "--device {name_or_path}: neither an embedded device ({}) nor a file",
                names.join(", ")
            )));
        }
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Device::parse(&text, &path.display().to_string())
    }

    /// The profile as TOML.
    pub fn to_toml(&self) -> String {
        toml::to_string(self).expect("a device profile holds only strings, integers and finite floats")
    }

    /// The cost law of `family`.
    pub fn fit(&self, family: Family) -> FamilyFit {
        self.families[family.name()]
    }

    /// Every coefficient multiplied by `scale`, as a device `scale` times slower would need.
    pub fn scaled(&self, scale: f64) -> Device {
        let mut device = self.clone();
        for fit in device.families.values_mut().chain([&mut device.run]) {
            *fit = FamilyFit::from_coefficients(fit.coefficients().map(|c| c * scale), fit.samples);
        }
        device
    }
}

/// A run's own cost in the model's terms: the input's bytes (priced as from memory; the run's bookkeeping
/// grows with the network's size) and one call, in [`features`] order.
pub fn run_features(graph: &Graph) -> [f64; FEATURES] {
    [0.0, 0.0, 0.0, 4.0 * numel(graph.input_shape()) as f64, 1.0, 0.0]
}

/// Predicted time of every step of a graph's plan.
#[derive(Clone, Debug)]
pub struct Prediction {
    /// Predicted milliseconds per node: a step's time goes to its first node, nodes fused into it get 0.
    pub node_ms: Vec<f64>,
    /// Predicted milliseconds of a run outside its steps (included in the total, in no layer).
    pub run_ms: f64,
    /// Predicted milliseconds of the whole graph: every step and the run's own cost.
    pub total_ms: f64,
    /// Of the total, the final resize of a segmentor's logits to the input size (0 for a classifier).
    pub final_resize_ms: f64,
    /// The argmax over classes after that resize, which the graph leaves out (0 for a classifier).
    pub argmax_ms: f64,
}

impl Prediction {
    /// Predicts every step of `graph`'s plan on `device`.
    pub fn new(graph: &Graph, device: &Device) -> Self {
        let plan = Plan::new(graph);
        let mut node_ms = vec![0.0; graph.len()];
        for step in &plan.steps {
            let ms =
                device.fit(Family::of(step, graph)).nanos(features(step, graph, device.threads, &device.caches)) / 1e6;
            node_ms[step.nodes[0].index()] += ms;
        }
        let run_ms = device.run.nanos(run_features(graph)) / 1e6;
        let total_ms = node_ms.iter().sum::<f64>() + run_ms;
        let output = graph.node(graph.output());
        let (final_resize_ms, argmax_ms) = match output.op {
            Op::Resize(_) => {
                // Argmax reads every score once and writes one class per pixel, serially (no kernel of its own).
                let scores = numel(&output.shape) as f64;
                let bytes = 4.0 * scores;
                let mut f = [scores, 0.0, 0.0, 0.0, 1.0, 0.0];
                f[1 + device.caches.level(bytes, bytes)] = bytes;
                let argmax = device.fit(Family::Elementwise).nanos(f) / 1e6;
                (node_ms[graph.output().index()], argmax)
            }
            _ => (0.0, 0.0),
        };
        Prediction { node_ms, run_ms, total_ms, final_resize_ms, argmax_ms }
    }

    /// The network as the paper times it: everything but the final resize.
    pub fn network_ms(&self) -> f64 {
        self.total_ms - self.final_resize_ms
    }

    /// Post-processing a deployment adds: the final resize and the argmax.
    pub fn postprocess_ms(&self) -> f64 {
        self.final_resize_ms + self.argmax_ms
    }
}

/// Non-negative least squares for `N` unknowns (a handful): the best of the unconstrained solutions over
/// every subset of free unknowns (the others held at 0) that stays non-negative. Columns are scaled to unit
/// norm first; a column that is zero in every row stays 0.
pub fn nnls<const N: usize>(rows: &[[f64; N]], targets: &[f64]) -> [f64; N] {
    let norms: [f64; N] = std::array::from_fn(|j| {
        let n = rows.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt();
        if n > 0.0 {
            n
        } else {
            1.0
        }
    });
    let scaled: Vec<[f64; N]> = rows.iter().map(|r| std::array::from_fn(|j| r[j] / norms[j])).collect();
    let residual = |x: &[f64; N]| -> f64 {
        scaled.iter().zip(targets).map(|(r, t)| (r.iter().zip(x).map(|(a, b)| a * b).sum::<f64>() - t).powi(2)).sum()
    };
    let mut best = ([0.0; N], residual(&[0.0; N]));
    for mask in 1u32..(1 << N) {
        let free: Vec<usize> = (0..N).filter(|j| mask & (1 << j) != 0).collect();
        let Some(solution) = least_squares(&scaled, targets, &free) else { continue };
        if solution.iter().all(|&v| v >= 0.0) {
            let r = residual(&solution);
            if r < best.1 {
                best = (solution, r);
            }
        }
    }
    std::array::from_fn(|j| best.0[j] / norms[j])
}

/// The least-squares solution over the `free` unknowns (others 0), by the normal equations and Gaussian
/// elimination with partial pivoting; `None` when they are singular.
fn least_squares<const N: usize>(rows: &[[f64; N]], targets: &[f64], free: &[usize]) -> Option<[f64; N]> {
    let n = free.len();
    let mut a = vec![vec![0.0; n + 1]; n];
    for (r, t) in rows.iter().zip(targets) {
        for (i, &fi) in free.iter().enumerate() {
            for (j, &fj) in free.iter().enumerate() {
                a[i][j] += r[fi] * r[fj];
            }
            a[i][n] += r[fi] * t;
        }
    }
    for col in 0..n {
        let pivot = (col..n).max_by(|&x, &y| a[x][col].abs().total_cmp(&a[y][col].abs()))?;
        if a[pivot][col].abs() < 1e-12 {
            return None;
        }
        a.swap(col, pivot);
        let pivot_row = a[col].clone();
        for (row, values) in a.iter_mut().enumerate() {
            if row != col {
                let factor = values[col] / pivot_row[col];
                for (v, p) in values.iter_mut().zip(&pivot_row).skip(col) {
                    *v -= factor * p;
                }
            }
        }
    }
    let mut x = [0.0; N];
    for (i, &fi) in free.iter().enumerate() {
        x[fi] = a[i][n] / a[i][i];
    }
    Some(x)
}

/// The one scale `s` that best maps predictions onto measurements in relative terms (least squares of
/// log(s·predicted / measured)): the geometric mean of measured / predicted.
pub fn fit_scale(pairs: &[(f64, f64)]) -> f64 {
    let logs: f64 = pairs.iter().map(|&(predicted, measured)| (measured / predicted).ln()).sum();
    (logs / pairs.len().max(1) as f64).exp()
}

/// For each pair, the relative error of its prediction when the scale is fitted to all the other pairs.
pub fn leave_one_out_errors(pairs: &[(f64, f64)]) -> Vec<f64> {
    (0..pairs.len())
        .map(|i| {
            let others: Vec<_> = pairs.iter().enumerate().filter(|&(j, _)| j != i).map(|(_, &p)| p).collect();
            let (predicted, measured) = pairs[i];
            fit_scale(&others) * predicted / measured - 1.0
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nnls_recovers_known_coefficients() {
        let truth = [0.25, 0.003, 4000.0];
        let rows: Vec<[f64; 3]> =
            (1..40).map(|i| [(i * i * 1000) as f64, ((i * 7919) % 5000 + 100) as f64 * 64.0, 1.0]).collect();
        let targets: Vec<f64> = rows.iter().map(|r| r[0] * truth[0] + r[1] * truth[1] + truth[2]).collect();
        let fit = nnls(&rows, &targets);
        for (got, want) in fit.iter().zip(truth) {
            assert!((got - want).abs() <= 1e-6 * want, "{fit:?} vs {truth:?}");
        }
    }

    #[test]
    fn nnls_keeps_coefficients_non_negative() {
        // Time falls with bytes in these samples; an unconstrained fit would give bytes a negative rate.
        let rows = [[100.0, 50.0, 1.0], [200.0, 40.0, 1.0], [300.0, 30.0, 1.0], [400.0, 5.0, 1.0]];
        let targets = [110.0, 205.0, 300.0, 420.0];
        let fit = nnls(&rows, &targets);
        assert!(fit.iter().all(|&v| v >= 0.0), "{fit:?}");
        assert!((fit[0] - 1.0).abs() < 0.1, "{fit:?}");
    }

    #[test]
    fn shares_follow_the_kernels_splits() {
        let graph = crate::spec::load_embedded("topformer-tiny").unwrap().compile(512, 512).unwrap();
        let plan = Plan::new(&graph);
        let shares: Vec<f64> = plan.steps.iter().map(|step| parallel_share(step, &graph, 2)).collect();
        assert!(plan.steps.iter().all(|step| parallel_share(step, &graph, 1) == 1.0));
        assert!(shares.iter().all(|&s| (0.5..=1.0).contains(&s)), "{shares:?}");
        // The stem's im2col tiles split all but evenly (the last tile is short); so do most steps of the
        // token pyramid; attention's reshapes do not split.
        assert!(shares[0] > 0.5 && shares[0] < 0.51, "{}", shares[0]);
        assert!(shares.iter().filter(|&&s| s < 0.51).count() > 20, "{shares:?}");
        assert!(shares.contains(&1.0));
    }

    #[test]
    fn features_split_work_by_threads_and_bytes_by_cache_level() {
        let graph = crate::spec::load_embedded("topformer-tiny").unwrap().compile(256, 256).unwrap();
        let plan = Plan::new(&graph);
        let caches = Caches { l2_bytes: 1 << 20, l3_bytes: 8 << 20, stream_min_bytes: None };
        let mut levels = [0usize; 3];
        let (mut forks, mut serial) = (0, 0);
        for step in &plan.steps {
            let one = features(step, &graph, 1, &caches);
            let two = features(step, &graph, 2, &caches);
            assert_eq!(parallel_share(step, &graph, 1), 1.0);
            assert_eq!(one[5], 0.0, "no fork/join on one thread");
            assert_eq!(one[4], 1.0);
            // The bytes sit at exactly one level.
            let at: Vec<usize> = (0..3).filter(|&l| one[1 + l] > 0.0).collect();
            assert_eq!(at.len(), 1, "{one:?}");
            levels[at[0]] += 1;
            let share = parallel_share(step, &graph, 2);
            assert!((0.5..=1.0).contains(&share), "{share}");
            assert!((two[0] - share * one[0]).abs() <= 1e-9 * one[0]);
            assert_eq!(two[5], if share < 1.0 { 1.0 } else { 0.0 });
            if share < 1.0 {
                forks += 1;
            } else {
                serial += 1;
                assert!(two[..4].iter().zip(&one[..4]).all(|(a, b)| a == b), "{two:?} vs {one:?}");
            }
        }
        // Tiny at 256² has steps in L2, in L3 and beyond it (the final resize), split and serial steps.
        assert!(levels.iter().all(|&n| n > 0), "{levels:?}");
        assert!(forks > 0 && serial > 0, "{forks} {serial}");
    }

    /// The final resize of a 150-class segmentor's logits writes 150×H×W values: streamed at 512² (157 MB)
    /// on a machine whose kernels stream from 64 MiB, with its output counted at half; not at 256² (39 MB),
    /// nor where they never stream.
    #[test]
    fn a_streamed_resize_counts_its_output_at_half() {
        let streaming = Caches { l2_bytes: 1 << 20, l3_bytes: 8 << 20, stream_min_bytes: Some(64 << 20) };
        let never = Caches { stream_min_bytes: None, ..streaming };
        for (res, caches, streamed) in [(512, streaming, true), (256, streaming, false), (512, never, false)] {
            let graph = crate::spec::load_embedded("topformer-tiny").unwrap().compile(res, res).unwrap();
            let plan = Plan::new(&graph);
            let last = plan.steps.last().expect("a plan has steps");
            assert!(matches!(graph.node(last.nodes[0]).op, Op::Resize(_)));
            let (read, written) = (numel(&graph.node(last.reads[0]).shape), numel(&graph.node(last.output()).shape));
            assert_eq!(written, 150 * res as u64 * res as u64);
            let written = if streamed { written / 2 } else { written };
            let bytes: f64 = features(last, &graph, 1, &caches)[1..4].iter().sum();
            assert_eq!(bytes, 4.0 * (read + written) as f64, "{res} {caches:?}");
        }
    }

    #[test]
    fn one_scale_and_leave_one_out() {
        let pairs = [(10.0, 20.0), (20.0, 40.0), (40.0, 80.0)];
        assert!((fit_scale(&pairs) - 2.0).abs() < 1e-12);
        assert!(leave_one_out_errors(&pairs).iter().all(|e| e.abs() < 1e-12));
        let skewed = [(10.0, 20.0), (10.0, 40.0)];
        let errors = leave_one_out_errors(&skewed);
        assert!((errors[0] - 1.0).abs() < 1e-12 && (errors[1] + 0.5).abs() < 1e-12, "{errors:?}");
    }

    #[test]
    fn embedded_devices_parse_and_bad_profiles_are_named() {
        for (name, _) in embedded_devices() {
            let device = Device::load(name).unwrap();
            assert_eq!(device.threads, 1);
        }
        let text = embedded_devices()[0].1;
        let other_version = text.replace(env!("CARGO_PKG_VERSION"), "0.0.1");
        let err = Device::parse(&other_version, "d.toml").unwrap_err().to_string();
        assert!(err.contains("d.toml") && err.contains("toparch_version"), "{err}");
        let missing = text.replace("[run]", "[runs]");
        let err = Device::parse(&missing, "d.toml").unwrap_err().to_string();
        assert!(err.contains("run"), "{err}");
        let missing = text.replace("[families.softmax]", "[families.softmaxx]");
        let err = Device::parse(&missing, "d.toml").unwrap_err().to_string();
        assert!(err.contains("families.softmax"), "{err}");
        let first_format = text.replace(&format!("format = {PROFILE_FORMAT}\n"), "");
        let err = Device::parse(&first_format, "d.toml").unwrap_err().to_string();
        assert!(err.starts_with("d.toml") && err.contains("format 1") && err.contains("calibrate again"), "{err}");
        let err = Device::parse("format = 2\nname = 1", "d.toml").unwrap_err().to_string();
        assert!(err.starts_with("d.toml") && err.contains("name"), "{err}");
        assert!(Device::parse("name = 1", "d.toml").unwrap_err().to_string().contains("format 1"));
        assert!(Device::load("no-such-device").unwrap_err().to_string().contains("snapdragon865"));
    }
}
