//! `toparch diff` and `toparch sweep` output: tables, markdown, JSON, CSV and the Pareto-front figure.

use super::baselines::Family;
use super::document::VARIANTS;
use super::format::{shape, si, thousands};
use super::json::JsonMemory;
use super::plot::{family_style, pareto_svg, ScatterPoint};
use super::rows::Rows;
use super::table::{markdown_table, terminal_table, Style};
use crate::cost::{Convention, Cost, Memory, Profile};
use crate::error::{write_atomic, Error, Result};
use crate::explore::{Delta, Diff, DiffEntry, Metric, Side, Sweep, SweepRow};
use crate::graph::compile;
use crate::spec::load_embedded;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One side of a diff as the user named it: its profile and the overrides applied to it.
pub struct DiffSide<'a> {
    /// The profile.
    pub profile: &'a Profile,
    /// Its `--set` overrides as `KEY=VALUE`.
    pub set: Vec<String>,
}

impl DiffSide<'_> {
    fn title(&self) -> String {
        match self.set.as_slice() {
            [] => self.profile.spec.clone(),
            set => format!("{} --set {}", self.profile.spec, set.join(" --set ")),
        }
    }
}

fn memory_json(memory: &Memory) -> Value {
    serde_json::to_value(JsonMemory::new(memory)).expect("memory figures serialise")
}

fn cost_json(cost: Cost) -> Value {
    json!({"paper": cost.paper, "fvcore": cost.fvcore, "macs": cost.macs})
}

fn side_json(side: Option<Side>) -> Value {
    side.map_or(Value::Null, |s| {
        let json =
            json!({"params": s.params, "conventions": cost_json(s.cost), "activation_bytes": s.activation_bytes});
        with_peak_and_latency(json, s.peak_activation_bytes, s.latency_ms)
    })
}

/// `json` with `peak_activation_bytes` and `latency_ms` added where they are known.
fn with_peak_and_latency(mut json: Value, peak: Option<impl serde::Serialize>, ms: Option<f64>) -> Value {
    if let Some(peak) = peak {
        json["peak_activation_bytes"] = json!(peak);
    }
    if let Some(ms) = ms {
        json["latency_ms"] = json!(ms);
    }
    json
}

fn delta_json(delta: &Delta) -> Value {
    let by_convention = |f: &dyn Fn(Convention) -> Value| -> Value {
        Convention::ALL.iter().map(|&c| (c.name().to_string(), f(c))).collect::<serde_json::Map<_, _>>().into()
    };
    let json = json!({
        "params": delta.params,
        "conventions": by_convention(&|c| json!(delta.flops(c))),
        "activation_bytes": delta.activation_bytes,
        "relative": {
            "params": delta.params_relative(),
            "conventions": by_convention(&|c| json!(delta.flops_relative(c))),
        },
    });
    with_peak_and_latency(json, delta.peak_activation_bytes, delta.latency_ms)
}

fn entry_json(entry: &DiffEntry) -> Value {
    json!({
        "name": entry.name,
        "presence": entry.presence(),
        "a": side_json(entry.a),
        "b": side_json(entry.b),
        "delta": delta_json(&entry.delta),
    })
}

/// The diff as pretty-printed JSON: `a`, `b` (spec, input, overrides, params, conventions), `delta` (absolute,
/// and relative to A), then `stages` and `blocks`, each with `a`, `b` (null on the side that lacks it) and
/// `delta`.
pub fn diff_json(diff: &Diff, a: &DiffSide<'_>, b: &DiffSide<'_>) -> String {
    let header = |side: &DiffSide<'_>| {
        json!({
            "spec": side.profile.spec,
            "input": side.profile.input,
            "set": side.set,
            "params": side.profile.params,
            "conventions": cost_json(side.profile.cost),
            "memory": memory_json(&side.profile.memory),
            "latency_ms": side.profile.latency.as_ref().map(|l| l.prediction.total_ms),
        })
    };
    let json = json!({
        "a": header(a),
        "b": header(b),
        "delta": delta_json(&diff.total.delta),
        "stages": diff.stages.iter().map(entry_json).collect::<Vec<_>>(),
        "blocks": diff.blocks.iter().map(entry_json).collect::<Vec<_>>(),
    });
    let mut text = serde_json::to_string_pretty(&json).expect("a diff holds only strings and numbers");
    text.push('\n');
    text
}

