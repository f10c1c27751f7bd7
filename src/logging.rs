//! The daemon's log, on stderr: the kernel's lines as dmesg shows them, its own as `deferred: ...`.

use std::io::Write;

use crate::kernel::printk::{self, Level};

/// Logging, in one place. The daemon's own messages go through `log` (env_logger) and read
/// `deferred: ...`. Kernel lines (printk) go to stderr from the printk console itself, a batch
/// per write, at the console level the same filter gives the target `printk` (`-v` or
/// `RUST_LOG=info,printk=debug`: debug lines too; `RUST_LOG=warn`: warnings and worse).
pub fn init(verbose: u8) {
    let level = match verbose {
        0 => log::LevelFilter::Info,
        1 => log::LevelFilter::Debug,
        _ => log::LevelFilter::Trace,
    };
    let logger = env_logger::Builder::new()
        .filter_level(level)
        .parse_env("RUST_LOG")
        .format(|buf, record| {
            if record.level() <= log::Level::Warn {
                writeln!(buf, "deferred: {}", record.args())
            } else {
                writeln!(
                    buf,
                    "deferred: [{} {}] {}",
                    record.level(),
                    record.target(),
                    record.args()
                )
            }
        })
        .build();
    let printk_enabled = |l: Level| {
        let m = log::Metadata::builder()
            .target("printk")
            .level(l.log_level())
            .build();
        log::Log::enabled(&logger, &m)
    };
    let console_level = [Level::Debug, Level::Info, Level::Warning, Level::Err]
        .into_iter()
        .find(|&l| printk_enabled(l));
    log::set_max_level(logger.filter());
    // Fails only if a logger is set already (then that one stays).
    let _ = log::set_boxed_logger(Box::new(logger));
    printk::register_console(Box::new(std::io::stderr()), console_level);
}
