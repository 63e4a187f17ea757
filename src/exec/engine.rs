//! The forward pass: the compiled graph executed node by node, with BatchNorm folded into convs,
//! activations fused into their output pass, buffers recycled as soon as their last reader has run,
//! and the multiply-accumulates each node really performed counted.

use super::params::NodeParams;
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::kernels;
use crate::ops::{numel, resize, Activation, Conv2d, Elementwise, ForwardArgs, Op};
use petgraph::graph::NodeIndex;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A conv with the BatchNorm that alone reads it folded into its weights and the activation that alone reads
/// that fused into its output pass.
struct ConvChain {
    /// The conv.
    conv: Conv2d,
    /// The conv node, then the absorbed BatchNorm and activation nodes.
    nodes: Vec<NodeIndex>,
    /// Weight and bias (zeros when the conv has none and no BatchNorm follows).
    params: Vec<Vec<f32>>,
    /// The fused activation.
    act: Option<Activation>,
}

/// What a step does.
enum Work {
    /// Runs a conv chain.
    Conv(ConvChain),
    /// A pointwise expand chain and the depthwise chain that alone reads it, fused so the expanded map stays in
    /// cache.
    ExpandDepthwise(ConvChain, ConvChain),
    /// Runs the node's op with its float params.
    Op(Vec<Vec<f32>>),
    /// `other + resize(x)`: a bilinear resize whose only reader is an add, run at the add's place and
    /// accumulated straight into the add's other operand.
    ResizeAdd {
        /// The add's other operand.
        other: NodeIndex,
    },
}

/// One unit of execution: a node, or a few nodes fused.
struct Step {
    /// The nodes it covers; the last one's output is produced.
    nodes: Vec<NodeIndex>,
    /// The nodes whose outputs it reads.
    reads: Vec<NodeIndex>,
    /// What it does.
    work: Work,
}

impl Step {
    fn output(&self) -> NodeIndex {
        *self.nodes.last().expect("a step covers at least one node")
    }
}

/// Time and work of one step of a run.
#[derive(Clone, Debug)]
pub struct StepStat {
    /// The nodes the step covered.
    pub nodes: Vec<NodeIndex>,
    /// Wall time.
    pub time: Duration,
    /// Multiply-accumulates performed.
    pub macs: u64,
}

/// What a run produced.
pub struct RunOutput {
    /// Data of every kept node.
    pub kept: HashMap<NodeIndex, Vec<f32>>,
    /// Multiply-accumulates performed per node, by node index.
    pub macs: Vec<u64>,
    /// Per-step time and work, in execution order.
    pub steps: Vec<StepStat>,
}

/// An executable form of a graph with bound weights.
pub struct Executor<'g> {
    graph: &'g Graph,
    steps: Vec<Step>,
    pool: rayon::ThreadPool,
    /// Buffers kept between runs, so repeated runs neither allocate nor fault in fresh pages.
    spare: std::sync::Mutex<Vec<Vec<f32>>>,
}

