//! Softmax over the last dimension.

/// `x.softmax(dim=-1)`: functional, counted by no convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Softmax;
