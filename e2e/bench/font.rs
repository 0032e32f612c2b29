//! The font the charts draw their text with (`plotters`' `ab_glyph` backend), read at run time
//! from the system's DejaVu Sans: shared by the benchmark's chart and the dashboard picture
//! (e2e/tests/alerts.rs).

use std::path::Path;

use anyhow::{Context as _, anyhow};
use plotters::style::{FontStyle, register_font};

const FONT_PATHS: &[&str] = &[
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
];

/// Registers DejaVu Sans as "sans-serif".
pub fn load_font() -> anyhow::Result<()> {
    let path = FONT_PATHS
        .iter()
        .find(|p| Path::new(p).exists())
        .ok_or_else(|| anyhow!("no DejaVuSans.ttf found (install fonts-dejavu-core); looked in {FONT_PATHS:?}"))?;
    let bytes: &'static [u8] =
        Box::leak(std::fs::read(path).with_context(|| format!("reading {path}"))?.into_boxed_slice());
    register_font("sans-serif", FontStyle::Normal, bytes).map_err(|_| anyhow!("{path} is not a usable font"))?;
    Ok(())
}
