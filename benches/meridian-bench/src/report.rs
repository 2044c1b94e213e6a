//! The benchmark's outputs: a markdown table per workload with both systems
//! and their ratio for each figure, one JSON file with every raw number, and
//! a latency CDF plot (SVG) per workload. The SVG is written by hand: a
//! logarithmic latency axis against the cumulative fraction on a "nines"
//! axis (90 %, 99 %, 99.9 %, 99.99 %), where tails are visible.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::stats::Summary;

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub enum Better {
    Higher,
    Lower,
}

#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
pub enum Unit {
    OpsPerSec,
    Micros,
    Bytes,
    Count,
}

/// One line of a table: the same figure for both systems.
#[derive(Clone, Debug, Serialize)]
pub struct Figure {
    pub name: String,
    pub unit: Unit,
    pub better: Better,
    pub meridian_label: String,
    pub meridian: Option<f64>,
    pub etcd_label: String,
    pub etcd: Option<f64>,
    /// The issue's target for this figure and whether this run met it.
    pub target: Option<Target>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub text: String,
    pub met: bool,
}

impl Figure {
    pub fn new(name: impl Into<String>, unit: Unit, better: Better) -> Figure {
        Figure {
            name: name.into(),
            unit,
            better,
            meridian_label: String::new(),
            meridian: None,
            etcd_label: String::new(),
            etcd: None,
            target: None,
        }
    }
    pub fn meridian(mut self, label: impl Into<String>, v: f64) -> Figure {
        self.meridian_label = label.into();
        self.meridian = Some(v);
        self
    }
    pub fn etcd(mut self, label: impl Into<String>, v: Option<f64>) -> Figure {
        self.etcd_label = label.into();
        self.etcd = v;
        self
    }
    pub fn target(mut self, text: impl Into<String>, met: bool) -> Figure {
        self.target = Some(Target {
            text: text.into(),
            met,
        });
        self
    }
    /// Meridian ÷ etcd, when both were measured.
    pub fn ratio(&self) -> Option<f64> {
        match (self.meridian, self.etcd) {
            (Some(m), Some(e)) if e > 0.0 => Some(m / e),
            _ => None,
        }
    }
}

/// The "{what} p50", "p99" and "p999" lines of one pair of series.
pub fn tail_figures(
    what: &str,
    meridian_label: &str,
    m: &Summary,
    etcd_label: &str,
    e: Option<&Summary>,
) -> Vec<Figure> {
    [
        ("p50", (|s: &Summary| s.p50_us) as fn(&Summary) -> u64),
        ("p99", |s: &Summary| s.p99_us),
        ("p999", |s: &Summary| s.p999_us),
    ]
    .into_iter()
    .map(|(name, pick)| {
        Figure::new(format!("{what} {name}"), Unit::Micros, Better::Lower)
            .meridian(meridian_label, pick(m) as f64)
            .etcd(etcd_label, e.map(|e| pick(e) as f64))
    })
    .collect()
}

/// One latency series of a workload (one line in its plot).
#[derive(Clone, Debug, Serialize)]
pub struct Series {
    pub system: String,
    pub label: String,
    pub summary: Summary,
}

#[derive(Clone, Debug, Serialize)]
pub struct WorkloadReport {
    /// Short name, also the plot's file name.
    pub name: String,
    pub title: String,
    /// The two columns' names when they are not Meridian and etcd (a
    /// workload comparing two runs of Meridian).
    pub columns: Option<(String, String)>,
    /// How it was run: sizes, clients, durations.
    pub setup: String,
    pub figures: Vec<Figure>,
    pub series: Vec<Series>,
    /// What bounds the figures (measured, or said so when reasoned).
    pub notes: Vec<String>,
    /// Workload-specific raw numbers.
    pub raw: serde_json::Value,
}

#[derive(Clone, Debug, Serialize)]
pub struct Report {
    pub command: String,
    pub machine: String,
    pub etcd_version: Option<String>,
    pub workloads: Vec<WorkloadReport>,
}

pub fn fmt_value(v: f64, unit: Unit) -> String {
    match unit {
        Unit::OpsPerSec => format!("{} /s", group_thousands(v.round() as u64)),
        Unit::Count => group_thousands(v.round() as u64),
        Unit::Bytes => {
            if v >= 1024.0 * 1024.0 {
                format!("{:.1} MiB", v / (1024.0 * 1024.0))
            } else if v >= 1024.0 {
                format!("{:.1} KiB", v / 1024.0)
            } else {
                format!("{v:.0} B")
            }
        }
        Unit::Micros => {
            if v >= 1_000_000.0 {
                format!("{:.2} s", v / 1e6)
            } else if v >= 10_000.0 {
                format!("{:.1} ms", v / 1e3)
            } else if v >= 1000.0 {
                format!("{:.2} ms", v / 1e3)
            } else {
                format!("{v:.0} µs")
            }
        }
    }
}

