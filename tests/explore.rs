//! `--set`, `toparch diff` and `toparch sweep` as a user meets them: every sweep row is the profile of the same
//! overrides, diff deltas are differences of two profiles, the Pareto figure is deterministic and labelled,
//! and bad input exits 2 naming the key.

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

fn toparch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toparch")).args(args).output().unwrap()
}

/// Runs `args`, expects success, parses standard output as JSON.
fn json(args: &[&str]) -> Value {
    let out = toparch(args);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: {e}"))
}

/// A scratch directory unique to one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toparch-explore-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `profile --format json` of `variant` at `res` with `sets` as `--set` flags, latency predicted on the
/// embedded device.
fn profile(variant: &str, res: &str, sets: &[String]) -> Value {
    let mut args = vec!["profile", "-v", variant, "--res", res, "--depth", "block", "-f", "json", "--device", DEVICE];
    for s in sets {
        args.extend(["--set", s.as_str()]);
    }
    json(&args)
}

const DEVICE: &str = "snapdragon865";

const GRIDS: [&str; 3] = [
    "semantics_extractor.depth=1,2,4",
    "semantics_extractor.num_heads=0,4,8",
    "injection.channels+head.channels=64,96",
];

#[test]
fn every_sweep_row_is_the_profile_of_its_overrides() {
    let mut args = vec!["sweep", "-v", "small", "--res", "384x320", "-f", "json", "--device", DEVICE, "--x", "params"];
    for g in GRIDS {
        args.extend(["--grid", g]);
    }
    let sweep = json(&args);
    assert_eq!(sweep["base"], "topformer-small");
    assert_eq!(sweep["res"], serde_json::json!([384, 320]));
    let rows = sweep["rows"].as_array().unwrap();
    let skipped = sweep["skipped"].as_array().unwrap();
    // num_heads = 0 is refused by the validator: listed with its reason, not fatal.
    assert_eq!((rows.len(), skipped.len()), (12, 6));
    for s in skipped {
        assert_eq!(s["set"]["semantics_extractor.num_heads"], 0);
        assert!(s["error"].as_str().unwrap().contains("semantics_extractor.num_heads: must be positive"), "{s}");
    }
    for row in rows {
        let set = row["set"].as_object().unwrap();
        let mut sets = Vec::new();
        for (key, value) in set {
            for k in key.split('+') {
                sets.push(format!("{k}={value}"));
            }
        }
        let p = profile("small", "384x320", &sets);
        assert_eq!(row["params"], p["params"], "{set:?}");
        assert_eq!(row["conventions"], p["conventions"], "{set:?}");
        assert_eq!(row["memory"], p["memory"], "{set:?}");
        assert_eq!(row["latency_ms"], p["latency"]["ms"], "{set:?}");
    }
    // The front: no row is dominated in (params, paper), and every dominated row is off it.
    let point = |r: &Value| (r["params"].as_u64().unwrap(), r["conventions"]["paper"].as_u64().unwrap());
    for r in rows {
        let p = point(r);
        let dominated = rows.iter().any(|q| {
            let q = point(q);
            q.0 <= p.0 && q.1 <= p.1 && q != p
        });
        assert_eq!(r["pareto"].as_bool().unwrap(), !dominated, "{r}");
    }
}

#[test]
fn sweep_files_are_deterministic_and_label_the_front() {
    let dir = scratch("files");
    let run = |out: &PathBuf| {
        let mut args = vec!["sweep", "-v", "base", "--res", "512", "--x-goal", "max", "--out", out.to_str().unwrap()];
        for g in GRIDS {
            args.extend(["--grid", g]);
        }
        let output = toparch(&args);
        assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
        String::from_utf8(output.stdout).unwrap()
    };
    let (first, second) = (dir.join("one"), dir.join("two"));
    let csv = run(&first);
    run(&second);
    for name in ["sweep.csv", "sweep.md", "pareto.svg"] {
        let a = std::fs::read(first.join(name)).unwrap();
        assert_eq!(a, std::fs::read(second.join(name)).unwrap(), "{name} differs between runs");
    }
    assert_eq!(csv, std::fs::read_to_string(first.join("sweep.csv")).unwrap());
    let svg = std::fs::read_to_string(first.join("pareto.svg")).unwrap();
    let tree = resvg::usvg::Tree::from_str(&svg, &resvg::usvg::Options::default()).expect("the SVG parses");
    assert!(tree.size().width() > 100.0);
    // Every front row's label is drawn, and so are the published networks.
    let texts = svg_texts(&svg);
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    assert_eq!(&header[header.len() - 6..], ["params", "paper", "fvcore", "macs", "peak_activation_bytes", "pareto"]);
    let mut front = 0;
    for line in csv.lines().skip(1).filter(|l| l.ends_with(",true")) {
        let cells: Vec<&str> = line.split(',').collect();
        let label = format!("depth={} num_heads={} channels={}", cells[0], cells[1], cells[2]);
        assert!(texts.contains(&label.as_str()), "front point '{label}' is not labelled");
        front += 1;
    }
    assert!(front >= 2, "a front of {front}");
    for name in ["TopFormer-T", "TopFormer-S", "TopFormer-B", "Pareto front"] {
        assert!(texts.contains(&name), "{name} missing");
    }
    std::fs::remove_dir_all(dir).ok();
}

