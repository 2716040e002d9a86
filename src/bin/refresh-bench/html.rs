//! The `--report FILE` page: one self-contained HTML file whose charts are inline SVG drawn
//! here (no script, no style sheet or font from elsewhere), so it opens offline and can be
//! attached to an issue as it is.

use std::fmt::Write as _;

use crate::timeline::{self, BUCKETS, PER_OCTAVE, Timeline};

/// Everything the page shows, in plain values (the run's or a test's).
pub struct Page<'a> {
    pub title: String,
    /// The run's parameters and totals, in order.
    pub params: Vec<(String, String)>,
    pub timeline: &'a Timeline,
    /// Non-200 answers and requests without an answer, by key (`"400 invalid_grant"`, `"io"`).
    pub errors: Vec<(String, u64)>,
}

const WIDTH: f64 = 960.0;
const HEIGHT: f64 = 260.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 20.0;
const TOP: f64 = 16.0;
const BOTTOM: f64 = 40.0;

/// `&`, `<`, `>`, `"` and `'` replaced: for text and attribute values alike.
pub fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// A latency in microseconds, as a person reads it.
pub fn fmt_us(us: f64) -> String {
    if us == 0.0 {
        "0".to_owned()
    } else if us >= 1_000_000.0 {
        format!("{:.3} s", us / 1_000_000.0)
    } else if us >= 1000.0 {
        let ms = us / 1000.0;
        if ms >= 100.0 {
            format!("{ms:.0} ms")
        } else if ms >= 10.0 {
            format!("{ms:.1} ms")
        } else {
            format!("{ms:.2} ms")
        }
    } else {
        format!("{us:.0} µs")
    }
}

/// The smallest of 1, 2, 2.5, 4, 5, 6, 8 times a power of ten that is at least `x` (1 for
/// nothing): a maximum whose quarters read well.
fn nice_ceil(x: f64) -> f64 {
    if x <= 0.0 || !x.is_finite() {
        return 1.0;
    }
    let p = 10f64.powf(x.log10().floor());
    for m in [1.0, 2.0, 2.5, 4.0, 5.0, 6.0, 8.0, 10.0] {
        if m * p >= x * (1.0 - 1e-12) {
            return m * p;
        }
    }
    10.0 * p
}

/// A count for an axis: exact (the grid is at quarters of a round maximum), thousands as `k`.
fn fmt_count(v: f64) -> String {
    if v >= 1000.0 {
        let k = format!("{:.3}", v / 1000.0);
        format!("{}k", k.trim_end_matches('0').trim_end_matches('.'))
    } else if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.1}")
    }
}

struct Series<'s> {
    name: &'s str,
    color: &'s str,
    /// One value per second; `None`: no value that second (the line breaks).
    values: Vec<Option<f64>>,
}

/// The start of a chart: the `<svg>` element and the y axis's five grid lines, 0 to `y_max`.
fn open_svg(label: &str, y_max: f64, fmt_y: &dyn Fn(f64) -> String) -> String {
    let plot_h = HEIGHT - TOP - BOTTOM;
    let mut svg = String::new();
    let _ = write!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="{}">"#,
        escape(label)
    );
    for k in 0..=4 {
        let v = y_max * f64::from(k) / 4.0;
        let yy = TOP + plot_h * (1.0 - v / y_max);
        let _ = write!(
            svg,
            r##"<line x1="{LEFT}" x2="{:.1}" y1="{yy:.1}" y2="{yy:.1}" stroke="#ddd"/><text x="{:.1}" y="{:.1}" text-anchor="end" class="tick">{}</text>"##,
            WIDTH - RIGHT,
            LEFT - 6.0,
            yy + 4.0,
            escape(&fmt_y(v))
        );
    }
    svg
}

