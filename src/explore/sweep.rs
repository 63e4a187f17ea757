//! Sweeps: every combination of a set of grids of spec overrides, profiled in parallel, with its Pareto front.

use crate::cost::{Convention, Cost, Device, Memory, Prediction};
use crate::error::{Error, Result};
use crate::graph::{compile, Graph};
use crate::spec::{parse_value, KeyPath, LoadedSpec, Override};
use rayon::prelude::*;
use std::str::FromStr;

/// Most combinations one sweep may ask for.
pub const MAX_COMBINATIONS: u64 = 10_000_000;

/// One `--grid KEY=V1,V2,…`: the values a key (or several keys joined by `+`, set together) takes.
#[derive(Clone, Debug, PartialEq)]
pub struct Grid {
    /// The keys as written (`semantics_extractor.depth`, or `injection.channels+head.channels`).
    pub label: String,
    /// Every key the values are written to.
    pub keys: Vec<KeyPath>,
    /// The values, in order.
    pub values: Vec<toml::Value>,
}

impl Grid {
    /// The overrides that set this grid's keys to its `index`-th value.
    fn overrides(&self, index: usize) -> impl Iterator<Item = Override> + '_ {
        self.keys.iter().map(move |key| Override { key: key.clone(), value: self.values[index].clone() })
    }
}

impl FromStr for Grid {
    type Err = String;

    /// Parses `KEY=V1,V2,…`, splitting the values at commas outside brackets and quotes, so that
    /// `token_pyramid.blocks[9]=[3,6,160,1],[5,6,160,1]` has two values.
    fn from_str(text: &str) -> Result<Self, String> {
        let (label, values) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not KEY=V1,V2,… (e.g. semantics_extractor.depth=2,3,4)"))?;
        let label = label.trim().to_string();
        let keys = label.split('+').map(|k| KeyPath::parse(k.trim())).collect::<Result<Vec<_>, _>>()?;
        let values = split_top_level(values)
            .into_iter()
            .filter(|v| !v.trim().is_empty())
            .map(|v| parse_value(v).map_err(|e| format!("{label}: {e}")))
            .collect::<Result<Vec<_>, _>>()?;
        if values.is_empty() {
            return Err(format!("{label}: the value list is empty"));
        }
        Ok(Grid { label, keys, values })
    }
}