/// The contents of every `<text>` element.
fn svg_texts(svg: &str) -> Vec<&str> {
    svg.split("<text").skip(1).filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim())).collect()
}

#[test]
fn diff_deltas_are_differences_of_two_profiles() {
    let diff = json(&[
        "diff",
        "small",
        "base",
        "--set-b",
        "token_pyramid.blocks[9]=[5,6,160,1]",
        "--set",
        "semantics_extractor.depth=3",
        "--res",
        "448x320",
        "-f",
        "json",
        "--device",
        DEVICE,
    ]);
    let a = profile("small", "448x320", &["semantics_extractor.depth=3".into()]);
    let b = profile(
        "base",
        "448x320",
        &["semantics_extractor.depth=3".into(), "token_pyramid.blocks[9]=[5,6,160,1]".into()],
    );
    let n = |v: &Value| v.as_i64().unwrap_or_else(|| panic!("{v} is not an integer"));
    for (side, profile) in [("a", &a), ("b", &b)] {
        assert_eq!(diff[side]["spec"], profile["spec"]);
        assert_eq!(diff[side]["params"], profile["params"]);
        assert_eq!(diff[side]["conventions"], profile["conventions"]);
        assert_eq!(diff[side]["memory"], profile["memory"]);
        assert_eq!(diff[side]["latency_ms"], profile["latency"]["ms"]);
    }
    let peak = |p: &Value| n(&p["memory"]["peak_activation_bytes"]);
    assert_eq!(n(&diff["delta"]["peak_activation_bytes"]), peak(&b) - peak(&a));
    let ms = |p: &Value| p["latency"]["ms"].as_f64().unwrap();
    assert_eq!(diff["delta"]["latency_ms"].as_f64().unwrap(), ms(&b) - ms(&a));
    assert_eq!(n(&diff["delta"]["params"]), n(&b["params"]) - n(&a["params"]));
    for c in ["paper", "fvcore", "macs"] {
        assert_eq!(n(&diff["delta"]["conventions"][c]), n(&b["conventions"][c]) - n(&a["conventions"][c]));
        let relative = diff["delta"]["relative"]["conventions"][c].as_f64().unwrap();
        let expected = (n(&b["conventions"][c]) - n(&a["conventions"][c])) as f64 / n(&a["conventions"][c]) as f64;
        assert!((relative - expected).abs() < 1e-12);
    }
    for level in ["stages", "blocks"] {
        let entries = diff[level].as_array().unwrap();
        let groups = |p: &Value| p[level].as_array().unwrap().clone();
        let (ga, gb) = (groups(&a), groups(&b));
        let names: Vec<&str> = entries.iter().map(|e| e["name"].as_str().unwrap()).collect();
        // Every group of either side appears once.
        for g in ga.iter().chain(&gb) {
            assert_eq!(names.iter().filter(|n| **n == g["name"]).count(), 1, "{}", g["name"]);
        }
        for e in entries {
            let find = |gs: &[Value]| gs.iter().find(|g| g["name"] == e["name"]).cloned();
            let (in_a, in_b) = (find(&ga), find(&gb));
            let presence = match (&in_a, &in_b) {
                (Some(_), Some(_)) => "both",
                (Some(_), None) => "a only",
                _ => "b only",
            };
            assert_eq!(e["presence"], presence, "{}", e["name"]);
            let value = |g: &Option<Value>, key: &str, c: Option<&str>| {
                g.as_ref().map_or(0, |g| n(c.map_or(&g[key], |c| &g[key][c])))
            };
            assert_eq!(n(&e["delta"]["params"]), value(&in_b, "params", None) - value(&in_a, "params", None));
            assert_eq!(
                n(&e["delta"]["activation_bytes"]),
                value(&in_b, "activation_bytes", None) - value(&in_a, "activation_bytes", None)
            );
            for c in ["paper", "fvcore", "macs"] {
                assert_eq!(
                    n(&e["delta"]["conventions"][c]),
                    value(&in_b, "conventions", Some(c)) - value(&in_a, "conventions", Some(c)),
                    "{} {c}",
                    e["name"]
                );
            }
            assert_eq!(e["a"].is_null(), in_a.is_none());
        }
    }
}

