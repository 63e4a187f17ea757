//! Aggregating a graph's per-node costs into totals, stages, blocks and layers, and checking them
//! against published figures.

use super::latency::{Device, Prediction};
use super::memory::Memory;
use super::{Convention, Cost};
use crate::error::{Error, Result};
use crate::graph::{Graph, Stage};
use crate::ops::{numel, Op, ParamKind};
use crate::spec::{parse_resolution, PublishedFigure, PublishedValue, Rounding, Spec};
use serde::Serialize;

/// Params and cost of a group of nodes (a stage or a block).
#[derive(Clone, Debug, Serialize)]
pub struct Group {
    /// Stage name or official block path.
    pub name: String,
    /// The stage it belongs to.
    pub stage: Stage,
    /// Learnable parameters.
    pub params: u64,
    /// Cost under every convention.
    pub cost: Cost,
    /// f32 output bytes of its layers, summed.
    pub activation_bytes: u64,
    /// Predicted milliseconds on the profile's device, when one was given.
    pub latency_ms: Option<f64>,
    /// Output shape of the group's last node, batch dropped.
    pub output_shape: Vec<usize>,
}

/// One primitive op.
#[derive(Clone, Debug, Serialize)]
pub struct Layer {
    /// Module path.
    pub name: String,
    /// Op kind (`conv`, `batchnorm`…).
    pub op: &'static str,
    /// Block path.
    pub block: String,
    /// Stage.
    pub stage: Stage,
    /// Learnable parameters.
    pub params: u64,
    /// Cost under every convention.
    pub cost: Cost,
    /// f32 output bytes.
    pub activation_bytes: u64,
    /// Predicted milliseconds on the profile's device (0 for a layer fused into the one before it).
    pub latency_ms: Option<f64>,
    /// Output shape, batch dropped.
    pub output_shape: Vec<usize>,
}

/// A spec's published figure set beside the computed value.
#[derive(Clone, Debug, Serialize)]
pub struct Comparison {
    /// `params` or `flops`.
    pub metric: &'static str,
    /// As published, e.g. `1.2G`.
    pub published: String,
    /// The computed value, exact.
    pub computed: u64,
    /// The computed value rounded as the publication rounds, e.g. `1.2G`.
    pub computed_rounded: String,
    /// Whether the publication's rounding of the computed value gives the published figure.
    pub agrees: bool,
    /// Where it was published.
    pub source: String,
}

/// The full analysis of one compiled graph.
#[derive(Clone, Debug)]
pub struct Profile {
    /// Spec name.
    pub spec: String,
    /// Input [C, H, W].
    pub input: Vec<usize>,
    /// Images per batch: every count and byte figure is for the whole batch.
    pub batch: usize,
    /// Learnable parameters.
    pub params: u64,
    /// Float buffer elements (BatchNorm running statistics).
    pub buffers: u64,
    /// Total cost under every convention.
    pub cost: Cost,
    /// Per stage, in network order.
    pub stages: Vec<Group>,
    /// Per block, in network order.
    pub blocks: Vec<Group>,
    /// Per primitive op, in network order (the input excluded).
    pub layers: Vec<Layer>,
    /// Published figures for this spec at this resolution (`paper` convention for FLOPs).
    pub published: Vec<Comparison>,
    /// Parameter, buffer and activation memory.
    pub memory: Memory,
    /// Predicted latency, when a device was given.
    pub latency: Option<Latency>,
}

/// A profile's predicted latency on a device.
#[derive(Clone, Debug)]
pub struct Latency {
    /// The device profile's name.
    pub device: String,
    /// The threads it was calibrated for.
    pub threads: usize,
    /// The prediction.
    pub prediction: Prediction,
}

fn grouped(layers: &[Layer], key: impl Fn(&Layer) -> &str) -> Vec<Group> {
    let mut groups: Vec<Group> = Vec::new();
    for layer in layers {
        let name = key(layer);
        match groups.iter_mut().find(|g| g.name == name) {
            Some(g) => {
                g.params += layer.params;
                g.cost += layer.cost;
                g.activation_bytes += layer.activation_bytes;
                g.latency_ms = g.latency_ms.zip(layer.latency_ms).map(|(a, b)| a + b);
                g.output_shape = layer.output_shape.clone();
            }
            None => groups.push(Group {
                name: name.to_string(),
                stage: layer.stage,
                params: layer.params,
                cost: layer.cost,
                activation_bytes: layer.activation_bytes,
                latency_ms: layer.latency_ms,
                output_shape: layer.output_shape.clone(),
            }),
        }
    }
    groups
}

