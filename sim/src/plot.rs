//! PNG plots of a fleet report, drawn with plotters into an RGB buffer and encoded with `png`.
//! Text uses the bundled DejaVu Sans through ab_glyph: no system font library is needed.

use std::path::Path;
use std::sync::Once;

use anyhow::{Context, anyhow};
use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::prelude::*;
use plotters::style::FontStyle;

const FONT: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
const WIDTH: u32 = 900;
const HEIGHT: u32 = 520;
/// Federated, alone, centralised.
pub const COLOURS: [RGBColor; 3] = [RGBColor(31, 119, 180), RGBColor(214, 39, 40), RGBColor(44, 160, 44)];
/// The federated line's plain global model, next to its personalised predictions (a lighter blue).
pub const GLOBAL_MODEL_COLOUR: RGBColor = RGBColor(140, 190, 230);

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = plotters::style::register_font("sans-serif", FontStyle::Normal, FONT);
    });
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing: {e:?}")
}

/// The legend every chart carries, in its upper right corner.
fn draw_legend<'a>(
    chart: &mut ChartContext<'a, BitMapBackend<'a>, Cartesian2d<RangedCoordf64, RangedCoordf64>>,
) -> anyhow::Result<()> {
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 15))
        .position(SeriesLabelPosition::UpperRight)
        .draw()
        .map_err(err)
}

/// Draws with `draw` on a white canvas and writes the PNG to `path`.
fn render(
    path: &Path,
    draw: impl FnOnce(&DrawingArea<BitMapBackend<'_>, Shift>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    register_font();
    let mut buf = vec![255u8; (WIDTH * HEIGHT * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(err)?;
        draw(&root)?;
        root.present().map_err(err)?;
    }
    let file = std::fs::File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut encoder = png::Encoder::new(std::io::BufWriter::new(file), WIDTH, HEIGHT);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().with_context(|| format!("writing {}", path.display()))?;
    writer.write_image_data(&buf).with_context(|| format!("writing {}", path.display()))?;
    writer.finish().with_context(|| format!("writing {}", path.display()))
}

fn upper(values: impl Iterator<Item = f64>) -> f64 {
    let max = values.filter(|v| v.is_finite()).fold(0.0f64, f64::max);
    (max * 1.15).max(1.0)
}

/// A named series of (x, y) points and its colour.
type Series = (String, Vec<(f64, f64)>, RGBColor);

/// A horizontal reference line `y` across `0..x_max`, labelled in the legend.
struct Reference<'a> {
    label: &'a str,
    y: f64,
    colour: RGBColor,
}

/// Global error per round, with the alone and centralised prequential errors as references.
pub fn global_error(path: &Path, rounds: &[(f64, f64)], references: &[(String, f64, RGBColor)]) -> anyhow::Result<()> {
    let refs: Vec<Reference<'_>> =
        references.iter().map(|(label, y, colour)| Reference { label, y: *y, colour: *colour }).collect();
    line_chart(
        path,
        "Global model: error on the held-back rows after each round",
        "round",
        "error (%)",
        &[("federated global model".to_string(), rounds.to_vec(), COLOURS[0])],
        &refs,
    )
}

/// Seconds each round took from its start to its commit.
pub fn round_duration(path: &Path, rounds: &[(f64, f64)]) -> anyhow::Result<()> {
    line_chart(
        path,
        "Round duration (start to commit)",
        "round",
        "seconds",
        &[("duration".to_string(), rounds.to_vec(), RGBColor(100, 100, 100))],
        &[],
    )
}

fn line_chart(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
    references: &[Reference<'_>],
) -> anyhow::Result<()> {
    render(path, |root| {
        let x_max = series.iter().flat_map(|(_, s, _)| s.iter().map(|p| p.0)).fold(1.0f64, f64::max);
        let y_max =
            upper(series.iter().flat_map(|(_, s, _)| s.iter().map(|p| p.1)).chain(references.iter().map(|r| r.y)));
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(44)
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..x_max + 0.5, 0.0..y_max)
            .map_err(err)?;
        chart
            .configure_mesh()
            .x_desc(x_label)
            .y_desc(y_label)
            .label_style(("sans-serif", 15))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        for (label, points, colour) in series {
            let colour = *colour;
            chart
                .draw_series(LineSeries::new(points.iter().copied(), colour.stroke_width(3)))
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(3)));
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, colour.filled()))).map_err(err)?;
        }
        for reference in references {
            let colour = reference.colour;
            chart
                .draw_series(DashedLineSeries::new(
                    [(0.0, reference.y), (x_max + 0.5, reference.y)],
                    10,
                    6,
                    colour.stroke_width(2),
                ))
                .map_err(err)?
                .label(reference.label)
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], colour.stroke_width(2)));
        }
        draw_legend(&mut chart)
    })
}

