//! FLOP and parameter budgets: `toparch check` profiles each entry of a budgets file and fails when one is
//! exceeded, so a CI job can guard a model's cost.

use crate::cost::{Convention, Profile};
use crate::error::{Error, Result};
use crate::report::format::{percent, thousands};
use crate::report::rows::Rows;
use crate::report::table::terminal_table;
use crate::spec::{load_reference, parse_resolution, Document};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

/// A budgets file: a list of `[[budget]]` entries.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budgets {
    /// The entries, checked in order.
    pub budget: Vec<Budget>,
}

/// Limits for one spec at one resolution.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Budget {
    /// An embedded spec name, or a spec file path relative to the budgets file.
    pub spec: String,
    /// Resolution, `512` or `HxW`.
    pub res: String,
    /// Counting convention of `max_flops`.
    #[serde(default = "default_convention")]
    pub convention: Convention,
    /// Largest allowed FLOPs (MAC-style count).
    pub max_flops: Option<f64>,
    /// Largest allowed learnable parameters.
    pub max_params: Option<f64>,
    /// Relative slack on every limit of this entry, e.g. 0.01 for 1 %.
    #[serde(default)]
    pub tolerance: f64,
    /// Per-stage limits, by stage name.
    #[serde(default)]
    pub stages: BTreeMap<String, Limits>,
}

/// Limits for one stage.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Largest allowed FLOPs of the stage.
    pub max_flops: Option<f64>,
    /// Largest allowed learnable parameters of the stage.
    pub max_params: Option<f64>,
}

fn default_convention() -> Convention {
    Convention::Paper
}

/// One limit compared with the computed value.
#[derive(Debug, Serialize)]
pub struct Verdict {
    /// `spec@res convention`.
    pub entry: String,
    /// `total` or a stage name.
    pub scope: String,
    /// `flops` or `params`.
    pub metric: &'static str,
    /// Computed value.
    pub actual: u64,
    /// The limit, tolerance included.
    pub limit: u64,
    /// Whether the value is within the limit.
    pub ok: bool,
}

impl Verdict {
    /// How far below (positive) or above (negative) the limit the value is, as a share of the limit.
    fn headroom(&self) -> String {
        let diff = self.limit as i128 - self.actual as i128;
        let sign = if diff < 0 { "-" } else { "" };
        format!("{sign}{}", percent(diff.unsigned_abs() as u64, self.limit))
    }
}

/// Reads a budgets file; every later error about it names the file and line.
pub fn read_budgets(path: &Path) -> Result<(Budgets, Document)> {
    let (budgets, doc): (Budgets, Document) = Document::read(path)?;
    if budgets.budget.is_empty() {
        return Err(Error::input(format!("{}: no [[budget]] entry: a check of nothing cannot pass", path.display())));
    }
    for (i, b) in budgets.budget.iter().enumerate() {
        let stage_limits = b.stages.values().flat_map(|l| [l.max_flops, l.max_params]);
        if [b.max_flops, b.max_params].into_iter().chain(stage_limits).all(|l| l.is_none()) {
            return Err(doc.error(&format!("budget[{i}]"), "sets no limit (max_flops, max_params or a stage's)"));
        }
        let mut limits = vec![("max_flops".to_string(), b.max_flops), ("max_params".to_string(), b.max_params)];
        for (stage, l) in &b.stages {
            limits.push((format!("stages.{stage}.max_flops"), l.max_flops));
            limits.push((format!("stages.{stage}.max_params"), l.max_params));
        }
        limits.push(("tolerance".into(), Some(b.tolerance)));
        for (key, value) in limits {
            if let Some(v) = value.filter(|v| !(v.is_finite() && *v >= 0.0)) {
                return Err(doc.error(&format!("budget[{i}].{key}"), format!("{v} is not a non-negative number")));
            }
        }
    }
    Ok((budgets, doc))
}

/// Profiles every entry and compares it with its limits.
pub fn evaluate(budgets: &Budgets, doc: &Document) -> Result<Vec<Verdict>> {
    let mut verdicts = Vec::new();
    for (i, b) in budgets.budget.iter().enumerate() {
        let at = |key: &str, e: Error| doc.error(&format!("budget[{i}].{key}"), e);
        let loaded = load_reference(&b.spec, doc.dir()).map_err(|e| at("spec", e))?;
        let (h, w) = parse_resolution(&b.res).map_err(|e| at("res", e))?;
        let graph = loaded.compile(h, w).map_err(|e| at("spec", e))?;
        let profile = Profile::new(&graph, &loaded.spec)?;
        let convention = b.convention;
        let entry = format!("{}@{}x{} {}", loaded.spec.name, h, w, convention.name());
        let mut check = |scope: &str, metric: &'static str, actual: u64, max: Option<f64>| {
            if let Some(max) = max {
                let limit = (max * (1.0 + b.tolerance)).floor() as u64;
                verdicts.push(Verdict {
                    entry: entry.clone(),
                    scope: scope.into(),
                    metric,
                    actual,
                    limit,
                    ok: actual <= limit,
                });
            }
        };
        check("total", "flops", profile.flops(convention), b.max_flops);
        check("total", "params", profile.params, b.max_params);
        for (stage, limits) in &b.stages {
            let Some(group) = profile.stages.iter().find(|g| &g.name == stage) else {
                let known: Vec<_> = profile.stages.iter().map(|g| g.name.as_str()).collect();
                let message = format!("{} has no stage '{stage}' (stages: {})", loaded.spec.name, known.join(", "));
                return Err(doc.error(&format!("budget[{i}].stages.{stage}"), message));
            };
            check(stage, "flops", group.cost.get(convention), limits.max_flops);
            check(stage, "params", group.params, limits.max_params);
        }
    }
    Ok(verdicts)
}

/// The verdicts as a table with headroom.
pub fn render_table(verdicts: &[Verdict]) -> String {
    let rows = Rows {
        header: ["entry", "scope", "metric", "actual", "budget", "headroom", "status"].map(String::from).to_vec(),
        body: verdicts
            .iter()
            .map(|v| {
                vec![
                    v.entry.clone(),
                    v.scope.clone(),
                    v.metric.into(),
                    thousands(v.actual),
                    thousands(v.limit),
                    v.headroom(),
                    if v.ok { "ok".into() } else { "OVER".into() },
                ]
            })
            .collect(),
        total: vec![],
    };
    terminal_table(&rows)
}

/// One line per exceeded limit, naming the entry, the stage and by how much.
pub fn failures(verdicts: &[Verdict]) -> Vec<String> {
    verdicts
        .iter()
        .filter(|v| !v.ok)
        .map(|v| {
            let over = v.actual - v.limit;
            format!(
                "budget exceeded: {} {} {} is {}, over the budget {} by {} ({})",
                v.entry,
                v.scope,
                v.metric,
                thousands(v.actual),
                thousands(v.limit),
                thousands(over),
                percent(over, v.limit)
            )
        })
        .collect()
}