impl Profile {
    /// Profiles `graph` (for the batch its input shape carries), comparing with `spec`'s published figures at the graph's resolution.
    pub fn new(graph: &Graph, spec: &Spec) -> Result<Self> {
        let layers: Vec<Layer> = graph
            .nodes()
            .filter(|(_, n)| n.op != Op::Input)
            .map(|(_, n)| Layer {
                name: n.name.clone(),
                op: n.op.kind(),
                block: n.block.clone(),
                stage: n.stage,
                params: n.learnable_params(),
                cost: n.cost,
                activation_bytes: 4 * numel(&n.shape),
                latency_ms: None,
                output_shape: n.shape[1..].to_vec(),
            })
            .collect();
        let stages = grouped(&layers, |l| l.stage.name());
        let blocks = grouped(&layers, |l| &l.block);
        let params = graph.learnable_params();
        let cost = graph.total_cost();
        let input = graph.input_shape()[1..].to_vec();
        let batch = graph.input_shape()[0];
        let mut published = Vec::new();
        for figure in &spec.published {
            let (h, w) = parse_resolution(&figure.res)
                .map_err(|e| Error::input(format!("spec {}: published res: {e}", spec.name)))?;
            // Published figures are per image.
            if (h, w) == (input[1], input[2]) && batch == 1 {
                published.extend(compare_figure(figure, params, cost.paper)?);
            }
        }
        let buffers = graph.params().filter(|p| p.kind == ParamKind::Buffer).map(|p| numel(&p.shape)).sum::<u64>();
        let memory = Memory::new(graph);
        Ok(Profile {
            spec: graph.spec_name.clone(),
            input,
            batch,
            params,
            buffers,
            cost,
            stages,
            blocks,
            layers,
            published,
            memory,
            latency: None,
        })
    }

    /// Adds the latency `device` predicts for `graph` (the graph this profile was made from) to every layer,
    /// block, stage and the total.
    pub fn predict(&mut self, graph: &Graph, device: &Device) {
        let prediction = Prediction::new(graph, device);
        let node_ms = graph.nodes().filter(|(_, n)| n.op != Op::Input).map(|(i, _)| prediction.node_ms[i.index()]);
        for (layer, ms) in self.layers.iter_mut().zip(node_ms) {
            layer.latency_ms = Some(ms);
        }
        self.stages = grouped(&self.layers, |l| l.stage.name());
        self.blocks = grouped(&self.layers, |l| &l.block);
        self.latency = Some(Latency { device: device.name.clone(), threads: device.threads, prediction });
    }

    /// Total count under `convention`.
    pub fn flops(&self, convention: Convention) -> u64 {
        self.cost.get(convention)
    }
}

fn compare_figure(figure: &PublishedFigure, params: u64, flops: u64) -> Result<Vec<Comparison>> {
    let mut out = Vec::new();
    for (metric, published, computed) in [("params", &figure.params, params), ("flops", &figure.flops, flops)] {
        if let Some(text) = published {
            let (rounded, agrees) = round_like(text, computed, figure.rounding)?;
            out.push(Comparison {
                metric,
                published: text.clone(),
                computed,
                computed_rounded: rounded,
                agrees,
                source: figure.source.clone(),
            });
        }
    }
    Ok(out)
}

/// Rounds `value` to the unit and decimals of a published figure such as `1.2G` or `126M`, and says whether
/// that gives the published number.
pub fn round_like(published: &str, value: u64, rounding: Rounding) -> Result<(String, bool)> {
    let figure = PublishedValue::parse(published).map_err(Error::input)?;
    let factor = 10f64.powi(figure.decimals as i32);
    let scaled = value as f64 / figure.scale * factor;
    let rounded = match rounding {
        Rounding::Nearest => scaled.round(),
        Rounding::Truncate => scaled.trunc(),
    } / factor;
    let text = format!("{rounded:.decimals$}{}", figure.unit, decimals = figure.decimals);
    Ok((text, (rounded - figure.value).abs() < 0.5 / factor))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounding_like_the_paper() {
        assert_eq!(round_like("1.2G", 1_164_615_680, Rounding::Nearest).unwrap(), ("1.2G".into(), true));
        assert_eq!(round_like("3.1M", 3_034_662, Rounding::Nearest).unwrap(), ("3.0M".into(), false));
        assert_eq!(round_like("126M", 126_884_784, Rounding::Truncate).unwrap(), ("126M".into(), true));
        assert_eq!(round_like("126M", 126_884_784, Rounding::Nearest).unwrap(), ("127M".into(), false));
        assert_eq!(round_like("1.50M", 1_503_304, Rounding::Nearest).unwrap(), ("1.50M".into(), true));
        assert!(round_like("1.2X", 1, Rounding::Nearest).is_err());
    }
}
