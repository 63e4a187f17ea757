//! Batch normalisation in eval mode (running statistics).

use super::{ParamDecl, ParamKind, Shape};
use crate::cost::Cost;

/// `nn.BatchNorm1d` (on [N, C]) or `nn.BatchNorm2d` (on [N, C, H, W]), affine, eval mode.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchNorm {
    /// Normalised channels.
    pub channels: usize,
    /// Variance epsilon (PyTorch's default 1e-5).
    pub eps: f32,
}

impl BatchNorm {
    /// A BatchNorm with PyTorch's default epsilon.
    pub fn new(channels: usize) -> Self {
        BatchNorm { channels, eps: 1e-5 }
    }

    /// Same shape as the input, whose dimension 1 must be the channel count.
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        match input.get(1) {
            Some(&c) if c == self.channels && (input.len() == 2 || input.len() == 4) => Ok(input.clone()),
            _ => Err(format!("expects [N, {}] or [N, {}, H, W], got {input:?}", self.channels, self.channels)),
        }
    }

    /// `weight`, `bias` (learnable), `running_mean`, `running_var` (buffers), `num_batches_tracked` (counter).
    pub fn params(&self) -> Vec<ParamDecl> {
        let c = vec![self.channels];
        vec![
            ParamDecl::learnable("weight", c.clone()),
            ParamDecl::learnable("bias", c.clone()),
            ParamDecl { suffix: "running_mean", shape: c.clone(), kind: ParamKind::Buffer },
            ParamDecl { suffix: "running_var", shape: c, kind: ParamKind::Buffer },
            ParamDecl { suffix: "num_batches_tracked", shape: vec![], kind: ParamKind::Counter },
        ]
    }
}

/// mmcv and fvcore both count an affine BatchNorm as 2 per input element; it has no multiply-accumulate.
pub fn cost(input: &Shape) -> Cost {
    let e = super::numel(input);
    Cost { paper: 2 * e, fvcore: 2 * e, macs: 0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes_params_and_cost() {
        let bn = BatchNorm::new(8);
        assert_eq!(bn.infer_shape(&vec![1, 8, 3, 5]).unwrap(), vec![1, 8, 3, 5]);
        assert_eq!(bn.infer_shape(&vec![1, 8]).unwrap(), vec![1, 8]);
        assert!(bn.infer_shape(&vec![1, 7, 3, 5]).is_err());
        let learnable = bn.params().iter().filter(|p| p.kind == ParamKind::Learnable).count();
        assert_eq!(learnable, 2);
        assert_eq!(cost(&vec![1, 8, 3, 5]), Cost { paper: 240, fvcore: 240, macs: 0 });
    }
}
