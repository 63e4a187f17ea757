//! `toparch report`: the markdown report and its SVG figures, deterministic so reviewers can diff them.

use super::baselines::{embedded_baselines, Baseline, Baselines, Family, Plot};
use super::format::{percent, si, thousands};
use super::mobile::mobile_rows;
use super::plot::{
    family_style, line_svg, scatter_svg, stacked_bars_svg, LineDash, LineSeries, ScatterPoint, StackedBar,
};
use super::rows::{breakdown, published, Depth, Rows};
use super::table::markdown_table;
use crate::cost::{Convention, Device, Prediction, Profile};
use crate::error::{write_atomic, Error, Result};
use crate::explore::{Goal, Grid, Metric, Objective, Sweep, SweepRow};
use crate::graph::compile;
use crate::report::explore::{pareto_figure, pareto_title};
use crate::spec::{embedded_specs, load_embedded, parse_resolution, Spec, SpecTemplate};
use std::path::{Path, PathBuf};

/// The ADE20K variants the report compares, by embedded spec name and short label.
pub(crate) const VARIANTS: [(&str, &str); 3] =
    [("topformer-tiny", "T"), ("topformer-small", "S"), ("topformer-base", "B")];

/// The embedded device profile of the paper's latency setting.
const SNAPDRAGON: &str = "snapdragon865";

/// Resolutions of the FLOPs-vs-resolution sweep (square inputs).
const SWEEP: [usize; 7] = [256, 384, 512, 768, 1024, 1536, 2048];

/// The worked design-space sweep around TopFormer-B: transformer depth × heads × injection/head width at 512².
const DESIGN_SPACE_GRIDS: [&str; 3] = [
    "semantics_extractor.depth=2,4,6",
    "semantics_extractor.num_heads=4,8",
    "injection.channels+head.channels=128,192,256",
];

/// TopFormer-B's own values of [`DESIGN_SPACE_GRIDS`], in grid order.
const BASE_VALUES: [i64; 3] = [4, 8, 256];

/// File name of the design-space figure.
const DESIGN_SPACE_FIGURE: &str = "design-space-base.svg";

/// Sweeps [`DESIGN_SPACE_GRIDS`] around TopFormer-B; the front is the most parameters (capacity) for the fewest
/// paper FLOPs.
fn design_space() -> Result<Sweep> {
    let template = SpecTemplate::embedded("topformer-base")?;
    let grids = DESIGN_SPACE_GRIDS.iter().map(|g| g.parse().map_err(Error::input)).collect::<Result<Vec<Grid>>>()?;
    let axes = (Objective { metric: Metric::Params, goal: Goal::Max }, Objective::min(Metric::Paper));
    Sweep::run(
        "topformer-base",
        grids,
        (512, 512),
        None,
        axes,
        |o| template.check_schema(o),
        |o| template.instantiate(o),
        || {},
    )
}

/// The report's design-space section: the figure, what it shows, and the front as a table.
fn design_space_section(sweep: &Sweep) -> String {
    let grids: Vec<String> = DESIGN_SPACE_GRIDS.iter().map(|g| format!("--grid {g}")).collect();
    let mut md = format!(
        "\n## Design space around TopFormer-B\n\n\
         `toparch sweep --variant base --res 512 {} --x-goal max` profiles these {} variants. Without accuracy, the useful front of two costs is the most parameters (capacity) for the FLOPs: \
         a variant off the front buys its FLOPs less capacity than one on it.\n\n![Design space around \
         TopFormer-B]({DESIGN_SPACE_FIGURE})\n\n",
        grids.join(" "),
        sweep.rows.len()
    );
    md.push_str(&design_space_findings(sweep));
    md.push_str("\n\nThe front, by FLOPs:\n\n");
    let mut front = Rows {
        header: sweep
            .grids
            .iter()
            .map(|g| format!("`{}`", g.label))
            .chain(["params".into(), "FLOPs (paper)".into()])
            .collect(),
        body: vec![],
        total: vec![],
    };
    for row in sweep.front() {
        let mut cells: Vec<String> = row.set.iter().map(|(_, v)| v.to_string()).collect();
        cells.extend([thousands(row.params), thousands(row.cost.paper)]);
        front.body.push(cells);
    }
    md.push_str(&markdown_table(&front));
    md
}

