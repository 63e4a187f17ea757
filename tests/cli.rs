//! The command line as a user meets it: outputs, and one clear error with exit code 2 for every bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn toparch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toparch")).args(args).output().unwrap()
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A scratch directory unique to one test.
fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toparch-cli-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn micro_text() -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/topformer-micro.toml")).unwrap()
}

/// Writes `text` as a spec and expects exit 2 with every fragment in the message.
fn expect_spec_error(test: &str, text: &str, fragments: &[&str]) {
    let dir = scratch(test);
    let path = dir.join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let out = toparch(&["profile", "--spec", path.to_str().unwrap(), "--res", "64"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{test}: {err}");
    for f in fragments {
        assert!(err.contains(f), "{test}: '{f}' not in: {err}");
    }
    assert!(!err.contains("panicked"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one clear line: {err}");
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn profile_prints_totals_stages_and_published_figures() {
    let out = toparch(&["profile", "--variant", "small", "--res", "512"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = stdout(&out);
    for needle in
        ["token_pyramid", "semantics_extractor", "injection", "head", "1,164,615,680", "3,034,662", "1.2G", "3.1M"]
    {
        assert!(text.contains(needle), "missing {needle}:\n{text}");
    }
}

#[test]
fn profile_json_is_the_documented_contract() {
    let out = toparch(&[
        "profile",
        "--variant",
        "tiny",
        "--res",
        "512",
        "--format",
        "json",
        "--depth",
        "block",
        "--convention",
        "fvcore",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["spec"], "topformer-tiny");
    assert_eq!(json["input"], serde_json::json!([3, 512, 512]));
    assert_eq!(json["convention"], "fvcore");
    assert_eq!(json["params"], 1_389_654);
    assert_eq!(json["flops"], 733_396_992);
    assert_eq!(json["conventions"]["paper"], 576_544_768);
    assert_eq!(json["conventions"]["macs"], 534_110_208);
    let stages = json["stages"].as_array().unwrap();
    assert_eq!(stages.iter().map(|s| s["flops"].as_u64().unwrap()).sum::<u64>(), 733_396_992);
    let blocks = json["blocks"].as_array().unwrap();
    assert_eq!(blocks[0]["name"], "backbone.tpm.stem");
    assert!(blocks.iter().any(|b| b["name"] == "backbone.SIM.1" && b["stage"] == "injection"));
    assert_eq!(blocks.last().unwrap()["name"], "decode_head");
    assert_eq!(blocks.last().unwrap()["output_shape"], serde_json::json!([150, 512, 512]));
    let stage_only = toparch(&["profile", "-v", "tiny", "-f", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&stage_only.stdout).unwrap();
    assert!(json.get("blocks").is_none());
}

#[test]
fn markdown_layers_list_and_graph() {
    let md = toparch(&["profile", "-v", "base-cityscapes", "--res", "1024x2048", "-f", "markdown", "-d", "layer"]);
    assert!(md.status.success());
    let text = stdout(&md);
    assert!(text.contains("| backbone.trans.transformer_blocks.0.attn.q_k | matmul |"), "{text}");
    let list = stdout(&toparch(&["list"]));
    assert!(list.contains("topformer-base-cityscapes") && list.contains("topformer-tiny-imagenet"));
    let dot = toparch(&["graph", "--variant", "tiny"]);
    let dot = stdout(&dot);
    assert!(dot.starts_with("digraph") && dot.contains("backbone.SIM.1.local_embedding.conv"));
}

#[test]
fn legal_but_unusual_inputs_work() {
    // A 16×16 input is legal in PyTorch; so are heads that do not divide the token dim (208 / 5).
    assert!(toparch(&["profile", "-v", "tiny", "--res", "16"]).status.success());
    let text = micro_text().replace("num_heads = 2", "num_heads = 3");
    let dir = scratch("heads");
    let path = dir.join("heads.toml");
    std::fs::write(&path, text).unwrap();
    let out = toparch(&["profile", "--spec", path.to_str().unwrap(), "--res", "17x33"]);
    assert!(out.status.success(), "{}", stderr(&out));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_user_spec_extends_an_embedded_one() {
    let dir = scratch("extends");
    let path = dir.join("wide.toml");
    std::fs::write(&path, "extends = \"topformer-tiny\"\n\n[head]\nnum_classes = 21\n").unwrap();
    let out = toparch(&["profile", "--spec", path.to_str().unwrap(), "-f", "json"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["spec"], "wide");
    // 129 fewer classes · (128 weights + 1 bias) fewer params than Tiny.
    assert_eq!(json["params"], 1_389_654 - 129 * 129);
    // Tiny's published figures describe Tiny, not this network.
    assert_eq!(json["published"], serde_json::json!([]));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn malformed_specs_name_file_line_and_key() {
    let micro = micro_text();
    expect_spec_error("syntax", &micro.replace("depth = 2", "depth = = 2"), &["bad.toml:21", "invalid TOML"]);
    expect_spec_error("unknown-key", &micro.replace("depth = 2", "depht = 2"), &["bad.toml:21", "depht"]);
    expect_spec_error(
        "wrong-type",
        &micro.replace("depth = 2", "depth = \"two\""),
        &["bad.toml:21", "semantics_extractor.depth"],
    );
    expect_spec_error(
        "channels",
        &micro.replace("channels = [8, 16, 24, 32]", "channels = [8, 16, 24, 40]"),
        &["bad.toml:18", "token_pyramid.channels", "taps block 5, which outputs 32 channels"],
    );
    expect_spec_error(
        "index",
        &micro.replace("out_indices = [1, 2, 4, 5]", "out_indices = [1, 2, 4, 6]"),
        &["bad.toml:17", "out of range"],
    );
    expect_spec_error(
        "stride",
        &micro.replace("[3, 2, 16, 2]", "[3, 2, 16, 3]"),
        &["bad.toml:12", "token_pyramid.blocks[2]", "stride 3"],
    );
    expect_spec_error(
        "heads",
        &micro.replace("num_heads = 2", "num_heads = 0"),
        &["bad.toml:22", "num_heads", "positive"],
    );
    expect_spec_error("width", &micro.replace("[3, 1, 8, 1]", "[3, 1, 0, 1]"), &["bad.toml:10", "output channels"]);
    expect_spec_error(
        "classes",
        &micro.replace("num_classes = 10", "num_classes = 0"),
        &["bad.toml:38", "head.num_classes"],
    );
    expect_spec_error(
        "activation",
        &micro.replace("activation = \"relu6\"", "activation = \"gelu\""),
        &["bad.toml:27", "gelu"],
    );
    expect_spec_error("missing", &micro.replace("key_dim = 16\n", ""), &["semantics_extractor", "key_dim"]);
    expect_spec_error("extends", "extends = \"no-such-spec\"\n", &["bad.toml:1", "no-such-spec"]);
    expect_spec_error(
        "huge",
        &micro.replace("num_classes = 10", "num_classes = 10000000000"),
        &["bad.toml:38", "larger than"],
    );
    expect_spec_error("ratio", &micro.replace("mlp_ratio = 2", "mlp_ratio = 1e30"), &["bad.toml:25", "mlp_ratio"]);
}

#[test]
fn extends_cycle_is_reported() {
    let dir = scratch("cycle");
    std::fs::write(dir.join("a.toml"), "extends = \"b\"\n").unwrap();
    std::fs::write(dir.join("b.toml"), "extends = \"a\"\n").unwrap();
    // The same file under another spelling is the same spec.
    let name = dir.file_name().unwrap().to_str().unwrap().to_string();
    std::fs::write(dir.join("self.toml"), format!("extends = \"../{name}/self\"\n")).unwrap();
    for spec in ["a.toml", "self.toml"] {
        let out = toparch(&["profile", "--spec", dir.join(spec).to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2));
        assert!(stderr(&out).contains("cycle"), "{}", stderr(&out));
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn published_figures_belong_to_their_own_network() {
    // --classes changes the network: the paper's figures no longer apply.
    let out = toparch(&["profile", "-v", "tiny", "--classes", "1000", "-f", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["published"], serde_json::json!([]));
    let same = toparch(&["profile", "-v", "tiny", "--classes", "150", "-f", "json"]);
    let json: serde_json::Value = serde_json::from_slice(&same.stdout).unwrap();
    assert_eq!(json["published"].as_array().unwrap().len(), 2);
}

#[test]
fn a_closed_stdout_is_not_an_error() {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_toparch"))
        .args(["profile", "-v", "base", "-d", "layer", "-f", "json"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
}

#[test]
fn bad_flags_exit_2_with_one_message() {
    for args in [
        vec!["profile", "-v", "tiny", "--res", "0"],
        vec!["profile", "-v", "tiny", "--res", "12x"],
        vec!["profile", "-v", "tiny", "--res", "-5"],
        vec!["profile", "-v", "huge"],
        vec!["profile", "--spec", "no/such/file.toml"],
        vec!["profile", "-v", "tiny", "--classes", "0"],
        vec!["profile"],
    ] {
        let out = toparch(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(!stderr(&out).contains("panicked"));
    }
    assert!(stderr(&toparch(&["profile", "-v", "huge"])).contains("unknown variant 'huge'"));
    assert!(stderr(&toparch(&["profile", "-v", "tiny", "--res", "12x"])).contains("invalid resolution '12x'"));
}

#[test]
fn profile_reports_memory_in_every_format_and_for_a_batch() {
    let json_of = |args: &[&str]| -> serde_json::Value {
        let out = toparch(args);
        assert!(out.status.success(), "{}", stderr(&out));
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let one = json_of(&["profile", "-v", "tiny", "-r", "512", "-f", "json", "-d", "layer"]);
    let memory = &one["memory"];
    assert_eq!(
        memory["params_bytes"],
        serde_json::json!({"f32": 4 * 1_389_654, "f16": 2 * 1_389_654, "int8": 1_389_654})
    );
    let layers = one["layers"].as_array().unwrap();
    let summed: u64 = layers.iter().map(|l| l["activation_bytes"].as_u64().unwrap()).sum();
    assert_eq!(memory["activation_bytes"].as_u64(), Some(summed));
    for key in ["buffers_bytes", "peak_activation_bytes", "arena_bytes"] {
        assert!(memory[key].as_u64().is_some_and(|v| v > 0), "{key}");
    }
    assert_eq!(memory["peak_at"], "decode_head.resize_to_input");
    assert!(one["stages"][0]["activation_bytes"].as_u64().is_some() && one["blocks"][0]["activation_bytes"].is_u64());
    assert!(one.get("batch").is_none(), "batch 1 keeps the documented shape");
    let four = json_of(&["profile", "-v", "tiny", "-r", "512", "-f", "json", "--batch", "4"]);
    assert_eq!(four["batch"], 4);
    assert_eq!(four["params"], one["params"]);
    assert_eq!(four["flops"].as_u64(), one["flops"].as_u64().map(|f| 4 * f));
    let peak = |j: &serde_json::Value| j["memory"]["peak_activation_bytes"].as_u64().unwrap();
    assert_eq!(peak(&four), 4 * peak(&one));
    for format in ["table", "markdown"] {
        let text = stdout(&toparch(&["profile", "-v", "tiny", "-f", format, "--batch", "2"]));
        assert!(
            text.contains("(batch 2)") && text.contains("activations (f32)") && text.contains("peak live"),
            "{text}"
        );
    }
    let out = toparch(&["profile", "-v", "tiny", "--batch", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--batch"), "{}", stderr(&out));
}
