//! ONNX export of a compiled graph with bound weights.
//!
//! The graph is walked in its (topological) node order and each [`Op`] becomes one or a few ONNX nodes named
//! by its module path; weights become initializers under their official state_dict names. Every op keeps
//! PyTorch's semantics at any input size: bilinear Resize with `half_pixel` coordinates and explicit sizes,
//! adaptive average pooling as AveragePool when the sizes divide and as two MatMuls with constant averaging
//! matrices (PyTorch's overlapping bins) when they do not, h_sigmoid as HardSigmoid(1/6, 0.5).

pub mod proto;

use crate::error::{Error, Result};
use crate::exec::NodeParams;
use crate::graph::{Graph, Node};
use crate::kernels::adaptive_bin;
use crate::ops::{Activation, Elementwise, Op, ParamKind};
use petgraph::graph::NodeIndex;
use proto::{
    AttributeProto, GraphProto, ModelProto, NodeProto, OperatorSetIdProto, TensorProto, ValueInfoProto, FLOAT, INT64,
};

/// Name of the graph input: the normalised image [1, 3, H, W].
pub const INPUT: &str = "image";
/// Name of the float output: logits (or, with [`ExportOptions::with_resize`], logits at the input size).
pub const LOGITS: &str = "logits";
/// Name of the int64 class-map output [1, H, W] written with [`ExportOptions::argmax`].
pub const CLASSES: &str = "classes";

/// The ONNX operator set to target; each comes with the IR version it pairs with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Opset {
    /// Opset 13, IR version 7 (the default: read by every mobile runtime).
    #[value(name = "13")]
    V13,
    /// Opset 17, IR version 8.
    #[value(name = "17")]
    V17,
}

impl Opset {
    /// The opset version.
    pub fn version(self) -> i64 {
        match self {
            Opset::V13 => 13,
            Opset::V17 => 17,
        }
    }

    /// The IR version that pairs with it.
    pub fn ir_version(self) -> i64 {
        match self {
            Opset::V13 => 7,
            Opset::V17 => 8,
        }
    }
}

/// What to export beyond the network itself.
#[derive(Clone, Copy, Debug)]
pub struct ExportOptions {
    /// Target opset.
    pub opset: Opset,
    /// Fold every BatchNorm that alone reads a conv into that conv (in f64).
    pub fold_bn: bool,
    /// Append the final bilinear resize of the logits to the input size (segmentors only).
    pub with_resize: bool,
    /// Append an ArgMax over classes, so the output is an int64 class map (segmentors only).
    pub argmax: bool,
}

impl Default for ExportOptions {
    fn default() -> Self {
        ExportOptions { opset: Opset::V13, fold_bn: false, with_resize: false, argmax: false }
    }
}

/// Builds the ONNX model of `graph` with `params` (as bound for the executor, so `forward` and the exported
/// model compute the same function). Post-processing options on a classifier are an input error.
pub fn export_model(graph: &Graph, params: &NodeParams, options: &ExportOptions) -> Result<ModelProto> {
    let logits = graph.tap_node("logits").unwrap_or(graph.output());
    let is_classifier = logits == graph.output();
    for (flag, set) in [("--argmax", options.argmax), ("--with-resize", options.with_resize)] {
        if set && is_classifier {
            return Err(Error::input(format!(
                "{flag}: {} is a classifier; its output [1, classes] has no spatial map",
                graph.spec_name
            )));
        }
    }
    let until = if options.with_resize { graph.output() } else { logits };
    let mut writer = Writer::new(graph, params, options.fold_bn, until, options.argmax);
    for (index, node) in graph.nodes().take_while(|&(i, _)| i <= until) {
        writer.node(index, node);
    }
    let output = writer.finish_output(until);
    let Writer { nodes, initializers, value_info, .. } = writer;
    let graph_proto = GraphProto {
        node: nodes,
        name: graph.spec_name.clone(),
        initializer: initializers,
        input: vec![ValueInfoProto::tensor(INPUT, FLOAT, graph.input_shape())],
        output: vec![output],
        value_info,
    };
    Ok(ModelProto {
        ir_version: options.opset.ir_version(),
        producer_name: "toparch".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        doc_string: format!("{} exported by toparch", graph.spec_name),
        graph: Some(graph_proto),
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: options.opset.version() }],
    })
}

/// Accumulates the ONNX nodes, initializers and shapes of a graph walk.
struct Writer<'a> {
    graph: &'a Graph,
    params: &'a NodeParams,
    /// For each graph node, the nodes that read it.
    readers: Vec<Vec<NodeIndex>>,
    fold_bn: bool,
    /// The last graph node exported; its value is the model's output unless an ArgMax follows.
    until: NodeIndex,
    argmax: bool,
    /// BatchNorms folded into their conv, whose value the conv's ONNX node produces.
    folded: Vec<bool>,
    nodes: Vec<NodeProto>,
    initializers: Vec<TensorProto>,
    value_info: Vec<ValueInfoProto>,
    /// Whether the shared Clip bounds of ReLU6 have been written.
    relu6_bounds: bool,
}

