//! `--set KEY=VALUE` overrides: a dotted key path into a spec and a TOML value, applied after `extends`.

use crate::error::Result;
use std::fmt;
use std::str::FromStr;

/// One step of a key path: a table key or an array index.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Step {
    Key(String),
    Index(usize),
}

/// A dotted key path such as `semantics_extractor.depth` or `token_pyramid.blocks[3]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyPath {
    text: String,
    steps: Vec<Step>,
}

impl KeyPath {
    /// Parses `a.b[2].c`: non-empty keys of letters, digits, `_` and `-`, each optionally indexed.
    pub fn parse(text: &str) -> Result<Self, String> {
        let bad = |why: &str| format!("'{text}' is not a key path such as semantics_extractor.depth: {why}");
        if text.is_empty() {
            return Err(bad("it is empty"));
        }
        let mut steps = Vec::new();
        for segment in text.split('.') {
            let (name, mut rest) = segment.split_at(segment.find('[').unwrap_or(segment.len()));
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-') {
                return Err(bad("keys are letters, digits, '_' and '-', separated by '.'"));
            }
            steps.push(Step::Key(name.to_string()));
            while !rest.is_empty() {
                let close = rest.find(']').filter(|_| rest.starts_with('[')).ok_or_else(|| bad("unclosed '['"))?;
                let index = rest[1..close].parse().map_err(|_| bad("an index is a number in [ ]"))?;
                steps.push(Step::Index(index));
                rest = &rest[close + 1..];
            }
        }
        Ok(KeyPath { text: text.to_string(), steps })
    }

    /// The path as written.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The last key of the path (`depth` for `semantics_extractor.depth`).
    pub fn leaf(&self) -> &str {
        self.steps
            .iter()
            .rev()
            .find_map(|s| match s {
                Step::Key(k) => Some(k.as_str()),
                Step::Index(_) => None,
            })
            .unwrap_or(&self.text)
    }

    /// Whether a problem reported at `key` (a path as serde and the validator name it) lies at or under this
    /// path, or at a table above it that this path created.
    pub fn covers(&self, key: &str) -> bool {
        let nested = |outer: &str, inner: &str| {
            inner.strip_prefix(outer).is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
        };
        nested(&self.text, key) || nested(key, &self.text)
    }

    /// Writes `value` at this path in `root`, creating missing tables (unknown keys are then refused by the
    /// schema, exactly as in a file). Arrays are indexed only within their length.
    pub fn assign(&self, root: &mut toml::Table, value: toml::Value) -> Result<(), String> {
        let mut whole = toml::Value::Table(std::mem::take(root));
        let assigned = assign_in(&mut whole, &self.steps, value);
        if let toml::Value::Table(table) = whole {
            *root = table;
        }
        assigned
    }
}

/// Walks `steps` down from `slot` and writes `value` at their end.
fn assign_in(slot: &mut toml::Value, steps: &[Step], value: toml::Value) -> Result<(), String> {
    let Some((step, rest)) = steps.split_first() else {
        *slot = value;
        return Ok(());
    };
    let child = match (slot, step) {
        (toml::Value::Table(t), Step::Key(k)) => {
            t.entry(k.clone()).or_insert_with(|| empty_for(matches!(rest.first(), Some(Step::Index(_)))))
        }
        (toml::Value::Array(items), Step::Index(i)) => {
            let len = items.len();
            items.get_mut(*i).ok_or_else(|| format!("index {i} is out of range ({len} elements)"))?
        }
        (other, step) => return Err(format!("{} where {} is expected", other.type_str(), expected(step))),
    };
    assign_in(child, rest, value)
}

fn empty_for(array: bool) -> toml::Value {
    if array {
        toml::Value::Array(Vec::new())
    } else {
        toml::Value::Table(toml::Table::new())
    }
}

fn expected(step: &Step) -> &'static str {
    match step {
        Step::Key(_) => "a table",
        Step::Index(_) => "an array",
    }
}

