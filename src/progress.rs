//! Progress bars for the jobs that move bytes (`backup`, `restore`).
//!
//! # Invariants
//!
//! - A bar draws only on stderr, never on stdout (which carries reports and `--json`).
//! - A disabled bar (not a terminal, or `--progress` off) is hidden: every call on it is a
//!   no-op, so callers update it unconditionally.

/// A byte progress bar on stderr (hidden when `enabled` is false: not a terminal).
pub(crate) fn progress_bar(total: u64, enabled: bool) -> indicatif::ProgressBar {
    if !enabled {
        return indicatif::ProgressBar::hidden();
    }
    let pb = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::stderr(),
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} ETA {eta}",
    ) {
        pb.set_style(style.progress_chars("=> "));
    }
    pb
}
