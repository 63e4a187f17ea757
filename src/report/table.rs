//! Terminal tables (prettytable) and markdown tables from the same rows.

use super::rows::{breakdown, conventions_line, latency_line, memory_line, published, Depth, Rows};
use crate::cost::{Convention, Profile};
use prettytable::{format, Cell, Row, Table};

/// Whether a cell holds a number (possibly signed, as a delta), to be aligned right.
fn looks_numeric(text: &str) -> bool {
    text.trim_start_matches(['+', '-']).starts_with(|c: char| c.is_ascii_digit())
}

/// A plain-text table with a title row and right-aligned numbers.
pub(crate) fn terminal_table(rows: &Rows) -> String {
    let mut table = Table::new();
    table.set_format(*format::consts::FORMAT_NO_LINESEP_WITH_TITLE);
    table.set_titles(Row::new(rows.header.iter().map(|h| Cell::new(h).style_spec("b")).collect()));
    for r in rows.body.iter().chain((!rows.total.is_empty()).then_some(&rows.total)) {
        let cells =
            r.iter().map(|t| if looks_numeric(t) { Cell::new(t).style_spec("r") } else { Cell::new(t) }).collect();
        table.add_row(Row::new(cells));
    }
    table.to_string()
}

fn title(profile: &Profile, convention: Convention) -> String {
    format!(
        "{} at {} (batch {}), convention '{}': {} params, {} FLOPs (MACs)",
        profile.spec,
        super::format::shape(&profile.input),
        profile.batch,
        convention.name(),
        super::format::si(profile.params),
        super::format::si(profile.flops(convention))
    )
}

/// A GitHub-flavoured markdown table.
pub fn markdown_table(rows: &Rows) -> String {
    let line = |cells: &[String]| format!("| {} |\n", cells.join(" | "));
    let mut out = line(&rows.header);
    // Numbers align right, text left, judged by the first row.
    let numeric = |i: usize| rows.body.first().and_then(|r| r.get(i)).is_some_and(|t| looks_numeric(t));
    let align: Vec<String> =
        (0..rows.header.len()).map(|i| if numeric(i) { "--:".into() } else { "---".into() }).collect();
    out.push_str(&line(&align));
    for r in &rows.body {
        out.push_str(&line(r));
    }
    if !rows.total.is_empty() {
        let bold: Vec<String> =
            rows.total.iter().map(|t| if t.is_empty() { String::new() } else { format!("**{t}**") }).collect();
        out.push_str(&line(&bold));
    }
    out
}

/// How a profile is laid out as text.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// Plain-text tables for a terminal.
    Terminal,
    /// GitHub-flavoured markdown.
    Markdown,
}

/// The profile as text: a title, the breakdown, published figures, the totals under every convention.
pub fn render_profile(profile: &Profile, convention: Convention, depth: Depth, style: Style) -> String {
    let (heading, table): (&str, fn(&Rows) -> String) = match style {
        Style::Terminal => ("", terminal_table),
        Style::Markdown => ("### ", markdown_table),
    };
    let mut out = format!("{heading}{}\n", title(profile, convention));
    if style == Style::Markdown {
        out.push('\n');
    }
    out.push_str(&table(&breakdown(profile, convention, depth)));
    if !profile.published.is_empty() {
        out.push_str("\nPublished figures\n");
        if style == Style::Markdown {
            out.push('\n');
        }
        out.push_str(&table(&published(profile)));
    }
    out.push('\n');
    out.push_str(&conventions_line(profile));
    out.push('\n');
    if style == Style::Markdown {
        out.push('\n');
    }
    out.push_str(&memory_line(profile));
    out.push('\n');
    if let Some(line) = latency_line(profile) {
        if style == Style::Markdown {
            out.push('\n');
        }
        out.push_str(&line);
        out.push('\n');
    }
    out
}
