//! Compiles a spec into the layer graph, module by module as the official TopFormer code builds it,
//! naming every parameter as the official state_dict does.

use super::{Graph, Stage};
use crate::error::{Error, Result};
use crate::ops::{
    Activation, AdaptiveAvgPool, BatchNorm, Concat, Conv2d, Elementwise, GlobalAvgPool, Linear, MatMul, Op, Reshape,
    Resize, Slice, Softmax,
};
use crate::spec::{make_divisible, round_half_even, FuseConv, InjectionType, LoadedSpec, MbBlock, Spec, Task};
use petgraph::graph::NodeIndex;

impl LoadedSpec {
    /// Compiles the spec for an `height`×`width` input; an error names the spec's file.
    pub fn compile(&self, height: usize, width: usize) -> Result<Graph> {
        self.compile_batch(1, height, width)
    }

    /// Compiles the spec for a batch of `batch` `height`×`width` inputs; an error names the spec's file.
    pub fn compile_batch(&self, batch: usize, height: usize, width: usize) -> Result<Graph> {
        compile_batch(&self.spec, batch, height, width).map_err(|e| Error::input(format!("{}: {e}", self.origin)))
    }
}

/// Compiles `spec` for a batch-1 RGB input of `height`×`width`.
pub fn compile(spec: &Spec, height: usize, width: usize) -> Result<Graph> {
    compile_batch(spec, 1, height, width)
}

/// Compiles `spec` for a batch of `batch` RGB inputs of `height`×`width`: every shape carries the batch, so
/// counts and activation sizes follow PyTorch's arithmetic for it.
pub fn compile_batch(spec: &Spec, batch: usize, height: usize, width: usize) -> Result<Graph> {
    let mut b = Builder { g: Graph::new(&spec.name, vec![batch, 3, height, width]) };
    // Segmentors wrap the backbone (`backbone.`); the classification checkpoints name it at the root.
    let (backbone, head) = match spec.task() {
        Task::Segmentation => ("backbone.", "decode_head"),
        Task::Classification => ("", "head"),
    };
    let pyramid = b.token_pyramid(spec, backbone)?;
    let tokens = b.semantics_extractor(spec, backbone, &pyramid)?;
    match (&spec.injection, &spec.head, &spec.classifier) {
        (Some(_), Some(_), _) => {
            let injected = b.injection(spec, backbone, &pyramid, tokens)?;
            b.segmentation_head(spec, head, &injected)?;
        }
        _ => b.classifier(spec, head, tokens)?,
    }
    Ok(b.g)
}

struct Builder {
    g: Graph,
}

impl Builder {
    fn channels(&self, x: NodeIndex) -> usize {
        self.g.node(x).shape[1]
    }

    fn spatial(&self, x: NodeIndex) -> (usize, usize) {
        let s = &self.g.node(x).shape;
        (s[2], s[3])
    }

    /// A `kernel`×`kernel` conv from `x`'s channels to `out`, padded by kernel/2 as every TopFormer conv is.
    fn conv(
        &mut self,
        name: &str,
        x: NodeIndex,
        out: usize,
        (kernel, stride, groups): (usize, usize, usize),
        bias: bool,
    ) -> Result<NodeIndex> {
        let conv = Conv2d {
            in_channels: self.channels(x),
            out_channels: out,
            kernel,
            stride,
            padding: kernel / 2,
            groups,
            bias,
        };
        self.g.add(name, Op::Conv2d(conv), &[x])
    }

    fn batch_norm(&mut self, name: &str, x: NodeIndex) -> Result<NodeIndex> {
        let channels = self.channels(x);
        self.g.add(name, Op::BatchNorm(BatchNorm::new(channels)), &[x])
    }

    fn act(&mut self, name: &str, act: Activation, x: NodeIndex) -> Result<NodeIndex> {
        self.g.add(name, Op::Activation(act), &[x])
    }

    fn binary(&mut self, name: &str, op: Elementwise, a: NodeIndex, b: NodeIndex) -> Result<NodeIndex> {
        self.g.add(name, Op::Elementwise(op), &[a, b])
    }

    fn resize_to(&mut self, name: &str, x: NodeIndex, (out_h, out_w): (usize, usize)) -> Result<NodeIndex> {
        self.g.add(name, Op::Resize(Resize { out_h, out_w }), &[x])
    }

