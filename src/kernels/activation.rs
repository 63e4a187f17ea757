//! Pointwise activation functions: ReLU, ReLU6, h_sigmoid and h_swish.

/// A pointwise activation function, named as in specs (`relu`, `relu6`, `hsigmoid`, `hswish`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Activation {
    /// `nn.ReLU`.
    Relu,
    /// `nn.ReLU6`.
    Relu6,
    /// TopFormer's `h_sigmoid`: `ReLU6(x + 3) / 6`, a ReLU6 module wrapped in functional arithmetic.
    Hsigmoid,
    /// `nn.Hardswish`: `x · ReLU6(x + 3) / 6`.
    Hswish,
}

impl Activation {
    /// Every activation a spec may name.
    pub const ALL: [Activation; 4] = [Activation::Relu, Activation::Relu6, Activation::Hsigmoid, Activation::Hswish];

    /// Applies the activation to one value.
    #[inline(always)]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            Activation::Relu => x.max(0.0),
            Activation::Relu6 => x.clamp(0.0, 6.0),
            Activation::Hsigmoid => (x + 3.0).clamp(0.0, 6.0) / 6.0,
            Activation::Hswish => x * (x + 3.0).clamp(0.0, 6.0) / 6.0,
        }
    }

    /// Applies the activation in place.
    pub fn apply_slice(self, data: &mut [f32]) {
        for x in data {
            *x = self.apply(*x);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_match_pytorch_definitions() {
        assert_eq!(Activation::Relu.apply(-1.5), 0.0);
        assert_eq!(Activation::Relu6.apply(7.0), 6.0);
        assert_eq!(Activation::Hsigmoid.apply(0.0), 0.5);
        assert_eq!(Activation::Hsigmoid.apply(-4.0), 0.0);
        assert_eq!(Activation::Hswish.apply(1.0), 1.0 * 4.0 / 6.0);
    }
}