#[test]
fn diff_marks_blocks_on_one_side_only() {
    let out = toparch(&["diff", "tiny", "tiny", "--set-b", "semantics_extractor.depth=5", "-f", "markdown"]);
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(out.status.success());
    assert!(text.contains("| backbone.trans.transformer_blocks.4 (b only) |"), "{text}");
    assert!(text.contains("- B: `topformer-tiny --set semantics_extractor.depth=5` at 3×512×512"), "{text}");
}

#[test]
fn set_changes_the_profile_and_drops_published_figures() {
    let plain = profile("base", "512", &[]);
    assert!(!plain["published"].as_array().unwrap().is_empty());
    let deeper = profile("base", "512", &["semantics_extractor.depth=5".into()]);
    assert!(deeper["params"].as_u64() > plain["params"].as_u64());
    assert!(deeper["published"].as_array().unwrap().is_empty(), "the published figures are of another network");
    // Setting a key to the value it has keeps the network, and its published figures.
    let same = profile("base", "512", &["semantics_extractor.depth=4".into()]);
    assert_eq!(same, plain);
    // A bare word is a string; the cityscapes spec keeps its default resolution (the official test scale).
    let city = json(&["profile", "-v", "base-cityscapes", "--set", "head.activation=relu6", "-f", "json"]);
    assert_eq!(city["input"], serde_json::json!([3, 512, 1024]));
}

/// Expects exit 2 and one line on standard error holding every fragment.
fn expect_error(args: &[&str], fragments: &[&str]) {
    let out = toparch(args);
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
    assert!(!err.contains("panicked"), "{err}");
    for f in fragments {
        assert!(err.contains(f), "{args:?}: '{f}' not in: {err}");
    }
    let lines: Vec<&str> = err.lines().filter(|l| !l.is_empty() && !l.starts_with("For more information")).collect();
    assert_eq!(lines.len(), 1, "one clear line: {err}");
}

#[test]
fn bad_overrides_and_grids_exit_2_naming_the_key() {
    expect_error(
        &["profile", "-v", "base", "--set", "semantics_extractor.dpth=3"],
        &["semantics_extractor.dpth", "unknown field", "(from --set semantics_extractor.dpth=3)"],
    );
    expect_error(
        &["graph", "-v", "tiny", "--set", "semantics_extractor.depth=[1]"],
        &["semantics_extractor.depth", "invalid type", "from --set"],
    );
    expect_error(
        &["profile", "-v", "tiny", "--set", "semantics_extractor.depth=65536"],
        &["semantics_extractor.depth", "more than the supported 1024", "from --set"],
    );
    expect_error(
        &["profile", "-v", "tiny", "--set", "head.num_classes=0"],
        &["head.num_classes: must be positive", "from --set"],
    );
    expect_error(
        &["profile", "-v", "tiny", "--set", "token_pyramid.blocks[99]=[3,1,16,1]"],
        &["index 99 is out of range"],
    );
    expect_error(&["profile", "-v", "tiny", "--set", "depth"], &["--set", "is not KEY=VALUE"]);
    // A cross-field rule broken by an override names the key it checks and the override.
    expect_error(
        &["profile", "-v", "tiny", "--set", "injection.channels=96"],
        &["head.channels: must equal injection.channels (96)", "with --set injection.channels=96"],
    );
    expect_error(
        &["sweep", "-v", "tiny", "--grid", "semantics_extractor.depth="],
        &["semantics_extractor.depth: the value list is empty"],
    );
    expect_error(
        &["sweep", "-v", "tiny", "--grid", "semantics_extractor.depht=1,2"],
        &["--grid semantics_extractor.depht", "unknown field"],
    );
    expect_error(
        &["sweep", "-v", "tiny", "--grid", "semantics_extractor.depth=2,x"],
        &["--grid semantics_extractor.depth", "invalid type: string \"x\""],
    );
    expect_error(
        &[
            "sweep",
            "-v",
            "tiny",
            "--grid",
            "semantics_extractor.num_heads=0",
            "--grid",
            "semantics_extractor.depth=1,2",
        ],
        &["every one of the 2 combinations is invalid", "semantics_extractor.num_heads: must be positive"],
    );
    expect_error(
        &["sweep", "-v", "tiny", "--grid", "head.channels=8", "--grid", "injection.channels+head.channels=8"],
        &["a key is also swept"],
    );
    expect_error(
        &["sweep", "-v", "tiny", "--grid", "semantics_extractor.depth=1,2", "--x", "latency"],
        &["latency needs --device"],
    );
    expect_error(&["diff", "tiny", "nonesuch"], &["unknown variant 'nonesuch'"]);
    expect_error(
        &["diff", "tiny", "small", "--set-a", "semantics_extractor.key_dim=0"],
        &["semantics_extractor.key_dim: must be positive"],
    );
}