/// A signed integer with thousands separators: `+1,024`, `-96`, `0`.
fn signed(value: i128) -> String {
    let sign = match value.signum() {
        1 => "+",
        -1 => "-",
        _ => "",
    };
    format!("{sign}{}", thousands(value.unsigned_abs() as u64))
}

/// A relative change in percent: `+12.5 %`, or `-` without a base.
fn relative(value: Option<f64>) -> String {
    value.map_or("-".into(), |v| format!("{:+.1} %", 100.0 * v))
}

fn side_cells(side: Option<Side>, value: impl Fn(Side) -> u64) -> String {
    side.map_or("—".into(), |s| thousands(value(s)))
}

/// Rows of entries: name, params A/B/Δ/Δ%, FLOPs under `convention` A/B/Δ/Δ%, activation bytes A/B/Δ and,
/// with a device, predicted milliseconds A/B/Δ.
fn entry_rows(first: &str, entries: &[DiffEntry], convention: Convention) -> Rows {
    let flops = format!("FLOPs ({})", convention.name());
    let mut header: Vec<String> =
        [first, "params A", "params B", "Δ", "Δ %", &format!("{flops} A"), &format!("{flops} B"), "Δ", "Δ %"]
            .into_iter()
            .chain(["activations A", "activations B", "Δ"])
            .map(String::from)
            .collect();
    let latency = entries.iter().any(|e| e.delta.latency_ms.is_some());
    if latency {
        header.extend(["ms A", "ms B", "Δ"].map(String::from));
    }
    let ms = |side: Option<Side>| side.and_then(|s| s.latency_ms).map_or("—".into(), |v| format!("{v:.3}"));
    let body = entries
        .iter()
        .map(|e| {
            let name = match e.presence() {
                "both" => e.name.clone(),
                only => format!("{} ({only})", e.name),
            };
            let mut row = vec![
                name,
                side_cells(e.a, |s| s.params),
                side_cells(e.b, |s| s.params),
                signed(e.delta.params),
                relative(e.delta.params_relative()),
                side_cells(e.a, |s| s.cost.get(convention)),
                side_cells(e.b, |s| s.cost.get(convention)),
                signed(e.delta.flops(convention)),
                relative(e.delta.flops_relative(convention)),
                side_cells(e.a, |s| s.activation_bytes),
                side_cells(e.b, |s| s.activation_bytes),
                signed(e.delta.activation_bytes),
            ];
            if latency {
                row.extend([ms(e.a), ms(e.b), e.delta.latency_ms.map_or("—".into(), |d| format!("{d:+.3}"))]);
            }
            row
        })
        .collect();
    Rows { header, body, total: vec![] }
}

fn ratio(delta: i128, base: u64) -> Option<f64> {
    (base != 0).then(|| delta as f64 / base as f64)
}

/// Totals under every metric: params and each convention, A, B, Δ, Δ %.
fn total_rows(total: &DiffEntry) -> Rows {
    let (a, b) = (total.a.unwrap_or_default(), total.b.unwrap_or_default());
    let mut body = vec![vec![
        "params".to_string(),
        thousands(a.params),
        thousands(b.params),
        signed(total.delta.params),
        relative(total.delta.params_relative()),
    ]];
    for c in Convention::ALL {
        body.push(vec![
            format!("FLOPs ({})", c.name()),
            thousands(a.cost.get(c)),
            thousands(b.cost.get(c)),
            signed(total.delta.flops(c)),
            relative(total.delta.flops_relative(c)),
        ]);
    }
    if let (Some(pa), Some(pb), Some(d)) =
        (a.peak_activation_bytes, b.peak_activation_bytes, total.delta.peak_activation_bytes)
    {
        body.push(vec![
            "peak activation bytes".into(),
            thousands(pa),
            thousands(pb),
            signed(d),
            relative(ratio(d, pa)),
        ]);
    }
    if let (Some(la), Some(lb), Some(d)) = (a.latency_ms, b.latency_ms, total.delta.latency_ms) {
        let ms = |v: f64| format!("{v:.2}");
        let rel = (la > 0.0).then(|| d / la);
        body.push(vec!["latency (ms)".into(), ms(la), ms(lb), format!("{d:+.2}"), relative(rel)]);
    }
    Rows { header: ["total", "A", "B", "Δ", "Δ %"].map(String::from).to_vec(), body, total: vec![] }
}

