//! Deterministic SVG figures for the report: scatter plots of labelled points, stacked bars and line charts.
//!
//! All three kinds share one frame (title, axes with explicit ticks, a legend column on the right) and one
//! marker style per series. Text is written as SVG `<text>` and laid out by the viewer, so widths are
//! estimated here (generously) to size label areas and to keep point labels from overlapping.
//! Same input, byte-identical output: nothing depends on hashing, time or the machine.

use std::fmt::Display;
use std::ops::Range;

use plotters::backend::SVGBackend;
use plotters::coord::ranged1d::{DefaultFormatting, KeyPointHint, Ranged};
use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::{
    Cartesian2d, ChartBuilder, ChartContext, Circle, Color, DrawingArea, IntoDrawingArea, IntoFont, PathElement,
    Polygon, RGBColor, Rectangle, ShapeStyle, Text, TextStyle, WHITE,
};
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::baselines::Family;
use crate::error::{Error, Result};

/// One labelled marker in a scatter plot.
#[derive(Debug, Clone, PartialEq)]
pub struct ScatterPoint {
    /// Text printed next to the marker (model name + encoder).
    pub label: String,
    /// Position on the x axis, in the axis' units.
    pub x: f64,
    /// Position on the y axis, in the axis' units.
    pub y: f64,
    /// Series the point belongs to, named in the legend.
    pub series: String,
    /// How the point is drawn: its model family's marker and colour (the legend takes a series' first point's).
    pub style: SeriesStyle,
    /// Whether a coordinate is approximate (e.g. digitised from a published plot); drawn hollow.
    pub approximate: bool,
}

/// One stacked bar: a label and named segments (same segment names across bars, in order).
#[derive(Debug, Clone, PartialEq)]
pub struct StackedBar {
    /// Category label under the bar.
    pub label: String,
    /// Segment names and values, bottom to top; values must be finite and non-negative.
    pub segments: Vec<(String, f64)>,
}

/// A named polyline.
#[derive(Debug, Clone, PartialEq)]
pub struct LineSeries {
    /// Series name for the legend.
    pub name: String,
    /// Its model family's marker and colour.
    pub style: SeriesStyle,
    /// How the line is stroked, to tell apart lines of one family.
    pub dash: LineDash,
    /// Data points `(x, y)`, drawn in the given order.
    pub points: Vec<(f64, f64)>,
}

/// Scatter of labelled points, each drawn in its style, a legend of the series, axis titles with units;
/// log-scale x when asked. Approximate points are drawn hollow, and the legend says so. Earlier points are drawn
/// over later ones; labels are placed greedily in input order, so list the points that matter most first.
pub fn scatter_svg(title: &str, x_label: &str, y_label: &str, log_x: bool, points: &[ScatterPoint]) -> Result<String> {
    if points.is_empty() {
        return Err(figure_error(title, "no points to plot"));
    }
    let xs: Vec<f64> = points.iter().map(|p| p.x).collect();
    let ys: Vec<f64> = points.iter().map(|p| p.y).collect();
    let x = Axis::numeric(title, x_label, &xs, Scale::for_log(log_x), TickSource::Nice)?;
    let y = Axis::numeric(title, y_label, &ys, Scale::Linear, TickSource::Nice)?;

    let series = first_appearance(points.iter().map(|p| p.series.as_str()));
    let mut legend: Vec<LegendEntry> = series
        .iter()
        .filter_map(|name| points.iter().find(|p| p.series == *name))
        .map(|p| LegendEntry { text: p.series.clone(), swatch: Swatch::Marker(Marker::of(p.style, false)) })
        .collect();
    if points.iter().any(|p| p.approximate) {
        let marker = Marker { shape: Shape::Circle, color: APPROX_GREY, hollow: true };
        legend.push(LegendEntry { text: "hollow: approximate value".into(), swatch: Swatch::Marker(marker) });
    }

    let data = points.iter().map(|p| vec![(p.x, p.y)]).collect();
    let figure = Figure { title, x, y, legend, data };
    render(&figure, |canvas| {
        let centres: Vec<(i32, i32)> = points.iter().map(|p| canvas.px(p.x, p.y)).collect();
        // Later points first, so that where markers coincide the first-listed series stays visible on top.
        for (p, &centre) in points.iter().zip(&centres).rev() {
            canvas.marker(centre, Marker::of(p.style, p.approximate))?;
        }
        let labels: Vec<&str> = points.iter().map(|p| p.label.as_str()).collect();
        for (label, &centre, place) in labels
            .iter()
            .zip(&centres)
            .zip(place_labels(&centres, &labels, canvas.plot_box(), &canvas.legend_box))
            .map(|((l, c), p)| (l, c, p))
        {
            if place.leader {
                canvas.path(&[centre, place.leader_end], LEADER_GREY, 1)?;
            }
            canvas.text(label, place.at, place.pos, LABEL_SIZE, TEXT_COLOR)?;
        }
        Ok(())
    })
}

/// Stacked bars with a legend of segment names, y axis title with units; each bar's total is printed above it.
pub fn stacked_bars_svg(title: &str, y_label: &str, bars: &[StackedBar]) -> Result<String> {
    let first = bars.first().ok_or_else(|| figure_error(title, "no bars to plot"))?;
    let names: Vec<&str> = first.segments.iter().map(|(n, _)| n.as_str()).collect();
    if names.is_empty() {
        return Err(figure_error(title, format!("bar '{}' has no segments", first.label)));
    }
    for bar in bars {
        let these: Vec<&str> = bar.segments.iter().map(|(n, _)| n.as_str()).collect();
        if these != names {
            return Err(figure_error(
                title,
                format!("bar '{}' has segments {these:?}, expected {names:?} as in bar '{}'", bar.label, first.label),
            ));
        }
        if let Some((name, v)) = bar.segments.iter().find(|(_, v)| !v.is_finite() || *v < 0.0) {
            return Err(figure_error(
                title,
                format!("bar '{}', segment '{name}': {v} is not a finite value >= 0", bar.label),
            ));
        }
    }
    let totals: Vec<f64> = bars.iter().map(|b| b.segments.iter().map(|(_, v)| v).sum()).collect();
    let categories: Vec<String> = bars.iter().map(|b| b.label.clone()).collect();
    let x = Axis::categories(categories);
    let y = Axis::numeric(title, y_label, &totals, Scale::Linear, TickSource::FromZero)?;
    let legend = names
        .iter()
        .enumerate()
        .map(|(i, name)| LegendEntry { text: name.to_string(), swatch: Swatch::Block(palette(i)) })
        .collect();

    let figure = Figure { title, x, y, legend, data: Vec::new() };
    render(&figure, |canvas| {
        for (i, (bar, total)) in bars.iter().zip(&totals).enumerate() {
            let centre = i as f64;
            let mut bottom = 0.0;
            for (j, (_, value)) in bar.segments.iter().enumerate() {
                if *value > 0.0 {
                    let p0 = canvas.px(centre - BAR_HALF_WIDTH, bottom);
                    let p1 = canvas.px(centre + BAR_HALF_WIDTH, bottom + value);
                    canvas.block(p0, p1, palette(j))?;
                    if p0.1 - p1.1 >= SEGMENT_LABEL_MIN_PX {
                        let mid = canvas.px(centre, bottom + value / 2.0);
                        canvas.text(
                            &format_significant(*value, 4),
                            mid,
                            Pos::new(HPos::Center, VPos::Center),
                            LABEL_SIZE,
                            WHITE,
                        )?;
                    }
                }
                bottom += value;
            }
            let (tx, ty) = canvas.px(centre, *total);
            canvas.text(
                &format_significant(*total, 4),
                (tx, ty - 4),
                Pos::new(HPos::Center, VPos::Bottom),
                LABEL_SIZE,
                TEXT_COLOR,
            )?;
        }
        Ok(())
    })
}

