//! `toparch export`: the ONNX files run in a pure-Rust runtime (tract) and agree with toparch's own forward
//! pass within 1e-4; their structure is what runtimes and Netron expect; bad input leaves no file behind.

use prost::Message;
use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use toparch::exec::weights::read_tensors;
use toparch::exec::{Executor, NodeParams};
use toparch::export::proto::{ModelProto, FLOAT, INT64};
use toparch::export::{export_model, ExportOptions, Opset, CLASSES, INPUT, LOGITS};
use toparch::graph::{compile, Graph};
use toparch::ops::{Op, ParamKind};
use toparch::spec::{embedded_specs, load_embedded, load_file, Spec, Task};
use tract_onnx::prelude::*;

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn micro_spec() -> Spec {
    load_file(&root().join("tests/fixtures/topformer-micro.toml")).unwrap().spec
}

/// A deterministic input with values in [-1, 1].
fn test_input(graph: &Graph) -> Vec<f32> {
    let n: usize = graph.input_shape().iter().product();
    (0..n).map(|i| ((i * 7919 % 211) as f32 / 105.0) - 1.0).collect()
}

/// toparch's forward up to and including `until`.
fn forward(graph: &Graph, params: NodeParams, input: &[f32], until: petgraph::graph::NodeIndex) -> Vec<f32> {
    let exec = Executor::new(graph, params, 1).unwrap();
    exec.run(input, until, &[until]).unwrap().kept.remove(&until).unwrap()
}

/// Runs an ONNX file in tract on `input` and returns its one output.
fn run_tract(bytes: &[u8], input: &[f32], shape: &[usize]) -> Tensor {
    let model = tract_onnx::onnx()
        .model_for_read(&mut &*bytes)
        .and_then(|m| m.into_optimized())
        .and_then(|m| m.into_runnable())
        .unwrap_or_else(|e| panic!("tract cannot load the export: {e:?}"));
    let input = Tensor::from_shape(shape, input).unwrap();
    let mut outputs = model.run(tvec!(input.into_tvalue())).unwrap();
    assert_eq!(outputs.len(), 1, "one output");
    outputs.remove(0).into_tensor()
}

fn max_abs_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0, f32::max)
}

/// Exports `graph` with `params`, runs it in tract and compares with toparch's forward; returns the error.
fn assert_export_matches_forward(graph: &Graph, params: impl Fn() -> NodeParams, options: &ExportOptions) -> f32 {
    let what = format!("{} at {:?}, {options:?}", graph.spec_name, graph.input_shape());
    let model = export_model(graph, &params(), options).unwrap();
    check_structure(&model, graph, options);
    let input = test_input(graph);
    let until = if options.with_resize { graph.output() } else { graph.tap_node("logits").unwrap() };
    let expected = forward(graph, params(), &input, until);
    let got = run_tract(&model.encode_to_vec(), &input, graph.input_shape());
    assert_eq!(got.shape(), graph.node(until).shape.as_slice(), "{what}: output shape");
    let got: Vec<f32> = got.to_plain_array_view::<f32>().unwrap().iter().copied().collect();
    let error = max_abs_error(&got, &expected);
    let scale = expected.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    assert!(error <= 1e-4, "{what}: max abs error {error} (values up to {scale})");
    assert!(scale > 0.1, "{what}: degenerate output");
    error
}

