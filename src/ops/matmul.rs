//! Batched matrix product over the last two dimensions (the attention's `q·k` and `attn·v`).

use super::Cost;
use super::{numel, Shape};
use crate::kernels::batched_matmul;

/// `op(a) @ op(b)` over the last two dimensions, with leading dimensions equal.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MatMul {
    /// Transpose the last two dimensions of `a` first.
    pub trans_a: bool,
    /// Transpose the last two dimensions of `b` first.
    pub trans_b: bool,
}

/// Batch count and (m, k, n) of a matmul.
pub struct MatMulDims {
    /// Product of the leading dimensions.
    pub batch: usize,
    /// Rows of the result.
    pub m: usize,
    /// Contracted length.
    pub k: usize,
    /// Columns of the result.
    pub n: usize,
}

impl MatMul {
    /// The problem size for these operand shapes.
    pub fn dims(&self, a: &Shape, b: &Shape) -> Result<MatMulDims, String> {
        if a.len() < 2 || a.len() != b.len() || a[..a.len() - 2] != b[..b.len() - 2] {
            return Err(format!("matmul of incompatible shapes {a:?} and {b:?}"));
        }
        let r = a.len();
        let (m, ka) = if self.trans_a { (a[r - 1], a[r - 2]) } else { (a[r - 2], a[r - 1]) };
        let (kb, n) = if self.trans_b { (b[r - 1], b[r - 2]) } else { (b[r - 2], b[r - 1]) };
        if ka != kb {
            return Err(format!("matmul contracts {ka} against {kb} ({a:?} · {b:?})"));
        }
        Ok(MatMulDims { batch: a[..r - 2].iter().product(), m, k: ka, n })
    }

    /// Leading dimensions, then m × n.
    pub fn infer_shape(&self, inputs: &[&Shape]) -> Result<Shape, String> {
        let [a, b] = inputs else { return Err(format!("matmul expects two inputs, got {}", inputs.len())) };
        let d = self.dims(a, b)?;
        let mut out = a[..a.len() - 2].to_vec();
        out.extend([d.m, d.n]);
        Ok(out)
    }

    /// Multiplies the two inputs; returns the MACs performed.
    pub fn forward(&self, inputs: &[&[f32]], shapes: &[&Shape], out: &mut [f32]) -> u64 {
        match self.dims(shapes[0], shapes[1]) {
            Ok(d) => batched_matmul(inputs[0], inputs[1], d.batch, d.m, d.k, d.n, self.trans_a, self.trans_b, out),
            Err(_) => unreachable!("shapes were checked when the node was added"),
        }
    }

    /// batch·m·k·n MACs; functional, so mmcv (`paper`) does not count it.
    pub fn cost(&self, a: &Shape, output: &Shape) -> Cost {
        let k = if self.trans_a { a[a.len() - 2] } else { a[a.len() - 1] };
        let macs = numel(output) * k as u64;
        Cost { paper: 0, fvcore: macs, macs }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_shapes_and_cost() {
        // q [1, 4 heads, 16, 64 tokens] transposed times k [1, 4, 16, 64] → [1, 4, 64, 64]
        let q = vec![1, 4, 16, 64];
        let qk = MatMul { trans_a: true, trans_b: false };
        let scores = qk.infer_shape(&[&q, &q]).unwrap();
        assert_eq!(scores, vec![1, 4, 64, 64]);
        assert_eq!(qk.cost(&q, &scores).macs, 4 * 64 * 64 * 16);
        // v [1, 4, 32, 64] times scoresᵀ → [1, 4, 32, 64]
        let v = vec![1, 4, 32, 64];
        let av = MatMul { trans_a: false, trans_b: true };
        let out = av.infer_shape(&[&v, &scores]).unwrap();
        assert_eq!(out, v);
        assert_eq!(av.cost(&v, &out), Cost { paper: 0, fvcore: 4 * 32 * 64 * 64, macs: 4 * 32 * 64 * 64 });
        assert!(qk.infer_shape(&[&q, &v]).is_err());
    }
}
