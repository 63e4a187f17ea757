//! toparch: analyse TopFormer-family segmentation networks.

pub mod cost;
pub mod error;
pub mod exec;
pub mod graph;
pub mod ops;
pub mod spec;
