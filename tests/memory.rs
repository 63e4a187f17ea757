//! The analytic memory model against the executor's own measurement, and batch arithmetic.

use std::path::PathBuf;
use toparch::cost::memory::{greedy_by_size, live_peak};
use toparch::cost::{Memory, Profile};
use toparch::exec::{Executor, NodeParams, Plan};
use toparch::graph::{compile, compile_batch, Graph};
use toparch::spec::{load_embedded, load_file, Spec};

fn spec(name: &str) -> Spec {
    if name == "micro" {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topformer-micro.toml");
        return load_file(&path).unwrap().spec;
    }
    load_embedded(name).unwrap().spec
}

/// A deterministic input of the graph's size.
fn input(graph: &Graph) -> Vec<f32> {
    let n: usize = graph.input_shape().iter().product();
    (0..n).map(|i| ((i * 7919) % 255) as f32 / 127.0 - 1.0).collect()
}

#[test]
fn analytic_peak_equals_the_executors_measured_peak() {
    let cases = [
        ("micro", 64, 64),
        ("micro", 67, 45),
        ("tiny", 129, 97),
        ("small", 96, 160),
        ("base", 75, 75),
        ("base-cityscapes", 64, 128),
        ("tiny-imagenet", 97, 65),
    ];
    for (name, h, w) in cases {
        let graph = compile(&spec(name), h, w).unwrap();
        let memory = Memory::new(&graph);
        for threads in [1, 2] {
            let exec = Executor::new(&graph, NodeParams::random(&graph, 3), threads).unwrap();
            let run = exec.run(&input(&graph), graph.output(), &[graph.output()]).unwrap();
            let case = format!("{name} at {h}x{w} on {threads} thread(s)");
            assert_eq!(memory.peak_activation_bytes, run.peak_activation_bytes, "{case}");
            assert_eq!(memory.peak_at, graph.node(run.peak_at).name, "{case}");
            assert!(memory.arena_bytes >= memory.peak_activation_bytes, "{case}");
            assert!(memory.peak_activation_bytes < memory.activation_bytes, "{case}: buffers are recycled");
        }
    }
}

#[test]
fn analytic_peak_follows_where_a_run_stops_and_what_it_keeps() {
    let graph = compile(&spec("tiny"), 96, 112).unwrap();
    let plan = Plan::new(&graph);
    let taps: Vec<_> = graph.taps().iter().map(|&(_, i)| i).collect();
    let logits = graph.tap_node("logits").unwrap();
    let exec = Executor::new(&graph, NodeParams::random(&graph, 1), 2).unwrap();
    let trans = graph.tap_node("trans").unwrap();
    let before_trans: Vec<_> = taps.iter().copied().filter(|&t| t <= trans).collect();
    for (until, keep) in [(logits, &[][..]), (logits, &[logits][..]), (logits, &taps[..]), (trans, &before_trans[..])] {
        let (lives, _) = plan.schedule(&graph, until, keep).buffers(&plan, &graph);
        let (peak, _) = live_peak(&lives);
        let run = exec.run(&input(&graph), until, keep).unwrap();
        assert_eq!(peak, run.peak_activation_bytes, "until {until:?} keeping {} outputs", keep.len());
        assert!(greedy_by_size(&lives).0 >= peak);
    }
}

#[test]
fn batch_scales_counts_and_memory_as_pytorch_does() {
    for (name, h, w) in [("small", 512, 512), ("micro", 67, 45), ("tiny-imagenet", 224, 224)] {
        let spec = spec(name);
        let one = Profile::new(&compile(&spec, h, w).unwrap(), &spec).unwrap();
        let three = Profile::new(&compile_batch(&spec, 3, h, w).unwrap(), &spec).unwrap();
        assert_eq!(three.batch, 3);
        assert_eq!(three.params, one.params, "{name}: params do not depend on the batch");
        assert_eq!(three.memory.params_bytes, one.memory.params_bytes);
        assert_eq!(three.cost.paper, 3 * one.cost.paper, "{name}");
        assert_eq!(three.cost.fvcore, 3 * one.cost.fvcore, "{name}");
        assert_eq!(three.cost.macs, 3 * one.cost.macs, "{name}");
        assert_eq!(three.memory.activation_bytes, 3 * one.memory.activation_bytes, "{name}");
        assert_eq!(three.memory.peak_activation_bytes, 3 * one.memory.peak_activation_bytes, "{name}");
        assert_eq!(three.memory.arena_bytes, 3 * one.memory.arena_bytes, "{name}");
        for (a, b) in three.layers.iter().zip(&one.layers) {
            assert_eq!(a.activation_bytes, 3 * b.activation_bytes, "{}", a.name);
        }
    }
}

#[test]
fn memory_figures_of_topformer_tiny_at_512() {
    let spec = spec("tiny");
    let profile = Profile::new(&compile(&spec, 512, 512).unwrap(), &spec).unwrap();
    let m = &profile.memory;
    assert_eq!(m.params_bytes.f32, 4 * 1_389_654);
    assert_eq!(m.params_bytes.f16, 2 * 1_389_654);
    assert_eq!(m.params_bytes.int8, 1_389_654);
    assert_eq!(m.buffers_bytes, 4 * profile.buffers);
    // Every layer's output summed, independently of the profile's own sum.
    let sum: u64 = profile.layers.iter().map(|l| 4 * l.output_shape.iter().product::<usize>() as u64).sum();
    assert_eq!(m.activation_bytes, sum);
    let stages: u64 = profile.stages.iter().map(|s| s.activation_bytes).sum();
    assert_eq!(stages, sum);
    // The final resize's 150×512×512 f32 map is live beside the logits it reads at the peak.
    assert_eq!(m.peak_at, "decode_head.resize_to_input");
    assert!(m.peak_activation_bytes >= 4 * 150 * 512 * 512 + 4 * 150 * 64 * 64);
}