impl<'a> Writer<'a> {
    fn new(graph: &'a Graph, params: &'a NodeParams, fold_bn: bool, until: NodeIndex, argmax: bool) -> Self {
        let mut readers = vec![Vec::new(); graph.len()];
        for (index, node) in graph.nodes() {
            for &input in &node.inputs {
                readers[input.index()].push(index);
            }
        }
        Writer {
            graph,
            params,
            readers,
            fold_bn,
            until,
            argmax,
            folded: vec![false; graph.len()],
            nodes: Vec::new(),
            initializers: Vec::new(),
            value_info: Vec::new(),
            relu6_bounds: false,
        }
    }

    /// The name of the ONNX value holding graph node `index`'s output.
    fn value(&self, index: NodeIndex) -> String {
        let node = self.graph.node(index);
        match node.op {
            Op::Input => INPUT.into(),
            _ if index == self.until && !self.argmax => LOGITS.into(),
            _ => node.name.clone(),
        }
    }

    fn emit(&mut self, op_type: &str, name: &str, inputs: Vec<String>, output: String, attribute: Vec<AttributeProto>) {
        self.nodes.push(NodeProto {
            input: inputs,
            output: vec![output],
            name: name.into(),
            op_type: op_type.into(),
            attribute,
            domain: String::new(),
        });
    }

    /// Adds an f32 initializer and returns its name.
    fn float_constant(&mut self, name: String, shape: &[usize], data: &[f32]) -> String {
        self.initializers.push(TensorProto::float(&name, shape, data));
        name
    }

    /// Adds a 1-D int64 initializer and returns its name.
    fn int64_constant(&mut self, name: String, data: &[usize]) -> String {
        let data: Vec<i64> = data.iter().map(|&v| v as i64).collect();
        self.initializers.push(TensorProto::int64s(&name, &data));
        name
    }

    /// The node's float tensors as initializers under their official names, in `Op::params` order.
    fn official_params(&mut self, index: NodeIndex, node: &Node) -> Vec<String> {
        let float_params = node.params.iter().filter(|p| p.kind != ParamKind::Counter);
        let data = self.params.of(index.index());
        float_params.zip(data).map(|(p, d)| self.float_constant(p.name.clone(), &p.shape, d)).collect()
    }

    /// The BatchNorm that alone reads conv `index`, when folding.
    fn bn_to_fold(&self, index: NodeIndex) -> Option<NodeIndex> {
        match self.readers[index.index()].as_slice() {
            &[bn] if self.fold_bn && bn <= self.until && matches!(self.graph.node(bn).op, Op::BatchNorm(_)) => Some(bn),
            _ => None,
        }
    }