/// A line chart over the seconds of the window: x is the second, y from 0 to a round maximum.
fn line_chart(label: &str, series: &[Series<'_>], fmt_y: &dyn Fn(f64) -> String) -> String {
    let n = series.iter().map(|s| s.values.len()).max().unwrap_or(0);
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0f64, |a, &b| a.max(b));
    let y_max = nice_ceil(max);
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    // Second i is drawn at the middle of its interval [i, i+1).
    let x = |i: f64| LEFT + plot_w * (i + 0.5) / n.max(1) as f64;
    let y = |v: f64| TOP + plot_h * (1.0 - v / y_max);
    let mut svg = open_svg(label, y_max, fmt_y);
    // About ten labelled seconds on the x axis.
    let step = (n as f64 / 10.0).ceil().max(1.0) as usize;
    for i in (0..n).step_by(step) {
        let _ = write!(
            svg,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
            x(i as f64),
            HEIGHT - BOTTOM + 16.0,
            i + 1
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">second of the measured window</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0
    );
    for s in series {
        // Runs of consecutive values, one polyline each.
        let mut runs: Vec<Vec<(f64, f64)>> = vec![Vec::new()];
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => runs
                    .last_mut()
                    .expect("never empty")
                    .push((x(i as f64), y(*v))),
                None => runs.push(Vec::new()),
            }
        }
        for run in runs.iter().filter(|r| !r.is_empty()) {
            let points: Vec<String> = run.iter().map(|(a, b)| format!("{a:.1},{b:.1}")).collect();
            let _ = write!(
                svg,
                r#"<polyline class="series" data-series="{}" fill="none" stroke="{}" stroke-width="2" points="{}"/>"#,
                escape(s.name),
                s.color,
                points.join(" ")
            );
            if run.len() == 1 {
                let (a, b) = run[0];
                let _ = write!(
                    svg,
                    r#"<circle cx="{a:.1}" cy="{b:.1}" r="3" fill="{}"/>"#,
                    s.color
                );
            }
        }
    }
    svg.push_str("</svg>");
    svg
}

