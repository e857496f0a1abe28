//! Sizes for people: what `explain` and the decision lines print.

/// Human size: "300 MiB", "1.5 GiB", "512 KiB", "12 B".
pub fn format_bytes(bytes: u64) -> String {
    const UNITS: [(&str, u64); 4] = [
        ("TiB", 1 << 40),
        ("GiB", 1 << 30),
        ("MiB", 1 << 20),
        ("KiB", 1 << 10),
    ];
    for (unit, size) in UNITS {
        if bytes >= size {
            let value = bytes as f64 / size as f64;
            let text = format!("{value:.1}");
            let text = text.strip_suffix(".0").unwrap_or(&text);
            return format!("{text} {unit}");
        }
    }
    format!("{bytes} B")
}

/// Two sizes that differ, written so the difference shows.
pub fn format_pair(a: u64, b: u64) -> (String, String) {
    let (fa, fb) = (format_bytes(a), format_bytes(b));
    if fa == fb && a != b {
        (format!("{a} B"), format!("{b} B"))
    } else {
        (fa, fb)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::MIB;

    #[test]
    fn formats_sizes() {
        assert_eq!(format_bytes(0), "0 B");
        assert_eq!(format_bytes(1023), "1023 B");
        assert_eq!(format_bytes(1024), "1 KiB");
        assert_eq!(format_bytes(300 * MIB), "300 MiB");
        assert_eq!(format_bytes(1536 * MIB), "1.5 GiB");
        assert_eq!(format_bytes(120 * MIB + MIB / 2), "120.5 MiB");
    }

    #[test]
    fn a_pair_that_would_look_equal_shows_bytes() {
        assert_eq!(
            format_pair(MIB, MIB + 1),
            ("1048576 B".into(), "1048577 B".into())
        );
        assert_eq!(format_pair(MIB, 2 * MIB), ("1 MiB".into(), "2 MiB".into()));
    }
}
