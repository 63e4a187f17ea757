//! Executing a compiled graph: kernels, weights and the forward pass.

pub mod kernels;
