//! Binding a graph's parameters to tensors: from a checkpoint by official name, or seeded random values.

use super::weights::{TensorData, TensorMap};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::ops::{numel, Elementwise, Op, ParamKind};
use rayon::prelude::*;
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
    /// small biases and running means, BatchNorm variances around 1 and scales around 1, except where a
    /// BatchNorm ends a residual branch (its output is added to another tensor): there the scale is small, as
    /// the official code starts attention projections at zero, so that the stacked residual adds of the
    /// semantics extractor do not grow the activations by an order of magnitude.
    ///
    /// Every tensor has its own random stream, derived from the seed, the node index and the
    /// tensor's position, so tensors are drawn in parallel and the values do not depend on the
    /// thread count.
    pub fn random(graph: &Graph, seed: u64) -> Self {
        let nodes: Vec<_> = graph.nodes().map(|(_, node)| node).collect();
        let mut ends_residual_branch = vec![false; nodes.len()];
        for node in &nodes {
            if matches!(node.op, Op::Elementwise(Elementwise::Add)) {
                for &input in &node.inputs {
                    ends_residual_branch[input.index()] |= matches!(graph.node(input).op, Op::BatchNorm(_));
                }
            }
        }
        let bound = nodes
            .par_iter()
            .enumerate()
            .map(|(index, node)| {
                let fan_in = match &node.op {
                    Op::Conv2d(c) => c.macs_per_output() as f32,
                    Op::Linear(l) => l.in_features as f32,
                    _ => 1.0,
                };
                node.params
                    .iter()
                    .filter(|p| p.kind != ParamKind::Counter)
                    .enumerate()
                    .map(|(position, p)| {
                        let mut rng = SplitMix::stream(seed, index, position);
                        let n = numel(&p.shape) as usize;
                        let suffix = p.name.rsplit('.').next().unwrap_or_default();
                        match (&node.op, suffix) {
                            (Op::BatchNorm(_), "weight") if ends_residual_branch[index] => {
                                (0..n).map(|_| 0.05 + 0.2 * rng.uniform()).collect()
                            }
                            (Op::BatchNorm(_), "weight" | "running_var") => {
                                (0..n).map(|_| 0.5 + rng.uniform()).collect()
                            }
                            (_, "weight") => rng.normals(n, fan_in.recip().sqrt()),
                            _ => rng.normals(n, 0.1),
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

    /// The generator of one tensor: tensor `position` of node `node` under `seed`.
    fn stream(seed: u64, node: usize, position: usize) -> Self {
        let tensor = SplitMix(((node as u64) << 16) | position as u64).next();
        SplitMix(SplitMix(seed).next() ^ tensor)
    }

    /// Uniform in (-1, 1).
    fn signed_uniform(&mut self) -> f32 {
        (self.next() >> 40) as f32 / (1u64 << 23) as f32 - 1.0
    }

    /// `n` normal values of mean 0 and standard deviation `std`, two at a time by Marsaglia's polar
    /// method (no trigonometry, one logarithm per pair).
    fn normals(&mut self, n: usize, std: f32) -> Vec<f32> {
        let mut values = Vec::with_capacity(n + 1);
        while values.len() < n {
            let (u, v) = (self.signed_uniform(), self.signed_uniform());
            let s = u * u + v * v;
            if s == 0.0 || s >= 1.0 {
                continue;
            }
            let scale = std * (-2.0 * s.ln() / s).sqrt();
            values.extend([u * scale, v * scale]);
        }
        values.truncate(n);
        values
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normals_have_the_requested_moments() {
        let values = SplitMix::stream(3, 1, 0).normals(200_001, 0.5);
        assert_eq!(values.len(), 200_001);
        let n = values.len() as f64;
        let mean = values.iter().map(|&v| v as f64).sum::<f64>() / n;
        let var = values.iter().map(|&v| (v as f64 - mean).powi(2)).sum::<f64>() / n;
        // Standard errors at this size: 0.0011 for the mean, about 0.0008 for the variance.
        assert!(mean.abs() < 0.006, "mean {mean}");
        assert!((var - 0.25).abs() < 0.005, "variance {var}");
        let beyond_2_sigma = values.iter().filter(|v| v.abs() > 1.0).count() as f64 / n;
        assert!((beyond_2_sigma - 0.0455).abs() < 0.002, "tail fraction {beyond_2_sigma}");
    }

    #[test]
    fn streams_differ_by_tensor_and_seed_and_repeat() {
        let draw = |seed, node, position| SplitMix::stream(seed, node, position).normals(4, 1.0);
        assert_eq!(draw(1, 2, 3), draw(1, 2, 3));
        assert_ne!(draw(1, 2, 3), draw(1, 2, 4));
        assert_ne!(draw(1, 2, 3), draw(1, 3, 3));
        assert_ne!(draw(1, 2, 3), draw(2, 2, 3));
    }
}
