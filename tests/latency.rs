//! The latency model's mechanism (never timings): predictions follow the executor's plan, device profiles are
//! checked, `bench` writes its JSON contract, and every bad input exits 2 with one line.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use toparch::cost::latency::{embedded_devices, leave_one_out_errors};
use toparch::cost::{Device, Family, Prediction, Profile};
use toparch::exec::Plan;
use toparch::graph::compile;
use toparch::report::mobile::{derive_snapdragon865, published_latencies};
use toparch::spec::load_embedded;

fn toparch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toparch")).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn micro() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topformer-micro.toml").display().to_string()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toparch-latency-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// A profile where every family costs `ns_per_call` per step and nothing else.
fn per_call_device(ns_per_call: f64) -> Device {
    let mut device = Device::load("snapdragon865").unwrap();
    for fit in device.families.values_mut().chain([&mut device.run]) {
        *fit = toparch::cost::latency::FamilyFit::from_coefficients([0.0, 0.0, 0.0, 0.0, ns_per_call, 0.0], 1);
    }
    device
}

#[test]
fn predictions_follow_the_executors_plan_and_fusions() {
    let spec = load_embedded("small").unwrap().spec;
    let graph = compile(&spec, 333, 250).unwrap();
    let plan = Plan::new(&graph);
    assert!(plan.steps.len() < graph.len() - 1, "fused steps cover several nodes");
    // One nanosecond a step and one for the run: the total counts the plan's steps, not the graph's nodes.
    let prediction = Prediction::new(&graph, &per_call_device(1.0));
    assert!((prediction.total_ms - (plan.steps.len() + 1) as f64 * 1e-6).abs() < 1e-12);
    assert!((prediction.run_ms - 1e-6).abs() < 1e-15);
    let fused = plan.steps.iter().filter(|s| Family::of(s, &graph) == Family::ExpandDepthwise).count();
    assert!(fused > 0);
    // Layers, blocks and stages add up to the total less the run's own cost; fused-in layers carry no time.
    let mut profile = Profile::new(&graph, &spec).unwrap();
    profile.predict(&graph, &Device::load("snapdragon865").unwrap());
    let prediction = &profile.latency.as_ref().unwrap().prediction;
    assert!(prediction.run_ms > 0.0);
    let total = prediction.total_ms - prediction.run_ms;
    for parts in [
        profile.layers.iter().map(|l| l.latency_ms.unwrap()).sum::<f64>(),
        profile.blocks.iter().map(|b| b.latency_ms.unwrap()).sum(),
        profile.stages.iter().map(|s| s.latency_ms.unwrap()).sum(),
    ] {
        assert!((parts - total).abs() <= 1e-9 * total, "{parts} vs {total}");
    }
    let zero = profile.layers.iter().filter(|l| l.latency_ms == Some(0.0)).count();
    assert!(zero >= graph.len() - 1 - plan.steps.len());
    // The post-processing: the final resize is part of the graph, the argmax is not.
    let p = &profile.latency.as_ref().unwrap().prediction;
    assert!(p.final_resize_ms > 0.0 && p.argmax_ms > 0.0);
    assert!((p.network_ms() + p.final_resize_ms - p.total_ms).abs() < 1e-12);
}

#[test]
fn snapdragon865_is_reproducible_from_its_own_laws_and_reports_leave_one_out_errors() {
    let embedded = Device::load("snapdragon865").unwrap();
    // Deriving again from the derived profile must find a scale of 1: the fit is a fixed point.
    let again = derive_snapdragon865(&embedded).unwrap();
    for (name, fit) in &embedded.families {
        let other = again.families[name];
        assert!((other.ns_per_work - fit.ns_per_work).abs() <= 1e-9 * fit.ns_per_work.max(1e-30), "{name}");
        assert!((other.ns_per_call - fit.ns_per_call).abs() <= 1e-9 * fit.ns_per_call.max(1e-30), "{name}");
    }
    let cases = published_latencies().unwrap();
    let names: Vec<(&str, (usize, usize))> = cases.iter().map(|c| (c.spec.as_str(), c.res)).collect();
    for expected in [("topformer-tiny", (512, 512)), ("topformer-small", (512, 512)), ("topformer-base", (512, 512))] {
        assert!(names.contains(&expected), "{names:?}");
    }
    assert!(names.contains(&("topformer-tiny", (448, 448))), "{names:?}");
    let pairs: Vec<(f64, f64)> = cases
        .iter()
        .map(|c| {
            let graph = compile(&load_embedded(&c.spec).unwrap().spec, c.res.0, c.res.1).unwrap();
            (Prediction::new(&graph, &embedded).network_ms(), c.ms)
        })
        .collect();
    assert_eq!(leave_one_out_errors(&pairs).len(), 4);
    // A threads-2 profile is not the paper's one-core setting.
    let mut two = embedded.clone();
    two.threads = 2;
    assert!(derive_snapdragon865(&two).unwrap_err().to_string().contains("--threads 1"));
}