/// Line chart with markers at the data points, legend, axis titles; optional log axes.
pub fn line_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    log_x: bool,
    log_y: bool,
    series: &[LineSeries],
) -> Result<String> {
    if series.iter().all(|s| s.points.is_empty()) {
        return Err(figure_error(title, "no points to plot"));
    }
    let xs: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.0)).collect();
    let ys: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
    let x = Axis::numeric(title, x_label, &xs, Scale::for_log(log_x), TickSource::DataIfFew)?;
    let y = Axis::numeric(title, y_label, &ys, Scale::for_log(log_y), TickSource::Nice)?;
    let legend = series
        .iter()
        .map(|s| LegendEntry { text: s.name.clone(), swatch: Swatch::Line(Marker::of(s.style, false), s.dash) })
        .collect();

    let data = series.iter().map(|s| s.points.clone()).collect();
    let figure = Figure { title, x, y, legend, data };
    render(&figure, |canvas| {
        for s in series {
            let marker = Marker::of(s.style, false);
            let pixels: Vec<(i32, i32)> = s.points.iter().map(|&(x, y)| canvas.px(x, y)).collect();
            draw_line(canvas.root, &pixels, marker.color, s.dash)?;
            for &p in &pixels {
                canvas.marker(p, marker)?;
            }
        }
        Ok(())
    })
}

/// Most sweep variants [`pareto_svg`] draws as dots; beyond it, an evenly strided subset (the front is always
/// drawn whole).
pub const MAX_VARIANT_DOTS: usize = 5000;

/// Radius of a sweep variant's dot, in pixels.
const DOT_RADIUS: i32 = 3;

/// Colour of a sweep variant's dot: quieter than any series, darker than the grid.
const DOT_GREY: RGBColor = RGBColor(180, 180, 180);

/// A design-space sweep: every variant a small grey dot (at most [`MAX_VARIANT_DOTS`]), the Pareto front's
/// points joined in order and each labelled, then labelled reference points (e.g. published networks) in series
/// of their own. Points are `(x, y)` in axis units.
pub fn pareto_svg(
    title: &str,
    x_label: &str,
    y_label: &str,
    variants: &[(f64, f64)],
    front: &[ScatterPoint],
    references: &[ScatterPoint],
) -> Result<String> {
    if front.is_empty() {
        return Err(figure_error(title, "no Pareto front to plot"));
    }
    let stride = variants.len().div_ceil(MAX_VARIANT_DOTS).max(1);
    let dots: Vec<(f64, f64)> = variants.iter().step_by(stride).copied().collect();
    let labelled: Vec<&ScatterPoint> = front.iter().chain(references).collect();
    let xs: Vec<f64> = dots.iter().map(|p| p.0).chain(labelled.iter().map(|p| p.x)).collect();
    let ys: Vec<f64> = dots.iter().map(|p| p.1).chain(labelled.iter().map(|p| p.y)).collect();
    let x = Axis::numeric(title, x_label, &xs, Scale::Linear, TickSource::Nice)?;
    let y = Axis::numeric(title, y_label, &ys, Scale::Linear, TickSource::Nice)?;

    let dot = Marker { shape: Shape::Circle, color: DOT_GREY, hollow: false };
    let dots_text = match stride {
        1 => format!("variants ({})", variants.len()),
        k => format!("variants (1 in {k} of {} drawn)", variants.len()),
    };
    let reference_series = first_appearance(references.iter().map(|p| p.series.as_str()));
    let front_series = front[0].series.as_str();
    let mut legend = vec![
        LegendEntry { text: dots_text, swatch: Swatch::Marker(dot) },
        LegendEntry {
            text: front_series.to_string(),
            swatch: Swatch::Line(Marker::of(front[0].style, false), LineDash::Solid),
        },
    ];
    legend.extend(reference_series.iter().map(|name| {
        let style = references.iter().find(|p| p.series == *name).map_or(front[0].style, |p| p.style);
        LegendEntry { text: name.to_string(), swatch: Swatch::Marker(Marker::of(style, false)) }
    }));

    let mut data: Vec<Vec<(f64, f64)>> = vec![front.iter().map(|p| (p.x, p.y)).collect()];
    data.extend(labelled.iter().map(|p| vec![(p.x, p.y)]));
    data.extend(dots.iter().map(|&p| vec![p]));
    let figure = Figure { title, x, y, legend, data };
    render(&figure, |canvas| {
        for &(x, y) in &dots {
            let centre = canvas.px(x, y);
            canvas.root.draw(&Circle::new(centre, DOT_RADIUS, dot.color.filled())).map_err(drawing_error)?;
        }
        let front_marker = Marker::of(front[0].style, false);
        let line: Vec<(i32, i32)> = front.iter().map(|p| canvas.px(p.x, p.y)).collect();
        canvas.path(&line, front_marker.color, LINE_WIDTH)?;
        let centres: Vec<(i32, i32)> = labelled.iter().map(|p| canvas.px(p.x, p.y)).collect();
        // References last in the list, drawn first: the front stays on top where they coincide.
        for (p, &centre) in labelled.iter().zip(&centres).rev() {
            canvas.marker(centre, Marker::of(p.style, p.approximate))?;
        }
        let labels: Vec<&str> = labelled.iter().map(|p| p.label.as_str()).collect();
        for ((label, &centre), place) in
            labels.iter().zip(&centres).zip(place_labels(&centres, &labels, canvas.plot_box(), &canvas.legend_box))
        {
            if place.leader {
                canvas.path(&[centre, place.leader_end], LEADER_GREY, 1)?;
            }
            canvas.text(label, place.at, place.pos, LABEL_SIZE, TEXT_COLOR)?;
        }
        Ok(())
    })
}

// ---------------------------------------------------------------------------------------------------------------
// Shared style

/// Canvas size in pixels, the same for every figure.
const WIDTH: u32 = 960;
const HEIGHT: u32 = 620;
const FONT: &str = "sans-serif";
/// Font sizes as plotters takes them; the SVG carries `font-size = size / 1.24`.
const TITLE_SIZE: f64 = 24.0;
const AXIS_TITLE_SIZE: f64 = 18.0;
const TICK_SIZE: f64 = 15.0;
const LABEL_SIZE: f64 = 14.0;
const LEGEND_SIZE: f64 = 15.0;
const TEXT_COLOR: RGBColor = RGBColor(34, 34, 34);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);
const LEADER_GREY: RGBColor = RGBColor(150, 150, 150);
const APPROX_GREY: RGBColor = RGBColor(110, 110, 110);
/// Colour-blind-friendly categorical palette (Okabe-Ito, then Tableau extras), one colour per series.
const PALETTE: [RGBColor; 10] = [
    RGBColor(0, 114, 178),
    RGBColor(213, 94, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(230, 159, 0),
    RGBColor(86, 180, 233),
    RGBColor(140, 86, 75),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(0, 0, 0),
];
const MARKER_RADIUS: f64 = 6.0;
const LINE_WIDTH: u32 = 2;
const BAR_HALF_WIDTH: f64 = 0.3;
/// Segments at least this tall (pixels) carry their value inside.
const SEGMENT_LABEL_MIN_PX: i32 = 20;
const LEGEND_ROW: i32 = 26;
const LEGEND_SWATCH: i32 = 30;
const LEGEND_PAD: i32 = 10;

/// How a model family is drawn in every figure: one marker shape and one colour.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeriesStyle {
    shape: Shape,
    color: RGBColor,
}

/// The marker and colour of `family`, the same in every figure (new figures take their styles from here).
pub fn family_style(family: Family) -> SeriesStyle {
    let (shape, color) = match family {
        Family::Topformer => (Shape::Circle, PALETTE[0]),
        Family::Seaformer => (Shape::Diamond, PALETTE[1]),
        Family::Cnn => (Shape::Square, PALETTE[2]),
        Family::Vit => (Shape::TriangleUp, PALETTE[3]),
    };
    SeriesStyle { shape, color }
}

impl SeriesStyle {
    /// The style of a series derived from this family's (toparch's predictions for it, variants of it): the
    /// family's colour with a marker no family uses, so the two read as related but distinct.
    pub fn derived(self) -> SeriesStyle {
        SeriesStyle { shape: Shape::TriangleDown, color: self.color }
    }
}

/// The stroke of a line series.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineDash {
    /// A continuous line.
    Solid,
    /// Long dashes.
    Dashed,
    /// Short dots.
    Dotted,
}

