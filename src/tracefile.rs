//! `--trace FILE` / `--trace-events LIST`: the daemon's trace events ([`crate::kernel::trace`])
//! written to FILE as `/sys/kernel/tracing/trace` prints them (header, then one line per event),
//! so that tools reading ftrace's text read it too; `scripts/timeline` draws it.
//!
//! A `trace` thread drains the event ring every 50 ms (and once more at the end), appending to
//! FILE; the header's `entries-in-buffer/entries-written` line is filled in when tracing stops.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::thread::JoinHandle;

use crate::kernel::{jiffies, trace};
use crate::sys::futex;

/// The tracing options of a daemon (flatten them into its clap parser).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct TraceArgs {
    /// Record the kernel's trace events (timer:*, irq:*, workqueue:*, sched:*, task:*, cuse:*,
    /// printk:console) into FILE, in the text format of /sys/kernel/tracing/trace;
    /// `scripts/timeline FILE out.svg` draws it.
    #[arg(long, value_name = "FILE")]
    pub trace: Option<PathBuf>,
    /// Which events to record (with --trace): comma-separated names (timer_start), systems
    /// (timer:*) or all [default: all].
    #[arg(long, value_name = "LIST")]
    pub trace_events: Option<String>,
}

impl TraceArgs {
    /// Start tracing if `--trace` was given (before the runtime starts, so its threads' creation
    /// is recorded). Tracing stops, and the file is completed, when the returned value drops.
    /// Errors are one line for the CLI: a bad event list, a list without a file, a file that
    /// cannot be created.
    pub fn start(&self) -> Result<Option<Tracer>, String> {
        let events = match &self.trace_events {
            Some(list) => trace::parse_events(list).map_err(|e| format!("--trace-events: {e}"))?,
            None => trace::ALL,
        };
        match &self.trace {
            None if self.trace_events.is_some() => {
                Err("--trace-events picks what --trace FILE records: give --trace FILE too".into())
            }
            None => Ok(None),
            Some(path) => Tracer::start(path, events)
                .map(Some)
                .map_err(|e| format!("--trace {}: {e}", path.display())),
        }
    }
}

/// `#P:1`: the runtime is one CPU. The header's entries line is padded to this width so the
/// final counts fit in place.
const ENTRIES_WIDTH: usize = 64;

/// Writes the trace events to a file while it lives.
pub struct Tracer {
    stop: Arc<AtomicU32>,
    thread: Option<JoinHandle<std::io::Result<u64>>>,
}

struct Sink {
    out: BufWriter<File>,
    entries_at: u64,
    written: u64,
    line: String,
}

impl Sink {
    fn drain(&mut self) -> std::io::Result<()> {
        let mut err = None;
        let (out, line) = (&mut self.out, &mut self.line);
        self.written += trace::drain(|r| {
            line.clear();
            r.write_line(line);
            line.push('\n');
            if let Err(e) = out.write_all(line.as_bytes())
                && err.is_none()
            {
                err = Some(e);
            }
        });
        err.map_or(Ok(()), Err)
    }

    fn finish(mut self) -> std::io::Result<u64> {
        self.drain()?;
        let lost = trace::lost();
        let mut f = self.out.into_inner().map_err(|e| e.into_error())?;
        f.seek(SeekFrom::Start(self.entries_at))?;
        f.write_all(entries_line(self.written, self.written + lost).as_bytes())?;
        f.sync_data()?;
        Ok(self.written)
    }
}

fn entries_line(in_buffer: u64, written: u64) -> String {
    format!(
        "{:<width$}\n",
        format!("# entries-in-buffer/entries-written: {in_buffer}/{written}   #P:1"),
        width = ENTRIES_WIDTH
    )
}

impl Tracer {
    /// Create FILE, write the header and start recording `events` (a [`trace::parse_events`]
    /// mask).
    pub fn start(path: &std::path::Path, events: u64) -> std::io::Result<Tracer> {
        let mut out = BufWriter::new(File::create(path)?);
        const PREAMBLE: &[u8] = b"# tracer: nop\n#\n";
        out.write_all(PREAMBLE)?;
        let entries_at = PREAMBLE.len() as u64;
        out.write_all(entries_line(0, 0).as_bytes())?;
        out.write_all(HEADER.as_bytes())?;
        let mut sink = Sink {
            out,
            entries_at,
            written: 0,
            line: String::with_capacity(256),
        };
        // Events left from an earlier session in this process are not this trace's.
        trace::drain(|_| {});
        jiffies::start_ns();
        trace::set_enabled(events);
        let stop = Arc::new(AtomicU32::new(0));
        let stop2 = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("trace".into())
            .spawn(move || {
                while stop2.load(Ordering::SeqCst) == 0 {
                    sink.drain()?;
                    let deadline = jiffies::monotonic_ns() + 50_000_000;
                    while stop2.load(Ordering::SeqCst) == 0 && jiffies::monotonic_ns() < deadline {
                        futex::wait(&stop2, 0, Some(deadline));
                    }
                }
                sink.finish()
            });
        match thread {
            Ok(t) => Ok(Tracer {
                stop,
                thread: Some(t),
            }),
            Err(e) => {
                trace::set_enabled(0);
                Err(e)
            }
        }
    }

    /// Stop recording, write what is left and complete the header; returns how many events
    /// the file holds.
    pub fn finish(mut self) -> std::io::Result<u64> {
        self.stop_thread()
    }

    fn stop_thread(&mut self) -> std::io::Result<u64> {
        let Some(t) = self.thread.take() else {
            return Ok(0);
        };
        trace::set_enabled(0);
        self.stop.store(1, Ordering::SeqCst);
        futex::wake(&self.stop, 1);
        t.join()
            .unwrap_or_else(|_| Err(std::io::Error::other("the trace thread panicked")))
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_thread() {
            log::error!("writing the trace: {e}");
        }
    }
}

const HEADER: &str = "#
#                                _-----=> irqs-off/BH-disabled
#                               / _----=> need-resched
#                              | / _---=> hardirq/softirq
#                              || / _--=> preempt-depth
#                              ||| / _-=> migrate-disable
#                              |||| /     delay
#           TASK-PID     CPU#  |||||  TIMESTAMP  FUNCTION
#              | |         |   |||||     |         |
";

#[cfg(test)]
mod tests {
    use super::*;

    fn args(trace: Option<&str>, events: Option<&str>) -> TraceArgs {
        TraceArgs {
            trace: trace.map(PathBuf::from),
            trace_events: events.map(String::from),
        }
    }

    #[test]
    fn bad_options_are_one_line_each() {
        let e = args(Some("/tmp/x.trace"), Some("timer:*,nope"))
            .start()
            .err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.starts_with("--trace-events: no trace event `nope`")),
            "{e:?}"
        );
        let e = args(None, Some("timer:*")).start().err();
        assert!(
            e.as_ref().is_some_and(|e| e.contains("give --trace FILE")),
            "{e:?}"
        );
        let e = args(Some("/nonexistent-dir/x.trace"), None).start().err();
        assert!(
            e.as_ref()
                .is_some_and(|e| e.starts_with("--trace /nonexistent-dir/x.trace: ")),
            "{e:?}"
        );
        for e in ["timer:*,nope", "", "sched:timer_start"] {
            let msg = args(Some("/tmp/x.trace"), Some(e)).start().err().unwrap();
            assert!(!msg.contains('\n'), "{msg}");
        }
        assert!(
            args(None, None).start().unwrap().is_none(),
            "off by default"
        );
    }
}
