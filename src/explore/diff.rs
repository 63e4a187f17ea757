//! Two profiles side by side: totals, stages and blocks, with absolute and relative deltas.

use crate::cost::{Convention, Cost, Group, Profile};

/// One side's figures for a total, stage or block.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Side {
    /// Learnable parameters.
    pub params: u64,
    /// Cost under every convention.
    pub cost: Cost,
    /// f32 output bytes of its layers, summed.
    pub activation_bytes: u64,
    /// The most activation bytes live at once (totals only).
    pub peak_activation_bytes: Option<u64>,
    /// Predicted milliseconds, with a device.
    pub latency_ms: Option<f64>,
}

impl Side {
    fn of(group: &Group) -> Side {
        Side {
            params: group.params,
            cost: group.cost,
            activation_bytes: group.activation_bytes,
            peak_activation_bytes: None,
            latency_ms: group.latency_ms,
        }
    }

    /// A whole profile's totals.
    fn total(p: &Profile) -> Side {
        Side {
            params: p.params,
            cost: p.cost,
            activation_bytes: p.memory.activation_bytes,
            peak_activation_bytes: Some(p.memory.peak_activation_bytes),
            latency_ms: p.latency.as_ref().map(|l| l.prediction.total_ms),
        }
    }
}

/// B minus A (a side that lacks the entry counts as zero).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Delta {
    /// A's figures, zero when absent.
    base: Side,
    /// Parameter difference.
    pub params: i128,
    /// Cost difference under each convention, in [`Convention::ALL`] order.
    pub cost: [i128; 3],
    /// Activation bytes difference.
    pub activation_bytes: i128,
    /// Peak activation bytes difference (totals only).
    pub peak_activation_bytes: Option<i128>,
    /// Predicted milliseconds difference, with a device.
    pub latency_ms: Option<f64>,
}

impl Delta {
    fn new(a: Option<Side>, b: Option<Side>) -> Delta {
        let present = a.or(b).unwrap_or_default();
        let absent = Side { latency_ms: present.latency_ms.map(|_| 0.0), ..Side::default() };
        let (a, b) = (a.unwrap_or(absent), b.unwrap_or(absent));
        let diff = |x: u64, y: u64| i128::from(y) - i128::from(x);
        Delta {
            base: a,
            params: diff(a.params, b.params),
            cost: Convention::ALL.map(|c| diff(a.cost.get(c), b.cost.get(c))),
            activation_bytes: diff(a.activation_bytes, b.activation_bytes),
            peak_activation_bytes: a.peak_activation_bytes.zip(b.peak_activation_bytes).map(|(x, y)| diff(x, y)),
            latency_ms: a.latency_ms.zip(b.latency_ms).map(|(x, y)| y - x),
        }
    }

    /// The cost difference under `convention`.
    pub fn flops(&self, convention: Convention) -> i128 {
        let i = Convention::ALL.iter().position(|&c| c == convention).expect("every convention is in ALL");
        self.cost[i]
    }

    /// The parameter difference relative to A, or `None` when A has none.
    pub fn params_relative(&self) -> Option<f64> {
        relative(self.params, self.base.params)
    }

    /// The cost difference under `convention` relative to A, or `None` when A's is zero.
    pub fn flops_relative(&self, convention: Convention) -> Option<f64> {
        relative(self.flops(convention), self.base.cost.get(convention))
    }
}

fn relative(delta: i128, base: u64) -> Option<f64> {
    (base != 0).then(|| delta as f64 / base as f64)
}

/// One stage or block of either network.
#[derive(Clone, Debug, PartialEq)]
pub struct DiffEntry {
    /// Stage name or official block path.
    pub name: String,
    /// A's figures, `None` when only B has this entry.
    pub a: Option<Side>,
    /// B's figures, `None` when only A has it.
    pub b: Option<Side>,
    /// B − A.
    pub delta: Delta,
}

impl DiffEntry {
    fn new(name: &str, a: Option<Side>, b: Option<Side>) -> Self {
        DiffEntry { name: name.to_string(), a, b, delta: Delta::new(a, b) }
    }

    /// `both`, `a only` or `b only`.
    pub fn presence(&self) -> &'static str {
        match (self.a, self.b) {
            (Some(_), Some(_)) => "both",
            (Some(_), None) => "a only",
            _ => "b only",
        }
    }
}

/// Two profiles compared.
#[derive(Clone, Debug)]
pub struct Diff {
    /// The totals.
    pub total: DiffEntry,
    /// Every stage of either network, in network order.
    pub stages: Vec<DiffEntry>,
    /// Every block of either network, in network order; a block of one side only sits after the block that
    /// precedes it on its side.
    pub blocks: Vec<DiffEntry>,
}

impl Diff {
    /// Compares `a` with `b`, matching stages and blocks by name.
    pub fn new(a: &Profile, b: &Profile) -> Diff {
        let total = DiffEntry::new("total", Some(Side::total(a)), Some(Side::total(b)));
        Diff { total, stages: matched(&a.stages, &b.stages), blocks: matched(&a.blocks, &b.blocks) }
    }
}

/// The union of `a` and `b` by name, in `a`'s order with `b`'s extra entries after their predecessor in `b`.
fn matched(a: &[Group], b: &[Group]) -> Vec<DiffEntry> {
    let mut names: Vec<&str> = a.iter().map(|g| g.name.as_str()).collect();
    let mut after = 0;
    for g in b {
        match names.iter().position(|n| *n == g.name) {
            Some(at) => after = at + 1,
            None => {
                names.insert(after, &g.name);
                after += 1;
            }
        }
    }
    let find = |groups: &[Group], name: &str| groups.iter().find(|g| g.name == name).map(Side::of);
    names.into_iter().map(|name| DiffEntry::new(name, find(a, name), find(b, name))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::Stage;

    fn group(name: &str, params: u64) -> Group {
        Group {
            name: name.into(),
            stage: Stage::TokenPyramid,
            params,
            cost: Cost::uniform(params * 10),
            activation_bytes: params * 4,
            latency_ms: None,
            output_shape: vec![],
        }
    }

    #[test]
    fn one_sided_blocks_keep_their_place() {
        let a = [group("x", 1), group("y", 2), group("z", 3)];
        let b = [group("x", 1), group("w", 5), group("z", 4)];
        let entries = matched(&a, &b);
        let names: Vec<_> = entries.iter().map(|e| (e.name.as_str(), e.presence())).collect();
        assert_eq!(names, [("x", "both"), ("w", "b only"), ("y", "a only"), ("z", "both")]);
        assert_eq!(entries[1].delta.params, 5);
        assert_eq!(entries[2].delta.params, -2);
        assert_eq!(entries[3].delta.flops(Convention::Macs), 10);
        assert_eq!(entries[3].delta.params_relative(), Some(1.0 / 3.0));
        assert_eq!(entries[1].delta.params_relative(), None);
    }
}
