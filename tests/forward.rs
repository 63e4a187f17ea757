//! The forward pass against the official implementation's outputs, and executed MACs against the analytic count.

use std::path::{Path, PathBuf};
use toparch::exec::weights::{read_tensors, TensorData};
use toparch::exec::{read_input, Executor, NodeParams};
use toparch::graph::{compile, Graph};
use toparch::kernels::{limit_isa, vector_isa, Isa};
use toparch::spec::{load_embedded, load_file, Spec};

const TAPS: [&str; 10] =
    ["tpm.out0", "tpm.out1", "tpm.out2", "tpm.out3", "ppa", "trans", "sim.out0", "sim.out1", "sim.out2", "logits"];

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn micro_spec() -> Spec {
    load_file(&root().join("tests/fixtures/topformer-micro.toml")).unwrap().spec
}

/// Runs `spec` with `weights` on the `input` of `io` and compares every tap with the official output.
fn assert_parity(spec: &Spec, weights: &Path, io: &Path, threads: usize) {
    let (input, h, w) = read_input(io, None).unwrap();
    let graph = compile(spec, h, w).unwrap();
    let params = NodeParams::from_tensors(&graph, read_tensors(weights).unwrap(), "weights").unwrap();
    let exec = Executor::new(&graph, params, threads).unwrap();
    let keep: Vec<_> = TAPS.iter().map(|t| graph.tap_node(t).unwrap()).collect();
    let out = exec.run(&input, graph.tap_node("logits").unwrap(), &keep).unwrap();
    let reference = read_tensors(io).unwrap();
    for (tap, node) in TAPS.iter().zip(&keep) {
        let expected = &reference[*tap];
        assert_eq!(expected.shape, graph.node(*node).shape, "{tap} shape");
        let TensorData::F32(expected) = &expected.data else { panic!("{tap} is not f32") };
        let got = &out.kept[node];
        let max_err = got.iter().zip(expected).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        let scale = expected.iter().map(|v| v.abs()).fold(0.0f32, f32::max);
        let (path, isa) = (weights.display(), vector_isa().name());
        assert!(max_err <= 1e-4, "{path} ({isa}): {tap} max abs error {max_err} (values up to {scale})");
        assert!(scale > 0.1, "{tap}: reference is degenerate");
    }
}

/// Runs `f` once per vector instruction set this CPU has (AVX-512, AVX2+FMA, portable), with the
/// kernels limited to it; calls are serialised, since the limit holds for the whole process.
fn on_every_isa(mut f: impl FnMut(Isa)) {
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    for isa in Isa::ALL.into_iter().filter(|isa| isa.available()) {
        limit_isa(Some(isa));
        assert_eq!(vector_isa(), isa);
        f(isa);
    }
    limit_isa(None);
}

#[test]
fn micro_matches_official_outputs_from_both_weight_formats_on_every_isa() {
    let dir = root().join("tests/fixtures/micro");
    let io = dir.join("topformer-micro-seed5-io.safetensors");
    on_every_isa(|_| {
        for weights in ["topformer-micro-seed5.safetensors", "topformer-micro-seed5.pth"] {
            assert_parity(&micro_spec(), &dir.join(weights), &io, 1);
        }
        assert_parity(&micro_spec(), &dir.join("topformer-micro-seed5.pth"), &io, 2);
    });
}

#[test]
fn tiny_matches_official_outputs_from_both_weight_formats_on_every_isa() {
    let test = "tiny_matches_official_outputs_from_both_weight_formats_on_every_isa";
    let Some(io) = toparch::testing::shared_file("reference/topformer-tiny-seed0-io.safetensors", test) else {
        return;
    };
    let dir = io.parent().unwrap().to_path_buf();
    let spec = load_embedded("tiny").unwrap().spec;
    on_every_isa(|_| assert_parity(&spec, &dir.join("topformer-tiny-seed0.safetensors"), &io, 2));
    assert_parity(&spec, &dir.join("topformer-tiny-seed0.pth"), &io, 2);
}

fn run_random(graph: &Graph, threads: usize) -> toparch::exec::RunOutput {
    let input: Vec<f32> =
        (0..graph.input_shape().iter().product::<usize>()).map(|i| ((i % 97) as f32 / 48.0) - 1.0).collect();
    let exec = Executor::new(graph, NodeParams::random(graph, 7), threads).unwrap();
    exec.run(&input, graph.output(), &[graph.output()]).unwrap()
}

