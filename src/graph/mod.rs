//! The layer graph: primitive ops with their shapes, costs and official parameter names.
//!
//! Nodes are added in execution order; each node's output shape and cost are inferred once, when it is
//! added, and every later reader (profiles, reports, the executor) takes them from here.

mod compile;

pub use compile::{compile, compile_batch};

use crate::error::{Error, Result};
use crate::ops::{numel, Cost, Op, ParamDecl, ParamKind, Shape};
use petgraph::graph::{DiGraph, NodeIndex};
use serde::Serialize;

/// Largest tensor the graph accepts (2^36 elements, 256 GiB of f32): with the spec's size limits, every op's
/// cost then fits in 64 bits, and the running total is checked.
pub const MAX_ELEMENTS: u64 = 1 << 36;

/// The top-level part of the network a node belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Stem and MobileNetV2 blocks.
    TokenPyramid,
    /// Pyramid pool aggregation and transformer blocks.
    SemanticsExtractor,
    /// Semantic injection modules.
    Injection,
    /// Segmentation head, including the final resize to the input size.
    Head,
    /// Image classifier.
    Classifier,
}

impl Stage {
    /// The stage's name in tables and JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::TokenPyramid => "token_pyramid",
            Stage::SemanticsExtractor => "semantics_extractor",
            Stage::Injection => "injection",
            Stage::Head => "head",
            Stage::Classifier => "classifier",
        }
    }
}

/// A tensor owned by a node, under its official state_dict name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Param {
    /// Full state_dict name, e.g. `backbone.tpm.layer3.conv.0.c.weight`.
    pub name: String,
    /// Shape.
    pub shape: Vec<usize>,
    /// Learnable parameter or buffer.
    pub kind: ParamKind,
}

/// One primitive op in the graph.
#[derive(Clone, Debug)]
pub struct Node {
    /// Module path (for module ops, the PyTorch one) or a descriptive path for functional ops.
    pub name: String,
    /// The op.
    pub op: Op,
    /// The stage it belongs to.
    pub stage: Stage,
    /// The block (official module path) it belongs to, e.g. `backbone.tpm.layer4`.
    pub block: String,
    /// Input nodes in argument order.
    pub inputs: Vec<NodeIndex>,
    /// Output shape, batch included.
    pub shape: Shape,
    /// Cost under every convention.
    pub cost: Cost,
    /// Tensors it owns.
    pub params: Vec<Param>,
}

impl Node {
    /// Learnable parameter count.
    pub fn learnable_params(&self) -> u64 {
        self.params.iter().filter(|p| p.kind == ParamKind::Learnable).map(|p| numel(&p.shape)).sum()
    }
}

/// A compiled network.
#[derive(Clone, Debug)]
pub struct Graph {
    /// The spec it was compiled from.
    pub spec_name: String,
    graph: DiGraph<Node, usize>,
    scope: (Stage, String),
    taps: Vec<(String, NodeIndex)>,
    total: Cost,
}

impl Graph {
    /// An empty graph whose first node will be the input of `shape`.
    pub fn new(spec_name: &str, input_shape: Shape) -> Self {
        let mut graph = DiGraph::new();
        let input = Node {
            name: "input".into(),
            op: Op::Input,
            stage: Stage::TokenPyramid,
            block: "input".into(),
            inputs: vec![],
            shape: input_shape,
            cost: Cost::default(),
            params: vec![],
        };
        graph.add_node(input);
        let scope = (Stage::TokenPyramid, "input".into());
        Graph { spec_name: spec_name.into(), graph, scope, taps: vec![], total: Cost::default() }
    }

    /// The input node.
    pub fn input(&self) -> NodeIndex {
        NodeIndex::new(0)
    }

    /// Sets the stage and block that following nodes belong to.
    pub fn enter(&mut self, stage: Stage, block: impl Into<String>) {
        self.scope = (stage, block.into());
    }