impl<'g> Executor<'g> {
    /// Plans `graph` with `params` for `threads` worker threads (at least one).
    pub fn new(graph: &'g Graph, params: NodeParams, threads: usize) -> Result<Self> {
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| Error::input(format!("cannot start {threads} threads: {e}")))?;
        Ok(Executor { graph, steps: plan(graph, params), pool, spare: Default::default() })
    }

    /// Runs the graph on `input` (NCHW data of the graph's input shape) up to and including node `until`,
    /// keeping the outputs of `keep` (which must not come after `until`).
    pub fn run(&self, input: &[f32], until: NodeIndex, keep: &[NodeIndex]) -> Result<RunOutput> {
        let expected = numel(self.graph.input_shape()) as usize;
        if input.len() != expected {
            return Err(Error::input(format!(
                "input has {} values, the graph expects {:?} ({expected})",
                input.len(),
                self.graph.input_shape()
            )));
        }
        self.pool.install(|| self.execute(input, until, keep))
    }

    fn execute(&self, input: &[f32], until: NodeIndex, keep: &[NodeIndex]) -> Result<RunOutput> {
        let g = self.graph;
        let steps: Vec<&Step> = self.steps.iter().filter(|s| s.output() <= until).collect();
        // The step after which each node's buffer is no longer read.
        let mut last_read = vec![0usize; g.len()];
        for (s, step) in steps.iter().enumerate() {
            for &i in &step.reads {
                last_read[i.index()] = s;
            }
        }
        let mut buffers: Vec<Option<Vec<f32>>> = vec![None; g.len()];
        buffers[g.input().index()] = Some(input.to_vec());
        let mut free: Vec<Vec<f32>> = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        let mut macs = vec![0u64; g.len()];
        let mut stats = Vec::with_capacity(steps.len());
        let mut kept = HashMap::new();
        if keep.contains(&g.input()) {
            kept.insert(g.input(), input.to_vec());
        }
        for (s, step) in steps.iter().enumerate() {
            let start = Instant::now();
            let out_index = step.output();
            let out_len = numel(&g.node(out_index).shape) as usize;
            // A buffer nothing reads after this step, read once by it, may become the step's output.
            let dying = |i: NodeIndex| {
                last_read[i.index()] == s && !keep.contains(&i) && step.reads.iter().filter(|&&r| r == i).count() == 1
            };
            let first = g.node(step.nodes[0]);
            let performed = match &step.work {
                Work::ResizeAdd { other } => {
                    let mut out = match dying(*other).then(|| buffers[other.index()].take()).flatten() {
                        Some(buf) => buf,
                        None => {
                            let mut buf = take_buffer(&mut free, out_len);
                            buf.copy_from_slice(buffers[other.index()].as_deref().unwrap_or_default());
                            buf
                        }
                    };
                    let source = first.inputs[0];
                    let x = buffers[source.index()].as_deref().unwrap_or_default();
                    resize::forward(x, &g.node(source).shape, &first.shape, &mut out, true);
                    buffers[out_index.index()] = Some(out);
                    0
                }
                Work::Conv(chain) => {
                    let mut out = take_buffer(&mut free, out_len);
                    let x = buffers[first.inputs[0].index()].as_deref().unwrap_or_default();
                    let params: Vec<&[f32]> = chain.params.iter().map(Vec::as_slice).collect();
                    let shape = &g.node(first.inputs[0]).shape;
                    let performed = chain.conv.forward(x, shape, &first.shape, &params, chain.act, &mut out);
                    buffers[out_index.index()] = Some(out);
                    performed
                }
                Work::ExpandDepthwise(expand, dw) => {
                    let mut out = take_buffer(&mut free, out_len);
                    let x = buffers[first.inputs[0].index()].as_deref().unwrap_or_default();
                    let hidden = &g.node(expand.nodes[0]).shape;
                    let expand_dims = expand.conv.dims(&g.node(first.inputs[0]).shape, hidden);
                    let dw_dims = dw.conv.dims(hidden, &g.node(dw.nodes[0]).shape);
                    let (expand_macs, dw_macs) = kernels::expand_depthwise(
                        x,
                        &expand_dims,
                        &expand.params[0],
                        &expand.params[1],
                        expand.act,
                        &dw_dims,
                        &dw.params[0],
                        &dw.params[1],
                        dw.act,
                        &mut out,
                    );
                    buffers[out_index.index()] = Some(out);
                    macs[dw.nodes[0].index()] = dw_macs;
                    expand_macs
                }
                Work::Op(params) => {
                    let shapes: Vec<_> = first.inputs.iter().map(|i| &g.node(*i).shape).collect();
                    let param_refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
                    // An op that can work in place takes over its first input's buffer when it is dying.
                    let in_place = first.op.works_in_place() && dying(first.inputs[0]);
                    let mut out = match in_place.then(|| buffers[first.inputs[0].index()].take()).flatten() {
                        Some(buf) => buf,
                        None => take_buffer(&mut free, out_len),
                    };
                    let inputs: Vec<&[f32]> =
                        first.inputs.iter().map(|i| buffers[i.index()].as_deref().unwrap_or_default()).collect();
                    let args = ForwardArgs {
                        inputs: &inputs,
                        input_shapes: &shapes,
                        output_shape: &first.shape,
                        params: &param_refs,
                    };
                    let performed = if in_place {
                        first.op.forward_in_place(&args, &mut out)
                    } else {
                        first.op.forward(&args, &mut out)
                    };
                    buffers[out_index.index()] = Some(out);
                    performed
                }
            };
            macs[step.nodes[0].index()] = performed;
            for &i in &step.reads {
                if last_read[i.index()] == s && !keep.contains(&i) {
                    free.extend(buffers[i.index()].take());
                }
            }
            if keep.contains(&out_index) {
                kept.insert(out_index, buffers[out_index.index()].clone().unwrap_or_default());
            }
            stats.push(StepStat { nodes: step.nodes.clone(), time: start.elapsed(), macs: performed });
        }
        free.extend(buffers.into_iter().flatten());
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = free;
        Ok(RunOutput { kept, macs, steps: stats })
    }
}

