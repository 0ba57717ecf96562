//! Robust statistics the rules use: medians, maxima, shares and the
//! Theil–Sen slope. Inputs are a few hundred values at most.

use std::time::Duration;

use super::history::{Series, Window};

/// Median of the values; `None` without any.
pub(crate) fn median(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    let mut values: Vec<f64> = values.into_iter().filter(|v| !v.is_nan()).collect();
    median_in_place(&mut values)
}

fn median_in_place(values: &mut [f64]) -> Option<f64> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let (_, upper, _) = values.select_nth_unstable_by(n / 2, f64::total_cmp);
    let upper = *upper;
    if n % 2 == 1 {
        return Some(upper);
    }
    let lower = values[..n / 2]
        .iter()
        .copied()
        .max_by(f64::total_cmp)
        .unwrap_or(upper);
    Some((lower + upper) / 2.0)
}

/// Largest of the values; `None` without any.
pub(crate) fn max(values: impl IntoIterator<Item = f64>) -> Option<f64> {
    values
        .into_iter()
        .filter(|v| !v.is_nan())
        .max_by(f64::total_cmp)
}

/// Share of the values for which `holds` is true; `None` without any.
pub(crate) fn share(
    values: impl IntoIterator<Item = f64>,
    holds: impl Fn(f64) -> bool,
) -> Option<f64> {
    let (mut count, mut hits) = (0usize, 0usize);
    for value in values {
        count += 1;
        hits += usize::from(holds(value));
    }
    (count > 0).then(|| hits as f64 / count as f64)
}

/// Theil–Sen estimator: the median of the slopes between every pair of
/// points (x distinct). Robust to outliers (up to 29 % of the points).
pub(crate) fn theil_sen(points: &[(f64, f64)]) -> Option<f64> {
    let mut slopes = Vec::with_capacity(points.len() * points.len().saturating_sub(1) / 2);
    for (i, (x1, y1)) in points.iter().enumerate() {
        for (x2, y2) in &points[i + 1..] {
            if x2 != x1 {
                slopes.push((y2 - y1) / (x2 - x1));
            }
        }
    }
    median_in_place(&mut slopes)
}

/// A robust linear trend of a series.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct Trend {
    /// Units per second.
    pub(crate) slope_per_s: f64,
    /// Fitted value at the first point.
    pub(crate) start: f64,
    /// Fitted value at the last point.
    pub(crate) end: f64,
    /// Time from the first point to the last.
    pub(crate) span: Duration,
}

impl Trend {
    /// Fitted growth from the first point to the last.
    pub(crate) fn growth(&self) -> f64 {
        self.end - self.start
    }
}

/// The Theil–Sen trend of `series` over the window, fitted to the medians
/// of `bucket`-long slices (which both smooths per-second noise and bounds
/// the pairs to compare: 60 buckets for 10 minutes). `None` with fewer than
/// three buckets.
pub(crate) fn trend(window: &Window<'_>, series: Series, bucket: Duration) -> Option<Trend> {
    trend_of(window.points(series).collect(), bucket)
}

/// [`trend`] of `series` without what the agent itself holds
/// ([`Series::AgentBytes`]), for memory series: the agent's symbol cache
/// grows when it symbolizes, which is not the application's growth.
pub(crate) fn trend_without_agent(
    window: &Window<'_>,
    series: Series,
    bucket: Duration,
) -> Option<Trend> {
    trend_of(
        window.points_minus(series, Series::AgentBytes).collect(),
        bucket,
    )
}

/// The Theil–Sen trend of timestamped points (ms), over `bucket` medians.
fn trend_of(points: Vec<(u64, f64)>, bucket: Duration) -> Option<Trend> {
    let bucket_ms = u64::try_from(bucket.as_millis()).unwrap_or(u64::MAX).max(1);
    let origin = points.first()?.0;
    let mut buckets: Vec<(f64, f64)> = Vec::new();
    let mut values: Vec<f64> = Vec::new();
    for group in points.chunk_by(|a, b| a.0 / bucket_ms == b.0 / bucket_ms) {
        // x: the group's mean time, seconds after the first point.
        let x = group
            .iter()
            .map(|(ms, _)| (ms - origin) as f64)
            .sum::<f64>()
            / group.len() as f64
            / 1000.0;
        values.clear();
        values.extend(group.iter().map(|(_, v)| *v));
        if let Some(y) = median_in_place(&mut values) {
            buckets.push((x, y));
        }
    }
    if buckets.len() < 3 {
        return None;
    }
    let slope = theil_sen(&buckets)?;
    let intercept = median(buckets.iter().map(|(x, y)| y - slope * x))?;
    let last_x = buckets.last().map_or(0.0, |b| b.0);
    let span_ms = points.last().map_or(0, |p| p.0 - origin);
    Some(Trend {
        slope_per_s: slope,
        start: intercept,
        end: intercept + slope * last_x,
        span: Duration::from_millis(span_ms),
    })
}

/// Slope (units per second) of the raw points of a short window, without
/// bucketing; `None` with fewer than three points.
pub(crate) fn raw_slope(window: &Window<'_>, series: Series) -> Option<f64> {
    let points: Vec<(f64, f64)> = window
        .points(series)
        .map(|(ms, v)| (ms as f64 / 1000.0, v))
        .collect();
    if points.len() < 3 {
        return None;
    }
    theil_sen(&points)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_even_and_empty() {
        assert_eq!(median([3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median([4.0, 1.0, 3.0, 2.0]), Some(2.5));
        assert_eq!(median([f64::NAN]), None);
        assert_eq!(median(std::iter::empty()), None);
        assert_eq!(max([1.0, 5.0, 2.0]), Some(5.0));
        assert_eq!(share([1.0, 5.0, 2.0, 7.0], |v| v > 4.0), Some(0.5));
    }

    #[test]
    fn theil_sen_ignores_outliers() {
        let mut points: Vec<(f64, f64)> =
            (0..20).map(|x| (x as f64, 2.0 * x as f64 + 1.0)).collect();
        points[3].1 = 1000.0;
        points[11].1 = -500.0;
        points[17].1 = 9e9;
        assert_eq!(theil_sen(&points), Some(2.0));
        assert_eq!(theil_sen(&[(1.0, 1.0)]), None);
    }
}
