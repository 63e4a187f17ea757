//! Published baselines (`specs/baselines.toml`): the accuracy, compute and latency of TopFormer and the models it
//! is compared with, as the papers and READMEs report them, tagged by the report figure they appear in.

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::report::plot::{family_style, ScatterPoint};

/// The baselines file shipped with toparch, embedded at build time.
const EMBEDDED: &str = include_str!("../../specs/baselines.toml");

/// Name under which errors in the embedded file are reported.
const EMBEDDED_NAME: &str = "specs/baselines.toml";

/// All published baselines, in file order.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baselines {
    /// One entry per `[[model]]` table.
    #[serde(rename = "model")]
    pub models: Vec<Baseline>,
}

/// One published result: a model evaluated on one dataset in one setting.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Baseline {
    /// Model name as published (e.g. `DeepLabV3+`, `TopFormer-T`).
    pub name: toml::Spanned<String>,
    /// Encoder / backbone as published.
    pub encoder: String,
    /// Model family, used to group plot series.
    pub family: Family,
    /// TopFormer entries only: the toparch model whose computed FLOPs pair with this published accuracy
    /// (`topformer-tiny`, `topformer-base-cityscapes`, `topformer-tiny-imagenet`, ...).
    pub spec: Option<String>,
    /// True when the numbers come from a third party's port or re-measurement rather than the model's authors.
    #[serde(default)]
    pub reproduction: bool,
    /// Training/evaluation variant, when a model has several entries (e.g. `512x512 4x8 160k`).
    pub variant: Option<String>,
    /// Text printed next to the marker in plots: model name, encoder and variant.
    pub label: String,
    /// Evaluation dataset.
    pub dataset: Dataset,
    /// Input resolution as published (`512x512`, `as reported`, ...).
    pub input: String,
    /// Parameters, millions.
    pub params_m: Option<f64>,
    /// Multiply-accumulates, 1e9 (the papers' "GFLOPs").
    pub gflops: Option<f64>,
    /// Multiply-accumulates, 1e6 (the papers' "MFLOPs").
    pub mflops: Option<f64>,
    /// Mean IoU, percent.
    pub miou: Option<f64>,
    /// PascalContext 59-class mean IoU, percent.
    pub miou_59: Option<f64>,
    /// ImageNet top-1 accuracy, percent.
    pub top1: Option<f64>,
    /// Latency on `device`, milliseconds.
    pub latency_ms: Option<f64>,
    /// Throughput on `device`, frames per second.
    pub fps: Option<f64>,
    /// The measuring device and runtime, verbatim.
    pub device: Option<String>,
    /// The measuring setup as a key; present exactly when `device` is.
    pub latency_setup: Option<LatencySetup>,
    /// Metrics whose values are approximate (digitised from a plot, read off a figure, OCR-ambiguous).
    #[serde(default)]
    pub approximate: Vec<Metric>,
    /// Report figures this entry appears in.
    #[serde(default)]
    pub plots: Vec<Plot>,
    /// Where the numbers come from.
    pub source: String,
    /// How exact the numbers are, verbatim (`exact`, `secondary; latency approx`, ...).
    pub status: String,
    /// Free-form remark.
    pub note: Option<String>,
}

/// Model family of a baseline.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Family {
    /// TopFormer itself.
    Topformer,
    /// SeaFormer, TopFormer's successor from the same line of work.
    Seaformer,
    /// Convolutional encoders (MobileNet, ShuffleNet, EfficientNet, ResNet, HRNet, searched CNNs).
    Cnn,
    /// Other transformer or hybrid encoders (MiT, MobileViT, EfficientFormer, StrideFormer, ...).
    Vit,
}

impl Family {
    /// Series name for plot legends.
    pub fn display_name(self) -> &'static str {
        match self {
            Family::Topformer => "TopFormer (published)",
            Family::Seaformer => "SeaFormer",
            Family::Cnn => "CNN encoders",
            Family::Vit => "Transformer / hybrid encoders",
        }
    }
}

/// Evaluation dataset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum Dataset {
    /// ADE20K validation set, 150 classes.
    #[serde(rename = "ADE20K-val")]
    Ade20k,
    /// Cityscapes validation set, 19 classes.
    #[serde(rename = "Cityscapes-val")]
    Cityscapes,
    /// ImageNet-1k classification.
    #[serde(rename = "ImageNet-1k")]
    Imagenet,
    /// PASCAL Context.
    #[serde(rename = "PascalContext")]
    PascalContext,
    /// COCO-Stuff-10k.
    #[serde(rename = "COCO-Stuff-10k")]
    CocoStuff,
}