    /// TopFormer's `Conv2d_BN`: `{path}.c` (no bias) then `{path}.bn`.
    fn conv_bn(
        &mut self,
        path: &str,
        x: NodeIndex,
        out: usize,
        kernel: usize,
        stride: usize,
        groups: usize,
    ) -> Result<NodeIndex> {
        let c = self.conv(&format!("{path}.c"), x, out, (kernel, stride, groups), false)?;
        self.batch_norm(&format!("{path}.bn"), c)
    }

    /// mmcv's 1×1 `ConvModule`: `{path}.conv` (biased only without a norm), `{path}.bn`, `{path}.activate`.
    fn conv_module(
        &mut self,
        path: &str,
        x: NodeIndex,
        out: usize,
        groups: usize,
        norm: bool,
        act: Option<Activation>,
    ) -> Result<NodeIndex> {
        let mut y = self.conv(&format!("{path}.conv"), x, out, (1, 1, groups), !norm)?;
        if norm {
            y = self.batch_norm(&format!("{path}.bn"), y)?;
        }
        match act {
            Some(a) => self.act(&format!("{path}.activate"), a, y),
            None => Ok(y),
        }
    }

    /// Stem and MobileNetV2 blocks; returns the pyramid outputs.
    fn token_pyramid(&mut self, spec: &Spec, backbone: &str) -> Result<Vec<NodeIndex>> {
        let tp = &spec.token_pyramid;
        let stem = format!("{backbone}tpm.stem");
        self.g.enter(Stage::TokenPyramid, stem.clone());
        let x = self.conv_bn(&format!("{stem}.0"), self.g.input(), tp.stem_channels, 3, 2, 1)?;
        let mut x = self.act(&format!("{stem}.1"), tp.activation, x)?;
        let mut pyramid = Vec::new();
        for (i, block) in tp.blocks.iter().enumerate() {
            let path = format!("{backbone}tpm.layer{}", i + 1);
            self.g.enter(Stage::TokenPyramid, path.clone());
            x = self.inverted_residual(&path, x, block, tp.activation)?;
            if let Some(level) = tp.out_indices.iter().position(|&o| o == i) {
                self.g.tap(format!("tpm.out{level}"), x);
                pyramid.push(x);
            }
        }
        Ok(pyramid)
    }

    /// `InvertedResidual`: optional 1×1 expand, k×k depthwise, 1×1 project, residual when shapes allow.
    fn inverted_residual(&mut self, path: &str, x: NodeIndex, block: &MbBlock, act: Activation) -> Result<NodeIndex> {
        let inp = self.channels(x);
        let oup = make_divisible(block.out(), 8);
        let hidden = round_half_even(inp as f64 * block.expand());
        let mut y = x;
        let mut index = 0;
        if block.expand() != 1.0 {
            y = self.conv_bn(&format!("{path}.conv.0"), y, hidden, 1, 1, 1)?;
            y = self.act(&format!("{path}.conv.1"), act, y)?;
            index = 2;
        }
        let hidden = self.channels(y);
        y = self.conv_bn(&format!("{path}.conv.{index}"), y, hidden, block.kernel(), block.stride(), hidden)?;
        y = self.act(&format!("{path}.conv.{}", index + 1), act, y)?;
        y = self.conv_bn(&format!("{path}.conv.{}", index + 2), y, oup, 1, 1, 1)?;
        if block.stride() == 1 && inp == oup {
            y = self.binary(&format!("{path}.residual"), Elementwise::Add, x, y)?;
        }
        Ok(y)
    }

