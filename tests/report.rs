//! `toparch report`: committed reports are fresh, deterministic, and every figure parses, names its points and renders.

use std::path::{Path, PathBuf};
use toparch::report::baselines::{embedded_baselines, Plot};
use toparch::report::document::{build_report, write_report};

fn committed(name: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("reports").join(name))
        .unwrap_or_else(|e| panic!("reports/{name}: {e}; run `toparch report`"))
}

#[test]
fn committed_reports_are_fresh_and_deterministic() {
    let dir: PathBuf = std::env::temp_dir().join(format!("toparch-report-{}", std::process::id()));
    let written = write_report(&dir).unwrap();
    assert!(written.len() >= 8);
    for path in &written {
        let name = path.file_name().unwrap().to_str().unwrap();
        let fresh = std::fs::read_to_string(path).unwrap();
        assert!(fresh == committed(name), "reports/{name} is stale: run `cargo run -- report`");
    }
    let again = build_report().unwrap();
    for file in again {
        assert_eq!(
            file.contents,
            std::fs::read_to_string(dir.join(&file.name)).unwrap(),
            "{} differs between runs",
            file.name
        );
    }
    std::fs::remove_dir_all(dir).ok();
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
}

fn render_non_blank(svg: &str, name: &str) {
    let tree =
        resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let size = tree.size().to_int_size();
    let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).unwrap();
    pixmap.fill(resvg::tiny_skia::Color::WHITE);
    resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
    let inked = pixmap.pixels().iter().filter(|p| (p.red(), p.green(), p.blue()) != (255, 255, 255)).count();
    assert!(inked > 5_000, "{name} renders almost blank ({inked} pixels)");
}

#[test]
fn baseline_figures_label_every_model_with_titles_and_legend() {
    let baselines = embedded_baselines().unwrap();
    for plot in Plot::ALL {
        let svg = committed(plot.file_name());
        for needle in [plot.title(), plot.x_label(), plot.y_label()] {
            assert!(svg.contains(&escape(needle)), "{}: missing '{needle}'", plot.file_name());
        }
        let entries: Vec<_> = baselines.for_plot(plot).collect();
        assert!(!entries.is_empty());
        for entry in &entries {
            let label = escape(&entry.label);
            assert!(svg.lines().any(|l| l.trim() == label), "{}: no label for {}", plot.file_name(), entry.label);
        }
        render_non_blank(&svg, plot.file_name());
    }
    let gflops = committed(Plot::Ade20kMiouVsGflops.file_name());
    assert!(gflops.contains("toparch-computed FLOPs"), "TopFormer is plotted at computed FLOPs");
}

#[test]
fn breakdown_and_resolution_figures_render() {
    for name in ["stage-breakdown.svg", "stage-params.svg", "flops-vs-resolution.svg"] {
        let svg = committed(name);
        for needle in ["TopFormer-T", "TopFormer-S", "TopFormer-B"] {
            assert!(svg.contains(needle), "{name}: missing {needle}");
        }
        render_non_blank(&svg, name);
    }
    let stages = committed("stage-breakdown.svg");
    for stage in ["token_pyramid", "semantics_extractor", "injection", "head"] {
        assert!(stages.contains(stage), "legend lacks {stage}");
    }
    // Base's paper total, to four significant digits, sits above its bar.
    assert!(stages.contains("1.813"));
}

#[test]
fn readme_reconciles_and_embeds_every_figure() {
    let md = committed("README.md");
    for needle in [
        "| topformer-small | 512x512 | params | 3.1M | 3.0M | 3,034,662 | NO",
        "| topformer-tiny | 448x448 | FLOPs (paper) | 0.5G | 0.4G | 441,417,088 | NO",
        "| topformer-base-cityscapes | 512x1024 | FLOPs (paper) | 2.7G | 2.8G | 2,799,738,880 | NO",
        "| topformer-base | 512x512 | FLOPs (paper) | 1.8G | 1.8G | 1,813,471,232 | yes",
        "| resize_bilinear | 0 | 171,835,392 | 0 |",
    ] {
        assert!(md.contains(needle), "README lacks: {needle}");
    }
    for file in [
        "ade20k-miou-vs-gflops.svg",
        "ade20k-miou-vs-latency.svg",
        "cityscapes-miou-vs-gflops.svg",
        "imagenet-top1-vs-mflops.svg",
        "stage-breakdown.svg",
        "stage-params.svg",
        "flops-vs-resolution.svg",
    ] {
        assert!(md.contains(&format!("]({file})")), "README does not embed {file}");
    }
}