/// Structural checks: opset and IR as asked; nodes in topological order with unique names; every value
/// produced once; every graph tensor present once under its official name (folded BatchNorms excepted).
fn check_structure(model: &ModelProto, graph: &Graph, options: &ExportOptions) {
    assert_eq!(model.ir_version, options.opset.ir_version());
    assert_eq!(model.opset_import.len(), 1);
    assert_eq!((model.opset_import[0].domain.as_str(), model.opset_import[0].version), ("", options.opset.version()));
    let onnx = model.graph.as_ref().unwrap();
    let mut defined: HashSet<&str> = onnx.initializer.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(defined.len(), onnx.initializer.len(), "initializer names are unique");
    assert_eq!(onnx.input.len(), 1);
    assert_eq!(onnx.input[0].name, INPUT);
    assert_eq!(onnx.input[0].tensor_shape(), Some((FLOAT, graph.input_shape().clone())));
    defined.insert(INPUT);
    let mut names = HashSet::new();
    for node in &onnx.node {
        assert!(names.insert(node.name.as_str()), "node name {} is unique", node.name);
        for input in node.input.iter().filter(|i| !i.is_empty()) {
            assert!(defined.contains(input.as_str()), "{} reads {input} before it is produced", node.name);
        }
        for output in &node.output {
            assert!(defined.insert(output), "{output} is produced once");
        }
    }
    assert_eq!(onnx.output.len(), 1);
    let output = &onnx.output[0];
    assert!(defined.contains(output.name.as_str()), "the output is produced");
    let (elem_type, name) = if options.argmax { (INT64, CLASSES) } else { (FLOAT, LOGITS) };
    assert_eq!((output.name.as_str(), output.tensor_shape().unwrap().0), (name, elem_type));
    // Every float tensor of the exported part of the graph, by official name, once and with its shape.
    let until = if options.with_resize { graph.output() } else { graph.tap_node("logits").unwrap() };
    let initializers: BTreeMap<&str, &[i64]> =
        onnx.initializer.iter().map(|t| (t.name.as_str(), t.dims.as_slice())).collect();
    for (index, node) in graph.nodes().filter(|&(i, _)| i <= until) {
        let folded = options.fold_bn && matches!(node.op, Op::BatchNorm(_)) && is_folded(graph, index);
        for p in node.params.iter().filter(|p| p.kind != ParamKind::Counter) {
            let dims = initializers.get(p.name.as_str()).copied();
            if folded {
                assert_eq!(dims, None, "{} is folded into its conv", p.name);
            } else {
                let expected: Vec<i64> = p.shape.iter().map(|&d| d as i64).collect();
                assert_eq!(dims, Some(expected.as_slice()), "{} is an initializer", p.name);
            }
        }
        if !matches!(node.op, Op::Input) && !(folded) {
            assert!(names.contains(node.name.as_str()), "graph node {} has an ONNX node of its name", node.name);
        }
    }
    assert!(!names.iter().any(|n| n.is_empty()));
}

/// Whether BatchNorm `bn` alone reads a conv (and so is folded with --fold-bn).
fn is_folded(graph: &Graph, bn: petgraph::graph::NodeIndex) -> bool {
    let conv = graph.node(bn).inputs[0];
    matches!(graph.node(conv).op, Op::Conv2d(_)) && graph.nodes().filter(|(_, n)| n.inputs.contains(&conv)).count() == 1
}

/// The micro variant at a size where every pyramid map pools evenly (128² → 2×2 tokens), one where none does
/// (the official 72×104 reference size, and an odd 97×61), and one where the tokens are 1×1 (32×40): with
/// the official weights and with random ones, both opsets, with and without folded BatchNorm.
#[test]
fn micro_exports_run_in_tract_within_1e_4_at_every_pooling_case() {
    let spec = micro_spec();
    let weights = root().join("tests/fixtures/micro/topformer-micro-seed5.safetensors");
    for (h, w, tokens) in [(128, 128, (2, 2)), (72, 104, (2, 2)), (97, 61, (2, 1)), (32, 40, (1, 1))] {
        let graph = compile(&spec, h, w).unwrap();
        let pool = graph.nodes().find(|(_, n)| matches!(n.op, Op::AdaptiveAvgPool(_))).unwrap().1;
        assert_eq!((pool.shape[2], pool.shape[3]), tokens, "{h}x{w}: pooled tokens");
        let official = || NodeParams::from_tensors(&graph, read_tensors(&weights).unwrap(), "micro").unwrap();
        let random = || NodeParams::random(&graph, 3);
        for (opset, fold_bn) in [(Opset::V13, false), (Opset::V17, true)] {
            let options = ExportOptions { opset, fold_bn, ..Default::default() };
            assert_export_matches_forward(&graph, official, &options);
            assert_export_matches_forward(&graph, random, &options);
        }
    }
}

