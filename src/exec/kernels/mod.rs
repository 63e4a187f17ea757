//! Fast CPU kernels over flat NCHW `f32` buffers (batch 1).