impl Dataset {
    /// Every dataset, in file order.
    pub const ALL: [Dataset; 5] =
        [Dataset::Ade20k, Dataset::Cityscapes, Dataset::Imagenet, Dataset::PascalContext, Dataset::CocoStuff];

    /// The name the file uses.
    pub fn name(self) -> &'static str {
        match self {
            Dataset::Ade20k => "ADE20K-val",
            Dataset::Cityscapes => "Cityscapes-val",
            Dataset::Imagenet => "ImageNet-1k",
            Dataset::PascalContext => "PascalContext",
            Dataset::CocoStuff => "COCO-Stuff-10k",
        }
    }
}

/// The setup a latency was measured in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum LatencySetup {
    /// TopFormer's protocol: Qualcomm Snapdragon 865, one ARM CPU core, TNN.
    #[serde(rename = "sd865-1core-tnn")]
    Sd865OneCoreTnn,
    /// PP-MobileSeg's protocol: Xiaomi 9 / Snapdragon 855, one thread, Paddle-Lite, final argmax included.
    #[serde(rename = "sd855-1thread-paddlelite")]
    Sd855OneThreadPaddleLite,
    /// RTX 3090 with PyTorch (from FPS).
    #[serde(rename = "rtx3090-pytorch")]
    Rtx3090Pytorch,
    /// iPhone 12 with CoreML.
    #[serde(rename = "iphone12-coreml")]
    Iphone12Coreml,
}

/// A numeric value of a baseline; the names are the file's keys.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// `params_m`.
    ParamsM,
    /// `gflops`.
    Gflops,
    /// `mflops`.
    Mflops,
    /// `miou`.
    Miou,
    /// `miou_59`.
    #[serde(rename = "miou_59")]
    Miou59,
    /// `top1`.
    Top1,
    /// `latency_ms`.
    LatencyMs,
    /// `fps`.
    Fps,
}

impl Metric {
    /// The file's key for this metric.
    pub fn key(self) -> &'static str {
        match self {
            Metric::ParamsM => "params_m",
            Metric::Gflops => "gflops",
            Metric::Mflops => "mflops",
            Metric::Miou => "miou",
            Metric::Miou59 => "miou_59",
            Metric::Top1 => "top1",
            Metric::LatencyMs => "latency_ms",
            Metric::Fps => "fps",
        }
    }
}

/// A report figure that plots baselines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Plot {
    /// ADE20K mIoU against GFLOPs (log x).
    Ade20kMiouVsGflops,
    /// ADE20K mIoU against Snapdragon 865 single-core latency (log x).
    Ade20kMiouVsLatency,
    /// Cityscapes mIoU against GFLOPs (log x).
    CityscapesMiouVsGflops,
    /// ImageNet top-1 against MFLOPs (log x).
    ImagenetTop1VsMflops,
}

impl Plot {
    /// Every baseline figure.
    pub const ALL: [Plot; 4] =
        [Plot::Ade20kMiouVsGflops, Plot::Ade20kMiouVsLatency, Plot::CityscapesMiouVsGflops, Plot::ImagenetTop1VsMflops];

