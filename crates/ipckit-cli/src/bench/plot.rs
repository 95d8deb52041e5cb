//! SVG plots (plotters, SVG backend): latency and throughput against
//! message size, log-log, one line per mechanism.

use std::path::Path;

use plotters::prelude::*;

use super::output::Record;
use crate::error::{Context, Result};

/// The placement plotted: pinned (to different CPUs) when measured, else the first one.
fn placement(records: &[Record]) -> &'static str {
    if records.iter().any(|r| r.placement == super::PINNED) {
        super::PINNED
    } else {
        records.first().map_or(super::UNPINNED, |r| r.placement)
    }
}

/// One line per mechanism: (size, value) points of `records` in `place`.
fn series(
    records: &[Record],
    place: &str,
    value: impl Fn(&Record) -> Option<f64>,
) -> Vec<(&'static str, Vec<(f64, f64)>)> {
    let mut out: Vec<(&'static str, Vec<(f64, f64)>)> = Vec::new();
    for r in records.iter().filter(|r| r.placement == place) {
        let Some(v) = value(r).filter(|v| v.is_finite() && *v > 0.0) else { continue };
        match out.iter_mut().find(|(n, _)| *n == r.mechanism) {
            Some((_, pts)) => pts.push((r.size as f64, v)),
            None => out.push((r.mechanism, vec![(r.size as f64, v)])),
        }
    }
    out
}

/// latency.svg: median round trip (us) against message size.
pub fn latency(records: &[Record], path: &Path) -> Result<()> {
    let place = placement(records);
    let lines = series(records, place, |r| r.latency.map(|l| l.median / 1e3));
    draw(path, &format!("Round-trip latency, median ({place})"), "round trip (us)", &lines)
}

/// throughput.svg: one-way bytes per second (MB/s) against message size.
pub fn throughput(records: &[Record], path: &Path) -> Result<()> {
    let place = placement(records);
    let lines = series(records, place, |r| r.throughput.map(|t| t.bytes_per_s / 1e6));
    draw(path, &format!("One-way throughput ({place})"), "MB/s", &lines)
}

/// Draws `lines` log-log into the SVG file `path`.
pub fn draw(path: &Path, title: &str, y_desc: &str, lines: &[(&str, Vec<(f64, f64)>)]) -> Result<()> {
    let pts = lines.iter().flat_map(|(_, p)| p.iter());
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts {
        x0 = x0.min(x);
        x1 = x1.max(x);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        (x0, x1, y0, y1) = (8.0, 1048576.0, 0.1, 10.0);
    }
    let (x0, x1) = (x0 / 1.5, x1 * 1.5);
    let (y0, y1) = (y0 / 2.0, y1 * 2.0);
    let err =
        |e: &dyn std::fmt::Display| crate::error::Failure::new(format!("drawing {}: {e}", path.display()));
    let root = SVGBackend::new(path, (1000, 650)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(70)
        .build_cartesian_2d((x0..x1).log_scale(), (y0..y1).log_scale())
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc("message size (bytes)").y_desc(y_desc).draw().map_err(|e| err(&e))?;
    for (i, (name, pts)) in lines.iter().enumerate() {
        let color = Palette99::pick(i).to_rgba();
        chart
            .draw_series(LineSeries::new(pts.iter().copied(), color.stroke_width(2)))
            .map_err(|e| err(&e))?
            .label(*name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    drop(chart);
    drop(root);
    std::fs::metadata(path).map(drop).context(format!("writing {}", path.display()))
}

#[cfg(test)]
/// Whether `text` looks like one well-formed SVG document: it starts with
/// `<svg` (after an optional XML declaration) and its tags balance.
pub fn looks_like_svg(text: &str) -> bool {
    let body = text.trim_start();
    let body = match body.strip_prefix("<?xml") {
        Some(rest) => rest.split_once("?>").map_or("", |(_, b)| b.trim_start()),
        None => body,
    };
    if !body.starts_with("<svg") {
        return false;
    }
    let mut stack: Vec<String> = Vec::new();
    let mut rest = body;
    while let Some(open) = rest.find('<') {
        let Some(close) = rest[open..].find('>') else { return false };
        let tag = &rest[open + 1..open + close];
        rest = &rest[open + close + 1..];
        if tag.starts_with('!') || tag.starts_with('?') {
            continue;
        }
        let name: String =
            tag.trim_start_matches('/').chars().take_while(|c| !c.is_whitespace() && *c != '/').collect();
        if let Some(stripped) = tag.strip_prefix('/') {
            let _ = stripped;
            if stack.pop().as_deref() != Some(name.as_str()) {
                return false;
            }
        } else if !tag.ends_with('/') {
            stack.push(name);
        }
    }
    stack.is_empty()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_plot_is_balanced_svg() {
        let dir = std::env::temp_dir().join(format!("ipckit-bench-plot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("t.svg");
        let lines = vec![("a", vec![(8.0, 1.0), (64.0, 2.0), (4096.0, 9.0)]), ("b", vec![(8.0, 0.5)])];
        draw(&path, "test", "us", &lines).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(looks_like_svg(&text), "{text}");
        assert!(text.contains("polyline") || text.contains("path"));
        // An empty plot still makes a valid file.
        draw(&path, "empty", "us", &[]).unwrap();
        assert!(looks_like_svg(&std::fs::read_to_string(&path).unwrap()));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn the_svg_check_rejects_broken_text() {
        assert!(looks_like_svg("<svg a=\"1\"><g><rect/></g></svg>"));
        assert!(!looks_like_svg("<svg><g></svg>"));
        assert!(!looks_like_svg("<html></html>"));
    }
}
