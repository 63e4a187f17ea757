//! The closed set of primitive ops a TopFormer graph is built from.
//!
//! Each op lives in its own module with its shape inference, its parameter list, its cost under every
//! counting convention and its forward kernel side by side; [`Op`] dispatches to them.

pub mod activation;
pub mod concat;
pub mod conv;
pub mod cost;
pub mod elementwise;
pub mod linear;
pub mod matmul;
pub mod norm;
pub mod pool;
pub mod reshape;
pub mod resize;
pub mod softmax;

pub use activation::Activation;
pub use concat::{Concat, Slice};
pub use conv::Conv2d;
pub use cost::{Convention, Cost};
pub use elementwise::Elementwise;
pub use linear::Linear;
pub use matmul::MatMul;
pub use norm::BatchNorm;
pub use pool::{AdaptiveAvgPool, GlobalAvgPool};
pub use reshape::Reshape;
pub use resize::Resize;
pub use softmax::Softmax;

/// A tensor shape, batch dimension included (PyTorch order).
pub type Shape = Vec<usize>;

/// Number of elements of a shape.
pub fn numel(shape: &[usize]) -> u64 {
    shape.iter().map(|&d| d as u64).product()
}

/// Whether a parameter is learned or is a buffer (BatchNorm running statistics).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ParamKind {
    /// A learnable parameter (`nn.Parameter`).
    Learnable,
    /// A float buffer such as `running_mean`.
    Buffer,
    /// An integer buffer (`num_batches_tracked`): not needed to run the network.
    Counter,
}

/// One tensor an op owns, named by its suffix in the PyTorch state_dict (`weight`, `bias`, `running_var`…).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParamDecl {
    /// The state_dict suffix after the module path.
    pub suffix: &'static str,
    /// The tensor's shape.
    pub shape: Vec<usize>,
    /// Learnable or buffer.
    pub kind: ParamKind,
}

impl ParamDecl {
    fn learnable(suffix: &'static str, shape: Vec<usize>) -> Self {
        ParamDecl { suffix, shape, kind: ParamKind::Learnable }
    }
}

/// A primitive op of the layer graph.
#[derive(Clone, Debug, PartialEq)]
pub enum Op {
    /// The network input.
    Input,
    /// 2-D convolution (`nn.Conv2d`).
    Conv2d(Conv2d),
    /// Batch normalisation in eval mode (`nn.BatchNorm1d/2d`).
    BatchNorm(BatchNorm),
    /// A pointwise activation module.
    Activation(Activation),
    /// Elementwise add or multiply of two equal shapes.
    Elementwise(Elementwise),
    /// Channel concatenation.
    Concat(Concat),
    /// A channel range of the input (one piece of `Tensor.split`).
    Slice(Slice),
    /// Functional `adaptive_avg_pool2d` to a fixed size.
    AdaptiveAvgPool(AdaptiveAvgPool),
    /// Global average pool module followed by flatten (classifier).
    GlobalAvgPool(GlobalAvgPool),
    /// Functional bilinear resize (`align_corners=False`).
    Resize(Resize),
    /// Batched matrix product of the last two dimensions.
    MatMul(MatMul),
    /// Softmax over the last dimension.
    Softmax(Softmax),
    /// Reshape to a new shape with the same element count.
    Reshape(Reshape),
    /// Fully connected layer (`nn.Linear`).
    Linear(Linear),
}

impl Op {
    /// A short lowercase name of the op kind, for tables and DOT labels.
    pub fn kind(&self) -> &'static str {
        match self {
            Op::Input => "input",
            Op::Conv2d(c) if c.is_depthwise() => "dwconv",
            Op::Conv2d(_) => "conv",
            Op::BatchNorm(_) => "batchnorm",
            Op::Activation(a) => a.name(),
            Op::Elementwise(e) => e.name(),
            Op::Concat(_) => "concat",
            Op::Slice(_) => "split",
            Op::AdaptiveAvgPool(_) => "adaptive_avg_pool",
            Op::GlobalAvgPool(_) => "global_avg_pool",
            Op::Resize(_) => "resize_bilinear",
            Op::MatMul(_) => "matmul",
            Op::Softmax(_) => "softmax",
            Op::Reshape(_) => "reshape",
            Op::Linear(_) => "linear",
        }
    }

    /// Infers the output shape from the input shapes, or says what is wrong with them.
    pub fn infer_shape(&self, inputs: &[&Shape]) -> Result<Shape, String> {
        match self {
            Op::Input => Err("the input node takes no inputs; its shape is given".into()),
            Op::Conv2d(op) => op.infer_shape(one(inputs)?),
            Op::BatchNorm(op) => op.infer_shape(one(inputs)?),
            Op::Activation(_) | Op::Softmax(_) => Ok(one(inputs)?.clone()),
            Op::Elementwise(op) => op.infer_shape(inputs),
            Op::Concat(op) => op.infer_shape(inputs),
            Op::Slice(op) => op.infer_shape(one(inputs)?),
            Op::AdaptiveAvgPool(op) => op.infer_shape(one(inputs)?),
            Op::GlobalAvgPool(op) => op.infer_shape(one(inputs)?),
            Op::Resize(op) => op.infer_shape(one(inputs)?),
            Op::MatMul(op) => op.infer_shape(inputs),
            Op::Reshape(op) => op.infer_shape(one(inputs)?),
            Op::Linear(op) => op.infer_shape(one(inputs)?),
        }
    }

    /// The tensors this op owns, in a fixed order.
    pub fn params(&self) -> Vec<ParamDecl> {
        match self {
            Op::Conv2d(op) => op.params(),
            Op::BatchNorm(op) => op.params(),
            Op::Linear(op) => op.params(),
            _ => Vec::new(),
        }
    }

    /// The op's cost under every convention, from its (already inferred) input and output shapes.
    pub fn cost(&self, inputs: &[&Shape], output: &Shape) -> Cost {
        match self {
            Op::Input | Op::Elementwise(_) | Op::Concat(_) | Op::Slice(_) | Op::Softmax(_) | Op::Reshape(_) => {
                Cost::default()
            }
            Op::Conv2d(op) => op.cost(output),
            Op::BatchNorm(_) => norm::cost(inputs[0]),
            Op::Activation(a) => a.cost(numel(output)),
            Op::AdaptiveAvgPool(_) => pool::adaptive_cost(inputs[0]),
            Op::GlobalAvgPool(_) => pool::global_cost(inputs[0]),
            Op::Resize(_) => resize::cost(output),
            Op::MatMul(op) => op.cost(inputs[0], output),
            Op::Linear(op) => op.cost(inputs[0]),
        }
    }
}

