//! The executor's plan: which nodes run together as one step, in which order, and which buffers each step
//! reads, reuses in place and frees. A pure function of the graph (and, for a run, of where it stops and
//! what it keeps), read both by the executor and by the memory and latency models, so fusion and lifetime
//! rules live in one place.

use crate::graph::Graph;
use crate::kernels;
use crate::ops::{numel, Conv2d, Elementwise, Op};
use petgraph::graph::NodeIndex;

/// What a step does; the memory and latency models key their rules by it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StepKind {
    /// A conv with the BatchNorm that alone reads it folded in and the activation that alone reads that fused.
    Conv,
    /// Convs of a MobileNetV2 inverted-residual block fused into one kernel that works in bands of rows, so the
    /// maps inside the block stay in cache: an optional pointwise expand chain (`nodes[..depthwise_at]`), the
    /// depthwise chain that alone reads it, and an optional pointwise projection chain that alone reads that
    /// (from `nodes[project_at]`), with, when `residual`, the add that alone reads the projection and adds the
    /// block's input as the step's last node. At least one of the expand and the projection is present.
    InvertedResidual {
        /// Index in the step's nodes where the depthwise chain starts (0 without an expand).
        depthwise_at: usize,
        /// Index in the step's nodes where the projection chain starts, if one is fused.
        project_at: Option<usize>,
        /// Whether the residual add is fused too.
        residual: bool,
    },
    /// One node's op.
    Op,
    /// `other + resize(x)`: a bilinear resize whose only reader is an add, run at the add's place and
    /// accumulated straight into the add's other operand (`reads[1]`).
    ResizeAdd,
}

/// One unit of execution: a node, or a few nodes fused.
#[derive(Clone, Debug)]
pub struct PlanStep {
    /// What it does.
    pub kind: StepKind,
    /// The nodes it covers; the last one's output is produced.
    pub nodes: Vec<NodeIndex>,
    /// The nodes whose outputs it reads.
    pub reads: Vec<NodeIndex>,
}

impl PlanStep {
    /// The node whose output the step produces.
    pub fn output(&self) -> NodeIndex {
        *self.nodes.last().expect("a step covers at least one node")
    }

    /// The input whose buffer the step may take over as its output when nothing reads it later: the add's
    /// other operand of a resize+add, the first input of an op that works in place.
    fn reusable_input(&self, graph: &Graph) -> Option<NodeIndex> {
        match self.kind {
            StepKind::ResizeAdd => Some(self.reads[1]),
            StepKind::Op if graph.node(self.nodes[0]).op.works_in_place() => Some(self.reads[0]),
            _ => None,
        }
    }
}

/// The steps of a graph in execution order.
#[derive(Clone, Debug)]
pub struct Plan {
    /// Steps in execution order.
    pub steps: Vec<PlanStep>,
}

