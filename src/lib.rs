//! toparch: analyse TopFormer-family segmentation networks.

pub mod budget;
pub mod cli;
pub mod cost;
pub mod error;
pub mod exec;
pub mod explore;
pub mod export;
pub mod graph;
pub mod kernels;
pub mod ops;
pub mod report;
pub mod spec;
#[doc(hidden)]
pub mod testing;
