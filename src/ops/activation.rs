//! Pointwise activations: their spec names and cost (the function itself is a kernel).

use super::Cost;
pub use crate::kernels::Activation;

impl Activation {
    /// The spec name of this activation.
    pub fn name(self) -> &'static str {
        match self {
            Activation::Relu => "relu",
            Activation::Relu6 => "relu6",
            Activation::Hsigmoid => "hsigmoid",
            Activation::Hswish => "hswish",
        }
    }

    /// Cost on a tensor of `numel` elements. mmcv (`paper`) counts `nn.ReLU` and `nn.ReLU6` modules,
    /// including the ReLU6 module inside `h_sigmoid`, as one per output element; it has no hook for
    /// `nn.Hardswish`. fvcore and plain MACs count no activation.
    pub fn cost(self, numel: u64) -> Cost {
        let paper = match self {
            Activation::Relu | Activation::Relu6 | Activation::Hsigmoid => numel,
            Activation::Hswish => 0,
        };
        Cost { paper, fvcore: 0, macs: 0 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paper_counts_relu_modules_only() {
        assert_eq!(Activation::Relu6.cost(10).paper, 10);
        assert_eq!(Activation::Hsigmoid.cost(10).paper, 10);
        assert_eq!(Activation::Hswish.cost(10).paper, 0);
        assert_eq!(Activation::Relu.cost(10).fvcore, 0);
    }
}