    /// The figure's file name in `reports/` (also its tag in the baselines file, without `.svg`).
    pub fn file_name(self) -> &'static str {
        match self {
            Plot::Ade20kMiouVsGflops => "ade20k-miou-vs-gflops.svg",
            Plot::Ade20kMiouVsLatency => "ade20k-miou-vs-latency.svg",
            Plot::CityscapesMiouVsGflops => "cityscapes-miou-vs-gflops.svg",
            Plot::ImagenetTop1VsMflops => "imagenet-top1-vs-mflops.svg",
        }
    }

    /// The figure's title.
    pub fn title(self) -> &'static str {
        match self {
            Plot::Ade20kMiouVsGflops => "ADE20K val: mIoU vs compute",
            Plot::Ade20kMiouVsLatency => "ADE20K val: mIoU vs mobile latency (Snapdragon 865, 1 ARM core, TNN)",
            Plot::CityscapesMiouVsGflops => "Cityscapes val: mIoU vs compute",
            Plot::ImagenetTop1VsMflops => "ImageNet-1k: top-1 vs compute",
        }
    }

    /// The dataset the figure is about.
    pub fn dataset(self) -> Dataset {
        match self {
            Plot::Ade20kMiouVsGflops | Plot::Ade20kMiouVsLatency => Dataset::Ade20k,
            Plot::CityscapesMiouVsGflops => Dataset::Cityscapes,
            Plot::ImagenetTop1VsMflops => Dataset::Imagenet,
        }
    }

    /// The metric on the x axis.
    pub fn x_metric(self) -> Metric {
        match self {
            Plot::Ade20kMiouVsGflops | Plot::CityscapesMiouVsGflops => Metric::Gflops,
            Plot::Ade20kMiouVsLatency => Metric::LatencyMs,
            Plot::ImagenetTop1VsMflops => Metric::Mflops,
        }
    }

    /// The metric on the y axis.
    pub fn y_metric(self) -> Metric {
        match self {
            Plot::ImagenetTop1VsMflops => Metric::Top1,
            _ => Metric::Miou,
        }
    }

    /// The x axis title, with units.
    pub fn x_label(self) -> &'static str {
        match self {
            Plot::Ade20kMiouVsGflops | Plot::CityscapesMiouVsGflops => "GFLOPs (10^9 multiply-adds, log scale)",
            Plot::Ade20kMiouVsLatency => "latency (ms, log scale)",
            Plot::ImagenetTop1VsMflops => "MFLOPs (10^6 multiply-adds, log scale)",
        }
    }

    /// The y axis title, with units.
    pub fn y_label(self) -> &'static str {
        match self {
            Plot::ImagenetTop1VsMflops => "top-1 accuracy (%)",
            _ => "mIoU (%)",
        }
    }

    /// Whether the x axis is logarithmic (all baseline figures span more than a decade).
    pub fn log_x(self) -> bool {
        true
    }

    /// The latency setup the figure requires of its entries, if it plots latency.
    pub fn latency_setup(self) -> Option<LatencySetup> {
        match self {
            Plot::Ade20kMiouVsLatency => Some(LatencySetup::Sd865OneCoreTnn),
            _ => None,
        }
    }
}

impl Baseline {
    /// The value of `metric`, if published.
    pub fn value(&self, metric: Metric) -> Option<f64> {
        match metric {
            Metric::ParamsM => self.params_m,
            Metric::Gflops => self.gflops,
            Metric::Mflops => self.mflops,
            Metric::Miou => self.miou,
            Metric::Miou59 => self.miou_59,
            Metric::Top1 => self.top1,
            Metric::LatencyMs => self.latency_ms,
            Metric::Fps => self.fps,
        }
    }

    /// Whether the value of `metric` is approximate.
    pub fn is_approximate(&self, metric: Metric) -> bool {
        self.approximate.contains(&metric)
    }

    /// Whether this is a TopFormer entry (its `spec` names the toparch model).
    pub fn is_topformer(&self) -> bool {
        self.family == Family::Topformer
    }

    /// The point this entry contributes to `plot`, in series `series`; `None` if it is not tagged for `plot`.
    pub fn scatter_point(&self, plot: Plot, series: &str) -> Option<ScatterPoint> {
        if !self.plots.contains(&plot) {
            return None;
        }
        let (x_metric, y_metric) = (plot.x_metric(), plot.y_metric());
        Some(ScatterPoint {
            label: self.label.clone(),
            x: self.value(x_metric)?,
            y: self.value(y_metric)?,
            series: series.to_string(),
            style: family_style(self.family),
            approximate: self.is_approximate(x_metric) || self.is_approximate(y_metric),
        })
    }

    /// Checks the entry's internal consistency; errors name `file_name` and the entry's line.
    fn validate(&self, text: &str, file_name: &str) -> Result<()> {
        let fail = |what: String| {
            let line = line_of(text, self.name.span().start);
            Err(Error::input(format!("{file_name}:{line}: model '{}': {what}", self.name.get_ref())))
        };
        let metrics = [
            Metric::ParamsM,
            Metric::Gflops,
            Metric::Mflops,
            Metric::Miou,
            Metric::Miou59,
            Metric::Top1,
            Metric::LatencyMs,
            Metric::Fps,
        ];
        for metric in metrics {
            if let Some(v) = self.value(metric) {
                if !v.is_finite() || v <= 0.0 {
                    return fail(format!("{} = {v} must be a positive number", metric.key()));
                }
            }
        }
        if self.is_topformer() != self.spec.is_some() {
            return fail("`spec` is required for family \"topformer\" and only allowed there".into());
        }
        if self.device.is_some() != self.latency_setup.is_some() {
            return fail("`device` and `latency_setup` go together".into());
        }
        if (self.latency_ms.is_some() || self.fps.is_some()) && self.device.is_none() {
            return fail("a latency or fps needs its `device`".into());
        }
        let status = self.status.to_ascii_lowercase();
        if (status.contains("approx") || status.contains("digitised")) && self.approximate.is_empty() {
            return fail(format!(
                "status \"{}\" says some values are approximate; list them in `approximate`",
                self.status
            ));
        }
        for metric in &self.approximate {
            if self.value(*metric).is_none() {
                return fail(format!("`approximate` lists {} but the entry has no such value", metric.key()));
            }
        }
        for plot in &self.plots {
            let tag = plot.file_name().trim_end_matches(".svg");
            if self.dataset != plot.dataset() {
                return fail(format!("tagged for plot {tag} but its dataset is {}", self.dataset.name()));
            }
            for metric in [plot.x_metric(), plot.y_metric()] {
                if self.value(metric).is_none() {
                    return fail(format!("tagged for plot {tag} but has no {}", metric.key()));
                }
            }
            if plot.latency_setup().is_some() && self.latency_setup != plot.latency_setup() {
                return fail(format!("tagged for plot {tag} but its latency was measured in another setup"));
            }
        }
        Ok(())
    }
}