impl fmt::Display for KeyPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Parses a value as TOML (`3`, `0.5`, `"relu"`, `[[3,1,16,1]]`, `true`); any other bare word of letters,
/// digits, `_`, `-` and `.` (such as `relu6` or `256x512`) is taken as a string, so shells need no nested
/// quotes.
pub fn parse_value(text: &str) -> Result<toml::Value, String> {
    let text = text.trim();
    if let Ok(mut table) = format!("value = {text}").parse::<toml::Table>() {
        if table.len() == 1 {
            if let Some(value) = table.remove("value") {
                return Ok(value);
            }
        }
    }
    let bare_word = !text.is_empty() && text.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if bare_word {
        Ok(toml::Value::String(text.to_string()))
    } else {
        Err(format!("'{text}' is not a TOML value (a number, \"string\", true/false or [array])"))
    }
}

/// One `--set KEY=VALUE`: a key path into the spec and the TOML value written there.
#[derive(Clone, Debug, PartialEq)]
pub struct Override {
    /// Where the value goes.
    pub key: KeyPath,
    /// The value, parsed as TOML.
    pub value: toml::Value,
}

impl Override {
    /// The override as `KEY=VALUE`, the value in TOML syntax.
    pub fn describe(&self) -> String {
        format!("{}={}", self.key, self.value)
    }
}

impl FromStr for Override {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (key, value) = text
            .split_once('=')
            .ok_or_else(|| format!("'{text}' is not KEY=VALUE (e.g. semantics_extractor.depth=3)"))?;
        let key = KeyPath::parse(key.trim())?;
        let value = parse_value(value).map_err(|e| format!("{key}: {e}"))?;
        Ok(Override { key, value })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn table(text: &str) -> toml::Table {
        text.parse().unwrap()
    }

    #[test]
    fn parses_paths_and_values() {
        let o: Override = "token_pyramid.blocks[1]=[3, 4, 16, 2]".parse().unwrap();
        assert_eq!(o.key.as_str(), "token_pyramid.blocks[1]");
        assert_eq!(o.key.leaf(), "blocks");
        assert_eq!(o.describe(), "token_pyramid.blocks[1]=[3, 4, 16, 2]");
        let o: Override = "head.activation=relu6".parse().unwrap();
        assert_eq!(o.value, toml::Value::String("relu6".into()));
        let o: Override = "res=256x512".parse().unwrap();
        assert_eq!(o.value, toml::Value::String("256x512".into()));
        let o: Override = "semantics_extractor.mlp_ratio=2.5".parse().unwrap();
        assert_eq!(o.value, toml::Value::Float(2.5));
        for bad in ["depth", "=3", "a..b=1", "a[x]=1", "a[1=1", "a.b=1 2", "a=\"x", "a=1\nb = 2"] {
            assert!(bad.parse::<Override>().is_err(), "{bad}");
        }
    }

    #[test]
    fn assigns_into_tables_and_arrays() {
        let mut t = table("[a]\nb = 1\nlist = [[1, 2], [3, 4]]\n");
        KeyPath::parse("a.b").unwrap().assign(&mut t, toml::Value::Integer(5)).unwrap();
        KeyPath::parse("a.list[1][0]").unwrap().assign(&mut t, toml::Value::Integer(9)).unwrap();
        KeyPath::parse("c.d").unwrap().assign(&mut t, toml::Value::Integer(7)).unwrap();
        assert_eq!(t, table("c = { d = 7 }\n[a]\nb = 5\nlist = [[1, 2], [9, 4]]\n"));
        let out_of_range = KeyPath::parse("a.list[2]").unwrap().assign(&mut t, toml::Value::Integer(0));
        assert_eq!(out_of_range.unwrap_err(), "index 2 is out of range (2 elements)");
        let not_table = KeyPath::parse("a.b.c").unwrap().assign(&mut t, toml::Value::Integer(0));
        assert_eq!(not_table.unwrap_err(), "integer where a table is expected");
    }

    #[test]
    fn covers_keys_below_and_above() {
        let key = KeyPath::parse("token_pyramid.blocks").unwrap();
        assert!(key.covers("token_pyramid.blocks[3]"));
        assert!(key.covers("token_pyramid.blocks"));
        assert!(key.covers("token_pyramid"));
        assert!(!key.covers("token_pyramid.blocks_x"));
        assert!(!key.covers("token_pyramid.channels"));
    }
}