/// Draws a polyline through `points` with `dash`.
fn draw_line(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    points: &[(i32, i32)],
    color: RGBColor,
    dash: LineDash,
) -> Result<()> {
    let style = color.stroke_width(LINE_WIDTH);
    let (dash_px, gap_px) = match dash {
        LineDash::Solid => return root.draw(&PathElement::new(points.to_vec(), style)).map_err(drawing_error),
        LineDash::Dashed => (7, 4),
        LineDash::Dotted => (2, 3),
    };
    root.draw(&DashedPathElement::new(points.iter().copied(), dash_px, gap_px, style)).map_err(drawing_error)
}

/// The `i`-th palette colour, cycling.
fn palette(i: usize) -> RGBColor {
    PALETTE[i % PALETTE.len()]
}

/// A text style of `size` (plotters units) in `color`, anchored at `pos`.
fn text_style(size: f64, color: RGBColor, pos: Pos) -> TextStyle<'static> {
    TextStyle { font: (FONT, size).into_font(), color: color.to_backend_color(), pos }
}

/// The pixel size of text of `size` (plotters units) as the SVG viewer draws it.
fn font_px(size: f64) -> f64 {
    size / 1.24
}

/// Estimated rendered width of `text` at plotters size `size`: per-character advances of common sans-serif fonts
/// (DejaVu Sans, the widest usual default), rounded up so that estimates err on the wide side.
fn text_width(text: &str, size: f64) -> f64 {
    let em: f64 = text
        .chars()
        .map(|c| match c {
            'i' | 'j' | 'l' | '.' | ',' | ':' | ';' | '\'' | '|' | '!' => 0.3,
            ' ' | 'f' | 't' | 'r' | '(' | ')' | '[' | ']' | '-' | '/' => 0.4,
            'm' | 'w' | 'M' | 'W' => 0.95,
            'A'..='Z' => 0.72,
            _ => 0.64,
        })
        .sum();
    em * font_px(size)
}

/// Marker shapes.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Shape {
    Circle,
    Square,
    TriangleUp,
    Diamond,
    /// Only for series derived from a family (predictions, design variants), never a family's own marker.
    TriangleDown,
}

/// How one data point is drawn. Every marker is exactly one SVG `<circle>` or `<polygon>`.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Marker {
    shape: Shape,
    color: RGBColor,
    hollow: bool,
}

impl Marker {
    /// The marker of a series style, hollow for approximate values.
    fn of(style: SeriesStyle, hollow: bool) -> Marker {
        Marker { shape: style.shape, color: style.color, hollow }
    }

    /// Polygon vertices around `(cx, cy)` (empty for a circle).
    fn vertices(self, (cx, cy): (i32, i32)) -> Vec<(i32, i32)> {
        let r = MARKER_RADIUS;
        let unit: &[(f64, f64)] = match self.shape {
            Shape::Circle => &[],
            Shape::Square => &[(-0.85, -0.85), (0.85, -0.85), (0.85, 0.85), (-0.85, 0.85)],
            Shape::TriangleUp => &[(0.0, -1.2), (1.1, 0.75), (-1.1, 0.75)],
            Shape::Diamond => &[(0.0, -1.25), (1.1, 0.0), (0.0, 1.25), (-1.1, 0.0)],
            Shape::TriangleDown => &[(0.0, 1.2), (1.1, -0.75), (-1.1, -0.75)],
        };
        unit.iter().map(|(dx, dy)| (cx + (dx * r).round() as i32, cy + (dy * r).round() as i32)).collect()
    }
}

/// What a legend row shows before its text.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Swatch {
    /// A marker (scatter series).
    Marker(Marker),
    /// A line segment with a marker on it (line series).
    Line(Marker, LineDash),
    /// A filled block (bar segment).
    Block(RGBColor),
}

/// One legend row.
#[derive(Debug, Clone, PartialEq)]
struct LegendEntry {
    text: String,
    swatch: Swatch,
}

/// Width of the legend column for `entries`, in pixels.
fn legend_width(entries: &[LegendEntry]) -> i32 {
    let widest = entries.iter().map(|e| text_width(&e.text, LEGEND_SIZE)).fold(0.0, f64::max);
    // Outer margin, box padding, swatch, gap, text, box padding, outer margin.
    5 * LEGEND_PAD + LEGEND_SWATCH + widest.ceil() as i32
}

// ---------------------------------------------------------------------------------------------------------------
// Axes

/// How data values map onto an axis.
#[derive(Debug, Clone, PartialEq)]
enum Scale {
    Linear,
    Log,
    /// One category per integer position 0, 1, 2, ...; tick labels are the names.
    Categories(Vec<String>),
}

impl Scale {
    fn for_log(log: bool) -> Scale {
        if log {
            Scale::Log
        } else {
            Scale::Linear
        }
    }
}

/// Where an axis' ticks come from.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TickSource {
    /// Round numbers over the data range plus margins.
    Nice,
    /// Round numbers from zero to above the maximum (bar heights).
    FromZero,
    /// The data values themselves when there are at most eight distinct ones (e.g. a resolution sweep), else nice.
    DataIfFew,
}

/// One axis: its title, its range and ticks in plot space (log10 of the data on a log axis), and its scale.
#[derive(Debug, Clone, PartialEq)]
struct Axis {
    title: Option<String>,
    range: Range<f64>,
    ticks: Vec<f64>,
    minor: Vec<f64>,
    scale: Scale,
}

impl Axis {
    /// A numeric axis covering `values` with margins; errors (naming the figure) on non-finite values and on
    /// non-positive values of a log axis.
    fn numeric(figure: &str, title: &str, values: &[f64], scale: Scale, ticks: TickSource) -> Result<Axis> {
        let log = scale == Scale::Log;
        if let Some(v) = values.iter().find(|v| !v.is_finite() || (log && **v <= 0.0)) {
            let need = if log { "a finite positive number (log axis)" } else { "a finite number" };
            return Err(figure_error(figure, format!("value {v} on axis '{title}' is not {need}")));
        }
        let mapped: Vec<f64> = values.iter().map(|&v| if log { v.log10() } else { v }).collect();
        let lo = mapped.iter().copied().fold(f64::INFINITY, f64::min);
        let hi = mapped.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let range = match ticks {
            TickSource::FromZero => 0.0..if hi > 0.0 { hi * 1.12 } else { 1.0 },
            _ => {
                let min_span = if log { 0.5 } else { hi.abs().max(1.0) * 0.2 };
                let span = (hi - lo).max(min_span);
                let centre = (hi + lo) / 2.0;
                let half = span / 2.0 + span * 0.08;
                (centre - half)..(centre + half)
            }
        };
        let mut distinct = mapped.clone();
        distinct.sort_by(f64::total_cmp);
        distinct.dedup();
        let (ticks, minor) = if ticks == TickSource::DataIfFew && distinct.len() <= 8 {
            (distinct, Vec::new())
        } else if log {
            log_ticks(&range)
        } else {
            linear_ticks(&range)
        };
        Ok(Axis { title: Some(title.to_string()), range, ticks, minor, scale })
    }

    /// A category axis with one position per name and no title.
    fn categories(names: Vec<String>) -> Axis {
        let n = names.len() as f64;
        let ticks = (0..names.len()).map(|i| i as f64).collect();
        Axis { title: None, range: -0.5..n - 0.5, ticks, minor: Vec::new(), scale: Scale::Categories(names) }
    }

    /// Data value → plot-space value.
    fn map(&self, v: f64) -> f64 {
        match self.scale {
            Scale::Log => v.log10(),
            _ => v,
        }
    }

    /// Tick label of plot-space value `v`.
    fn tick_label(&self, v: f64) -> String {
        match &self.scale {
            Scale::Linear => format_number(v),
            Scale::Log => format_number(10f64.powf(v)),
            Scale::Categories(names) => names.get(v.round().max(0.0) as usize).cloned().unwrap_or_default(),
        }
    }

    /// Widest tick label, in pixels.
    fn widest_tick_label(&self) -> f64 {
        self.ticks.iter().map(|&t| text_width(&self.tick_label(t), TICK_SIZE)).fold(0.0, f64::max)
    }
}

/// Plotters draws the axis through this: the mapping is linear in plot space, and the key points are the
/// axis' own ticks (bold grid lines and labels) and minor ticks (light grid lines).
impl Ranged for Axis {
    type ValueType = f64;
    type FormatOption = DefaultFormatting;

