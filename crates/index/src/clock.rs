//! Time for leases, injected so tests decide when a lease lapses instead of sleeping.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// A monotonic source of time for leases.
pub trait Clock: Send + Sync + 'static {
    /// Time elapsed since an arbitrary, fixed epoch; never goes backwards.
    fn now(&self) -> Duration;
}

/// The real clock: monotonic time since the clock was created (wall-clock jumps, such as an
/// NTP correction, never expire or extend a lease).
#[derive(Clone, Copy, Debug)]
pub struct SystemClock {
    epoch: Instant,
}

impl SystemClock {
    /// A clock whose epoch is now.
    pub fn new() -> Self {
        SystemClock {
            epoch: Instant::now(),
        }
    }
}

impl Default for SystemClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for SystemClock {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }
}

/// Wall-clock time since the Unix epoch: the clock several index servers sharing one
/// registry (a [`crate::RedisStore`]) agree on, so a lease one of them granted lapses at the
/// same moment for all. Their clocks should be kept in step (NTP): a skew of a second moves
/// a 60 s lease by a second. Never goes backwards, even if the system clock does.
#[derive(Debug, Default)]
pub struct UnixClock {
    last: AtomicU64,
}

impl UnixClock {
    /// The system's wall clock.
    pub fn new() -> Self {
        Self::default()
    }
}

impl Clock for UnixClock {
    fn now(&self) -> Duration {
        let wall = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        Duration::from_millis(self.last.fetch_max(wall, Ordering::SeqCst).max(wall))
    }
}

/// A clock that moves only when told to, for deterministic tests. Clones share the time.
///
/// ```
/// use std::time::Duration;
/// use shoal_index::{Clock, ManualClock};
///
/// let clock = ManualClock::new();
/// let seen_by_store = clock.clone();
/// clock.advance(Duration::from_secs(61));
/// assert_eq!(seen_by_store.now(), Duration::from_secs(61));
/// ```
#[derive(Clone, Debug, Default)]
pub struct ManualClock {
    millis: Arc<AtomicU64>,
}

impl ManualClock {
    /// A clock at time zero.
    pub fn new() -> Self {
        Self::default()
    }

    /// Moves the time forward by `d` (millisecond resolution).
    pub fn advance(&self, d: Duration) {
        let millis = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        // fetch_update never fails with a closure that always returns Some.
        let _ = self
            .millis
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |m| {
                Some(m.saturating_add(millis))
            });
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Duration {
        Duration::from_millis(self.millis.load(Ordering::SeqCst))
    }
}

impl<C: Clock + ?Sized> Clock for Arc<C> {
    fn now(&self) -> Duration {
        (**self).now()
    }
}
