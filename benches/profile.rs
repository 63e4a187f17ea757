//! Time to load a spec, compile its graph and profile it — what `toparch profile` does per call.

use criterion::{criterion_group, criterion_main, Criterion};
use std::hint::black_box;
use toparch::cost::Profile;
use toparch::graph::compile;
use toparch::spec::load_embedded;

fn compile_and_profile(c: &mut Criterion) {
    for variant in ["tiny", "small", "base"] {
        c.bench_function(&format!("profile/{variant}/512"), |b| {
            b.iter(|| {
                let loaded = load_embedded(black_box(variant)).expect("embedded spec");
                let graph = compile(&loaded.spec, 512, 512).expect("compiles");
                black_box(Profile::new(&graph, &loaded.spec).expect("profiles"))
            })
        });
    }
}

criterion_group!(benches, compile_and_profile);
criterion_main!(benches);