    /// Pyramid pool aggregation and the transformer blocks; returns the global semantics.
    fn semantics_extractor(&mut self, spec: &Spec, backbone: &str, pyramid: &[NodeIndex]) -> Result<NodeIndex> {
        let se = &spec.semantics_extractor;
        let ppa = format!("{backbone}ppa");
        self.g.enter(Stage::SemanticsExtractor, ppa.clone());
        let (h, w) = self.spatial(*pyramid.last().expect("validated: the pyramid is not empty"));
        let pool = AdaptiveAvgPool { out_h: (h - 1) / se.c2t_stride + 1, out_w: (w - 1) / se.c2t_stride + 1 };
        let pooled = pyramid
            .iter()
            .enumerate()
            .map(|(i, &p)| self.g.add(format!("{ppa}.pool{i}"), Op::AdaptiveAvgPool(pool), &[p]))
            .collect::<Result<Vec<_>>>()?;
        let mut x = self.g.add(format!("{ppa}.concat"), Op::Concat(Concat), &pooled)?;
        self.g.tap("ppa", x);
        for i in 0..se.depth {
            let path = format!("{backbone}trans.transformer_blocks.{i}");
            self.g.enter(Stage::SemanticsExtractor, path.clone());
            let attn = self.attention(&format!("{path}.attn"), x, spec)?;
            x = self.binary(&format!("{path}.attn_residual"), Elementwise::Add, x, attn)?;
            let mlp = self.mlp(&format!("{path}.mlp"), x, spec)?;
            x = self.binary(&format!("{path}.mlp_residual"), Elementwise::Add, x, mlp)?;
        }
        self.g.tap("trans", x);
        Ok(x)
    }

    /// Multi-head attention over the token map, without the 1/√d scale (as the official code runs it).
    fn attention(&mut self, path: &str, x: NodeIndex, spec: &Spec) -> Result<NodeIndex> {
        let se = &spec.semantics_extractor;
        let (dim, (h, w)) = (self.channels(x), self.spatial(x));
        let (heads, key_dim) = (se.num_heads, se.key_dim);
        let value_dim = (se.attn_ratio * key_dim as f64) as usize;
        let q = self.conv_bn(&format!("{path}.to_q"), x, heads * key_dim, 1, 1, 1)?;
        let k = self.conv_bn(&format!("{path}.to_k"), x, heads * key_dim, 1, 1, 1)?;
        let v = self.conv_bn(&format!("{path}.to_v"), x, heads * value_dim, 1, 1, 1)?;
        let batch = self.g.input_shape()[0];
        let split = |width| Op::Reshape(Reshape { shape: vec![batch, heads, width, h * w] });
        let q = self.g.add(format!("{path}.q_heads"), split(key_dim), &[q])?;
        let k = self.g.add(format!("{path}.k_heads"), split(key_dim), &[k])?;
        let v = self.g.add(format!("{path}.v_heads"), split(value_dim), &[v])?;
        let scores =
            self.g.add(format!("{path}.q_k"), Op::MatMul(MatMul { trans_a: true, trans_b: false }), &[q, k])?;
        let attn = self.g.add(format!("{path}.softmax"), Op::Softmax(Softmax), &[scores])?;
        let out =
            self.g.add(format!("{path}.attn_v"), Op::MatMul(MatMul { trans_a: false, trans_b: true }), &[v, attn])?;
        let merged = Op::Reshape(Reshape { shape: vec![batch, heads * value_dim, h, w] });
        let out = self.g.add(format!("{path}.merge_heads"), merged, &[out])?;
        let out = self.act(&format!("{path}.proj.0"), se.activation, out)?;
        self.conv_bn(&format!("{path}.proj.1"), out, dim, 1, 1, 1)
    }

    /// `Mlp`: 1×1 conv-BN, 3×3 depthwise conv with bias, activation, 1×1 conv-BN.
    fn mlp(&mut self, path: &str, x: NodeIndex, spec: &Spec) -> Result<NodeIndex> {
        let se = &spec.semantics_extractor;
        let dim = self.channels(x);
        let hidden = (dim as f64 * se.mlp_ratio) as usize;
        let y = self.conv_bn(&format!("{path}.fc1"), x, hidden, 1, 1, 1)?;
        let y = self.conv(&format!("{path}.dwconv"), y, hidden, (3, 1, hidden), true)?;
        let y = self.act(&format!("{path}.act"), se.activation, y)?;
        self.conv_bn(&format!("{path}.fc2"), y, dim, 1, 1, 1)
    }

