//! The forward pass: the compiled graph executed node by node, with BatchNorm folded into convs,
//! activations fused into their output pass, buffers recycled as soon as their last reader has run,
//! and the multiply-accumulates each node really performed counted.

use super::params::NodeParams;
use super::plan::{Plan, PlanStep, StepKind};
use crate::error::{Error, Result};
use crate::graph::Graph;
use crate::kernels;
use crate::ops::{numel, resize, Activation, Conv2d, ForwardArgs, Op};
use petgraph::graph::NodeIndex;
use rayon::prelude::*;
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// A conv with the BatchNorm that alone reads it folded into its weights and the activation that alone reads
/// that fused into its output pass.
struct ConvChain {
    /// The conv.
    conv: Conv2d,
    /// Weight and bias (zeros when the conv has none and no BatchNorm follows).
    params: Vec<Vec<f32>>,
    /// The fused activation.
    act: Option<Activation>,
}

impl ConvChain {
    /// The chain as a fused kernel's operand, with its dimensions `dims`.
    fn layer<'a>(&'a self, dims: &'a kernels::Conv2dDims) -> kernels::ConvLayer<'a> {
        kernels::ConvLayer { dims, weight: &self.params[0], bias: &self.params[1], act: self.act }
    }
}

/// What a step of the plan does, with its bound params.
enum Work {
    /// Runs a conv chain.
    Conv(ConvChain),
    /// An inverted-residual block fused into one kernel: its optional expand chain, its depthwise chain and its
    /// optional projection chain (the residual add, when fused, has no params).
    InvertedResidual {
        /// The pointwise expand.
        expand: Option<ConvChain>,
        /// The depthwise conv.
        depthwise: ConvChain,
        /// The pointwise projection.
        project: Option<ConvChain>,
    },
    /// Runs the node's op with its float params.
    Op(Vec<Vec<f32>>),
    /// `other + resize(x)`, accumulated straight into the add's other operand.
    ResizeAdd,
}

/// The dims of a fused inverted-residual step: its expand (if any), depthwise conv and projection (if any).
type BlockDims = (Option<kernels::Conv2dDims>, kernels::Conv2dDims, Option<kernels::Conv2dDims>);

/// The [`BlockDims`] of `step`, bound to `work`; `None` for a step that is not a fused inverted-residual block.
fn block_dims(g: &Graph, step: &PlanStep, work: &Work) -> Option<BlockDims> {
    let (
        Work::InvertedResidual { expand, depthwise, project },
        StepKind::InvertedResidual { depthwise_at, project_at, .. },
    ) = (work, &step.kind)
    else {
        return None;
    };
    let shape = |i: usize| &g.node(step.nodes[i]).shape;
    let input_shape = &g.node(g.node(step.nodes[0]).inputs[0]).shape;
    let expand_dims = expand.as_ref().map(|e| e.conv.dims(input_shape, shape(0)));
    let dw_input = if expand.is_some() { shape(0) } else { input_shape };
    let dw_dims = depthwise.conv.dims(dw_input, shape(*depthwise_at));
    let project_dims = project.as_ref().zip(*project_at).map(|(p, at)| p.conv.dims(shape(*depthwise_at), shape(at)));
    Some((expand_dims, dw_dims, project_dims))
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
    /// The high-water mark of live activation bytes (f32 node outputs held between steps, the input and kept
    /// outputs included), measured from the buffers the run actually held after each step's output was placed.
    pub peak_activation_bytes: u64,
    /// The node whose step reached that mark first.
    pub peak_at: NodeIndex,
}

/// An executable form of a graph with bound weights.
pub struct Executor<'g> {
    graph: &'g Graph,
    plan: Plan,
    work: Vec<Work>,
    pool: rayon::ThreadPool,
    /// Buffers kept between runs, so repeated runs neither allocate nor fault in fresh pages.
    spare: std::sync::Mutex<Vec<Buffer>>,
    /// A vector for the logits a first run hands back, written when the executor is created (later runs
    /// allocate theirs, from memory the allocator has by then).
    first_output: std::sync::Mutex<Option<Vec<f32>>>,
}

