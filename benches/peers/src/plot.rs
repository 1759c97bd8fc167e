//! Throughput (commits per CPU-second) against the client's in-flight window, for the three
//! libraries, as an SVG.

use crate::{median, run_child, Case, LIBRARIES};
use plotters::prelude::*;

/// The windows swept.
const WINDOWS: [u64; 7] = [1, 4, 16, 64, 256, 1024, 4096];

/// Measures every window `runs` times per library (alternating, each run a child process) on
/// 3 replicas with 64-byte commands, prints the medians as a Markdown table and draws them
/// into `out`.
pub fn sweep(out: &str, runs: usize) {
    let mut series: Vec<Vec<(u64, f64)>> = vec![Vec::new(); LIBRARIES.len()];
    for window in WINDOWS {
        let case = Case {
            nodes: 3,
            window,
            payload: 64,
            count: (window * 2000).clamp(20_000, 200_000),
            compact_every: crate::COMPACT_EVERY,
        };
        let mut samples: Vec<Vec<f64>> = vec![Vec::new(); LIBRARIES.len()];
        for _ in 0..runs {
            for (index, library) in LIBRARIES.iter().enumerate() {
                samples[index].push(run_child(library, case, &[]).commits_per_cpu_second);
            }
        }
        for (index, library) in LIBRARIES.iter().enumerate() {
            let value = median(samples[index].clone());
            eprintln!("B={window:>4}: {library:>9} {value:>10.0} commits/CPU-s");
            series[index].push((window, value));
        }
    }
    println!("commits per CPU-second, median of {runs}:\n");
    println!("| in-flight window | {} |", LIBRARIES.join(" | "));
    println!("|---:|{}", "---:|".repeat(LIBRARIES.len()));
    for (at, window) in WINDOWS.iter().enumerate() {
        let cells: Vec<String> = series.iter().map(|s| format!("{:.0}", s[at].1)).collect();
        println!("| {window} | {} |", cells.join(" | "));
    }
    draw(out, &series).expect("draw the plot");
    eprintln!("wrote {out}");
}

fn draw(out: &str, series: &[Vec<(u64, f64)>]) -> Result<(), Box<dyn std::error::Error>> {
    let top = series
        .iter()
        .flatten()
        .map(|&(_, value)| value)
        .fold(1.0, f64::max);
    let root = SVGBackend::new(out, (900, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            "commits per CPU-second vs in-flight window (3 replicas, 64 B commands)",
            ("sans-serif", 20),
        )
        .margin(16)
        .x_label_area_size(48)
        .y_label_area_size(90)
        .build_cartesian_2d((1.0f64..4096.0f64).log_scale(), 0.0..top * 1.1)?;
    chart
        .configure_mesh()
        .x_desc("client window B (commands in flight, log scale)")
        .y_desc("commits per CPU-second (median)")
        .x_labels(WINDOWS.len())
        .x_label_formatter(&|x| format!("{:.0}", x))
        .y_label_formatter(&|y| format!("{:.0}k", y / 1e3))
        .draw()?;
    let colors = [
        RGBColor(200, 40, 40),
        RGBColor(40, 90, 200),
        RGBColor(30, 150, 60),
    ];
    for ((library, points), color) in LIBRARIES.iter().zip(series).zip(colors) {
        let line: Vec<(f64, f64)> = points.iter().map(|&(w, v)| (w as f64, v)).collect();
        chart
            .draw_series(LineSeries::new(line.clone(), color.stroke_width(2)))?
            .label(*library)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
            });
        chart.draw_series(
            line.iter()
                .map(|&point| Circle::new(point, 4, color.filled())),
        )?;
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.9))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}
