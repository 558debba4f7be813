//! BENCHMARKS.md: the table of figures, each with its baseline from the same run, and the
//! conditions of the run.

use std::fmt::Write as _;
use std::path::Path;

/// Whether a figure meets its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Met {
    /// It does.
    Yes,
    /// It does not.
    No,
    /// The figure has no target (reported for information).
    Info,
}

/// One line of the table.
#[derive(Debug, Clone)]
pub struct Row {
    /// Number and name, e.g. `1a. Warm /mutate throughput`.
    pub figure: String,
    /// The measured value, with its unit.
    pub value: String,
    /// The baseline measured in the same run, with its unit and what it is.
    pub baseline: String,
    /// value ÷ baseline, formatted.
    pub ratio: String,
    /// The target, e.g. `≥ 0.7×`.
    pub target: String,
    /// Whether it is met.
    pub met: Met,
    /// How to reproduce it.
    pub command: String,
}

/// `a / b` as `0.83×`, or `—`.
pub fn ratio(a: f64, b: f64) -> String {
    if b > 0.0 && a.is_finite() {
        format!("{:.2}×", a / b)
    } else {
        "—".into()
    }
}

/// Everything the report says besides the rows.
#[derive(Debug, Clone, Default)]
pub struct Context {
    /// When the run started (UTC, RFC 3339).
    pub started: String,
    /// How long it took.
    pub seconds: f64,
    /// `git describe`-like commit.
    pub commit: String,
    /// `rustc -V`.
    pub rustc: String,
    /// CPU model and count.
    pub cpu: String,
    /// /proc/loadavg at the start and at the end.
    pub load: (String, String),
    /// How processes were placed on CPUs.
    pub pinning: String,
    /// Free text from `BENCH_NOTE` (e.g. "the machine was shared with 3 builds").
    pub note: Option<String>,
    /// Hand-written sections appended verbatim (method, hot-path work).
    pub appendix: String,
    /// Details per figure (rounds, raw numbers).
    pub details: Vec<String>,
}

/// Renders BENCHMARKS.md.
pub fn render(rows: &[Row], ctx: &Context) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "# pinhook benchmarks\n");
    let _ = writeln!(
        s,
        "Written by `make bench` ([`benches/e2e/`](benches/e2e/main.rs)) on {} in {:.0} s. \
         Every figure comes with a baseline measured in the same run, on the same machine, \
         with the same client and certificate; compare ratios, not absolute numbers, across \
         machines.\n",
        ctx.started, ctx.seconds
    );
    let _ = writeln!(s, "| | |\n|---|---|");
    let _ = writeln!(s, "| Commit | `{}` |", ctx.commit);
    let _ = writeln!(s, "| Compiler | `{}` |", ctx.rustc);
    let _ = writeln!(s, "| CPU | {} |", ctx.cpu);
    let _ = writeln!(
        s,
        "| Load average (1, 5, 15 min) | start `{}`, end `{}` |",
        ctx.load.0, ctx.load.1
    );
    let _ = writeln!(s, "| CPU placement | {} |", ctx.pinning);
    if let Some(note) = &ctx.note {
        let _ = writeln!(s, "| Note | {note} |");
    }
    let _ = writeln!(s);
    let misses = rows.iter().filter(|r| r.met == Met::No).count();
    let _ = writeln!(
        s,
        "**{} of {} figures with a target meet it.**\n",
        rows.iter().filter(|r| r.met == Met::Yes).count(),
        rows.iter().filter(|r| r.met != Met::Info).count()
    );
    if misses > 0 {
        let _ = writeln!(s, "Figures marked ❌ miss their target in this run.\n");
    }
    let _ = writeln!(
        s,
        "| Figure | Value | Baseline (same run) | Ratio | Target | Met | Command |"
    );
    let _ = writeln!(s, "|---|---|---|---|---|---|---|");
    for r in rows {
        let met = match r.met {
            Met::Yes => "✅",
            Met::No => "❌",
            Met::Info => "—",
        };
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} | {} | {} |",
            cell(&r.figure),
            cell(&r.value),
            cell(&r.baseline),
            cell(&r.ratio),
            cell(&r.target),
            met,
            cell(&r.command)
        );
    }
    if !ctx.details.is_empty() {
        let _ = writeln!(s, "\n## Raw numbers of this run\n");
        for d in &ctx.details {
            let _ = writeln!(s, "- {d}");
        }
    }
    if !ctx.appendix.is_empty() {
        let _ = writeln!(s, "\n{}", ctx.appendix.trim_end());
    }
    s
}

/// A table cell: no line breaks, `|` escaped.
fn cell(s: &str) -> String {
    s.replace('\n', " ").replace('|', "\\|")
}

/// Writes `text` to `path`.
pub fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
