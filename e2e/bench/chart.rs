//! The benchmark's chart: one PNG with throughput against the ceiling, latency per identity in
//! creation order, the latency distribution, and the operator's memory and CPU over the run.
//! Drawn with `plotters` (bitmap backend, `ab_glyph` text), the font read at run time, so nothing
//! beyond the Rust crates is needed.

use std::path::Path;

use anyhow::anyhow;
use plotters::prelude::*;

use crate::font::load_font;

pub struct ChartData {
    pub title: String,
    pub subtitle: String,
    /// The machine and the operator build, a third header line.
    pub machine: String,
    /// Per identity, in creation order: (create call started, Ready seen), seconds after the first create.
    pub identities: Vec<(f64, f64)>,
    /// The ceiling's create calls: when each was answered, seconds after the first started, sorted.
    pub ceiling_done_s: Option<Vec<f64>>,
    /// The contract floor's last step (every request of an issuance, by a plain client): when each
    /// object's last request was answered, seconds after the first started, sorted.
    pub floor_done_s: Option<Vec<f64>>,
    /// The operator over the whole run: (seconds after it started, VmRSS MiB, CPU % of one core).
    pub operator: Vec<(f64, f64, f64)>,
    /// The run's phases, seconds after the operator started: (name, start, end).
    pub phases: Vec<(String, f64, f64)>,
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

/// Draws the chart into a PNG at `path`.
pub fn draw(path: &Path, d: &ChartData) -> anyhow::Result<()> {
    load_font()?;
    draw_inner(path, d).map_err(|e| anyhow!("drawing {}: {e}", path.display()))
}

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw_inner(path: &Path, d: &ChartData) -> DrawResult {
    let root = BitMapBackend::new(path, (1600, 1100)).into_drawing_area();
    root.fill(&WHITE)?;
    let (header, body) = root.split_vertically(100);
    header.draw(&Text::new(d.title.clone(), (20, 10), ("sans-serif", 28).into_font().color(&BLACK)))?;
    let grey = RGBColor(80, 80, 80);
    header.draw(&Text::new(d.subtitle.clone(), (20, 48), ("sans-serif", 18).into_font().color(&grey)))?;
    header.draw(&Text::new(d.machine.clone(), (20, 74), ("sans-serif", 16).into_font().color(&grey)))?;
    let panels = body.split_evenly((2, 2));
    throughput(&panels[0], d)?;
    latency_by_order(&panels[1], d)?;
    distribution(&panels[2], d)?;
    operator(&panels[3], d)?;
    root.present()?;
    Ok(())
}

const READY: RGBColor = RGBColor(31, 119, 180);
const CREATED: RGBColor = RGBColor(150, 150, 150);
const CEILING: RGBColor = RGBColor(44, 160, 44);
const FLOOR: RGBColor = RGBColor(148, 103, 189);
const RSS: RGBColor = RGBColor(214, 39, 40);
const CPU: RGBColor = RGBColor(255, 127, 14);

fn cumulative(times: &[f64]) -> Vec<(f64, f64)> {
    let mut pts = vec![(0.0, 0.0)];
    pts.extend(times.iter().enumerate().map(|(i, t)| (*t, (i + 1) as f64)));
    pts
}

fn throughput(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, d: &ChartData) -> DrawResult {
    let n = d.identities.len() as f64;
    let mut ready: Vec<f64> = d.identities.iter().map(|(_, r)| *r).collect();
    ready.sort_by(f64::total_cmp);
    let mut created: Vec<f64> = d.identities.iter().map(|(c, _)| *c).collect();
    created.sort_by(f64::total_cmp);
    let wall = ready.last().copied().unwrap_or(1.0);
    let ceiling_wall = d.ceiling_done_s.as_ref().and_then(|c| c.last().copied()).unwrap_or(0.0);
    let floor_wall = d.floor_done_s.as_ref().and_then(|c| c.last().copied()).unwrap_or(0.0);
    let x_max = wall.max(ceiling_wall).max(floor_wall) * 1.05;
    let mut chart = ChartBuilder::on(area)
        .caption("Throughput: identities Ready over time, against the ceiling and the floor", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max.max(0.1), 0.0..n * 1.05)?;
    chart
        .configure_mesh()
        .x_desc("seconds after the first create")
        .y_desc("count")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    chart
        .draw_series(LineSeries::new(cumulative(&created), CREATED.stroke_width(2)))?
        .label("MtlsIdentity created (benchmark)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CREATED.stroke_width(2)));
    chart
        .draw_series(LineSeries::new(cumulative(&ready), READY.stroke_width(3)))?
        .label(format!("Ready (operator): all {n} in {wall:.1} s"))
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], READY.stroke_width(3)));
    if let Some(c) = &d.ceiling_done_s {
        chart
            .draw_series(LineSeries::new(cumulative(c), CEILING.stroke_width(3)))?
            .label(format!("ceiling: plain client creates {} Secrets in {ceiling_wall:.1} s", c.len()))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CEILING.stroke_width(3)));
    }
    if let Some(f) = &d.floor_done_s {
        chart
            .draw_series(LineSeries::new(cumulative(f), FLOOR.stroke_width(3)))?
            .label(format!(
                "contract floor: plain client makes every request of {} issuances in {floor_wall:.1} s",
                f.len()
            ))
            .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], FLOOR.stroke_width(3)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