/// The pooling case is chosen as PyTorch would export it where it can: AveragePool or GlobalAveragePool
/// when sizes divide, MatMuls with averaging matrices only when they do not.
#[test]
fn adaptive_pooling_is_exported_by_case() {
    let spec = micro_spec();
    for (h, w, expected) in [(128, 128, "AveragePool"), (72, 104, "MatMul"), (32, 40, "GlobalAveragePool")] {
        let graph = compile(&spec, h, w).unwrap();
        let model = export_model(&graph, &NodeParams::random(&graph, 0), &ExportOptions::default()).unwrap();
        let onnx = model.graph.unwrap();
        let pool = onnx.node.iter().find(|n| n.name == "backbone.ppa.pool3").unwrap();
        assert_eq!(pool.op_type, expected, "{h}x{w}");
    }
}

/// `--with-resize` gives the logits at the input size; `--argmax` the class map of mmseg's inference.
#[test]
fn post_processing_runs_in_tract() {
    let spec = micro_spec();
    let graph = compile(&spec, 61, 97).unwrap();
    let params = || NodeParams::random(&graph, 11);
    let with_resize = ExportOptions { with_resize: true, ..Default::default() };
    assert_export_matches_forward(&graph, params, &with_resize);

    let options = ExportOptions { with_resize: true, argmax: true, ..Default::default() };
    let model = export_model(&graph, &params(), &options).unwrap();
    check_structure(&model, &graph, &options);
    let input = test_input(&graph);
    let got = run_tract(&model.encode_to_vec(), &input, graph.input_shape());
    assert_eq!(got.shape(), &[1, 61, 97]);
    let classes: Vec<i64> = got.to_plain_array_view::<i64>().unwrap().iter().copied().collect();
    let scores = forward(&graph, params(), &input, graph.output());
    let plane = 61 * 97;
    let mut decided = 0;
    for (pixel, &class) in classes.iter().enumerate() {
        let mut column: Vec<f32> = (0..10).map(|c| scores[c * plane + pixel]).collect();
        let chosen = column[class as usize];
        column.sort_by(|a, b| b.total_cmp(a));
        // The chosen class is the best one, up to ties within the export's tolerance.
        assert!(chosen >= column[0] - 1e-4, "pixel {pixel}: class {class} scores {chosen}, best {}", column[0]);
        decided += usize::from(column[0] - column[1] > 1e-4);
    }
    assert!(decided > plane * 9 / 10, "the map is not decided by ties");
}

