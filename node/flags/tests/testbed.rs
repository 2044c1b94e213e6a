//! flagd-testbed's evaluator suite (vendored in `tests/testbed/`, see its
//! README) run against Meridian's evaluator. A small interpreter of the
//! Gherkin the suite uses: features, backgrounds, scenario outlines with
//! tagged example tables, and the eleven step phrasings. Every scenario
//! must pass except those tagged `@fractional-v1` (flagd's replaced
//! bucketing), which are counted as not applicable.

use std::collections::BTreeSet;

use meridian_flags::{Context, Evaluator, Expect, FlagSet, Reason};
use serde_json::{Map, Value};

const NOW_S: u64 = 1_800_000_000;

/// Scenarios Meridian's evaluator is known to answer differently, and why.
/// The test requires them to still fail, so a fix shows up here.
const KNOWN_DEVIATIONS: [(&str, &str); 1] = [(
    "Fractional as condition",
    "datalogic-rs 5.4.0's fractional answers null for buckets named by booleans \
     ([[false, 0], [true, 100]]); flagd's Go evaluator returns the boolean. \
     Meridian refuses such buckets on write (validate.rs).",
)];

/// A step and its data table.
type Steps = Vec<(String, Vec<Vec<String>>)>;
/// The block being read: kind, name, tags, steps.
type Block = (String, String, BTreeSet<String>, Steps);
/// An evaluation as an SDK reports it: value, reason, error code, metadata.
type Details = (Value, String, Option<String>, Map<String, Value>);

struct Scenario {
    name: String,
    tags: BTreeSet<String>,
    steps: Steps,
}

fn cells(line: &str) -> Vec<String> {
    let t = line.trim();
    let inner = &t[1..t.len() - 1];
    inner
        .split('|')
        .map(|c| c.trim().replace("\\\"", "\""))
        .collect()
}

/// The scenarios of one feature file, outlines expanded.
fn parse(text: &str) -> Vec<Scenario> {
    let mut out = Vec::new();
    let mut pending_tags: BTreeSet<String> = BTreeSet::new();
    let mut feature_tags = BTreeSet::new();
    let mut background: Steps = Vec::new();
    // The block being read: (kind, name, tags, steps).
    let mut cur: Option<Block> = None;
    let mut examples: Option<(BTreeSet<String>, Vec<Vec<String>>)> = None;
    let flush_examples = |cur: &Option<Block>,
                          ex: &mut Option<(BTreeSet<String>, Vec<Vec<String>>)>,
                          background: &Steps,
                          out: &mut Vec<Scenario>| {
        if let (Some((_, name, tags, steps)), Some((ex_tags, rows))) = (cur, ex.take()) {
            let header = &rows[0];
            for row in &rows[1..] {
                let subst = |s: &str| {
                    let mut s = s.to_string();
                    for (h, v) in header.iter().zip(row) {
                        s = s.replace(&format!("<{h}>"), v);
                    }
                    s
                };
                let mut all = background.clone();
                all.extend(steps.iter().map(|(s, t)| (subst(s), t.clone())));
                out.push(Scenario {
                    name: format!("{name} {row:?}"),
                    tags: tags.union(&ex_tags).cloned().collect(),
                    steps: all,
                });
            }
        }
    };
    let close = |cur: &mut Option<Block>, background: &mut Steps, out: &mut Vec<Scenario>| {
        if let Some((kind, name, tags, steps)) = cur.take() {
            match kind.as_str() {
                "Background" => *background = steps,
                "Scenario" => {
                    let mut all = background.clone();
                    all.extend(steps);
                    out.push(Scenario {
                        name,
                        tags,
                        steps: all,
                    });
                }
                _ => {}
            }
        }
    };
    for raw in text.lines() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        if line.starts_with('@') {
            pending_tags.extend(line.split_whitespace().map(str::to_string));
        } else if let Some(rest) = line.strip_prefix("Feature:") {
            let _ = rest;
            feature_tags = std::mem::take(&mut pending_tags);
        } else if line.starts_with("Background:") || line.starts_with("Scenario") {
            flush_examples(&cur, &mut examples, &background, &mut out);
            close(&mut cur, &mut background, &mut out);
            let kind = if line.starts_with("Background:") {
                "Background"
            } else if line.starts_with("Scenario Outline:") {
                "Outline"
            } else {
                "Scenario"
            };
            let name = line
                .split_once(':')
                .map(|x| x.1.trim())
                .unwrap_or("")
                .to_string();
            let tags = feature_tags
                .union(&std::mem::take(&mut pending_tags))
                .cloned()
                .collect();
            cur = Some((kind.to_string(), name, tags, Vec::new()));
        } else if line.starts_with("Examples") {
            flush_examples(&cur, &mut examples, &background, &mut out);
            examples = Some((std::mem::take(&mut pending_tags), Vec::new()));
        } else if line.starts_with('|') {
            if let Some((_, rows)) = examples.as_mut() {
                rows.push(cells(line));
            } else if let Some((_, _, _, steps)) = cur.as_mut() {
                if let Some(last) = steps.last_mut() {
                    last.1.push(cells(line));
                }
            }
        } else if let Some((_, _, _, steps)) = cur.as_mut() {
            let text = line.split_once(' ').map(|x| x.1).unwrap_or(line);
            steps.push((text.to_string(), Vec::new()));
        }
    }
    flush_examples(&cur, &mut examples, &background, &mut out);
    close(&mut cur, &mut background, &mut out);
    out
}

