//! Results: each one our figure, the baseline's from the same run, and their ratio.

use std::time::Duration;

use serde_json::{json, Value};

/// One comparison.
#[derive(Debug, Clone)]
pub struct Row {
    /// What was measured.
    pub name: String,
    /// Unit of both figures.
    pub unit: &'static str,
    /// Ours.
    pub ours: f64,
    /// What we compare with, and its figure.
    pub baseline_name: String,
    pub baseline: f64,
    /// Whether a larger figure is better (rates) or worse (times, sizes).
    pub higher_is_better: bool,
}

impl Row {
    /// ours / baseline.
    pub fn ratio(&self) -> f64 {
        if self.baseline == 0.0 {
            f64::NAN
        } else {
            self.ours / self.baseline
        }
    }
}

/// Every row of a run, printed as they come and summed up at the end.
#[derive(Debug, Default)]
pub struct Report {
    rows: Vec<Row>,
}

impl Report {
    /// Records and prints one comparison.
    pub fn add(
        &mut self,
        name: &str,
        unit: &'static str,
        ours: f64,
        baseline_name: &str,
        baseline: f64,
        higher_is_better: bool,
    ) {
        let row = Row {
            name: name.to_string(),
            unit,
            ours,
            baseline_name: baseline_name.to_string(),
            baseline,
            higher_is_better,
        };
        println!(
            "  {:<52} ours {:>12} {unit:<6} | {:<34} {:>12} {unit:<6} | ratio {}{}",
            row.name,
            fmt(row.ours),
            row.baseline_name,
            fmt(row.baseline),
            fmt_ratio(row.ratio()),
            if row.higher_is_better {
                " (higher is better)"
            } else {
                ""
            }
        );
        self.rows.push(row);
    }

    /// The table of every row.
    pub fn print_summary(&self) {
        println!("\nsummary (ratio = ours / baseline)");
        println!(
            "| benchmark | ours | baseline | baseline figure | ratio |\n|---|---|---|---|---|"
        );
        for r in &self.rows {
            println!(
                "| {} | {} {} | {} | {} {} | {}{} |",
                r.name,
                fmt(r.ours),
                r.unit,
                r.baseline_name,
                fmt(r.baseline),
                r.unit,
                fmt_ratio(r.ratio()),
                if r.higher_is_better {
                    " (higher is better)"
                } else {
                    ""
                }
            );
        }
    }

    /// The rows as JSON.
    pub fn to_json(&self) -> Value {
        Value::Array(
            self.rows
                .iter()
                .map(|r| {
                    json!({
                        "name": r.name, "unit": r.unit, "ours": r.ours,
                        "baseline_name": r.baseline_name, "baseline": r.baseline,
                        "ratio": r.ratio(), "higher_is_better": r.higher_is_better
                    })
                })
                .collect(),
        )
    }
}

fn fmt(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

/// The `p`-th percentile (0..=100) of `samples` (sorted here), nearest rank.
pub fn percentile(samples: &mut [Duration], p: f64) -> Duration {
    if samples.is_empty() {
        return Duration::ZERO;
    }
    samples.sort_unstable();
    let rank = ((p / 100.0) * samples.len() as f64).ceil() as usize;
    samples[rank.clamp(1, samples.len()) - 1]
}

/// Milliseconds as f64.
pub fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// A ratio with three decimals, or in scientific notation when that would print 0.000.
fn fmt_ratio(r: f64) -> String {
    if r != 0.0 && r.abs() < 0.001 {
        format!("{r:.2e}")
    } else {
        format!("{r:.3}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let mut v: Vec<Duration> = (1..=100).rev().map(Duration::from_millis).collect();
        assert_eq!(percentile(&mut v, 50.0), Duration::from_millis(50));
        assert_eq!(percentile(&mut v, 99.0), Duration::from_millis(99));
        assert_eq!(percentile(&mut v, 100.0), Duration::from_millis(100));
        assert_eq!(percentile(&mut [], 50.0), Duration::ZERO);
    }

    #[test]
    fn ratio_is_ours_over_baseline() {
        let mut r = Report::default();
        r.add("x", "ms", 2.0, "ref", 4.0, false);
        assert_eq!(r.rows[0].ratio(), 0.5);
        assert_eq!(fmt_ratio(0.5), "0.500");
        assert_eq!(fmt_ratio(0.0000104), "1.04e-5");
        assert_eq!(r.to_json()[0]["ratio"], 0.5);
    }
}
