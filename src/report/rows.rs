//! The rows of a profile at a chosen depth, shared by the terminal table and markdown renderers.

use super::format::{bytes, percent, shape, si, thousands};
use crate::cost::{Convention, Profile};

/// How finely a profile is broken down.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Depth {
    /// token_pyramid, semantics_extractor, injection, head / classifier.
    Stage,
    /// Official module blocks (`backbone.tpm.layer3`, `backbone.SIM.1`, `decode_head`…).
    Block,
    /// Every primitive op.
    Layer,
    /// Totals per op kind (conv, batchnorm, matmul, resize…): where the conventions part ways.
    Op,
}

/// A header row and body rows, all text, plus a totals row.
pub struct Rows {
    /// Column titles.
    pub header: Vec<String>,
    /// One row per stage, block or layer.
    pub body: Vec<Vec<String>>,
    /// The totals row.
    pub total: Vec<String>,
}

/// The breakdown of `profile` at `depth`, FLOPs under `convention`.
pub fn breakdown(profile: &Profile, convention: Convention, depth: Depth) -> Rows {
    let total_flops = profile.flops(convention);
    let flops_title = format!("FLOPs ({}, MACs)", convention.name());
    let with_latency = profile.latency.is_some();
    let row =
        |name: &str, extra: Vec<String>, out: &[usize], params: u64, flops: u64, activations: u64, ms: Option<f64>| {
            let mut r = vec![name.to_string()];
            r.extend(extra);
            r.extend([
                shape(out),
                thousands(params),
                percent(params, profile.params),
                thousands(flops),
                si(flops),
                percent(flops, total_flops),
                bytes(activations),
            ]);
            if with_latency {
                r.push(ms.map_or_else(String::new, millis));
            }
            r
        };
    let (mut header, body, extra_columns): (Vec<&str>, Vec<Vec<String>>, usize) = match depth {
        Depth::Stage => (
            vec!["stage"],
            profile
                .stages
                .iter()
                .map(|g| {
                    row(
                        &g.name,
                        vec![],
                        &g.output_shape,
                        g.params,
                        g.cost.get(convention),
                        g.activation_bytes,
                        g.latency_ms,
                    )
                })
                .collect(),
            0,
        ),
        Depth::Block => (
            vec!["block", "stage"],
            profile
                .blocks
                .iter()
                .map(|g| {
                    let stage = vec![g.stage.name().into()];
                    row(
                        &g.name,
                        stage,
                        &g.output_shape,
                        g.params,
                        g.cost.get(convention),
                        g.activation_bytes,
                        g.latency_ms,
                    )
                })
                .collect(),
            1,
        ),
        Depth::Layer => (
            vec!["layer", "op"],
            profile
                .layers
                .iter()
                .map(|l| {
                    let op = vec![l.op.into()];
                    row(
                        &l.name,
                        op,
                        &l.output_shape,
                        l.params,
                        l.cost.get(convention),
                        l.activation_bytes,
                        l.latency_ms,
                    )
                })
                .collect(),
            1,
        ),
        Depth::Op => {
            let mut kinds: Vec<(&str, u64, u64, u64, Option<f64>)> = Vec::new();
            for l in &profile.layers {
                match kinds.iter_mut().find(|(k, ..)| *k == l.op) {
                    Some(entry) => {
                        entry.1 += l.params;
                        entry.2 += l.cost.get(convention);
                        entry.3 += l.activation_bytes;
                        entry.4 = entry.4.zip(l.latency_ms).map(|(a, b)| a + b);
                    }
                    None => kinds.push((l.op, l.params, l.cost.get(convention), l.activation_bytes, l.latency_ms)),
                }
            }
            (vec!["op"], kinds.iter().map(|&(k, p, f, a, ms)| row(k, vec![], &[], p, f, a, ms)).collect(), 0)
        }
    };
    header.extend(["output", "params", "share", &flops_title, "≈", "share", "activations (f32)"]);
    let latency_title = profile.latency.as_ref().map(|l| format!("predicted ms ({}, {} thr)", l.device, l.threads));
    header.extend(latency_title.as_deref());
    let mut total = vec!["total".to_string()];
    total.extend(std::iter::repeat_n(String::new(), extra_columns));
    total.extend([
        shape(&profile.stages.last().map(|g| g.output_shape.clone()).unwrap_or_default()),
        thousands(profile.params),
        String::new(),
        thousands(total_flops),
        si(total_flops),
        String::new(),
        bytes(profile.memory.activation_bytes),
    ]);
    total.extend(profile.latency.as_ref().map(|l| millis(l.prediction.total_ms)));
    Rows { header: header.into_iter().map(String::from).collect(), body, total }
}

