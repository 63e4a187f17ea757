//! 2-D convolution, and the one place where convolution geometry is computed.

use super::Cost;
use super::{nchw, Activation, ParamDecl, Shape};
use crate::kernels::{conv2d, Conv2dDims};

/// `nn.Conv2d` with a square kernel, dilation 1 and zero padding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Conv2d {
    /// Input channels.
    pub in_channels: usize,
    /// Output channels.
    pub out_channels: usize,
    /// Kernel size (square).
    pub kernel: usize,
    /// Stride (both axes).
    pub stride: usize,
    /// Zero padding (both axes).
    pub padding: usize,
    /// Channel groups.
    pub groups: usize,
    /// Whether the conv has a bias.
    pub bias: bool,
}

/// PyTorch's output length of a convolution along one axis (dilation 1), or `None` when the padded
/// input is smaller than the kernel.
pub fn conv_output_len(input: usize, kernel: usize, stride: usize, padding: usize) -> Option<usize> {
    let padded = input + 2 * padding;
    (padded >= kernel && stride > 0).then(|| (padded - kernel) / stride + 1)
}

impl Conv2d {
    /// Whether every input channel has its own filter (groups = in = out).
    pub fn is_depthwise(&self) -> bool {
        self.groups > 1 && self.groups == self.in_channels && self.groups == self.out_channels
    }

    /// Output shape for an NCHW input.
    pub fn infer_shape(&self, input: &Shape) -> Result<Shape, String> {
        let (n, c, h, w) = nchw(input)?;
        if c != self.in_channels {
            return Err(format!("expects {} input channels, got {c}", self.in_channels));
        }
        if self.groups == 0 || !c.is_multiple_of(self.groups) || !self.out_channels.is_multiple_of(self.groups) {
            return Err(format!(
                "groups={} must divide in_channels={c} and out_channels={}",
                self.groups, self.out_channels
            ));
        }
        let out = |len| conv_output_len(len, self.kernel, self.stride, self.padding);
        match (out(h), out(w)) {
            (Some(oh), Some(ow)) => Ok(vec![n, self.out_channels, oh, ow]),
            _ => Err(format!(
                "input {h}x{w} is smaller than the {}x{} kernel after padding {}",
                self.kernel, self.kernel, self.padding
            )),
        }
    }

    /// `weight` [out, in/groups, k, k] and, with a bias, `bias` [out].
    pub fn params(&self) -> Vec<ParamDecl> {
        let mut params = vec![ParamDecl::learnable(
            "weight",
            vec![self.out_channels, self.in_channels / self.groups, self.kernel, self.kernel],
        )];
        if self.bias {
            params.push(ParamDecl::learnable("bias", vec![self.out_channels]));
        }
        params
    }

    /// Multiply-accumulates per output element.
    pub fn macs_per_output(&self) -> u64 {
        (self.kernel * self.kernel * (self.in_channels / self.groups)) as u64
    }

    /// MACs = N·Ho·Wo·k²·(Cin/groups)·Cout under every convention; mmcv (`paper`) adds N·Cout·Ho·Wo for a bias.
    pub fn cost(&self, output: &Shape) -> Cost {
        let out_elems = super::numel(output);
        let macs = out_elems * self.macs_per_output();
        let bias = if self.bias { out_elems } else { 0 };
        Cost { paper: macs + bias, fvcore: macs, macs }
    }
}

impl Conv2d {
    /// The kernel's view of this conv on `input` → `output` shapes (NCHW, batch 1).
    pub fn dims(&self, input: &Shape, output: &Shape) -> Conv2dDims {
        Conv2dDims {
            in_channels: self.in_channels,
            in_h: input[2],
            in_w: input[3],
            out_channels: self.out_channels,
            kernel_h: self.kernel,
            kernel_w: self.kernel,
            stride_h: self.stride,
            stride_w: self.stride,
            pad_h: self.padding,
            pad_w: self.padding,
            groups: self.groups,
            out_h: output[2],
            out_w: output[3],
        }
    }

    /// `out = act(conv(x) + bias)` with `params` = [weight] or [weight, bias] (a folded BatchNorm supplies the
    /// bias of a bias-free conv). Returns the MACs performed.
    pub fn forward(
        &self,
        x: &[f32],
        input: &Shape,
        output: &Shape,
        params: &[&[f32]],
        act: Option<Activation>,
        out: &mut [f32],
    ) -> u64 {
        conv2d(x, params[0], params.get(1).copied(), &self.dims(input, output), act, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conv(cin: usize, cout: usize, k: usize, s: usize, g: usize, bias: bool) -> Conv2d {
        Conv2d { in_channels: cin, out_channels: cout, kernel: k, stride: s, padding: k / 2, groups: g, bias }
    }

    #[test]
    fn output_size_follows_pytorch_for_odd_sizes() {
        assert_eq!(conv_output_len(255, 3, 2, 1), Some(128));
        assert_eq!(conv_output_len(1, 5, 2, 2), Some(1));
        assert_eq!(conv_output_len(7, 3, 1, 1), Some(7));
        assert_eq!(conv_output_len(2, 5, 1, 0), None);
        let stem = conv(3, 16, 3, 2, 1, false);
        assert_eq!(stem.infer_shape(&vec![1, 3, 333, 250]).unwrap(), vec![1, 16, 167, 125]);
    }

    #[test]
    fn rejects_channel_and_group_mismatch() {
        assert!(conv(3, 16, 3, 2, 1, false).infer_shape(&vec![1, 4, 8, 8]).unwrap_err().contains("3 input channels"));
        assert!(conv(6, 4, 1, 1, 4, false).infer_shape(&vec![1, 6, 8, 8]).is_err());
    }

    #[test]
    fn params_and_cost_of_depthwise_with_bias() {
        let dw = conv(64, 64, 3, 1, 64, true);
        assert!(dw.is_depthwise());
        let shapes: Vec<_> = dw.params().iter().map(|p| p.shape.clone()).collect();
        assert_eq!(shapes, vec![vec![64, 1, 3, 3], vec![64]]);
        let cost = dw.cost(&vec![1, 64, 10, 10]);
        assert_eq!(cost.macs, 6400 * 9);
        assert_eq!(cost.paper, 6400 * 9 + 6400);
        assert_eq!(cost.fvcore, cost.macs);
    }
}