fn group_thousands(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn cell(label: &str, v: Option<f64>, unit: Unit) -> String {
    match v {
        None if label.is_empty() => "—".into(),
        None => label.to_string(),
        Some(v) if label.is_empty() => fmt_value(v, unit),
        Some(v) => format!("{} ({label})", fmt_value(v, unit)),
    }
}

impl WorkloadReport {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "### {}\n\n{}\n", self.title, self.setup);
        let (a, b) = self
            .columns
            .clone()
            .unwrap_or_else(|| ("Meridian".into(), "etcd".into()));
        let _ = writeln!(s, "| figure | {a} | {b} | {a} ÷ {b} | target |");
        let _ = writeln!(s, "|---|---|---|---|---|");
        for f in &self.figures {
            let ratio = match f.ratio() {
                Some(r) => {
                    let good = match f.better {
                        Better::Higher => r >= 1.0,
                        Better::Lower => r <= 1.0,
                    };
                    format!("{r:.2}× ({})", if good { "better" } else { "worse" })
                }
                None => "—".into(),
            };
            let target = match &f.target {
                Some(t) => format!(
                    "{}: {}",
                    t.text,
                    if t.met { "**met**" } else { "**missed**" }
                ),
                None => String::new(),
            };
            let _ = writeln!(
                s,
                "| {} | {} | {} | {ratio} | {target} |",
                f.name,
                cell(&f.meridian_label, f.meridian, f.unit),
                cell(&f.etcd_label, f.etcd, f.unit),
            );
        }
        if !self.notes.is_empty() {
            s.push('\n');
            for n in &self.notes {
                let _ = writeln!(s, "- {n}");
            }
        }
        let _ = writeln!(s, "\nLatency CDF: `{}.svg`\n", self.name);
        s
    }

    /// The CDF of every series: log latency (x) against cumulative fraction
    /// on a nines scale (y). Meridian solid, etcd dashed.
    pub fn svg(&self) -> String {
        const W: f64 = 860.0;
        const H: f64 = 520.0;
        const L: f64 = 70.0; // plot area left
        const R: f64 = 250.0; // legend width on the right
        const T: f64 = 40.0;
        const B: f64 = 60.0;
        const NINES_MAX: f64 = 4.0;
        let series: Vec<&Series> = self
            .series
            .iter()
            .filter(|s| !s.summary.cdf.is_empty())
            .collect();
        let lo = series
            .iter()
            .flat_map(|s| s.summary.cdf.iter().map(|p| p.0))
            .min()
            .unwrap_or(1)
            .max(1);
        let hi = series
            .iter()
            .flat_map(|s| s.summary.cdf.iter().map(|p| p.0))
            .max()
            .unwrap_or(10)
            .max(lo + 1);
        let x_lo = (lo as f64).log10().floor();
        let x_hi = (hi as f64).log10().ceil().max(x_lo + 1.0);
        let pw = W - L - R;
        let ph = H - T - B;
        let x = |us: u64| L + ((us.max(1) as f64).log10() - x_lo) / (x_hi - x_lo) * pw;
        let y = |q: f64| {
            let n = if q >= 1.0 {
                NINES_MAX
            } else {
                (-(1.0 - q).log10()).min(NINES_MAX)
            };
            T + ph - n / NINES_MAX * ph
        };
        let mut s = String::new();
        let _ = writeln!(
            s,
            r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#
        );
        let _ = writeln!(s, r#"<rect width="{W}" height="{H}" fill="white"/>"#);
        let _ = writeln!(
            s,
            r#"<text x="{L}" y="22" font-size="15" font-weight="bold">{}</text>"#,
            esc(&self.title)
        );
        // Grid: decades of latency, nines of the CDF.
        let mut d = x_lo;
        while d <= x_hi {
            let us = 10f64.powf(d) as u64;
            let gx = x(us);
            let _ = writeln!(
                s,
                r##"<line x1="{gx:.1}" y1="{T}" x2="{gx:.1}" y2="{:.1}" stroke="#ddd"/><text x="{gx:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
                T + ph,
                T + ph + 18.0,
                fmt_value(us as f64, Unit::Micros)
            );
            d += 1.0;
        }
        for (n, label) in [
            (0.0, "0 %"),
            (1.0, "90 %"),
            (2.0, "99 %"),
            (3.0, "99.9 %"),
            (4.0, "99.99 %"),
        ] {
            let gy = T + ph - n / NINES_MAX * ph;
            let _ = writeln!(
                s,
                r##"<line x1="{L}" y1="{gy:.1}" x2="{:.1}" y2="{gy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end">{label}</text>"##,
                L + pw,
                L - 6.0,
                gy + 4.0
            );
        }
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">latency (log scale)</text>"#,
            L + pw / 2.0,
            H - 18.0
        );
        let _ = writeln!(
            s,
            r#"<text x="16" y="{:.1}" transform="rotate(-90 16 {:.1})" text-anchor="middle">fraction of operations at or below (nines)</text>"#,
            T + ph / 2.0,
            T + ph / 2.0
        );
        const COLORS: [&str; 8] = [
            "#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2",
        ];
        for (i, se) in series.iter().enumerate() {
            let color = COLORS[i % COLORS.len()];
            let dash = if se.system == "etcd" {
                r#" stroke-dasharray="6 4""#
            } else {
                ""
            };
            let pts: Vec<String> = se
                .summary
                .cdf
                .iter()
                .filter(|p| p.1 < 1.0)
                .map(|&(us, q)| format!("{:.1},{:.1}", x(us), y(q)))
                .collect();
            let _ = writeln!(
                s,
                r#"<polyline fill="none" stroke="{color}" stroke-width="2"{dash} points="{}"/>"#,
                pts.join(" ")
            );
            let ly = T + 10.0 + i as f64 * 34.0;
            let lx = W - R + 15.0;
            let _ = writeln!(
                s,
                r##"<line x1="{lx}" y1="{ly}" x2="{:.1}" y2="{ly}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text><text x="{:.1}" y="{:.1}" fill="#555">p99 {} · max {}</text>"##,
                lx + 24.0,
                lx + 30.0,
                ly + 4.0,
                esc(&format!("{}: {}", se.system, se.label)),
                lx + 30.0,
                ly + 18.0,
                fmt_value(se.summary.p99_us as f64, Unit::Micros),
                fmt_value(se.summary.max_us as f64, Unit::Micros),
            );
        }
        s.push_str("</svg>\n");
        s
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

impl Report {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "# Meridian and etcd, side by side\n");
        let _ = writeln!(s, "Command: `{}`  ", self.command);
        let _ = writeln!(s, "Machine: {}  ", self.machine);
        if let Some(v) = &self.etcd_version {
            let _ = writeln!(s, "etcd: {v}  ");
        }
        s.push('\n');
        for w in &self.workloads {
            s.push_str(&w.markdown());
        }
        s
    }

    /// `results.md`, `results.json` and one `<workload>.svg` per workload.
    pub fn write(&self, dir: &Path) -> Result<()> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        std::fs::write(dir.join("results.md"), self.markdown())?;
        std::fs::write(
            dir.join("results.json"),
            serde_json::to_string_pretty(self)?,
        )?;
        for w in &self.workloads {
            std::fs::write(dir.join(format!("{}.svg", w.name)), w.svg())?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::stats::Latency;
    use std::time::Duration;

    fn report() -> WorkloadReport {
        let mut a = Latency::new();
        let mut b = Latency::new();
        for i in 1..=1000u64 {
            a.record(Duration::from_micros(100 + i));
            b.record(Duration::from_micros(300 + 2 * i));
        }
        WorkloadReport {
            columns: None,
            name: "read".into(),
            title: "Reads <&>".into(),
            setup: "setup".into(),
            figures: vec![
                Figure::new("reads/s", Unit::OpsPerSec, Better::Higher)
                    .meridian("stale", 20_000.0)
                    .etcd("serializable", Some(8_000.0))
                    .target("≥ 2× etcd", true),
                Figure::new("p99", Unit::Micros, Better::Lower)
                    .meridian("", 450.0)
                    .etcd("not run", None),
            ],
            series: vec![
                Series {
                    system: "meridian".into(),
                    label: "stale".into(),
                    summary: a.summary(),
                },
                Series {
                    system: "etcd".into(),
                    label: "serializable".into(),
                    summary: b.summary(),
                },
            ],
            notes: vec!["limited by the CPU".into()],
            raw: serde_json::Value::Null,
        }
    }

    #[test]
    fn table_has_both_systems_the_ratio_and_the_target() {
        let md = report().markdown();
        assert!(md.contains("| reads/s | 20,000 /s (stale) | 8,000 /s (serializable) | 2.50× (better) | ≥ 2× etcd: **met** |"), "{md}");
        assert!(md.contains("| p99 | 450 µs | not run | — |"), "{md}");
    }

    #[test]
    fn svg_draws_one_line_per_series_and_escapes_text() {
        let svg = report().svg();
        assert_eq!(svg.matches("<polyline").count(), 2);
        assert!(svg.contains("Reads &lt;&amp;&gt;"));
        assert!(svg.contains("stroke-dasharray"), "etcd is dashed");
        assert!(svg.trim_end().ends_with("</svg>"));
    }

    #[test]
    fn values_are_formatted_with_units() {
        assert_eq!(fmt_value(1234567.0, Unit::OpsPerSec), "1,234,567 /s");
        assert_eq!(fmt_value(850.0, Unit::Micros), "850 µs");
        assert_eq!(fmt_value(2500.0, Unit::Micros), "2.50 ms");
        assert_eq!(fmt_value(61_300.0, Unit::Micros), "61.3 ms");
        assert_eq!(fmt_value(2048.0, Unit::Bytes), "2.0 KiB");
    }
}