/// What the sweep shows, in figures taken from it: where TopFormer-B sits against the front, and which knob the
/// front spends FLOPs on.
fn design_space_findings(sweep: &Sweep) -> String {
    let values = |row: &SweepRow| -> Vec<i64> { row.set.iter().filter_map(|(_, v)| v.as_integer()).collect() };
    let Some(base) = sweep.rows.iter().find(|r| values(r) == BASE_VALUES) else {
        return String::new();
    };
    let front = sweep.front();
    let widths = sweep.grids[2].values.iter().filter_map(toml::Value::as_integer);
    let Some(narrowest_width) = widths.min() else {
        return String::new();
    };
    let narrowest = front.iter().filter(|r| values(r)[2] == narrowest_width).count();
    let mut text = format!(
        "TopFormer-B itself (depth {}, {} heads, {} channels: {} params, {} FLOPs) is {} the front. ",
        BASE_VALUES[0],
        BASE_VALUES[1],
        BASE_VALUES[2],
        si(base.params),
        si(base.cost.paper),
        if base.pareto { "on" } else { "off" }
    );
    if let Some(better) = front.iter().filter(|r| r.cost.paper <= base.cost.paper).max_by_key(|r| r.params) {
        if !base.pareto {
            let v = values(better);
            text.push_str(&format!(
                "For no more FLOPs, depth {}, {} heads and {} channels reach {} params ({} FLOPs, {} params). ",
                v[0],
                v[1],
                v[2],
                si(better.params),
                si(better.cost.paper),
                percent_change(better.params, base.params),
            ));
        }
    }
    text.push_str(&format!(
        "{narrowest} of the {} front points keep the narrowest injection and head ({narrowest_width} channels): those \
         convolutions run at 1/8 to 1/32 of the input side, so their width costs FLOPs at every pixel, while the \
         transformer works on 1/64-side tokens, where a block costs many parameters but few FLOPs. Parameters are \
         not accuracy (the paper chose its widths by mIoU), but the figure shows where a FLOP buys the most capacity.",
        front.len()
    ));
    text
}

/// `+12.5 %`: the change from `base` to `value`.
fn percent_change(value: u64, base: u64) -> String {
    format!("{:+.1} %", 100.0 * (value as f64 - base as f64) / base as f64)
}

/// One generated file.
pub struct ReportFile {
    /// File name inside the report directory.
    pub name: String,
    /// Its full contents.
    pub contents: String,
}

fn profile_of(spec: &Spec, (h, w): (usize, usize)) -> Result<Profile> {
    Profile::new(&compile(spec, h, w)?, spec)
}

fn spec(name: &str) -> Result<Spec> {
    Ok(load_embedded(name)?.spec)
}

/// The x value toparch computes for a TopFormer baseline (paper-convention GFLOPs or MFLOPs at its input
/// size), or `None` when the entry names no embedded spec or resolution.
fn computed_x(entry: &Baseline, plot: Plot) -> Result<Option<f64>> {
    let (Some(name), Ok(res)) = (&entry.spec, parse_resolution(&entry.input)) else { return Ok(None) };
    if !embedded_specs().iter().any(|s| s.name == name) {
        return Ok(None);
    }
    let flops = profile_of(&spec(name)?, res)?.flops(Convention::Paper) as f64;
    Ok(match plot {
        Plot::Ade20kMiouVsGflops | Plot::CityscapesMiouVsGflops => Some(flops / 1e9),
        Plot::ImagenetTop1VsMflops => Some(flops / 1e6),
        Plot::Ade20kMiouVsLatency => None,
    })
}

/// A baseline figure: TopFormer's published accuracy at toparch's computed compute (first, so drawn on top),
/// then every baseline as published.
fn baseline_figure(baselines: &Baselines, plot: Plot) -> Result<String> {
    let computed_series = "TopFormer (published accuracy, toparch-computed FLOPs)";
    let mut ours = Vec::new();
    let mut others = Vec::new();
    for entry in baselines.for_plot(plot) {
        match (entry.is_topformer(), computed_x(entry, plot)?) {
            (true, Some(x)) => {
                if let Some(mut p) = entry.scatter_point(plot, computed_series) {
                    p.x = x;
                    p.approximate = entry.is_approximate(plot.y_metric());
                    ours.push(p);
                }
            }
            _ => others.extend(entry.scatter_point(plot, entry.family.display_name())),
        }
    }
    if plot == Plot::Ade20kMiouVsLatency {
        ours.extend(predicted_latency_points(baselines, plot)?);
    }
    ours.extend(others);
    scatter_svg(plot.title(), plot.x_label(), plot.y_label(), plot.log_x(), &ours)
}

