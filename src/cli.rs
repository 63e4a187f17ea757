//! The `toparch` command line.

use crate::budget;
use crate::cost::bench::{bench, BenchOptions};
use crate::cost::calibrate::{calibrate, CALIBRATION_RUNS, MAX_SPREAD, RUNS_PER_CASE};
use crate::cost::latency::embedded_devices;
use crate::cost::{Convention, Device, Profile};
use crate::error::{write_atomic, Error, Result};
use crate::exec::image_io::{colourise, decode_image, overlay, palette, prepare, with_legend, write_png};
use crate::exec::weights::{read_tensors, write_safetensors};
use crate::exec::{argmax_resized, check_threads, read_input, Executor, NodeParams};
use crate::explore::{Diff, Goal, Grid, Metric, Objective, Sweep};
use crate::export::{export_model, ExportOptions, Opset};
use crate::graph::Graph;
use crate::report::bench::BenchReport;
use crate::report::document::write_report;
use crate::report::explore::{
    diff_json, render_diff, sweep_csv, sweep_json, sweep_markdown, sweep_summary, write_sweep, DiffSide,
};
use crate::report::json::profile_json;
use crate::report::mobile::derive_snapdragon865;
use crate::report::table::{render_profile, Style};
use crate::report::timing::render_timing;
use crate::report::Depth;
use crate::spec::{embedded_specs, load_embedded, parse_resolution, LoadedSpec, Override, SpecTemplate, Task};
use clap::{Args, Parser, Subcommand, ValueEnum};
use image::RgbImage;
use prost::Message;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

/// Analyse TopFormer-family segmentation networks: exact params and FLOPs, a reference forward pass,
/// reports and FLOP budgets.
#[derive(Parser, Debug)]
#[command(name = "toparch", version, about)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// List the embedded specs.
    List,
    /// Count params and FLOPs per stage, block or layer.
    Profile(ProfileArgs),
    /// Print the layer graph as Graphviz DOT.
    Graph(SpecArgs),
    /// Run the network: logits to .safetensors, or a coloured class map to .png.
    Forward(ForwardArgs),
    /// Compare two networks per stage and block: params, FLOPs under every convention, deltas.
    Diff(DiffArgs),
    /// Profile the Cartesian product of grids of spec overrides and find the Pareto front.
    Sweep(SweepArgs),
    /// Check FLOP and parameter budgets; exits 1 when one is exceeded.
    Check(CheckArgs),
    /// Write the markdown report and its SVG figures.
    Report(ReportArgs),
    /// Write the network as an ONNX model (with official weight names) for onnxruntime, TNN, NCNN, MNN.
    Export(ExportArgs),
    /// Measure the executor's latency and memory: cold run, warm distribution, per stage.
    Bench(BenchArgs),
    /// Time the executor's kernel families on this machine and write a device profile for `--device`.
    Calibrate(CalibrateArgs),
    /// List the embedded device profiles.
    Devices,
    /// Derive the snapdragon865 profile from a local one-thread profile and the published TopFormer latencies.
    DeriveDevice(DeriveDeviceArgs),
}

#[derive(Args, Debug)]
struct BenchArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Checkpoint (.safetensors or .pth); without it, seeded random weights (timing does not depend on them).
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Images per run; the executor runs them one after another.
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// Worker threads (default: the device profile's, else all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Warm runs measured.
    #[arg(long, default_value_t = 20)]
    runs: usize,
    /// Warm runs discarded first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// A device profile (embedded name or file): predictions beside the measurements.
    #[arg(long)]
    device: Option<String>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    format: CheckFormat,
}

#[derive(Args, Debug)]
struct CalibrateArgs {
    /// Worker threads to calibrate for.
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// The device profile to write.
    #[arg(long, default_value = "device.toml")]
    out: PathBuf,
    /// The profile's name.
    #[arg(long, default_value = "local")]
    name: String,
    /// Refuse when a network's median run is more than this many times its fastest (a busy machine).
    #[arg(long, default_value_t = MAX_SPREAD)]
    max_spread: f64,
}

#[derive(Args, Debug)]
struct DeriveDeviceArgs {
    /// A one-thread profile written by `toparch calibrate --threads 1`.
    #[arg(long)]
    from: String,
    /// The profile to write.
    #[arg(long, default_value = "specs/devices/snapdragon865.toml")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct ReportArgs {
    /// Directory to write the report into.
    #[arg(long, default_value = "reports")]
    out: PathBuf,
}