/// Splits at commas that are not inside `[ ]`, `{ }` or a quoted string.
fn split_top_level(text: &str) -> Vec<&str> {
    let (mut parts, mut depth, mut quote, mut start) = (Vec::new(), 0i32, None, 0);
    for (i, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '"' | '\'') => quote = Some(c),
            (None, '[' | '{') => depth += 1,
            (None, ']' | '}') => depth -= 1,
            (None, ',') if depth == 0 => {
                parts.push(&text[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    parts.push(&text[start..]);
    parts
}

/// A grid's label and the value one variant gives it.
pub type Setting = (String, toml::Value);

/// One profiled variant.
#[derive(Clone, Debug, PartialEq)]
pub struct SweepRow {
    /// The value of every grid, in grid order.
    pub set: Vec<Setting>,
    /// Learnable parameters.
    pub params: u64,
    /// Total cost under every convention.
    pub cost: Cost,
    /// Parameter and activation memory under the executor's schedule.
    pub memory: Memory,
    /// Predicted milliseconds on the sweep's device, when one was given.
    pub latency_ms: Option<f64>,
    /// Whether no other row is at least as good on both objectives and better on one.
    pub pareto: bool,
}

impl SweepRow {
    /// Profiles `graph` (params, cost, memory) and predicts its latency on `device`.
    pub fn profile(graph: &Graph, device: Option<&Device>, set: Vec<Setting>) -> Self {
        SweepRow {
            set,
            params: graph.learnable_params(),
            cost: graph.total_cost(),
            memory: Memory::new(graph),
            latency_ms: device.map(|d| Prediction::new(graph, d).total_ms),
            pareto: false,
        }
    }

    /// The row's value of `metric` (NaN for a latency without a device).
    pub fn metric(&self, metric: Metric) -> f64 {
        match metric {
            Metric::Params => self.params as f64,
            Metric::Paper => self.cost.paper as f64,
            Metric::Fvcore => self.cost.fvcore as f64,
            Metric::Macs => self.cost.macs as f64,
            Metric::Memory => self.memory.peak_activation_bytes as f64,
            Metric::Latency => self.latency_ms.unwrap_or(f64::NAN),
        }
    }
}

/// A combination the validator refused, and why.
#[derive(Clone, Debug, PartialEq)]
pub struct Skipped {
    /// The value of every grid.
    pub set: Vec<Setting>,
    /// The validator's message (naming the key).
    pub error: String,
}

/// What a sweep can plot and minimise.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Metric {
    /// Learnable parameters.
    Params,
    /// FLOPs under the `paper` convention.
    Paper,
    /// FLOPs under the `fvcore` convention.
    Fvcore,
    /// Plain multiply-accumulates.
    Macs,
    /// Peak activation bytes under the executor's schedule.
    Memory,
    /// Predicted latency on the device (needs `--device`).
    Latency,
}

impl Metric {
    /// The metric's name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Metric::Params => "params",
            Metric::Paper => "paper",
            Metric::Fvcore => "fvcore",
            Metric::Macs => "macs",
            Metric::Memory => "memory",
            Metric::Latency => "latency",
        }
    }

    /// FLOPs under `convention`.
    pub fn flops(convention: Convention) -> Metric {
        match convention {
            Convention::Paper => Metric::Paper,
            Convention::Fvcore => Metric::Fvcore,
            Convention::Macs => Metric::Macs,
        }
    }

    /// Axis title with units, for values divided by [`Metric::scale`].
    pub fn axis_title(self) -> String {
        match self {
            Metric::Params => "parameters (millions)".into(),
            Metric::Memory => "peak activation memory (MiB, f32)".into(),
            Metric::Latency => "predicted latency (ms)".into(),
            _ => format!("GFLOPs ({}, 10^9 multiply-adds)", self.name()),
        }
    }

    /// What plotted values are divided by.
    pub fn scale(self) -> f64 {
        match self {
            Metric::Params => 1e6,
            Metric::Memory => 1024.0 * 1024.0,
            Metric::Latency => 1.0,
            _ => 1e9,
        }
    }
}

/// Whether the Pareto front wants a metric small or large.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Goal {
    /// Smaller is better (a cost).
    Min,
    /// Larger is better (e.g. parameters as capacity at a FLOP budget).
    Max,
}

/// A metric the Pareto front is taken over, and which way is better.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Objective {
    /// The metric.
    pub metric: Metric,
    /// Which way is better.
    pub goal: Goal,
}

impl Objective {
    /// A metric to minimise.
    pub fn min(metric: Metric) -> Self {
        Objective { metric, goal: Goal::Min }
    }

    /// The row's value, turned so that smaller is better.
    fn rank(self, row: &SweepRow) -> f64 {
        let value = row.metric(self.metric);
        match self.goal {
            Goal::Min => value,
            Goal::Max => -value,
        }
    }

    /// `params (max)`, `paper (min)`.
    pub fn describe(self) -> String {
        let goal = match self.goal {
            Goal::Min => "min",
            Goal::Max => "max",
        };
        format!("{} ({goal})", self.metric.name())
    }
}

/// A finished sweep.
#[derive(Clone, Debug)]
pub struct Sweep {
    /// The base spec's name.
    pub base: String,
    /// Input height and width.
    pub res: (usize, usize),
    /// The grids, in order.
    pub grids: Vec<Grid>,
    /// One row per valid combination, in grid order (the last grid varies fastest).
    pub rows: Vec<SweepRow>,
    /// Combinations the validator refused.
    pub skipped: Vec<Skipped>,
    /// What the Pareto front is taken over: x, y.
    pub axes: (Objective, Objective),
    /// The device latency was predicted on.
    pub device: Option<Device>,
}