#[test]
fn executed_macs_equal_the_analytic_count_per_node() {
    for (variant, h, w) in
        [("tiny", 250, 330), ("small", 360, 480), ("base-imagenet", 224, 224), ("base-cityscapes", 97, 131)]
    {
        let graph = compile(&load_embedded(variant).unwrap().spec, h, w).unwrap();
        let out = run_random(&graph, 2);
        for (i, node) in graph.nodes() {
            assert_eq!(out.macs[i.index()], node.cost.macs, "{variant} {h}x{w}: {}", node.name);
        }
        let total: u64 = out.macs.iter().sum();
        assert_eq!(total, graph.total_cost().macs);
    }
}

/// Every injection module type and fuse conv runs, with executed MACs equal to the analytic count.
#[test]
fn every_injection_type_runs() {
    for kind in ["muli_sum", "muli_sum_cbr", "fuse_sum", "fuse_multi"] {
        let text = std::fs::read_to_string(root().join("tests/fixtures/topformer-micro.toml")).unwrap();
        let text = text
            .replace("type = \"muli_sum\"", &format!("type = \"{kind}\""))
            .replace("fuse = \"dense\"", "fuse = \"depthwise\"");
        let path = std::env::temp_dir().join(format!("toparch-inj-{}-{kind}.toml", std::process::id()));
        std::fs::write(&path, text).unwrap();
        let spec = load_file(&path).unwrap().spec;
        std::fs::remove_file(&path).ok();
        let graph = compile(&spec, 45, 77).unwrap();
        let out = run_random(&graph, 2);
        for (i, node) in graph.nodes() {
            assert_eq!(out.macs[i.index()], node.cost.macs, "{kind}: {}", node.name);
        }
        assert!(out.kept[&graph.output()].iter().all(|v| v.is_finite()), "{kind}");
        assert!(graph.nodes().any(|(_, n)| n.name.contains(if kind.starts_with("fuse") {
            "fuse1"
        } else {
            "local_embedding"
        })));
    }
}

#[test]
fn odd_and_non_square_inputs_run_with_predicted_shapes() {
    for (h, w) in [(360, 480), (250, 330), (16, 16), (17, 61)] {
        let graph = compile(&load_embedded("tiny").unwrap().spec, h, w).unwrap();
        let out = run_random(&graph, 1);
        let result = &out.kept[&graph.output()];
        assert_eq!(result.len(), 150 * h * w);
        assert!(result.iter().all(|v| v.is_finite()));
    }
}

#[test]
fn thread_counts_agree() {
    let graph = compile(&micro_spec(), 72, 104).unwrap();
    let one = run_random(&graph, 1);
    let two = run_random(&graph, 2);
    let (a, b) = (&one.kept[&graph.output()], &two.kept[&graph.output()]);
    let max_err = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
    assert!(max_err < 1e-5, "{max_err}");
}

/// Seeded random weights stand in for a checkpoint in `forward`, `bench` and `export`: their activations must stay
/// at the scale of the official reference's (every tap of Tiny's within ±5 there), or comparisons at an absolute
/// tolerance mean less on them than on real weights.
#[test]
fn random_weights_keep_every_tap_at_the_reference_scale() {
    for variant in ["tiny", "small", "base", "base-cityscapes"] {
        let graph = compile(&load_embedded(variant).unwrap().spec, 256, 256).unwrap();
        let input: Vec<f32> =
            (0..graph.input_shape().iter().product::<usize>()).map(|i| ((i % 97) as f32 / 24.0) - 2.0).collect();
        let exec = Executor::new(&graph, NodeParams::random(&graph, 0), 1).unwrap();
        let keep: Vec<_> = TAPS.iter().map(|t| graph.tap_node(t).unwrap()).collect();
        let out = exec.run(&input, graph.tap_node("logits").unwrap(), &keep).unwrap();
        for (tap, node) in TAPS.iter().zip(&keep) {
            let max = out.kept[node].iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!((0.1..=8.0).contains(&max), "{variant} {tap}: activations up to {max}");
        }
    }
}