#[derive(Args, Debug)]
struct CheckArgs {
    /// The budgets file.
    #[arg(long, default_value = "specs/budgets.toml")]
    budgets: PathBuf,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    format: CheckFormat,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum CheckFormat {
    Table,
    Json,
}

/// What a command printed, whether it found a failure (exit 1), and the inputs it skipped as unreadable after
/// doing the rest (exit 2).
struct Outcome {
    stdout: String,
    failures: Vec<String>,
    input_errors: Vec<String>,
}

impl From<String> for Outcome {
    fn from(stdout: String) -> Self {
        Outcome { stdout, failures: Vec::new(), input_errors: Vec::new() }
    }
}

fn check(args: &CheckArgs) -> Result<Outcome> {
    let (budgets, doc) = budget::read_budgets(&args.budgets)?;
    let verdicts = budget::evaluate(&budgets, &doc)?;
    let stdout = match args.format {
        CheckFormat::Table => budget::render_table(&verdicts),
        CheckFormat::Json => {
            let mut text = serde_json::to_string_pretty(&verdicts).unwrap_or_default();
            text.push('\n');
            text
        }
    };
    Ok(Outcome { stdout, failures: budget::failures(&verdicts), input_errors: Vec::new() })
}

/// Which network, at which input size.
#[derive(Args, Debug, Clone)]
pub struct SpecArgs {
    /// An embedded spec: tiny, small, base, base-cityscapes, tiny-imagenet… (see `toparch list`).
    #[arg(long, short = 'v', conflicts_with = "spec")]
    variant: Option<String>,
    /// A spec file (TOML); it may `extends` an embedded spec.
    #[arg(long)]
    spec: Option<PathBuf>,
    /// Input resolution: 512 or HxW such as 1024x2048. Defaults to the spec's `res` (see `toparch list`).
    #[arg(long, short = 'r')]
    res: Option<String>,
    /// Override the number of classes.
    #[arg(long)]
    classes: Option<usize>,
    /// Override a spec key, after `extends` and before validation: `semantics_extractor.depth=3`,
    /// `head.channels=96`, `token_pyramid.blocks=[[3,1,16,1],[3,4,16,2]]`. The value is TOML. Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
}

impl SpecArgs {
    /// The named spec with its `extends` merged, before `--set`.
    pub fn template(&self) -> Result<SpecTemplate> {
        match (&self.variant, &self.spec) {
            (_, Some(path)) => SpecTemplate::file(path),
            (Some(name), None) => SpecTemplate::embedded(name),
            (None, None) => Err(Error::input("name a network with --variant NAME or --spec FILE")),
        }
    }

    /// Instantiates `template` with `--set` and then `extra` overrides, and applies `--classes`.
    pub fn instantiate(&self, template: &SpecTemplate, extra: &[Override]) -> Result<LoadedSpec> {
        let overrides: Vec<Override> = self.set.iter().chain(extra).cloned().collect();
        let mut loaded = template.instantiate(&overrides)?;
        if let Some(classes) = self.classes {
            if classes == 0 {
                return Err(Error::input("--classes must be positive"));
            }
            loaded.spec.set_num_classes(classes);
        }
        Ok(loaded)
    }

    /// Loads the spec with `--set` and `--classes` applied.
    pub fn load(&self) -> Result<LoadedSpec> {
        self.instantiate(&self.template()?, &[])
    }

    /// `--res` parsed, if given.
    pub fn resolution(&self) -> Result<Option<(usize, usize)>> {
        self.res.as_deref().map(parse_resolution).transpose()
    }

    /// Loads the spec and compiles it at `--res`, else the spec's default resolution.
    pub fn compile(&self) -> Result<(LoadedSpec, Graph)> {
        self.compile_batch(1)
    }