/// TopFormer's published mIoU at the latency the embedded snapdragon865 profile predicts for the network (the
/// final resize left out, as the paper times it): one distinct series beside the published points.
fn predicted_latency_points(baselines: &Baselines, plot: Plot) -> Result<Vec<ScatterPoint>> {
    let device = Device::load(SNAPDRAGON)?;
    let series = format!("TopFormer (published mIoU, latency predicted by toparch, {SNAPDRAGON})");
    let mut points: Vec<ScatterPoint> = Vec::new();
    for entry in baselines.for_plot(plot).filter(|e| e.is_topformer()) {
        let (Some(name), Ok((h, w))) = (&entry.spec, parse_resolution(&entry.input)) else { continue };
        let Some(mut point) = entry.scatter_point(plot, &series) else { continue };
        point.x = Prediction::new(&compile(&spec(name)?, h, w)?, &device).network_ms();
        point.label = format!("{} (predicted)", point.label);
        point.style = point.style.derived();
        point.approximate = false;
        if !points.iter().any(|p| p.label == point.label && p.x == point.x && p.y == point.y) {
            points.push(point);
        }
    }
    Ok(points)
}

fn stage_bars(profiles: &[(&str, Profile)], value: impl Fn(&crate::cost::Group) -> f64) -> Vec<StackedBar> {
    profiles
        .iter()
        .map(|(label, p)| StackedBar {
            label: format!("TopFormer-{label}"),
            segments: p.stages.iter().map(|g| (g.name.clone(), value(g))).collect(),
        })
        .collect()
}

/// Builds every file of the report.
pub fn build_report() -> Result<Vec<ReportFile>> {
    let baselines = embedded_baselines()?;
    let mut files = Vec::new();
    for plot in Plot::ALL {
        files.push(ReportFile { name: plot.file_name().into(), contents: baseline_figure(&baselines, plot)? });
    }
    let at_512: Vec<(&str, Profile)> = VARIANTS
        .iter()
        .map(|&(name, label)| Ok((label, profile_of(&spec(name)?, (512, 512))?)))
        .collect::<Result<_>>()?;
    files.push(ReportFile {
        name: "stage-breakdown.svg".into(),
        contents: stacked_bars_svg(
            "Where the FLOPs go: per stage at 512×512 (paper convention)",
            "GFLOPs (10^9 multiply-adds)",
            &stage_bars(&at_512, |g| g.cost.paper as f64 / 1e9),
        )?,
    });
    files.push(ReportFile {
        name: "stage-params.svg".into(),
        contents: stacked_bars_svg(
            "Where the parameters go: per stage",
            "parameters (millions)",
            &stage_bars(&at_512, |g| g.params as f64 / 1e6),
        )?,
    });
    let mut sweep = Vec::new();
    for &(name, label) in &VARIANTS {
        let s = spec(name)?;
        let profiles = SWEEP.iter().map(|&r| profile_of(&s, (r, r))).collect::<Result<Vec<_>>>()?;
        sweep.push((label, profiles));
    }
    let series: Vec<LineSeries> = sweep
        .iter()
        .zip([LineDash::Solid, LineDash::Dashed, LineDash::Dotted])
        .map(|((label, profiles), dash)| LineSeries {
            name: format!("TopFormer-{label}"),
            style: family_style(Family::Topformer),
            dash,
            points: SWEEP
                .iter()
                .zip(profiles)
                .map(|(&r, p)| (r as f64, p.flops(Convention::Paper) as f64 / 1e9))
                .collect(),
        })
        .collect();
    files.push(ReportFile {
        name: "flops-vs-resolution.svg".into(),
        contents: line_svg(
            "FLOPs vs input resolution (square inputs, paper convention)",
            "input side (pixels, log scale)",
            "GFLOPs (10^9 multiply-adds, log scale)",
            true,
            true,
            &series,
        )?,
    });
    let design = design_space()?;
    files.push(ReportFile {
        name: DESIGN_SPACE_FIGURE.into(),
        contents: pareto_figure(&design, &pareto_title(&design))?,
    });
    let mut md = markdown(&baselines, &at_512, &sweep)?;
    md.push_str(&design_space_section(&design));
    files.push(ReportFile { name: "README.md".into(), contents: md });
    Ok(files)
}

