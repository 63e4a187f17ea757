//! Sweep throughput: variant profiles per second over a grid around TopFormer-B at 512×512 (the spec parsed once,
//! then per variant: overrides applied, validated, graph compiled and counted), on all cores.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use toparch::explore::{Grid, Metric, Objective, Sweep};
use toparch::spec::SpecTemplate;

/// 8 depths × 5 head counts × 4 key widths × 7 injection/head widths = 1,120 variants.
const GRIDS: [&str; 4] = [
    "semantics_extractor.depth=1,2,3,4,5,6,7,8",
    "semantics_extractor.num_heads=2,4,6,8,10",
    "semantics_extractor.key_dim=8,16,24,32",
    "injection.channels+head.channels=64,96,128,160,192,224,256",
];

fn sweep(c: &mut Criterion) {
    let template = SpecTemplate::embedded("base").expect("embedded spec");
    let grids: Vec<Grid> = GRIDS.iter().map(|g| g.parse().expect("valid grid")).collect();
    let variants = Sweep::size(&grids).expect("a small grid");
    let mut group = c.benchmark_group("sweep");
    group.sample_size(10);
    group.throughput(Throughput::Elements(variants as u64));
    group.bench_function(format!("base/512/{variants}-variants"), |b| {
        b.iter(|| {
            let sweep = Sweep::run(
                "topformer-base",
                black_box(grids.clone()),
                (512, 512),
                None,
                (Objective::min(Metric::Params), Objective::min(Metric::Paper)),
                |o| template.check_schema(o),
                |o| template.instantiate(o),
                || {},
            )
            .expect("sweeps");
            black_box(sweep.rows.len())
        })
    });
    group.finish();
}

criterion_group!(benches, sweep);
criterion_main!(benches);
