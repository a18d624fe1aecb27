//! Results: one row per measured case, appended as JSON to `target/bench/results.jsonl` as it is
//! measured, and printed as a table at the end.

use std::fs::File;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context;
use serde_json::{Map, Value, json};

/// Where results are appended, relative to the workspace root.
pub const RESULTS_DIR: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../target/bench");

/// What a case should reach.
#[derive(Clone, Copy, Debug)]
pub enum Target {
    /// value / baseline at least this.
    RatioAtLeast(f64),
    /// value / baseline at most this.
    RatioAtMost(f64),
    /// value at most this.
    AtMost(f64),
}

impl Target {
    fn describe(&self, unit: &str) -> String {
        match self {
            Target::RatioAtLeast(r) => format!("≥{r}×"),
            Target::RatioAtMost(r) => format!("≤{r}×"),
            Target::AtMost(v) => format!("≤{v} {unit}"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct Row {
    bench: &'static str,
    case: String,
    metric: &'static str,
    value: f64,
    unit: &'static str,
    baseline: Option<f64>,
    target: Option<Target>,
    extra: Map<String, Value>,
}

impl Row {
    pub fn new(
        bench: &'static str,
        case: impl Into<String>,
        metric: &'static str,
        value: f64,
        unit: &'static str,
    ) -> Self {
        Self {
            bench,
            case: case.into(),
            metric,
            value,
            unit,
            baseline: None,
            target: None,
            extra: Map::new(),
        }
    }

    pub fn baseline(mut self, baseline: f64) -> Self {
        self.baseline = Some(baseline);
        self
    }

    pub fn target(mut self, target: Target) -> Self {
        self.target = Some(target);
        self
    }

    pub fn extra(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.extra.insert(key.into(), value.into());
        self
    }

    fn ratio(&self) -> Option<f64> {
        self.baseline.filter(|b| *b > 0.0).map(|b| self.value / b)
    }

    fn met(&self) -> Option<bool> {
        match self.target? {
            Target::RatioAtLeast(r) => self.ratio().map(|ratio| ratio >= r),
            Target::RatioAtMost(r) => self.ratio().map(|ratio| ratio <= r),
            Target::AtMost(v) => Some(self.value <= v),
        }
    }
}

/// Collects rows, appends each to the results file as it is measured.
pub struct Report {
    pub run: u64,
    quick: bool,
    path: PathBuf,
    file: File,
    rows: Vec<Row>,
    notes: Vec<String>,
}

impl Report {
    pub fn open(quick: bool) -> anyhow::Result<Self> {
        let dir = PathBuf::from(RESULTS_DIR);
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("failed to create {}", dir.display()))?;
        let dir = dir.canonicalize().unwrap_or(dir);
        let path = dir.join("results.jsonl");
        let file = File::options()
            .create(true)
            .append(true)
            .open(&path)
            .with_context(|| format!("failed to open {}", path.display()))?;
        let run = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        Ok(Self {
            run,
            quick,
            path,
            file,
            rows: Vec::new(),
            notes: Vec::new(),
        })
    }

    pub fn add(&mut self, row: Row) -> anyhow::Result<()> {
        let mut object = Map::new();
        object.insert("bench".into(), json!(row.bench));
        object.insert("case".into(), json!(row.case));
        object.insert("metric".into(), json!(row.metric));
        object.insert("value".into(), json!(round(row.value)));
        object.insert("unit".into(), json!(row.unit));
        if let Some(baseline) = row.baseline {
            object.insert("baseline".into(), json!(round(baseline)));
        }
        if let Some(ratio) = row.ratio() {
            object.insert("ratio".into(), json!(round(ratio)));
        }
        if let Some(target) = row.target {
            object.insert("target".into(), json!(target.describe(row.unit)));
        }
        if let Some(met) = row.met() {
            object.insert("met".into(), json!(met));
        }
        object.insert("run".into(), json!(self.run));
        object.insert("quick".into(), json!(self.quick));
        object.insert(
            "cpus".into(),
            json!(std::thread::available_parallelism().map_or(0, |n| n.get())),
        );
        for (k, v) in &row.extra {
            object.insert(k.clone(), v.clone());
        }
        let line = serde_json::to_string(&Value::Object(object))?;
        writeln!(self.file, "{line}")
            .with_context(|| format!("failed to append to {}", self.path.display()))?;
        self.file.flush()?;
        eprintln!(
            "  -> {} {}: {} {}{}",
            row.bench,
            row.case,
            format_value(row.value, row.unit),
            row.unit,
            row.ratio()
                .map(|r| format!(" ({r:.2}× baseline)"))
                .unwrap_or_default()
        );
        self.rows.push(row);
        Ok(())
    }

    pub fn note(&mut self, note: String) {
        eprintln!("note: {note}");
        self.notes.push(note);
    }

    pub fn print_table(&self) {
        let header = [
            "bench", "case", "value", "unit", "baseline", "ratio", "target", "met?",
        ];
        let cells: Vec<[String; 8]> = self
            .rows
            .iter()
            .map(|r| {
                [
                    r.bench.to_owned(),
                    r.case.clone(),
                    format_value(r.value, r.unit),
                    r.unit.to_owned(),
                    r.baseline
                        .map(|b| format_value(b, r.unit))
                        .unwrap_or_default(),
                    r.ratio().map(|x| format!("{x:.2}×")).unwrap_or_default(),
                    r.target.map(|t| t.describe(r.unit)).unwrap_or_default(),
                    match r.met() {
                        Some(true) => "yes".into(),
                        Some(false) => "NO".into(),
                        None => String::new(),
                    },
                ]
            })
            .collect();
        let mut widths = header.map(|h| h.chars().count());
        for row in &cells {
            for (w, cell) in widths.iter_mut().zip(row) {
                *w = (*w).max(cell.chars().count());
            }
        }
        // Text columns left-aligned, numbers right-aligned.
        let numeric = [false, false, true, false, true, true, false, false];
        let line = |row: &[String]| {
            let mut out = String::new();
            for (i, cell) in row.iter().enumerate() {
                let pad = widths[i] - cell.chars().count();
                if i > 0 {
                    out.push_str("  ");
                }
                if numeric[i] {
                    out.push_str(&" ".repeat(pad));
                    out.push_str(cell);
                } else {
                    out.push_str(cell);
                    out.push_str(&" ".repeat(pad));
                }
            }
            out.trim_end().to_owned()
        };
        let header: Vec<String> = header.iter().map(|h| h.to_string()).collect();
        println!();
        println!("{}", line(&header));
        let total: usize = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        println!("{}", "-".repeat(total));
        for row in &cells {
            println!("{}", line(row));
        }
        for note in &self.notes {
            println!("{note}");
        }
        let judged: Vec<bool> = self.rows.iter().filter_map(Row::met).collect();
        if !judged.is_empty() {
            println!(
                "targets met: {}/{}",
                judged.iter().filter(|m| **m).count(),
                judged.len()
            );
        }
        println!("results appended to {}", self.path.display());
    }
}

/// The machine's noise as seen in two measurements `a` and `b` of the same case: how far apart
/// they are, in percent of their mean. Returns the row (with each measurement under its key)
/// and the percentage.
pub fn noise_row(
    bench: &'static str,
    case: String,
    (a_key, a): (&str, f64),
    (b_key, b): (&str, f64),
) -> (Row, f64) {
    let noise = (a - b).abs() / ((a + b) / 2.0) * 100.0;
    let row = Row::new(bench, case, "relative_difference", noise, "%")
        .extra(a_key, round(a))
        .extra(b_key, round(b));
    (row, noise)
}

pub fn round(x: f64) -> f64 {
    (x * 1e4).round() / 1e4
}

fn format_value(v: f64, unit: &str) -> String {
    match unit {
        "ops/s" | "keys/s" | "entries" | "keys" | "round trips" => format!("{v:.0}"),
        "s" => format!("{v:.3}"),
        "ms" => format!("{v:.2}"),
        "%" => format!("{v:.1}"),
        _ => format!("{v:.1}"),
    }
}
