//! The stable JSON contract of `toparch profile --format json`.

use super::rows::Depth;
use crate::cost::{Comparison, Convention, Cost, Group, Layer, Memory, ParamBytes, Profile};
use crate::graph::Stage;
use serde::Serialize;

#[derive(Serialize)]
struct JsonProfile<'a> {
    spec: &'a str,
    input: &'a [usize],
    #[serde(skip_serializing_if = "is_one")]
    batch: usize,
    convention: &'static str,
    params: u64,
    buffers: u64,
    flops: u64,
    conventions: Cost,
    published: &'a [Comparison],
    memory: JsonMemory<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency: Option<JsonLatency<'a>>,
    stages: Vec<JsonGroup<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<Vec<JsonGroup<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<JsonGroup<'a>>>,
}

#[derive(Serialize)]
struct JsonLatency<'a> {
    device: &'a str,
    threads: usize,
    ms: f64,
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// The `memory` object of the profile JSON, shared by `sweep` and `diff`.
#[derive(Serialize)]
pub(crate) struct JsonMemory<'a> {
    params_bytes: ParamBytes,
    buffers_bytes: u64,
    activation_bytes: u64,
    peak_activation_bytes: u64,
    arena_bytes: u64,
    peak_at: &'a str,
}

impl<'a> JsonMemory<'a> {
    pub(crate) fn new(m: &'a Memory) -> Self {
        JsonMemory {
            params_bytes: m.params_bytes,
            buffers_bytes: m.buffers_bytes,
            activation_bytes: m.activation_bytes,
            peak_activation_bytes: m.peak_activation_bytes,
            arena_bytes: m.arena_bytes,
            peak_at: &m.peak_at,
        }
    }
}

#[derive(Serialize)]
struct JsonGroup<'a> {
    name: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    op: Option<&'static str>,
    stage: Stage,
    params: u64,
    flops: u64,
    conventions: Cost,
    activation_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    latency_ms: Option<f64>,
    output_shape: &'a [usize],
}

impl<'a> JsonGroup<'a> {
    fn group(g: &'a Group, convention: Convention) -> Self {
        let (params, cost) = (g.params, g.cost);
        JsonGroup {
            name: &g.name,
            op: None,
            stage: g.stage,
            params,
            flops: cost.get(convention),
            conventions: cost,
            activation_bytes: g.activation_bytes,
            latency_ms: g.latency_ms,
            output_shape: &g.output_shape,
        }
    }

    fn layer(l: &'a Layer, convention: Convention) -> Self {
        let (params, cost) = (l.params, l.cost);
        JsonGroup {
            name: &l.name,
            op: Some(l.op),
            stage: l.stage,
            params,
            flops: cost.get(convention),
            conventions: cost,
            activation_bytes: l.activation_bytes,
            latency_ms: l.latency_ms,
            output_shape: &l.output_shape,
        }
    }
}

/// The profile as pretty-printed JSON: integers only, keys in a fixed order. `blocks` appear at block and layer
/// depth, `layers` at layer depth.
pub fn profile_json(profile: &Profile, convention: Convention, depth: Depth) -> String {
    let json = JsonProfile {
        spec: &profile.spec,
        input: &profile.input,
        batch: profile.batch,
        convention: convention.name(),
        params: profile.params,
        buffers: profile.buffers,
        flops: profile.flops(convention),
        conventions: profile.cost,
        published: &profile.published,
        memory: JsonMemory::new(&profile.memory),
        latency: profile.latency.as_ref().map(|l| JsonLatency {
            device: &l.device,
            threads: l.threads,
            ms: l.prediction.total_ms,
        }),
        stages: profile.stages.iter().map(|g| JsonGroup::group(g, convention)).collect(),
        blocks: (depth != Depth::Stage)
            .then(|| profile.blocks.iter().map(|g| JsonGroup::group(g, convention)).collect()),
        layers: (depth == Depth::Layer)
            .then(|| profile.layers.iter().map(|l| JsonGroup::layer(l, convention)).collect()),
    };
    let mut text = serde_json::to_string_pretty(&json)
        .expect("a profile always serialises: it holds only strings, integers and finite floats");
    text.push('\n');
    text
}