#[test]
fn bench_writes_its_json_contract_with_predictions_beside_measurements() {
    let spec = micro();
    let out = toparch(&[
        "bench",
        "--spec",
        &spec,
        "--res",
        "67x45",
        "--runs",
        "3",
        "--warmup",
        "1",
        "--batch",
        "2",
        "--device",
        "snapdragon865",
        "--format",
        "json",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut keys: Vec<&str> = json.as_object().unwrap().keys().map(String::as_str).collect();
    keys.sort_unstable();
    let mut expected = [
        "spec",
        "input",
        "batch",
        "threads",
        "runs",
        "latency_ms",
        "throughput_per_s",
        "peak_activation_bytes",
        "peak_rss_bytes",
        "stages",
        "predicted",
    ];
    expected.sort_unstable();
    assert_eq!(keys, expected);
    assert_eq!(json["spec"], "topformer-micro");
    assert_eq!(json["input"], serde_json::json!([3, 67, 45]));
    assert_eq!((json["batch"].as_u64(), json["threads"].as_u64(), json["runs"].as_u64()), (Some(2), Some(1), Some(3)));
    let latency = &json["latency_ms"];
    let (min, median, p90) =
        (latency["min"].as_f64().unwrap(), latency["median"].as_f64().unwrap(), latency["p90"].as_f64().unwrap());
    assert!(latency["cold"].as_f64().unwrap() > 0.0 && min > 0.0 && min <= median && median <= p90);
    assert!((json["throughput_per_s"].as_f64().unwrap() - 2.0 / (median / 1e3)).abs() < 1e-6);
    let predicted = &json["predicted"];
    assert_eq!(predicted["device"], "snapdragon865");
    // The analytic peak equals what the executor measured.
    assert_eq!(predicted["peak_activation_bytes"], json["peak_activation_bytes"]);
    let stages = json["stages"].as_array().unwrap();
    let names: Vec<&str> = stages.iter().map(|s| s["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["token_pyramid", "semantics_extractor", "injection", "head"]);
    let stage_sum: f64 = stages.iter().map(|s| s["predicted_ms"].as_f64().unwrap()).sum();
    let total = predicted["latency_ms"].as_f64().unwrap();
    assert!(
        stage_sum < total && stage_sum > 0.5 * total,
        "{stage_sum} vs {total}: stages leave out the run's own cost"
    );
    assert!(json["peak_rss_bytes"].is_null() || json["peak_rss_bytes"].as_u64().unwrap() > 0);
    // Without a device: no predictions.
    let plain = toparch(&["bench", "--spec", &spec, "--res", "32", "--runs", "1", "--threads", "2", "-f", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(json.get("predicted").is_none() && json["stages"][0].get("predicted_ms").is_none());
    assert_eq!(json["threads"], 2);
}

#[test]
fn profile_with_a_device_reports_latency_in_every_format() {
    let out = toparch(&["profile", "-v", "tiny", "--device", "snapdragon865", "-f", "json", "-d", "layer"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["latency"]["device"], "snapdragon865");
    assert_eq!(json["latency"]["threads"], 1);
    let run_ms = {
        let graph = compile(&load_embedded("tiny").unwrap().spec, 512, 512).unwrap();
        Prediction::new(&graph, &Device::load("snapdragon865").unwrap()).run_ms
    };
    let total = json["latency"]["ms"].as_f64().unwrap() - run_ms;
    for level in ["stages", "blocks", "layers"] {
        let sum: f64 = json[level].as_array().unwrap().iter().map(|g| g["latency_ms"].as_f64().unwrap()).sum();
        assert!((sum - total).abs() <= 1e-9 * total, "{level}: {sum} vs {total}");
    }
    for format in ["table", "markdown"] {
        let out = toparch(&["profile", "-v", "tiny", "--device", "snapdragon865", "-f", format]);
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains("predicted ms (snapdragon865, 1 thr)") && text.contains("final resize + argmax"),
            "{text}"
        );
    }
    let plain = toparch(&["profile", "-v", "tiny", "-f", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&plain.stdout).unwrap();
    assert!(json.get("latency").is_none() && json["stages"][0].get("latency_ms").is_none());
    let devices = String::from_utf8_lossy(&toparch(&["devices"]).stdout).into_owned();
    for (name, _) in embedded_devices() {
        assert!(devices.contains(name), "{devices}");
    }
}

/// Expects exit 2 and one line holding every fragment.
fn expect_error(args: &[&str], fragments: &[&str]) {
    let out = toparch(args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    for f in fragments {
        assert!(err.contains(f), "{args:?}: '{f}' not in {err}");
    }
}

#[test]
fn bad_device_profiles_and_flags_exit_2_naming_what_is_wrong() {
    let spec = micro();
    let dir = scratch("bad");
    let text = embedded_devices().iter().find(|(n, _)| *n == "snapdragon865").unwrap().1;
    let write = |name: &str, contents: &str| {
        let path = dir.join(name);
        std::fs::write(&path, contents).unwrap();
        path.display().to_string()
    };
    let old = write("old.toml", &text.replace(env!("CARGO_PKG_VERSION"), "0.0.9"));
    expect_error(&["profile", "-v", "tiny", "--device", &old], &["old.toml", "toparch_version"]);
    // A profile of the first format (one byte rate per family, no caches) names the format, not a missing key.
    let first_format = write("format1.toml", &text.replace("format = 2\n", ""));
    expect_error(
        &["profile", "-v", "tiny", "--device", &first_format],
        &["format1.toml", "format 1", "calibrate again"],
    );
    let missing = write("nocache.toml", &text.replace("l3_bytes = ", "l4_bytes = "));
    expect_error(&["profile", "-v", "tiny", "--device", &missing], &["nocache.toml", "caches"]);
    let broken = write("broken.toml", &text.replace("threads = 1", "threads = \"one\""));
    expect_error(&["profile", "-v", "tiny", "--device", &broken], &["broken.toml:", "threads"]);
    let negative = write("negative.toml", &text.replacen("ns_per_work = ", "ns_per_work = -1", 1));
    expect_error(&["bench", "--spec", &spec, "--device", &negative], &["negative.toml", "non-negative"]);
    expect_error(&["profile", "-v", "tiny", "--device", "pixel9"], &["--device pixel9", "snapdragon865"]);
    expect_error(
        &["bench", "--spec", &spec, "--device", "snapdragon865", "--threads", "2"],
        &["--threads 2", "1 thread"],
    );
    expect_error(&["bench", "--spec", &spec, "--runs", "0"], &["--runs"]);
    expect_error(&["bench", "--spec", &spec, "--batch", "0"], &["--batch"]);
    expect_error(&["calibrate", "--threads", "0"], &["--threads"]);
    // Sizes that would exhaust memory or stall a thread pool are refused up front.
    expect_error(&["bench", "--spec", &spec, "--runs", "1000000000000"], &["--runs", "100000"]);
    expect_error(&["bench", "--spec", &spec, "--warmup", "18446744073709551615"], &["--warmup"]);
    expect_error(&["bench", "--spec", &spec, "--threads", "100000"], &["--threads 100000", "1024"]);
    expect_error(&["calibrate", "--threads", "5000"], &["--threads 5000", "1024"]);
    expect_error(&["calibrate", "--max-spread", "0.5"], &["--max-spread"]);
    expect_error(&["derive-device", "--from", &old], &["toparch_version"]);
    // Laws that predict nothing cannot be scaled to the published latencies: refused, nothing written.
    let zero: String = text
        .lines()
        .map(|l| match l.split_once(" = ") {
            Some((key, _)) if key.starts_with("ns_per_") => format!("{key} = 0.0\n"),
            _ => format!("{l}\n"),
        })
        .collect();
    let zero = write("zero.toml", &zero);
    let derived = dir.join("derived.toml");
    expect_error(
        &["derive-device", "--from", &zero, "--out", &derived.display().to_string()],
        &["no usable prediction"],
    );
    assert!(!derived.exists());
    std::fs::remove_dir_all(dir).ok();
}
