//! `/debug/lag` as a text table and as an SVG plot a person reads at a
//! glance: per-second p50, p99 and max lag over the last five minutes on a
//! logarithmic axis, with the stall threshold drawn across.

use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

use super::{LagReport, RuntimeReport, TimelinePoint};
use crate::histogram::HistogramSummary;
use crate::profile::frames::{fold_plumbing, is_library};
use crate::report::millis as ms;
use crate::units::rfc3339;

/// The windows as a fixed-width table.
pub(crate) fn text(lag: &LagReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "executor lag (resolution {:.0} ms), milliseconds\n",
        ms(lag.resolution)
    );
    let _ = writeln!(
        out,
        "{:<7} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "WINDOW", "COUNT", "MIN", "P50", "P90", "P99", "P99.9", "MAX", "MEAN", "STDDEV"
    );
    for (name, h) in [
        ("10s", &lag.windows.ten_seconds),
        ("1m", &lag.windows.one_minute),
        ("5m", &lag.windows.five_minutes),
        ("all", &lag.windows.all),
    ] {
        let _ = writeln!(
            out,
            "{:<7} {:>9} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
            name,
            h.count,
            ms(h.min),
            ms(h.p50),
            ms(h.p90),
            ms(h.p99),
            ms(h.p999),
            ms(h.max),
            ms(h.mean),
            ms(h.stddev)
        );
    }
    if let Some(waiting) = lag.probe_waiting {
        let _ = writeln!(
            out,
            "\nthe probe in flight has waited {:.1} ms: the runtime is busy or blocked now",
            ms(waiting)
        );
    }
    out
}

/// Stalls listed in the text view, newest first.
const STALLS_LISTED: usize = 10;
/// Of those, the ones shown with their stack; older ones get one line.
const STALLS_WITH_STACKS: usize = 3;
/// Frames shown per stack (after folding plumbing).
const STALL_FRAMES: usize = 24;