    fn map(&self, value: &f64, limit: (i32, i32)) -> i32 {
        let fraction = (value - self.range.start) / (self.range.end - self.range.start);
        limit.0 + (f64::from(limit.1 - limit.0) * fraction).round() as i32
    }

    fn key_points<Hint: KeyPointHint>(&self, hint: Hint) -> Vec<f64> {
        if hint.weight().allow_light_points() {
            self.minor.clone()
        } else {
            self.ticks.clone()
        }
    }

    fn range(&self) -> Range<f64> {
        self.range.clone()
    }
}

/// Ticks at 1, 2, 2.5 or 5 × 10^k, about six over `range`; minor ticks halfway.
fn linear_ticks(range: &Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let raw = (range.end - range.start) / 6.0;
    let magnitude = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * magnitude).find(|s| *s >= raw).unwrap_or(10.0 * magnitude);
    let first = (range.start / step).ceil() as i64;
    let last = (range.end / step).floor() as i64;
    let ticks = (first..=last).map(|i| i as f64 * step).collect();
    let minor = (first - 1..=last).map(|i| (i as f64 + 0.5) * step).filter(|v| range.contains(v)).collect();
    (ticks, minor)
}

/// Ticks (plot space: log10) at m × 10^k for mantissas chosen by how many decades `range` spans; minor ticks at
/// the other integer mantissas.
fn log_ticks(range: &Range<f64>) -> (Vec<f64>, Vec<f64>) {
    let decades = range.end - range.start;
    let mantissas: &[f64] = if decades <= 1.2 {
        &[1.0, 2.0, 3.0, 5.0, 7.0]
    } else if decades <= 3.0 {
        &[1.0, 2.0, 5.0]
    } else if decades <= 6.0 {
        &[1.0, 3.0]
    } else {
        &[1.0]
    };
    let (mut ticks, mut minor) = (Vec::new(), Vec::new());
    for k in range.start.floor() as i32..=range.end.ceil() as i32 {
        for m in 1..10 {
            let v = (f64::from(m) * 10f64.powi(k)).log10();
            if !range.contains(&v) {
                continue;
            }
            if mantissas.contains(&f64::from(m)) {
                ticks.push(v);
            } else {
                minor.push(v);
            }
        }
    }
    (ticks, minor)
}

/// A number with at most six significant digits and no trailing zeros (`0.2`, `1.25`, `2048`).
fn format_number(v: f64) -> String {
    format_significant(v, 6)
}

/// A number with at most `digits` significant digits (never cutting integer digits) and no trailing zeros.
fn format_significant(v: f64, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v.is_finite() { "0".into() } else { v.to_string() };
    }
    let decimals = (digits - 1 - v.abs().log10().floor() as i32).clamp(0, 12) as usize;
    let s = format!("{v:.decimals$}");
    let s = if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.') } else { &s };
    if s == "-0" {
        "0".into()
    } else {
        s.to_string()
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Frame and drawing

/// Everything the shared frame needs: title, axes and legend.
struct Figure<'t> {
    title: &'t str,
    x: Axis,
    y: Axis,
    legend: Vec<LegendEntry>,
    /// The data as polylines (a scatter point is a one-point polyline): the legend goes into a corner of the
    /// plot that none of it comes near, if there is one, else into a column on the right. Empty: the column.
    data: Vec<Vec<(f64, f64)>>,
}

type Chart<'a, 'b> = ChartContext<'a, SVGBackend<'b>, Cartesian2d<Axis, Axis>>;

/// The drawing surface handed to a figure's data-drawing code: pixel mapping and primitive drawing.
struct Canvas<'a, 'b> {
    root: &'a DrawingArea<SVGBackend<'b>, Shift>,
    chart: Chart<'a, 'b>,
    x: &'a Axis,
    y: &'a Axis,
    /// The legend, when it sits inside the plot (zero or one box).
    legend_box: Vec<Bounds>,
}

impl Canvas<'_, '_> {
    /// Pixel position of data point `(x, y)`.
    fn px(&self, x: f64, y: f64) -> (i32, i32) {
        self.chart.backend_coord(&(self.x.map(x), self.y.map(y)))
    }

    /// The plotting area in pixels.
    fn plot_box(&self) -> Bounds {
        let (xs, ys) = self.chart.plotting_area().get_pixel_range();
        Bounds { x0: f64::from(xs.start), y0: f64::from(ys.start), x1: f64::from(xs.end), y1: f64::from(ys.end) }
    }

    fn marker(&self, centre: (i32, i32), marker: Marker) -> Result<()> {
        draw_marker(self.root, centre, marker)
    }

    fn text(&self, text: &str, at: (i32, i32), pos: Pos, size: f64, color: RGBColor) -> Result<()> {
        self.root.draw(&Text::new(text, at, text_style(size, color, pos))).map_err(drawing_error)
    }

    fn path(&self, points: &[(i32, i32)], color: RGBColor, width: u32) -> Result<()> {
        self.root.draw(&PathElement::new(points.to_vec(), color.stroke_width(width))).map_err(drawing_error)
    }

    fn block(&self, p0: (i32, i32), p1: (i32, i32), color: RGBColor) -> Result<()> {
        self.root.draw(&Rectangle::new([p0, p1], color.filled())).map_err(drawing_error)
    }
}

/// Draws `marker` at `centre`: one `<circle>` or one `<polygon>` (plus an outline path when hollow).
fn draw_marker(root: &DrawingArea<SVGBackend<'_>, Shift>, centre: (i32, i32), marker: Marker) -> Result<()> {
    let radius = MARKER_RADIUS.round() as i32;
    let outline = ShapeStyle { color: marker.color.to_rgba(), filled: false, stroke_width: 2 };
    let vertices = marker.vertices(centre);
    match (vertices.first(), marker.hollow) {
        (None, true) => root.draw(&Circle::new(centre, radius, outline)),
        (None, false) => root.draw(&Circle::new(centre, radius, marker.color.filled())),
        (Some(&first), true) => {
            root.draw(&Polygon::new(vertices.clone(), WHITE.filled())).map_err(drawing_error)?;
            let closed: Vec<(i32, i32)> = vertices.into_iter().chain([first]).collect();
            root.draw(&PathElement::new(closed, outline))
        }
        (Some(_), false) => root.draw(&Polygon::new(vertices, marker.color.filled())),
    }
    .map_err(drawing_error)
}

/// Draws the frame of `figure` (background, title, axes, grid, legend), then the data through `draw_data`.
fn render(figure: &Figure<'_>, draw_data: impl FnOnce(&Canvas<'_, '_>) -> Result<()>) -> Result<String> {
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(drawing_error)?;
        let title_style = text_style(TITLE_SIZE, TEXT_COLOR, Pos::new(HPos::Center, VPos::Top));
        let body = root.titled(figure.title, title_style).map_err(drawing_error)?;
        let legend_size = (legend_width(&figure.legend) - 2 * LEGEND_PAD, legend_height(&figure.legend));
        // Try the full width with the legend inside the plot; fall back to a legend column.
        let inside = if figure.data.is_empty() {
            None
        } else {
            let (full, _) = body.split_horizontally(WIDTH as i32);
            let probe = build_chart(&full, figure)?;
            free_corner(&probe, figure, legend_size)
        };
        let column_w = if inside.is_some() { 0 } else { legend_size.0 + 2 * LEGEND_PAD };
        let (main, _legend_column) = body.split_horizontally(WIDTH as i32 - column_w);
        let mut chart = build_chart(&main, figure)?;

        let (x, y) = (&figure.x, &figure.y);
        let x_format = |v: &f64| x.tick_label(*v);
        let y_format = |v: &f64| y.tick_label(*v);
        let mut mesh = chart.configure_mesh();
        mesh.x_label_formatter(&x_format)
            .y_label_formatter(&y_format)
            .label_style(text_style(TICK_SIZE, TEXT_COLOR, Pos::new(HPos::Center, VPos::Top)))
            .axis_desc_style(text_style(AXIS_TITLE_SIZE, TEXT_COLOR, Pos::new(HPos::Center, VPos::Top)))
            .bold_line_style(GRID_BOLD)
            .light_line_style(GRID_LIGHT)
            .axis_style(TEXT_COLOR);
        if let Some(title) = &x.title {
            mesh.x_desc(title);
        }
        if let Some(title) = &y.title {
            mesh.y_desc(title);
        }
        if matches!(x.scale, Scale::Categories(_)) {
            mesh.disable_x_mesh();
        }
        mesh.draw().map_err(drawing_error)?;

        let plot_top = chart.plotting_area().get_pixel_range().1.start;
        let origin = inside.unwrap_or((WIDTH as i32 - column_w + LEGEND_PAD, plot_top));
        let legend_box = inside.map(|(x0, y0)| Bounds {
            x0: f64::from(x0),
            y0: f64::from(y0),
            x1: f64::from(x0 + legend_size.0),
            y1: f64::from(y0 + legend_size.1),
        });
        let canvas = Canvas { root: &root, chart, x, y, legend_box: legend_box.into_iter().collect() };
        draw_data(&canvas)?;
        draw_legend(&root, &figure.legend, origin, legend_size.0)?;
        root.present().map_err(drawing_error)?;
    }
    Ok(svg)
}

