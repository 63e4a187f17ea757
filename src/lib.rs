//! toparch: analyse TopFormer-family segmentation networks.

pub mod cost;
pub mod error;
pub mod exec;
pub mod ops;
pub mod report;