/// Grouped bars: one group per category, one bar per series (`values[series][category]`).
pub fn grouped_bars(
    path: &Path,
    title: &str,
    y_label: &str,
    categories: &[String],
    series: &[(String, Vec<Option<f64>>, RGBColor)],
) -> anyhow::Result<()> {
    render(path, |root| {
        let n = categories.len().max(1);
        let k = series.len().max(1);
        // Extra headroom: the legend sits in the upper right corner, above the bars.
        let y_max = upper(series.iter().flat_map(|(_, v, _)| v.iter().flatten().copied())) * (1.0 + 0.07 * k as f64);
        let mut chart = ChartBuilder::on(root)
            .caption(title, ("sans-serif", 22))
            .margin(16)
            .x_label_area_size(if n > 10 { 60 } else { 44 })
            .y_label_area_size(60)
            .build_cartesian_2d(0.0..n as f64, 0.0..y_max)
            .map_err(err)?;
        let names = categories.to_vec();
        let formatter = move |x: &f64| {
            let i = (x - 0.5).round();
            if (x - 0.5 - i).abs() < 1e-6 && i >= 0.0 {
                names.get(i as usize).cloned().unwrap_or_default()
            } else {
                String::new()
            }
        };
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(n * 2 + 1)
            .x_label_formatter(&formatter)
            .y_desc(y_label)
            .label_style(("sans-serif", if n > 10 { 11 } else { 15 }))
            .axis_desc_style(("sans-serif", 16))
            .draw()
            .map_err(err)?;
        let width = 0.8 / k as f64;
        for (s, (label, values, colour)) in series.iter().enumerate() {
            let colour = *colour;
            let bars = values.iter().enumerate().filter_map(|(c, v)| {
                let v = (*v)?;
                let x0 = c as f64 + 0.1 + s as f64 * width;
                Some(Rectangle::new([(x0, 0.0), (x0 + width * 0.92, v)], colour.filled()))
            });
            chart
                .draw_series(bars)
                .map_err(err)?
                .label(label.as_str())
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 14, y + 6)], colour.filled()));
            if n <= 4 {
                let texts = values.iter().enumerate().filter_map(|(c, v)| {
                    let v = (*v)?;
                    let x = c as f64 + 0.1 + (s as f64 + 0.2) * width;
                    Some(Text::new(format!("{v:.1}"), (x, v + y_max * 0.02), ("sans-serif", 16)))
                });
                chart.draw_series(texts).map_err(err)?;
            }
        }
        draw_legend(&mut chart)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plots_are_valid_pngs_of_the_right_size() {
        let dir = tempfile::tempdir().unwrap();
        let line = dir.path().join("line.png");
        global_error(&line, &[(1.0, 30.0), (2.0, 20.0)], &[("alone".into(), 25.0, COLOURS[1])]).unwrap();
        let bars = dir.path().join("bars.png");
        let series = vec![("a".to_string(), vec![Some(1.0), None], COLOURS[0])];
        grouped_bars(&bars, "t", "y", &["x".into(), "y".into()], &series).unwrap();
        for path in [line, bars] {
            let decoder = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(&path).unwrap()));
            let reader = decoder.read_info().unwrap();
            assert_eq!((reader.info().width, reader.info().height), (WIDTH, HEIGHT));
        }
    }
}
