//! Fully connected layer.

use super::Cost;
use super::{numel, ParamDecl, Shape};

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

    /// `out = W·x + b` for each row of a [N, in] input with params [weight, bias]; returns the MACs performed.
    pub fn forward(&self, x: &[f32], params: &[&[f32]], out: &mut [f32]) -> u64 {
        let mut macs = 0;
        for (row, dst) in x.chunks(self.in_features).zip(out.chunks_mut(self.out_features)) {
            for (o, d) in dst.iter_mut().enumerate() {
                let w = &params[0][o * self.in_features..(o + 1) * self.in_features];
                *d = w.iter().zip(row).map(|(a, b)| a * b).sum::<f32>() + params.get(1).map_or(0.0, |b| b[o]);
                macs += self.in_features as u64;
            }
        }
        macs
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
