//! `toparch forward` end to end: images in, coloured masks and tensors out, clear errors for bad files.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use toparch::exec::weights::{read_tensors, TensorData};

fn toparch(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_toparch")).args(args).output().unwrap()
}

fn scratch(test: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("toparch-fwd-{}-{test}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn fixture(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name).display().to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn gradient_png(path: &Path, w: u32, h: u32) {
    let img = image::RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]));
    img.save(path).unwrap();
}

#[test]
fn an_image_in_gives_a_coloured_mask_out() {
    let dir = scratch("mask");
    let (input, output) = (dir.join("in.png"), dir.join("mask.png"));
    gradient_png(&input, 97, 61);
    let out = toparch(&[
        "forward",
        "--spec",
        &fixture("topformer-micro.toml"),
        "--weights",
        &fixture("micro/topformer-micro-seed5.pth"),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--threads",
        "1",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let mask = image::open(&output).unwrap().to_rgb8();
    assert_eq!(mask.dimensions(), (97, 61), "the mask has the input's size");
    let palette = toparch::exec::image_io::palette(10);
    assert!(mask.pixels().all(|p| palette.contains(&p.0)), "every pixel is a class colour");
    // `--res` resizes the image first.
    let resized = toparch(&[
        "forward",
        "--spec",
        &fixture("topformer-micro.toml"),
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
        "--res",
        "40x48",
    ]);
    assert!(resized.status.success(), "{}", stderr(&resized));
    assert_eq!(image::open(&output).unwrap().to_rgb8().dimensions(), (48, 40));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn dump_intermediates_writes_every_tap() {
    let dir = scratch("dump");
    let output = dir.join("out.safetensors");
    let out = toparch(&[
        "forward",
        "--spec",
        &fixture("topformer-micro.toml"),
        "--weights",
        &fixture("micro/topformer-micro-seed5.safetensors"),
        "--input",
        &fixture("micro/topformer-micro-seed5-io.safetensors"),
        "--output",
        output.to_str().unwrap(),
        "--dump-intermediates",
        "--profile",
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("GMAC/s") && stdout.contains("semantics_extractor"), "{stdout}");
    let ours = read_tensors(&output).unwrap();
    let reference = read_tensors(Path::new(&fixture("micro/topformer-micro-seed5-io.safetensors"))).unwrap();
    for name in ["tpm.out0", "tpm.out3", "ppa", "trans", "sim.out2", "logits"] {
        let (TensorData::F32(a), TensorData::F32(b)) = (&ours[name].data, &reference[name].data) else { panic!() };
        assert_eq!(ours[name].shape, reference[name].shape);
        assert!(a.iter().zip(b).all(|(x, y)| (x - y).abs() <= 1e-4), "{name}");
    }
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_classifier_writes_logits() {
    let dir = scratch("classifier");
    let (input, output) = (dir.join("in.png"), dir.join("logits.safetensors"));
    gradient_png(&input, 64, 64);
    let out = toparch(&[
        "forward",
        "-v",
        "tiny-imagenet",
        "--input",
        input.to_str().unwrap(),
        "--output",
        output.to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(read_tensors(&output).unwrap()["logits"].shape, vec![1, 1000]);
    let png = toparch(&[
        "forward",
        "-v",
        "tiny-imagenet",
        "--input",
        input.to_str().unwrap(),
        "--output",
        dir.join("x.png").to_str().unwrap(),
    ]);
    assert_eq!(png.status.code(), Some(2));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn bad_weights_and_inputs_exit_2_without_output() {
    let dir = scratch("bad");
    let output = dir.join("out.safetensors");
    let text = dir.join("weights.safetensors");
    std::fs::write(&text, "not a checkpoint").unwrap();
    let micro_io = fixture("micro/topformer-micro-seed5-io.safetensors");
    let cases: Vec<(Vec<String>, &str)> = vec![
        // Tiny's spec with micro's weights: reported by tensor name and shape.
        (
            vec!["-v".into(), "tiny".into(), "--weights".into(), fixture("micro/topformer-micro-seed5.pth")],
            "backbone.tpm.layer1.conv.2.c.weight has shape [8, 16, 1, 1], expected [16, 16, 1, 1]",
        ),
        (vec!["-v".into(), "tiny".into(), "--weights".into(), text.display().to_string()], "weights.safetensors"),
        (vec!["-v".into(), "tiny".into(), "--weights".into(), "no/such.pth".into()], "no/such.pth"),
        (
            vec!["--spec".into(), fixture("topformer-micro.toml"), "--res".into(), "64".into()],
            "resize applies to images only",
        ),
    ];
    for (args, needle) in cases {
        let mut full: Vec<String> = vec!["forward".into()];
        full.extend(args);
        full.extend(["--input".into(), micro_io.clone(), "--output".into(), output.display().to_string()]);
        let refs: Vec<&str> = full.iter().map(String::as_str).collect();
        let out = toparch(&refs);
        assert_eq!(out.status.code(), Some(2), "{full:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{needle}: {}", stderr(&out));
        assert!(!output.exists(), "no output file after an error");
    }
    for (input, needle) in [(text.display().to_string(), "weights.safetensors"), ("missing.png".into(), "missing.png")]
    {
        let out = toparch(&["forward", "-v", "tiny", "--input", &input, "--output", output.to_str().unwrap()]);
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(needle), "{}", stderr(&out));
    }
    let bad_ext = toparch(&["forward", "-v", "tiny", "--input", &micro_io, "--output", "out.txt"]);
    assert_eq!(bad_ext.status.code(), Some(2));
    // A write that fails at the last step (the output name is a directory) leaves no temporary file behind.
    let blocked = dir.join("blocked.safetensors");
    std::fs::create_dir_all(&blocked).unwrap();
    let spec = fixture("topformer-micro.toml");
    let out = toparch(&["forward", "--spec", &spec, "--input", &micro_io, "--output", blocked.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let leftovers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    std::fs::remove_dir_all(dir).ok();
}