    /// Like [`SpecArgs::compile`], for a batch of `batch` images.
    pub fn compile_batch(&self, batch: usize) -> Result<(LoadedSpec, Graph)> {
        let loaded = self.load()?;
        let (h, w) = input_size(self.res.as_deref(), &loaded)?;
        let graph = loaded.compile_batch(batch, h, w)?;
        Ok((loaded, graph))
    }
}

/// `res` if given, else the spec's default resolution (its `res`, else its first published one, else 512²).
fn input_size(res: Option<&str>, loaded: &LoadedSpec) -> Result<(usize, usize)> {
    res.map(parse_resolution).transpose().map(|r| r.unwrap_or_else(|| loaded.spec.default_resolution()))
}

/// Compare two networks.
#[derive(Args, Debug)]
struct DiffArgs {
    /// Network A: an embedded spec name (see `toparch list`) or a spec file.
    a: String,
    /// Network B: an embedded spec name or a spec file.
    b: String,
    /// Override a key of both specs (KEY=VALUE, the value TOML). Repeatable.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    set: Vec<Override>,
    /// Override a key of A only. Repeatable.
    #[arg(long = "set-a", value_name = "KEY=VALUE")]
    set_a: Vec<Override>,
    /// Override a key of B only. Repeatable.
    #[arg(long = "set-b", value_name = "KEY=VALUE")]
    set_b: Vec<Override>,
    /// Input resolution of both: 512 or HxW. Defaults to A's default resolution (its `res`).
    #[arg(long, short = 'r')]
    res: Option<String>,
    /// Counting convention of the per-stage and per-block FLOPs (totals show every convention).
    #[arg(long, short = 'c', value_enum, default_value = "paper")]
    convention: Convention,
    /// A device profile (embedded name, see `toparch devices`, or file): predicted latency of both.
    #[arg(long)]
    device: Option<String>,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    format: Format,
}

fn diff(args: &DiffArgs) -> Result<String> {
    let load = |name: &str, own: &[Override]| -> Result<(LoadedSpec, Vec<Override>)> {
        let overrides: Vec<Override> = args.set.iter().chain(own).cloned().collect();
        Ok((SpecTemplate::reference(name, Path::new("."))?.instantiate(&overrides)?, overrides))
    };
    let (a, set_a) = load(&args.a, &args.set_a)?;
    let (b, set_b) = load(&args.b, &args.set_b)?;
    let (h, w) = input_size(args.res.as_deref(), &a)?;
    let device = args.device.as_deref().map(Device::load).transpose()?;
    let profile = |loaded: &LoadedSpec| -> Result<Profile> {
        let graph = loaded.compile(h, w)?;
        let mut profile = Profile::new(&graph, &loaded.spec)?;
        if let Some(device) = &device {
            profile.predict(&graph, device);
        }
        Ok(profile)
    };
    let (profile_a, profile_b) = (profile(&a)?, profile(&b)?);
    let side = |profile, set: &[Override]| DiffSide { profile, set: set.iter().map(Override::describe).collect() };
    let (side_a, side_b) = (side(&profile_a, &set_a), side(&profile_b, &set_b));
    let diff = Diff::new(&profile_a, &profile_b);
    Ok(match args.format {
        Format::Table => render_diff(&diff, &side_a, &side_b, args.convention, Style::Terminal),
        Format::Markdown => render_diff(&diff, &side_a, &side_b, args.convention, Style::Markdown),
        Format::Json => diff_json(&diff, &side_a, &side_b),
    })
}

/// Profile every combination of grids of overrides.
#[derive(Args, Debug)]
struct SweepArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// A key and the values it takes (`semantics_extractor.depth=2,3,4`); keys joined by `+` take each value
    /// together (`injection.channels+head.channels=128,192`). Repeatable: the sweep is the Cartesian product.
    #[arg(long = "grid", value_name = "KEY=V1,V2,…", required = true)]
    grid: Vec<Grid>,
    /// Format of the table printed to standard output.
    #[arg(long, short = 'f', value_enum, default_value = "csv")]
    format: SweepFormat,
    /// Also write sweep.csv, sweep.md and pareto.svg (the Pareto front) into this directory.
    #[arg(long)]
    out: Option<PathBuf>,
    /// A device profile (embedded name, see `toparch devices`, or file): predicted latency per row.
    #[arg(long)]
    device: Option<String>,
    /// The Pareto front's x metric (default: latency with --device, else params).
    #[arg(long, value_enum)]
    x: Option<Metric>,
    /// Whether a smaller or larger x is better (`max` with params: the most capacity for the FLOPs).
    #[arg(long, value_enum, default_value = "min")]
    x_goal: Goal,
    /// The Pareto front's y metric.
    #[arg(long, value_enum, default_value = "paper")]
    y: Metric,
    /// Whether a smaller or larger y is better.
    #[arg(long, value_enum, default_value = "min")]
    y_goal: Goal,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum SweepFormat {
    Csv,
    Json,
    Markdown,
}

fn sweep(args: &SweepArgs) -> Result<String> {
    let template = args.spec.template()?;
    let base = args.spec.instantiate(&template, &[])?;
    let res = input_size(args.spec.res.as_deref(), &base)?;
    let device = args.device.as_deref().map(Device::load).transpose()?;
    let x = args.x.unwrap_or(if device.is_some() { Metric::Latency } else { Metric::Params });
    let progress = progress_bar(Sweep::size(&args.grid)?, "sweep");
    let base_set: Vec<Override> = args.spec.set.clone();
    let sweep = Sweep::run(
        &base.spec.name,
        args.grid.clone(),
        res,
        device.as_ref(),
        (Objective { metric: x, goal: args.x_goal }, Objective { metric: args.y, goal: args.y_goal }),
        |overrides| template.check_schema(&[base_set.as_slice(), overrides].concat()),
        |overrides| args.spec.instantiate(&template, overrides),
        || progress.inc(1),
    );
    progress.finish_and_clear();
    let sweep = sweep?;
    if let Some(dir) = &args.out {
        for path in write_sweep(&sweep, dir)? {
            eprintln!("wrote {}", path.display());
        }
    }
    eprintln!("{}", sweep_summary(&sweep));
    Ok(match args.format {
        SweepFormat::Csv => sweep_csv(&sweep),
        SweepFormat::Json => sweep_json(&sweep),
        SweepFormat::Markdown => sweep_markdown(&sweep),
    })
}

#[derive(Args, Debug)]
struct ForwardArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Checkpoint: .safetensors or PyTorch .pth, keyed by official state_dict names. Without it,
    /// seeded random weights.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed of the random weights used without --weights.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// A .safetensors file with tensor `input` [1,3,H,W] (normalised), a PNG/JPEG image, or a folder of
    /// PNG/JPEG images (each segmented at --res, default the spec's resolution, into --output as a folder).
    #[arg(long)]
    input: PathBuf,
    /// A .safetensors file (receives `logits`), a .png (receives the coloured class map), or a folder for a
    /// folder of images.
    #[arg(long)]
    output: PathBuf,
    /// Blend the coloured mask over the input image instead of writing the bare class map.
    #[arg(long)]
    overlay: bool,
    /// Opacity of the mask in an --overlay.
    #[arg(long, default_value_t = 0.5, requires = "overlay")]
    opacity: f32,
    /// Add a legend of the classes present (class index and share of the pixels) beside the PNG.
    #[arg(long)]
    legend: bool,
    /// Worker threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print measured time per layer and stage beside the analytic MACs (of a second, warm run).
    #[arg(long)]
    profile: bool,
    /// Also write tpm.out0..3, ppa, trans, sim.out0..2 to the .safetensors output.
    #[arg(long)]
    dump_intermediates: bool,
}

