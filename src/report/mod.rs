//! The report layer: published baselines and the SVG figures of the markdown report.

pub mod baselines;
pub mod plot;
