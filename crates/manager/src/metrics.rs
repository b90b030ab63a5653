//! Operational counters, rendered as Prometheus text by the API.
//!
//! Plain atomics: the hot path (a fork) pays a few relaxed increments.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

/// Upper bounds (seconds) of the fork latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];

#[derive(Default)]
pub struct Histogram {
    counts: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    /// Sum in microseconds.
    sum_us: AtomicU64,
}

impl Histogram {
    pub fn observe_ms(&self, ms: f64) {
        let s = ms / 1e3;
        for (i, b) in BUCKETS.iter().enumerate() {
            if s <= *b {
                self.counts[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add((ms * 1e3) as u64, Ordering::Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        for (i, b) in BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}le=\"{b}\"}} {}",
                self.counts[i].load(Ordering::Relaxed)
            );
        }
        let n = self.count.load(Ordering::Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}le=\"+Inf\"}} {n}");
        let _ = writeln!(
            out,
            "{name}_sum{{{}}} {}",
            labels.trim_end_matches(','),
            self.sum_us.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{{{}}} {n}", labels.trim_end_matches(','));
    }
}

#[derive(Default)]
pub struct Metrics {
    pub forks: AtomicU64,
    pub forks_failed: AtomicU64,
    pub fork_running: Histogram,
    pub fork_ready: Histogram,
    pub pool_hits: AtomicU64,
    pub pool_misses: AtomicU64,
    pub shares_linked: AtomicU64,
    pub shares_copied: AtomicU64,
    pub unshares: AtomicU64,
    /// Console logs trimmed to their cap (`console.rs`).
    pub console_trims: AtomicU64,
    /// Fallback reasons (errno names) of shares and unshares, with counts.
    pub fallbacks: Mutex<Vec<(String, u64)>>,
}

impl Metrics {
    pub fn fallback(&self, reason: &str) {
        let mut f = self.fallbacks.lock().expect("fallbacks");
        match f.iter_mut().find(|(r, _)| r == reason) {
            Some((_, n)) => *n += 1,
            None => f.push((reason.to_string(), 1)),
        }
    }

    /// Prometheus text exposition; `states` are instance counts per state.
    pub fn render(&self, states: &[(&str, usize)]) -> String {
        let mut o = String::new();
        let c = |o: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(o, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}");
        };
        c(
            &mut o,
            "tine_forks_total",
            "Forks attempted.",
            self.forks.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "tine_forks_failed_total",
            "Forks that failed (and were removed).",
            self.forks_failed.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "tine_pool_hits_total",
            "Forks served by a warm pool entry.",
            self.pool_hits.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "tine_pool_misses_total",
            "Forks of a pooled source that found the pool empty.",
            self.pool_misses.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "tine_unshares_total",
            "Memory files given a private copy before a write.",
            self.unshares.load(Ordering::Relaxed),
        );
        c(
            &mut o,
            "tine_console_trims_total",
            "Times a console log over its cap lost its oldest part.",
            self.console_trims.load(Ordering::Relaxed),
        );
        let _ = writeln!(o, "# HELP tine_memory_shares_total Memory files shared with a fork, by method.\n# TYPE tine_memory_shares_total counter");
        let _ = writeln!(
            o,
            "tine_memory_shares_total{{method=\"link\"}} {}",
            self.shares_linked.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            o,
            "tine_memory_shares_total{{method=\"copy\"}} {}",
            self.shares_copied.load(Ordering::Relaxed)
        );
        let _ = writeln!(o, "# HELP tine_storage_fallbacks_total Link/reflink fallbacks, by errno.\n# TYPE tine_storage_fallbacks_total counter");
        for (reason, n) in self.fallbacks.lock().expect("fallbacks").iter() {
            let _ = writeln!(o, "tine_storage_fallbacks_total{{reason=\"{reason}\"}} {n}");
        }
        let _ = writeln!(o, "# HELP tine_fork_seconds Fork latency from request to vCPUs running / agent ready.\n# TYPE tine_fork_seconds histogram");
        self.fork_running
            .render(&mut o, "tine_fork_seconds", "stage=\"running\",");
        self.fork_ready
            .render(&mut o, "tine_fork_seconds", "stage=\"ready\",");
        let _ = writeln!(
            o,
            "# HELP tine_instances Instances by state.\n# TYPE tine_instances gauge"
        );
        for (state, n) in states {
            let _ = writeln!(o, "tine_instances{{state=\"{state}\"}} {n}");
        }
        o
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_text_is_well_formed() {
        let m = Metrics::default();
        m.fork_running.observe_ms(3.0);
        m.fork_running.observe_ms(70.0);
        m.fallback("EXDEV");
        m.fallback("EXDEV");

        let text = m.render(&[("running", 2)]);

        assert!(text.contains("tine_fork_seconds_bucket{stage=\"running\",le=\"0.005\"} 1"));
        assert!(text.contains("tine_fork_seconds_bucket{stage=\"running\",le=\"0.1\"} 2"));
        assert!(text.contains("tine_fork_seconds_count{stage=\"running\"} 2"));
        assert!(text.contains("tine_storage_fallbacks_total{reason=\"EXDEV\"} 2"));
        assert!(text.contains("tine_instances{state=\"running\"} 2"));
    }
}
