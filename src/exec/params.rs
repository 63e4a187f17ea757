//! Binding a graph's parameters to tensors: from a checkpoint by official name, or seeded random values.

use super::weights::{TensorData, TensorMap};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::{numel, Op, ParamKind};
use std::collections::BTreeSet;

/// Float parameters and buffers of every node, in `Op::params` order (integer counters left out),
/// indexed by node index.
pub struct NodeParams(pub(crate) Vec<Vec<Vec<f32>>>);

impl NodeParams {
    /// The float tensors of node `index`.
    pub fn of(&self, index: usize) -> Vec<&[f32]> {
        self.0[index].iter().map(Vec::as_slice).collect()
    }

    /// Binds checkpoint tensors to the graph by official state_dict name. Every missing, unexpected,
    /// wrongly shaped or wrongly typed tensor is reported at once, by name and shape.
    pub fn from_tensors(graph: &Graph, mut tensors: TensorMap, origin: &str) -> Result<Self> {
        let mut problems = Vec::new();
        let mut bound = Vec::with_capacity(graph.len());
        let mut known = BTreeSet::new();
        for (_, node) in graph.nodes() {
            let mut params = Vec::new();
            for p in &node.params {
                known.insert(p.name.clone());
                let Some(t) = tensors.remove(&p.name) else {
                    // num_batches_tracked is a training counter; a checkpoint without it still runs.
                    if p.kind != ParamKind::Counter {
                        problems.push(format!("missing {} {:?}", p.name, p.shape));
                    }
                    continue;
                };
                if t.shape != p.shape && !(p.shape.is_empty() && t.numel() == 1) {
                    problems.push(format!("{} has shape {:?}, expected {:?}", p.name, t.shape, p.shape));
                    continue;
                }
                match (p.kind, t.data) {
                    (ParamKind::Counter, _) => {}
                    (_, TensorData::F32(data)) => params.push(data),
                    (_, TensorData::I64(_)) => {
                        problems.push(format!("{} is an integer tensor, expected float", p.name))
                    }
                }
            }
            bound.push(params);
        }
        problems.extend(tensors.iter().map(|(name, t)| format!("unexpected {name} {:?}", t.shape)));
        if problems.is_empty() {
            return Ok(NodeParams(bound));
        }
        let shown = 12;
        let more = problems.len().saturating_sub(shown);
        let mut listed = problems[..problems.len().min(shown)].join("; ");
        if more > 0 {
            listed.push_str(&format!("; and {more} more"));
        }
        Err(Error::input(format!(
            "{origin}: weights do not fit {} ({} problems): {listed}",
            graph.spec_name,
            problems.len()
        )))
    }

    /// Seeded random weights that keep activations O(1): conv and linear weights ~ N(0, 1/fan_in),
    /// small biases and running means, BatchNorm scales and variances around 1.
    pub fn random(graph: &Graph, seed: u64) -> Self {
        let mut rng = SplitMix(seed);
        let bound = graph
            .nodes()
            .map(|(_, node)| {
                let fan_in = match &node.op {
                    Op::Conv2d(c) => c.macs_per_output() as f64,
                    Op::Linear(l) => l.in_features as f64,
                    _ => 1.0,
                };
                node.params
                    .iter()
                    .filter(|p| p.kind != ParamKind::Counter)
                    .map(|p| {
                        let n = numel(&p.shape) as usize;
                        let suffix = p.name.rsplit('.').next().unwrap_or_default();
                        match (&node.op, suffix) {
                            (Op::BatchNorm(_), "weight" | "running_var") => {
                                (0..n).map(|_| 0.5 + rng.uniform()).collect()
                            }
                            (_, "weight") => (0..n).map(|_| rng.normal() * (1.0 / fan_in).sqrt() as f32).collect(),
                            _ => (0..n).map(|_| 0.1 * rng.normal()).collect(),
                        }
                    })
                    .collect()
            })
            .collect();
        NodeParams(bound)
    }
}

/// SplitMix64: a small, well-known, seedable generator — enough for reproducible random weights.
struct SplitMix(u64);

impl SplitMix {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 24) as f32
    }

    /// Standard normal (Box–Muller).
    fn normal(&mut self) -> f32 {
        let u1 = (self.uniform() as f64).max(1e-12);
        let u2 = self.uniform() as f64;
        ((-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()) as f32
    }
}
