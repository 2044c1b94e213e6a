//! A drill's report: its figures judged against their bounds, its checks,
//! the canary's counts and a timeline; printed as a table or JSON, drawn as
//! SVG. JSON is what `Drill.RecordDrill` keeps and `drill history` shows.

use std::fmt::Write as _;

use serde_json::{json, Value};

use super::canary::{Outcome, Write};

/// The timeline's resolution.
pub const BUCKET_MS: u64 = 100;

/// A measured figure and its bound (None: reported, not judged).
#[derive(Clone, Debug)]
pub struct Figure {
    pub name: String,
    /// None: never observed (a recovery that did not happen), which fails
    /// a judged figure.
    pub value: Option<u64>,
    pub unit: &'static str,
    pub bound: Option<u64>,
    pub note: String,
}

impl Figure {
    pub fn ok(&self) -> bool {
        match (self.value, self.bound) {
            (_, None) => true,
            (Some(v), Some(b)) => v <= b,
            (None, Some(_)) => false,
        }
    }
}

/// An expectation about behaviour, and what was seen.
#[derive(Clone, Debug)]
pub struct Check {
    pub name: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

#[derive(Clone, Debug)]
pub struct Event {
    pub at_ms: u64,
    pub what: String,
}

#[derive(Clone, Debug, Default)]
pub struct Counts {
    pub acked: u64,
    pub failed: u64,
    pub skipped: u64,
    /// Failed writes by the stable reason they got.
    pub failed_by_reason: std::collections::BTreeMap<String, u64>,
}

#[derive(Clone, Debug)]
pub struct Report {
    pub drill_id: String,
    pub scenario: &'static str,
    pub region: String,
    pub fault: Option<String>,
    pub started_ms: u64,
    pub finished_ms: u64,
    pub figures: Vec<Figure>,
    pub checks: Vec<Check>,
    pub counts: Counts,
    /// Acknowledged and failed writes per bucket, by when they were answered.
    pub acked_per_bucket: Vec<u32>,
    pub failed_per_bucket: Vec<u32>,
    pub events: Vec<Event>,
}

impl Report {
    pub fn new(
        drill_id: &str,
        scenario: &'static str,
        region: &str,
        fault: Option<String>,
        started_ms: u64,
    ) -> Report {
        Report {
            drill_id: drill_id.to_string(),
            scenario,
            region: region.to_string(),
            fault,
            started_ms,
            finished_ms: 0,
            figures: Vec::new(),
            checks: Vec::new(),
            counts: Counts::default(),
            acked_per_bucket: Vec::new(),
            failed_per_bucket: Vec::new(),
            events: Vec::new(),
        }
    }

    pub fn figure(
        &mut self,
        name: &str,
        value: Option<u64>,
        unit: &'static str,
        bound: Option<u64>,
        note: &str,
    ) {
        self.figures.push(Figure {
            name: name.to_string(),
            value,
            unit,
            bound,
            note: note.to_string(),
        });
    }

    pub fn check(&mut self, name: &str, expected: &str, observed: String, ok: bool) {
        self.checks.push(Check {
            name: name.to_string(),
            expected: expected.to_string(),
            observed,
            ok,
        });
    }

    pub fn event(&mut self, at_ms: u64, what: &str) {
        self.events.push(Event {
            at_ms,
            what: what.to_string(),
        });
    }

    /// Fill the counts and the timeline from the canary's log.
    pub fn tally(&mut self, log: &[Write]) {
        let end = log.iter().map(|w| w.done_ms).max().unwrap_or(0);
        let n = (end / BUCKET_MS + 1) as usize;
        self.acked_per_bucket = vec![0; n];
        self.failed_per_bucket = vec![0; n];
        for w in log {
            let b = (w.done_ms / BUCKET_MS) as usize;
            match &w.outcome {
                Outcome::Acked(_) => {
                    self.counts.acked += 1;
                    self.acked_per_bucket[b] += 1;
                }
                Outcome::Failed(why) => {
                    self.counts.failed += 1;
                    *self.counts.failed_by_reason.entry(why.clone()).or_default() += 1;
                    self.failed_per_bucket[b] += 1;
                }
                Outcome::Skipped => self.counts.skipped += 1,
            }
        }
    }

