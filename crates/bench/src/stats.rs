//! The statistics every bench reports with: one median, one spread, one percentile.
//!
//! NaN (a cell that measured nothing) is left out everywhere; infinities are kept (the swarm
//! counts a missing copy as infinitely late). An empty input (after filtering) has no value.

/// The values that are numbers, sorted.
fn sorted(values: &[f64]) -> Vec<f64> {
    let mut v: Vec<f64> = values.iter().copied().filter(|x| !x.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    v
}

/// The median of the values that are not NaN: the middle one, or the mean of the middle two
/// for an even count. `None` when there is none.
pub(crate) fn median(values: &[f64]) -> Option<f64> {
    let v = sorted(values);
    let mid = v.len() / 2;
    match v.len() {
        0 => None,
        n if n % 2 == 1 => v.get(mid).copied(),
        _ => Some((v[mid - 1] + v[mid]) / 2.0),
    }
}

/// The median, smallest and largest of a set of runs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct Spread {
    /// See [`median`].
    pub(crate) median: f64,
    /// The smallest value.
    pub(crate) min: f64,
    /// The largest value.
    pub(crate) max: f64,
}

impl Spread {
    /// What a table prints for no runs.
    pub(crate) const NAN: Spread = Spread {
        median: f64::NAN,
        min: f64::NAN,
        max: f64::NAN,
    };

    /// The spread of the values that are not NaN; `None` when there is none.
    pub(crate) fn of(values: &[f64]) -> Option<Spread> {
        let v = sorted(values);
        Some(Spread {
            median: median(&v)?,
            min: *v.first()?,
            max: *v.last()?,
        })
    }
}

/// Nearest-rank percentile (`percent` in 1..=100): the smallest sample with at least that
/// share of the samples at or below it. `None` for no samples. Reorders `samples`.
pub(crate) fn percentile<T: Ord + Copy>(samples: &mut [T], percent: usize) -> Option<T> {
    if samples.is_empty() {
        return None;
    }
    let n = samples.len();
    let rank = (n * percent.min(100)).div_ceil(100).max(1) - 1;
    let (_, at, _) = samples.select_nth_unstable(rank);
    Some(*at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn medians() {
        assert_eq!(median(&[]), None);
        assert_eq!(median(&[f64::NAN]), None);
        assert_eq!(median(&[3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(&[4.0, f64::NAN, 2.0]), Some(3.0));
        assert_eq!(
            median(&[1.0, f64::INFINITY, f64::INFINITY]),
            Some(f64::INFINITY)
        );
    }

    #[test]
    fn spreads_and_percentiles() {
        let s = Spread::of(&[2.0, f64::NAN, 1.0, 3.0]);
        assert_eq!(
            s,
            Some(Spread {
                median: 2.0,
                min: 1.0,
                max: 3.0
            })
        );
        assert_eq!(Spread::of(&[f64::NAN]), None);
        let mut v: Vec<u32> = (1..=100).rev().collect();
        assert_eq!(percentile(&mut v, 99), Some(99));
        assert_eq!(percentile(&mut v, 100), Some(100));
        assert_eq!(percentile(&mut [7u32], 99), Some(7));
        assert_eq!(percentile::<u32>(&mut [], 99), None);
    }

    proptest! {
        #[test]
        fn median_splits_the_values(mut v in proptest::collection::vec(-1e9f64..1e9, 1..50)) {
            let m = median(&v).expect("non-empty");
            let below = v.iter().filter(|x| **x < m).count();
            let above = v.iter().filter(|x| **x > m).count();
            prop_assert!(below <= v.len() / 2 && above <= v.len() / 2);
            // Order and NaNs do not matter.
            v.reverse();
            v.push(f64::NAN);
            prop_assert_eq!(median(&v), Some(m));
        }

        #[test]
        fn spread_brackets_the_median(v in proptest::collection::vec(-1e9f64..1e9, 1..50)) {
            let s = Spread::of(&v).expect("non-empty");
            prop_assert!(s.min <= s.median && s.median <= s.max);
            prop_assert!(v.iter().all(|x| s.min <= *x && *x <= s.max));
        }

        #[test]
        fn percentile_is_nearest_rank(
            mut v in proptest::collection::vec(0u32..1000, 1..200),
            percent in 1usize..=100,
        ) {
            let at = percentile(&mut v, percent).expect("non-empty");
            let p = percent as f64;
            let at_or_below = v.iter().filter(|x| **x <= at).count() as f64;
            let below = v.iter().filter(|x| **x < at).count() as f64;
            let n = v.len() as f64;
            prop_assert!(at_or_below >= p / 100.0 * n - 1e-9);
            prop_assert!(below < p / 100.0 * n + 1e-9);
        }
    }
}
