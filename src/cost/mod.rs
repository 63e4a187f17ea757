//! Profiles: a graph's per-node costs aggregated under the counting conventions, checked against published
//! figures.

pub use crate::ops::cost::{Convention, Cost};

mod profile;

pub use profile::{round_like, Comparison, Group, Layer, Profile};