/// Published figures beside the computed ones: metric, published, computed (rounded alike), exact, verdict, source.
pub fn published(profile: &Profile) -> Rows {
    let header = ["figure", "published", "computed, rounded alike", "computed, exact", "agrees", "source"];
    let body = profile
        .published
        .iter()
        .map(|c| {
            let metric = if c.metric == "flops" { "FLOPs (paper)" } else { "params" };
            vec![
                metric.to_string(),
                c.published.clone(),
                c.computed_rounded.clone(),
                thousands(c.computed),
                if c.agrees { "yes".into() } else { "NO: the publication differs from its own code".into() },
                c.source.clone(),
            ]
        })
        .collect();
    Rows { header: header.map(String::from).to_vec(), body, total: vec![] }
}

/// Memory in one line: parameters by precision, buffers, activations summed, the executor's live peak and
/// the greedy arena.
pub fn memory_line(profile: &Profile) -> String {
    let m = &profile.memory;
    format!(
        "Memory: params {} (f32) / {} (f16) / {} (int8), buffers {}; activations {} summed over all layers; \
         peak live {} ({}) at {} under the executor's schedule; greedy-by-size arena {}.",
        bytes(m.params_bytes.f32),
        bytes(m.params_bytes.f16),
        bytes(m.params_bytes.int8),
        bytes(m.buffers_bytes),
        bytes(m.activation_bytes),
        bytes(m.peak_activation_bytes),
        thousands(m.peak_activation_bytes),
        m.peak_at,
        bytes(m.arena_bytes),
    )
}

/// Milliseconds with three decimals.
pub fn millis(ms: f64) -> String {
    format!("{ms:.3}")
}

/// The predicted latency in one line, with the post-processing a deployment adds, when a device was given.
pub fn latency_line(profile: &Profile) -> Option<String> {
    let l = profile.latency.as_ref()?;
    let p = &l.prediction;
    let mut line = format!(
        "Predicted latency on {} ({} thread(s)): {:.2} ms for the graph as counted",
        l.device, l.threads, p.total_ms
    );
    if p.final_resize_ms > 0.0 {
        line.push_str(&format!(
            "; {:.2} ms without the final resize to the input (as the paper times it); post-processing a \
             deployment adds, final resize + argmax: {:.2} ms ({:.2} + {:.2})",
            p.network_ms(),
            p.postprocess_ms(),
            p.final_resize_ms,
            p.argmax_ms
        ));
    }
    line.push('.');
    Some(line)
}

/// One line per convention with the total, so that the reader sees why counters disagree.
pub fn conventions_line(profile: &Profile) -> String {
    let parts: Vec<String> = Convention::ALL
        .iter()
        .map(|&c| format!("{} {} ({})", c.name(), si(profile.flops(c)), thousands(profile.flops(c))))
        .collect();
    format!(
        "All conventions, MAC-style counts (1 multiply-add = 1 FLOP, as the paper, mmcv and fvcore count): {}. \
         Counting 2 per MAC, as DeepSpeed or torch.utils.flop_counter do, the plain MACs are {} FLOPs.",
        parts.join(", "),
        si(2 * profile.flops(Convention::Macs))
    )
}