/// The chart (axes and label areas, nothing drawn yet) of `figure` on `area`.
fn build_chart<'a, 'b>(area: &'a DrawingArea<SVGBackend<'b>, Shift>, figure: &Figure<'_>) -> Result<Chart<'a, 'b>> {
    let axis_title_px = font_px(AXIS_TITLE_SIZE) * 1.6;
    let x_area = font_px(TICK_SIZE) * 1.8 + if figure.x.title.is_some() { axis_title_px } else { 0.0 };
    let y_area = figure.y.widest_tick_label() + 12.0 + axis_title_px;
    ChartBuilder::on(area)
        .margin(12)
        .margin_right(20)
        .x_label_area_size(x_area.ceil() as i32)
        .y_label_area_size(y_area.ceil() as i32)
        .build_cartesian_2d(figure.x.clone(), figure.y.clone())
        .map_err(drawing_error)
}

/// The top-left corner for a `size` legend in a corner of `chart`'s plot (upper left, upper right, lower right,
/// lower left) that stays a marker and a label height away from all of `figure`'s data, if there is one.
fn free_corner(chart: &Chart<'_, '_>, figure: &Figure<'_>, size: (i32, i32)) -> Option<(i32, i32)> {
    let (xs, ys) = chart.plotting_area().get_pixel_range();
    let (w, h) = size;
    let inset = 8;
    let (left, right) = (xs.start + inset, xs.end - inset - w);
    let (top, bottom) = (ys.start + inset, ys.end - inset - h);
    let clearance = MARKER_RADIUS + font_px(LABEL_SIZE) * 1.2;
    let px = |&(x, y): &(f64, f64)| {
        let (px, py) = chart.backend_coord(&(figure.x.map(x), figure.y.map(y)));
        (f64::from(px), f64::from(py))
    };
    let lines: Vec<Vec<(f64, f64)>> = figure.data.iter().map(|line| line.iter().map(px).collect()).collect();
    [(left, top), (right, top), (right, bottom), (left, bottom)].into_iter().find(|&(x0, y0)| {
        let keep_out = Bounds {
            x0: f64::from(x0) - clearance,
            y0: f64::from(y0) - clearance,
            x1: f64::from(x0 + w) + clearance,
            y1: f64::from(y0 + h) + clearance,
        };
        lines.iter().all(|line| match line.as_slice() {
            [only] => !keep_out.contains(*only),
            _ => line.windows(2).all(|pair| keep_out.clip_length(pair[0], pair[1]) == 0.0),
        })
    })
}

/// Height of the legend box for `entries`, in pixels.
fn legend_height(entries: &[LegendEntry]) -> i32 {
    LEGEND_ROW * entries.len() as i32 + LEGEND_PAD
}

/// Draws the legend box with its top-left corner at `origin`.
fn draw_legend(
    root: &DrawingArea<SVGBackend<'_>, Shift>,
    entries: &[LegendEntry],
    origin: (i32, i32),
    width: i32,
) -> Result<()> {
    let (x0, y0) = origin;
    let corners = [(x0, y0), (x0 + width, y0 + legend_height(entries))];
    root.draw(&Rectangle::new(corners, WHITE.filled())).map_err(drawing_error)?;
    root.draw(&Rectangle::new(corners, GRID_BOLD.stroke_width(1))).map_err(drawing_error)?;
    for (i, entry) in entries.iter().enumerate() {
        let cy = y0 + LEGEND_PAD / 2 + LEGEND_ROW * i as i32 + LEGEND_ROW / 2;
        let sx = x0 + LEGEND_PAD;
        let centre = (sx + LEGEND_SWATCH / 2, cy);
        match entry.swatch {
            Swatch::Marker(marker) => draw_marker(root, centre, marker)?,
            Swatch::Line(marker, dash) => {
                draw_line(root, &[(sx, cy), (sx + LEGEND_SWATCH, cy)], marker.color, dash)?;
                draw_marker(root, centre, marker)?;
            }
            Swatch::Block(color) => {
                let block = Rectangle::new([(sx + 4, cy - 8), (sx + LEGEND_SWATCH - 4, cy + 8)], color.filled());
                root.draw(&block).map_err(drawing_error)?;
            }
        }
        let style = text_style(LEGEND_SIZE, TEXT_COLOR, Pos::new(HPos::Left, VPos::Center));
        root.draw(&Text::new(entry.text.as_str(), (sx + LEGEND_SWATCH + LEGEND_PAD, cy), style))
            .map_err(drawing_error)?;
    }
    Ok(())
}

/// The distinct values of `items` in order of first appearance.
fn first_appearance<'a>(items: impl Iterator<Item = &'a str>) -> Vec<&'a str> {
    let mut seen: Vec<&str> = Vec::new();
    for item in items {
        if !seen.contains(&item) {
            seen.push(item);
        }
    }
    seen
}

fn drawing_error(e: impl Display) -> Error {
    Error::input(format!("drawing an SVG figure failed: {e}"))
}

fn figure_error(figure: &str, message: impl Display) -> Error {
    Error::input(format!("figure '{figure}': {message}"))
}

// ---------------------------------------------------------------------------------------------------------------
// Point labels

/// An axis-aligned box in pixels.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Bounds {
    x0: f64,
    y0: f64,
    x1: f64,
    y1: f64,
}

impl Bounds {
    fn overlap(&self, other: &Bounds) -> f64 {
        let w = self.x1.min(other.x1) - self.x0.max(other.x0);
        let h = self.y1.min(other.y1) - self.y0.max(other.y0);
        if w > 0.0 && h > 0.0 {
            w * h
        } else {
            0.0
        }
    }

    fn area(&self) -> f64 {
        (self.x1 - self.x0) * (self.y1 - self.y0)
    }

    /// Length of the segment `p`–`q` inside `self` (Liang–Barsky clipping).
    fn clip_length(&self, p: (f64, f64), q: (f64, f64)) -> f64 {
        let (dx, dy) = (q.0 - p.0, q.1 - p.1);
        let (mut t0, mut t1) = (0.0f64, 1.0f64);
        for (step, room) in [(-dx, p.0 - self.x0), (dx, self.x1 - p.0), (-dy, p.1 - self.y0), (dy, self.y1 - p.1)] {
            if step == 0.0 {
                if room < 0.0 {
                    return 0.0;
                }
            } else if step < 0.0 {
                t0 = t0.max(room / step);
            } else {
                t1 = t1.min(room / step);
            }
        }
        if t1 > t0 {
            (t1 - t0) * dx.hypot(dy)
        } else {
            0.0
        }
    }

    /// Whether point `p` lies inside `self`.
    fn contains(&self, (x, y): (f64, f64)) -> bool {
        (self.x0..=self.x1).contains(&x) && (self.y0..=self.y1).contains(&y)
    }

    /// Area of `self` outside `outer`.
    fn outside(&self, outer: &Bounds) -> f64 {
        self.area() - self.overlap(outer)
    }
}

