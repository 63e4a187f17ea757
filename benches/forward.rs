//! Latency of the forward pass (input to logits) for TopFormer-T/S/B at 512×512, 1 and 2 threads.
//! Compare with onnxruntime on the same machine: `benches/run.sh` takes both figures in one run.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use toparch::exec::{Executor, NodeParams};
use toparch::graph::compile;
use toparch::spec::load_embedded;

fn forward(c: &mut Criterion) {
    let mut group = c.benchmark_group("forward");
    // Long enough to average over the scheduling noise of a small shared VM.
    group.sample_size(40);
    group.measurement_time(std::time::Duration::from_secs(8));
    for variant in ["tiny", "small", "base"] {
        let spec = load_embedded(variant).expect("embedded spec").spec;
        let graph = compile(&spec, 512, 512).expect("compiles");
        let input: Vec<f32> = (0..3 * 512 * 512).map(|i| ((i % 251) as f32 / 125.0) - 1.0).collect();
        let logits = graph.tap_node("logits").expect("segmentation spec");
        for threads in [1, 2] {
            let exec = Executor::new(&graph, NodeParams::random(&graph, 0), threads).expect("executor");
            group.bench_function(format!("{variant}/512/threads={threads}"), |b| {
                b.iter(|| black_box(exec.run(black_box(&input), logits, &[logits]).expect("runs")))
            });
        }
    }
    group.finish();
}

criterion_group!(benches, forward);
criterion_main!(benches);
