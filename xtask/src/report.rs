//! What the benchmarks print and write: markdown tables, `hv --stats` parsing, number
//! formats and horizontal bar charts (SVG).

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// Prints a markdown table. Columns listed in `left` are left-aligned, the others (numbers)
/// right-aligned.
pub fn print_table(header: &[&str], rows: &[Vec<String>], left: &[usize]) {
    let widths: Vec<usize> = (0..header.len())
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    let line = |cells: &[String]| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .enumerate()
            .map(|(i, (c, &w))| {
                if left.contains(&i) {
                    format!("{c:w$}")
                } else {
                    format!("{c:>w$}")
                }
            })
            .collect();
        println!("| {} |", parts.join(" | "));
    };
    line(&header.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    let rule: Vec<String> = widths
        .iter()
        .enumerate()
        .map(|(i, &w)| {
            if left.contains(&i) {
                "-".repeat(w + 2)
            } else {
                format!("{}:", "-".repeat(w + 1))
            }
        })
        .collect();
    println!("|{}|", rule.join("|"));
    for r in rows {
        line(r);
    }
}

/// Each domain's total exits from `hv --stats` (`stats for domain NAME: N exits` lines).
pub fn domain_exits(stderr: &str) -> BTreeMap<String, u64> {
    stderr
        .lines()
        .filter_map(|l| {
            let rest = l.trim().strip_prefix("stats for domain ")?;
            let (name, n) = rest.rsplit_once(": ")?;
            Some((
                name.to_string(),
                n.strip_suffix(" exits")?.trim().parse().ok()?,
            ))
        })
        .collect()
}

/// A number with about 3 significant digits (4 decimals below 0.1).
pub fn fmt_f(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else if v >= 0.1 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One bar of [`bar_chart`].
pub struct Bar {
    /// Its label, left of the bar.
    pub label: String,
    /// Its value (drawn on a log scale; at least 1e-4).
    pub value: f64,
    /// Its fill colour (SVG).
    pub colour: &'static str,
}

/// A horizontal bar chart on a log scale (the compared paths differ by orders of magnitude),
/// one bar per row, values printed after the bars with `unit`.
pub fn bar_chart(title: &str, unit: &str, bars: &[Bar]) -> String {
    let (left, right, top, row_h) = (260.0, 130.0, 60.0, 22.0);
    let plot_w = 560.0;
    let width = left + plot_w + right;
    let height = top + row_h * bars.len() as f64 + 50.0;
    let vals: Vec<f64> = bars.iter().map(|b| b.value.max(1e-4)).collect();
    let lo = vals
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .log10()
        .floor();
    let hi = vals
        .iter()
        .copied()
        .fold(f64::NEG_INFINITY, f64::max)
        .log10()
        .ceil()
        .max(lo + 1.0);
    let x = |v: f64| left + (v.max(1e-4).log10() - lo) / (hi - lo) * plot_w;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(s, r#"<rect width="100%" height="100%" fill="white"/>"#);
    let _ = writeln!(
        s,
        r#"<text x="{}" y="24" font-size="16" text-anchor="middle">{}</text>"#,
        width / 2.0,
        xml_escape(title)
    );
    let bottom = top + row_h * bars.len() as f64;
    let mut d = lo;
    while d <= hi {
        let xd = x(10f64.powf(d));
        let _ = writeln!(
            s,
            r##"<line x1="{xd:.1}" y1="{}" x2="{xd:.1}" y2="{bottom}" stroke="#ddd"/><text x="{xd:.1}" y="{}" text-anchor="middle" fill="#444">{}</text>"##,
            top - 8.0,
            bottom + 16.0,
            if d < 0.0 {
                format!("{:.*}", (-d) as usize, 10f64.powf(d))
            } else {
                format!("{:.0}", 10f64.powf(d))
            }
        );
        d += 1.0;
    }
    for (i, b) in bars.iter().enumerate() {
        let y = top + row_h * i as f64;
        let w = (x(b.value) - left).max(1.0);
        let _ = writeln!(
            s,
            r#"<text x="{}" y="{:.1}" text-anchor="end">{}</text><rect x="{left}" y="{:.1}" width="{w:.1}" height="{:.1}" fill="{}"/><text x="{:.1}" y="{:.1}">{} {}</text>"#,
            left - 8.0,
            y + row_h * 0.7,
            xml_escape(&b.label),
            y + 3.0,
            row_h - 6.0,
            b.colour,
            left + w + 6.0,
            y + row_h * 0.7,
            fmt_f(b.value),
            xml_escape(unit)
        );
    }
    let _ = writeln!(
        s,
        r##"<text x="{}" y="{}" text-anchor="middle" fill="#444">{} (log scale)</text>"##,
        left + plot_w / 2.0,
        bottom + 36.0,
        xml_escape(unit)
    );
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exits_per_domain() {
        let err = "hv: x\nstats for domain sink: 653 exits\n  exit hypercall 560\n\
                   stats for domain source: 12 exits\n";
        let m = domain_exits(err);
        assert_eq!(m.get("sink"), Some(&653));
        assert_eq!(m.get("source"), Some(&12));
        assert_eq!(m.len(), 2);
        assert!(domain_exits("nothing").is_empty());
    }

    #[test]
    fn chart_has_one_bar_per_value() {
        let bars = [
            Bar {
                label: "pv udp".into(),
                value: 87_000.0,
                colour: "#2b7bb9",
            },
            Bar {
                label: "ne2k <udp>".into(),
                value: 150.0,
                colour: "#d9534f",
            },
        ];
        let svg = bar_chart("t", "packets/s", &bars);
        assert_eq!(svg.matches("<rect x=").count(), 2);
        assert!(svg.contains("ne2k &lt;udp&gt;"));
        assert!(svg.contains("87000 packets/s"));
    }
}
