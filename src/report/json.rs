//! The stable JSON contract of `toparch profile --format json`.

use super::rows::Depth;
use crate::cost::{Comparison, Convention, Cost, Group, Layer, Profile};
use crate::graph::Stage;
use serde::Serialize;

#[derive(Serialize)]
struct JsonProfile<'a> {
    spec: &'a str,
    input: &'a [usize],
    convention: &'static str,
    params: u64,
    buffers: u64,
    flops: u64,
    conventions: Cost,
    published: &'a [Comparison],
    stages: Vec<JsonGroup<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    blocks: Option<Vec<JsonGroup<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    layers: Option<Vec<JsonGroup<'a>>>,
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
        convention: convention.name(),
        params: profile.params,
        buffers: profile.buffers,
        flops: profile.flops(convention),
        conventions: profile.cost,
        published: &profile.published,
        stages: profile.stages.iter().map(|g| JsonGroup::group(g, convention)).collect(),
        blocks: (depth != Depth::Stage)
            .then(|| profile.blocks.iter().map(|g| JsonGroup::group(g, convention)).collect()),
        layers: (depth == Depth::Layer)
            .then(|| profile.layers.iter().map(|l| JsonGroup::layer(l, convention)).collect()),
    };
    let mut text =
        serde_json::to_string_pretty(&json).expect("a profile always serialises: it holds only strings and integers");
    text.push('\n');
    text
}