/// Writes the report into `dir` (created if needed), each file atomically, after every file has been built;
/// returns the paths written.
pub fn write_report(dir: &Path) -> Result<Vec<PathBuf>> {
    let files = build_report()?;
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    files
        .into_iter()
        .map(|f| {
            let path = dir.join(&f.name);
            write_atomic(&path, f.contents.as_bytes())?;
            Ok(path)
        })
        .collect()
}

/// Predicted vs published latency in the paper's mobile setting, and the post-processing it leaves out.
fn mobile_section() -> Result<String> {
    let device = Device::load(SNAPDRAGON)?;
    let mut md = format!(
        "### Mobile latency: predicted vs published (Snapdragon 865, one ARM core, TNN)\n\n\
         The `{SNAPDRAGON}` device profile ({}, {}) predicts every step of the executor's plan with its kernel \
         family's cost law. Its one scale factor is fitted to these four published figures, so the error column \
         is in-sample; the leave-one-out column refits the scale without the row and predicts it. The paper's \
         figures leave out the final resize of the logits to the input size and the argmax, which a deployment \
         runs: the last columns predict them, which is why phones measure several times the paper's figures \
         (hustvl/TopFormer issue 12, fudan-zvg/SeaFormer issue 24).\n\n",
        device.date, device.source
    );
    md.push_str(&markdown_table(&mobile_rows(&device)?));
    md.push('\n');
    Ok(md)
}

