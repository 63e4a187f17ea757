//! Counting conventions and the per-op cost record every op reports under each of them.

use serde::{Deserialize, Serialize};

/// A named FLOP-counting convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Convention {
    /// mmcv 1.x `get_model_complexity_info`, which produced the TopFormer paper's figures.
    Paper,
    /// fvcore's `FlopCountAnalysis` with its default op handles.
    Fvcore,
    /// Plain multiply-accumulates of conv, linear and matmul.
    Macs,
}

impl Convention {
    /// All conventions, in report order.
    pub const ALL: [Convention; 3] = [Convention::Paper, Convention::Fvcore, Convention::Macs];

    /// The convention's name as used on the command line and in JSON.
    pub fn name(self) -> &'static str {
        match self {
            Convention::Paper => "paper",
            Convention::Fvcore => "fvcore",
            Convention::Macs => "macs",
        }
    }
}

/// One op's (or one group's) cost under every convention; MAC-style counts, as the literature's "FLOPs".
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Cost {
    /// mmcv 1.x counting.
    pub paper: u64,
    /// fvcore counting.
    pub fvcore: u64,
    /// Multiply-accumulates only.
    pub macs: u64,
}

impl Cost {
    /// A cost that every convention counts the same.
    pub fn uniform(count: u64) -> Self {
        Cost { paper: count, fvcore: count, macs: count }
    }

    /// The sum, or `None` if a count overflows.
    pub fn checked_add(self, other: Cost) -> Option<Cost> {
        Some(Cost {
            paper: self.paper.checked_add(other.paper)?,
            fvcore: self.fvcore.checked_add(other.fvcore)?,
            macs: self.macs.checked_add(other.macs)?,
        })
    }

    /// The count under `convention`.
    pub fn get(self, convention: Convention) -> u64 {
        match convention {
            Convention::Paper => self.paper,
            Convention::Fvcore => self.fvcore,
            Convention::Macs => self.macs,
        }
    }
}

impl std::ops::Add for Cost {
    type Output = Cost;
    fn add(self, other: Cost) -> Cost {
        Cost { paper: self.paper + other.paper, fvcore: self.fvcore + other.fvcore, macs: self.macs + other.macs }
    }
}

impl std::ops::AddAssign for Cost {
    fn add_assign(&mut self, other: Cost) {
        *self = *self + other;
    }
}

impl std::iter::Sum for Cost {
    fn sum<I: Iterator<Item = Cost>>(iter: I) -> Cost {
        iter.fold(Cost::default(), |a, b| a + b)
    }
}