fn legend(series: &[Series<'_>]) -> String {
    let mut out = String::from(r#"<p class="legend">"#);
    for s in series {
        let _ = write!(
            out,
            r#"<span><i style="background:{}"></i>{}</span>"#,
            s.color,
            escape(s.name)
        );
    }
    out.push_str("</p>");
    out
}

/// Bars of the run's latency histogram over its non-empty range of logarithmic buckets.
fn histogram_chart(buckets: &[u32; BUCKETS]) -> String {
    let first = buckets.iter().position(|&n| n > 0);
    let last = buckets.iter().rposition(|&n| n > 0);
    let (Some(first), Some(last)) = (first, last) else {
        return "<p>No answers.</p>".to_owned();
    };
    // Whole powers of two on both sides, so the axis starts and ends on a label.
    let first = first / PER_OCTAVE * PER_OCTAVE;
    let last = ((last / PER_OCTAVE + 1) * PER_OCTAVE).min(BUCKETS) - 1;
    let n = last - first + 1;
    let max = buckets[first..=last].iter().copied().max().unwrap_or(0);
    let y_max = nice_ceil(f64::from(max));
    let plot_w = WIDTH - LEFT - RIGHT;
    let plot_h = HEIGHT - TOP - BOTTOM;
    let bar_w = plot_w / n as f64;
    let mut svg = open_svg("latency histogram", y_max, &fmt_count);
    for (i, &count) in buckets.iter().enumerate().take(last + 1).skip(first) {
        let x = LEFT + bar_w * (i - first) as f64;
        if i % PER_OCTAVE == 0 {
            let _ = write!(
                svg,
                r#"<text x="{x:.1}" y="{:.1}" text-anchor="middle" class="tick">{}</text>"#,
                HEIGHT - BOTTOM + 16.0,
                escape(&fmt_us(timeline::bucket_low(i)))
            );
        }
        if count == 0 {
            continue;
        }
        let h = plot_h * f64::from(count) / y_max;
        let _ = write!(
            svg,
            r##"<rect class="bar" x="{x:.1}" y="{:.1}" width="{:.1}" height="{h:.1}" fill="#4e79a7"><title>{} to {}: {count}</title></rect>"##,
            TOP + plot_h - h,
            (bar_w - 1.0).max(0.5),
            escape(&fmt_us(timeline::bucket_low(i))),
            escape(&fmt_us(timeline::bucket_high(i)))
        );
    }
    let _ = write!(
        svg,
        r#"<text x="{:.1}" y="{:.1}" text-anchor="middle" class="axis">latency (logarithmic scale: 8 buckets of equal width per doubling)</text>"#,
        LEFT + plot_w / 2.0,
        HEIGHT - 6.0
    );
    svg.push_str("</svg>");
    svg
}

fn errors_table(errors: &[(String, u64)]) -> String {
    if errors.is_empty() {
        return "<p>None: every request in the window was answered 200.</p>".to_owned();
    }
    let max = errors.iter().map(|(_, n)| *n).max().unwrap_or(1).max(1);
    let mut out =
        String::from(r#"<table class="errors"><tr><th>answer</th><th>count</th><th></th></tr>"#);
    for (key, n) in errors {
        let _ = write!(
            out,
            r#"<tr><td>{}</td><td class="num">{n}</td><td><div class="bar" style="width:{:.1}%"></div></td></tr>"#,
            escape(key),
            100.0 * *n as f64 / max as f64
        );
    }
    out.push_str("</table>");
    out
}

const STYLE: &str = "body{font-family:sans-serif;margin:24px;color:#222;max-width:1000px}\
h1{font-size:22px}h2{font-size:17px;margin-top:28px}\
table{border-collapse:collapse}td,th{padding:3px 10px;text-align:left;border-bottom:1px solid #eee}\
td.num{text-align:right;font-variant-numeric:tabular-nums}\
table.errors td:last-child{width:400px}div.bar{height:12px;background:#e15759}\
svg{display:block}svg text{font-size:12px;fill:#444}svg text.axis{font-size:12px;fill:#666}\
.legend span{margin-right:18px}.legend i{display:inline-block;width:14px;height:4px;margin:0 6px 3px 0}";

/// The whole page.
pub fn page(p: &Page<'_>) -> String {
    let mut out = String::new();
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>{}</title><style>{STYLE}</style></head><body>\n<h1>{}</h1>\n",
        escape(&p.title),
        escape(&p.title)
    );
    out.push_str("<h2>Run</h2>\n<table class=\"params\">");
    for (k, v) in &p.params {
        let _ = write!(out, "<tr><th>{}</th><td>{}</td></tr>", escape(k), escape(v));
    }
    out.push_str("</table>\n");

    let seconds = &p.timeline.seconds;
    let throughput = [
        Series {
            name: "200 answers per second",
            color: "#4e79a7",
            values: seconds.iter().map(|s| Some(f64::from(s.ok))).collect(),
        },
        Series {
            name: "errors per second (other answers, no answer)",
            color: "#e15759",
            values: seconds.iter().map(|s| Some(f64::from(s.errors))).collect(),
        },
    ];
    out.push_str("<h2>Throughput</h2>\n");
    out.push_str(&legend(&throughput));
    out.push_str(&line_chart(
        "throughput per second",
        &throughput,
        &fmt_count,
    ));

    let latency = [
        ("p50", "#59a14f", 50.0),
        ("p90", "#f28e2b", 90.0),
        ("p99", "#e15759", 99.0),
    ]
    .map(|(name, color, q)| Series {
        name,
        color,
        values: seconds.iter().map(|s| s.percentile(q)).collect(),
    });
    out.push_str("\n<h2>Latency percentiles per second</h2>\n");
    out.push_str(&legend(&latency));
    out.push_str(&line_chart(
        "latency percentiles per second",
        &latency,
        &|v| fmt_us(v),
    ));
    out.push_str(
        "<p class=\"note\">Each point is the upper edge of its bucket (at most 9 % high); the run's exact percentiles are in the table above.</p>\n",
    );

    out.push_str("<h2>Latency histogram</h2>\n");
    out.push_str(&histogram_chart(&p.timeline.histogram()));

    out.push_str("\n<h2>Errors</h2>\n");
    out.push_str(&errors_table(&p.errors));
    out.push_str("\n</body></html>\n");
    out
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn run_data() -> Timeline {
        let mut t = Timeline::default();
        // Second 0: 100 answers at 1 ms; second 1: 25 at 1 ms, 25 at 8 ms and 3 errors;
        // second 2: nothing; second 3: one answer.
        for _ in 0..100 {
            t.answer(Duration::from_millis(100), true, 1000);
        }
        for _ in 0..25 {
            t.answer(Duration::from_millis(1100), true, 1000);
            t.answer(Duration::from_millis(1200), true, 8000);
        }
        for _ in 0..3 {
            t.answer(Duration::from_millis(1300), false, 500);
        }
        t.answer(Duration::from_millis(3100), true, 2000);
        t
    }

    /// The `points` of every polyline of series `name`, as (x, y) pairs.
    fn polylines(html: &str, name: &str) -> Vec<Vec<(f64, f64)>> {
        let marker = format!(r#"data-series="{name}""#);
        html.match_indices(&marker)
            .map(|(at, _)| {
                let rest = &html[at..];
                let start = rest.find("points=\"").expect("points") + 8;
                let end = start + rest[start..].find('"').expect("end of points");
                rest[start..end]
                    .split(' ')
                    .map(|p| {
                        let (a, b) = p.split_once(',').expect("x,y");
                        (a.parse().expect("x"), b.parse().expect("y"))
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn the_page_draws_every_second_bucket_and_error() {
        let t = run_data();
        let html = page(&Page {
            title: "refresh-bench <test>".into(),
            params: vec![("url".into(), "http://x/?a=1&b=\"2\"".into())],
            timeline: &t,
            errors: vec![
                ("400 invalid_grant".into(), 3),
                ("<script>alert(1)</script>".into(), 1),
            ],
        });
        // Self-contained: no script, nothing fetched.
        assert!(!html.contains("<script"), "{html}");
        assert!(!html.contains("src="));
        assert!(!html.contains("href="));
        // Escaped values.
        assert!(html.contains("refresh-bench &lt;test&gt;"));
        assert!(html.contains("http://x/?a=1&amp;b=&quot;2&quot;"));
        assert!(html.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));

        // Throughput: one point per second, 4 seconds, heights proportional to the counts.
        let ok = polylines(&html, "200 answers per second");
        assert_eq!(ok.len(), 1);
        let ok = &ok[0];
        assert_eq!(ok.len(), 4);
        let base = TOP + HEIGHT - TOP - BOTTOM; // y of 0
        let h = |p: (f64, f64)| base - p.1;
        assert!((h(ok[0]) - 2.0 * h(ok[1])).abs() < 0.2, "{ok:?}");
        assert!(ok[0].0 < ok[1].0 && ok[1].0 < ok[2].0 && ok[2].0 < ok[3].0);
        assert_eq!(h(ok[2]), 0.0);
        let errors = &polylines(&html, "errors per second (other answers, no answer)")[0];
        assert!(h(errors[1]) > 0.0 && h(errors[0]) == 0.0);

        // Latency: second 2 has no answer, so each percentile line breaks there.
        let p99 = polylines(&html, "p99");
        assert_eq!(p99.iter().map(Vec::len).collect::<Vec<_>>(), vec![2, 1]);
        let p50 = polylines(&html, "p50");
        // p99 of second 1 is in the 8 ms bucket, p50 in the 1 ms one: higher on the chart.
        assert!(p99[0][1].1 < p50[0][1].1);

        // Histogram: one bar per non-empty bucket (500 µs, 1 ms, 2 ms, 8 ms), tallest at 1 ms.
        let bars = html.matches(r#"<rect class="bar""#).count();
        assert_eq!(bars, 4);
        for count in [
            "470 µs to 512 µs: 3<",
            "939 µs to 1.02 ms: 125<",
            "1.88 ms to 2.05 ms: 1<",
            "7.51 ms to 8.19 ms: 25<",
        ] {
            assert!(html.contains(count), "{count}");
        }

        // Errors: a row each, the largest at full width.
        assert!(html.contains(r#"<td>400 invalid_grant</td><td class="num">3</td><td><div class="bar" style="width:100.0%">"#));
        assert!(html.contains(r#"style="width:33.3%""#));
    }

    #[test]
    fn round_maxima() {
        assert_eq!(nice_ceil(0.0), 1.0);
        assert_eq!(nice_ceil(7.0), 8.0);
        assert_eq!(nice_ceil(151.0), 200.0);
        assert_eq!(nice_ceil(200.0), 200.0);
        assert_eq!(nice_ceil(2100.0), 2500.0);
        assert_eq!(nice_ceil(56_000.0), 60_000.0);
        assert_eq!(fmt_count(12_500.0), "12.5k");
        assert_eq!(fmt_count(50_000.0), "50k");
        assert_eq!(fmt_count(18_750.0), "18.75k");
        assert_eq!(fmt_count(6250.0), "6.25k");
        assert_eq!(fmt_count(1500.0), "1.5k");
        assert_eq!(fmt_count(250.0), "250");
        assert_eq!(fmt_us(0.0), "0");
        assert_eq!(fmt_us(850.0), "850 µs");
        assert_eq!(fmt_us(1234.0), "1.23 ms");
        assert_eq!(fmt_us(2_500_000.0), "2.500 s");
    }
}