/// Values per parallel piece when the executor first writes its buffers (64 KB).
const PAGE_WRITE_CHUNK: usize = 16 * 1024;

/// Most worker threads an executor takes: far beyond the cores toparch targets (a larger pool only stalls).
pub const MAX_THREADS: usize = 1024;

/// Refuses a worker-thread count outside 1 to [`MAX_THREADS`], naming the `--threads` flag.
pub fn check_threads(threads: usize) -> Result<()> {
    if threads == 0 || threads > MAX_THREADS {
        return Err(Error::input(format!("--threads {threads}: must be from 1 to {MAX_THREADS}")));
    }
    Ok(())
}

impl<'g> Executor<'g> {
    /// Plans `graph` with `params` for `threads` worker threads (1 to [`MAX_THREADS`]).
    pub fn new(graph: &'g Graph, params: NodeParams, threads: usize) -> Result<Self> {
        check_threads(threads)?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(threads.max(1))
            .build()
            .map_err(|e| Error::input(format!("cannot start {threads} threads: {e}")))?;
        let plan = Plan::new(graph);
        let work = bind(graph, &plan, params);
        let first_output = graph.tap_node("logits").map(|logits| written(numel(&graph.node(logits).shape) as usize));
        let first_output = std::sync::Mutex::new(first_output);
        let exec = Executor { graph, plan, work, pool, spare: Default::default(), first_output };
        exec.fault_in_buffers();
        // The GEMMs that pack their `B` are 1×1 convs (alone or in fused blocks): their depth is the input channels.
        let gemm_depth = graph
            .nodes()
            .filter_map(|(_, n)| match &n.op {
                Op::Conv2d(c) if c.kernel == 1 && c.groups == 1 => Some(c.in_channels),
                _ => None,
            })
            .max()
            .unwrap_or(0);
        // The largest input a fused pair transposes to run channels-last.
        let transposed = (exec.plan.steps.iter().zip(&exec.work))
            .filter_map(|(step, work)| match block_dims(graph, step, work) {
                Some((Some(expand), depthwise, None)) => {
                    Some(kernels::channels_last_input_len(&expand, &depthwise, threads))
                }
                _ => None,
            })
            .max()
            .unwrap_or(0);
        exec.pool.broadcast(|_| kernels::reserve_scratch(gemm_depth, transposed));
        Ok(exec)
    }

    /// Allocates and writes the buffers a run to the logits (the network's output when it has none)
    /// takes, following its schedule without computing anything, and leaves them as spares: the first
    /// run then neither allocates nor faults in fresh pages, like every later one. A run picks from the spares
    /// it starts with, which a first pass (allocating as it goes) does not reproduce, so passes repeat from
    /// the spares until one allocates nothing (two or three). The pages are then written by every thread of
    /// the pool, in parallel.
    fn fault_in_buffers(&self) {
        let g = self.graph;
        let last = g.tap_node("logits").unwrap_or(g.output());
        let schedule = self.plan.schedule(g, last, &[]);
        let mut free = Vec::new();
        loop {
            let mut buffers: Vec<Option<Buffer>> = (0..g.len()).map(|_| None).collect();
            let mut allocated = false;
            // A run reads its input where the caller holds it.
            for scheduled in &schedule.steps {
                let out_index = self.plan.steps[scheduled.step].output();
                let out_len = numel(&g.node(out_index).shape) as usize;
                let reused = scheduled.reuses.and_then(|i| buffers[i.index()].take());
                let out = reused.or_else(|| take_free(&mut free, out_len)).unwrap_or_else(|| {
                    allocated = true;
                    // Allocated zeroed, so no page is touched until the parallel pass below writes them.
                    Buffer { data: vec![0.0; out_len], len: out_len }
                });
                buffers[out_index.index()] = Some(out);
                for i in &scheduled.frees {
                    free.extend(buffers[i.index()].take());
                }
            }
            free.extend(buffers.into_iter().flatten());
            if !allocated {
                break;
            }
        }
        self.pool.install(|| {
            free.par_iter_mut().for_each(|b| b.data.par_chunks_mut(PAGE_WRITE_CHUNK).for_each(|c| c.fill(0.0)))
        });
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = free;
    }

