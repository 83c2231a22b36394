//! A small logger: one line per event, `key=value` context, to a file or to stderr, never
//! to stdout (stdout carries the CNI result). No logging framework: the binary stays small
//! and starts fast.
//!
//! Lines look like
//! `2024-... ts_ms=1700000000123 level=info cmd=ADD container=4f1d2c3b4a59 ifname=eth0 msg="..."`.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::path::Path;
use std::sync::{Mutex, OnceLock};
use std::time::{SystemTime, UNIX_EPOCH};

/// How much to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Level {
    /// Failures only.
    Error,
    /// Failures and surprises.
    Warn,
    /// One line per step of consequence (the default).
    Info,
    /// Every kernel and manager step.
    Debug,
}

impl Level {
    /// Parses `error`, `warn`, `info`, `debug` (any case).
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s.to_ascii_lowercase().as_str() {
            "error" => Level::Error,
            "warn" | "warning" => Level::Warn,
            "info" => Level::Info,
            "debug" => Level::Debug,
            _ => return None,
        })
    }

    fn as_str(self) -> &'static str {
        match self {
            Level::Error => "error",
            Level::Warn => "warn",
            Level::Info => "info",
            Level::Debug => "debug",
        }
    }
}

struct Logger {
    level: Level,
    context: String,
    sink: Box<dyn Write + Send>,
}

static LOGGER: OnceLock<Mutex<Logger>> = OnceLock::new();

/// Sets up logging once per process: to `file` (appended, created 0600) or stderr.
/// `context` is prepended to every line (`cmd=ADD container=... ifname=...`).
pub fn init(level: Level, file: Option<&Path>, context: String) -> std::io::Result<()> {
    let sink: Box<dyn Write + Send> = match file {
        Some(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            use std::os::unix::fs::OpenOptionsExt;
            Box::new(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .open(path)?,
            )
        }
        None => Box::new(std::io::stderr()),
    };
    let _ = LOGGER.set(Mutex::new(Logger {
        level,
        context,
        sink,
    }));
    Ok(())
}

/// Logs one line at `level` (dropped if below the configured level or before `init`,
/// except errors and warnings, which go to stderr before `init`).
pub fn write(level: Level, args: fmt::Arguments<'_>) {
    let ts = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    match LOGGER.get() {
        Some(logger) => {
            let Ok(mut l) = logger.lock() else { return };
            if level > l.level {
                return;
            }
            let line = format!(
                "ts_ms={ts} level={} {} msg={:?}\n",
                level.as_str(),
                l.context,
                args.to_string()
            );
            let _ = l.sink.write_all(line.as_bytes());
        }
        None if level <= Level::Warn => {
            let _ = writeln!(
                std::io::stderr(),
                "ts_ms={ts} level={} msg={:?}",
                level.as_str(),
                args.to_string()
            );
        }
        None => {}
    }
}

/// `log!(Level::Info, "format", args...)`.
#[macro_export]
macro_rules! log {
    ($level:expr, $($arg:tt)*) => {
        $crate::log::write($level, format_args!($($arg)*))
    };
}