    /// Semantic injection modules; returns the injected maps in level order.
    fn injection(
        &mut self,
        spec: &Spec,
        backbone: &str,
        pyramid: &[NodeIndex],
        tokens: NodeIndex,
    ) -> Result<Vec<NodeIndex>> {
        let inj = spec.injection.as_ref().expect("caller checked");
        let channels = &spec.token_pyramid.channels;
        let mut results = Vec::new();
        for (j, &level) in inj.indices.iter().enumerate() {
            let path = format!("{backbone}SIM.{level}");
            self.g.enter(Stage::Injection, path.clone());
            let slice = Slice { start: channels[..level].iter().sum(), len: channels[level] };
            let global = self.g.add(format!("{backbone}trans.split{level}"), Op::Slice(slice), &[tokens])?;
            let local = pyramid[level];
            let size = self.spatial(local);
            let m = inj.channels;
            let out = match inj.kind {
                InjectionType::MultiSum | InjectionType::MultiSumCbr => {
                    let cbr = (inj.kind == InjectionType::MultiSumCbr).then_some(Activation::Relu);
                    let local = self.conv_module(&format!("{path}.local_embedding"), local, m, 1, true, cbr)?;
                    let gate = self.conv_module(&format!("{path}.global_act"), global, m, 1, cbr.is_none(), None)?;
                    let gate = self.act(&format!("{path}.act.relu"), Activation::Hsigmoid, gate)?;
                    let gate = self.resize_to(&format!("{path}.gate_resize"), gate, size)?;
                    let glob = self.conv_module(&format!("{path}.global_embedding"), global, m, 1, true, cbr)?;
                    let glob = self.resize_to(&format!("{path}.global_resize"), glob, size)?;
                    let gated = self.binary(&format!("{path}.mul"), Elementwise::Mul, local, gate)?;
                    self.binary(&format!("{path}.add"), Elementwise::Add, gated, glob)?
                }
                InjectionType::FuseSum | InjectionType::FuseMulti => {
                    let local = self.conv_module(&format!("{path}.fuse1"), local, m, 1, true, None)?;
                    let mut glob = self.conv_module(&format!("{path}.fuse2"), global, m, 1, true, None)?;
                    let combine = if inj.kind == InjectionType::FuseMulti {
                        glob = self.act(&format!("{path}.act.relu"), Activation::Hsigmoid, glob)?;
                        Elementwise::Mul
                    } else {
                        Elementwise::Add
                    };
                    let glob = self.resize_to(&format!("{path}.global_resize"), glob, size)?;
                    self.binary(&format!("{path}.{}", combine.name()), combine, local, glob)?
                }
            };
            self.g.tap(format!("sim.out{j}"), out);
            results.push(out);
        }
        Ok(results)
    }

    /// SimpleHead: sum of the injected maps at the first one's size, fuse conv, classifier conv, and the
    /// final bilinear resize to the input size that mmseg's inference applies.
    fn segmentation_head(&mut self, spec: &Spec, path: &str, injected: &[NodeIndex]) -> Result<()> {
        let head = spec.head.as_ref().expect("caller checked");
        self.g.enter(Stage::Head, path);
        let size = self.spatial(injected[0]);
        let mut x = injected[0];
        for (j, &map) in injected.iter().enumerate().skip(1) {
            let up = self.resize_to(&format!("{path}.resize{j}"), map, size)?;
            x = self.binary(&format!("{path}.sum{j}"), Elementwise::Add, x, up)?;
        }
        let groups = match head.fuse {
            FuseConv::Depthwise => head.channels,
            FuseConv::Dense => 1,
        };
        let x =
            self.conv_module(&format!("{path}.linear_fuse"), x, head.channels, groups, true, Some(head.activation))?;
        let logits = self.conv(&format!("{path}.conv_seg"), x, head.num_classes, (1, 1, 1), true)?;
        self.g.tap("logits", logits);
        let input = self.g.input_shape().clone();
        self.resize_to(&format!("{path}.resize_to_input"), logits, (input[2], input[3]))?;
        Ok(())
    }

    /// Global average pool, BatchNorm1d and Linear on the transformer tokens.
    fn classifier(&mut self, spec: &Spec, path: &str, tokens: NodeIndex) -> Result<()> {
        let cls = spec.classifier.as_ref().expect("validated: a spec without a head has a classifier");
        self.g.enter(Stage::Classifier, path);
        let pooled = self.g.add(format!("{path}.pool"), Op::GlobalAvgPool(GlobalAvgPool), &[tokens])?;
        let normed = self.batch_norm(&format!("{path}.bn"), pooled)?;
        let linear = Linear { in_features: self.channels(normed), out_features: cls.num_classes, bias: true };
        let logits = self.g.add(format!("{path}.l"), Op::Linear(linear), &[normed])?;
        self.g.tap("logits", logits);
        Ok(())
    }
}