/// What `forward` writes.
enum OutputKind {
    Tensors,
    ClassMap,
}

impl ForwardArgs {
    /// Weights (from --weights or seeded), thread count and the executor for `graph`.
    fn executor<'g>(&self, graph: &'g Graph) -> Result<(Executor<'g>, usize)> {
        let params = bind_params(graph, self.weights.as_deref(), self.seed)?;
        let threads = self.threads.unwrap_or_else(available_cores);
        Ok((Executor::new(graph, params, threads)?, threads))
    }

    /// Where the weights come from, for the summary line.
    fn weights_label(&self) -> String {
        self.weights.as_ref().map_or(format!("random weights (seed {})", self.seed), |p| p.display().to_string())
    }

    /// The PNG of a segmentation: the class map of `logits` resized to `photo`'s size (or `size` without a
    /// photo), coloured or blended over the photo (--overlay), with a legend if asked.
    fn segmentation_png(
        &self,
        logits: &[f32],
        logits_shape: &[usize],
        photo: Option<&RgbImage>,
        size: (usize, usize),
        name: &str,
    ) -> Result<RgbImage> {
        let (h, w) = photo.map_or(size, |p| (p.height() as usize, p.width() as usize));
        let classes = argmax_resized(logits, logits_shape[1], (logits_shape[2], logits_shape[3]), (h, w));
        let palette = palette(logits_shape[1]);
        let img = match photo {
            Some(photo) if self.overlay => overlay(photo, &classes, &palette, self.opacity, name)?,
            _ => colourise(&classes, h, w, &palette, name)?,
        };
        Ok(if self.legend { with_legend(&img, &classes, &palette) } else { img })
    }
}