impl Plan {
    /// Groups nodes into steps: a conv absorbs the BatchNorm that alone reads it and then the activation that
    /// alone reads that; a pointwise conv chain, the depthwise chain that alone reads it and the projection
    /// chain that alone reads that (with the residual add of the block's input that alone reads the projection)
    /// run as one fused kernel, as far as the fused kernels support them ([`StepKind::InvertedResidual`]); a
    /// resize whose only reader is an add runs inside that add. No named output is ever absorbed.
    pub fn new(graph: &Graph) -> Self {
        let mut planner = Planner::new(graph);
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
                PlanStep { kind: StepKind::ResizeAdd, nodes: vec![resize, i], reads: vec![source, other] }
            } else if let Op::Conv2d(conv) = &node.op {
                let mut nodes = planner.conv_chain(i);
                let reads = node.inputs.clone();
                // The chain is an expand with the depthwise conv that reads it, or is that depthwise conv.
                let (depthwise_at, depthwise) = match planner.fusable_depthwise(&nodes, conv) {
                    Some(dw) => (nodes.len(), Some(dw)),
                    None => (0, None),
                };
                if let Some(dw) = depthwise {
                    nodes.extend(planner.conv_chain(dw));
                }
                let project = planner.fusable_projection(&nodes, depthwise_at);
                match project {
                    None if depthwise.is_none() => PlanStep { kind: StepKind::Conv, nodes, reads },
                    _ => {
                        let project_at = project.map(|project| {
                            let at = nodes.len();
                            nodes.extend(planner.conv_chain(project));
                            at
                        });
                        let add = project.and_then(|_| planner.residual_add(&nodes, reads[0]));
                        nodes.extend(add);
                        let kind = StepKind::InvertedResidual { depthwise_at, project_at, residual: add.is_some() };
                        PlanStep { kind, nodes, reads }
                    }
                }
            } else {
                PlanStep { kind: StepKind::Op, nodes: vec![i], reads: node.inputs.clone() }
            };
            steps.push(step);
        }
        Plan { steps }
    }

    /// The buffer lifetimes of a run up to and including node `until` that keeps the outputs of `keep`.
    pub fn schedule(&self, graph: &Graph, until: NodeIndex, keep: &[NodeIndex]) -> Schedule {
        let steps: Vec<usize> = (0..self.steps.len()).filter(|&s| self.steps[s].output() <= until).collect();
        // The position after which each node's buffer is no longer read.
        let mut last_read: Vec<Option<usize>> = vec![None; graph.len()];
        for (position, &s) in steps.iter().enumerate() {
            for &i in &self.steps[s].reads {
                last_read[i.index()] = Some(position);
            }
        }
        let scheduled = steps
            .iter()
            .enumerate()
            .map(|(position, &s)| {
                let step = &self.steps[s];
                let dies_here = |i: NodeIndex| last_read[i.index()] == Some(position) && !keep.contains(&i);
                // The input stays the caller's: no step takes it over.
                let reuses = step.reusable_input(graph).filter(|&i| {
                    i != graph.input() && dies_here(i) && step.reads.iter().filter(|&&r| r == i).count() == 1
                });
                let mut frees: Vec<NodeIndex> = Vec::new();
                for &i in &step.reads {
                    if dies_here(i) && Some(i) != reuses && !frees.contains(&i) {
                        frees.push(i);
                    }
                }
                ScheduledStep { step: s, reuses, frees }
            })
            .collect();
        Schedule { input: graph.input(), steps: scheduled }
    }
}

/// One step of a run with what happens to buffers around it.
#[derive(Clone, Debug)]
pub struct ScheduledStep {
    /// Index of the step in [`Plan::steps`].
    pub step: usize,
    /// The input whose buffer becomes the step's output (in place), if any.
    pub reuses: Option<NodeIndex>,
    /// The buffers released after the step: inputs nothing reads later and that are not kept.
    pub frees: Vec<NodeIndex>,
}

/// The buffer lifetimes of one run: steps in order; the input's buffer exists before the first. Outputs
/// never freed (kept outputs, the last output, outputs nothing reads) live to the end of the run.
#[derive(Clone, Debug)]
pub struct Schedule {
    /// The graph's input node.
    pub input: NodeIndex,
    /// The steps of the run in order.
    pub steps: Vec<ScheduledStep>,
}

/// A buffer of the run: created at one position, released after another, `bytes` of f32 all along.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BufferLife {
    /// f32 bytes.
    pub bytes: u64,
    /// Position (index into [`Schedule::steps`]) of the step that creates it; the input's buffer is live from 0.
    pub first: usize,
    /// Position of the last step during which it exists.
    pub last: usize,
}

impl Schedule {
    /// Every buffer of the run with its lifetime. A buffer taken over in place continues as the taking step's
    /// output, so it stays one buffer. Returns the buffers and, per scheduled step, the buffer holding its output.
    pub fn buffers(&self, plan: &Plan, graph: &Graph) -> (Vec<BufferLife>, Vec<usize>) {
        let end = self.steps.len().saturating_sub(1);
        let bytes = |i: NodeIndex| 4 * numel(&graph.node(i).shape);
        let mut holder: Vec<Option<usize>> = vec![None; graph.len()];
        let mut lives = vec![BufferLife { bytes: bytes(self.input), first: 0, last: end }];
        holder[self.input.index()] = Some(0);
        let mut outputs = Vec::with_capacity(self.steps.len());
        for (position, s) in self.steps.iter().enumerate() {
            let out = plan.steps[s.step].output();
            let buffer = match s.reuses.and_then(|i| holder[i.index()]) {
                Some(b) => b,
                None => {
                    lives.push(BufferLife { bytes: bytes(out), first: position, last: end });
                    lives.len() - 1
                }
            };
            holder[out.index()] = Some(buffer);
            outputs.push(buffer);
            for freed in &s.frees {
                if let Some(b) = holder[freed.index()] {
                    lives[b].last = position;
                }
            }
        }
        (lives, outputs)
    }
}