/// The diff as text: totals under every convention, then stages and blocks side by side (FLOPs under
/// `convention`); in markdown, ready for a pull-request comment.
pub fn render_diff(diff: &Diff, a: &DiffSide<'_>, b: &DiffSide<'_>, convention: Convention, style: Style) -> String {
    let (heading, table): (&str, fn(&Rows) -> String) = match style {
        Style::Terminal => ("", terminal_table),
        Style::Markdown => ("### ", markdown_table),
    };
    let summary = format!(
        "B − A: {} params ({}), {} FLOPs ({}, {})",
        signed(diff.total.delta.params),
        relative(diff.total.delta.params_relative()),
        signed(diff.total.delta.flops(convention)),
        convention.name(),
        relative(diff.total.delta.flops_relative(convention)),
    );
    let (a_at, b_at) = (shape(&a.profile.input), shape(&b.profile.input));
    let (mut out, gap) = match style {
        Style::Terminal => (format!("A: {} at {a_at}\nB: {} at {b_at}\n{summary}\n\n", a.title(), b.title()), ""),
        Style::Markdown => {
            (format!("{heading}{summary}\n\n- A: `{}` at {a_at}\n- B: `{}` at {b_at}\n\n", a.title(), b.title()), "\n")
        }
    };
    out.push_str(&table(&total_rows(&diff.total)));
    out.push_str(&format!("\nPer stage\n{gap}"));
    out.push_str(&table(&entry_rows("stage", &diff.stages, convention)));
    out.push_str(&format!("\nPer block\n{gap}"));
    out.push_str(&table(&entry_rows("block", &diff.blocks, convention)));
    out
}

/// Short names for a sweep's grids: each grid's last key (`depth`), or its whole label where two would clash.
fn grid_names(sweep: &Sweep) -> Vec<String> {
    let leaves: Vec<&str> = sweep.grids.iter().map(|g| g.keys[0].leaf()).collect();
    sweep
        .grids
        .iter()
        .zip(&leaves)
        .map(
            |(g, leaf)| {
                if leaves.iter().filter(|l| *l == leaf).count() > 1 {
                    g.label.clone()
                } else {
                    leaf.to_string()
                }
            },
        )
        .collect()
}