/// Every embedded spec at 512² and at 480×480 (where the official exporter fails for Pascal Context: the
/// tokens do not divide the maps), in tract within 1e-4 of toparch's forward. One thread per spec.
#[test]
fn every_embedded_spec_exports_exactly_at_512_and_480() {
    let started = std::time::Instant::now();
    let errors: Vec<String> = std::thread::scope(|scope| {
        let runs: Vec<_> = embedded_specs()
            .iter()
            .map(|embedded| {
                scope.spawn(move || {
                    let spec = load_embedded(embedded.name).unwrap().spec;
                    let mut line = embedded.name.to_string();
                    for (side, fold_bn) in [(512, false), (480, true)] {
                        let graph = compile(&spec, side, side).unwrap();
                        let uneven = graph.nodes().any(|(_, n)| {
                            let map = &graph.node(n.inputs.first().copied().unwrap_or_default()).shape;
                            matches!(n.op, Op::AdaptiveAvgPool(_)) && !map[2].is_multiple_of(n.shape[2])
                        });
                        // At 480² a segmentor pools its 15×15 and 30×30 maps to 8×8 tokens: the case PyTorch cannot export.
                        assert_eq!(uneven, side == 480 && spec.task() == Task::Segmentation, "{}", embedded.name);
                        let options = ExportOptions { fold_bn, ..Default::default() };
                        let error = assert_export_matches_forward(&graph, || NodeParams::random(&graph, 0), &options);
                        line.push_str(&format!(" {side}²: {error:.1e}"));
                    }
                    line
                })
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    eprintln!("max abs error against forward: {} ({:.1} s)", errors.join("; "), started.elapsed().as_secs_f64());
    assert_eq!(errors.len(), embedded_specs().len());
}

/// A classifier exports to [1, 1000] through GlobalAveragePool, Flatten, BatchNormalization and Gemm.
#[test]
fn classifier_exports_its_logits() {
    let spec = load_embedded("tiny-imagenet").unwrap().spec;
    assert_eq!(spec.task(), Task::Classification);
    let graph = compile(&spec, 96, 80).unwrap();
    assert_export_matches_forward(&graph, || NodeParams::random(&graph, 2), &ExportOptions::default());
    let model = export_model(&graph, &NodeParams::random(&graph, 2), &ExportOptions::default()).unwrap();
    let ops: Vec<String> = model.graph.unwrap().node.iter().rev().take(4).map(|n| n.op_type.clone()).collect();
    assert_eq!(ops, ["Gemm", "BatchNormalization", "Flatten", "GlobalAveragePool"]);
    for flag in [
        ExportOptions { argmax: true, ..Default::default() },
        ExportOptions { with_resize: true, ..Default::default() },
    ] {
        let error = export_model(&graph, &NodeParams::random(&graph, 2), &flag).unwrap_err().to_string();
        assert!(error.contains("classifier"), "{error}");
    }
}

fn toparch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toparch")).args(args).output().unwrap()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toparch-export-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(name: &str) -> String {
    root().join("tests/fixtures").join(name).display().to_string()
}

/// Exit 2 with one line naming `needle`, and nothing left in the output's folder.
fn assert_rejected(out: &Output, needle: &str, dir: &Path) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "{stderr}");
    assert_eq!(std::fs::read_dir(dir).unwrap().count(), 0, "no file is left behind");
}

#[test]
fn the_command_writes_a_model_that_loads() {
    let dir = scratch("ok");
    let output = dir.join("micro.onnx");
    let out = toparch(&[
        "export",
        "--spec",
        &fixture("topformer-micro.toml"),
        "--weights",
        &fixture("micro/topformer-micro-seed5.pth"),
        "--res",
        "72x104",
        "--opset",
        "17",
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("opset 17 (IR 8)") && stdout.contains("logits [1, 10, 9, 13]"), "{stdout}");
    let model = ModelProto::decode(std::fs::read(&output).unwrap().as_slice()).unwrap();
    assert_eq!(model.opset_import[0].version, 17);
    let names: HashSet<_> = model.graph.unwrap().initializer.into_iter().map(|t| t.name).collect();
    assert!(names.contains("backbone.tpm.layer1.conv.0.c.weight") && names.contains("decode_head.conv_seg.bias"));
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn bad_input_exits_2_and_leaves_no_file() {
    let dir = scratch("bad");
    let output = dir.join("model.onnx");
    let output = output.to_str().unwrap();
    let micro = fixture("topformer-micro.toml");
    let unknown_opset = toparch(&["export", "--spec", &micro, "--opset", "12", "--output", output]);
    assert_rejected(&unknown_opset, "--opset", &dir);
    let wrong_weights = toparch(&[
        "export",
        "--variant",
        "tiny",
        "--weights",
        &fixture("micro/topformer-micro-seed5.pth"),
        "--output",
        output,
    ]);
    assert_rejected(&wrong_weights, "weights do not fit topformer-tiny", &dir);
    let classifier = toparch(&["export", "--variant", "tiny-imagenet", "--argmax", "--output", output]);
    assert_rejected(&classifier, "--argmax: topformer-tiny-imagenet is a classifier", &dir);
    let missing_dir = dir.join("no/such/folder/model.onnx");
    let unwritable = toparch(&["export", "--spec", &micro, "--output", missing_dir.to_str().unwrap()]);
    assert_rejected(&unwritable, "no/such/folder/model.onnx", &dir);
    std::fs::remove_dir_all(&dir).ok();
}
