//! Batch normalisation in eval mode (running statistics).

use super::Cost;
use super::{ParamDecl, ParamKind, Shape};

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

impl BatchNorm {
    /// Per-channel `(scale, shift)` so that `bn(x) = scale·x + shift`, from [weight, bias, mean, var].
    pub fn affine(&self, params: &[&[f32]]) -> (Vec<f32>, Vec<f32>) {
        let (weight, bias, mean, var) = (params[0], params[1], params[2], params[3]);
        (0..self.channels)
            .map(|c| {
                let scale = weight[c] / (var[c] + self.eps).sqrt();
                (scale, bias[c] - mean[c] * scale)
            })
            .unzip()
    }

    /// Eval-mode normalisation of [N, C] or [N, C, H, W] data with params [weight, bias, mean, var].
    pub fn forward(&self, x: &[f32], input: &Shape, params: &[&[f32]], out: &mut [f32]) -> u64 {
        let (scale, shift) = self.affine(params);
        let plane: usize = input[2..].iter().product();
        for (c, (dst, src)) in out.chunks_mut(plane).zip(x.chunks(plane)).enumerate() {
            let (s, t) = (scale[c % self.channels], shift[c % self.channels]);
            dst.iter_mut().zip(src).for_each(|(d, v)| *d = v * s + t);
        }
        0
    }

    /// Folds this BatchNorm into the conv before it: returns the new weight ([Cout, …]) and bias, computed in
    /// f64 and rounded once: `s = γ/√(var+ε)`, `W' = W·s` per output channel, `b' = (b − mean)·s + β`.
    pub fn fold_into(&self, weight: &[f32], bias: Option<&[f32]>, params: &[&[f32]]) -> (Vec<f32>, Vec<f32>) {
        let (gamma, beta, mean, var) = (params[0], params[1], params[2], params[3]);
        let eps = f64::from(self.eps);
        let scale: Vec<f64> =
            (0..self.channels).map(|c| f64::from(gamma[c]) / (f64::from(var[c]) + eps).sqrt()).collect();
        let per_channel = weight.len() / self.channels;
        let folded_weight = weight
            .chunks(per_channel)
            .zip(&scale)
            .flat_map(|(w, &s)| w.iter().map(move |&v| (f64::from(v) * s) as f32))
            .collect();
        let folded_bias = (0..self.channels)
            .map(|c| {
                let b = bias.map_or(0.0, |b| f64::from(b[c]));
                ((b - f64::from(mean[c])) * scale[c] + f64::from(beta[c])) as f32
            })
            .collect();
        (folded_weight, folded_bias)
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

    #[test]
    fn eval_forward_and_folding_agree() {
        let bn = BatchNorm::new(2);
        let (w, b, m, v) = ([2.0, 0.5], [1.0, -1.0], [0.5, 2.0], [4.0, 0.25]);
        let params: [&[f32]; 4] = [&w, &b, &m, &v];
        let x = [1.0, 3.0, -1.0, 0.0];
        let mut y = [0.0; 4];
        bn.forward(&x, &vec![1, 2, 1, 2], &params, &mut y);
        let expect = |x: f32, c: usize| (x - m[c]) / (v[c] + 1e-5f32).sqrt() * w[c] + b[c];
        for (i, &yi) in y.iter().enumerate() {
            assert!((yi - expect(x[i], i / 2)).abs() < 1e-6);
        }
        // A 1×1 conv with weight 1 per channel, folded, equals conv-then-bn.
        let (fw, fb) = bn.fold_into(&[1.0, 1.0], None, &params);
        for (i, &yi) in y.iter().enumerate() {
            let c = i / 2;
            assert!((fw[c] * x[i] + fb[c] - yi).abs() < 1e-6);
        }
    }
}
