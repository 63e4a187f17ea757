//! Number formatting shared by every output format.

/// An integer with thousands separators: `1,164,615,680`.
pub fn thousands(value: u64) -> String {
    let digits = value.to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3);
    for (i, ch) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(ch);
    }
    out
}

/// A count with an SI suffix and three significant digits: `1.16 G`, `3.03 M`, `512 K`.
pub fn si(value: u64) -> String {
    let v = value as f64;
    let (scaled, unit) = match value {
        0..=999 => return value.to_string(),
        1_000..=999_999 => (v / 1e3, "K"),
        1_000_000..=999_999_999 => (v / 1e6, "M"),
        _ => (v / 1e9, "G"),
    };
    three_significant(scaled, unit)
}

/// A byte count in binary units with three significant digits: `1.50 MiB`, `96.0 KiB`, `512 B`.
pub fn bytes(value: u64) -> String {
    let (scaled, unit) = match value {
        0..=1023 => return format!("{value} B"),
        1024..=1_048_575 => (value as f64 / 1024.0, "KiB"),
        1_048_576..=1_073_741_823 => (value as f64 / 1_048_576.0, "MiB"),
        _ => (value as f64 / 1_073_741_824.0, "GiB"),
    };
    three_significant(scaled, unit)
}

/// A scaled value (1 to 1000) with three significant digits and its unit.
fn three_significant(scaled: f64, unit: &str) -> String {
    let decimals = if scaled >= 100.0 {
        0
    } else if scaled >= 10.0 {
        1
    } else {
        2
    };
    format!("{scaled:.decimals$} {unit}")
}

/// A share in percent with one decimal: `42.7 %`.
pub fn percent(part: u64, whole: u64) -> String {
    if whole == 0 {
        return "-".into();
    }
    format!("{:.1} %", 100.0 * part as f64 / whole as f64)
}

/// A shape as `C×H×W`.
pub fn shape(dims: &[usize]) -> String {
    dims.iter().map(usize::to_string).collect::<Vec<_>>().join("×")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats() {
        assert_eq!(thousands(1_164_615_680), "1,164,615,680");
        assert_eq!(thousands(999), "999");
        assert_eq!(si(1_164_615_680), "1.16 G");
        assert_eq!(si(126_884_784), "127 M");
        assert_eq!(si(3_034_662), "3.03 M");
        assert_eq!(si(42), "42");
        assert_eq!(percent(1, 3), "33.3 %");
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(98_304), "96.0 KiB");
        assert_eq!(bytes(1_572_864), "1.50 MiB");
        assert_eq!(bytes(157_286_400), "150 MiB");
        assert_eq!(shape(&[3, 512, 1024]), "3×512×1024");
    }
}
