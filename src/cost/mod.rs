//! Profiles: a graph's per-node costs aggregated under the counting conventions, checked against published
//! figures; memory; latency predicted from a calibrated device profile.

pub use crate::ops::cost::{Convention, Cost};

pub mod bench;
pub mod calibrate;
pub mod latency;
pub mod memory;
mod profile;

pub use latency::{Device, Family, Prediction};
pub use memory::{Memory, ParamBytes};
pub use profile::{round_like, Comparison, Group, Latency, Layer, Profile};
