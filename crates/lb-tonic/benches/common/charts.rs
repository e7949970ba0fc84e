//! SVG charts of the end-to-end benches, drawn with plotters into the directory of
//! `GRPC_LB_BENCH_DOC` (`docs/charts/` under `cargo xtask bench`).

use std::collections::BTreeMap;
use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use plotters::prelude::*;

type Result<T = ()> = std::result::Result<T, Box<dyn Error>>;

const FONT: &str = "sans-serif";

/// Series colours, in order: distinct in print and for the common colour blindnesses
/// (Okabe and Ito's palette).
const PALETTE: [RGBColor; 7] = [
    RGBColor(0, 114, 178),
    RGBColor(230, 159, 0),
    RGBColor(0, 158, 115),
    RGBColor(204, 121, 167),
    RGBColor(86, 180, 233),
    RGBColor(213, 94, 0),
    RGBColor(240, 228, 66),
];
const FAILED: RGBColor = RGBColor(200, 30, 30);

/// Where chart `name` goes: `charts/<name>` beside the file at `GRPC_LB_BENCH_DOC`;
/// `None` without the variable (a bench run outside `cargo xtask bench`).
pub fn chart_path(name: &str) -> Option<PathBuf> {
    let doc = PathBuf::from(std::env::var_os("GRPC_LB_BENCH_DOC")?);
    let dir = doc.parent()?.join("charts");
    if let Err(e) = std::fs::create_dir_all(&dir) {
        eprintln!("cannot create {}: {e}", dir.display());
        return None;
    }
    Some(dir.join(name))
}

/// Reports a chart written or failed; a chart that cannot be drawn does not fail the
/// bench (its tables are already written).
fn report(path: &std::path::Path, result: Result) {
    match result {
        Ok(()) => println!("wrote {}", path.display()),
        Err(e) => eprintln!("cannot draw {}: {e}", path.display()),
    }
}

/// One client's measurements at one concurrency.
pub struct Point {
    pub concurrency: usize,
    pub rps: f64,
    pub p99: Duration,
}

/// What a panel of the concurrency chart shows of a point.
type Metric = fn(&Point) -> f64;

/// Throughput (left) and p99 latency (right) against concurrency, one line per
/// client, into `charts/<name>`.
pub fn concurrency_chart(name: &str, title: &str, clients: &[(&str, Vec<Point>)]) {
    let Some(path) = chart_path(name) else {
        return;
    };
    report(&path, draw_concurrency(&path, title, clients));
}

fn draw_concurrency(path: &std::path::Path, title: &str, clients: &[(&str, Vec<Point>)]) -> Result {
    let root = SVGBackend::new(path, (1200, 520)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let (left, right) = root.split_horizontally(600);
    let max_c = clients
        .iter()
        .flat_map(|(_, p)| p.iter().map(|p| p.concurrency))
        .max()
        .unwrap_or(1)
        .max(2);
    // Concurrency doubles between ticks: x is log2(concurrency).
    let x_max = (max_c as f64).log2();
    let panels: [(&str, &str, Metric); 2] = [
        ("Throughput", "RPC/s", |p| p.rps),
        ("p99 latency", "p99 (ms)", |p| p.p99.as_secs_f64() * 1e3),
    ];
    for (area, (caption, y_desc, value)) in [left, right].iter().zip(panels) {
        let y_max = clients
            .iter()
            .flat_map(|(_, p)| p.iter().map(value))
            .fold(0.0, f64::max)
            * 1.1;
        let mut chart = ChartBuilder::on(area)
            .caption(caption, (FONT, 18))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..y_max.max(1.0))?;
        chart
            .configure_mesh()
            .x_desc("concurrency")
            .y_desc(y_desc)
            .x_labels(x_max as usize + 1)
            .x_label_formatter(&|x| format!("{}", 2f64.powf(*x).round()))
            .y_label_formatter(&|y| {
                if *y >= 1000.0 {
                    format!("{:.0}k", y / 1000.0)
                } else {
                    format!("{y:.1}")
                }
            })
            .light_line_style(WHITE.mix(0.0))
            .label_style((FONT, 13))
            .draw()?;
        for (i, (client, points)) in clients.iter().enumerate() {
            let color = PALETTE[i % PALETTE.len()];
            let data: Vec<(f64, f64)> = points
                .iter()
                .map(|p| ((p.concurrency as f64).log2(), value(p)))
                .collect();
            chart
                .draw_series(LineSeries::new(data.clone(), color.stroke_width(2)))?
                .label(*client)
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
            chart.draw_series(data.into_iter().map(|c| Circle::new(c, 4, color.filled())))?;
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperLeft)
            .label_font((FONT, 13))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;
    }
    root.present()?;
    Ok(())
}

