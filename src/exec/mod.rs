//! Executing a compiled graph: kernels, weights and the forward pass.

pub mod image_io;
pub mod kernels;
pub mod pth;
pub mod weights;
