//! Softmax over the last dimension.

/// `x.softmax(dim=-1)`: functional, counted by no convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax;

/// Softmax over the last dimension of `data`, in place.
pub fn forward(data: &mut [f32], shape: &[usize]) {
    crate::kernels::softmax_rows(data, shape.last().copied().unwrap_or(1));
}
