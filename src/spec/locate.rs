//! Finding the line where a key of a TOML document is written, so errors can name it.

use std::collections::BTreeMap;
use toml::de::{DeTable, DeValue};

/// Key paths (`token_pyramid.blocks[3]`) of one TOML document mapped to their 1-based lines.
#[derive(Debug, Default)]
pub struct Locator {
    lines: BTreeMap<String, usize>,
}

impl Locator {
    /// Indexes every key and array element of a document that has already parsed.
    pub fn new(text: &str) -> Self {
        let mut locator = Locator::default();
        if let Ok(doc) = DeTable::parse(text) {
            let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
            locator.walk_table(doc.get_ref(), "", &line_of);
        }
        locator
    }

    fn walk_table(&mut self, table: &DeTable<'_>, prefix: &str, line_of: &dyn Fn(usize) -> usize) {
        for (key, value) in table.iter() {
            let path =
                if prefix.is_empty() { key.get_ref().to_string() } else { format!("{prefix}.{}", key.get_ref()) };
            self.lines.entry(path.clone()).or_insert_with(|| line_of(key.span().start));
            self.walk_value(value.get_ref(), &path, line_of);
        }
    }

    fn walk_value(&mut self, value: &DeValue<'_>, path: &str, line_of: &dyn Fn(usize) -> usize) {
        match value {
            DeValue::Table(table) => self.walk_table(table, path, line_of),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let item_path = format!("{path}[{i}]");
                    self.lines.insert(item_path.clone(), line_of(item.span().start));
                    self.walk_value(item.get_ref(), &item_path, line_of);
                }
            }
            _ => {}
        }
    }

    /// The line of `path`, or of its closest written ancestor.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut path = path;
        loop {
            if let Some(&line) = self.lines.get(path) {
                return Some(line);
            }
            let cut = path.rfind(['.', '['])?;
            path = &path[..cut];
        }
    }

    /// Whether `path` itself (not an ancestor) is written in this document.
    pub fn contains(&self, path: &str) -> bool {
        self.lines.contains_key(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_elements_and_ancestors() {
        let text = "name = \"x\"\n\n[token_pyramid]\nblocks = [\n  [3, 1, 16, 1],\n  [3, 4, 16, 2],\n]\n";
        let loc = Locator::new(text);
        assert_eq!(loc.line("name"), Some(1));
        assert_eq!(loc.line("token_pyramid.blocks"), Some(4));
        assert_eq!(loc.line("token_pyramid.blocks[1]"), Some(6));
        assert_eq!(loc.line("token_pyramid.blocks[1][2]"), Some(6));
        assert_eq!(loc.line("token_pyramid.missing"), Some(3));
        assert!(loc.contains("token_pyramid.blocks") && !loc.contains("token_pyramid.missing"));
    }
}
