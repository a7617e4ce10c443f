//! A small, dependency-free SVG line-chart writer for the benchmarks.
//!
//! One file holds one or more panels laid out in a grid. Each panel has linear or logarithmic
//! axes (log base 2 on x suits client counts, log base 10 on y suits latencies that span
//! decades), ticks with labels, a legend, and series drawn as solid or dashed lines with a
//! marker on every measured point. Series with the same `color` index share a colour, so a
//! contender's average (solid) and p99 (dashed) read as one family.

use std::fmt::Write as _;
use std::fs;
use std::io;
use std::path::Path;

/// One line of a chart.
#[derive(Clone, Debug)]
pub(crate) struct Series {
    /// Legend text.
    pub(crate) name: String,
    /// The measured points, `(x, y)`; drawn in the given order.
    pub(crate) points: Vec<(f64, f64)>,
    /// Index into the palette (series of one contender share it).
    pub(crate) color: usize,
    /// Dashed instead of solid.
    pub(crate) dashed: bool,
}

/// One panel: axes, labels and its series.
#[derive(Clone, Debug)]
pub(crate) struct Chart {
    /// Title above the plot area.
    pub(crate) title: String,
    /// Label under the x axis.
    pub(crate) x_label: String,
    /// Label beside the y axis.
    pub(crate) y_label: String,
    /// The lines.
    pub(crate) series: Vec<Series>,
    /// Log base 2 x axis (client counts).
    pub(crate) log_x: bool,
    /// Log base 10 y axis (values spanning decades).
    pub(crate) log_y: bool,
}

/// Colour-blind-friendly palette (Okabe-Ito), cycled by `Series::color`.
const PALETTE: [&str; 7] = [
    "#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000",
];

const PANEL_W: f64 = 660.0;
const PANEL_H: f64 = 400.0;
/// Plot area inside a panel: room on the left for tick labels, on the right for the legend.
const LEFT: f64 = 70.0;
const RIGHT: f64 = 190.0;
const TOP: f64 = 40.0;
const BOTTOM: f64 = 55.0;

/// One chart alone in an SVG file (linear y axis): the simple entry point for a bench with a
/// single plot. Colours follow each series' `color`; pass distinct ones.
#[allow(dead_code)] // for benches with one chart; `bench index` draws panels with `write_svg`
pub(crate) fn line_chart(
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    log_x: bool,
    path: &Path,
) -> io::Result<()> {
    let chart = Chart {
        title: title.to_string(),
        x_label: x_label.to_string(),
        y_label: y_label.to_string(),
        series: series.to_vec(),
        log_x,
        log_y: false,
    };
    write_svg(path, "", &[chart], 1)
}

/// Writes `charts` as one SVG file, `columns` panels per row.
pub(crate) fn write_svg(
    path: &Path,
    heading: &str,
    charts: &[Chart],
    columns: usize,
) -> io::Result<()> {
    fs::write(path, render(heading, charts, columns))
}

/// Renders `charts` as one SVG document, `columns` panels per row, under a `heading`.
pub(crate) fn render(heading: &str, charts: &[Chart], columns: usize) -> String {
    let columns = columns.max(1);
    let rows = charts.len().div_ceil(columns).max(1);
    let head_h = if heading.is_empty() { 0.0 } else { 30.0 };
    let width = PANEL_W * columns.min(charts.len().max(1)) as f64;
    let height = head_h + PANEL_H * rows as f64;
    let mut svg = String::new();
    // `write!` into a String cannot fail; the results are ignored on purpose.
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    if !heading.is_empty() {
        let _ = writeln!(
            svg,
            r#"<text x="{}" y="20" text-anchor="middle" font-size="15" font-weight="bold">{}</text>"#,
            width / 2.0,
            escape(heading)
        );
    }
    for (i, chart) in charts.iter().enumerate() {
        let ox = PANEL_W * (i % columns) as f64;
        let oy = head_h + PANEL_H * (i / columns) as f64;
        panel(&mut svg, chart, ox, oy);
    }
    svg.push_str("</svg>\n");
    svg
}

/// One axis: data range, scale, and the mapping to pixels.
struct Axis {
    lo: f64,
    hi: f64,
    log: bool,
    /// Pixel positions of `lo` and `hi`.
    p0: f64,
    p1: f64,
}