fn forward(args: &ForwardArgs) -> Result<Outcome> {
    let loaded = args.spec.load()?;
    if !(0.0..=1.0).contains(&args.opacity) {
        return Err(Error::input(format!("--opacity {} must be from 0 to 1", args.opacity)));
    }
    if args.input.is_dir() {
        return forward_folder(args, &loaded);
    }
    let extension = args.output.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
    let kind = match extension.as_deref() {
        Some("safetensors") => OutputKind::Tensors,
        Some("png") if loaded.spec.task() == Task::Segmentation => OutputKind::ClassMap,
        Some("png") => {
            return Err(Error::input(format!(
                "{}: a classifier has no class map; write .safetensors",
                args.output.display()
            )))
        }
        _ => return Err(Error::input(format!("{}: output must end in .safetensors or .png", args.output.display()))),
    };
    if args.dump_intermediates && matches!(kind, OutputKind::ClassMap) {
        return Err(Error::input("--dump-intermediates needs a .safetensors output"));
    }
    if (args.overlay || args.legend) && matches!(kind, OutputKind::Tensors) {
        return Err(Error::input("--overlay and --legend need a .png output"));
    }
    let name = args.input.display().to_string();
    let (input, photo, h, w) = if args.overlay {
        if args.input.extension().is_some_and(|e| e.eq_ignore_ascii_case("safetensors")) {
            return Err(Error::input(format!("{name}: --overlay needs a PNG or JPEG input")));
        }
        let prepared = prepare(decode_image(&args.input)?, args.spec.resolution()?, &name)?;
        let (w, h) = prepared.rgb.dimensions();
        (prepared.data, Some(prepared.rgb), h as usize, w as usize)
    } else {
        let (data, h, w) = read_input(&args.input, args.spec.resolution()?)?;
        (data, None, h, w)
    };
    let graph = loaded.compile(h, w)?;
    let (exec, threads) = args.executor(&graph)?;
    let logits = graph.tap_node("logits").unwrap_or(graph.output());
    let keep: Vec<_> =
        if args.dump_intermediates { graph.taps().iter().map(|&(_, i)| i).collect() } else { vec![logits] };
    if args.profile {
        // A warm-up run first, so the timings are of the steady state, not of first-touch page faults.
        exec.run(&input, logits, &[])?;
    }
    let started = std::time::Instant::now();
    let run = exec.run(&input, logits, &keep)?;
    let elapsed = started.elapsed();
    let logits_shape = &graph.node(logits).shape;
    let data = |i| run.kept.get(&i).cloned().unwrap_or_default();
    match kind {
        OutputKind::Tensors => {
            let tensors: Vec<_> = graph
                .taps()
                .iter()
                .filter(|(_, i)| keep.contains(i))
                .map(|(name, i)| (name.clone(), graph.node(*i).shape.clone(), data(*i)))
                .collect();
            write_safetensors(&args.output, &tensors)?;
        }
        OutputKind::ClassMap => {
            let out_name = args.output.display().to_string();
            let png = args.segmentation_png(&data(logits), logits_shape, photo.as_ref(), (h, w), &out_name)?;
            write_png(&args.output, &png)?;
        }
    }
    let mut out = format!(
        "{}: {} at {h}x{w} in {:.1} ms on {threads} thread(s); logits {:?} → {}\n",
        loaded.spec.name,
        args.weights_label(),
        elapsed.as_secs_f64() * 1e3,
        logits_shape,
        args.output.display()
    );
    if args.profile {
        out.push_str(&render_timing(&graph, &run.steps));
    }
    Ok(out.into())
}

/// The PNG and JPEG files of a folder (by extension), sorted by name.
fn images_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry.map_err(|e| Error::io(dir, e))?.path();
        let ext = path.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase);
        if path.is_file() && matches!(ext.as_deref(), Some("png" | "jpg" | "jpeg")) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// `forward --input DIR --output DIR`: every PNG/JPEG of the folder through one executor at one resolution,