    /// Writes the ONNX nodes of graph node `index`.
    fn node(&mut self, index: NodeIndex, node: &Node) {
        let inputs: Vec<String> = node.inputs.iter().map(|&i| self.value(i)).collect();
        let x = inputs.first().cloned().unwrap_or_default();
        let mut output = self.value(index);
        let name = node.name.as_str();
        match &node.op {
            Op::Input => return,
            Op::BatchNorm(_) if self.folded[index.index()] => return,
            Op::Conv2d(conv) => {
                let attributes = vec![
                    AttributeProto::ints("dilations", &[1, 1]),
                    AttributeProto::int("group", conv.groups as i64),
                    AttributeProto::ints("kernel_shape", &[conv.kernel, conv.kernel]),
                    AttributeProto::ints("pads", &[conv.padding; 4]),
                    AttributeProto::ints("strides", &[conv.stride, conv.stride]),
                ];
                let weights = match self.bn_to_fold(index) {
                    Some(bn) => {
                        self.folded[bn.index()] = true;
                        output = self.value(bn);
                        self.folded_conv_params(index, node, bn)
                    }
                    None => self.official_params(index, node),
                };
                self.emit("Conv", name, [vec![x], weights].concat(), output.clone(), attributes);
            }
            Op::BatchNorm(bn) => {
                let params = self.official_params(index, node);
                let attributes = vec![AttributeProto::float("epsilon", bn.eps)];
                self.emit("BatchNormalization", name, [vec![x], params].concat(), output.clone(), attributes);
            }
            Op::Activation(act) => self.activation(*act, name, x, output.clone()),
            Op::Elementwise(op) => {
                let op_type = match op {
                    Elementwise::Add => "Add",
                    Elementwise::Mul => "Mul",
                };
                self.emit(op_type, name, inputs, output.clone(), vec![]);
            }
            Op::Concat(_) => self.emit("Concat", name, inputs, output.clone(), vec![AttributeProto::int("axis", 1)]),
            Op::Slice(slice) => {
                let starts = self.int64_constant(format!("{name}.starts"), &[slice.start]);
                let ends = self.int64_constant(format!("{name}.ends"), &[slice.start + slice.len]);
                let axes = self.int64_constant(format!("{name}.axes"), &[1]);
                self.emit("Slice", name, vec![x, starts, ends, axes], output.clone(), vec![]);
            }
            Op::AdaptiveAvgPool(_) => {
                let input_shape = &self.graph.node(node.inputs[0]).shape;
                self.adaptive_pool(
                    name,
                    x,
                    output.clone(),
                    (input_shape[2], input_shape[3]),
                    (node.shape[2], node.shape[3]),
                );
            }
            Op::GlobalAvgPool(_) => {
                let pooled = format!("{name}.pooled");
                self.emit("GlobalAveragePool", name, vec![x], pooled.clone(), vec![]);
                let flatten = format!("{name}.flatten");
                self.emit("Flatten", &flatten, vec![pooled], output.clone(), vec![AttributeProto::int("axis", 1)]);
            }
            Op::Resize(_) => {
                let sizes = self.int64_constant(format!("{name}.sizes"), &node.shape);
                let attributes = vec![
                    AttributeProto::string("coordinate_transformation_mode", "half_pixel"),
                    AttributeProto::string("mode", "linear"),
                ];
                self.emit("Resize", name, vec![x, String::new(), String::new(), sizes], output.clone(), attributes);
            }
            Op::MatMul(op) => {
                let mut operands = Vec::new();
                for ((operand, &source), (transpose, side)) in
                    inputs.into_iter().zip(&node.inputs).zip([(op.trans_a, "a"), (op.trans_b, "b")])
                {
                    operands.push(if transpose {
                        let rank = self.graph.node(source).shape.len();
                        let mut perm: Vec<usize> = (0..rank).collect();
                        perm.swap(rank - 2, rank - 1);
                        let transposed = format!("{name}.transpose_{side}");
                        let attributes = vec![AttributeProto::ints("perm", &perm)];
                        self.emit("Transpose", &transposed, vec![operand], transposed.clone(), attributes);
                        transposed
                    } else {
                        operand
                    });
                }
                self.emit("MatMul", name, operands, output.clone(), vec![]);
            }
            Op::Softmax(_) => {
                self.emit("Softmax", name, vec![x], output.clone(), vec![AttributeProto::int("axis", -1)])
            }
            Op::Reshape(reshape) => {
                let shape = self.int64_constant(format!("{name}.shape"), &reshape.shape);
                self.emit("Reshape", name, vec![x, shape], output.clone(), vec![]);
            }
            Op::Linear(_) => {
                let params = self.official_params(index, node);
                let attributes = vec![AttributeProto::int("transB", 1)];
                self.emit("Gemm", name, [vec![x], params].concat(), output.clone(), attributes);
            }
        }
        if output != LOGITS {
            self.value_info.push(ValueInfoProto::tensor(&output, FLOAT, &node.shape));
        }
    }

    /// Conv weight and bias with the BatchNorm `bn` folded in, under the conv's names (`….weight`, `….bias`),
    /// as mmcv's `fuse_conv_bn` names them.
    fn folded_conv_params(&mut self, conv: NodeIndex, node: &Node, bn: NodeIndex) -> Vec<String> {
        let Op::BatchNorm(norm) = &self.graph.node(bn).op else { unreachable!("bn_to_fold checked the op") };
        let conv_params = self.params.of(conv.index());
        let (weight, bias) = norm.fold_into(conv_params[0], conv_params.get(1).copied(), &self.params.of(bn.index()));
        let weight_shape = &node.params[0].shape;
        let weight = self.float_constant(format!("{}.weight", node.name), weight_shape, &weight);
        let bias = self.float_constant(format!("{}.bias", node.name), &[bias.len()], &bias);
        vec![weight, bias]
    }