/// A buffer of `len` values with unspecified contents: the smallest free one that is large enough, else new.
fn take_buffer(free: &mut Vec<Vec<f32>>, len: usize) -> Vec<f32> {
    let best =
        free.iter().enumerate().filter(|(_, b)| b.capacity() >= len).min_by_key(|(_, b)| b.capacity()).map(|(i, _)| i);
    let mut buf = match best {
        Some(i) => free.swap_remove(i),
        None => Vec::with_capacity(len),
    };
    // Kernels overwrite their whole output, so stale values may stay; only a grown tail is written.
    if buf.len() > len {
        buf.truncate(len);
    } else {
        buf.resize(len, 0.0);
    }
    buf
}

/// Groups nodes into steps: a conv absorbs the BatchNorm that alone reads it (folded into its weights) and
/// then the activation that alone reads that; a pointwise conv chain and the depthwise chain that alone reads
/// it run as one fused kernel; a resize whose only reader is an add runs inside that add. No named output is
/// ever absorbed.
fn plan(graph: &Graph, params: NodeParams) -> Vec<Step> {
    let mut planner = Planner::new(graph, params);
    let mut steps = Vec::new();
    // The resize each add will accumulate, when that resize is deferred to it.
    let mut deferred_into: Vec<Option<NodeIndex>> = vec![None; graph.len()];
    for (i, node) in graph.nodes() {
        if planner.absorbed[i.index()] || node.op == Op::Input {
            continue;
        }
        if let Op::Resize(_) = node.op {
            let add = planner.sole_reader(i).filter(|&a| graph.node(a).op == Op::Elementwise(Elementwise::Add));
            if let Some(add) = add.filter(|a| deferred_into[a.index()].is_none()) {
                if graph.node(add).inputs.iter().any(|&x| x != i) {
                    deferred_into[add.index()] = Some(i);
                    continue;
                }
            }
        }
        let step = if let Some(resize) = deferred_into[i.index()] {
            let other = node.inputs.iter().copied().find(|&x| x != resize).expect("checked when deferred");
            let source = graph.node(resize).inputs[0];
            Step { nodes: vec![resize, i], reads: vec![source, other], work: Work::ResizeAdd { other } }
        } else if let Op::Conv2d(conv) = &node.op {
            let chain = planner.conv_chain(i, conv.clone());
            let reads = node.inputs.clone();
            match planner.fusable_depthwise(&chain) {
                Some((dw_index, dw_conv)) => {
                    let dw = planner.conv_chain(dw_index, dw_conv);
                    let nodes = chain.nodes.iter().chain(&dw.nodes).copied().collect();
                    Step { nodes, reads, work: Work::ExpandDepthwise(chain, dw) }
                }
                None => Step { nodes: chain.nodes.clone(), reads, work: Work::Conv(chain) },
            }
        } else {
            Step { nodes: vec![i], reads: node.inputs.clone(), work: Work::Op(planner.take_params(i)) }
        };
        steps.push(step);
    }
    steps
}

