//! Profiles: a graph's per-node costs aggregated under the counting conventions, checked against published
//! figures; memory.

pub use crate::ops::cost::{Convention, Cost};

pub mod memory;
mod profile;

pub use memory::{Memory, ParamBytes};
pub use profile::{round_like, Comparison, Group, Layer, Profile};