/// The `/debug/runtime?format=text` report.
pub(crate) fn runtime_text(report: &RuntimeReport) -> String {
    let mut out = String::new();
    if let Some(reason) = report.reason {
        let _ = writeln!(out, "tokio runtime: unavailable ({reason})");
        return out;
    }
    let _ = writeln!(
        out,
        "tokio runtime ({}): {} workers, {} alive tasks, {} in the global queue\n",
        report.flavor, report.workers, report.alive_tasks, report.global_queue_depth
    );
    let _ = writeln!(
        out,
        "{:<7} {:>6} {:>10} {:>8} {:>10} {:>9}",
        "WORKER", "BUSY", "PARKS", "PARKED", "AWAY ms", "TID"
    );
    for w in &report.per_worker {
        let _ = writeln!(
            out,
            "{:<7} {:>6} {:>10} {:>8} {:>10} {:>9}",
            w.worker,
            w.busy_ratio
                .map_or("-".to_owned(), |r| format!("{:.0}%", r * 100.0)),
            w.parks,
            if w.parked { "yes" } else { "no" },
            w.away_for
                .map_or("-".to_owned(), |d| format!("{:.1}", ms(d))),
            w.thread_id.map_or("?".to_owned(), |t| t.to_string()),
        );
    }
    let _ = writeln!(
        out,
        "\nstalls (a poll longer than {:.0} ms): {} since start, {:.1} ms lost",
        ms(report.stall_threshold),
        report.stalls_total,
        ms(report.stalled_total)
    );
    let now = SystemTime::now();
    for (index, stall) in report.stalls.iter().enumerate() {
        if index == STALLS_LISTED {
            let _ = writeln!(
                out,
                "\n… {} older stalls (format=json lists every kept stall with its stack)",
                report.stalls.len() - STALLS_LISTED
            );
            break;
        }
        let ago = now
            .duration_since(stall.started_at)
            .map_or_else(|_| "just now".to_owned(), |d| format!("{} ago", crate::units::span(d)));
        let _ = writeln!(
            out,
            "\n{} ({ago}) worker {} {} {:.1} ms{} ({}, thread {})",
            rfc3339(stall.started_at),
            stall.worker,
            if stall.ongoing { "stuck for" } else { "stuck" },
            ms(stall.duration),
            if stall.ongoing { " so far" } else { "" },
            stall.attribution.as_str(),
            stall
                .thread
                .as_ref()
                .map_or("?".to_owned(), |(tid, name)| format!("{tid} {name}")),
        );
        if let Some(note) = &stall.note {
            let _ = writeln!(out, "  note: {note}");
        }
        if index < STALLS_WITH_STACKS {
            // Leaf first, plumbing folded: the blocking call and the
            // handler that made it lead.
            let folded = fold_plumbing(stall.frames.iter().rev().map(String::as_str));
            for frame in folded.iter().rev().take(STALL_FRAMES) {
                let _ = writeln!(out, "  {frame}");
            }
        } else if let Some(culprit) = stall.frames.iter().find(|f| !is_library(f)) {
            match stall.frames.first() {
                Some(leaf) if leaf != culprit => {
                    let _ = writeln!(out, "  in {culprit}, at {leaf}");
                }
                _ => {
                    let _ = writeln!(out, "  in {culprit}");
                }
            }
        }
    }
    if !report.task_monitors.is_empty() {
        let _ = writeln!(
            out,
            "\n{:<24} {:>10} {:>10} {:>12} {:>10} {:>14}",
            "TASK MONITOR", "TASKS", "POLLS", "MEAN POLL ms", "SLOW %", "MEAN SCHED ms"
        );
        for t in &report.task_monitors {
            let _ = writeln!(
                out,
                "{:<24} {:>10} {:>10} {:>12.3} {:>9.1}% {:>14.3}",
                t.name,
                t.instrumented,
                t.polls,
                ms(t.mean_poll),
                t.slow_poll_ratio * 100.0,
                ms(t.mean_scheduled)
            );
        }
    }
    out
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 420.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 56.0;
const BOTTOM: f64 = 110.0;

/// Width kept for the legend left of the window table.
const LEGEND_WIDTH: f64 = 190.0;

/// One plotted series of the per-second timeline.
struct Series {
    name: &'static str,
    color: &'static str,
    width: f64,
    dash: &'static str,
    value: fn(&TimelinePoint) -> Duration,
}

/// Drawn in this order: later ones on top.
const SERIES: [Series; 3] = [
    Series {
        name: "max",
        color: "#c62828",
        width: 1.2,
        dash: "none",
        value: |p| p.max,
    },
    Series {
        name: "p99",
        color: "#ef6c00",
        width: 2.2,
        dash: "6 3",
        value: |p| p.p99,
    },
    Series {
        name: "p50",
        color: "#2e7d32",
        width: 2.0,
        dash: "none",
        value: |p| p.p50,
    },
];

/// The plot. Time runs left to right over the points' span (at most five
/// minutes); lag is on a log scale from 10 µs up to the largest decade
/// needed.
pub(crate) fn svg(
    title: &str,
    lag: &LagReport,
    points: &[TimelinePoint],
    threshold: Duration,
) -> String {
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let now = SystemTime::now();
    let span_s = points
        .first()
        .and_then(|p| now.duration_since(p.at).ok())
        .map_or(60.0, |d| d.as_secs_f64().clamp(60.0, 300.0));
    let peak_ms = points
        .iter()
        .map(|p| ms(p.max))
        .fold(ms(threshold), f64::max)
        .max(1.0);
    let low_decade = -2.0; // 10 µs
    let high_decade = peak_ms.log10().ceil().max(1.0);
    let x = |at: SystemTime| {
        let ago = now.duration_since(at).map_or(0.0, |d| d.as_secs_f64());
        LEFT + plot_w * (1.0 - (ago / span_s).min(1.0))
    };
    let y = |value_ms: f64| {
        let decade = value_ms.max(1e-2).log10();
        TOP + plot_h * (1.0 - (decade - low_decade) / (high_decade - low_decade))
    };
    let mut out = String::with_capacity(16 * 1024);
    let _ = write!(
        out,
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{HEIGHT}" viewBox="0 0 {WIDTH} {HEIGHT}" font-family="sans-serif" font-size="12">
<title>{title}</title>
<rect width="100%" height="100%" fill="#ffffff"/>
<text x="{LEFT}" y="22" font-size="16" font-weight="bold">{title}</text>
<text x="{LEFT}" y="42" fill="#444">per-second lag over the last {span:.0} s (log scale); resolution {res:.0} ms; dashed: stall threshold {thr:.0} ms</text>
"##,
        title = crate::profile::xml_escape(title),
        span = span_s,
        res = ms(lag.resolution),
        thr = ms(threshold),
    );
    // Horizontal grid: one line per decade.
    let mut decade = low_decade as i32;
    while f64::from(decade) <= high_decade {
        let value = 10f64.powi(decade);
        let gy = y(value);
        let label = if value >= 1.0 {
            format!("{value:.0} ms")
        } else {
            format!("{value} ms")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{gy:.1}" x2="{x2:.1}" y2="{gy:.1}" stroke="#e0e0e0"/><text x="{lx:.1}" y="{ty:.1}" text-anchor="end" fill="#666">{label}</text>"##,
            x2 = LEFT + plot_w,
            lx = LEFT - 6.0,
            ty = gy + 4.0,
        );
        decade += 1;
    }
    // Vertical grid: one line per minute back from now.
    let mut minute = 0.0;
    while minute * 60.0 <= span_s + 0.5 {
        let gx = LEFT + plot_w * (1.0 - minute * 60.0 / span_s);
        let label = if minute == 0.0 {
            "now".to_owned()
        } else {
            format!("-{minute:.0} min")
        };
        let _ = writeln!(
            out,
            r##"<line x1="{gx:.1}" y1="{TOP}" x2="{gx:.1}" y2="{by:.1}" stroke="#f0f0f0"/><text x="{gx:.1}" y="{ty:.1}" text-anchor="middle" fill="#666">{label}</text>"##,
            by = TOP + plot_h,
            ty = TOP + plot_h + 16.0,
        );
        minute += 1.0;
    }
    let ty = y(ms(threshold));
    let _ = writeln!(
        out,
        r##"<line x1="{LEFT}" y1="{ty:.1}" x2="{x2:.1}" y2="{ty:.1}" stroke="#b00020" stroke-dasharray="6 4"/>"##,
        x2 = LEFT + plot_w
    );
    // Max first and thinnest, then p99 dashed on top of it (the two
    // coincide in seconds with few samples), then p50.
    for series in SERIES {
        let mut path = String::new();
        let mut previous: Option<SystemTime> = None;
        for p in points.iter().filter(|p| p.count > 0) {
            // A gap of more than two seconds (no samples: the runtime was
            // blocked or the agent idle) breaks the line.
            let joined = previous.is_some_and(|prev| {
                p.at.duration_since(prev)
                    .is_ok_and(|d| d <= Duration::from_secs(2))
            });
            let _ = write!(
                path,
                "{}{:.1},{:.1} ",
                if joined { "L" } else { "M" },
                x(p.at),
                y(ms((series.value)(p)))
            );
            previous = Some(p.at);
        }
        if !path.is_empty() {
            let _ = writeln!(
                out,
                r##"<path class="{name}" d="{path}" fill="none" stroke="{color}" stroke-width="{width}" stroke-dasharray="{dash}"><title>{name}</title></path>"##,
                name = series.name,
                color = series.color,
                width = series.width,
                dash = series.dash,
            );
        }
    }
    let _ = writeln!(
        out,
        r##"<rect x="{LEFT}" y="{TOP}" width="{plot_w:.1}" height="{plot_h:.1}" fill="none" stroke="#999"/>"##
    );
    // Legend (one series per row, left) and the window table (right),
    // on separate columns so neither overlaps the other.
    let ly = TOP + plot_h + 36.0;
    for (i, series) in SERIES.iter().rev().enumerate() {
        let row_y = ly + 17.0 * i as f64;
        let _ = writeln!(
            out,
            r##"<line x1="{LEFT}" y1="{row_y:.1}" x2="{x2:.1}" y2="{row_y:.1}" stroke="{color}" stroke-width="3" stroke-dasharray="{dash}"/><text x="{tx:.1}" y="{ty:.1}">{name} per second</text>"##,
            x2 = LEFT + 24.0,
            tx = LEFT + 30.0,
            ty = row_y + 4.0,
            color = series.color,
            dash = series.dash,
            name = series.name,
        );
    }
    let row = |label: &str, h: &HistogramSummary| {
        format!(
            "{label:<10}  p50 {:>9}   p99 {:>9}   max {:>9}   {:>6} samples",
            crate::units::duration_ms(h.p50),
            crate::units::duration_ms(h.p99),
            crate::units::duration_ms(h.max),
            h.count
        )
    };
    for (i, line) in [
        row("last 10 s", &lag.windows.ten_seconds),
        row("last 1 min", &lag.windows.one_minute),
        row("last 5 min", &lag.windows.five_minutes),
    ]
    .iter()
    .enumerate()
    {
        let _ = writeln!(
            out,
            r##"<text x="{lx:.1}" y="{ty:.1}" fill="#222" font-family="monospace" xml:space="preserve">{}</text>"##,
            crate::profile::xml_escape(line),
            lx = LEFT + LEGEND_WIDTH,
            ty = ly + 4.0 + 17.0 * i as f64,
        );
    }
    out.push_str("</svg>\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn svg_has_a_line_per_percentile_and_escapes_the_title() {
        let now = SystemTime::now();
        let points: Vec<TimelinePoint> = (0..30u64)
            .map(|i| TimelinePoint {
                at: now - Duration::from_secs(30 - i),
                count: 100,
                p50: Duration::from_micros(80),
                p99: Duration::from_millis(1),
                max: Duration::from_millis(if i == 20 { 250 } else { 2 }),
            })
            .collect();
        let mut lag = LagReport::unavailable("", Duration::from_millis(10));
        lag.available = true;
        let svg = svg("lag of <demo>", &lag, &points, Duration::from_millis(100));
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("lag of &lt;demo&gt;"));
        for class in ["p50", "p99", "max"] {
            assert!(svg.contains(&format!("class=\"{class}\"")), "{class}");
        }
        assert!(
            svg.contains("1000 ms"),
            "axis reaches the 250 ms peak's decade"
        );
        assert!(text(&lag).contains("WINDOW"));
    }
}