fn latencies(d: &ChartData) -> Vec<f64> {
    d.identities.iter().map(|(c, r)| r - c).collect()
}

fn latency_by_order(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, d: &ChartData) -> DrawResult {
    let lat = latencies(d);
    let mut sorted = lat.clone();
    sorted.sort_by(f64::total_cmp);
    let y_max = sorted.last().copied().unwrap_or(1.0) * 1.08;
    let n = lat.len();
    let mut chart = ChartBuilder::on(area)
        .caption("Latency per identity, in creation order (create call -> Ready)", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..n as f64, 0.0..y_max.max(0.01))?;
    chart
        .configure_mesh()
        .x_desc("identity, in creation order")
        .y_desc("seconds")
        .x_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let size = if n > 3000 { 1 } else { 2 };
    chart
        .draw_series(lat.iter().enumerate().map(|(i, l)| Circle::new((i as f64, *l), size, READY.mix(0.5).filled())))?;
    for (q, label, color) in [(0.5, "p50", CEILING), (0.9, "p90", CPU), (0.99, "p99", RSS)] {
        let v = percentile(&sorted, q);
        chart
            .draw_series(LineSeries::new([(0.0, v), (n as f64, v)], color.stroke_width(2)))?
            .label(format!("{label} {v:.2} s"))
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2)));
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}

fn distribution(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, d: &ChartData) -> DrawResult {
    let mut sorted = latencies(d);
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len().max(1) as f64;
    let y_max = sorted.last().copied().unwrap_or(1.0) * 1.08;
    let mut chart = ChartBuilder::on(area)
        .caption("Latency distribution: share of identities Ready within t", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(0.0..y_max.max(0.01), 0.0..100.0)?;
    chart
        .configure_mesh()
        .x_desc("seconds from create call to Ready")
        .y_desc("% of identities")
        .y_label_formatter(&|v| format!("{v:.0}"))
        .label_style(("sans-serif", 14))
        .draw()?;
    let pts: Vec<(f64, f64)> = sorted.iter().enumerate().map(|(i, l)| (*l, 100.0 * (i + 1) as f64 / n)).collect();
    chart.draw_series(LineSeries::new(pts, READY.stroke_width(3)))?;
    for (q, label) in [(0.5, "p50"), (0.9, "p90"), (0.99, "p99")] {
        let v = percentile(&sorted, q);
        chart.draw_series(std::iter::once(Circle::new((v, 100.0 * q), 5, RSS.filled())))?;
        chart.draw_series(std::iter::once(Text::new(
            format!("{label} {v:.2} s"),
            (v, 100.0 * q - 7.0),
            ("sans-serif", 15).into_font().color(&BLACK),
        )))?;
    }
    Ok(())
}

fn operator(area: &DrawingArea<BitMapBackend, plotters::coord::Shift>, d: &ChartData) -> DrawResult {
    let x_max = d.operator.last().map(|p| p.0).unwrap_or(1.0).max(0.1);
    let rss_max = d.operator.iter().map(|p| p.1).fold(1.0, f64::max) * 1.15;
    let cpu_max = d.operator.iter().map(|p| p.2).fold(10.0, f64::max) * 1.15;
    let mut chart = ChartBuilder::on(area)
        .caption("Operator: resident memory and CPU over the run", ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .right_y_label_area_size(70)
        .build_cartesian_2d(0.0..x_max, 0.0..rss_max)?
        .set_secondary_coord(0.0..x_max, 0.0..cpu_max);
    chart
        .configure_mesh()
        .x_desc("seconds after the operator started")
        .y_desc("VmRSS, MiB")
        .label_style(("sans-serif", 14))
        .draw()?;
    chart.configure_secondary_axes().y_desc("CPU, % of one core").label_style(("sans-serif", 14)).draw()?;
    for (i, (name, start, end)) in d.phases.iter().enumerate() {
        let shade = if i % 2 == 0 { RGBColor(235, 242, 250) } else { RGBColor(245, 245, 235) };
        chart.draw_series(std::iter::once(Rectangle::new([(*start, 0.0), (*end, rss_max)], shade.filled())))?;
        // Too narrow a phase for its name (start-up, set-up): the shading tells it apart.
        if end - start < x_max / 25.0 {
            continue;
        }
        chart.draw_series(std::iter::once(Text::new(
            name.clone(),
            (*start, rss_max * (0.97 - 0.06 * (i % 3) as f64)),
            ("sans-serif", 14).into_font().color(&BLACK),
        )))?;
    }
    chart
        .draw_series(LineSeries::new(d.operator.iter().map(|p| (p.0, p.1)), RSS.stroke_width(2)))?
        .label("VmRSS (MiB, left)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], RSS.stroke_width(2)));
    chart
        .draw_secondary_series(LineSeries::new(d.operator.iter().map(|p| (p.0, p.2)), CPU.mix(0.8).stroke_width(1)))?
        .label("CPU (% of one core, right)")
        .legend(|(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], CPU.stroke_width(2)));
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::LowerRight)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .draw()?;
    Ok(())
}