/// What planning needs to know of the graph.
struct Planner<'g> {
    graph: &'g Graph,
    consumers: Vec<Vec<NodeIndex>>,
    tapped: Vec<NodeIndex>,
    absorbed: Vec<bool>,
}

impl<'g> Planner<'g> {
    fn new(graph: &'g Graph) -> Self {
        let mut consumers: Vec<Vec<NodeIndex>> = vec![Vec::new(); graph.len()];
        for (i, node) in graph.nodes() {
            for input in &node.inputs {
                consumers[input.index()].push(i);
            }
        }
        let tapped = graph.taps().iter().map(|&(_, i)| i).collect();
        Planner { graph, consumers, tapped, absorbed: vec![false; graph.len()] }
    }

    /// The only node that reads `i`, unless `i` is a named output.
    fn sole_reader(&self, i: NodeIndex) -> Option<NodeIndex> {
        match self.consumers[i.index()].as_slice() {
            [only] if !self.tapped.contains(&i) => Some(*only),
            _ => None,
        }
    }

    /// The depthwise conv that alone reads a pointwise chain's output, when the fused kernel supports the pair.
    fn fusable_depthwise(&self, chain: &[NodeIndex], conv: &Conv2d) -> Option<NodeIndex> {
        let reader = self.sole_reader(*chain.last()?)?;
        let Op::Conv2d(dw) = &self.graph.node(reader).op else { return None };
        let input = &self.graph.node(self.graph.node(chain[0]).inputs[0]).shape;
        let hidden = &self.graph.node(chain[0]).shape;
        let expand_dims = conv.dims(input, hidden);
        let dw_dims = dw.dims(hidden, &self.graph.node(reader).shape);
        kernels::supports_expand_depthwise(&expand_dims, &dw_dims).then_some(reader)
    }

    /// The pointwise conv that alone reads the depthwise chain starting at `chain[depthwise_at]` (after the
    /// expand chain before it, if any), when a fused kernel supports the projection after them.
    fn fusable_projection(&self, chain: &[NodeIndex], depthwise_at: usize) -> Option<NodeIndex> {
        let reader = self.sole_reader(*chain.last()?)?;
        let Op::Conv2d(project) = &self.graph.node(reader).op else { return None };
        let Op::Conv2d(dw) = &self.graph.node(chain[depthwise_at]).op else { return None };
        let dims = |at: usize, conv: &Conv2d| {
            conv.dims(&self.graph.node(self.graph.node(chain[at]).inputs[0]).shape, &self.graph.node(chain[at]).shape)
        };
        let dw_dims = dims(depthwise_at, dw);
        let project_dims = project.dims(&self.graph.node(chain[depthwise_at]).shape, &self.graph.node(reader).shape);
        let supported = match &self.graph.node(chain[0]).op {
            Op::Conv2d(expand) if depthwise_at > 0 => {
                kernels::supports_expand_depthwise_project(&dims(0, expand), &dw_dims, &project_dims)
            }
            _ => kernels::supports_depthwise_project(&dw_dims, &project_dims),
        };
        supported.then_some(reader)
    }

    /// The add that alone reads a chain's output and adds `residual`, of the same shape, to it; marked absorbed.
    fn residual_add(&mut self, chain: &[NodeIndex], residual: NodeIndex) -> Option<NodeIndex> {
        let tail = *chain.last()?;
        let add = self.sole_reader(tail)?;
        let node = self.graph.node(add);
        let adds_residual = node.op == Op::Elementwise(Elementwise::Add)
            && (node.inputs[..] == [tail, residual] || node.inputs[..] == [residual, tail])
            && self.graph.node(residual).shape == node.shape
            && self.graph.node(tail).shape == node.shape;
        adds_residual.then(|| {
            self.absorbed[add.index()] = true;
            add
        })
    }

