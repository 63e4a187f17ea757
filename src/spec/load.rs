//! Loading specs from the embedded set or from files, resolving `extends`, and naming errors by file and line.

use super::locate::Locator;
use super::overrides::Override;
use super::Spec;
use crate::error::{Error, Result};
use serde::Deserialize;
use std::path::{Path, PathBuf};

/// A spec compiled into the binary from `specs/`.
pub struct EmbeddedSpec {
    /// The spec's name (its file stem).
    pub name: &'static str,
    /// The TOML text.
    pub text: &'static str,
}

macro_rules! embed {
    ($($name:literal),* $(,)?) => {
        &[$(EmbeddedSpec { name: $name, text: include_str!(concat!("../../specs/", $name, ".toml")) }),*]
    };
}

/// Every spec shipped in `specs/`, embedded so the binary works from any directory.
pub fn embedded_specs() -> &'static [EmbeddedSpec] {
    embed!(
        "topformer-tiny",
        "topformer-small",
        "topformer-base",
        "topformer-tiny-cityscapes",
        "topformer-base-cityscapes",
        "topformer-tiny-pascal-context",
        "topformer-small-pascal-context",
        "topformer-base-pascal-context",
        "topformer-tiny-pascal-context-59",
        "topformer-small-pascal-context-59",
        "topformer-base-pascal-context-59",
        "topformer-tiny-coco-stuff",
        "topformer-small-coco-stuff",
        "topformer-base-coco-stuff",
        "topformer-tiny-imagenet",
        "topformer-small-imagenet",
        "topformer-base-imagenet",
    )
}

/// A resolved spec and where it came from.
#[derive(Clone, Debug)]
pub struct LoadedSpec {
    /// The validated spec.
    pub spec: Spec,
    /// The file (or embedded spec) it was read from.
    pub origin: String,
}

/// One document of an `extends` chain.
struct Source {
    origin: String,
    /// What makes two sources the same document: the canonical path of a file, or the embedded name.
    identity: PathBuf,
    table: toml::Table,
    locator: Locator,
    dir: Option<PathBuf>,
}

impl Source {
    fn parse(origin: String, identity: PathBuf, text: &str, dir: Option<PathBuf>) -> Result<Self> {
        let table: toml::Table = toml::from_str(text).map_err(|e| {
            let at = e.span().map(|s| format!(":{}", text[..s.start].matches('\n').count() + 1)).unwrap_or_default();
            Error::input(format!("{origin}{at}: invalid TOML: {}", e.message()))
        })?;
        Ok(Source { origin, identity, table, locator: Locator::new(text), dir })
    }

    fn extends(&self) -> Result<Option<String>> {
        match self.table.get("extends") {
            None => Ok(None),
            Some(toml::Value::String(parent)) => Ok(Some(parent.clone())),
            Some(_) => Err(self.error("extends", "must be a spec name or file path (a string)")),
        }
    }

    fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        let at = self.locator.line(key).map(|l| format!(":{l}")).unwrap_or_default();
        Error::input(format!("{}{at}: {key}: {message}", self.origin))
    }
}

/// Loads an embedded spec by name; `tiny`, `small`, `base` are short for `topformer-tiny`… .
pub fn load_embedded(name: &str) -> Result<LoadedSpec> {
    SpecTemplate::embedded(name)?.instantiate(&[])
}

/// Loads a spec file (which may `extends` another file beside it or an embedded spec).
pub fn load_file(path: &Path) -> Result<LoadedSpec> {
    SpecTemplate::file(path)?.instantiate(&[])
}

fn find_embedded(name: &str) -> Option<&'static EmbeddedSpec> {
    let full = format!("topformer-{name}");
    embedded_specs().iter().find(|s| s.name == name || s.name == full)
}

fn embedded_source(name: &str) -> Result<Source> {
    let spec = find_embedded(name).ok_or_else(|| {
        let names: Vec<_> = embedded_specs().iter().map(|s| s.name).collect();
        Error::input(format!("unknown variant '{name}' (known: {}; or pass --spec FILE)", names.join(", ")))
    })?;
    let origin = format!("specs/{}.toml", spec.name);
    Source::parse(origin.clone(), PathBuf::from(origin), spec.text, None)
}

fn file_source(path: &Path) -> Result<Source> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let identity = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
    Source::parse(path.display().to_string(), identity, &text, path.parent().map(Path::to_path_buf))
}

/// The spec file `name` names beside `dir` (as written, or with `.toml` added), if there is one.
fn file_beside(dir: &Path, name: &str) -> Option<PathBuf> {
    let path = dir.join(name);
    let with_ext = path.with_extension("toml");
    [path, with_ext].into_iter().find(|p| p.is_file())
}