/// RPCs served per backend and RPCs failed, in 100 ms buckets from a run's start to
/// its end (a last partial bucket is left out: it would show as a drop).
pub struct Timeline {
    start: Instant,
    buckets: usize,
    served: BTreeMap<String, Vec<u32>>,
    failed: Vec<u32>,
    failed_total: usize,
    /// What happened when, in seconds since the start (a kill, a restart).
    marks: Vec<(f64, String)>,
}

/// A timeline's bucket width.
pub const BUCKET: Duration = Duration::from_millis(100);

impl Timeline {
    /// An empty timeline of the whole buckets between `start` and `end`.
    pub fn new(start: Instant, end: Instant) -> Self {
        let buckets =
            (end.saturating_duration_since(start).as_nanos() / BUCKET.as_nanos()) as usize;
        Timeline {
            start,
            buckets,
            served: BTreeMap::new(),
            failed: vec![0; buckets],
            failed_total: 0,
            marks: Vec::new(),
        }
    }

    /// Marks `label` at `at`, drawn as a vertical line.
    pub fn mark(&mut self, at: Instant, label: &str) {
        let t = at.saturating_duration_since(self.start).as_secs_f64();
        self.marks.push((t, label.to_owned()));
    }

    /// The bucket of `at`, if it is a whole one.
    fn bucket(&self, at: Instant) -> Option<usize> {
        let i = (at.saturating_duration_since(self.start).as_nanos() / BUCKET.as_nanos()) as usize;
        (i < self.buckets).then_some(i)
    }

    /// `server` answered an RPC at `at` (successfully: a failure names no server).
    pub fn served(&mut self, server: &str, at: Instant) {
        let Some(i) = self.bucket(at) else { return };
        let buckets = self.buckets;
        let counts = match self.served.get_mut(server) {
            Some(c) => c,
            None => self
                .served
                .entry(server.to_owned())
                .or_insert_with(|| vec![0; buckets]),
        };
        counts[i] += 1;
    }

    /// An RPC failed at `at`.
    pub fn failed(&mut self, at: Instant) {
        if let Some(i) = self.bucket(at) {
            self.failed[i] += 1;
            self.failed_total += 1;
        }
    }
}

/// One panel per client: RPCs that succeeded per backend per 100 ms (lines) over RPCs
/// failed per 100 ms (bars; left out when no run failed any), on shared scales, with
/// each timeline's marks as vertical lines. A backend has one colour throughout.
pub fn timeline_chart(name: &str, title: &str, runs: &[(&str, &Timeline)]) {
    let Some(path) = chart_path(name) else {
        return;
    };
    report(&path, draw_timeline(&path, title, runs));
}

