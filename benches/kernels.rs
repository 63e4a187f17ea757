//! Kernel throughput on TopFormer-Tiny shapes at 512×512, with 1 and 2 rayon threads.
//!
//! Throughput is reported in elements per second where one element is one FLOP (2 per MAC), so
//! criterion's `Gelem/s` reads as GFLOP/s; kernels without MACs count output elements.

use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use toparch::kernels::{
    adaptive_avg_pool2d, add_into, batched_matmul, conv2d, depthwise_project, expand_depthwise, resize_bilinear,
    softmax_rows, Conv2dDims, ConvLayer, Projection,
};
use toparch::ops::activation::Activation;

/// Deterministic inputs in `[-1, 1)`.
fn data(n: usize) -> Vec<f32> {
    (0..n).map(|i| ((i * 7919 % 2003) as f32 / 1001.5) - 1.0).collect()
}

/// A square-kernel convolution with PyTorch's output size.
fn dims(cin: usize, hw: usize, cout: usize, k: usize, s: usize, groups: usize) -> Conv2dDims {
    let out = (hw + 2 * (k / 2) - k) / s + 1;
    Conv2dDims {
        in_channels: cin,
        in_h: hw,
        in_w: hw,
        out_channels: cout,
        kernel_h: k,
        kernel_w: k,
        stride_h: s,
        stride_w: s,
        pad_h: k / 2,
        pad_w: k / 2,
        groups,
        out_h: out,
        out_w: out,
    }
}