impl Axis {
    fn new(values: impl Iterator<Item = f64>, log: bool, p0: f64, p1: f64) -> Axis {
        let mut lo = f64::INFINITY;
        let mut hi = f64::NEG_INFINITY;
        for v in values.filter(|v| v.is_finite() && (!log || *v > 0.0)) {
            lo = lo.min(v);
            hi = hi.max(v);
        }
        if !lo.is_finite() {
            // No data: an arbitrary visible range so the empty axes still draw.
            (lo, hi) = (1.0, 10.0);
        }
        if log {
            // Snap to the 1-2-5 values around the data so the ends carry tick labels.
            lo = nice_125(lo, false);
            hi = nice_125(hi, true);
            if hi <= lo {
                hi = lo * 2.0;
            }
        } else {
            let span = if hi > lo { hi - lo } else { hi.abs().max(1.0) };
            let step = nice_step(span / 5.0);
            // Linear axes start at zero when the data is positive: rates read honestly.
            lo = if lo >= 0.0 {
                0.0
            } else {
                (lo / step).floor() * step
            };
            hi = (hi / step).ceil() * step;
            if hi <= lo {
                hi = lo + step;
            }
        }
        Axis {
            lo,
            hi,
            log,
            p0,
            p1,
        }
    }

    fn pos(&self, v: f64) -> f64 {
        let t = if self.log {
            (v.ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln())
        } else {
            (v - self.lo) / (self.hi - self.lo)
        };
        self.p0 + t * (self.p1 - self.p0)
    }

    fn contains(&self, v: f64) -> bool {
        v.is_finite() && (!self.log || v > 0.0)
    }

    /// Tick values: powers of two for log x, 1-2-5 per decade for log y, nice steps otherwise.
    fn ticks(&self, base2: bool) -> Vec<f64> {
        let eps = 1e-9 * (self.hi - self.lo).abs().max(1e-300);
        let mut out = Vec::new();
        if self.log && base2 {
            let mut v = 2f64.powi(self.lo.log2().floor() as i32);
            while v <= self.hi * (1.0 + 1e-9) {
                if v >= self.lo * (1.0 - 1e-9) {
                    out.push(v);
                }
                v *= 2.0;
            }
        } else if self.log {
            let mut decade = 10f64.powi(self.lo.log10().floor() as i32);
            while decade <= self.hi * (1.0 + 1e-9) {
                for m in [1.0, 2.0, 5.0] {
                    let v = decade * m;
                    if v >= self.lo * (1.0 - 1e-9) && v <= self.hi * (1.0 + 1e-9) {
                        out.push(v);
                    }
                }
                decade *= 10.0;
            }
        } else {
            let step = nice_step((self.hi - self.lo) / 5.0);
            let mut v = (self.lo / step).ceil() * step;
            while v <= self.hi + eps {
                out.push(v);
                v += step;
            }
        }
        out
    }
}

/// The 1-2-5 value at or below (`up` false) or at or above (`up` true) `v` (v > 0).
fn nice_125(v: f64, up: bool) -> f64 {
    let decade = 10f64.powi(v.log10().floor() as i32);
    let steps = [1.0, 2.0, 5.0, 10.0];
    if up {
        steps
            .iter()
            .map(|m| m * decade)
            .find(|&c| c >= v * (1.0 - 1e-9))
            .unwrap_or(10.0 * decade)
    } else {
        steps
            .iter()
            .rev()
            .map(|m| m * decade)
            .find(|&c| c <= v * (1.0 + 1e-9))
            .unwrap_or(decade)
    }
}

/// A step of 1, 2 or 5 times a power of ten, at least `raw`.
fn nice_step(raw: f64) -> f64 {
    if !(raw.is_finite() && raw > 0.0) {
        return 1.0;
    }
    let decade = 10f64.powi(raw.log10().floor() as i32);
    [1.0, 2.0, 5.0, 10.0]
        .iter()
        .map(|m| m * decade)
        .find(|&c| c >= raw * (1.0 - 1e-9))
        .unwrap_or(10.0 * decade)
}

/// Tick label: short, without trailing zeros (`0.05`, `2`, `5k`, `120k`).
fn label(v: f64) -> String {
    let a = v.abs();
    if a >= 1e6 {
        format!("{}M", trim(v / 1e6))
    } else if a >= 1e3 {
        format!("{}k", trim(v / 1e3))
    } else {
        trim(v)
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.3}");
    let s = s.trim_end_matches('0').trim_end_matches('.');
    if s == "-0" { "0".into() } else { s.into() }
}

