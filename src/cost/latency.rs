//! Latency predicted from a device profile: every step of the executor's plan belongs to a kernel family,
//! and each family's time is `ns_per_work · work + ns_per_byte · bytes + ns_per_call`, with the three
//! coefficients fitted by non-negative least squares to timed steps (`toparch calibrate`). The prediction
//! follows the executor's own plan (its fusions included) and never runs the network.

use crate::error::{Error, Result};
use crate::exec::{Plan, PlanStep, StepKind};
use crate::graph::Graph;
use crate::ops::{numel, Op};
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
    /// A 1×1 expand fused with the depthwise convolution that reads it.
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
            (StepKind::ExpandDepthwise { .. }, _) => Family::ExpandDepthwise,
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

/// What a step costs in the model's terms: `[work, bytes, 1]`, where work is the multiply-accumulates of its
/// nodes plus the elements they write, and bytes the f32 data it reads and writes (weights included).
pub fn features(step: &PlanStep, graph: &Graph) -> [f64; 3] {
    let work: u64 = step.nodes.iter().map(|&n| graph.node(n).cost.macs + numel(&graph.node(n).shape)).sum();
    let read: u64 = step.reads.iter().map(|&r| numel(&graph.node(r).shape)).sum();
    let written = numel(&graph.node(step.output()).shape);
    let weights: u64 = step.nodes.iter().flat_map(|&n| &graph.node(n).params).map(|p| numel(&p.shape)).sum();
    [work as f64, 4.0 * (read + written + weights) as f64, 1.0]
}

/// One family's fitted cost law.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FamilyFit {
    /// Nanoseconds per unit of work (multiply-accumulate or element written).
    pub ns_per_work: f64,
    /// Nanoseconds per byte read or written.
    pub ns_per_byte: f64,
    /// Nanoseconds per call.
    pub ns_per_call: f64,
    /// Timed steps the fit used.
    pub samples: usize,
}

impl FamilyFit {
    /// Predicted nanoseconds of a step with `features`.
    pub fn nanos(&self, [work, bytes, calls]: [f64; 3]) -> f64 {
        self.ns_per_work * work + self.ns_per_byte * bytes + self.ns_per_call * calls
    }
}

/// A device profile: where it was calibrated and the cost law of every kernel family.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Device {
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
    /// Cost law per family, by [`Family::name`].
    pub families: BTreeMap<String, FamilyFit>,
    /// What a run costs outside its steps (the input's copy, the schedule): `ns_per_byte` of input and
    /// `ns_per_call` per run; `ns_per_work` is unused.
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
            let values = [fit.ns_per_work, fit.ns_per_byte, fit.ns_per_call];
            if values.iter().any(|v| !v.is_finite() || *v < 0.0) {
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
            fit.ns_per_work *= scale;
            fit.ns_per_byte *= scale;
            fit.ns_per_call *= scale;
        }
        device
    }
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
            let ms = device.fit(Family::of(step, graph)).nanos(features(step, graph)) / 1e6;
            node_ms[step.nodes[0].index()] += ms;
        }
        let run_ms = device.run.nanos([0.0, 4.0 * numel(graph.input_shape()) as f64, 1.0]) / 1e6;
        let total_ms = node_ms.iter().sum::<f64>() + run_ms;
        let output = graph.node(graph.output());
        let (final_resize_ms, argmax_ms) = match output.op {
            Op::Resize(_) => {
                // Argmax reads every score once and writes one class per pixel.
                let scores = numel(&output.shape) as f64;
                let argmax = device.fit(Family::Elementwise).nanos([scores, 4.0 * scores, 1.0]) / 1e6;
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

/// Non-negative least squares for three unknowns: the best of the unconstrained solutions over every subset
/// of free unknowns (the others held at 0) that stays non-negative. Columns are scaled to unit norm first.
pub fn nnls3(rows: &[[f64; 3]], targets: &[f64]) -> [f64; 3] {
    let norms: Vec<f64> = (0..3)
        .map(|j| rows.iter().map(|r| r[j] * r[j]).sum::<f64>().sqrt())
        .map(|n| if n > 0.0 { n } else { 1.0 })
        .collect();
    let scaled: Vec<[f64; 3]> = rows.iter().map(|r| [r[0] / norms[0], r[1] / norms[1], r[2] / norms[2]]).collect();
    let residual = |x: &[f64; 3]| -> f64 {
        scaled.iter().zip(targets).map(|(r, t)| (r[0] * x[0] + r[1] * x[1] + r[2] * x[2] - t).powi(2)).sum()
    };
    let mut best = ([0.0; 3], residual(&[0.0; 3]));
    for mask in 1u8..8 {
        let free: Vec<usize> = (0..3).filter(|j| mask & (1 << j) != 0).collect();
        let Some(solution) = least_squares(&scaled, targets, &free) else { continue };
        if solution.iter().all(|&v| v >= 0.0) {
            let r = residual(&solution);
            if r < best.1 {
                best = (solution, r);
            }
        }
    }
    [best.0[0] / norms[0], best.0[1] / norms[1], best.0[2] / norms[2]]
}

/// The least-squares solution over the `free` unknowns (others 0), by the normal equations and Gaussian
/// elimination with partial pivoting; `None` when they are singular.
fn least_squares(rows: &[[f64; 3]], targets: &[f64], free: &[usize]) -> Option<[f64; 3]> {
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
    let mut x = [0.0; 3];
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
        let fit = nnls3(&rows, &targets);
        for (got, want) in fit.iter().zip(truth) {
            assert!((got - want).abs() <= 1e-6 * want, "{fit:?} vs {truth:?}");
        }
    }

    #[test]
    fn nnls_keeps_coefficients_non_negative() {
        // Time falls with bytes in these samples; an unconstrained fit would give bytes a negative rate.
        let rows = [[100.0, 50.0, 1.0], [200.0, 40.0, 1.0], [300.0, 30.0, 1.0], [400.0, 5.0, 1.0]];
        let targets = [110.0, 205.0, 300.0, 420.0];
        let fit = nnls3(&rows, &targets);
        assert!(fit.iter().all(|&v| v >= 0.0), "{fit:?}");
        assert!((fit[0] - 1.0).abs() < 0.1, "{fit:?}");
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
        let err = Device::parse("name = 1", "d.toml").unwrap_err().to_string();
        assert!(err.starts_with("d.toml") && err.contains("name"), "{err}");
        assert!(Device::load("no-such-device").unwrap_err().to_string().contains("snapdragon865"));
    }
}
