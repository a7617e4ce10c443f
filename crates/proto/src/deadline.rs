//! A bound on how long one frame may take to arrive.
//!
//! A socket read timeout alone does not stop a slowloris client: one byte every second
//! resets it forever, and each such client pins a connection. [`FrameDeadline`] starts a
//! clock at the first byte of a frame and fails every read once the frame has taken longer
//! than its budget. Servers also set the socket's read timeout to the same budget, so a
//! client that goes silent in the middle of a frame is dropped just as fast; a quiet
//! connection *between* frames is the idle timeout's business (see
//! [`crate::ProtoError::Idle`]).

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

/// Wraps a stream; see the module docs.
#[derive(Debug)]
pub struct FrameDeadline<S> {
    inner: S,
    budget: Duration,
    started: Option<Instant>,
}

impl<S> FrameDeadline<S> {
    /// Each frame (or handshake) gets `budget` from its first byte to its last.
    pub fn new(inner: S, budget: Duration) -> Self {
        FrameDeadline {
            inner,
            budget,
            started: None,
        }
    }

    /// The current frame is complete; the next byte starts a new clock.
    pub fn frame_done(&mut self) {
        self.started = None;
    }

    /// The wrapped stream.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped stream, mutably (writes go straight to it).
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }
}

impl<S: Read> Read for FrameDeadline<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(started) = self.started
            && started.elapsed() > self.budget
        {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "a frame took longer than {} ms to arrive",
                    self.budget.as_millis()
                ),
            ));
        }
        let n = self.inner.read(buf)?;
        if n > 0 && self.started.is_none() {
            self.started = Some(Instant::now());
        }
        Ok(n)
    }
}

impl<S: Write> Write for FrameDeadline<S> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.inner.write(buf)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Hands out one byte per read, pretending each took `step` of time by moving the
    /// deadline's start back: no sleeping.
    struct Trickle(Vec<u8>);

    impl Read for Trickle {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.0.is_empty() || buf.is_empty() {
                return Ok(0);
            }
            buf[0] = self.0.remove(0);
            Ok(1)
        }
    }

    #[test]
    fn a_slow_frame_fails_and_a_new_frame_gets_a_new_clock() {
        let mut slow = FrameDeadline::new(Trickle(vec![1; 10]), Duration::from_secs(5));
        let mut byte = [0u8; 1];
        assert_eq!(slow.read(&mut byte).unwrap(), 1);
        // Pretend the frame started long ago.
        slow.started = Some(Instant::now() - Duration::from_secs(6));
        let err = slow.read(&mut byte).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        slow.frame_done();
        assert_eq!(slow.read(&mut byte).unwrap(), 1);
    }
}