/// each mask written at its image's own size as `<stem>.png`. Unreadable images are reported and skipped.
fn forward_folder(args: &ForwardArgs, loaded: &LoadedSpec) -> Result<Outcome> {
    let (in_dir, out_dir) = (&args.input, &args.output);
    if loaded.spec.task() != Task::Segmentation {
        return Err(Error::input(format!("{}: a classifier has no class map to write", loaded.spec.name)));
    }
    if args.dump_intermediates || args.profile {
        return Err(Error::input("--dump-intermediates and --profile take a single input file"));
    }
    if out_dir.exists() && !out_dir.is_dir() {
        return Err(Error::input(format!("{}: --input is a folder, so --output must be one", out_dir.display())));
    }
    let files = images_in(in_dir)?;
    if files.is_empty() {
        return Err(Error::input(format!("{}: no .png, .jpg or .jpeg files", in_dir.display())));
    }
    let mut outputs: Vec<PathBuf> = Vec::with_capacity(files.len());
    for file in &files {
        let output = out_dir.join(file.file_stem().unwrap_or_default()).with_extension("png");
        if let Some(first) = outputs.iter().position(|o| *o == output) {
            return Err(Error::input(format!(
                "{} and {} would both be written to {}",
                files[first].display(),
                file.display(),
                output.display()
            )));
        }
        outputs.push(output);
    }
    std::fs::create_dir_all(out_dir).map_err(|e| Error::io(out_dir, e))?;
    let same = |a: &Path, b: &Path| matches!((a.canonicalize(), b.canonicalize()), (Ok(a), Ok(b)) if a == b);
    if same(in_dir, out_dir) {
        return Err(Error::input(format!("{}: --output must not be the input folder", out_dir.display())));
    }
    let (h, w) = args.spec.resolution()?.unwrap_or_else(|| loaded.spec.default_resolution());
    let graph = loaded.compile(h, w)?;
    let (exec, threads) = args.executor(&graph)?;
    let logits = graph.tap_node("logits").unwrap_or(graph.output());
    let logits_shape = &graph.node(logits).shape;
    let progress = indicatif::ProgressBar::new(files.len() as u64).with_style(
        indicatif::ProgressStyle::with_template("{bar:30} {pos}/{len} images, {eta} left  {wide_msg}")
            .expect("a valid template"),
    );
    let started = std::time::Instant::now();
    let mut network = std::time::Duration::ZERO;
    let mut unreadable = Vec::new();
    for (file, output) in files.iter().zip(&outputs) {
        progress.set_message(file.display().to_string());
        let photo = match decode_image(file) {
            Ok(photo) => photo,
            Err(e) => {
                progress.suspend(|| eprintln!("error: {e} (skipped)"));
                unreadable.push(e.to_string());
                progress.inc(1);
                continue;
            }
        };
        let name = file.display().to_string();
        let input = prepare(photo.clone(), Some((h, w)), &name)?;
        let run_started = std::time::Instant::now();
        let run = exec.run(&input.data, logits, &[logits])?;
        network += run_started.elapsed();
        let scores = run.kept.get(&logits).map(Vec::as_slice).unwrap_or_default();
        let png = args.segmentation_png(scores, logits_shape, Some(&photo), (h, w), &output.display().to_string())?;
        write_png(output, &png)?;
        progress.inc(1);
    }
    progress.finish_and_clear();
    let done = files.len() - unreadable.len();
    let per_image = |t: std::time::Duration| t.as_secs_f64() * 1e3 / done.max(1) as f64;
    let skipped = if unreadable.is_empty() { String::new() } else { format!(", {} unreadable", unreadable.len()) };
    let stdout = format!(
        "{}: {} of {} images in {} at {h}x{w} on {threads} thread(s){skipped}: {:.1} ms per image ({:.1} ms in the \
         network) → {}\n",
        loaded.spec.name,
        done,
        files.len(),
        in_dir.display(),
        per_image(started.elapsed()),
        per_image(network),
        out_dir.display()
    );
    Ok(Outcome { stdout, failures: Vec::new(), input_errors: unreadable })
}

/// The cores this process may use: the default thread count.
fn available_cores() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// The checkpoint's tensors bound to `graph` by official name, else seeded random weights.
fn bind_params(graph: &Graph, weights: Option<&Path>, seed: u64) -> Result<NodeParams> {
    match weights {
        Some(path) => NodeParams::from_tensors(graph, read_tensors(path)?, &path.display().to_string()),
        None => Ok(NodeParams::random(graph, seed)),
    }
}

#[derive(Args, Debug)]
struct ExportArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Checkpoint: .safetensors or PyTorch .pth, keyed by official state_dict names. Without it, the seeded
    /// random weights `forward` uses.
    #[arg(long)]
    weights: Option<PathBuf>,
    /// Seed of the random weights used without --weights.
    #[arg(long, default_value_t = 0, conflicts_with = "weights")]
    seed: u64,
    /// ONNX operator set (13 pairs with IR version 7, 17 with IR 8).
    #[arg(long, value_enum, default_value = "13")]
    opset: Opset,
    /// Fold each BatchNorm into the conv before it (computed in f64), for deployment.
    #[arg(long)]
    fold_bn: bool,
    /// Append the final bilinear resize of the logits to the input size (segmentors only).
    #[arg(long)]
    with_resize: bool,
    /// Append an ArgMax over classes: the output becomes an int64 class map `classes` (segmentors only).
    #[arg(long)]
    argmax: bool,
    /// The .onnx file to write.
    #[arg(long)]
    output: PathBuf,
}

