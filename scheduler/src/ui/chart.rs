//! Line charts of an app's last minutes, drawn on the server as inline SVG
//! (no script, no style attribute: colours come from `ui.css` by class).

use maud::{Markup, html};

/// One line: its legend, its CSS class (`l1`, `l2`, `l3`) and its points
/// (time in ms since the epoch, value), oldest first.
pub(crate) struct Line<'a> {
    pub(crate) label: &'a str,
    pub(crate) class: &'a str,
    pub(crate) points: Vec<(u64, f64)>,
}

const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
const LEFT: f64 = 52.0;
const RIGHT: f64 = 8.0;
const TOP: f64 = 10.0;
const BOTTOM: f64 = 22.0;

/// A value for an axis label: short, without trailing zeros.
fn label(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// The chart of `lines` (values in `unit`) over the times `span` (the
/// whole series', so charts of one series share their time axis, even
/// where a line has no point), or "no data" when no line has a point.
pub(crate) fn render(title: &str, lines: &[Line<'_>], unit: &str, span: (u64, u64)) -> Markup {
    let all = || lines.iter().flat_map(|l| l.points.iter());
    let (Some(first), Some(last)) = (all().map(|p| p.0).min(), all().map(|p| p.0).max()) else {
        return html! { p.nodata.chart-empty { "No data yet: traffic shows here once the gateways report it." } };
    };
    let (t0, t1) = (first.min(span.0), last.max(span.1));
    let peak = all().map(|p| p.1).fold(0.0_f64, f64::max);
    let top = if peak > 0.0 { peak * 1.1 } else { 1.0 };
    let span = (t1 - t0).max(1) as f64;
    let x = |t: u64| LEFT + (t - t0) as f64 / span * (WIDTH - LEFT - RIGHT);
    let y = |v: f64| TOP + (1.0 - v / top) * (HEIGHT - TOP - BOTTOM);
    let minutes = (t1 - t0) as f64 / 60_000.0;
    let left_label = if minutes >= 1.0 {
        format!("{} min ago", minutes.round())
    } else {
        format!("{} s ago", (t1 - t0) / 1000)
    };
    let view = format!("0 0 {WIDTH} {HEIGHT}");
    html! {
        // The highest value drawn, for whoever reads the page by machine.
        figure.chart data-peak=(peak) {
            svg viewBox=(view) role="img" aria-label=(title) preserveAspectRatio="none" {
                line.axis x1=(LEFT) y1=(y(0.0)) x2=(WIDTH - RIGHT) y2=(y(0.0)) {}
                line.grid x1=(LEFT) y1=(y(top / 2.0)) x2=(WIDTH - RIGHT) y2=(y(top / 2.0)) {}
                text.tick x=(LEFT - 6.0) y=(y(0.0) + 4.0) text-anchor="end" { "0" }
                text.tick x=(LEFT - 6.0) y=(y(top / 2.0) + 4.0) text-anchor="end" { (label(top / 2.0)) (unit) }
                text.tick x=(LEFT) y=(HEIGHT - 4.0) { (left_label) }
                text.tick x=(WIDTH - RIGHT) y=(HEIGHT - 4.0) text-anchor="end" { "now" }
                @for l in lines {
                    @if l.points.len() == 1 {
                        circle class=(l.class) cx=(x(l.points[0].0)) cy=(y(l.points[0].1)) r="3" {}
                    } @else if !l.points.is_empty() {
                        polyline class=(l.class) points=(
                            l.points.iter().map(|&(t, v)| format!("{:.1},{:.1}", x(t), y(v))).collect::<Vec<_>>().join(" ")
                        ) {}
                    }
                }
            }
            figcaption {
                @for l in lines {
                    span class={ "key " (l.class) } { (l.label) }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_series_says_so() {
        let out = render(
            "x",
            &[Line {
                label: "a",
                class: "l1",
                points: vec![],
            }],
            "",
            (0, 0),
        )
        .into_string();
        assert!(out.contains("No data yet"), "{out}");
        assert!(!out.contains("<svg"), "{out}");
    }

    /// A line with one point, late in the series, is drawn where its time
    /// falls on the series' axis, not at its start.
    #[test]
    fn a_lone_point_sits_at_its_time() {
        let points = vec![(61_000, 4.0)];
        let out = render(
            "x",
            &[Line {
                label: "p99",
                class: "l2",
                points,
            }],
            " ms",
            (1_000, 61_000),
        )
        .into_string();
        assert!(out.contains(r#"<circle class="l2" cx="592""#), "{out}");
        assert!(out.contains("1 min ago"), "{out}");
    }

    #[test]
    fn points_fall_inside_the_plot() {
        let points = vec![(1_000, 0.0), (31_000, 5.0), (61_000, 2.5)];
        let out = render(
            "x",
            &[Line {
                label: "rps",
                class: "l1",
                points,
            }],
            "",
            (1_000, 61_000),
        )
        .into_string();
        assert!(out.contains("<polyline"), "{out}");
        // The first point at the left edge on the axis, the highest one
        // below the top.
        assert!(out.contains("52.0,138.0"), "{out}");
        assert!(out.contains("1 min ago"), "{out}");
        assert!(out.contains(">rps<"), "{out}");
        assert!(out.contains(r#"data-peak="5""#), "{out}");
    }
}
