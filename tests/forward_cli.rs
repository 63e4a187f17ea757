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

/// A photo-like test image: smooth colour gradients with a few hard-edged blobs, any size.
fn photo(w: u32, h: u32) -> image::RgbImage {
    image::RgbImage::from_fn(w, h, |x, y| {
        let blob = ((x as i64 - w as i64 / 3).pow(2) + (y as i64 - h as i64 / 2).pow(2)) < (w.min(h) as i64 / 4).pow(2);
        let (r, g) = ((x * 255 / w) as u8, (y * 255 / h) as u8);
        if blob {
            image::Rgb([250, 240 - g / 2, 20])
        } else {
            image::Rgb([r, g, 255 - r / 2])
        }
    })
}

/// Whether every pixel of `out` is `photo` blended half and half with some palette colour, as mmseg's demo
/// draws a mask (`photo · 0.5 + colour · 0.5`, truncated).
fn is_half_blend(out: &image::RgbImage, photo: &image::RgbImage, palette: &[[u8; 3]]) -> bool {
    out.pixels().zip(photo.pixels()).all(|(o, p)| {
        palette.iter().any(|c| (0..3).all(|i| o.0[i] == (f32::from(p.0[i]) * 0.5 + f32::from(c[i]) * 0.5) as u8))
    })
}

#[test]
fn overlay_blends_the_mask_over_the_photo_with_a_legend() {
    let dir = scratch("overlay");
    let (input, output) = (dir.join("photo.jpg"), dir.join("overlay.png"));
    photo(83, 57).save(&input).unwrap();
    let spec = fixture("topformer-micro.toml");
    let weights = fixture("micro/topformer-micro-seed5.pth");
    let args = ["forward", "--spec", &spec, "--weights", &weights, "--input", input.to_str().unwrap()];
    let out = toparch(&[&args[..], &["--output", output.to_str().unwrap(), "--overlay"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let blended = image::open(&output).unwrap().to_rgb8();
    assert_eq!(blended.dimensions(), (83, 57));
    // The JPEG as decoded (the same decoder the command used) under the micro spec's 10-class palette.
    let decoded = image::open(&input).unwrap().to_rgb8();
    let palette = toparch::exec::image_io::palette(10);
    assert!(is_half_blend(&blended, &decoded, &palette));
    // The bare class map of the same run: the overlay is exactly it blended over the photo.
    let mask_path = dir.join("mask.png");
    assert!(toparch(&[&args[..], &["--output", mask_path.to_str().unwrap()]].concat()).status.success());
    let mask = image::open(&mask_path).unwrap().to_rgb8();
    for ((o, p), m) in blended.pixels().zip(decoded.pixels()).zip(mask.pixels()) {
        for i in 0..3 {
            assert_eq!(o.0[i], (f32::from(p.0[i]) * 0.5 + f32::from(m.0[i]) * 0.5) as u8);
        }
    }
    // With a legend: a panel on the right, one swatch per class present, the photo part unchanged.
    let legend_path = dir.join("legend.png");
    let out = toparch(&[&args[..], &["--output", legend_path.to_str().unwrap(), "--overlay", "--legend"]].concat());
    assert!(out.status.success(), "{}", stderr(&out));
    let with_legend = image::open(&legend_path).unwrap().to_rgb8();
    assert!(with_legend.width() > 83 && with_legend.height() >= 57);
    assert_eq!(image::imageops::crop_imm(&with_legend, 0, 0, 83, 57).to_image(), blended);
    let mut present: Vec<[u8; 3]> = mask.pixels().map(|p| p.0).collect();
    present.sort();
    present.dedup();
    let swatches: Vec<[u8; 3]> =
        (0..present.len() as u32).map(|row| with_legend.get_pixel(83 + 8, 4 + 16 * row + 6).0).collect();
    let mut sorted_swatches = swatches.clone();
    sorted_swatches.sort();
    assert_eq!(sorted_swatches, present, "one swatch per class present");
    // An overlay needs an image in and a PNG out.
    let micro_io = fixture("micro/topformer-micro-seed5-io.safetensors");
    let bad =
        toparch(&["forward", "--spec", &spec, "--input", &micro_io, "--output", output.to_str().unwrap(), "--overlay"]);
    assert_eq!(bad.status.code(), Some(2), "{}", stderr(&bad));
    std::fs::remove_dir_all(dir).ok();
}

#[test]
fn a_folder_of_photos_is_segmented_with_unreadable_files_skipped() {
    let dir = scratch("folder");
    let (input, output) = (dir.join("photos"), dir.join("masks"));
    std::fs::create_dir_all(&input).unwrap();
    // RGB and greyscale, PNG and JPEG, odd and non-square sizes; one broken file and one that is not an image.
    let sources = [
        ("rgb-png.png", (97, 61)),
        ("rgb-jpg.JPG", (45, 71)),
        ("grey-png.png", (33, 33)),
        ("grey-jpg.jpeg", (129, 17)),
    ];
    for (name, (w, h)) in sources {
        let img = image::DynamicImage::ImageRgb8(photo(w, h));
        let img = if name.starts_with("grey") { image::DynamicImage::ImageLuma8(img.to_luma8()) } else { img };
        img.save(input.join(name)).unwrap();
    }
    std::fs::write(input.join("broken.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
    std::fs::write(input.join("notes.txt"), "not an image").unwrap();
    let spec = fixture("topformer-micro.toml");
    let weights = fixture("micro/topformer-micro-seed5.safetensors");
    let (input_s, output_s) = (input.to_str().unwrap(), output.to_str().unwrap());
    let out = toparch(&[
        "forward",
        "--spec",
        &spec,
        "--weights",
        &weights,
        "--input",
        input_s,
        "--output",
        output_s,
        "--res",
        "64x96",
        "--overlay",
    ]);
    // The unreadable file is reported by name and makes the exit code 2; the rest are still written.
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("broken.png") && err.contains("skipped"), "{err}");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(summary.lines().count(), 1, "{summary}");
    assert!(summary.contains("4 of 5 images") && summary.contains("64x96") && summary.contains("ms per image"));
    let palette = toparch::exec::image_io::palette(10);
    for (name, (w, h)) in sources {
        let written = output.join(Path::new(name).with_extension("png"));
        let mask = image::open(&written).unwrap_or_else(|e| panic!("{}: {e}", written.display())).to_rgb8();
        assert_eq!(mask.dimensions(), (w, h), "{name}: written at the photo's own size");
        let decoded = image::open(input.join(name)).unwrap().to_rgb8();
        assert!(is_half_blend(&mask, &decoded, &palette), "{name}");
    }
    let written: Vec<_> = std::fs::read_dir(&output).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(written.len(), 4, "{written:?}");
    // The folder's images run one executor: a folder is not a file, the output not the input folder.
    let same = toparch(&["forward", "--spec", &spec, "--input", input_s, "--output", input_s]);
    assert_eq!(same.status.code(), Some(2), "{}", stderr(&same));
    std::fs::write(dir.join("file.png"), b"").unwrap();
    let onto_file =
        toparch(&["forward", "--spec", &spec, "--input", input_s, "--output", dir.join("file.png").to_str().unwrap()]);
    assert_eq!(onto_file.status.code(), Some(2), "{}", stderr(&onto_file));
    std::fs::remove_dir_all(dir).ok();
}