    /// A copy of a kept output: into the vector written at creation when it is the first of its size, so that
    /// a first run faults in no fresh pages for it either.
    fn output_vec(&self, data: &[f32]) -> Vec<f32> {
        // Taken out under the lock, then copied on every thread of the pool (a 150-class map at 64×64 is 2.4 MB)
        // with the lock released: meanwhile those threads may run another run's steps, up to this same call.
        let first = self.first_output.lock().unwrap_or_else(|e| e.into_inner()).take_if(|v| v.len() == data.len());
        match first {
            Some(mut v) => {
                v.par_chunks_mut(PAGE_WRITE_CHUNK)
                    .zip(data.par_chunks(PAGE_WRITE_CHUNK))
                    .for_each(|(v, d)| v.copy_from_slice(d));
                v
            }
            None => {
                let mut v = Vec::with_capacity(data.len());
                v.par_extend(data.par_iter().copied());
                v
            }
        }
    }

    /// The plan it runs.
    pub fn plan(&self) -> &Plan {
        &self.plan
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
        self.pool.install(|| kernels::with_workers_awake(|| self.execute(input, until, keep)))
    }

    fn execute(&self, input: &[f32], until: NodeIndex, keep: &[NodeIndex]) -> Result<RunOutput> {
        let g = self.graph;
        let schedule = self.plan.schedule(g, until, keep);
        let mut buffers = Held::new(g, input);
        let mut free: Vec<Buffer> = std::mem::take(&mut *self.spare.lock().unwrap_or_else(|e| e.into_inner()));
        let mut macs = vec![0u64; g.len()];
        let mut stats = Vec::with_capacity(schedule.steps.len());
        let mut kept = HashMap::new();
        if keep.contains(&g.input()) {
            kept.insert(g.input(), input.to_vec());
        }
        let mut peak = (0u64, g.input());
        for scheduled in &schedule.steps {
            let start = Instant::now();
            let step = &self.plan.steps[scheduled.step];
            let out_index = step.output();
            let out_len = numel(&g.node(out_index).shape) as usize;
            // The buffer the step takes over as its output, when the schedule lets it work in place.
            let mut reused = scheduled.reuses.and_then(|i| buffers.take(i));
            let first = g.node(step.nodes[0]);
            let performed = match &self.work[scheduled.step] {
                Work::ResizeAdd => {
                    let other = step.reads[1];
                    let mut out = match reused.take() {
                        Some(buf) => buf,
                        None => {
                            let mut buf = take_buffer(&mut free, out_len);
                            buf.copy_from_slice(buffers.get(other));
                            buf
                        }
                    };
                    let source = step.reads[0];
                    let x = buffers.get(source);
                    resize::forward(x, &g.node(source).shape, &first.shape, &mut out, true);
                    buffers.put(out_index, out);
                    0
                }
                Work::Conv(chain) => {
                    let mut out = take_buffer(&mut free, out_len);
                    let x = buffers.get(first.inputs[0]);
                    let params: Vec<&[f32]> = chain.params.iter().map(Vec::as_slice).collect();
                    let shape = &g.node(first.inputs[0]).shape;
                    let performed = chain.conv.forward(x, shape, &first.shape, &params, chain.act, &mut out);
                    buffers.put(out_index, out);
                    performed
                }
                Work::InvertedResidual { expand, depthwise, project } => {
                    let StepKind::InvertedResidual { depthwise_at, project_at, residual } = step.kind else {
                        unreachable!("work is bound from the step's kind")
                    };
                    let x = buffers.get(first.inputs[0]);
                    let (expand_dims, dw_dims, project_dims) =
                        block_dims(g, step, &self.work[scheduled.step]).expect("work is bound from the step's kind");
                    let projection = project
                        .as_ref()
                        .zip(project_dims.as_ref())
                        .map(|(p, dims)| kernels::Projection { layer: p.layer(dims), residual: residual.then_some(x) });
                    let mut out = take_buffer(&mut free, out_len);
                    let dw_layer = depthwise.layer(&dw_dims);
                    let [expand_macs, dw_macs, project_macs] =
                        match (expand.as_ref().zip(expand_dims.as_ref()), projection) {
                            (Some((e, dims)), _) => {
                                kernels::expand_depthwise(x, e.layer(dims), dw_layer, projection, &mut out)
                            }
                            (None, Some(projection)) => {
                                let (dw_macs, project_macs) =
                                    kernels::depthwise_project(x, dw_layer, projection, &mut out);
                                [0, dw_macs, project_macs]
                            }
                            (None, None) => unreachable!("a fused block has an expand or a projection"),
                        };
                    buffers.put(out_index, out);
                    // The step's first node (the expand, else the depthwise conv) gets what this arm returns.
                    macs[step.nodes[depthwise_at].index()] = dw_macs;
                    if let Some(at) = project_at {
                        macs[step.nodes[at].index()] = project_macs;
                    }
                    if expand.is_some() {
                        expand_macs
                    } else {
                        dw_macs
                    }
                }
                Work::Op(params) => {
                    let shapes: Vec<_> = first.inputs.iter().map(|i| &g.node(*i).shape).collect();
                    let param_refs: Vec<&[f32]> = params.iter().map(Vec::as_slice).collect();
                    let in_place = reused.is_some();
                    let mut out = reused.take().unwrap_or_else(|| take_buffer(&mut free, out_len));
                    let inputs: Vec<&[f32]> = first.inputs.iter().map(|&i| buffers.get(i)).collect();
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
                    buffers.put(out_index, out);
                    performed
                }
            };
            macs[step.nodes[0].index()] = performed;
            // Every buffer the run holds now: the step's inputs are still there, its output has been placed.
            let live = buffers.live_bytes();
            if live > peak.0 {
                peak = (live, out_index);
            }
            for &i in &scheduled.frees {
                free.extend(buffers.release(i));
            }
            if keep.contains(&out_index) {
                kept.insert(out_index, self.output_vec(buffers.get(out_index)));
            }
            stats.push(StepStat { nodes: step.nodes.clone(), time: start.elapsed(), macs: performed });
        }
        free.extend(buffers.held.into_iter().flatten());
        *self.spare.lock().unwrap_or_else(|e| e.into_inner()) = free;
        Ok(RunOutput { kept, macs, steps: stats, peak_activation_bytes: peak.0, peak_at: peak.1 })
    }
}

