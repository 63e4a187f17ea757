//! Design-space tools: comparing two networks block by block ([`diff`]) and profiling the Cartesian product of
//! spec overrides with its Pareto front ([`sweep`]).
//!
//! Everything here is counted from compiled graphs (no executor), so a variant costs a graph compile.

pub mod diff;
pub mod sweep;

pub use diff::{Delta, Diff, DiffEntry, Side};
pub use sweep::{Goal, Grid, Metric, Objective, Setting, Skipped, Sweep, SweepRow};
