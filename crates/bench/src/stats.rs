//! Order statistics for latency samples.
//!
//! Percentiles use the nearest-rank method on the sorted samples: pXX is the
//! smallest sample such that at least XX% of the samples are <= it. With 25
//! samples p95 is the 24th and p99 the 25th (the max); with 5 samples p50 is
//! the 3rd (the median). No interpolation: every figure reported is a value
//! that was actually measured.

use serde::Serialize;

/// Summary of a set of samples (milliseconds or bytes).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Summary {
    pub n: usize,
    pub min: f64,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
    pub mean: f64,
}

/// Nearest-rank percentile of already sorted samples; `None` when empty.
pub fn percentile_sorted(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Nearest-rank percentile of unsorted samples (NaNs are dropped).
pub fn percentile(samples: &[f64], p: f64) -> Option<f64> {
    percentile_sorted(&sorted(samples), p)
}

/// The median as nearest-rank p50 (for an even count: the lower middle).
pub fn median(samples: &[f64]) -> Option<f64> {
    percentile(samples, 50.0)
}

fn sorted(samples: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = samples.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(|a, b| a.partial_cmp(b).expect("no NaN"));
    v
}

impl Summary {
    pub fn of(samples: &[f64]) -> Option<Summary> {
        let s = sorted(samples);
        if s.is_empty() {
            return None;
        }
        let pct = |p| percentile_sorted(&s, p).expect("non-empty");
        Some(Summary {
            n: s.len(),
            min: s[0],
            p50: pct(50.0),
            p95: pct(95.0),
            p99: pct(99.0),
            max: s[s.len() - 1],
            mean: s.iter().sum::<f64>() / s.len() as f64,
        })
    }
}

/// `a / b`, or `None` when either is missing or `b` is zero.
pub fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b != 0.0 => Some(a / b),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_has_no_summary() {
        assert!(Summary::of(&[]).is_none());
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn single_sample_is_every_percentile() {
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!(
            (s.n, s.min, s.p50, s.p95, s.p99, s.max, s.mean),
            (1, 7.0, 7.0, 7.0, 7.0, 7.0, 7.0)
        );
    }

    #[test]
    fn median_of_five_is_the_third_whatever_the_order() {
        assert_eq!(median(&[50.0, 10.0, 40.0, 20.0, 30.0]), Some(30.0));
    }

    #[test]
    fn even_count_median_is_the_lower_middle() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), Some(2.0));
    }

    #[test]
    fn nearest_rank_on_one_to_hundred() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), Some(50.0));
        assert_eq!(percentile(&v, 95.0), Some(95.0));
        assert_eq!(percentile(&v, 99.0), Some(99.0));
        assert_eq!(percentile(&v, 100.0), Some(100.0));
        assert_eq!(percentile(&v, 0.0), Some(1.0));
    }

    #[test]
    fn burst_of_25_p95_is_24th_and_p99_is_max() {
        let v: Vec<f64> = (1..=25).rev().map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert_eq!((s.p50, s.p95, s.p99, s.max), (13.0, 24.0, 25.0, 25.0));
        assert_eq!(s.mean, 13.0);
    }

    #[test]
    fn nans_are_ignored() {
        let s = Summary::of(&[f64::NAN, 2.0, 1.0]).unwrap();
        assert_eq!((s.n, s.min, s.max), (2, 1.0, 2.0));
    }

    #[test]
    fn ratios_need_both_sides() {
        assert_eq!(ratio(Some(6.0), Some(3.0)), Some(2.0));
        assert_eq!(ratio(Some(6.0), Some(0.0)), None);
        assert_eq!(ratio(None, Some(3.0)), None);
    }
}
