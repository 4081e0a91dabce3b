//! Small inline SVG charts, drawn on the server: no chart library, nothing to download.

use maud::{html, Markup};

/// One line of a chart.
pub struct Series<'a> {
    /// Its name, in the legend.
    pub label: &'a str,
    /// Its CSS class (sets the colour).
    pub class: &'a str,
    /// Its values, oldest first, one per slot.
    pub values: Vec<u64>,
}

const WIDTH: f64 = 300.0;
const HEIGHT: f64 = 90.0;

/// A line chart of `series` over `slots` slots, scaled to the largest value; `total` is
/// exposed as `data-total` (what the chart adds up to, for people and tests alike).
pub fn line_chart(
    id: &str,
    title: &str,
    slots: usize,
    series: &[Series<'_>],
    total: u64,
) -> Markup {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().copied())
        .max()
        .unwrap_or(0)
        .max(1);
    let step = if slots > 1 {
        WIDTH / (slots - 1) as f64
    } else {
        WIDTH
    };
    html! {
        figure.chart {
            figcaption { (title) span.muted.small { " · max " (max) } }
            svg id=(id) data-total=(total) viewBox=(format!("0 0 {WIDTH} {HEIGHT}")) preserveAspectRatio="none"
                role="img" aria-label=(format!("{title}: {total} in all")) {
                line.axis x1="0" y1=(HEIGHT) x2=(WIDTH) y2=(HEIGHT) {}
                @for s in series {
                    polyline class=(s.class) fill="none" points=(points(&s.values, slots, step, max)) {}
                }
            }
            p.legend {
                @for s in series {
                    span class=(format!("key {}", s.class)) { (s.label) }
                }
            }
        }
    }
}

/// The polyline points of `values`, right-aligned to the last slot.
fn points(values: &[u64], slots: usize, step: f64, max: u64) -> String {
    let offset = slots.saturating_sub(values.len());
    values
        .iter()
        .enumerate()
        .map(|(i, v)| {
            let x = (offset + i) as f64 * step;
            let y = HEIGHT - (*v as f64 / max as f64) * (HEIGHT - 4.0);
            format!("{x:.1},{y:.1}")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn points_scale_to_the_largest_value_and_end_at_the_right_edge() {
        assert_eq!(
            points(&[0, 2, 4], 3, 150.0, 4),
            "0.0,90.0 150.0,47.0 300.0,4.0"
        );
        assert_eq!(points(&[4], 3, 150.0, 4), "300.0,4.0");
        let svg = line_chart(
            "c",
            "Tasks",
            2,
            &[Series {
                label: "a",
                class: "a",
                values: vec![1, 2],
            }],
            3,
        )
        .into_string();
        assert!(svg.contains(r#"data-total="3""#), "{svg}");
    }
}