/// Where one point label goes.
#[derive(Clone, Copy)]
struct Placement {
    /// Text anchor position in pixels.
    at: (i32, i32),
    /// How the text hangs off `at`.
    pos: Pos,
    /// Whether the label sits away from its marker and needs a leader line.
    leader: bool,
    /// The end of the leader line at the label.
    leader_end: (i32, i32),
}

/// How many distances from its marker a label may be tried at (the first without a leader line).
const LABEL_RINGS: u8 = 6;

/// Places each label next to its marker, greedily in input order: the first candidate position (right, left,
/// above, below, the diagonals; then the same farther out with a leader line) that overlaps no marker, no earlier
/// label or obstacle, crosses no leader line and stays inside `bounds` wins; if none is free, the least bad one.
fn place_labels(centres: &[(i32, i32)], labels: &[&str], bounds: Bounds, obstacles: &[Bounds]) -> Vec<Placement> {
    let h = font_px(LABEL_SIZE) * 1.15;
    let r = MARKER_RADIUS + 1.0;
    let markers: Vec<Bounds> = centres
        .iter()
        .map(|&(x, y)| Bounds {
            x0: f64::from(x) - r,
            y0: f64::from(y) - r,
            x1: f64::from(x) + r,
            y1: f64::from(y) + r,
        })
        .collect();
    let mut placed: Vec<Bounds> = obstacles.to_vec();
    let mut leaders: Vec<((f64, f64), (f64, f64))> = Vec::new();
    let mut out = Vec::with_capacity(labels.len());
    for (i, (&(cx, cy), label)) in centres.iter().zip(labels).enumerate() {
        let (cx, cy) = (f64::from(cx), f64::from(cy));
        let w = text_width(label, LABEL_SIZE);
        // What a leader line from this marker must not cross: placed labels and the other markers.
        let others: Vec<Bounds> = placed.iter().chain(&markers[..i]).chain(&markers[i + 1..]).copied().collect();
        let mut best: Option<(f64, Bounds, Placement)> = None;
        'search: for ring in 0..LABEL_RINGS {
            let distance = r + 3.0 + 1.1 * h * f64::from(ring);
            for (dx, dy, pos) in candidate_directions() {
                let (ax, ay) = (cx + dx * distance, cy + dy * distance);
                let b = text_box(ax, ay, w, h, pos);
                let end = nearest_point(&b, (cx, cy));
                let leader = ((cx, cy), (f64::from(end.0), f64::from(end.1)));
                // Overlaps in px²; a leader line crossing a label or marker costs its length inside times h.
                let mut score = placed.iter().chain(&markers).map(|o| o.overlap(&b)).sum::<f64>();
                score += 4.0 * b.outside(&bounds);
                score += h * leaders.iter().map(|&(p, q)| b.clip_length(p, q)).sum::<f64>();
                if ring > 0 {
                    score += h * others.iter().map(|o| o.clip_length(leader.0, leader.1)).sum::<f64>();
                }
                if best.as_ref().is_none_or(|(s, _, _)| score < *s) {
                    let at = (ax.round() as i32, ay.round() as i32);
                    best = Some((score, b, Placement { at, pos, leader: ring > 0, leader_end: end }));
                }
                if score == 0.0 {
                    break 'search;
                }
            }
        }
        if let Some((_, b, placement)) = best {
            if placement.leader {
                leaders.push(((cx, cy), (f64::from(placement.leader_end.0), f64::from(placement.leader_end.1))));
            }
            placed.push(b);
            out.push(placement);
        }
    }
    out
}

/// Candidate directions (unit-ish offsets) and text anchors, in order of preference.
fn candidate_directions() -> [(f64, f64, Pos); 8] {
    let d = std::f64::consts::FRAC_1_SQRT_2;
    [
        (1.0, 0.0, Pos::new(HPos::Left, VPos::Center)),
        (-1.0, 0.0, Pos::new(HPos::Right, VPos::Center)),
        (0.0, -1.0, Pos::new(HPos::Center, VPos::Bottom)),
        (0.0, 1.0, Pos::new(HPos::Center, VPos::Top)),
        (d, -d, Pos::new(HPos::Left, VPos::Bottom)),
        (d, d, Pos::new(HPos::Left, VPos::Top)),
        (-d, -d, Pos::new(HPos::Right, VPos::Bottom)),
        (-d, d, Pos::new(HPos::Right, VPos::Top)),
    ]
}

/// The box of a `w`×`h` text anchored at `(ax, ay)` with `pos`.
fn text_box(ax: f64, ay: f64, w: f64, h: f64, pos: Pos) -> Bounds {
    let x0 = match pos.h_pos {
        HPos::Left => ax,
        HPos::Right => ax - w,
        HPos::Center => ax - w / 2.0,
    };
    let y0 = match pos.v_pos {
        VPos::Top => ay,
        VPos::Bottom => ay - h,
        VPos::Center => ay - h / 2.0,
    };
    Bounds { x0, y0, x1: x0 + w, y1: y0 + h }
}