fn markdown(baselines: &Baselines, at_512: &[(&str, Profile)], sweep: &[(&str, Vec<Profile>)]) -> Result<String> {
    let mut md = String::from(
        "# TopFormer, counted and compared\n\n\
         Generated by `toparch report` from the specs in `specs/` and the published baselines in \
         `specs/baselines.toml`; CI regenerates it and fails on any difference, so do not edit it by hand. \
         FLOPs are multiply-accumulate counts (one multiply-add = 1), as the paper and mmcv/fvcore report them; \
         plain FLOPs are twice the `macs` column. All counts are for batch 1.\n\n",
    );
    md.push_str("## At a glance: ADE20K models at 512×512\n\n");
    let mut glance = Rows {
        header: ["model", "params", "FLOPs (paper)", "FLOPs (fvcore)", "MACs", "published", "ADE20K mIoU (published)"]
            .map(String::from)
            .to_vec(),
        body: vec![],
        total: vec![],
    };
    for ((name, _), (label, p)) in VARIANTS.iter().zip(at_512) {
        let published_figures: Vec<String> =
            p.published.iter().map(|c| format!("{} {}", c.published, c.metric)).collect();
        let miou: Vec<String> = baselines
            .topformer(name)
            .iter()
            .filter(|b| b.input == "512x512" && !b.reproduction)
            .filter_map(|b| b.miou.map(|m| format!("{m} ({})", b.variant.as_deref().unwrap_or("-"))))
            .collect();
        glance.body.push(vec![
            format!("TopFormer-{label}"),
            thousands(p.params),
            thousands(p.flops(Convention::Paper)),
            thousands(p.flops(Convention::Fvcore)),
            thousands(p.flops(Convention::Macs)),
            published_figures.join(", "),
            miou.join("; "),
        ]);
    }
    md.push_str(&markdown_table(&glance));
    md.push_str(
        "\n## Computed vs published\n\nEvery published figure of every embedded spec, rounded the way the \
                 publication rounds. Where they disagree, the paper's own code computes the value shown here.\n\n",
    );
    let mut reconciliation = Rows { header: vec![], body: vec![], total: vec![] };
    for embedded in embedded_specs() {
        let s = spec(embedded.name)?;
        let mut resolutions: Vec<&str> = s.published.iter().map(|f| f.res.as_str()).collect();
        resolutions.dedup();
        for res in resolutions {
            let rows = published(&profile_of(&s, parse_resolution(res)?)?);
            reconciliation.header = ["spec", "resolution"].map(String::from).into_iter().chain(rows.header).collect();
            for r in rows.body {
                reconciliation.body.push([s.name.clone(), res.to_string()].into_iter().chain(r).collect());
            }
        }
    }
    md.push_str(&markdown_table(&reconciliation));
    md.push_str(
        "\n## Figures\n\nTopFormer points pair the published accuracy with the FLOPs toparch computes from the \
                 spec; every other point is as published (hollow markers: approximate values read off figures).\n\n",
    );
    for plot in Plot::ALL {
        md.push_str(&format!("### {}\n\n![{}]({})\n\n", plot.title(), plot.title(), plot.file_name()));
    }
    md.push_str(
        "### Where the FLOPs and parameters go\n\n![FLOPs per stage](stage-breakdown.svg)\n\n\
                 ![Parameters per stage](stage-params.svg)\n\n",
    );
    md.push_str(&mobile_section()?);
    md.push_str("### FLOPs vs resolution\n\n![FLOPs vs resolution](flops-vs-resolution.svg)\n\n");
    md.push_str(
        "Convolutions scale with the pixel count, and so do the tokens (pooled to 1/64 of the input side), so \
                 under `paper`, which does not count the attention matmuls, every stage keeps its share. The attention \
                 grows with the square of the token count: counting its matmuls (`macs`), the semantics extractor's \
                 share grows with the input.\n\n",
    );
    let mut table = Rows {
        header: std::iter::once("input".to_string())
            .chain(sweep.iter().flat_map(|(l, _)| {
                [
                    format!("TopFormer-{l} GFLOPs (paper)"),
                    format!("{l}: semantics extractor, paper"),
                    format!("{l}: semantics extractor, macs"),
                ]
            }))
            .collect(),
        body: vec![],
        total: vec![],
    };
    for (i, r) in SWEEP.iter().enumerate() {
        let mut row = vec![format!("{r}×{r}")];
        for (_, profiles) in sweep {
            let p = &profiles[i];
            let se = p.stages.iter().find(|g| g.name == "semantics_extractor").map(|g| g.cost).unwrap_or_default();
            row.push(format!("{:.3}", p.flops(Convention::Paper) as f64 / 1e9));
            row.push(percent(se.paper, p.flops(Convention::Paper)));
            row.push(percent(se.macs, p.flops(Convention::Macs)));
        }
        table.body.push(row);
    }
    md.push_str(&markdown_table(&table));
    md.push_str("\n## Per-variant breakdown at 512×512\n\n");
    for (label, p) in at_512 {
        md.push_str(&format!(
            "### TopFormer-{label}: {} params, {} FLOPs (paper)\n\n",
            si(p.params),
            si(p.flops(Convention::Paper))
        ));
        for convention in Convention::ALL {
            md.push_str(&markdown_table(&breakdown(p, convention, Depth::Stage)));
            md.push('\n');
        }
    }
    md.push_str(
        "## Why counters disagree: TopFormer-S at 512×512 by op kind\n\n\
                 mmcv (`paper`) counts BatchNorm, ReLU modules and conv biases but no functional op; fvcore counts \
                 BatchNorm, the attention matmuls, adaptive pooling and bilinear resizes (the final resize of the \
                 logits to the input alone is 4·150·512² = 157 M) but no activation; plain MACs count only conv, \
                 linear and matmul.\n\n",
    );
    let small = &at_512[1].1;
    let mut by_op =
        Rows { header: ["op", "paper", "fvcore", "macs"].map(String::from).to_vec(), body: vec![], total: vec![] };
    let paper = breakdown(small, Convention::Paper, Depth::Op);
    let fvcore = breakdown(small, Convention::Fvcore, Depth::Op);
    let macs = breakdown(small, Convention::Macs, Depth::Op);
    for ((p, f), m) in paper.body.iter().zip(&fvcore.body).zip(&macs.body) {
        if p[4] != "0" || f[4] != "0" || m[4] != "0" {
            by_op.body.push(vec![p[0].clone(), p[4].clone(), f[4].clone(), m[4].clone()]);
        }
    }
    by_op.total = vec!["total".into(), paper.total[4].clone(), fvcore.total[4].clone(), macs.total[4].clone()];
    md.push_str(&markdown_table(&by_op));
    md.push_str(&format!(
        "\nBaselines: {} published entries ({} TopFormer); sources and exactness are recorded per entry in \
         `specs/baselines.toml`. Other families: {}.\n",
        baselines.models.len(),
        baselines.models.iter().filter(|b| b.is_topformer()).count(),
        [Family::Seaformer, Family::Cnn, Family::Vit].map(|f| f.display_name()).join(", ")
    ));
    Ok(md)
}