/// Loads the spec a reference names: a spec file beside `dir` if one exists, else an embedded spec.
pub fn load_reference(name: &str, dir: &Path) -> Result<LoadedSpec> {
    SpecTemplate::reference(name, dir)?.instantiate(&[])
}

/// A spec with its `extends` chain merged but not yet checked: what `--set` overrides are applied to. Build it
/// once and [`instantiate`](SpecTemplate::instantiate) it per set of overrides (a sweep does so per variant).
pub struct SpecTemplate {
    /// The chain, most derived first, kept to name the file and line of a problem.
    chain: Vec<Source>,
    merged: toml::Table,
}

impl SpecTemplate {
    /// An embedded spec by name (`tiny` is short for `topformer-tiny`).
    pub fn embedded(name: &str) -> Result<Self> {
        Self::resolve(embedded_source(name)?)
    }

    /// A spec file.
    pub fn file(path: &Path) -> Result<Self> {
        Self::resolve(file_source(path)?)
    }

    /// A spec file beside `dir` if `name` names one (with or without `.toml`), else an embedded spec.
    pub fn reference(name: &str, dir: &Path) -> Result<Self> {
        match file_beside(dir, name) {
            Some(file) => Self::file(&file),
            None => Self::embedded(name),
        }
    }

    /// Follows `extends` from `child` to the root and merges root-first.
    fn resolve(child: Source) -> Result<Self> {
        let mut chain = vec![child];
        while let Some(parent) = chain.last().map(Source::extends).transpose()?.flatten() {
            let current = chain.last().expect("chain is never empty");
            let source = match current.dir.as_deref().and_then(|d| file_beside(d, &parent)) {
                Some(file) => file_source(&file)?,
                None if find_embedded(&parent).is_some() => embedded_source(&parent)?,
                None => return Err(current.error("extends", format!("no spec named '{parent}'"))),
            };
            if chain.iter().any(|s| s.identity == source.identity) {
                let cycle: Vec<_> = chain.iter().map(|s| s.origin.as_str()).chain([source.origin.as_str()]).collect();
                return Err(chain[0].error("extends", format!("cycle: {}", cycle.join(" → "))));
            }
            chain.push(source);
        }
        let mut merged = toml::Table::new();
        for source in chain.iter().rev() {
            merge_spec(&mut merged, &source.table);
        }
        merged.remove("extends");
        // A spec's name is its own: one that does not write it is named after its file, not its parent.
        if !chain[0].table.contains_key("name") {
            let stem = Path::new(&chain[0].origin).file_stem().map(|s| s.to_string_lossy().into_owned());
            merged.insert("name".into(), toml::Value::String(stem.unwrap_or_default()));
        }
        Ok(SpecTemplate { chain, merged })
    }

    /// Where the spec comes from (its file, or `specs/NAME.toml` for an embedded one).
    pub fn origin(&self) -> &str {
        &self.chain[0].origin
    }

    /// Applies `overrides` in order, then deserialises and validates exactly as for a file. A problem at a key
    /// an override wrote names that override; any other names the file and line that wrote the key.
    pub fn instantiate(&self, overrides: &[Override]) -> Result<LoadedSpec> {
        let (mut spec, unchanged) = self.deserialize(overrides)?;
        spec.validate().map_err(|(key, message)| self.blame(overrides, &key, message))?;
        // Published figures are of the network as written; an override that changes it makes them another's.
        // The default resolution they imply stays.
        if !unchanged {
            let (h, w) = spec.default_resolution();
            spec.res.get_or_insert_with(|| format!("{h}x{w}"));
            spec.published.clear();
        }
        Ok(LoadedSpec { spec, origin: self.origin().to_string() })
    }

    /// Checks that `overrides` name known keys and give them values of the right type, without the
    /// cross-field rules (a value may be valid only together with another override).
    pub fn check_schema(&self, overrides: &[Override]) -> Result<()> {
        self.deserialize(overrides).map(drop)
    }

    /// The spec with `overrides` applied, deserialised, and whether the overrides left it as written.
    fn deserialize(&self, overrides: &[Override]) -> Result<(Spec, bool)> {
        let mut merged = self.merged.clone();
        for o in overrides {
            o.key.assign(&mut merged, o.value.clone()).map_err(|e| self.override_error(o, o.key.as_str(), e))?;
        }
        let unchanged = merged == self.merged;
        let spec = serde_path_to_error::deserialize(toml::Value::Table(merged)).map_err(|e| {
            let key = e.path().to_string();
            self.blame(overrides, if key == "." { "name" } else { &key }, first_line(&e.inner().to_string()))
        })?;
        Ok((spec, unchanged))
    }