/// The quoted arguments of a step.
fn quoted(step: &str) -> Vec<String> {
    step.split('"')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// The one quoted argument of a step whose value may hold quotes itself
/// (an object's JSON).
fn whole_quoted(step: &str) -> String {
    match (step.find('"'), step.rfind('"')) {
        (Some(a), Some(b)) if b > a => step[a + 1..b].to_string(),
        _ => String::new(),
    }
}

fn typed(kind: &str, s: &str) -> Value {
    match kind {
        "Boolean" => Value::Bool(s == "true"),
        "Integer" => Value::from(s.parse::<i64>().expect("integer")),
        "Float" => serde_json::from_str(s).expect("float"),
        "Object" => serde_json::from_str(s).expect("object JSON"),
        _ => Value::String(s.to_string()),
    }
}

fn same(kind: &str, expected: &str, got: &Value) -> bool {
    match kind {
        "Float" | "Integer" => got.as_f64() == expected.parse::<f64>().ok(),
        _ => typed(kind, expected) == *got,
    }
}

/// Runs one scenario: Err names the step that failed and why.
fn run(ev: &Evaluator, sc: &Scenario) -> Result<(), String> {
    let mut kind = String::new();
    let mut key = String::new();
    let mut fallback = Value::Null;
    let mut ctx = Map::new();
    let mut details: Option<Details> = None;
    for (step, table) in &sc.steps {
        let q = quoted(step);
        if step == "an evaluator" {
        } else if step.contains("-flag with key") {
            kind = step
                .trim_start_matches("a ")
                .split('-')
                .next()
                .unwrap_or("")
                .to_string();
            key = q[0].clone();
            fallback = typed(
                &kind,
                &whole_quoted(step.split_once("fallback value").map(|x| x.1).unwrap_or("")),
            );
        } else if step.starts_with("a context containing a key") {
            ctx.insert(q[0].clone(), typed(&q[1], &q[2]));
        } else if step.starts_with("a context containing a nested property") {
            let inner = ctx
                .entry(q[0].clone())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(m) = inner {
                m.insert(q[1].clone(), Value::String(q[2].clone()));
            }
        } else if step.starts_with("a context containing a targeting key") {
            ctx.insert("targetingKey".into(), Value::String(q[0].clone()));
        } else if step == "the flag was evaluated with details" {
            let expect = match kind.as_str() {
                "Boolean" => Expect::Bool,
                "String" => Expect::String,
                "Integer" => Expect::Int,
                "Float" => Expect::Float,
                "Object" => Expect::Object,
                other => return Err(format!("unknown flag type {other}")),
            };
            let context = Context::new(ctx.clone()).map_err(|e| format!("context: {e:?}"))?;
            let r = ev.evaluate(&key, &context, NOW_S, expect);
            // What an OpenFeature SDK makes of it: the caller's fallback
            // when there is no value; flagd's "no default" is DEFAULT.
            let value = r.value.cloned().unwrap_or_else(|| fallback.clone());
            details = Some((
                value,
                r.reason.as_str().to_string(),
                r.error.map(|(c, _)| c.as_str().to_string()),
                r.metadata.cloned().unwrap_or_default(),
            ));
            let _ = Reason::Default;
        } else if step.starts_with("the resolved details value should be") {
            let (v, ..) = details.as_ref().ok_or("not evaluated")?;
            let want = whole_quoted(step);
            if !same(&kind, &want, v) {
                return Err(format!("value {v} where {want:?} was expected"));
            }
        } else if step.starts_with("the reason should be") {
            let (_, r, ..) = details.as_ref().ok_or("not evaluated")?;
            if *r != q[0] {
                return Err(format!("reason {r} where {} was expected", q[0]));
            }
        } else if step.starts_with("the error-code should be") {
            let (_, _, e, _) = details.as_ref().ok_or("not evaluated")?;
            if e.as_deref() != Some(q[0].as_str()) {
                return Err(format!("error code {e:?} where {} was expected", q[0]));
            }
        } else if step == "the resolved metadata is empty" {
            let (.., m) = details.as_ref().ok_or("not evaluated")?;
            if !m.is_empty() {
                return Err(format!("metadata {m:?} where none was expected"));
            }
        } else if step == "the resolved metadata should contain" {
            let (.., m) = details.as_ref().ok_or("not evaluated")?;
            for row in &table[1..] {
                let got = m.get(&row[0]).ok_or(format!("no metadata {:?}", row[0]))?;
                if !same(&row[1], &row[2], got) {
                    return Err(format!("metadata {:?} is {got}, not {}", row[0], row[2]));
                }
            }
        } else {
            return Err(format!("step not understood: {step}"));
        }
    }
    Ok(())
}

#[test]
fn flagd_testbed_evaluator_suite_passes() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/testbed");
    let flags: Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{dir}/testkit-flags.json")).expect("testkit flags"),
    )
    .expect("JSON");
    let ev = Evaluator::new(&FlagSet::from_json(&flags).expect("the testkit's flag set parses"));
    let mut files: Vec<_> = std::fs::read_dir(format!("{dir}/gherkin"))
        .expect("gherkin dir")
        .map(|e| e.expect("entry").path())
        .collect();
    files.sort();
    let (mut passed, mut not_applicable, mut failed, mut deviating) =
        (0, 0, Vec::new(), Vec::new());
    for f in &files {
        for sc in parse(&std::fs::read_to_string(f).expect("feature")) {
            if sc.tags.contains("@fractional-v1") {
                not_applicable += 1;
                continue;
            }
            let deviation = KNOWN_DEVIATIONS.iter().find(|(name, _)| sc.name == *name);
            match (run(&ev, &sc), deviation) {
                (Err(_), Some(_)) => deviating.push(sc.name.clone()),
                (Ok(()), Some((name, _))) => failed.push(format!(
                    "{name}: listed as a known deviation but passes now"
                )),
                (Ok(()), None) => passed += 1,
                (Err(e), None) => failed.push(format!(
                    "{}: {}: {e}",
                    f.file_name()
                        .map(|n| n.to_string_lossy().to_string())
                        .unwrap_or_default(),
                    sc.name
                )),
            }
        }
    }
    println!(
        "flagd-testbed evaluator suite: {passed} passed, {} failed, {} known deviations {deviating:?}, {not_applicable} not applicable (@fractional-v1), from {} feature files",
        failed.len(),
        deviating.len(),
        files.len()
    );
    assert!(
        failed.is_empty(),
        "failing scenarios:\n{}",
        failed.join("\n")
    );
    // The suite at the vendored commit has well over a hundred cases; a
    // parser that silently read none must not pass.
    assert!(passed >= 100, "only {passed} scenarios ran");
}
