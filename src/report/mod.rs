//! Presenting profiles: terminal tables, JSON, markdown, and the report with its figures.

pub mod baselines;
pub mod bench;
pub mod document;
pub mod explore;
pub mod format;
pub mod json;
pub mod mobile;
pub mod plot;
pub mod rows;
pub mod table;
pub mod timing;

pub use rows::Depth;