impl Sweep {
    /// Profiles every combination of `grids` at `res` in parallel, predicting latency on `device` if given.
    /// `instantiate` turns a combination's overrides into a validated spec (the caller adds its own base
    /// overrides); `tick` is called once per combination. Unknown keys, values of the wrong type, a latency axis
    /// without a device and a grid whose every combination is refused are errors naming the key; a combination
    /// the validator refuses is skipped with its reason.
    #[allow(clippy::too_many_arguments)]
    pub fn run(
        base: &str,
        grids: Vec<Grid>,
        res: (usize, usize),
        device: Option<&Device>,
        axes: (Objective, Objective),
        check_schema: impl Fn(&[Override]) -> Result<()>,
        instantiate: impl Fn(&[Override]) -> Result<LoadedSpec> + Sync,
        tick: impl Fn() + Sync,
    ) -> Result<Sweep> {
        if device.is_none() && [axes.0, axes.1].iter().any(|a| a.metric == Metric::Latency) {
            return Err(Error::input("--x/--y latency: predicted latency needs --device"));
        }
        for (i, grid) in grids.iter().enumerate() {
            if let Some(earlier) = grids[..i].iter().find(|g| g.keys.iter().any(|k| grid.keys.contains(k))) {
                return Err(Error::input(format!(
                    "--grid {}: a key is also swept by --grid {}",
                    grid.label, earlier.label
                )));
            }
            for v in 0..grid.values.len() {
                let overrides: Vec<Override> = grid.overrides(v).collect();
                check_schema(&overrides).map_err(|e| Error::input(format!("--grid {}: {e}", grid.label)))?;
            }
        }
        let total = Sweep::size(&grids)?;
        let outcomes: Vec<std::result::Result<SweepRow, Skipped>> = (0..total)
            .into_par_iter()
            .map(|index| {
                let (set, overrides) = combination(&grids, index);
                let graph = instantiate(&overrides).and_then(|loaded| compile(&loaded.spec, res.0, res.1));
                tick();
                match graph {
                    Ok(graph) => Ok(SweepRow::profile(&graph, device, set)),
                    Err(e) => Err(Skipped { set, error: e.to_string() }),
                }
            })
            .collect();
        let (mut rows, mut skipped) = (Vec::new(), Vec::new());
        for outcome in outcomes {
            match outcome {
                Ok(row) => rows.push(row),
                Err(s) => skipped.push(s),
            }
        }
        if rows.is_empty() {
            let labels: Vec<&str> = grids.iter().map(|g| g.label.as_str()).collect();
            let first = skipped.first().map(|s| s.error.as_str()).unwrap_or_default();
            return Err(Error::input(format!(
                "--grid {}: every one of the {total} combinations is invalid; the first: {first}",
                labels.join(", --grid ")
            )));
        }
        let points: Vec<(f64, f64)> = rows.iter().map(|r| (axes.0.rank(r), axes.1.rank(r))).collect();
        for i in pareto_front(&points) {
            rows[i].pareto = true;
        }
        Ok(Sweep { base: base.to_string(), res, grids, rows, skipped, axes, device: device.cloned() })
    }

    /// The number of combinations of `grids`; an error beyond [`MAX_COMBINATIONS`].
    pub fn size(grids: &[Grid]) -> Result<usize> {
        let total = grids.iter().try_fold(1u64, |n, g| n.checked_mul(g.values.len() as u64));
        match total {
            Some(n) if n <= MAX_COMBINATIONS => Ok(n as usize),
            _ => Err(Error::input(format!(
                "the grids have more than {MAX_COMBINATIONS} combinations; sweep fewer values"
            ))),
        }
    }