    /// What broke its bound or its expectation.
    pub fn broken(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .figures
            .iter()
            .filter(|f| !f.ok())
            .map(|f| match (f.value, f.bound) {
                (Some(v), Some(b)) => format!("{} = {v} {} > {b}", f.name, f.unit),
                _ => format!("{} never observed", f.name),
            })
            .collect();
        out.extend(
            self.checks
                .iter()
                .filter(|c| !c.ok)
                .map(|c| format!("{}: expected {}, saw {}", c.name, c.expected, c.observed)),
        );
        out
    }

    pub fn to_json(&self) -> Value {
        let broken = self.broken();
        json!({
            "drill_id": self.drill_id,
            "scenario": self.scenario,
            "region": self.region,
            "fault": self.fault,
            "started_ms": self.started_ms,
            "finished_ms": self.finished_ms,
            "verdict": if broken.is_empty() { "pass" } else { "fail" },
            "broken": broken,
            "figures": self.figures.iter().map(|f| json!({
                "name": f.name, "value": f.value, "unit": f.unit, "bound": f.bound,
                "ok": f.ok(), "note": f.note,
            })).collect::<Vec<_>>(),
            "checks": self.checks.iter().map(|c| json!({
                "name": c.name, "expected": c.expected, "observed": c.observed, "ok": c.ok,
            })).collect::<Vec<_>>(),
            "writes": {
                "acknowledged": self.counts.acked,
                "failed": self.counts.failed,
                "skipped": self.counts.skipped,
                "failed_by_reason": self.counts.failed_by_reason,
            },
            "timeline": {
                "bucket_ms": BUCKET_MS,
                "acknowledged": self.acked_per_bucket,
                "failed": self.failed_per_bucket,
                "events": self.events.iter().map(|e| json!({"at_ms": e.at_ms, "what": e.what})).collect::<Vec<_>>(),
            },
        })
    }
}

fn value_text(f: &Figure) -> String {
    match f.value {
        Some(v) => format!("{v} {}", f.unit),
        None => "never".into(),
    }
}

/// The report for a person.
pub fn table(r: &Report) -> String {
    let mut s = String::new();
    let verdict = if r.broken().is_empty() {
        "PASS"
    } else {
        "FAIL"
    };
    let fault = r
        .fault
        .as_deref()
        .map(|f| format!(", {f} fault"))
        .unwrap_or_default();
    let _ = writeln!(
        s,
        "drill {}: {} of {}{fault}: {verdict}",
        r.drill_id, r.scenario, r.region
    );
    let _ = writeln!(s);
    let w = r
        .figures
        .iter()
        .map(|f| f.name.len())
        .max()
        .unwrap_or(6)
        .max(6);
    let _ = writeln!(
        s,
        "{:<w$}  {:>12}  {:>12}  verdict",
        "figure", "value", "bound"
    );
    for f in &r.figures {
        let bound = f
            .bound
            .map(|b| format!("<= {b} {}", f.unit))
            .unwrap_or_else(|| "-".into());
        let verdict = match (f.bound, f.ok()) {
            (None, _) => "info",
            (_, true) => "ok",
            (_, false) => "BROKEN",
        };
        let _ = write!(
            s,
            "{:<w$}  {:>12}  {:>12}  {verdict}",
            f.name,
            value_text(f),
            bound
        );
        if !f.note.is_empty() {
            let _ = write!(s, "  ({})", f.note);
        }
        let _ = writeln!(s);
    }
    if !r.checks.is_empty() {
        let _ = writeln!(s);
        for c in &r.checks {
            let mark = if c.ok { "ok    " } else { "BROKEN" };
            let _ = writeln!(
                s,
                "{mark} {}: expected {}; saw {}",
                c.name, c.expected, c.observed
            );
        }
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "canary writes: {} acknowledged, {} failed, {} skipped",
        r.counts.acked, r.counts.failed, r.counts.skipped
    );
    if !r.counts.failed_by_reason.is_empty() {
        let why: Vec<String> = r
            .counts
            .failed_by_reason
            .iter()
            .map(|(k, n)| format!("{k} {n}"))
            .collect();
        let _ = writeln!(s, "failed writes by reason: {}", why.join(", "));
    }
    for e in &r.events {
        let _ = writeln!(s, "  {:>8.1} s  {}", e.at_ms as f64 / 1000.0, e.what);
    }
    s
}

/// `drill history` for a person.
pub fn history_table(v: &Value) -> String {
    let mut s = String::new();
    let Some(list) = v.as_array() else {
        return s;
    };
    if list.is_empty() {
        return "no drills recorded\n".into();
    }
    let _ = writeln!(
        s,
        "{:<44} {:<12} {:<8} {:<8} {:>10} {:>10}",
        "drill", "scenario", "region", "verdict", "rto_ms", "lost"
    );
    for r in list {
        let fig = |name: &str| {
            r["figures"]
                .as_array()
                .and_then(|fs| fs.iter().find(|f| f["name"] == name))
                .map(|f| f["value"].to_string())
                .unwrap_or_else(|| "-".into())
        };
        let _ = writeln!(
            s,
            "{:<44} {:<12} {:<8} {:<8} {:>10} {:>10}",
            r["drill_id"].as_str().unwrap_or("?"),
            r["scenario"].as_str().unwrap_or("?"),
            r["region"].as_str().unwrap_or("?"),
            r["verdict"].as_str().unwrap_or("?"),
            fig("rto_ms"),
            fig("rpo_lost_quorum_writes"),
        );
    }
    s
}

fn xml_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The timeline as SVG: writes acknowledged (green) and failed (red) per
/// 100 ms, and the drill's events as labelled vertical lines.
pub fn svg(r: &Report) -> String {
    const W: f64 = 1000.0;
    const H: f64 = 320.0;
    const LEFT: f64 = 50.0;
    const RIGHT: f64 = 20.0;
    const TOP: f64 = 40.0;
    const BOTTOM: f64 = 40.0;
    let n = r.acked_per_bucket.len().max(1);
    let peak = r
        .acked_per_bucket
        .iter()
        .zip(r.failed_per_bucket.iter())
        .map(|(a, f)| a + f)
        .max()
        .unwrap_or(1)
        .max(1) as f64;
    let plot_w = W - LEFT - RIGHT;
    let plot_h = H - TOP - BOTTOM;
    let bw = plot_w / n as f64;
    let y0 = TOP + plot_h;
    let mut s = String::new();
    let _ = writeln!(
        s,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="11">"#
    );
    let title = format!(
        "drill {}: {} of {}{}",
        r.drill_id,
        r.scenario,
        r.region,
        r.fault
            .as_deref()
            .map(|f| format!(" ({f})"))
            .unwrap_or_default()
    );
    let _ = writeln!(s, "<title>{}</title>", xml_escape(&title));
    let _ = writeln!(
        s,
        r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="20" font-size="14">{}</text>"#,
        xml_escape(&title)
    );
    for (i, (a, f)) in r
        .acked_per_bucket
        .iter()
        .zip(r.failed_per_bucket.iter())
        .enumerate()
    {
        let x = LEFT + i as f64 * bw;
        let ha = *a as f64 / peak * plot_h;
        let hf = *f as f64 / peak * plot_h;
        if *a > 0 {
            let _ = writeln!(
                s,
                r##"<rect x="{x:.2}" y="{:.2}" width="{bw:.2}" height="{ha:.2}" fill="#2e7d32"/>"##,
                y0 - ha
            );
        }
        if *f > 0 {
            let _ = writeln!(
                s,
                r##"<rect x="{x:.2}" y="{:.2}" width="{bw:.2}" height="{hf:.2}" fill="#c62828"/>"##,
                y0 - ha - hf
            );
        }
    }
    // Axes: time in seconds, writes per bucket.
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{y0}" x2="{}" y2="{y0}" stroke="black"/>"#,
        W - RIGHT
    );
    let _ = writeln!(
        s,
        r#"<line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{y0}" stroke="black"/>"#
    );
    let seconds = (n as u64 * super::report::BUCKET_MS) / 1000;
    let step = (seconds / 10).max(1);
    let mut t = 0;
    while t <= seconds {
        let x = LEFT + (t * 1000 / BUCKET_MS) as f64 * bw;
        let _ = writeln!(
            s,
            r#"<text x="{x:.2}" y="{}" text-anchor="middle">{t} s</text>"#,
            y0 + 15.0
        );
        t += step;
    }
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{}" text-anchor="end">{peak}</text>"#,
        LEFT - 5.0,
        TOP + 4.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{}" y="{y0}" text-anchor="end">0</text>"#,
        LEFT - 5.0
    );
    let _ = writeln!(
        s,
        r#"<text x="{LEFT}" y="{}">writes answered per {BUCKET_MS} ms: acknowledged (green), failed (red)</text>"#,
        H - 8.0
    );
    for (i, e) in r.events.iter().enumerate() {
        let x = LEFT + e.at_ms as f64 / BUCKET_MS as f64 * bw;
        let y = TOP + 12.0 + (i % 4) as f64 * 13.0;
        let _ = writeln!(
            s,
            r##"<line x1="{x:.2}" y1="{TOP}" x2="{x:.2}" y2="{y0}" stroke="#1565c0" stroke-dasharray="4 3"/>"##
        );
        let _ = writeln!(
            s,
            r##"<text x="{:.2}" y="{y:.2}" fill="#1565c0">{}</text>"##,
            x + 3.0,
            xml_escape(&e.what)
        );
    }
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report() -> Report {
        let mut r = Report::new("d-1", "region-loss", "eu", Some("stop".into()), 1);
        r.figure("rto_ms", Some(1500), "ms", Some(10_000), "");
        r.figure("catch_up_ms", None, "ms", Some(30_000), "");
        r.figure("info_ms", None, "ms", None, "");
        r.check("stale read", "served", "served".into(), true);
        r.event(1200, "fault <stop> & more");
        r
    }

    #[test]
    fn a_figure_never_observed_breaks_its_bound_and_info_never_does() {
        let r = report();
        assert_eq!(r.broken(), ["catch_up_ms never observed"]);
        assert_eq!(r.to_json()["verdict"], "fail");
        let table = table(&r);
        assert!(table.contains("BROKEN"), "{table}");
        assert!(table.contains(": FAIL"), "{table}");
    }

    #[test]
    fn the_timeline_counts_answers_by_when_they_came() {
        let mut r = report();
        let w = |done_ms, outcome| Write {
            ns: 0,
            via: 0,
            key: "k".into(),
            started_ms: 0,
            done_ms,
            outcome,
        };
        r.tally(&[
            w(50, Outcome::Acked(None)),
            w(99, Outcome::Acked(None)),
            w(250, Outcome::Failed("TIMEOUT".into())),
            w(260, Outcome::Skipped),
        ]);
        assert_eq!(r.acked_per_bucket, [2, 0, 0]);
        assert_eq!(r.failed_per_bucket, [0, 0, 1]);
        assert_eq!(
            (r.counts.acked, r.counts.failed, r.counts.skipped),
            (2, 1, 1)
        );
        let svg = svg(&r);
        assert!(
            svg.contains("fault &lt;stop&gt; &amp; more"),
            "escaped: {svg}"
        );
    }
}
