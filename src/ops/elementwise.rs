//! Elementwise binary ops of equal shapes: residual adds and the injection's multiply.

use super::Shape;
use crate::kernels::{add_into, mul_into};

/// An elementwise binary op. Functional in PyTorch, so no counter charges for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Elementwise {
    /// `a + b`.
    Add,
    /// `a * b`.
    Mul,
}

impl Elementwise {
    /// `add` or `mul`.
    pub fn name(self) -> &'static str {
        match self {
            Elementwise::Add => "add",
            Elementwise::Mul => "mul",
        }
    }

    /// Both inputs must have the same shape, which is the output's.
    pub fn infer_shape(self, inputs: &[&Shape]) -> Result<Shape, String> {
        match inputs {
            [a, b] if a == b => Ok((*a).clone()),
            [a, b] => Err(format!("{} of different shapes {a:?} and {b:?}", self.name())),
            _ => Err(format!("{} expects two inputs, got {}", self.name(), inputs.len())),
        }
    }

    /// Applies the op: `acc = acc (op) other`.
    pub fn apply(self, acc: &mut [f32], other: &[f32]) {
        match self {
            Elementwise::Add => add_into(acc, other),
            Elementwise::Mul => mul_into(acc, other),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requires_equal_shapes() {
        let a = vec![1, 4, 3, 3];
        assert_eq!(Elementwise::Add.infer_shape(&[&a, &a]).unwrap(), a);
        assert!(Elementwise::Mul.infer_shape(&[&a, &vec![1, 4, 3, 2]]).is_err());
        let mut acc = vec![1.0, 2.0];
        Elementwise::Mul.apply(&mut acc, &[3.0, 4.0]);
        assert_eq!(acc, vec![3.0, 8.0]);
    }
}