/// The node outputs a run holds: buffers of the executor, and the caller's input, read where it is.
struct Held<'a> {
    input: &'a [f32],
    input_node: NodeIndex,
    /// Whether the input is still read by a later step (it counts as live until then).
    input_live: bool,
    held: Vec<Option<Buffer>>,
}

impl<'a> Held<'a> {
    fn new(graph: &Graph, input: &'a [f32]) -> Self {
        Held { input, input_node: graph.input(), input_live: true, held: (0..graph.len()).map(|_| None).collect() }
    }

    /// The output of node `i` (empty if it is not held).
    fn get(&self, i: NodeIndex) -> &[f32] {
        if i == self.input_node {
            return self.input;
        }
        self.held[i.index()].as_deref().unwrap_or_default()
    }

    /// The buffer of node `i`, taken over by a step that works in place (never the caller's input).
    fn take(&mut self, i: NodeIndex) -> Option<Buffer> {
        self.held[i.index()].take()
    }

    /// Holds `buffer` as the output of node `i`.
    fn put(&mut self, i: NodeIndex, buffer: Buffer) {
        self.held[i.index()] = Some(buffer);
    }

    /// Releases the output of node `i`, returning its buffer (none for the input).
    fn release(&mut self, i: NodeIndex) -> Option<Buffer> {
        if i == self.input_node {
            self.input_live = false;
        }
        self.held[i.index()].take()
    }

