//! Progress of `apply --wait` and `rollout status`: a bar per app on a
//! terminal (indicatif), and on anything else the plain lines these
//! commands always printed, one each time what they say changes (scripts
//! and tests read them).

// Output goes through `crate::out` or the bars, so that a closed pipe ends
// the command instead of panicking.
#![deny(clippy::print_stdout, clippy::print_stderr)]

use crate::out::outln;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::collections::{BTreeMap, BTreeSet};
use std::io::IsTerminal;

/// Where one app stands: `done` of `want`, and what to say beside it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// What the bar counts: instances of the current revision that serve.
    pub done: u64,
    /// The replicas wanted.
    pub want: u64,
    /// Beside the bar: the rest of the story (ready of any revision,
    /// old replicas left, revision).
    pub message: String,
    /// The plain line for a non-terminal.
    pub line: String,
}

/// Bars on a terminal, lines elsewhere.
pub struct Progress {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    last: BTreeMap<String, String>,
    told: BTreeSet<String>,
}

impl Progress {
    /// Bars if stdout is a terminal, else lines.
    pub fn for_stdout() -> Self {
        if std::io::stdout().is_terminal() {
            Self::drawn_on(ProgressDrawTarget::stdout())
        } else {
            Self::lines()
        }
    }

    /// Plain lines.
    pub fn lines() -> Self {
        Self {
            bars: None,
            last: BTreeMap::new(),
            told: BTreeSet::new(),
        }
    }

    /// Bars drawn on `target`.
    pub fn drawn_on(target: ProgressDrawTarget) -> Self {
        Self {
            bars: Some((MultiProgress::with_draw_target(target), BTreeMap::new())),
            last: BTreeMap::new(),
            told: BTreeSet::new(),
        }
    }

    /// Shows where `name` stands.
    pub fn update(&mut self, name: &str, step: &Step) {
        match &mut self.bars {
            None => {
                if self.last.get(name) != Some(&step.line) {
                    outln!("{}", step.line);
                    self.last.insert(name.to_string(), step.line.clone());
                }
            }
            Some((multi, bars)) => {
                let bar = bars.entry(name.to_string()).or_insert_with(|| {
                    let bar = multi.add(ProgressBar::new(step.want));
                    bar.set_style(style());
                    bar.set_prefix(name.to_string());
                    bar
                });
                bar.set_length(step.want);
                bar.set_position(step.done.min(step.want));
                bar.set_message(step.message.clone());
            }
        }
    }

    /// Says `line` once, however often it is told (above the bars on a
    /// terminal).
    pub fn note(&mut self, line: &str) {
        if !self.told.insert(line.to_string()) {
            return;
        }
        match &self.bars {
            None => outln!("{line}"),
            Some((multi, _)) => {
                if multi.println(line).is_err() {
                    outln!("{line}");
                }
            }
        }
    }

    /// `name` is done: its bar stays, full, with `message`.
    pub fn finish(&mut self, name: &str, message: &str) {
        if let Some((_, bars)) = &self.bars
            && let Some(bar) = bars.get(name)
        {
            bar.set_position(bar.length().unwrap_or(0));
            bar.finish_with_message(message.to_string());
        }
    }

    /// Leaves every bar where it is (the command ends, successfully or
    /// not), so that what follows prints below them.
    pub fn stop(&mut self) {
        if let Some((_, bars)) = &self.bars {
            for bar in bars.values().filter(|b| !b.is_finished()) {
                bar.abandon();
            }
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop();
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template("{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} {msg}")
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| ProgressStyle::default_bar())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    /// A terminal that keeps what is written to it.
    #[derive(Debug, Clone, Default)]
    struct Screen(Arc<Mutex<String>>);

    impl indicatif::TermLike for Screen {
        fn width(&self) -> u16 {
            120
        }
        fn move_cursor_up(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_down(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_right(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn move_cursor_left(&self, _: usize) -> std::io::Result<()> {
            Ok(())
        }
        fn write_line(&self, s: &str) -> std::io::Result<()> {
            let mut t = self.0.lock().unwrap();
            t.push_str(s);
            t.push('\n');
            Ok(())
        }
        fn write_str(&self, s: &str) -> std::io::Result<()> {
            self.0.lock().unwrap().push_str(s);
            Ok(())
        }
        fn clear_line(&self) -> std::io::Result<()> {
            Ok(())
        }
        fn flush(&self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn step(done: u64, want: u64) -> Step {
        Step {
            done,
            want,
            message: format!("{done} up to date (revision 2)"),
            line: format!("app/web: {done}/{want} ready (revision 2)"),
        }
    }

    #[test]
    fn a_terminal_gets_a_bar_per_app_and_notes_above_them() {
        let screen = Screen::default();
        let mut p = Progress::drawn_on(ProgressDrawTarget::term_like_with_hz(
            Box::new(screen.clone()),
            1,
        ));
        p.update("default/web", &step(1, 3));
        p.update("default/api", &step(0, 2));
        p.note("  web-3 Pending: no node has room");
        p.note("  web-3 Pending: no node has room");
        p.update("default/web", &step(3, 3));
        p.finish("default/web", "ready (revision 2)");
        p.update("default/api", &step(2, 2));
        p.finish("default/api", "ready (revision 2)");
        drop(p);
        let text = console::strip_ansi_codes(&screen.0.lock().unwrap()).into_owned();
        assert_eq!(
            text.matches("web-3 Pending: no node has room").count(),
            1,
            "{text}"
        );
        // The last drawing of each bar (the lines are padded to the
        // terminal's width, not ended).
        let last = |prefix: &str| -> String {
            let at = text
                .rfind(prefix)
                .unwrap_or_else(|| panic!("no bar {prefix} in {text:?}"));
            text[at..].chars().take(80).collect()
        };
        let web = last("default/web [");
        assert!(web.contains("] 3/3 ready (revision 2)"), "{web}");
        assert!(web.contains("=".repeat(30).as_str()), "{web}");
        let api = last("default/api [");
        assert!(api.contains("] 2/2 ready (revision 2)"), "{api}");
        // Drawn as it went, not only at the end.
        assert!(text.contains("] 1/3 1 up to date (revision 2)"), "{text}");
    }

    #[test]
    fn a_bar_never_runs_past_the_replicas_wanted() {
        let screen = Screen::default();
        let mut p = Progress::drawn_on(ProgressDrawTarget::term_like_with_hz(
            Box::new(screen.clone()),
            1,
        ));
        // Four serving during a split of three wanted.
        p.update("default/web", &step(4, 3));
        p.stop();
        drop(p);
        let text = console::strip_ansi_codes(&screen.0.lock().unwrap()).into_owned();
        assert!(text.contains("] 3/3 "), "{text}");
    }
}
