//! Exact params and FLOPs against the official implementation's figures, and published figures after rounding.

use std::path::Path;
use toparch::cost::{Convention, Profile};
use toparch::graph::compile;
use toparch::ops::ParamKind;
use toparch::spec::{embedded_specs, load_embedded, load_file, Spec};

fn micro_spec() -> Spec {
    load_file(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topformer-micro.toml")).unwrap().spec
}

fn profile(spec: &Spec, h: usize, w: usize) -> Profile {
    let graph = compile(spec, h, w).unwrap();
    Profile::new(&graph, spec).unwrap()
}

/// Figures computed from the official implementation (batch 1, 512×512).
#[test]
fn ade20k_variants_match_official_counts_exactly() {
    let expected = [
        ("tiny", 1_389_654, 576_544_768, 733_396_992, 534_110_208),
        ("small", 3_034_662, 1_164_615_680, 1_324_896_256, 1_112_297_472),
        ("base", 5_062_646, 1_813_471_232, 1_977_475_072, 1_752_203_264),
    ];
    for (variant, params, paper, fvcore, macs) in expected {
        let p = profile(&load_embedded(variant).unwrap().spec, 512, 512);
        assert_eq!(p.params, params, "{variant} params");
        assert_eq!(p.flops(Convention::Paper), paper, "{variant} paper");
        assert_eq!(p.flops(Convention::Fvcore), fvcore, "{variant} fvcore");
        assert_eq!(p.flops(Convention::Macs), macs, "{variant} macs");
    }
}

#[test]
fn micro_variant_matches_official_counts_exactly() {
    let counts: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/micro/topformer-micro-counts.json"),
        )
        .unwrap(),
    )
    .unwrap();
    let input = counts["input"].as_array().unwrap();
    let (h, w) = (input[1].as_u64().unwrap() as usize, input[2].as_u64().unwrap() as usize);
    let p = profile(&micro_spec(), h, w);
    assert_eq!(p.params, counts["params"].as_u64().unwrap());
    assert_eq!(p.flops(Convention::Paper), counts["paper"].as_u64().unwrap());
    assert_eq!(p.flops(Convention::Fvcore), counts["fvcore"].as_u64().unwrap());
    assert_eq!(p.flops(Convention::Macs), counts["macs"].as_u64().unwrap());
    assert_eq!((p.params, p.flops(Convention::Paper)), (105_578, 3_235_250));
}

/// Each stage and block sums to the total, so breakdowns never lose or double count.
#[test]
fn breakdowns_add_up() {
    let p = profile(&load_embedded("base").unwrap().spec, 360, 480);
    for c in Convention::ALL {
        assert_eq!(p.stages.iter().map(|g| g.cost.get(c)).sum::<u64>(), p.flops(c));
        assert_eq!(p.blocks.iter().map(|g| g.cost.get(c)).sum::<u64>(), p.flops(c));
        assert_eq!(p.layers.iter().map(|g| g.cost.get(c)).sum::<u64>(), p.flops(c));
    }
    assert_eq!(p.stages.iter().map(|g| g.params).sum::<u64>(), p.params);
    let stages: Vec<_> = p.stages.iter().map(|g| g.name.as_str()).collect();
    assert_eq!(stages, ["token_pyramid", "semantics_extractor", "injection", "head"]);
}