    fn activation(&mut self, act: Activation, name: &str, x: String, output: String) {
        // TopFormer's h_sigmoid is ReLU6(x + 3) / 6 = max(0, min(1, x/6 + 0.5)); ONNX's default alpha is 0.2.
        let hard_sigmoid = || vec![AttributeProto::float("alpha", 1.0 / 6.0), AttributeProto::float("beta", 0.5)];
        match act {
            Activation::Relu => self.emit("Relu", name, vec![x], output, vec![]),
            Activation::Relu6 => {
                if !self.relu6_bounds {
                    self.float_constant("relu6.min".into(), &[], &[0.0]);
                    self.float_constant("relu6.max".into(), &[], &[6.0]);
                    self.relu6_bounds = true;
                }
                self.emit("Clip", name, vec![x, "relu6.min".into(), "relu6.max".into()], output, vec![]);
            }
            Activation::Hsigmoid => self.emit("HardSigmoid", name, vec![x], output, hard_sigmoid()),
            Activation::Hswish => {
                let gate = format!("{name}.hard_sigmoid");
                self.emit("HardSigmoid", &gate, vec![x.clone()], gate.clone(), hard_sigmoid());
                self.emit("Mul", name, vec![x, gate], output, vec![]);
            }
        }
    }

    /// PyTorch's `adaptive_avg_pool2d` from `(h, w)` to `(out_h, out_w)`: GlobalAveragePool to 1×1,
    /// AveragePool when both sizes divide, else `A_h · X · A_wᵀ` with constant averaging matrices over
    /// PyTorch's (possibly overlapping) bins, which is exact at any size.
    fn adaptive_pool(
        &mut self,
        name: &str,
        x: String,
        output: String,
        (h, w): (usize, usize),
        (out_h, out_w): (usize, usize),
    ) {
        if (out_h, out_w) == (1, 1) {
            self.emit("GlobalAveragePool", name, vec![x], output, vec![]);
        } else if h.is_multiple_of(out_h) && w.is_multiple_of(out_w) {
            let kernel = [h / out_h, w / out_w];
            let attributes =
                vec![AttributeProto::ints("kernel_shape", &kernel), AttributeProto::ints("strides", &kernel)];
            self.emit("AveragePool", name, vec![x], output, attributes);
        } else {
            let rows = averaging_matrix(h, out_h);
            let rows = self.float_constant(format!("{name}.rows"), &[1, 1, out_h, h], &rows);
            let cols = transpose(&averaging_matrix(w, out_w), out_w, w);
            let cols = self.float_constant(format!("{name}.cols"), &[1, 1, w, out_w], &cols);
            let pooled_rows = format!("{name}.pool_rows");
            self.emit("MatMul", &pooled_rows, vec![rows, x], pooled_rows.clone(), vec![]);
            self.emit("MatMul", name, vec![pooled_rows, cols], output, vec![]);
        }
    }

    /// Appends the ArgMax when asked and returns the model's output description.
    fn finish_output(&mut self, until: NodeIndex) -> ValueInfoProto {
        let shape = &self.graph.node(until).shape;
        if !self.argmax {
            return ValueInfoProto::tensor(LOGITS, FLOAT, shape);
        }
        let attributes = vec![AttributeProto::int("axis", 1), AttributeProto::int("keepdims", 0)];
        self.emit("ArgMax", "argmax", vec![self.value(until)], CLASSES.into(), attributes);
        ValueInfoProto::tensor(CLASSES, INT64, &[shape[0], shape[2], shape[3]])
    }
}

/// The `out_len × in_len` row-major matrix whose row `i` averages PyTorch's adaptive-pool bin `i`.
fn averaging_matrix(in_len: usize, out_len: usize) -> Vec<f32> {
    let mut matrix = vec![0.0; out_len * in_len];
    for (i, row) in matrix.chunks_exact_mut(in_len).enumerate() {
        let (start, end) = adaptive_bin(i, in_len, out_len);
        row[start..end].fill(1.0 / (end - start) as f32);
    }
    matrix
}

/// The transpose of a row-major `rows × cols` matrix.
fn transpose(matrix: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    (0..cols).flat_map(|c| (0..rows).map(move |r| matrix[r * cols + c])).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn averaging_matrices_follow_pytorch_bins() {
        // 3 → 2: bins [0, 2) and [1, 3) overlap on the middle element.
        assert_eq!(averaging_matrix(3, 2), vec![0.5, 0.5, 0.0, 0.0, 0.5, 0.5]);
        // 4 → 2 divides: two disjoint bins.
        assert_eq!(averaging_matrix(4, 2), vec![0.5, 0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]);
        // 5 → 3: [0, 2), [1, 4), [3, 5).
        let third = 1.0 / 3.0;
        assert_eq!(
            averaging_matrix(5, 3),
            vec![0.5, 0.5, 0., 0., 0., 0., third, third, third, 0., 0., 0., 0., 0.5, 0.5]
        );
        assert_eq!(transpose(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], 2, 3), vec![1.0, 4.0, 2.0, 5.0, 3.0, 6.0]);
    }

    #[test]
    fn opsets_pair_with_their_ir_versions() {
        assert_eq!((Opset::V13.version(), Opset::V13.ir_version()), (13, 7));
        assert_eq!((Opset::V17.version(), Opset::V17.ir_version()), (17, 8));
    }
}
