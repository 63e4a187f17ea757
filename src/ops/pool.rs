//! Average pooling: the token pyramid's functional adaptive pooling and the classifier's global pool module.

use super::Cost;
use super::{nchw, numel, Shape};
use crate::kernels::adaptive_avg_pool2d;

/// Functional `F.adaptive_avg_pool2d(x, (out_h, out_w))`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AdaptiveAvgPool {
    /// Output height.
    pub out_h: usize,
    /// Output width.
    pub out_w: usize,
}

impl AdaptiveAvgPool {
    /// [N, C, out_h, out_w].
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        let (n, c, _, _) = nchw(input)?;
        if self.out_h == 0 || self.out_w == 0 {
            return Err("adaptive pool to an empty size".into());
        }
        Ok(vec![n, c, self.out_h, self.out_w])
    }
}

/// Functional, so mmcv (`paper`) does not see it; fvcore counts one per input element.
pub fn adaptive_cost(input: &Shape) -> Cost {
    Cost { paper: 0, fvcore: numel(input), macs: 0 }
}

/// Adaptive average pooling of a batch-1 NCHW input to the output's size.
pub fn adaptive_forward(x: &[f32], input: &Shape, output: &Shape, out: &mut [f32]) {
    adaptive_avg_pool2d(x, input[1], input[2], input[3], output[2], output[3], out);
}

/// The mean of every channel plane.
pub fn global_forward(x: &[f32], input: &Shape, out: &mut [f32]) {
    let plane = input[2] * input[3];
    for (dst, src) in out.iter_mut().zip(x.chunks(plane)) {
        *dst = src.iter().sum::<f32>() / plane as f32;
    }
}

/// `nn.AdaptiveAvgPool2d(1)` followed by flatten: [N, C, H, W] → [N, C].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GlobalAvgPool;

impl GlobalAvgPool {
    /// [N, C].
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        let (n, c, _, _) = nchw(input)?;
        Ok(vec![n, c])
    }
}

/// A pooling module: mmcv and fvcore both count one per input element.
pub fn global_cost(input: &Shape) -> Cost {
    Cost { paper: numel(input), fvcore: numel(input), macs: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_and_costs() {
        let x = vec![1, 4, 5, 7];
        assert_eq!(AdaptiveAvgPool { out_h: 2, out_w: 2 }.infer_shape(&x).unwrap(), vec![1, 4, 2, 2]);
        assert_eq!(GlobalAvgPool.infer_shape(&x).unwrap(), vec![1, 4]);
        assert_eq!(adaptive_cost(&x), Cost { paper: 0, fvcore: 140, macs: 0 });
        assert_eq!(global_cost(&x), Cost { paper: 140, fvcore: 140, macs: 0 });
    }
}
