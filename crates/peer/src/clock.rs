//! Wall-clock time for the peer's two time-dependent decisions about files, injected so
//! tests set the time instead of depending on how fast the machine is:
//!
//! - whether a file was hashed so soon after its last write that its stamp cannot vouch for
//!   the hashes ([`crate::stamp::Stamp::racy`]), and
//! - how often a download's resume sidecar is rewritten (the save throttle in `part.rs`).
//!
//! Wall-clock time, not a monotonic one: the racy check compares with file modification
//! times, which are wall-clock times. The throttle tolerates jumps: a clock that went back
//! simply saves at once.

use std::sync::Arc;
use std::time::SystemTime;

/// A source of wall-clock time.
pub(crate) trait Clock: Send + Sync + 'static {
    /// The current time, comparable with file modification times.
    fn now(&self) -> SystemTime;
}

/// The real clock.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> SystemTime {
        SystemTime::now()
    }
}

/// The clock a component uses when nobody injects one.
pub(crate) fn system() -> Arc<dyn Clock> {
    Arc::new(SystemClock)
}

#[cfg(test)]
pub(crate) use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, SystemTime};

    use super::Clock;

    /// A clock that moves only when told to, for deterministic tests. Clones share the time.
    #[derive(Clone, Debug)]
    pub(crate) struct ManualClock {
        now: Arc<Mutex<SystemTime>>,
    }

    impl ManualClock {
        /// A clock showing `t`.
        pub(crate) fn at(t: SystemTime) -> Self {
            ManualClock {
                now: Arc::new(Mutex::new(t)),
            }
        }

        /// Moves the time forward by `d`.
        pub(crate) fn advance(&self, d: Duration) {
            let mut now = self.now.lock().unwrap_or_else(|e| e.into_inner());
            *now += d;
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> SystemTime {
            *self.now.lock().unwrap_or_else(|e| e.into_inner())
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_manual_clock_moves_only_when_told_and_clones_share_it() {
        let start = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let clock = ManualClock::at(start);
        let seen = clock.clone();
        assert_eq!(seen.now(), start);
        clock.advance(Duration::from_millis(250));
        assert_eq!(seen.now(), start + Duration::from_millis(250));
        assert!(SystemClock.now() > start);
    }
}