impl Baselines {
    /// Entries evaluated on `dataset`, in file order.
    pub fn by_dataset(&self, dataset: Dataset) -> impl Iterator<Item = &Baseline> {
        self.models.iter().filter(move |m| m.dataset == dataset)
    }

    /// Entries tagged for `plot`, in file order.
    pub fn for_plot(&self, plot: Plot) -> impl Iterator<Item = &Baseline> {
        self.models.iter().filter(move |m| m.plots.contains(&plot))
    }

    /// TopFormer entries for the toparch model `spec` (e.g. `topformer-small`), in file order.
    pub fn topformer(&self, spec: &str) -> Vec<&Baseline> {
        self.models.iter().filter(|m| m.spec.as_deref() == Some(spec)).collect()
    }

    /// The points of `plot`, one series per family (named by [`Family::display_name`]), in file order.
    pub fn scatter_points(&self, plot: Plot) -> Vec<ScatterPoint> {
        self.for_plot(plot).filter_map(|m| m.scatter_point(plot, m.family.display_name())).collect()
    }
}

/// Parses and checks a baselines file; errors name `file_name` and the line concerned.
pub fn load_baselines(text: &str, file_name: &str) -> Result<Baselines> {
    let baselines: Baselines = toml::from_str(text).map_err(|e| {
        let location = match e.span() {
            Some(span) => format!("{file_name}:{}", line_of(text, span.start)),
            None => file_name.to_string(),
        };
        Error::input(format!("{location}: {}", e.message()))
    })?;
    if baselines.models.is_empty() {
        return Err(Error::input(format!("{file_name}: no [[model]] entries")));
    }
    for model in &baselines.models {
        model.validate(text, file_name)?;
    }
    Ok(baselines)
}

/// The baselines shipped with toparch (`specs/baselines.toml`, embedded at build time).
pub fn embedded_baselines() -> Result<Baselines> {
    load_baselines(EMBEDDED, EMBEDDED_NAME)
}