    /// An error at `key`: from the override that wrote it, else from the most derived document that writes it
    /// (naming its line), noting any overrides.
    fn blame(&self, overrides: &[Override], key: &str, message: String) -> Error {
        if let Some(o) = overrides.iter().rev().find(|o| o.key.covers(key)) {
            return self.override_error(o, key, message);
        }
        let source = self.chain.iter().find(|s| s.locator.contains(key)).unwrap_or(&self.chain[0]);
        let error = source.error(key, message);
        if overrides.is_empty() {
            return error;
        }
        let all: Vec<_> = overrides.iter().map(Override::describe).collect();
        Error::input(format!("{error} (with --set {})", all.join(", --set ")))
    }

    fn override_error(&self, o: &Override, key: &str, message: impl std::fmt::Display) -> Error {
        Error::input(format!("{}: {key}: {message} (from --set {})", self.origin(), o.describe()))
    }
}

/// Deep-merges `child` over `parent`. The task sections are alternatives: a child that writes `[classifier]`
/// drops the parent's `[injection]` and `[head]`, and vice versa. A spec's description, dataset and published
/// figures describe that network only, so they are never inherited.
fn merge_spec(parent: &mut toml::Table, child: &toml::Table) {
    parent.remove("description");
    parent.remove("dataset");
    parent.remove("published");
    if child.contains_key("classifier") {
        parent.remove("injection");
        parent.remove("head");
    }
    if child.contains_key("injection") || child.contains_key("head") {
        parent.remove("classifier");
    }
    merge_tables(parent, child);
}

fn merge_tables(parent: &mut toml::Table, child: &toml::Table) {
    for (key, value) in child {
        match (parent.get_mut(key), value) {
            (Some(toml::Value::Table(p)), toml::Value::Table(c)) => merge_tables(p, c),
            _ => {
                parent.insert(key.clone(), value.clone());
            }
        }
    }
}

/// toml appends the key path on a second line; the caller already names the key.
fn first_line(message: &str) -> String {
    message.lines().next().unwrap_or_default().to_string()
}

/// Largest input side: 64 K pixels, far beyond any segmentation input, small enough that no count overflows.
pub const MAX_SIDE: usize = 1 << 16;

/// Parses `--res`: `512` (square) or `HxW`, both positive and at most [`MAX_SIDE`].
pub fn parse_resolution(text: &str) -> Result<(usize, usize)> {
    let bad = || {
        Error::input(format!(
            "invalid resolution '{text}': expected a size from 1 to {MAX_SIDE} such as 512 or 1024x2048 (HxW)"
        ))
    };
    let side = |s: &str| s.trim().parse::<usize>().ok().filter(|&v| v > 0 && v <= MAX_SIDE).ok_or_else(bad);
    match text.split_once(['x', 'X', '×']) {
        Some((h, w)) => Ok((side(h)?, side(w)?)),
        None => {
            let s = side(text)?;
            Ok((s, s))
        }
    }
}

/// A TOML document other than a spec (a budgets file), kept so later errors can name its lines.
pub struct Document {
    source: Source,
}

impl Document {
    /// Reads `path` and deserialises it into `T`, naming the file, line and key on error.
    pub fn read<T: for<'de> Deserialize<'de>>(path: &Path) -> Result<(T, Document)> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Document::parse(path.display().to_string(), &text, path.parent().map(Path::to_path_buf))
    }

    /// Deserialises `text` (from `origin`, a file name or a description) into `T`, naming `origin`, line and
    /// key on error; `dir` is where the document names other files.
    pub fn parse<T: for<'de> Deserialize<'de>>(
        origin: String,
        text: &str,
        dir: Option<std::path::PathBuf>,
    ) -> Result<(T, Document)> {
        let identity = std::path::PathBuf::from(&origin);
        let source = Source::parse(origin, identity, text, dir)?;
        let value = serde_path_to_error::deserialize(toml::Value::Table(source.table.clone())).map_err(|e| {
            let key = e.path().to_string();
            source.error(&key, first_line(&e.inner().to_string()))
        })?;
        Ok((value, Document { source }))
    }

    /// An error at `key` (e.g. `budget[1].res`), naming the file and the key's line.
    pub fn error(&self, key: &str, message: impl std::fmt::Display) -> Error {
        self.source.error(key, message)
    }

    /// The directory the document is in, against which it names other files.
    pub fn dir(&self) -> &Path {
        self.source.dir.as_deref().unwrap_or(Path::new("."))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolutions() {
        assert_eq!(parse_resolution("512").unwrap(), (512, 512));
        assert_eq!(parse_resolution("1024x2048").unwrap(), (1024, 2048));
        for bad in ["0", "12x", "-5", "x3", "3x0", "abc", "", "65537", "99999999999999999999"] {
            assert!(parse_resolution(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn every_embedded_spec_loads() {
        for s in embedded_specs() {
            let loaded = load_embedded(s.name).unwrap_or_else(|e| panic!("{}: {e}", s.name));
            assert_eq!(loaded.spec.name, s.name);
        }
    }
}