/// What planning needs to know of the graph, and the params it hands out to steps.
struct Planner<'g> {
    graph: &'g Graph,
    params: Vec<Vec<Vec<f32>>>,
    consumers: Vec<Vec<NodeIndex>>,
    tapped: Vec<NodeIndex>,
    absorbed: Vec<bool>,
}

impl<'g> Planner<'g> {
    fn new(graph: &'g Graph, NodeParams(params): NodeParams) -> Self {
        let mut consumers: Vec<Vec<NodeIndex>> = vec![Vec::new(); graph.len()];
        for (i, node) in graph.nodes() {
            for input in &node.inputs {
                consumers[input.index()].push(i);
            }
        }
        let tapped = graph.taps().iter().map(|&(_, i)| i).collect();
        Planner { graph, params, consumers, tapped, absorbed: vec![false; graph.len()] }
    }

    /// The only node that reads `i`, unless `i` is a named output.
    fn sole_reader(&self, i: NodeIndex) -> Option<NodeIndex> {
        match self.consumers[i.index()].as_slice() {
            [only] if !self.tapped.contains(&i) => Some(*only),
            _ => None,
        }
    }

    fn take_params(&mut self, i: NodeIndex) -> Vec<Vec<f32>> {
        std::mem::take(&mut self.params[i.index()])
    }

    /// The depthwise conv that alone reads a pointwise chain's output, when the fused kernel supports the pair.
    fn fusable_depthwise(&self, chain: &ConvChain) -> Option<(NodeIndex, Conv2d)> {
        let tail = *chain.nodes.last()?;
        let reader = self.sole_reader(tail)?;
        let Op::Conv2d(dw) = &self.graph.node(reader).op else { return None };
        let input = &self.graph.node(self.graph.node(chain.nodes[0]).inputs[0]).shape;
        let hidden = &self.graph.node(chain.nodes[0]).shape;
        let expand_dims = chain.conv.dims(input, hidden);
        let dw_dims = dw.dims(hidden, &self.graph.node(reader).shape);
        kernels::supports_expand_depthwise(&expand_dims, &dw_dims).then(|| (reader, dw.clone()))
    }

    /// The conv at `i` with the BatchNorm and activation it can absorb, marked absorbed.
    fn conv_chain(&mut self, i: NodeIndex, conv: Conv2d) -> ConvChain {
        let mut params = self.take_params(i);
        let channels = self.graph.node(i).shape[1];
        if params.len() == 1 {
            params.push(vec![0.0; channels]);
        }
        let mut chain = ConvChain { conv, nodes: vec![i], params, act: None };
        if let Some(bn_index) = self.sole_reader(i) {
            if let Op::BatchNorm(bn) = &self.graph.node(bn_index).op {
                let bn_params = self.take_params(bn_index);
                let refs: Vec<&[f32]> = bn_params.iter().map(Vec::as_slice).collect();
                let (w, b) = bn.fold_into(&chain.params[0], Some(&chain.params[1]), &refs);
                chain.params = vec![w, b];
                chain.nodes.push(bn_index);
            }
        }
        let tail = *chain.nodes.last().expect("the chain holds its conv");
        if let Some(act_index) = self.sole_reader(tail) {
            if let Op::Activation(a) = self.graph.node(act_index).op {
                chain.act = Some(a);
                chain.nodes.push(act_index);
            }
        }
        for n in &chain.nodes {
            self.absorbed[n.index()] = true;
        }
        chain
    }
}