/// What an op's forward kernel reads: its inputs with their shapes, its output shape, and its float tensors
/// in [`Op::params`] order (integer counters left out).
pub struct ForwardArgs<'a> {
    /// Input data, row-major.
    pub inputs: &'a [&'a [f32]],
    /// Input shapes, from the graph.
    pub input_shapes: &'a [&'a Shape],
    /// Output shape, from the graph.
    pub output_shape: &'a Shape,
    /// Float parameters and buffers.
    pub params: &'a [&'a [f32]],
}

impl Op {
    /// Runs the op into `out` (sized to the output shape, fully overwritten) and returns the
    /// multiply-accumulates it performed.
    pub fn forward(&self, args: &ForwardArgs<'_>, out: &mut [f32]) -> u64 {
        let x = args.inputs.first().copied().unwrap_or_default();
        match self {
            Op::Input => {
                out.copy_from_slice(x);
                0
            }
            Op::Conv2d(op) => op.forward(x, args.input_shapes[0], args.output_shape, args.params, None, out),
            Op::BatchNorm(op) => op.forward(x, args.input_shapes[0], args.params, out),
            Op::Activation(a) => {
                out.copy_from_slice(x);
                a.apply_slice(out);
                0
            }
            Op::Elementwise(op) => {
                out.copy_from_slice(x);
                op.apply(out, args.inputs[1]);
                0
            }
            Op::Concat(_) => {
                concat::forward(args.inputs, out);
                0
            }
            Op::Slice(op) => {
                op.forward(x, args.input_shapes[0], out);
                0
            }
            Op::AdaptiveAvgPool(_) => {
                pool::adaptive_forward(x, args.input_shapes[0], args.output_shape, out);
                0
            }
            Op::GlobalAvgPool(_) => {
                pool::global_forward(x, args.input_shapes[0], out);
                0
            }
            Op::Resize(_) => {
                resize::forward(x, args.input_shapes[0], args.output_shape, out, false);
                0
            }
            Op::MatMul(op) => op.forward(args.inputs, args.input_shapes, out),
            Op::Softmax(_) => {
                out.copy_from_slice(x);
                softmax::forward(out, args.output_shape);
                0
            }
            Op::Reshape(_) => {
                out.copy_from_slice(x);
                0
            }
            Op::Linear(op) => op.forward(x, args.params, out),
        }
    }
}

impl Op {
    /// Whether [`Op::forward_in_place`] can run this op over its first input's buffer.
    pub fn works_in_place(&self) -> bool {
        matches!(self, Op::Activation(_) | Op::Elementwise(_) | Op::Softmax(_) | Op::Reshape(_))
    }

    /// Runs the op over its first input's buffer `data` in place (the executor does this when nothing reads
    /// the buffer later). Only for ops that [`Op::works_in_place`]; others leave `data` as it is.
    pub fn forward_in_place(&self, args: &ForwardArgs<'_>, data: &mut [f32]) -> u64 {
        match self {
            Op::Activation(a) => a.apply_slice(data),
            Op::Elementwise(op) => op.apply(data, args.inputs[1]),
            Op::Softmax(_) => softmax::forward(data, args.output_shape),
            _ => {}
        }
        0
    }
}

fn one<'a>(inputs: &[&'a Shape]) -> Result<&'a Shape, String> {
    match inputs {
        [single] => Ok(single),
        _ => Err(format!("expects one input, got {}", inputs.len())),
    }
}

/// Checks that a shape is an NCHW feature map and returns (N, C, H, W).
pub fn nchw(shape: &Shape) -> Result<(usize, usize, usize, usize), String> {
    match shape.as_slice() {
        &[n, c, h, w] => Ok((n, c, h, w)),
        _ => Err(format!("expects an NCHW input, got {shape:?}")),
    }
}