fn export(args: &ExportArgs) -> Result<String> {
    let (loaded, graph) = args.spec.compile()?;
    let params = bind_params(&graph, args.weights.as_deref(), args.seed)?;
    let options =
        ExportOptions { opset: args.opset, fold_bn: args.fold_bn, with_resize: args.with_resize, argmax: args.argmax };
    let model = export_model(&graph, &params, &options)?;
    let bytes = model.encode_to_vec();
    write_atomic(&args.output, &bytes)?;
    let onnx = model.graph.unwrap_or_default();
    let output = onnx.output.first().and_then(|o| o.tensor_shape()).map(|(_, shape)| shape).unwrap_or_default();
    let input = graph.input_shape();
    Ok(format!(
        "{}: {} at {}x{}, opset {} (IR {}): {} nodes, {} initializers, {} {output:?} → {} ({:.1} MB)\n",
        loaded.spec.name,
        args.weights.as_ref().map_or(format!("random weights (seed {})", args.seed), |p| p.display().to_string()),
        input[2],
        input[3],
        args.opset.version(),
        args.opset.ir_version(),
        onnx.node.len(),
        onnx.initializer.len(),
        onnx.output.first().map_or("", |o| o.name.as_str()),
        args.output.display(),
        bytes.len() as f64 / 1e6
    ))
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum Format {
    Table,
    Json,
    Markdown,
}

#[derive(Args, Debug)]
struct ProfileArgs {
    #[command(flatten)]
    spec: SpecArgs,
    /// Counting convention for the FLOPs column.
    #[arg(long, short = 'c', value_enum, default_value = "paper")]
    convention: Convention,
    /// Breakdown depth.
    #[arg(long, short = 'd', value_enum, default_value = "stage")]
    depth: Depth,
    /// Output format.
    #[arg(long, short = 'f', value_enum, default_value = "table")]
    format: Format,
    /// Images per batch: counts and bytes for the whole batch (params unchanged).
    #[arg(long, default_value_t = 1)]
    batch: usize,
    /// A device profile (embedded name, see `toparch devices`, or file): predicted latency per row.
    #[arg(long)]
    device: Option<String>,
}

/// `--batch` checked: a batch holds at least one image.
fn positive_batch(batch: usize) -> Result<usize> {
    if batch == 0 {
        return Err(Error::input("--batch must be at least 1"));
    }
    Ok(batch)
}

/// The embedded specs grouped by task and dataset (in the order they first appear), each with its default
/// resolution.
fn list() -> String {
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for embedded in embedded_specs() {
        let (group, line) = match load_embedded(embedded.name) {
            Ok(loaded) => {
                let spec = &loaded.spec;
                let task = match spec.task() {
                    Task::Segmentation => "segmentation",
                    Task::Classification => "classification",
                };
                let (h, w) = spec.default_resolution();
                let res = format!("{h}x{w}");
                (format!("{task}, {}", spec.dataset), format!("  {:<34} {res:<10} {}", embedded.name, spec.description))
            }
            Err(e) => ("invalid".to_string(), format!("  {:<34} {e}", embedded.name)),
        };
        match groups.iter_mut().find(|(g, _)| *g == group) {
            Some((_, lines)) => lines.push(line),
            None => groups.push((group, vec![line])),
        }
    }
    let mut out = format!("  {:<34} {:<10} description\n", "spec (--variant)", "default res");
    for (group, lines) in groups {
        out.push_str(&format!("{group}\n"));
        for line in lines {
            out.push_str(&line);
            out.push('\n');
        }
    }
    out
}

fn profile(args: &ProfileArgs) -> Result<String> {
    let (loaded, graph) = args.spec.compile_batch(positive_batch(args.batch)?)?;
    let mut profile = Profile::new(&graph, &loaded.spec)?;
    if let Some(device) = &args.device {
        profile.predict(&graph, &Device::load(device)?);
    }
    Ok(match args.format {
        Format::Table => render_profile(&profile, args.convention, args.depth, Style::Terminal),
        Format::Markdown => render_profile(&profile, args.convention, args.depth, Style::Markdown),
        Format::Json => profile_json(&profile, args.convention, args.depth),
    })
}

/// A progress bar on stderr, drawn only when stderr is a terminal.
fn progress_bar(len: usize, message: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(len as u64);
    let style = indicatif::ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar
}

fn bench_command(args: &BenchArgs) -> Result<String> {
    let batch = positive_batch(args.batch)?;
    let device = args.device.as_deref().map(Device::load).transpose()?;
    let threads = match (args.threads, &device) {
        (Some(t), Some(d)) if t != d.threads => {
            return Err(Error::input(format!(
            "--threads {t}: device profile '{}' was calibrated for {} thread(s); calibrate for {t} or drop --threads",
            d.name, d.threads
        )))
        }
        (Some(t), _) => t,
        (None, Some(d)) => d.threads,
        (None, None) => available_cores(),
    };
    let (loaded, graph) = args.spec.compile()?;
    let params = bind_params(&graph, args.weights.as_deref(), 0)?;
    let mut profile = Profile::new(&graph, &loaded.spec)?;
    if let Some(device) = &device {
        profile.predict(&graph, device);
    }
    let options = BenchOptions { batch, threads, runs: args.runs, warmup: args.warmup };
    let bar = progress_bar(args.warmup.saturating_add(args.runs).saturating_add(1), "bench");
    let result = bench(&graph, params, options, &|| bar.inc(1))?;
    bar.finish_and_clear();
    let report = BenchReport { profile: &profile, batch, threads, result: &result };
    Ok(match args.format {
        CheckFormat::Table => report.table(),
        CheckFormat::Json => report.json(),
    })
}

fn calibrate_command(args: &CalibrateArgs) -> Result<String> {
    check_threads(args.threads)?;
    let bar = progress_bar(CALIBRATION_RUNS * RUNS_PER_CASE, "calibrate");
    let started = std::time::Instant::now();
    if args.max_spread.is_nan() || args.max_spread < 1.0 {
        return Err(Error::input("--max-spread must be at least 1"));
    }
    let calibration = calibrate(&args.name, args.threads, args.max_spread, &|| bar.inc(1));
    bar.finish_and_clear();
    let calibration = calibration?;
    write_atomic(&args.out, calibration.device.to_toml().as_bytes())?;
    let mut out = format!(
        "calibrated '{}' on {} ({}), {} thread(s), in {:.1} s → {}\n",
        calibration.device.name,
        calibration.device.cpu,
        calibration.device.isa,
        args.threads,
        started.elapsed().as_secs_f64(),
        args.out.display()
    );
    for (case, fastest, spread) in &calibration.cases {
        out.push_str(&format!("  {case}: fastest run {fastest:.2} ms, median/fastest {spread:.3}\n"));
    }
    Ok(out)
}

fn devices() -> String {
    embedded_devices()
        .iter()
        .map(|(name, _)| match Device::load(name) {
            Ok(d) => format!("{name:<16} {} thread(s), {} ({}), {}\n", d.threads, d.cpu, d.isa, d.date),
            Err(e) => format!("{name:<16} (invalid: {e})\n"),
        })
        .collect()
}

fn derive_device_command(args: &DeriveDeviceArgs) -> Result<String> {
    let local = Device::load(&args.from)?;
    let derived = derive_snapdragon865(&local)?;
    write_atomic(&args.out, derived.to_toml().as_bytes())?;
    Ok(format!("wrote {} ({})\n", args.out.display(), derived.source))
}

fn run(cli: Cli) -> Result<Outcome> {
    match cli.command {
        Command::List => Ok(list().into()),
        Command::Profile(args) => profile(&args).map(Outcome::from),
        Command::Graph(args) => Ok(args.compile()?.1.to_dot().into()),
        Command::Forward(args) => forward(&args),
        Command::Diff(args) => diff(&args).map(Outcome::from),
        Command::Sweep(args) => sweep(&args).map(Outcome::from),
        Command::Check(args) => check(&args),
        Command::Export(args) => export(&args).map(Outcome::from),
        Command::Bench(args) => bench_command(&args).map(Outcome::from),
        Command::Calibrate(args) => calibrate_command(&args).map(Outcome::from),
        Command::Devices => Ok(devices().into()),
        Command::DeriveDevice(args) => derive_device_command(&args).map(Outcome::from),
        Command::Report(args) => {
            let written = write_report(&args.out)?;
            Ok(written.iter().map(|p| format!("wrote {}\n", p.display())).collect::<String>().into())
        }
    }
}

/// Parses the command line, runs it, prints the result. A failed check exits with code 1, a user error
/// with code 2.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(outcome) => {
            // A reader that closed the pipe early (`| head`) has all it wants; any other write error is reported.
            let mut stdout = std::io::stdout().lock();
            match stdout.write_all(outcome.stdout.as_bytes()).and_then(|()| stdout.flush()) {
                Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
                    eprintln!("error: writing to standard output: {e}");
                    return ExitCode::from(2);
                }
                _ => {}
            }
            for failure in &outcome.failures {
                eprintln!("{failure}");
            }
            if !outcome.input_errors.is_empty() {
                // Reported as they were skipped; the exit code tells scripts some input was bad.
                return ExitCode::from(2);
            }
            if outcome.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
