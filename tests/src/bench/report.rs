//! Latency series, the printed table and the JSON report.

use std::time::Duration;

use serde_json::{Value, json};

/// One latency series.
#[derive(Debug, Clone)]
pub struct Series {
    /// What was measured.
    pub name: String,
    /// One sample per operation.
    pub samples: Vec<Duration>,
}

impl Series {
    /// A series named `name`.
    pub fn new(name: impl Into<String>, samples: Vec<Duration>) -> Self {
        Self {
            name: name.into(),
            samples,
        }
    }

    /// The `p` quantile (0..=1); zero for an empty series.
    pub fn percentile(&self, p: f64) -> Duration {
        let mut sorted = self.samples.clone();
        sorted.sort();
        if sorted.is_empty() {
            return Duration::ZERO;
        }
        let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
        sorted[index]
    }

    /// The median.
    pub fn p50(&self) -> Duration {
        self.percentile(0.5)
    }

    /// The 99th percentile.
    pub fn p99(&self) -> Duration {
        self.percentile(0.99)
    }

    /// p50/p90/p99 in microseconds and the count.
    pub fn json(&self) -> Value {
        json!({
            "n": self.samples.len(),
            "p50_us": micros(self.p50()),
            "p90_us": micros(self.percentile(0.9)),
            "p99_us": micros(self.p99()),
        })
    }
}

/// Microseconds, as a float.
pub fn micros(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// A duration in the unit that reads best.
pub fn human(d: Duration) -> String {
    let us = micros(d);
    if us < 1000.0 {
        format!("{us:.0} µs")
    } else if us < 1_000_000.0 {
        format!("{:.2} ms", us / 1000.0)
    } else {
        format!("{:.2} s", us / 1e6)
    }
}

/// Whether a target was met.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Met.
    Met,
    /// Not met.
    Missed,
    /// Nothing to judge against.
    Info,
}

impl Verdict {
    /// `met` as a verdict.
    pub fn of(met: bool) -> Self {
        if met { Self::Met } else { Self::Missed }
    }

    fn mark(self) -> &'static str {
        match self {
            Self::Met => "met",
            Self::Missed => "MISSED",
            Self::Info => "",
        }
    }
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Row {
    section: String,
    what: String,
    figure: String,
    target: String,
    verdict: Verdict,
}

/// The whole report: table rows plus a JSON object of every figure.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
    section: String,
    json: serde_json::Map<String, Value>,
}

impl Report {
    /// Starts a section of the table.
    pub fn section(&mut self, title: &str) {
        self.section = title.to_owned();
        println!("\n{title}");
    }

    /// A row with a target; printed now too.
    pub fn row(&mut self, what: &str, figure: String, target: &str, verdict: Verdict) {
        println!("  {what:<58} {figure:<34} {target:<22} {}", verdict.mark());
        self.rows.push(Row {
            section: self.section.clone(),
            what: what.to_owned(),
            figure,
            target: target.to_owned(),
            verdict,
        });
    }

    /// A latency series as a row (p50 / p99) without a target.
    pub fn series(&mut self, series: &Series) {
        self.row(
            &series.name.clone(),
            format!("p50 {}  p99 {}", human(series.p50()), human(series.p99())),
            "",
            Verdict::Info,
        );
    }

    /// Records a JSON figure under `key`.
    pub fn put(&mut self, key: &str, value: Value) {
        self.json.insert(key.to_owned(), value);
    }

    /// The table as Markdown (for the README), grouped by section.
    pub fn markdown(&self) -> String {
        let mut out = String::from("| What | Figure | Target | |\n|---|---|---|---|\n");
        let mut section = "";
        for row in &self.rows {
            if row.section != section {
                section = &row.section;
                out.push_str(&format!("| **{section}** | | | |\n"));
            }
            out.push_str(&format!(
                "| {} | {} | {} | {} |\n",
                row.what,
                row.figure,
                row.target,
                row.verdict.mark()
            ));
        }
        out
    }

    /// Every figure and the table's verdicts as one JSON object.
    pub fn to_json(&self) -> Value {
        let mut object = self.json.clone();
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({"section": r.section, "what": r.what, "figure": r.figure, "target": r.target, "verdict": r.verdict.mark()})
            })
            .collect();
        object.insert("table".into(), Value::Array(rows));
        Value::Object(object)
    }
}