/// (spec, resolution, metric, published, agrees after the publication's rounding)
#[test]
fn published_figures_after_rounding() {
    let cases = [
        ("tiny", (512, 512), "params", "1.4M", true),
        ("tiny", (512, 512), "flops", "0.6G", true),
        ("small", (512, 512), "flops", "1.2G", true),
        ("small", (512, 512), "params", "3.1M", false), // computes 3.03 M
        ("base", (512, 512), "params", "5.1M", true),
        ("base", (512, 512), "flops", "1.8G", true),
        ("tiny", (448, 448), "flops", "0.5G", false), // computes 0.44 G
        ("base-cityscapes", (1024, 2048), "flops", "11.2G", true),
        ("base-cityscapes", (512, 1024), "flops", "2.7G", false), // computes 2.80 G
        ("tiny-imagenet", (224, 224), "flops", "126M", true),     // truncated from 126.9 M
        ("small-imagenet", (224, 224), "flops", "235M", true),
        ("base-imagenet", (224, 224), "flops", "373M", true),
        ("tiny-imagenet", (224, 224), "params", "1.50M", true),
        ("small-imagenet", (224, 224), "params", "3.11M", true),
        ("base-imagenet", (224, 224), "params", "5.07M", true),
        // Secondary sources (a later paper's copy of the tables); the code computes 0.47 G and 0.59 G.
        ("tiny-pascal-context", (480, 480), "flops", "0.53G", false),
        ("tiny-coco-stuff", (512, 512), "flops", "0.64G", false),
    ];
    for (variant, (h, w), metric, published, agrees) in cases {
        let p = profile(&load_embedded(variant).unwrap().spec, h, w);
        let c = p
            .published
            .iter()
            .find(|c| c.metric == metric)
            .unwrap_or_else(|| panic!("{variant} {h}x{w} has no published {metric}"));
        assert_eq!(c.published, published, "{variant} {metric}");
        assert_eq!(c.agrees, agrees, "{variant} {h}x{w} {metric}: computed {} ({})", c.computed_rounded, c.computed);
    }
    let tiny_cls = profile(&load_embedded("tiny-imagenet").unwrap().spec, 224, 224);
    assert_eq!(tiny_cls.flops(Convention::Paper) / 100_000, 1268, "the paper truncates 126.9 M");
}

/// Every official dataset configuration is its ADE20K model with another class count (and, for Tiny on
/// Cityscapes, SimpleHead's default dense fuse conv instead of the depthwise one). Its counts therefore follow
/// from the ADE20K model's by the head's arithmetic alone: the classifier conv has `channels + 1` parameters and
/// `paper` FLOPs per class and logit pixel; a dense 1×1 fuse conv `channels²` instead of `channels` weights.
#[test]
fn dataset_configurations_differ_from_ade20k_only_in_the_head() {
    let cases = [
        // name, ADE20K parent, default resolution, classes, dense fuse
        ("topformer-tiny-cityscapes", "tiny", (512, 1024), 19, true),
        ("topformer-tiny-pascal-context", "tiny", (480, 480), 60, false),
        ("topformer-small-pascal-context", "small", (480, 480), 60, false),
        ("topformer-base-pascal-context", "base", (480, 480), 60, false),
        ("topformer-tiny-pascal-context-59", "tiny", (480, 480), 59, false),
        ("topformer-small-pascal-context-59", "small", (480, 480), 59, false),
        ("topformer-base-pascal-context-59", "base", (480, 480), 59, false),
        ("topformer-tiny-coco-stuff", "tiny", (512, 512), 171, false),
        ("topformer-small-coco-stuff", "small", (512, 512), 171, false),
        ("topformer-base-coco-stuff", "base", (512, 512), 171, false),
    ];
    for (name, parent, res, classes, dense_fuse) in cases {
        let spec = load_embedded(name).unwrap().spec;
        let ade = load_embedded(parent).unwrap().spec;
        assert_eq!(spec.default_resolution(), res, "{name}");
        assert_eq!(spec.num_classes(), classes, "{name}");
        let (h, w) = res;
        let head_channels = ade.head.as_ref().unwrap().channels as i64;
        // The logits are at 1/8 of the input: three stride-2 convs, each (n - 1) / 2 + 1.
        let eighth = |n: usize| (0..3).fold(n, |n, _| (n - 1) / 2 + 1) as i64;
        let logit_pixels = eighth(h) * eighth(w);
        let class_delta = (classes as i64 - 150) * (head_channels + 1);
        let fuse_delta = if dense_fuse { head_channels * head_channels - head_channels } else { 0 };
        let (computed, ade20k) = (profile(&spec, h, w), profile(&ade, h, w));
        assert_eq!(computed.params as i64, ade20k.params as i64 + class_delta + fuse_delta, "{name} params");
        assert_eq!(
            computed.flops(Convention::Paper) as i64,
            ade20k.flops(Convention::Paper) as i64 + (class_delta + fuse_delta) * logit_pixels,
            "{name} paper FLOPs"
        );
    }
    // Absolute figures of two of them, for the README.
    let tiny_city = profile(&load_embedded("tiny-cityscapes").unwrap().spec, 512, 1024);
    assert_eq!((tiny_city.params, tiny_city.flops(Convention::Paper)), (1_389_011, 1_147_822_080));
    let tiny_context = profile(&load_embedded("tiny-pascal-context").unwrap().spec, 480, 480);
    assert_eq!((tiny_context.params, tiny_context.flops(Convention::Paper)), (1_378_044, 473_382_656));
}