    /// Bytes of every output held, the input included while it is live.
    fn live_bytes(&self) -> u64 {
        let input = if self.input_live { 4 * self.input.len() as u64 } else { 0 };
        input + self.held.iter().flatten().map(|b| 4 * b.len() as u64).sum::<u64>()
    }
}

/// An activation buffer: `len` values in use out of `data`, which is initialised in full, so that handing it out
/// again at another length writes nothing (resizing a `Vec` up to a length it once had would fill the tail
/// again on every run).
struct Buffer {
    data: Vec<f32>,
    len: usize,
}

impl std::ops::Deref for Buffer {
    type Target = [f32];
    fn deref(&self) -> &[f32] {
        &self.data[..self.len]
    }
}

impl std::ops::DerefMut for Buffer {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.data[..self.len]
    }
}

/// A buffer of `len` values with unspecified contents: the smallest free one that is large enough, else new.
fn take_buffer(free: &mut Vec<Buffer>, len: usize) -> Buffer {
    take_free(free, len).unwrap_or_else(|| Buffer { data: written(len), len })
}

/// `len` zeros, written rather than allocated zeroed (which maps untouched pages), so the pages are faulted in now.
fn written(len: usize) -> Vec<f32> {
    let mut data = Vec::with_capacity(len);
    data.resize(len, 0.0);
    data
}

/// The smallest free buffer that holds `len` values, handed out at that length.
fn take_free(free: &mut Vec<Buffer>, len: usize) -> Option<Buffer> {
    let best = free.iter().enumerate().filter(|(_, b)| b.data.len() >= len).min_by_key(|(_, b)| b.data.len());
    let i = best.map(|(i, _)| i)?;
    Some(Buffer { len, ..free.swap_remove(i) })
}

/// Binds `params` to the plan's steps: BatchNorms folded into their convs, activations fused.
fn bind(graph: &Graph, plan: &Plan, NodeParams(mut params): NodeParams) -> Vec<Work> {
    let chain = |params: &mut Vec<Vec<Vec<f32>>>, nodes: &[NodeIndex]| {
        let Op::Conv2d(conv) = &graph.node(nodes[0]).op else { unreachable!("a conv chain starts with its conv") };
        let mut weights = std::mem::take(&mut params[nodes[0].index()]);
        if weights.len() == 1 {
            weights.push(vec![0.0; graph.node(nodes[0]).shape[1]]);
        }
        let mut act = None;
        for &n in &nodes[1..] {
            match &graph.node(n).op {
                Op::BatchNorm(bn) => {
                    let bn_params = std::mem::take(&mut params[n.index()]);
                    let refs: Vec<&[f32]> = bn_params.iter().map(Vec::as_slice).collect();
                    let (w, b) = bn.fold_into(&weights[0], Some(&weights[1]), &refs);
                    weights = vec![w, b];
                }
                Op::Activation(a) => act = Some(*a),
                _ => unreachable!("a conv chain holds a conv, a BatchNorm and an activation"),
            }
        }
        ConvChain { conv: conv.clone(), params: weights, act }
    };
    let mut work = Vec::with_capacity(plan.steps.len());
    for step in &plan.steps {
        work.push(match step.kind {
            StepKind::Conv => Work::Conv(chain(&mut params, &step.nodes)),
            StepKind::InvertedResidual { depthwise_at, project_at, residual } => {
                let end = step.nodes.len() - usize::from(residual);
                let project_start = project_at.unwrap_or(end);
                let (expand, dw) = (&step.nodes[..depthwise_at], &step.nodes[depthwise_at..project_start]);
                let project = &step.nodes[project_start..end];
                Work::InvertedResidual {
                    expand: (!expand.is_empty()).then(|| chain(&mut params, expand)),
                    depthwise: chain(&mut params, dw),
                    project: (!project.is_empty()).then(|| chain(&mut params, project)),
                }
            }
            StepKind::ResizeAdd => Work::ResizeAdd,
            StepKind::Op => Work::Op(std::mem::take(&mut params[step.nodes[0].index()])),
        });
    }
    work
}
