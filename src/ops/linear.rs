//! Fully connected layer.

use super::{numel, ParamDecl, Shape};
use crate::cost::Cost;

/// `nn.Linear(in_features, out_features, bias)` on [N, in_features].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Linear {
    /// Input features.
    pub in_features: usize,
    /// Output features.
    pub out_features: usize,
    /// Whether it has a bias.
    pub bias: bool,
}

impl Linear {
    /// [N, out_features].
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        match input.as_slice() {
            &[n, f] if f == self.in_features => Ok(vec![n, self.out_features]),
            _ => Err(format!("expects [N, {}], got {input:?}", self.in_features)),
        }
    }

    /// `weight` [out, in] and `bias` [out].
    pub fn params(&self) -> Vec<ParamDecl> {
        let mut params = vec![ParamDecl::learnable("weight", vec![self.out_features, self.in_features])];
        if self.bias {
            params.push(ParamDecl::learnable("bias", vec![self.out_features]));
        }
        params
    }

    /// numel(input)·out_features under every convention (mmcv and fvcore ignore the bias).
    pub fn cost(&self, input: &Shape) -> Cost {
        Cost::uniform(numel(input) * self.out_features as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shape_params_cost() {
        let fc = Linear { in_features: 208, out_features: 1000, bias: true };
        assert_eq!(fc.infer_shape(&vec![1, 208]).unwrap(), vec![1, 1000]);
        assert!(fc.infer_shape(&vec![1, 207]).is_err());
        assert_eq!(fc.params().iter().map(|p| numel(&p.shape)).sum::<u64>(), 209_000);
        assert_eq!(fc.cost(&vec![1, 208]), Cost::uniform(208_000));
    }
}