fn bench(c: &mut Criterion) {
    let convs = [
        ("stem 3->16 k3 s2 512", dims(3, 512, 16, 3, 2, 1)),
        ("pw 16->64 256", dims(16, 256, 64, 1, 1, 1)),
        ("pw 64->16 128", dims(64, 128, 16, 1, 1, 1)),
        ("pw 32->96 64", dims(32, 64, 96, 1, 1, 1)),
        ("pw 96->576 16", dims(96, 16, 576, 1, 1, 1)),
        ("pw 128->150 64", dims(128, 64, 150, 1, 1, 1)),
        ("dw k3 s1 16ch 256", dims(16, 256, 16, 3, 1, 16)),
        ("dw k3 s2 64ch 256", dims(64, 256, 64, 3, 2, 64)),
        ("dw k5 s2 48ch 128", dims(48, 128, 48, 5, 2, 48)),
        ("dw k5 s1 96ch 64", dims(96, 64, 96, 5, 1, 96)),
        ("dw k5 s1 576ch 16", dims(576, 16, 576, 5, 1, 576)),
        ("dw k1 s1 128ch 64", dims(128, 64, 128, 1, 1, 128)),
        ("pw 128->768 32", dims(128, 32, 768, 1, 1, 1)),
        ("dw k5 s2 768ch 32", dims(768, 32, 768, 5, 2, 768)),
    ];
    for threads in [1, 2] {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("rayon pool");
        let mut group = c.benchmark_group(format!("{threads}t"));
        group.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
        for (name, d) in &convs {
            let x = data(d.in_channels * d.in_h * d.in_w);
            let w = data(d.out_channels * d.in_channels / d.groups * d.kernel_h * d.kernel_w);
            let b = data(d.out_channels);
            let mut y = vec![0.0; d.out_channels * d.out_h * d.out_w];
            let macs = conv2d(&x, &w, Some(&b), d, Some(Activation::Relu6), &mut y);
            group.throughput(Throughput::Elements(2 * macs));
            group.bench_function(*name, |bench| {
                pool.install(|| bench.iter(|| conv2d(black_box(&x), &w, Some(&b), d, Some(Activation::Relu6), &mut y)))
            });
        }
        for (name, m, k, n, tb) in [("qk 4x256x16x256", 256, 16, 256, true), ("av 4x256x256x32", 256, 256, 32, false)] {
            let (a, b) = (data(4 * m * k), data(4 * k * n));
            let mut y = vec![0.0; 4 * m * n];
            group.throughput(Throughput::Elements((2 * 4 * m * k * n) as u64));
            group.bench_function(name, |bench| {
                pool.install(|| bench.iter(|| batched_matmul(black_box(&a), &b, 4, m, k, n, false, tb, &mut y)))
            });
        }
        // Expand + depthwise pairs, fused and as two convs through a full-size hidden map.
        let pairs = [
            ("16->64 256 + dw k3 s2", dims(16, 256, 64, 1, 1, 1), dims(64, 256, 64, 3, 2, 64)),
            ("24->72 128 + dw k5 s2", dims(24, 128, 72, 1, 1, 1), dims(72, 128, 72, 5, 2, 72)),
            ("16->48 128 + dw k3 s1", dims(16, 128, 48, 1, 1, 1), dims(48, 128, 48, 3, 1, 48)),
            ("48->144 64 + dw k5 s1", dims(48, 64, 144, 1, 1, 1), dims(144, 64, 144, 5, 1, 144)),
            ("96->576 16 + dw k5 s1", dims(96, 16, 576, 1, 1, 1), dims(576, 16, 576, 5, 1, 576)),
            ("128->768 32 + dw k5 s2", dims(128, 32, 768, 1, 1, 1), dims(768, 32, 768, 5, 2, 768)),
        ];
        for (name, e, d) in &pairs {
            let x = data(e.in_channels * e.in_h * e.in_w);
            let (ew, eb) = (data(e.out_channels * e.in_channels), data(e.out_channels));
            let (dw, db) = (data(d.out_channels * d.kernel_h * d.kernel_w), data(d.out_channels));
            let mut hidden = vec![0.0; e.out_channels * e.out_h * e.out_w];
            let mut y = vec![0.0; d.out_channels * d.out_h * d.out_w];
            let act = Some(Activation::Relu6);
            let expand = ConvLayer { dims: e, weight: &ew, bias: &eb, act };
            let depthwise = ConvLayer { dims: d, weight: &dw, bias: &db, act };
            let [em, dm, _] = expand_depthwise(&x, expand, depthwise, None, &mut y);
            group.throughput(Throughput::Elements(2 * (em + dm)));
            group.bench_function(format!("unfused {name}"), |bench| {
                pool.install(|| {
                    bench.iter(|| {
                        conv2d(black_box(&x), &ew, Some(&eb), e, act, &mut hidden);
                        conv2d(&hidden, &dw, Some(&db), d, act, &mut y)
                    })
                })
            });
            group.bench_function(format!("fused {name}"), |bench| {
                pool.install(|| bench.iter(|| expand_depthwise(black_box(&x), expand, depthwise, None, &mut y)))
            });
        }
        // The first block (expand ratio 1): depthwise, projection and residual add, fused and as three passes.
        let (d, p) = (dims(16, 256, 16, 3, 1, 16), dims(16, 256, 16, 1, 1, 1));
        let x = data(16 * 256 * 256);
        let (dw, db, pw, pb) = (data(16 * 9), data(16), data(16 * 16), data(16));
        let (mut hidden, mut y) = (vec![0.0; x.len()], vec![0.0; x.len()]);
        let dw_layer = ConvLayer { dims: &d, weight: &dw, bias: &db, act: Some(Activation::Relu) };
        let layer = ConvLayer { dims: &p, weight: &pw, bias: &pb, act: None };
        let project = Projection { layer, residual: Some(&x) };
        let (dm, pm) = depthwise_project(&x, dw_layer, project, &mut y);
        group.throughput(Throughput::Elements(2 * (dm + pm)));
        let name = "dw k3 s1 16ch 256 + 16->16 + residual";
        group.bench_function(format!("unfused {name}"), |bench| {
            pool.install(|| {
                bench.iter(|| {
                    conv2d(black_box(&x), &dw, Some(&db), &d, Some(Activation::Relu), &mut hidden);
                    conv2d(&hidden, &pw, Some(&pb), &p, None, &mut y);
                    add_into(&mut y, &x)
                })
            })
        });
        group.bench_function(format!("fused {name}"), |bench| {
            pool.install(|| bench.iter(|| depthwise_project(black_box(&x), dw_layer, project, &mut y)))
        });
        let mut scores = data(4 * 256 * 256);
        group.throughput(Throughput::Elements(scores.len() as u64));
        group.bench_function("softmax 1024x256", |bench| {
            pool.install(|| bench.iter(|| softmax_rows(black_box(&mut scores), 256)))
        });
        let (x, mut y) = (data(128 * 16 * 16), vec![0.0; 128 * 64 * 64]);
        group.throughput(Throughput::Elements(y.len() as u64));
        group.bench_function("resize 128ch 16->64", |bench| {
            pool.install(|| bench.iter(|| resize_bilinear(black_box(&x), 128, 16, 16, 64, 64, &mut y, true)))
        });
        let (x, mut y) = (data(16 * 128 * 128), vec![0.0; 16 * 16 * 16]);
        group.throughput(Throughput::Elements(x.len() as u64));
        group.bench_function("pool 16ch 128->16", |bench| {
            pool.install(|| bench.iter(|| adaptive_avg_pool2d(black_box(&x), 16, 128, 128, 16, 16, &mut y)))
        });
        group.finish();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
