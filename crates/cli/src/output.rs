//! Standard output that ends quietly when the reader goes away (`shoal demo | head -2`):
//! a closed pipe is remembered, later lines are dropped, and long commands check
//! [`closed`] to stop early. (`println!` would panic on the first line after it.)

use std::fmt::Arguments;
use std::io::{ErrorKind, Write};
use std::sync::atomic::{AtomicBool, Ordering};

static CLOSED: AtomicBool = AtomicBool::new(false);

/// Writes one line and flushes it; false (and nothing written) once stdout is closed.
/// Use [`outln!`].
pub(crate) fn line(args: Arguments<'_>) -> bool {
    write(args, true)
}

/// Writes without a newline and flushes; false once stdout is closed.
pub(crate) fn text(args: Arguments<'_>) -> bool {
    write(args, false)
}

fn write(args: Arguments<'_>, newline: bool) -> bool {
    if closed() {
        return false;
    }
    let mut out = std::io::stdout().lock();
    let result = out
        .write_fmt(args)
        .and_then(|()| {
            if newline {
                out.write_all(b"\n")
            } else {
                Ok(())
            }
        })
        .and_then(|()| out.flush());
    match result {
        Ok(()) => true,
        Err(e) => {
            if e.kind() != ErrorKind::BrokenPipe {
                // Another failure (a full disk under a redirect): say it once on stderr.
                let _ = writeln!(
                    std::io::stderr(),
                    "shoal: cannot write to standard output: {e}"
                );
            }
            CLOSED.store(true, Ordering::Relaxed);
            false
        }
    }
}

/// True once a write to stdout failed (the reader closed the pipe).
pub(crate) fn closed() -> bool {
    CLOSED.load(Ordering::Relaxed)
}

/// `println!` that never panics: see the module docs.
macro_rules! outln {
    () => {{
        let _ = $crate::output::line(format_args!(""));
    }};
    ($($arg:tt)*) => {{
        let _ = $crate::output::line(format_args!($($arg)*));
    }};
}

/// `print!` that never panics.
macro_rules! out {
    ($($arg:tt)*) => {{
        let _ = $crate::output::text(format_args!($($arg)*));
    }};
}

pub(crate) use {out, outln};