    /// Adds a node: infers its shape and cost from its inputs, names its params under `name`.
    /// A shape error names the layer.
    pub fn add(&mut self, name: impl Into<String>, op: Op, inputs: &[NodeIndex]) -> Result<NodeIndex> {
        let name = name.into();
        let shapes: Vec<&Shape> = inputs.iter().map(|&i| &self.graph[i].shape).collect();
        let shape = op.infer_shape(&shapes).map_err(|e| Error::input(format!("layer {name}: {e}")))?;
        let elements = shape.iter().try_fold(1u64, |n, &d| n.checked_mul(d as u64)).filter(|&n| n <= MAX_ELEMENTS);
        if elements.is_none() {
            return Err(Error::input(format!("layer {name}: output {shape:?} is larger than {MAX_ELEMENTS} elements")));
        }
        let cost = op.cost(&shapes, &shape);
        self.total = self
            .total
            .checked_add(cost)
            .ok_or_else(|| Error::input(format!("layer {name}: the network's cost no longer fits in 64 bits")))?;
        let params = op
            .params()
            .into_iter()
            .map(|ParamDecl { suffix, shape, kind }| Param { name: format!("{name}.{suffix}"), shape, kind })
            .collect();
        let (stage, block) = self.scope.clone();
        let node = Node { name, op, stage, block, inputs: inputs.to_vec(), shape, cost, params };
        let index = self.graph.add_node(node);
        for (slot, &from) in inputs.iter().enumerate() {
            self.graph.add_edge(from, index, slot);
        }
        Ok(index)
    }

    /// Names an intermediate output (`tpm.out0`, `logits`…) so it can be dumped and compared.
    pub fn tap(&mut self, name: impl Into<String>, node: NodeIndex) {
        self.taps.push((name.into(), node));
    }

    /// Named intermediate outputs in order.
    pub fn taps(&self) -> &[(String, NodeIndex)] {
        &self.taps
    }

    /// The node behind a tap name.
    pub fn tap_node(&self, name: &str) -> Option<NodeIndex> {
        self.taps.iter().find(|(n, _)| n == name).map(|&(_, i)| i)
    }

    /// Nodes in execution order (the order they were added).
    pub fn nodes(&self) -> impl Iterator<Item = (NodeIndex, &Node)> {
        self.graph.node_indices().map(move |i| (i, &self.graph[i]))
    }

    /// Number of nodes.
    pub fn len(&self) -> usize {
        self.graph.node_count()
    }

    /// Whether the graph has only its input.
    pub fn is_empty(&self) -> bool {
        self.graph.node_count() <= 1
    }

    /// The node at `index`.
    pub fn node(&self, index: NodeIndex) -> &Node {
        &self.graph[index]
    }

    /// The last node added: the network's final output.
    pub fn output(&self) -> NodeIndex {
        NodeIndex::new(self.graph.node_count() - 1)
    }

    /// The input shape, batch included.
    pub fn input_shape(&self) -> &Shape {
        &self.graph[self.input()].shape
    }

    /// Total cost of all nodes.
    pub fn total_cost(&self) -> Cost {
        self.total
    }

    /// Total learnable parameters.
    pub fn learnable_params(&self) -> u64 {
        self.nodes().map(|(_, n)| n.learnable_params()).sum()
    }

    /// Every tensor in the graph (parameters and buffers), in node order.
    pub fn params(&self) -> impl Iterator<Item = &Param> {
        self.nodes().flat_map(|(_, n)| n.params.iter())
    }

    /// The graph in Graphviz DOT, one box per op with its shape and cost, clustered by block.
    pub fn to_dot(&self) -> String {
        let mut out = format!("digraph \"{}\" {{\n  rankdir=TB;\n  node [shape=box, fontsize=10];\n", self.spec_name);
        let mut blocks: Vec<&str> = Vec::new();
        for (_, n) in self.nodes() {
            if !blocks.contains(&n.block.as_str()) {
                blocks.push(&n.block);
            }
        }
        for (b, block) in blocks.iter().enumerate() {
            out.push_str(&format!("  subgraph cluster_{b} {{\n    label=\"{block}\";\n"));
            for (i, n) in self.nodes().filter(|(_, n)| n.block == *block) {
                out.push_str(&format!(
                    "    n{} [label=\"{}\\n{}\\n{:?}\\nMACs {}\"];\n",
                    i.index(),
                    n.name,
                    n.op.kind(),
                    n.shape,
                    n.cost.macs
                ));
            }
            out.push_str("  }\n");
        }
        for e in self.graph.edge_indices() {
            if let Some((a, b)) = self.graph.edge_endpoints(e) {
                out.push_str(&format!("  n{} -> n{};\n", a.index(), b.index()));
            }
        }
        out.push_str("}\n");
        out
    }
}