#[test]
fn every_spec_profiles_at_common_resolutions() {
    for embedded in embedded_specs() {
        let spec = load_embedded(embedded.name).unwrap().spec;
        for (h, w) in [(512, 512), (448, 448), (360, 480), (1024, 2048), (16, 16), (250, 333)] {
            let p = profile(&spec, h, w);
            assert!(p.flops(Convention::Macs) > 0, "{} at {h}x{w}", embedded.name);
            assert_eq!(p.input, vec![3, h, w]);
        }
    }
}

/// PyTorch's arithmetic for an odd, non-square input: every stride-2 conv gives (n - 1) / 2 + 1.
#[test]
fn shapes_follow_pytorch_for_odd_non_square_inputs() {
    let spec = load_embedded("tiny").unwrap().spec;
    let graph = compile(&spec, 333, 250).unwrap();
    let shape = |tap: &str| graph.node(graph.tap_node(tap).unwrap()).shape.clone();
    assert_eq!(shape("tpm.out0"), vec![1, 16, 84, 63]);
    assert_eq!(shape("tpm.out1"), vec![1, 32, 42, 32]);
    assert_eq!(shape("tpm.out2"), vec![1, 64, 21, 16]);
    assert_eq!(shape("tpm.out3"), vec![1, 96, 11, 8]);
    assert_eq!(shape("ppa"), vec![1, 208, 6, 4]);
    assert_eq!(shape("sim.out0"), vec![1, 128, 42, 32]);
    assert_eq!(shape("logits"), vec![1, 150, 42, 32]);
    assert_eq!(graph.node(graph.output()).shape, vec![1, 150, 333, 250]);
}

/// Parameter names and shapes are exactly the official state_dict's, so checkpoints load by lookup.
#[test]
fn parameter_names_and_shapes_mirror_the_official_state_dict() {
    let check = |spec: &Spec, weights: &Path| {
        let bytes = std::fs::read(weights).unwrap();
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
        let mut official: Vec<(String, Vec<usize>)> =
            meta.tensors().into_iter().map(|(name, info)| (name, info.shape.clone())).collect();
        official.sort();
        let graph = compile(spec, 64, 64).unwrap();
        let mut ours: Vec<(String, Vec<usize>)> = graph.params().map(|p| (p.name.clone(), p.shape.clone())).collect();
        ours.sort();
        assert_eq!(ours, official, "{}", weights.display());
        let learnable = graph.params().filter(|p| p.kind == ParamKind::Learnable).count();
        assert!(learnable > 0);
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    check(&micro_spec(), &root.join("tests/fixtures/micro/topformer-micro-seed5.safetensors"));
    let test = "state_dict names of Tiny";
    if let Some(tiny) = toparch::testing::shared_file("reference/topformer-tiny-seed0.safetensors", test) {
        check(&load_embedded("tiny").unwrap().spec, &tiny);
    }
}