/// 1-based line number of byte offset `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.as_bytes().iter().take(offset).filter(|&&b| b == b'\n').count() + 1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> Baselines {
        match embedded_baselines() {
            Ok(b) => b,
            Err(e) => panic!("embedded baselines do not load: {e}"),
        }
    }

    #[test]
    fn embedded_file_parses_with_expected_counts() {
        let b = embedded();
        assert_eq!(b.models.len(), 101);
        let counts: Vec<usize> = Dataset::ALL.iter().map(|&d| b.by_dataset(d).count()).collect();
        assert_eq!(counts, [54, 13, 24, 5, 5], "entries per dataset {:?}", Dataset::ALL);
        let per_plot: Vec<usize> = Plot::ALL.iter().map(|&p| b.for_plot(p).count()).collect();
        assert_eq!(per_plot, [32, 28, 13, 17], "entries per plot {:?}", Plot::ALL);
        assert_eq!(b.models.iter().filter(|m| m.is_topformer()).count(), 23);
        assert_eq!(b.models.iter().filter(|m| m.reproduction).count(), 9);
    }

    #[test]
    fn every_plottable_entry_is_tagged_except_reproductions() {
        let b = embedded();
        for plot in Plot::ALL {
            for m in b.by_dataset(plot.dataset()) {
                let plottable = m.value(plot.x_metric()).is_some()
                    && m.value(plot.y_metric()).is_some()
                    && (plot.latency_setup().is_none() || m.latency_setup == plot.latency_setup())
                    && !m.reproduction;
                assert_eq!(m.plots.contains(&plot), plottable, "{} ({}) and {plot:?}", m.label, m.name.get_ref());
            }
        }
    }

    #[test]
    fn topformer_entries_name_their_spec() {
        let b = embedded();
        let tiny: Vec<f64> =
            b.topformer("topformer-tiny").into_iter().filter(|m| !m.reproduction).filter_map(|m| m.miou).collect();
        assert_eq!(tiny, [32.5, 33.4, 33.6, 34.6, 32.8]);
        let base: Vec<f64> =
            b.topformer("topformer-base").into_iter().filter(|m| !m.reproduction).filter_map(|m| m.miou).collect();
        assert_eq!(base, [38.3, 39.2]);
        assert_eq!(b.topformer("topformer-base-cityscapes").len(), 2);
        let top1: Vec<f64> = ["tiny", "small", "base"]
            .iter()
            .flat_map(|s| b.topformer(&format!("topformer-{s}-imagenet")))
            .filter(|m| !m.reproduction)
            .filter_map(|m| m.top1)
            .collect();
        assert_eq!(top1, [66.2, 72.3, 75.3]);
    }

    #[test]
    fn approximate_values_follow_status() {
        let b = embedded();
        for m in &b.models {
            let s = m.status.to_ascii_lowercase();
            let flagged = s.contains("approx") || s.contains("digitised") || s.contains("ambiguous");
            assert_eq!(flagged, !m.approximate.is_empty(), "{}: {}", m.label, m.status);
        }
        let segformer_b1 = b.models.iter().find(|m| m.label == "SegFormer-B1 (MiT-B1)");
        assert_eq!(segformer_b1.map(|m| m.approximate.clone()), Some(vec![Metric::Miou, Metric::LatencyMs]));
        // Latency is approximate, accuracy and compute are not: only the latency figure draws it hollow.
        let pspnet = b.for_plot(Plot::Ade20kMiouVsLatency).find(|m| m.label == "PSPNet (MobileNetV2)");
        let pspnet = pspnet.map(|m| {
            (
                m.scatter_point(Plot::Ade20kMiouVsLatency, "s").map(|p| p.approximate),
                m.scatter_point(Plot::Ade20kMiouVsGflops, "s").map(|p| p.approximate),
            )
        });
        assert_eq!(pspnet, Some((Some(true), Some(false))));
    }

    #[test]
    fn scatter_points_carry_values_and_series() {
        let b = embedded();
        let points = b.scatter_points(Plot::ImagenetTop1VsMflops);
        assert_eq!(points.len(), 17);
        let first = &points[0];
        assert_eq!((first.label.as_str(), first.x, first.y), ("TopFormer-T", 126.0, 66.2));
        assert_eq!(first.series, "TopFormer (published)");
        assert!(points.iter().all(|p| !p.approximate));
    }

    fn load_err(text: &str) -> String {
        match load_baselines(text, "b.toml") {
            Ok(_) => panic!("expected an error for:\n{text}"),
            Err(e) => e.to_string(),
        }
    }

    const MINIMAL: &str = "[[model]]\nname = \"X\"\nencoder = \"E\"\nfamily = \"cnn\"\nlabel = \"X (E)\"\n\
                           dataset = \"ADE20K-val\"\ninput = \"512x512\"\nsource = \"s\"\nstatus = \"exact\"\n";

    #[test]
    fn minimal_entry_loads() {
        let b = load_baselines(MINIMAL, "b.toml");
        assert_eq!(b.map(|b| b.models.len()).ok(), Some(1));
    }

    #[test]
    fn errors_name_file_and_line() {
        let unknown = format!("{MINIMAL}gflop = 1.0\n");
        let e = load_err(&unknown);
        assert!(e.starts_with("b.toml:") && e.contains("gflop"), "{e}");
        let typo = MINIMAL.replace("ADE20K-val", "ADE20K");
        assert!(load_err(&typo).starts_with("b.toml:6:"), "{}", load_err(&typo));
        let second = format!("{MINIMAL}\n{}", MINIMAL.replace("\"exact\"", "\"exact; latency approx\""));
        let e = load_err(&second);
        assert!(e.starts_with("b.toml:12: model 'X'") && e.contains("approximate"), "{e}");
        let bad_tag = format!("{MINIMAL}plots = [\"ade20k-miou-vs-gflops\"]\n");
        assert!(load_err(&bad_tag).contains("has no gflops"), "{}", load_err(&bad_tag));
        let spec = MINIMAL.replace("\"cnn\"", "\"topformer\"");
        assert!(load_err(&spec).contains("`spec`"));
        assert!(load_err("").contains("no [[model]]") || load_err("").contains("model"));
        let negative = format!("{MINIMAL}gflops = -1.0\n");
        assert!(load_err(&negative).contains("positive"));
    }
}