/// The point of `b` nearest to `p`, in pixels.
fn nearest_point(b: &Bounds, (px, py): (f64, f64)) -> (i32, i32) {
    (px.clamp(b.x0, b.x1).round() as i32, py.clamp(b.y0, b.y1).round() as i32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::baselines::{embedded_baselines, Plot};

    /// `Result` → value, or a test failure naming what failed.
    fn ok<T>(r: Result<T>) -> T {
        r.unwrap_or_else(|e| panic!("{e}"))
    }

    /// A point of series `series`, drawn as TopFormer's unless the series is named `t` (then as CNNs').
    fn point(label: &str, x: f64, y: f64, series: &str, approximate: bool) -> ScatterPoint {
        let family = if series == "t" { Family::Cnn } else { Family::Topformer };
        ScatterPoint { label: label.into(), x, y, series: series.into(), style: family_style(family), approximate }
    }

    /// The figures the report draws, with the embedded baselines and illustrative TopFormer numbers.
    fn ade20k_points() -> Vec<ScatterPoint> {
        let mut points = vec![
            point("TopFormer-T (toparch)", 0.58, 34.6, "TopFormer (toparch FLOPs)", false),
            point("TopFormer-S (toparch)", 1.16, 37.0, "TopFormer (toparch FLOPs)", false),
            point("TopFormer-B (toparch)", 1.77, 39.2, "TopFormer (toparch FLOPs)", false),
        ];
        points.extend(ok(embedded_baselines()).scatter_points(Plot::Ade20kMiouVsGflops));
        points
    }

    fn stage_bars() -> Vec<StackedBar> {
        let bar = |label: &str, v: [f64; 4]| StackedBar {
            label: label.into(),
            segments: ["token_pyramid", "semantics_extractor", "injection", "head"]
                .iter()
                .zip(v)
                .map(|(n, v)| (n.to_string(), v))
                .collect(),
        };
        vec![
            bar("TopFormer-T", [0.21, 0.09, 0.16, 0.12]),
            bar("TopFormer-S", [0.39, 0.24, 0.33, 0.2]),
            bar("TopFormer-B", [0.52, 0.45, 0.5, 0.3]),
        ]
    }

    fn resolution_lines() -> Vec<LineSeries> {
        let sizes = [256.0, 512.0, 768.0, 1024.0, 1536.0, 2048.0];
        [("TopFormer-T", 0.58), ("TopFormer-S", 1.16), ("TopFormer-B", 1.77)]
            .iter()
            .zip([LineDash::Solid, LineDash::Dashed, LineDash::Dotted])
            .map(|((name, at512), dash)| LineSeries {
                name: name.to_string(),
                style: family_style(Family::Topformer),
                dash,
                points: sizes.iter().map(|s| (*s, at512 * (s / 512.0) * (s / 512.0))).collect(),
            })
            .collect()
    }

    fn escape(text: &str) -> String {
        text.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;")
    }

    /// Number of `<text>` elements whose content (trimmed) is exactly `text`.
    fn text_count(svg: &str, text: &str) -> usize {
        let wanted = escape(text);
        svg.split("<text ")
            .skip(1)
            .filter_map(|t| Some(t.split_once('>')?.1.split_once("</text>")?.0.trim()))
            .filter(|t| *t == wanted)
            .count()
    }

    /// The lines of `svg` that open an element `tag` and contain every one of `attributes`.
    fn elements(svg: &str, tag: &str, attributes: &[&str]) -> usize {
        let open = format!("<{tag} ");
        svg.lines().filter(|l| l.starts_with(&open) && attributes.iter().all(|a| l.contains(a))).count()
    }

    /// Number of marker elements: every marker is one `<circle>` or one `<polygon>`.
    fn marker_count(svg: &str) -> usize {
        elements(svg, "circle", &[]) + elements(svg, "polygon", &[])
    }

    /// Parses and renders `svg`, writes it as `target/report-plots/<name>.png`, returns the non-white pixel count.
    fn render_png(svg: &str, name: &str) -> usize {
        let tree = resvg::usvg::Tree::from_str(svg, &resvg::usvg::Options::default())
            .unwrap_or_else(|e| panic!("{name}: not a valid SVG: {e}"));
        let size = tree.size().to_int_size();
        assert_eq!((size.width(), size.height()), (WIDTH, HEIGHT), "{name}");
        let mut pixmap = resvg::tiny_skia::Pixmap::new(size.width(), size.height()).expect("non-zero canvas size");
        resvg::render(&tree, resvg::tiny_skia::Transform::default(), &mut pixmap.as_mut());
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target").join("report-plots");
        std::fs::create_dir_all(&dir).expect("create target/report-plots");
        std::fs::write(dir.join(format!("{name}.svg")), svg).expect("write svg");
        pixmap.save_png(dir.join(format!("{name}.png"))).expect("write png");
        pixmap.pixels().iter().filter(|p| p.alpha() > 0 && (p.red() < 240 || p.green() < 240 || p.blue() < 240)).count()
    }

    /// The checks every figure passes: valid SVG, title and axis titles present, not blank once rendered.
    fn check_figure(svg: &str, name: &str, texts: &[&str]) {
        for text in texts {
            assert!(text_count(svg, text) >= 1, "{name}: no <text> '{text}'");
        }
        let inked = render_png(svg, name);
        assert!(inked > 5_000, "{name}: only {inked} non-white pixels");
    }

    #[test]
    fn scatter_has_labels_markers_and_legend() {
        let points = ade20k_points();
        let (title, xl, yl) = ("ADE20K val: mIoU vs compute", "GFLOPs (log scale)", "mIoU (%)");
        let svg = ok(scatter_svg(title, xl, yl, true, &points));
        check_figure(&svg, "ade20k-miou-vs-gflops", &[title, xl, yl]);
        for p in &points {
            assert!(text_count(&svg, &p.label) >= 1, "label '{}' missing", p.label);
        }
        let series = first_appearance(points.iter().map(|p| p.series.as_str()));
        assert_eq!(series.len(), 5);
        for s in &series {
            assert_eq!(text_count(&svg, s), 1, "legend entry '{s}'");
        }
        // One marker per point, plus one per legend row (the series and the approximate-value note).
        let approx = points.iter().any(|p| p.approximate);
        assert_eq!(marker_count(&svg), points.len() + series.len() + usize::from(approx));
        // Log x axis: decade ticks are labelled.
        for tick in ["1", "10"] {
            assert_eq!(text_count(&svg, tick), 1, "x tick {tick}");
        }
    }

    /// Across every figure of the report, a family keeps its marker and colour: TopFormer's colour only ever
    /// fills or outlines circles, or the downward triangles of series derived from it (toparch's predictions),
    /// and every other polygon marker is another family's (or a hollow one's white inside).
    /// Whether an SVG `<polygon>` line is a triangle whose first vertex is its lowest (pointing down).
    fn is_downward_triangle(line: &str) -> bool {
        let points = line.split("points=\"").nth(1).and_then(|rest| rest.split('"').next()).unwrap_or_default();
        let ys: Vec<i32> = points.split_whitespace().filter_map(|p| p.split(',').nth(1)?.parse().ok()).collect();
        ys.len() == 3 && ys[0] > ys[1] && ys[0] > ys[2]
    }

    #[test]
    fn every_report_figure_draws_a_family_in_one_style() {
        let hex = |c: RGBColor| format!("#{:02X}{:02X}{:02X}", c.0, c.1, c.2);
        let topformer = hex(family_style(Family::Topformer).color);
        let others: Vec<String> =
            [Family::Seaformer, Family::Cnn, Family::Vit].map(|f| hex(family_style(f).color)).to_vec();
        let figures = ok(crate::report::document::build_report());
        let mut with_topformer = 0;
        for figure in figures.iter().filter(|f| f.name.ends_with(".svg") && !f.name.starts_with("stage-")) {
            for line in figure.contents.lines() {
                if line.starts_with("<circle ") {
                    let grey = [APPROX_GREY, DOT_GREY].map(hex);
                    assert!(
                        line.contains(&topformer) || grey.iter().any(|g| line.contains(g)),
                        "{}: {line}",
                        figure.name
                    );
                } else if line.starts_with("<polygon ") && line.contains(&topformer) {
                    assert!(is_downward_triangle(line), "{}: {line}", figure.name);
                } else if line.starts_with("<polygon ") {
                    let fill_ok = others.iter().any(|c| line.contains(c)) || line.contains("#FFFFFF");
                    assert!(fill_ok, "{}: {line}", figure.name);
                }
            }
            let topformer_circle = |l: &str| l.starts_with("<circle ") && l.contains(&topformer);
            with_topformer += usize::from(figure.contents.lines().any(topformer_circle));
        }
        assert_eq!(with_topformer, 6, "TopFormer appears as circles in every scatter, line and design-space figure");
    }

    #[test]
    fn scatter_draws_approximate_points_hollow() {
        let points =
            [point("a", 1.0, 1.0, "s", false), point("b", 2.0, 2.0, "s", true), point("c", 3.0, 1.5, "t", true)];
        let svg = ok(scatter_svg("t", "x", "y", false, &points));
        // Series "s" (TopFormer) uses circles: hollow circles are unfilled; series "t" (CNNs) uses squares: hollow
        // ones are a white polygon with an outline. The legend note is one more hollow circle.
        assert_eq!(elements(&svg, "circle", &[]), 2 + 1 + 1);
        assert_eq!(elements(&svg, "circle", &[r#"fill="none""#]), 1 + 1, "hollow point and legend note");
        assert_eq!(elements(&svg, "polygon", &[]), 1 + 1);
        assert_eq!(elements(&svg, "polygon", &[r##"fill="#FFFFFF""##]), 1, "hollow square is white inside");
        let outline =
            format!(r##"stroke="#{:02X}{:02X}{:02X}" stroke-width="2""##, PALETTE[2].0, PALETTE[2].1, PALETTE[2].2);
        assert_eq!(elements(&svg, "polyline", &[&outline]), 1, "hollow square outline");
        let without = ok(scatter_svg("t", "x", "y", false, &points[..1]));
        assert_eq!(text_count(&without, "hollow: approximate value"), 0);
    }

    #[test]
    fn baseline_figures_render() {
        let baselines = ok(embedded_baselines());
        for plot in Plot::ALL {
            let points = baselines.scatter_points(plot);
            let svg = ok(scatter_svg(plot.title(), plot.x_label(), plot.y_label(), plot.log_x(), &points));
            let name = plot.file_name().trim_end_matches(".svg");
            check_figure(&svg, &format!("baselines-{name}"), &[plot.title(), plot.x_label(), plot.y_label()]);
            for p in &points {
                assert!(text_count(&svg, &p.label) >= 1, "{name}: label '{}' missing", p.label);
            }
        }
    }

    #[test]
    fn stacked_bars_have_segments_totals_and_legend() {
        let bars = stage_bars();
        let (title, yl) = ("FLOPs per stage at 512x512", "GFLOPs (10^9 multiply-adds)");
        let svg = ok(stacked_bars_svg(title, yl, &bars));
        check_figure(&svg, "stage-breakdown", &[title, yl, "TopFormer-T", "TopFormer-S", "TopFormer-B"]);
        for name in ["token_pyramid", "semantics_extractor", "injection", "head"] {
            assert_eq!(text_count(&svg, name), 1, "legend entry '{name}'");
        }
        // Totals above the bars.
        for total in ["0.58", "1.16", "1.77"] {
            assert!(text_count(&svg, total) >= 1, "total {total}");
        }
        // <rect>: the background, one per segment, the legend's fill and frame, one swatch per segment name.
        let segments: usize = bars.iter().map(|b| b.segments.len()).sum();
        assert_eq!(elements(&svg, "rect", &[]), 1 + segments + 2 + 4);
        // A zero segment draws nothing.
        let mut zero = bars.clone();
        zero[0].segments[2].1 = 0.0;
        let svg = ok(stacked_bars_svg(title, yl, &zero));
        assert_eq!(elements(&svg, "rect", &[]), 1 + segments - 1 + 2 + 4);
    }

    #[test]
    fn line_chart_has_markers_legend_and_resolution_ticks() {
        let series = resolution_lines();
        let (title, xl, yl) = ("GFLOPs vs input resolution", "input side (pixels, log scale)", "GFLOPs (log scale)");
        let svg = ok(line_svg(title, xl, yl, true, true, &series));
        check_figure(&svg, "flops-vs-resolution", &[title, xl, yl, "TopFormer-T", "TopFormer-S", "TopFormer-B"]);
        let points: usize = series.iter().map(|s| s.points.len()).sum();
        assert_eq!(marker_count(&svg), points + series.len());
        // All three are TopFormer: one colour and one marker shape (circles), told apart by their stroke.
        let color = family_style(Family::Topformer).color;
        let stroke = format!(r##"stroke="#{:02X}{:02X}{:02X}" stroke-width="2""##, color.0, color.1, color.2);
        for other in [Family::Seaformer, Family::Cnn, Family::Vit].map(|f| family_style(f).color) {
            let stroke = format!(r##"stroke="#{:02X}{:02X}{:02X}""##, other.0, other.1, other.2);
            assert_eq!(elements(&svg, "polyline", &[&stroke]), 0);
        }
        assert_eq!(elements(&svg, "circle", &[]), points + series.len());
        // The solid line and its legend swatch are one polyline each; dashes and dots are many short ones.
        let solid = elements(&svg, "polyline", &[&stroke]);
        assert!(solid > 2 * 3, "dashed lines are drawn as their dashes: {solid} polylines");
        // Few distinct x values: they are the ticks.
        for tick in ["256", "512", "768", "1024", "1536", "2048"] {
            assert_eq!(text_count(&svg, tick), 1, "x tick {tick}");
        }
    }

    #[test]
    fn output_is_deterministic() {
        let points = ade20k_points();
        let a = ok(scatter_svg("t", "x", "y", true, &points));
        assert_eq!(a, ok(scatter_svg("t", "x", "y", true, &points)));
        let bars = stage_bars();
        assert_eq!(ok(stacked_bars_svg("t", "y", &bars)), ok(stacked_bars_svg("t", "y", &bars)));
        let lines = resolution_lines();
        assert_eq!(ok(line_svg("t", "x", "y", true, false, &lines)), ok(line_svg("t", "x", "y", true, false, &lines)));
    }

    #[test]
    fn pareto_front_is_joined_labelled_and_strided() {
        let variants: Vec<(f64, f64)> = (0..12_000).map(|i| (f64::from(i % 100), f64::from(i / 100))).collect();
        let front: Vec<ScatterPoint> = (0..4)
            .map(|i| {
                point(&format!("depth={i}"), f64::from(i) * 25.0, 100.0 - f64::from(i) * 20.0, "Pareto front", false)
            })
            .collect();
        let mut references = vec![point("TopFormer-B", 50.0, 90.0, "as published", false)];
        references[0].style = family_style(Family::Cnn);
        let svg = ok(pareto_svg("front", "x", "y", &variants, &front, &references));
        check_figure(&svg, "pareto", &["front", "Pareto front", "as published", "variants (1 in 3 of 12000 drawn)"]);
        for label in front.iter().chain(&references).map(|p| p.label.as_str()) {
            assert_eq!(text_count(&svg, label), 1, "{label}");
        }
        // 4,000 dots, the front's 4 markers and 2 in the legend (the reference is a square).
        assert_eq!(elements(&svg, "circle", &[]), 4000 + 4 + 2);
        assert_eq!(svg, ok(pareto_svg("front", "x", "y", &variants, &front, &references)));
        assert!(err_text(pareto_svg("front", "x", "y", &variants, &[], &references)).contains("no Pareto front"));
    }

    fn err_text<T>(r: Result<T>) -> String {
        match r {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn bad_input_is_an_error_not_a_panic() {
        assert!(err_text(scatter_svg("t", "x", "y", false, &[])).contains("no points"));
        let zero = [point("a", 0.0, 1.0, "s", false)];
        assert!(err_text(scatter_svg("t", "x", "y", true, &zero)).contains("log axis"));
        let nan = [point("a", 1.0, f64::NAN, "s", false)];
        assert!(err_text(scatter_svg("t", "x", "y", false, &nan)).contains("finite"));
        let mut bars = stage_bars();
        bars[1].segments.swap(0, 1);
        assert!(err_text(stacked_bars_svg("t", "y", &bars)).contains("expected"));
        let negative = vec![StackedBar { label: "a".into(), segments: vec![("s".into(), -1.0)] }];
        assert!(err_text(stacked_bars_svg("t", "y", &negative)).contains(">= 0"));
        assert!(err_text(stacked_bars_svg("t", "y", &[])).contains("no bars"));
        let empty =
            [LineSeries { name: "a".into(), style: family_style(Family::Cnn), dash: LineDash::Solid, points: vec![] }];
        assert!(err_text(line_svg("t", "x", "y", false, false, &empty)).contains("no points"));
        let neg = [LineSeries {
            name: "a".into(),
            style: family_style(Family::Cnn),
            dash: LineDash::Solid,
            points: vec![(1.0, -2.0)],
        }];
        assert!(err_text(line_svg("t", "x", "y", false, true, &neg)).contains("log axis"));
    }

    #[test]
    fn crowded_labels_do_not_overlap() {
        // Five points stacked at one x, 12 px apart, as TopFormer-T / SeaFormer-T variants are on the ADE20K plot.
        let centres: Vec<(i32, i32)> = (0..5).map(|i| (300, 200 + 12 * i)).collect();
        let labels = ["TopFormer-T 2x8", "TopFormer-T 4x8", "SeaFormer-T 2x8", "SeaFormer-T 4x8", "TopFormer-T*"];
        let bounds = Bounds { x0: 0.0, y0: 0.0, x1: 800.0, y1: 500.0 };
        let placements = place_labels(&centres, &labels, bounds, &[]);
        assert_eq!(placements.len(), 5);
        let h = font_px(LABEL_SIZE) * 1.15;
        let boxes: Vec<Bounds> = placements
            .iter()
            .zip(labels)
            .map(|(p, l)| text_box(f64::from(p.at.0), f64::from(p.at.1), text_width(l, LABEL_SIZE), h, p.pos))
            .collect();
        for (i, a) in boxes.iter().enumerate() {
            assert!(a.outside(&bounds) < 1e-9);
            for b in &boxes[i + 1..] {
                assert!(a.overlap(b) < 1.0, "labels overlap: {a:?} {b:?}");
            }
        }
    }

    #[test]
    fn ticks_and_numbers() {
        assert_eq!(format_number(0.1 + 0.2), "0.3");
        assert_eq!(format_number(2048.0), "2048");
        assert_eq!(format_number(0.5), "0.5");
        assert_eq!(format_number(-0.0), "0");
        assert_eq!(format_number(1.25e-3), "0.00125");
        let axis = ok(Axis::numeric("f", "x", &[0.5, 52.2], Scale::Log, TickSource::Nice));
        let labels: Vec<String> = axis.ticks.iter().map(|&t| axis.tick_label(t)).collect();
        assert_eq!(labels, ["0.5", "1", "2", "5", "10", "20", "50"]);
        let axis = ok(Axis::numeric("f", "y", &[19.7, 43.8], Scale::Linear, TickSource::Nice));
        let labels: Vec<String> = axis.ticks.iter().map(|&t| axis.tick_label(t)).collect();
        assert_eq!(labels, ["20", "25", "30", "35", "40", "45"]);
        assert!(axis.range.start < 19.7 && axis.range.end > 43.8);
    }
}