fn draw_timeline(path: &std::path::Path, title: &str, runs: &[(&str, &Timeline)]) -> Result {
    let with_failures = runs.iter().any(|(_, t)| t.failed_total > 0);
    let row_height = if with_failures { 330 } else { 230 };
    let root =
        SVGBackend::new(path, (1100, 60 + row_height * runs.len() as u32)).into_drawing_area();
    root.fill(&WHITE)?;
    let root = root.titled(title, (FONT, 22))?;
    let buckets = runs
        .iter()
        .map(|(_, t)| t.buckets)
        .max()
        .unwrap_or(1)
        .max(1);
    let x_max = buckets as f64 * BUCKET.as_secs_f64();
    let served_max = runs
        .iter()
        .flat_map(|(_, t)| t.served.values().flatten())
        .copied()
        .max()
        .unwrap_or(1) as f64
        * 1.15;
    let failed_max = runs
        .iter()
        .flat_map(|(_, t)| t.failed.iter())
        .copied()
        .max()
        .unwrap_or(0)
        .max(1) as f64
        * 1.15;
    let width = BUCKET.as_secs_f64();
    let servers: std::collections::BTreeSet<&str> = runs
        .iter()
        .flat_map(|(_, t)| t.served.keys().map(String::as_str))
        .collect();
    let colour = |server: &str| {
        let i = servers.iter().position(|s| *s == server).unwrap_or(0);
        PALETTE[i % PALETTE.len()]
    };
    let rows = root.split_evenly((runs.len(), 1));
    for ((client, timeline), row) in runs.iter().zip(rows) {
        let (top, bottom) = if with_failures {
            let (top, bottom) = row.split_vertically(row_height * 62 / 100);
            (top, Some(bottom))
        } else {
            (row, None)
        };
        let caption = if with_failures {
            format!("{client}: {} failed RPCs", timeline.failed_total)
        } else {
            (*client).to_owned()
        };
        let mut served = ChartBuilder::on(&top)
            .caption(caption, (FONT, 17))
            .margin(8)
            .x_label_area_size(if with_failures { 10 } else { 35 })
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..served_max)?;
        let mut mesh = served.configure_mesh();
        mesh.y_desc("succeeded / 100 ms")
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .label_style((FONT, 12));
        if with_failures {
            mesh.x_labels(0); // the failures panel below has the time axis
        } else {
            mesh.x_desc("seconds since the load started");
        }
        mesh.draw()?;
        for (server, counts) in &timeline.served {
            let color = colour(server);
            let data = counts
                .iter()
                .enumerate()
                .map(|(b, &n)| ((b as f64 + 0.5) * width, f64::from(n)));
            served
                .draw_series(LineSeries::new(data, color.stroke_width(2)))?
                .label(server.as_str())
                .legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 20, y)], color.stroke_width(2))
                });
        }
        for (at, label) in &timeline.marks {
            served.draw_series(LineSeries::new(
                [(*at, 0.0), (*at, served_max)],
                BLACK.mix(0.5).stroke_width(1),
            ))?;
            served.draw_series([Text::new(
                label.to_string(),
                (*at + width / 2.0, served_max * 0.97),
                (FONT, 12),
            )])?;
        }
        served
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .label_font((FONT, 12))
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK.mix(0.4))
            .draw()?;

        let Some(bottom) = bottom else { continue };
        let mut failed = ChartBuilder::on(&bottom)
            .margin(8)
            .x_label_area_size(35)
            .y_label_area_size(70)
            .build_cartesian_2d(0f64..x_max, 0f64..failed_max)?;
        failed
            .configure_mesh()
            .x_desc("seconds since the load started")
            .y_desc("failed / 100 ms")
            .y_labels(4)
            .y_label_formatter(&|y| format!("{y:.0}"))
            .light_line_style(WHITE.mix(0.0))
            .label_style((FONT, 12))
            .draw()?;
        failed.draw_series(
            timeline
                .failed
                .iter()
                .enumerate()
                .filter(|(_, n)| **n > 0)
                .map(|(b, &n)| {
                    let x = b as f64 * width;
                    Rectangle::new([(x, 0.0), (x + width, f64::from(n))], FAILED.filled())
                }),
        )?;
        for (at, _) in &timeline.marks {
            failed.draw_series(LineSeries::new(
                [(*at, 0.0), (*at, failed_max)],
                BLACK.mix(0.5).stroke_width(1),
            ))?;
        }
    }
    root.present()?;
    Ok(())
}