/// A setting's value as written in TOML, strings without their quotes.
fn value_text(value: &toml::Value) -> String {
    match value {
        toml::Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn set_json(set: &[(String, toml::Value)]) -> Value {
    let map: serde_json::Map<String, Value> =
        set.iter().map(|(key, value)| (key.clone(), serde_json::to_value(value).unwrap_or(Value::Null))).collect();
    map.into()
}

/// The sweep as pretty-printed JSON: `base`, `res` [H, W], the Pareto axes, `rows` (the values set, params,
/// conventions, whether on the Pareto front) and `skipped` (the values set and the validator's message).
pub fn sweep_json(sweep: &Sweep) -> String {
    let rows: Vec<Value> = sweep
        .rows
        .iter()
        .map(|r| {
            let mut row = json!({
                "set": set_json(&r.set),
                "params": r.params,
                "conventions": cost_json(r.cost),
                "memory": memory_json(&r.memory),
            });
            if let Some(ms) = r.latency_ms {
                row["latency_ms"] = json!(ms);
            }
            row["pareto"] = json!(r.pareto);
            row
        })
        .collect();
    let skipped: Vec<Value> =
        sweep.skipped.iter().map(|s| json!({"set": set_json(&s.set), "error": s.error})).collect();
    let json = json!({
        "base": sweep.base,
        "res": [sweep.res.0, sweep.res.1],
        "pareto": {
            "x": sweep.axes.0.metric.name(),
            "x_goal": format!("{:?}", sweep.axes.0.goal).to_lowercase(),
            "y": sweep.axes.1.metric.name(),
            "y_goal": format!("{:?}", sweep.axes.1.goal).to_lowercase(),
        },
        "device": sweep.device.as_ref().map(|d| d.name.as_str()),
        "rows": rows,
        "skipped": skipped,
    });
    let mut text = serde_json::to_string_pretty(&json).expect("a sweep holds only strings and numbers");
    text.push('\n');
    text
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(text: &str) -> String {
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text.to_string()
    }
}

/// The rows as CSV: one column per grid (its label), params, FLOPs per convention, peak activation bytes,
/// predicted milliseconds (with a device), pareto (true/false).
pub fn sweep_csv(sweep: &Sweep) -> String {
    let mut header: Vec<String> = sweep.grids.iter().map(|g| csv_field(&g.label)).collect();
    header.extend(["params", "paper", "fvcore", "macs", "peak_activation_bytes"].map(String::from));
    if sweep.device.is_some() {
        header.push("latency_ms".into());
    }
    header.push("pareto".into());
    let mut out = header.join(",") + "\n";
    for row in &sweep.rows {
        let mut cells: Vec<String> = row.set.iter().map(|(_, v)| csv_field(&value_text(v))).collect();
        let counts = [row.params, row.cost.paper, row.cost.fvcore, row.cost.macs, row.memory.peak_activation_bytes];
        cells.extend(counts.map(|v| v.to_string()));
        cells.extend(row.latency_ms.map(|ms| format!("{ms:.3}")));
        cells.push(row.pareto.to_string());
        out.push_str(&(cells.join(",") + "\n"));
    }
    out
}

/// The rows as a markdown table (front rows marked), then the skipped combinations with their reasons.
pub fn sweep_markdown(sweep: &Sweep) -> String {
    let mut out = format!(
        "### Sweep of {} at {}×{}: {} variants, {} on the Pareto front ({} vs {}), {} skipped\n\n",
        sweep.base,
        sweep.res.0,
        sweep.res.1,
        sweep.rows.len(),
        sweep.rows.iter().filter(|r| r.pareto).count(),
        sweep.axes.1.describe(),
        sweep.axes.0.describe(),
        sweep.skipped.len()
    );
    let mut header: Vec<String> = sweep.grids.iter().map(|g| format!("`{}`", g.label)).collect();
    header.extend(["params", "FLOPs (paper)", "FLOPs (fvcore)", "MACs", "peak activations"].map(String::from));
    if let Some(device) = &sweep.device {
        header.push(format!("latency ({})", device.name));
    }
    header.push("Pareto".into());
    let body = sweep
        .rows
        .iter()
        .map(|r| {
            let mut cells: Vec<String> = r.set.iter().map(|(_, v)| format!("`{}`", value_text(v))).collect();
            cells.extend([r.params, r.cost.paper, r.cost.fvcore, r.cost.macs].map(thousands));
            cells.push(metric_text(Metric::Memory, r.metric(Metric::Memory)));
            cells.extend(r.latency_ms.map(|ms| metric_text(Metric::Latency, ms)));
            cells.push(if r.pareto { "yes".into() } else { String::new() });
            cells
        })
        .collect();
    out.push_str(&markdown_table(&Rows { header, body, total: vec![] }));
    if !sweep.skipped.is_empty() {
        out.push_str("\nSkipped (refused by the validator):\n\n");
        for s in &sweep.skipped {
            let set: Vec<String> = s.set.iter().map(|(k, v)| format!("{k}={}", value_text(v))).collect();
            out.push_str(&format!("- `{}`: {}\n", set.join(" "), s.error));
        }
    }
    out
}

/// The published TopFormer-T/S/B configurations at `res`, as labelled points on `axes`.
fn published_points(sweep: &Sweep, (x, y): (Metric, Metric)) -> Result<Vec<ScatterPoint>> {
    VARIANTS
        .iter()
        .map(|&(name, label)| {
            let spec = load_embedded(name)?.spec;
            let graph = compile(&spec, sweep.res.0, sweep.res.1)?;
            let row = SweepRow::profile(&graph, sweep.device.as_ref(), vec![]);
            Ok(ScatterPoint {
                label: format!("TopFormer-{label}"),
                x: row.metric(x) / x.scale(),
                y: row.metric(y) / y.scale(),
                series: "TopFormer-T/S/B as published".into(),
                style: family_style(Family::Topformer),
                approximate: false,
            })
        })
        .collect()
}

/// The Pareto-front figure: every variant, the front joined and each of its points labelled with its values,
/// and the published TopFormer-T/S/B marked.
pub fn pareto_figure(sweep: &Sweep, title: &str) -> Result<String> {
    let (x, y) = (sweep.axes.0.metric, sweep.axes.1.metric);
    let at = |r: &SweepRow| (r.metric(x) / x.scale(), r.metric(y) / y.scale());
    let names = grid_names(sweep);
    let front: Vec<ScatterPoint> = sweep
        .front()
        .into_iter()
        .map(|r| {
            let (px, py) = at(r);
            let label: Vec<String> =
                names.iter().zip(&r.set).map(|(name, (_, v))| format!("{name}={}", value_text(v))).collect();
            ScatterPoint {
                label: label.join(" "),
                x: px,
                y: py,
                series: "Pareto front".into(),
                style: family_style(Family::Topformer).derived(),
                approximate: false,
            }
        })
        .collect();
    let variants: Vec<(f64, f64)> = sweep.rows.iter().map(at).collect();
    pareto_svg(title, &x.axis_title(), &y.axis_title(), &variants, &front, &published_points(sweep, (x, y))?)
}

/// The default title of a sweep's Pareto figure.
pub fn pareto_title(sweep: &Sweep) -> String {
    format!(
        "Design space around {} at {}×{}: {} vs {}",
        sweep.base,
        sweep.res.0,
        sweep.res.1,
        sweep.axes.1.describe(),
        sweep.axes.0.describe()
    )
}

/// Writes `sweep.csv`, `sweep.md` and `pareto.svg` into `dir` (created if needed), each atomically, after all
/// three are built; returns the paths written.
pub fn write_sweep(sweep: &Sweep, dir: &Path) -> Result<Vec<PathBuf>> {
    let files = [
        ("sweep.csv", sweep_csv(sweep)),
        ("sweep.md", sweep_markdown(sweep)),
        ("pareto.svg", pareto_figure(sweep, &pareto_title(sweep))?),
    ];
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    files
        .into_iter()
        .map(|(name, contents)| {
            let path = dir.join(name);
            write_atomic(&path, contents.as_bytes())?;
            Ok(path)
        })
        .collect()
}

/// A value of `metric` for people: `3.03 M`, `12.5 MiB`, `41.2 ms`.
fn metric_text(metric: Metric, value: f64) -> String {
    match metric {
        Metric::Memory => format!("{:.1} MiB", value / metric.scale()),
        Metric::Latency => format!("{value:.1} ms"),
        _ => si(value as u64),
    }
}

/// A one-line summary for the terminal: variants, front size, skipped, and the front's extremes.
pub fn sweep_summary(sweep: &Sweep) -> String {
    let front = sweep.front();
    let (x, y) = (sweep.axes.0.metric, sweep.axes.1.metric);
    let ends = match (front.first(), front.last()) {
        (Some(lo), Some(hi)) => format!(
            "; front from {} {} / {} {} to {} {} / {} {}",
            metric_text(x, lo.metric(x)),
            x.name(),
            metric_text(y, lo.metric(y)),
            y.name(),
            metric_text(x, hi.metric(x)),
            x.name(),
            metric_text(y, hi.metric(y)),
            y.name()
        ),
        _ => String::new(),
    };
    format!(
        "{} variants of {}, {} on the Pareto front, {} skipped{ends}",
        sweep.rows.len(),
        sweep.base,
        front.len(),
        sweep.skipped.len()
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signs_and_csv_quoting() {
        assert_eq!(signed(1024), "+1,024");
        assert_eq!(signed(-96), "-96");
        assert_eq!(signed(0), "0");
        assert_eq!(relative(Some(0.125)), "+12.5 %");
        assert_eq!(relative(None), "-");
        assert_eq!(csv_field("[3, 1, 16, 1]"), "\"[3, 1, 16, 1]\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("relu"), "relu");
    }
}