    /// The conv at `i` with the BatchNorm and activation it absorbs, marked absorbed.
    fn conv_chain(&mut self, i: NodeIndex) -> Vec<NodeIndex> {
        let mut nodes = vec![i];
        if let Some(bn) = self.sole_reader(i).filter(|&b| matches!(self.graph.node(b).op, Op::BatchNorm(_))) {
            nodes.push(bn);
        }
        let tail = *nodes.last().expect("the chain holds its conv");
        if let Some(act) = self.sole_reader(tail).filter(|&a| matches!(self.graph.node(a).op, Op::Activation(_))) {
            nodes.push(act);
        }
        for n in &nodes {
            self.absorbed[n.index()] = true;
        }
        nodes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::graph::compile;
    use crate::spec::load_embedded;

    #[test]
    fn every_node_runs_once_and_every_buffer_is_released_once() {
        let graph = compile(&load_embedded("small").unwrap().spec, 97, 131).unwrap();
        let plan = Plan::new(&graph);
        let mut covered: Vec<NodeIndex> = plan.steps.iter().flat_map(|s| s.nodes.iter().copied()).collect();
        covered.sort();
        let all: Vec<NodeIndex> = graph.nodes().skip(1).map(|(i, _)| i).collect();
        assert_eq!(covered, all, "each node in exactly one step");
        let output = graph.output();
        let schedule = plan.schedule(&graph, output, &[output]);
        let mut released: Vec<NodeIndex> = Vec::new();
        for s in &schedule.steps {
            let step = &plan.steps[s.step];
            for &i in s.frees.iter().chain(&s.reuses) {
                assert!(step.reads.contains(&i), "a step releases only what it reads");
                assert!(!released.contains(&i), "{i:?} released twice");
                released.push(i);
            }
        }
        // Everything read is released, except the kept output; nothing else stays.
        let read: std::collections::BTreeSet<NodeIndex> =
            plan.steps.iter().flat_map(|s| s.reads.iter().copied()).collect();
        assert_eq!(released.len(), read.len());
        assert!(!released.contains(&output));
        // In-place reuse happens, and only for buffers of the output's size.
        let reused: Vec<_> =
            schedule.steps.iter().filter_map(|s| s.reuses.map(|i| (i, plan.steps[s.step].output()))).collect();
        assert!(!reused.is_empty());
        for (input, out) in reused {
            assert_eq!(numel(&graph.node(input).shape), numel(&graph.node(out).shape));
        }
    }

    #[test]
    fn inverted_residual_blocks_fuse_as_far_as_the_kernels_allow() {
        let graph = compile(&load_embedded("tiny").unwrap().spec, 512, 512).unwrap();
        let plan = Plan::new(&graph);
        let kind = |first: &str| {
            let step = plan.steps.iter().find(|s| graph.node(s.nodes[0]).name == first).expect(first);
            (step.kind, step.nodes.iter().map(|&n| graph.node(n).name.clone()).collect::<Vec<_>>())
        };
        // The first block (expand ratio 1): depthwise, projection and residual add in one step.
        let (first, nodes) = kind("backbone.tpm.layer1.conv.0.c");
        assert_eq!(first, StepKind::InvertedResidual { depthwise_at: 0, project_at: Some(3), residual: true });
        assert_eq!(nodes.last().unwrap(), "backbone.tpm.layer1.residual");
        // At 256² and 128²: the whole block, with its residual where it has one.
        let whole = |residual| StepKind::InvertedResidual { depthwise_at: 3, project_at: Some(6), residual };
        assert_eq!(kind("backbone.tpm.layer2.conv.0.c").0, whole(false));
        assert_eq!(kind("backbone.tpm.layer3.conv.0.c").0, whole(true));
        // At 16², a split of the rows would recompute too much: expand and depthwise only.
        let small = StepKind::InvertedResidual { depthwise_at: 3, project_at: None, residual: false };
        assert_eq!(kind("backbone.tpm.layer9.conv.0.c").0, small);
    }

    #[test]
    fn keeping_an_output_keeps_its_buffer_alive() {
        let graph = compile(&load_embedded("tiny").unwrap().spec, 64, 64).unwrap();
        let plan = Plan::new(&graph);
        let logits = graph.tap_node("logits").unwrap();
        let tap = graph.tap_node("tpm.out1").unwrap();
        let schedule = plan.schedule(&graph, logits, &[tap]);
        assert!(schedule.steps.iter().all(|s| !s.frees.contains(&tap) && s.reuses != Some(tap)));
        let (lives, outputs) = schedule.buffers(&plan, &graph);
        let position = schedule.steps.iter().position(|s| plan.steps[s.step].output() == tap).unwrap();
        assert_eq!(lives[outputs[position]].last, schedule.steps.len() - 1);
    }
}
