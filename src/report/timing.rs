//! The `forward --profile` table: measured time per step and per stage beside the analytic MACs.

use super::format::{percent, thousands};
use super::rows::Rows;
use super::table::terminal_table;
use crate::exec::StepStat;
use crate::graph::Graph;
use std::time::Duration;

fn millis(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}

fn gmacs_per_s(macs: u64, d: Duration) -> String {
    if macs == 0 || d.is_zero() {
        return "-".into();
    }
    format!("{:.1}", macs as f64 / d.as_secs_f64() / 1e9)
}

/// Per-step and per-stage timing tables of one run.
pub fn render_timing(graph: &Graph, steps: &[StepStat]) -> String {
    let total: Duration = steps.iter().map(|s| s.time).sum();
    let nanos = |d: Duration| d.as_nanos() as u64;
    let header = ["layer", "ops", "time ms", "MACs", "GMAC/s", "share of time"].map(String::from).to_vec();
    let body = steps
        .iter()
        .map(|s| {
            let first = graph.node(s.nodes[0]);
            let ops: Vec<&str> = s.nodes.iter().map(|&i| graph.node(i).op.kind()).collect();
            vec![
                first.name.clone(),
                ops.join("+"),
                millis(s.time),
                thousands(s.macs),
                gmacs_per_s(s.macs, s.time),
                percent(nanos(s.time), nanos(total)),
            ]
        })
        .collect();
    let all_macs = steps.iter().map(|s| s.macs).sum();
    let totals = vec![
        "total".into(),
        String::new(),
        millis(total),
        thousands(all_macs),
        gmacs_per_s(all_macs, total),
        String::new(),
    ];
    let mut stages: Vec<(&'static str, Duration, u64)> = Vec::new();
    for s in steps {
        let stage = graph.node(s.nodes[0]).stage.name();
        match stages.iter_mut().find(|(name, _, _)| *name == stage) {
            Some(entry) => {
                entry.1 += s.time;
                entry.2 += s.macs;
            }
            None => stages.push((stage, s.time, s.macs)),
        }
    }
    let stage_rows = Rows {
        header: ["stage", "time ms", "MACs", "GMAC/s", "share of time"].map(String::from).to_vec(),
        body: stages
            .iter()
            .map(|&(name, time, macs)| {
                vec![
                    name.into(),
                    millis(time),
                    thousands(macs),
                    gmacs_per_s(macs, time),
                    percent(nanos(time), nanos(total)),
                ]
            })
            .collect(),
        total: vec!["total".into(), millis(total), thousands(all_macs), gmacs_per_s(all_macs, total), String::new()],
    };
    let mut out = terminal_table(&Rows { header, body, total: totals });
    out.push_str(&terminal_table(&stage_rows));
    out
}
