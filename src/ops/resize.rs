//! Functional bilinear resize (`F.interpolate(mode='bilinear', align_corners=False)`).

use super::Cost;
use super::{nchw, numel, Shape};
use crate::kernels::resize_bilinear;

/// Bilinear resize of an NCHW map to a fixed size.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Resize {
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl Resize {
    /// [N, C, out_h, out_w].
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        let (n, c, _, _) = nchw(input)?;
        Ok(vec![n, c, self.out_h, self.out_w])
    }
}

/// Resizes a batch-1 NCHW input to the output's size, writing or (`accumulate`) adding into `out`.
pub fn forward(x: &[f32], input: &Shape, output: &Shape, out: &mut [f32], accumulate: bool) {
    resize_bilinear(x, input[1], input[2], input[3], output[2], output[3], out, accumulate);
}

/// Functional, so mmcv does not count it; fvcore charges 4 per output element.
pub fn cost(output: &Shape) -> Cost {
    Cost { paper: 0, fvcore: 4 * numel(output), macs: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_and_cost() {
        let r = Resize { out_h: 9, out_w: 13 };
        assert_eq!(r.infer_shape(&vec![1, 2, 5, 7]).unwrap(), vec![1, 2, 9, 13]);
        assert_eq!(cost(&vec![1, 2, 9, 13]).fvcore, 4 * 234);
    }
}