fn escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn panel(svg: &mut String, chart: &Chart, ox: f64, oy: f64) {
    let (x0, x1) = (ox + LEFT, ox + PANEL_W - RIGHT);
    let (y0, y1) = (oy + PANEL_H - BOTTOM, oy + TOP);
    let xs = Axis::new(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.0)),
        chart.log_x,
        x0,
        x1,
    );
    let ys = Axis::new(
        chart
            .series
            .iter()
            .flat_map(|s| s.points.iter().map(|p| p.1)),
        chart.log_y,
        y0,
        y1,
    );

    let _ = writeln!(
        svg,
        r#"<text x="{}" y="{}" text-anchor="middle" font-size="14" font-weight="bold">{}</text>"#,
        (x0 + x1) / 2.0,
        oy + 22.0,
        escape(&chart.title)
    );
    // Grid and tick labels first, so the data lines sit on top.
    for t in xs.ticks(true) {
        let x = xs.pos(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{y1:.1}" stroke="#e4e4e4"/><line x1="{x:.1}" y1="{y0:.1}" x2="{x:.1}" y2="{:.1}" stroke="#333"/><text x="{x:.1}" y="{:.1}" text-anchor="middle">{}</text>"##,
            y0 + 5.0,
            y0 + 18.0,
            label(t)
        );
    }
    for t in ys.ticks(false) {
        let y = ys.pos(t);
        let _ = writeln!(
            svg,
            r##"<line x1="{x0:.1}" y1="{y:.1}" x2="{x1:.1}" y2="{y:.1}" stroke="#e4e4e4"/><line x1="{:.1}" y1="{y:.1}" x2="{x0:.1}" y2="{y:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            x0 - 5.0,
            x0 - 8.0,
            y + 4.0,
            label(t)
        );
    }
    let _ = writeln!(
        svg,
        r##"<rect x="{x0:.1}" y="{y1:.1}" width="{:.1}" height="{:.1}" fill="none" stroke="#333"/>"##,
        x1 - x0,
        y0 - y1
    );
    let _ = writeln!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle">{}</text>"#,
        (x0 + x1) / 2.0,
        y0 + 40.0,
        escape(&chart.x_label)
    );
    let (lx, ly) = (ox + 18.0, (y0 + y1) / 2.0);
    let _ = writeln!(
        svg,
        r#"<text x="{lx:.1}" y="{ly:.1}" text-anchor="middle" transform="rotate(-90 {lx:.1} {ly:.1})">{}</text>"#,
        escape(&chart.y_label)
    );

    for s in &chart.series {
        let color = PALETTE[s.color % PALETTE.len()];
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let pts: Vec<(f64, f64)> = s
            .points
            .iter()
            .filter(|(x, y)| xs.contains(*x) && ys.contains(*y))
            .map(|&(x, y)| (xs.pos(x), ys.pos(y)))
            .collect();
        if pts.len() > 1 {
            let path: Vec<String> = pts.iter().map(|(x, y)| format!("{x:.1},{y:.1}")).collect();
            let _ = writeln!(
                svg,
                r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"{dash}/>"#,
                path.join(" ")
            );
        }
        for (x, y) in &pts {
            // Hollow markers for dashed series, so the two families differ without colour too.
            let fill = if s.dashed { "white" } else { color };
            let _ = writeln!(
                svg,
                r#"<circle cx="{x:.1}" cy="{y:.1}" r="3" fill="{fill}" stroke="{color}" stroke-width="1.5"/>"#
            );
        }
    }

    // Legend to the right of the plot area.
    let lx = x1 + 15.0;
    for (i, s) in chart.series.iter().enumerate() {
        let y = y1 + 10.0 + 20.0 * i as f64;
        let color = PALETTE[s.color % PALETTE.len()];
        let dash = if s.dashed {
            r#" stroke-dasharray="6 4""#
        } else {
            ""
        };
        let _ = writeln!(
            svg,
            r#"<line x1="{lx:.1}" y1="{y:.1}" x2="{:.1}" y2="{y:.1}" stroke="{color}" stroke-width="2"{dash}/><text x="{:.1}" y="{:.1}">{}</text>"#,
            lx + 30.0,
            lx + 36.0,
            y + 4.0,
            escape(&s.name)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_cover_the_data() {
        let x = Axis::new([1.0, 256.0].into_iter(), true, 0.0, 100.0);
        assert_eq!(
            x.ticks(true),
            vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0]
        );
        let y = Axis::new([0.07, 6.3].into_iter(), true, 100.0, 0.0);
        assert_eq!((y.lo, y.hi), (0.05, 10.0));
        assert_eq!(y.ticks(false).first().copied(), Some(0.05));
        assert_eq!(y.ticks(false).last().copied(), Some(10.0));
        let lin = Axis::new([3.0, 117_000.0].into_iter(), false, 100.0, 0.0);
        assert_eq!(lin.lo, 0.0);
        assert!(lin.hi >= 117_000.0);
    }

    #[test]
    fn renders_escaped_svg() {
        let chart = Chart {
            title: "a < b".into(),
            x_label: "clients".into(),
            y_label: "ms".into(),
            series: vec![Series {
                name: "x & y".into(),
                points: vec![(1.0, 0.1), (4.0, 0.3), (16.0, f64::NAN)],
                color: 0,
                dashed: true,
            }],
            log_x: true,
            log_y: true,
        };
        let svg = render("t", &[chart], 2);
        assert!(svg.starts_with("<svg"));
        assert!(svg.contains("a &lt; b") && svg.contains("x &amp; y"));
        assert!(svg.contains("<polyline") && !svg.contains("NaN"));
        assert_eq!(label(120_000.0), "120k");
        assert_eq!(label(0.05), "0.05");
    }
}