    /// The rows on the Pareto front, by increasing x.
    pub fn front(&self) -> Vec<&SweepRow> {
        let mut front: Vec<&SweepRow> = self.rows.iter().filter(|r| r.pareto).collect();
        let (x, y) = (self.axes.0.metric, self.axes.1.metric);
        front.sort_by(|a, b| a.metric(x).total_cmp(&b.metric(x)).then(a.metric(y).total_cmp(&b.metric(y))));
        front
    }
}

/// The `index`-th combination (the last grid varying fastest): its settings and overrides.
fn combination(grids: &[Grid], mut index: usize) -> (Vec<Setting>, Vec<Override>) {
    let mut picks = vec![0; grids.len()];
    for (pick, grid) in picks.iter_mut().zip(grids).rev() {
        *pick = index % grid.values.len();
        index /= grid.values.len();
    }
    let set = grids.iter().zip(&picks).map(|(g, &p)| (g.label.clone(), g.values[p].clone())).collect();
    let overrides = grids.iter().zip(&picks).flat_map(|(g, &p)| g.overrides(p)).collect();
    (set, overrides)
}

/// Indices of the points no other point dominates (at most as large on both coordinates and smaller on one).
/// Identical points share their fate.
fn pareto_front(points: &[(f64, f64)]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..points.len()).collect();
    order.sort_by(|&i, &j| points[i].0.total_cmp(&points[j].0).then(points[i].1.total_cmp(&points[j].1)));
    let mut front = Vec::new();
    let mut best_y = f64::INFINITY;
    let mut last_on_front: Option<(f64, f64)> = None;
    for i in order {
        let p = points[i];
        if p.1 < best_y || last_on_front == Some(p) {
            front.push(i);
            best_y = p.1;
            last_on_front = Some(p);
        }
    }
    front.sort_unstable();
    front
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grids_split_values_outside_brackets() {
        let g: Grid = "token_pyramid.blocks[9]=[3,6,160,1],[5,6,160,1]".parse().unwrap();
        assert_eq!(g.values.len(), 2);
        let g: Grid = "injection.channels+head.channels=128, 192,256".parse().unwrap();
        assert_eq!(g.keys.len(), 2);
        assert_eq!(g.values, [128, 192, 256].map(toml::Value::Integer).to_vec());
        let g: Grid = "head.activation=relu,\"hswish\"".parse().unwrap();
        assert_eq!(g.values[1], toml::Value::String("hswish".into()));
        assert_eq!(
            "semantics_extractor.depth=".parse::<Grid>().unwrap_err(),
            "semantics_extractor.depth: the value list is empty"
        );
        assert!("depth".parse::<Grid>().is_err());
    }

    #[test]
    fn combinations_vary_the_last_grid_fastest() {
        let grids: Vec<Grid> = ["a=1,2", "b=3,4,5"].iter().map(|g| g.parse().unwrap()).collect();
        let (set, overrides) = combination(&grids, 4);
        assert_eq!(set, vec![("a".into(), toml::Value::Integer(2)), ("b".into(), toml::Value::Integer(4))]);
        assert_eq!(overrides.len(), 2);
        assert_eq!(Sweep::size(&grids).unwrap(), 6);
    }

    #[test]
    fn pareto_front_keeps_undominated_points() {
        let points = [(3.0, 1.0), (1.0, 3.0), (2.0, 2.0), (2.0, 3.0), (3.0, 3.0), (1.0, 3.0), (4.0, 1.0)];
        assert_eq!(pareto_front(&points), vec![0, 1, 2, 5]);
        // Checked against the definition.
        for (i, p) in points.iter().enumerate() {
            let dominated = points.iter().any(|q| q.0 <= p.0 && q.1 <= p.1 && q != p);
            assert_eq!(pareto_front(&points).contains(&i), !dominated, "{p:?}");
        }
    }
}
