//! [`RedisStore`]: the registry in a shared Redis (or Valkey), so several stateless index
//! servers serve one registry and any of them answers any request alike.
//!
//! Every [`Store`] operation is one call of one Lua script (`redis.lua`, loaded once and then
//! called by its hash), so it is one round trip and atomic: a lookup picks a random live
//! holder with `SRANDMEMBER` and checks its lease in the same call (a small read-only script,
//! `redis_locate.lua`, for the common case), a heartbeat renews a
//! holder with any number of files by moving one score, and a search pages through one hash
//! with `HSCAN ... MATCH`. The key layout is in docs/ARCHITECTURE.md.
//!
//! The store is also its own [`NodeBindings`] (the holders' node ids, see [`crate::nodes`]),
//! under `{P}:node:<holder>`, so every index server on the registry checks and answers the
//! same bindings: a claim is one call of `redis_nodes.lua`, a check one `GET`, the ids of a
//! lookup's holders one `MGET`.
//!
//! Leases are scores (ms of the store's [`Clock`], by default [`UnixClock`], which every
//! server shares); a lookup never returns a lapsed holder, and [`Store::sweep_expired`]
//! removes them for good. Redis trouble is typed: while Redis cannot be reached every call
//! fails within the timeout with [`StoreError::Unavailable`], one log line marks the outage
//! and one its end, and connections are retried with a growing backoff.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use redis::{Client, Connection, RedisError, Script, ScriptInvocation, Value};
use shoal_proto::message::{HolderNode, SearchHit};
use shoal_proto::{FileId, FileKey, FileMeta, NodeId, PeerAddr};

use crate::nodes::{BoundToOther, Claimed, NodeBindings, Refusal};
use crate::partial::{Sources, merge_hits};
use crate::{
    Clock, DEFAULT_LEASE, LimitExceeded, RegistrationLimits, Search, Store, StoreError, UnixClock,
};

/// The key prefix unless one is given: keys are `{shoal}:...`.
pub const DEFAULT_PREFIX: &str = "shoal";
/// How long one Redis round trip (or connection attempt) may take before the request gets
/// "registry unavailable".
pub const DEFAULT_REDIS_TIMEOUT: Duration = Duration::from_secs(2);

/// Listing fields a search asks Redis to look at per round trip.
const SEARCH_PAGE: usize = 2000;
/// Holders a sweep removes per round trip (each call blocks Redis only briefly).
const SWEEP_BATCH: usize = 500;
/// Idle connections kept for reuse; more are closed after use.
const MAX_IDLE: usize = 128;
/// Reconnection backoff: first wait, and the most it grows to.
const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// Longest prefix accepted.
const MAX_PREFIX: usize = 64;

const SCRIPT: &str = include_str!("redis.lua");
/// The holders' node-id bindings (see [`crate::nodes`]): claim, undo, forget.
const NODES_SCRIPT: &str = include_str!("redis_nodes.lua");
/// `locate`'s common case (one listing, a live holder among 8 picks), read-only and small:
/// a fraction of the full script's cost in Redis.
const LOCATE_SCRIPT: &str = include_str!("redis_locate.lua");

/// How a [`RedisStore`] uses its Redis.
#[derive(Clone, Debug)]
pub struct RedisOptions {
    /// Every key starts with `{prefix}:`, so several registries (swarms) share one Redis;
    /// the braces are a hash tag: Redis Cluster keeps one registry on one shard.
    pub prefix: String,
    /// Most time one round trip or connection attempt may take.
    pub timeout: Duration,
    /// How long a registration lives without renewal.
    pub lease: Duration,
}

impl Default for RedisOptions {
    fn default() -> Self {
        RedisOptions {
            prefix: DEFAULT_PREFIX.to_string(),
            timeout: DEFAULT_REDIS_TIMEOUT,
            lease: DEFAULT_LEASE,
        }
    }
}

/// A [`Store`] in Redis, shared by every index server given the same URL and prefix.
///
/// ```no_run
/// use shoal_index::{RedisOptions, RedisStore, Store};
/// use shoal_proto::{FileId, FileKey, FileMeta, PeerAddr};
///
/// let store = RedisStore::open("redis://127.0.0.1:6379/0", RedisOptions::default()).unwrap();
/// let song = FileMeta { name: "song.ogg".into(), size: 5, chunk_size: 1024, id: FileId([7; 32]) };
/// let alice = PeerAddr::new("alice:7000").unwrap();
/// store.register(&alice, &[song.clone()]).unwrap();
/// assert_eq!(store.locate(&FileKey::Name("song.ogg".into())).unwrap(), Some((song, alice)));
/// ```
pub struct RedisStore {
    client: Client,
    /// host:port/db, for messages (never the password).
    target: String,
    /// `{prefix}`: KEYS[1] of every call.
    base: String,
    script: Script,
    locate_script: Script,
    nodes_script: Script,
    idle: Mutex<Vec<Connection>>,
    /// Fast path: false while Redis answers.
    troubled: AtomicBool,
    health: Mutex<Health>,
    timeout: Duration,
    lease: Duration,
    clock: Arc<dyn Clock>,
    rng: Mutex<StdRng>,
    identity: Mutex<Option<String>>,
    /// Set when Redis answered again after an outage: it may have come back empty, so the
    /// identity is written back (if no other server did first) at the next ask.
    identity_stale: AtomicBool,
}

/// An outage in progress.
#[derive(Default)]
struct Health {
    outage: Option<Outage>,
}

struct Outage {
    since: Instant,
    next_try: Instant,
    backoff: Duration,
    reason: String,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://[:PASSWORD@]HOST:PORT[/DB]`). Checks the URL
    /// and the prefix, and tries to connect once: an unreachable Redis is logged (one
    /// line) and answered "registry unavailable" until it is reachable, not an error here,
    /// so an index may start before its Redis.
    pub fn open(url: &str, options: RedisOptions) -> Result<Self, StoreError> {
        check_prefix(&options.prefix)?;
        let client = Client::open(url).map_err(|e| {
            StoreError::Config(format!(
                "{} is not a Redis URL (redis://HOST:PORT[/DB]): {e}",
                without_password(url)
            ))
        })?;
        let info = client.get_connection_info();
        let target = format!("{}/{}", info.addr(), info.redis_settings().db());
        let store = RedisStore {
            client,
            target,
            base: format!("{{{}}}", options.prefix),
            script: Script::new(SCRIPT),
            locate_script: Script::new(LOCATE_SCRIPT),
            nodes_script: Script::new(NODES_SCRIPT),
            idle: Mutex::new(Vec::new()),
            troubled: AtomicBool::new(false),
            health: Mutex::new(Health::default()),
            timeout: options.timeout,
            lease: options.lease,
            clock: Arc::new(UnixClock::new()),
            rng: Mutex::new(StdRng::from_os_rng()),
            identity: Mutex::new(None),
            identity_stale: AtomicBool::new(false),
        };
        // Connects (and loads the script) now, so the first request does not pay for it;
        // failing is logged by `call`, not fatal.
        let _ = store.identity();
        Ok(store)
    }

    /// Takes lease time from `clock` instead of the wall clock: tests pass a
    /// [`crate::ManualClock`]. Every server on one registry must use the same time.
    pub fn with_clock(mut self, clock: impl Clock) -> Self {
        self.clock = Arc::new(clock);
        self
    }

    /// Seeds the random choices (the fallback pick among live holders), for tests.
    pub fn with_seed(self, seed: u64) -> Self {
        *lock(&self.rng) = StdRng::seed_from_u64(seed);
        self
    }

    /// Where the store is: `HOST:PORT/DB` and the key prefix, for messages.
    pub fn describe(&self) -> String {
        format!("redis {} prefix {}", self.target, self.base)
    }

    /// The registry's identity: the same for every server on this Redis and prefix (a
    /// random id the first server stored there), so peers can tell two addresses of one
    /// registry from two registries. `None` while Redis cannot be reached.
    pub fn identity(&self) -> Option<String> {
        let key = format!("{}:id", self.base);
        if let Some(id) = lock(&self.identity).clone() {
            if self.identity_stale.swap(false, Ordering::AcqRel) {
                // A Redis that came back empty gets the same identity again, so peers that
                // grouped this server with others before the outage stay right.
                let raw = id.strip_prefix("redis:").unwrap_or(&id).to_string();
                let _ = self.call(|con| redis::cmd("SET").arg(&key).arg(&raw).arg("NX").exec(con));
            }
            return Some(id);
        }
        let fresh = format!("{:032x}", lock(&self.rng).random::<u128>());
        let id: String = self
            .call(|con| {
                redis::cmd("SET")
                    .arg(&key)
                    .arg(&fresh)
                    .arg("NX")
                    .exec(con)?;
                redis::cmd("GET").arg(&key).query(con)
            })
            .ok()?;
        let id = format!("redis:{id}");
        *lock(&self.identity) = Some(id.clone());
        Some(id)
    }

    /// Bytes of memory the Redis server uses (`INFO memory`, `used_memory`), for the
    /// benchmark's cost per registration.
    pub fn used_memory(&self) -> Result<u64, StoreError> {
        let info: String = self.call(|con| redis::cmd("INFO").arg("memory").query(con))?;
        info.lines()
            .find_map(|l| l.strip_prefix("used_memory:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| StoreError::Failed("INFO memory has no used_memory".into()))
    }

    /// Complete registrations, listings and holders stored (lapsed ones included until
    /// swept), for tests and diagnostics; costs a pass over every holder.
    pub fn counts(&self) -> Result<(u64, u64, u64), StoreError> {
        let reply = self.run(&["count", "0", "c"], &[])?;
        let Value::Array(v) = reply else {
            return Err(bad_reply("count", &reply));
        };
        match v.as_slice() {
            [a, b, c] => Ok((int(a)?, int(b)?, int(c)?)),
            _ => Err(StoreError::Failed("count: not three numbers".into())),
        }
    }

    fn now_ms(&self) -> String {
        u64::try_from(self.clock.now().as_millis())
            .unwrap_or(u64::MAX)
            .to_string()
    }

    /// How long a binding's key outlives its last claim in Redis: two leases, so servers
    /// whose clocks differ a little still judge liveness by the stored time, never by a key
    /// that vanished early.
    fn binding_keep_ms(&self) -> String {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX / 2)
            .saturating_mul(2)
            .max(1)
            .to_string()
    }

    /// `{P}:node:<holder>`: the holder's binding.
    fn node_key(&self, holder: &PeerAddr) -> String {
        format!("{}:node:{}", self.base, holder.as_str())
    }

    fn lease_ms(&self) -> String {
        u64::try_from(self.lease.as_millis())
            .unwrap_or(u64::MAX)
            .to_string()
    }

    /// Calls the script: `words` (operation first; the time is passed as given) and
    /// binary `extra` arguments after them.
    fn run(&self, words: &[&str], extra: &[&[u8]]) -> Result<Value, StoreError> {
        self.run_script(&self.script, words, extra)
    }

    fn run_script(
        &self,
        script: &Script,
        words: &[&str],
        extra: &[&[u8]],
    ) -> Result<Value, StoreError> {
        self.call(|con| {
            let mut inv: ScriptInvocation<'_> = script.prepare_invoke();
            inv.key(&self.base);
            for w in words {
                inv.arg(*w);
            }
            for e in extra {
                inv.arg(*e);
            }
            inv.invoke(con)
        })
    }

    /// Runs `f` on a pooled connection: one retry on a fresh connection if a pooled one
    /// turns out dead (Redis restarted), [`StoreError::Unavailable`] if Redis cannot be
    /// reached, with one log line per outage.
    fn call<T>(
        &self,
        f: impl Fn(&mut Connection) -> Result<T, RedisError>,
    ) -> Result<T, StoreError> {
        for attempt in 0..2 {
            let pooled = lock(&self.idle).pop();
            let (mut con, was_pooled) = match pooled {
                Some(con) => (con, true),
                None => (self.connect()?, false),
            };
            match f(&mut con) {
                Ok(value) => {
                    self.recovered();
                    let mut idle = lock(&self.idle);
                    if idle.len() < MAX_IDLE {
                        idle.push(con);
                    }
                    return Ok(value);
                }
                Err(e) if lost_connection(&e) => {
                    if was_pooled && attempt == 0 {
                        // The others went with it, most likely.
                        lock(&self.idle).clear();
                        continue;
                    }
                    return Err(self.outage(&e));
                }
                Err(e) if busy(&e) => {
                    lock(&self.idle).push(con);
                    return Err(self.outage(&e));
                }
                Err(e) => {
                    lock(&self.idle).push(con);
                    return Err(StoreError::Failed(format!("{}: {e}", self.target)));
                }
            }
        }
        Err(StoreError::Unavailable(format!(
            "{} keeps dropping connections",
            self.target
        )))
    }

    fn connect(&self) -> Result<Connection, StoreError> {
        if self.troubled.load(Ordering::Acquire) {
            let health = lock(&self.health);
            if let Some(outage) = &health.outage
                && Instant::now() < outage.next_try
            {
                return Err(StoreError::Unavailable(format!(
                    "{}: {}",
                    self.target, outage.reason
                )));
            }
        }
        let con = self
            .client
            .get_connection_with_timeout(self.timeout)
            .and_then(|con| {
                con.set_read_timeout(Some(self.timeout))?;
                con.set_write_timeout(Some(self.timeout))?;
                Ok(con)
            })
            .map_err(|e| self.outage(&e))?;
        Ok(con)
    }

    /// Notes a failure: the first of an outage is logged, later ones push the next
    /// connection attempt back.
    fn outage(&self, e: &RedisError) -> StoreError {
        let reason = brief(e);
        let mut health = lock(&self.health);
        let now = Instant::now();
        match &mut health.outage {
            Some(outage) => {
                outage.backoff = (outage.backoff * 2).min(MAX_BACKOFF);
                outage.next_try = now + outage.backoff;
                outage.reason = reason.clone();
            }
            None => {
                log::warn!(
                    "registry unavailable: redis {} ({reason}); requests are refused until it answers again",
                    self.target
                );
                health.outage = Some(Outage {
                    since: now,
                    next_try: now + FIRST_BACKOFF,
                    backoff: FIRST_BACKOFF,
                    reason: reason.clone(),
                });
                self.troubled.store(true, Ordering::Release);
            }
        }
        StoreError::Unavailable(format!("{}: {reason}", self.target))
    }

    fn recovered(&self) {
        if !self.troubled.load(Ordering::Acquire) {
            return;
        }
        let mut health = lock(&self.health);
        if let Some(outage) = health.outage.take() {
            log::warn!(
                "registry available again: redis {} answers after {:.1} s",
                self.target,
                outage.since.elapsed().as_secs_f64()
            );
            self.identity_stale.store(true, Ordering::Release);
        }
        self.troubled.store(false, Ordering::Release);
    }

    fn register_in(
        &self,
        kind: &str,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        let (now, lease) = (self.now_ms(), self.lease_ms());
        let (per_holder, per_address) = (cap(limits.per_holder), cap(limits.per_address));
        let encoded: Vec<[Vec<u8>; 5]> = files.iter().map(encode_file).collect();
        let extra: Vec<&[u8]> = encoded.iter().flatten().map(Vec::as_slice).collect();
        let words = [
            "register",
            &now,
            kind,
            &lease,
            holder.as_str(),
            address,
            &per_holder,
            &per_address,
        ];
        let reply = self.run(&words, &extra)?;
        match &reply {
            Value::Int(n) => Ok(u32::try_from(*n).unwrap_or(u32::MAX)),
            Value::Array(v) => Err(StoreError::OverLimit(limit_from(holder, v)?)),
            other => Err(bad_reply("register", other)),
        }
    }

    fn unregister_in(
        &self,
        kind: &str,
        holder: &PeerAddr,
        ids: &[FileId],
    ) -> Result<u32, StoreError> {
        let now = self.now_ms();
        let extra: Vec<&[u8]> = ids.iter().map(|id| id.0.as_slice()).collect();
        let reply = self.run(&["unregister", &now, kind, holder.as_str()], &extra)?;
        Ok(u32::try_from(int(&reply)?).unwrap_or(u32::MAX))
    }

    fn search_in(
        &self,
        kind: &str,
        query: &str,
        limit: usize,
    ) -> Result<Vec<SearchHit>, StoreError> {
        let mut search = Search::new(query, limit);
        if limit == 0 {
            return Ok(search.finish());
        }
        let pattern = search_pattern(query);
        let now = self.now_ms();
        let page = SEARCH_PAGE.to_string();
        let mut seen: HashSet<Vec<u8>> = HashSet::new();
        let mut cursor = "0".to_string();
        loop {
            let reply = self.run(
                &["search", &now, kind, &cursor],
                &[&pattern, page.as_bytes()],
            )?;
            let Value::Array(items) = reply else {
                return Err(bad_reply("search", &reply));
            };
            let mut items = items.into_iter();
            cursor = match items.next() {
                Some(Value::BulkString(c)) => String::from_utf8_lossy(&c).into_owned(),
                other => return Err(bad_reply("search cursor", &other.unwrap_or(Value::Nil))),
            };
            while let (Some(meta), Some(count)) = (items.next(), items.next()) {
                let raw = bytes(&meta)?;
                if !seen.insert(raw.to_vec()) {
                    continue; // HSCAN may return a field twice while the hash grows.
                }
                search.offer(SearchHit {
                    file: parse_meta(raw)?,
                    holders: u32::try_from(int(&count)?).unwrap_or(u32::MAX),
                    downloading: 0,
                    nodes: Vec::new(),
                });
            }
            if cursor == "0" {
                return Ok(search.finish());
            }
        }
    }
}

impl Store for RedisStore {
    fn kind(&self) -> &'static str {
        "redis"
    }

    fn register_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        self.register_in("c", holder, address, files, limits)
    }

    fn register_partial_within(
        &self,
        holder: &PeerAddr,
        address: &str,
        files: &[FileMeta],
        limits: &RegistrationLimits,
    ) -> Result<u32, StoreError> {
        self.register_in("p", holder, address, files, limits)
    }

    fn unregister(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        self.unregister_in("c", holder, ids)
    }

    fn unregister_partial(&self, holder: &PeerAddr, ids: &[FileId]) -> Result<u32, StoreError> {
        self.unregister_in("p", holder, ids)
    }

    fn locate(&self, key: &FileKey) -> Result<Option<(FileMeta, PeerAddr)>, StoreError> {
        Ok(self
            .locate_with_node(key)?
            .map(|(file, holder, _)| (file, holder)))
    }

    /// Answers from this store's own bindings, in the locate script's one call.
    fn locate_bound(
        &self,
        key: &FileKey,
        _bindings: &dyn NodeBindings,
    ) -> Result<Option<(FileMeta, PeerAddr, Option<NodeId>)>, StoreError> {
        self.locate_with_node(key)
    }

    fn holders(&self, key: &FileKey) -> Result<Option<(FileMeta, Vec<PeerAddr>)>, StoreError> {
        let (kind, k) = encode_key(key);
        let now = self.now_ms();
        let reply = self.run(&["holders", &now, kind], &[&k])?;
        match reply {
            Value::Nil => Ok(None),
            Value::Array(v) => match v.as_slice() {
                [meta, addrs] => Ok(Some((parse_meta(bytes(meta)?)?, peers(addrs)?))),
                _ => Err(bad_reply("holders", &Value::Array(v))),
            },
            other => Err(bad_reply("holders", &other)),
        }
    }
    fn search(&self, query: &str, limit: usize) -> Result<Vec<SearchHit>, StoreError> {
        let complete = self.search_in("c", query, limit)?;
        let partial = self.search_in("p", query, limit)?;
        Ok(merge_hits(complete, partial, limit))
    }

    fn renew(&self, holder: &PeerAddr) -> Result<Option<u32>, StoreError> {
        let (now, lease) = (self.now_ms(), self.lease_ms());
        match self.run(&["renew", &now, &lease, holder.as_str()], &[])? {
            Value::Nil => Ok(None),
            other => Ok(Some(u32::try_from(int(&other)?).unwrap_or(u32::MAX))),
        }
    }

    fn sweep_expired(&self) -> Result<Vec<(PeerAddr, u32)>, StoreError> {
        let now = self.now_ms();
        let batch = SWEEP_BATCH.to_string();
        let mut gone = Vec::new();
        loop {
            let reply = self.run(&["sweep", &now, &batch], &[])?;
            let Value::Array(v) = reply else {
                return Err(bad_reply("sweep", &reply));
            };
            let (swept, partial) = match v.as_slice() {
                [Value::Array(swept), partial] => (swept.clone(), int(partial)?),
                _ => return Err(bad_reply("sweep", &Value::Array(v))),
            };
            for pair in swept.chunks(2) {
                if let [addr, n] = pair {
                    gone.push((peer(addr)?, u32::try_from(int(n)?).unwrap_or(u32::MAX)));
                }
            }
            if swept.is_empty() && partial == 0 {
                return Ok(gone);
            }
        }
    }

    fn lease(&self) -> Duration {
        self.lease
    }

    fn identity(&self) -> Option<String> {
        RedisStore::identity(self)
    }

    fn node_bindings(&self) -> Option<&dyn NodeBindings> {
        Some(self)
    }

    fn sources(&self, key: &FileKey) -> Result<Option<Sources>, StoreError> {
        let (kind, k) = encode_key(key);
        let now = self.now_ms();
        let reply = self.run(&["sources", &now, kind], &[&k])?;
        match reply {
            Value::Nil => Ok(None),
            Value::Array(v) => match v.as_slice() {
                [meta, complete, partial] => {
                    let complete = peers(complete)?;
                    let mut partial = peers(partial)?;
                    partial.retain(|h| complete.binary_search(h).is_err());
                    Ok(Some(Sources {
                        file: parse_meta(bytes(meta)?)?,
                        complete,
                        partial,
                        nodes: Vec::new(),
                    }))
                }
                _ => Err(bad_reply("sources", &Value::Array(v))),
            },
            other => Err(bad_reply("sources", &other)),
        }
    }
}

impl RedisStore {
    /// The locate scripts' answer: the file, a live holder and its node-id binding.
    fn locate_with_node(
        &self,
        key: &FileKey,
    ) -> Result<Option<(FileMeta, PeerAddr, Option<NodeId>)>, StoreError> {
        let (kind, k) = encode_key(key);
        let now = self.now_ms();
        let fast = self.run_script(&self.locate_script, &[&now, kind], &[&k])?;
        let reply = match fast {
            Value::BulkString(word) if word == b"full" => {
                let r = lock(&self.rng).random::<u32>().to_string();
                self.run(&["locate", &now, kind], &[&k, r.as_bytes()])?
            }
            other => other,
        };
        match reply {
            Value::Nil => Ok(None),
            Value::Array(v) => match v.as_slice() {
                [meta, addr, node] => Ok(Some((
                    parse_meta(bytes(meta)?)?,
                    peer(addr)?,
                    match node {
                        Value::Nil => None,
                        raw => parse_binding(bytes(raw)?).map(|(node, _)| node),
                    },
                ))),
                _ => Err(bad_reply("locate", &Value::Array(v))),
            },
            other => Err(bad_reply("locate", &other)),
        }
    }
}

/// Bindings under `{P}:node:<holder>`: the node id's 32 bytes, then the claim's time (ms of
/// the store's clock) in decimal; live for a lease after it, the key kept for two (see
/// `redis_nodes.lua`). A claim is one script call; a check or a lookup one `GET`/`MGET`.
impl NodeBindings for RedisStore {
    fn claim(&self, holder: &PeerAddr, node: NodeId) -> Result<Claimed, Refusal> {
        let (now, lease, keep) = (self.now_ms(), self.lease_ms(), self.binding_keep_ms());
        let words = ["claim", &now, &lease, &keep, holder.as_str()];
        let reply = self.run_script(&self.nodes_script, &words, &[node.as_bytes()])?;
        let Value::Array(v) = &reply else {
            return Err(bad_reply("claim", &reply).into());
        };
        match v.as_slice() {
            [word, previous] if bytes(word)? == b"ok" => Ok(Claimed::shared(match previous {
                Value::Nil => None,
                other => Some(bytes(other)?.to_vec()),
            })),
            [word, bound] if bytes(word)? == b"bound" => {
                let bound = node_id(bytes(bound)?).ok_or_else(|| bad_reply("claim", &reply))?;
                Err(Refusal::Bound(BoundToOther { bound }))
            }
            _ => Err(bad_reply("claim", &reply).into()),
        }
    }

    fn undo(&self, holder: &PeerAddr, node: NodeId, claimed: Claimed) -> Result<(), StoreError> {
        if !claimed.is_shared() {
            return Ok(());
        }
        let keep = self.binding_keep_ms();
        let previous = claimed.shared_value().unwrap_or_default();
        let words = ["undo", &keep, holder.as_str()];
        self.run_script(&self.nodes_script, &words, &[node.as_bytes(), previous])?;
        Ok(())
    }

    fn check(&self, holder: &PeerAddr, node: NodeId) -> Result<(), Refusal> {
        let key = self.node_key(holder);
        let value: Option<Vec<u8>> = self.call(|con| redis::cmd("GET").arg(&key).query(con))?;
        let now = u64::try_from(self.clock.now().as_millis()).unwrap_or(u64::MAX);
        let lease = u64::try_from(self.lease.as_millis()).unwrap_or(u64::MAX);
        match value.as_deref().and_then(parse_binding) {
            Some((bound, seen)) if bound != node && now.saturating_sub(seen) <= lease => {
                Err(Refusal::Bound(BoundToOther { bound }))
            }
            _ => Ok(()),
        }
    }

    fn forget(&self, holder: &PeerAddr, node: NodeId) -> Result<(), StoreError> {
        let words = ["forget", holder.as_str()];
        self.run_script(&self.nodes_script, &words, &[node.as_bytes()])?;
        Ok(())
    }

    /// Nothing to do: lapsed bindings are judged by their time and their keys expire in
    /// Redis, and a sweep's list may be stale by the time it is read (a new key may have
    /// claimed the address since).
    fn swept(&self, _: &[PeerAddr], _: Duration) {}

    fn node(&self, holder: &PeerAddr) -> Result<Option<NodeId>, StoreError> {
        let key = self.node_key(holder);
        let value: Option<Vec<u8>> = self.call(|con| redis::cmd("GET").arg(&key).query(con))?;
        Ok(value
            .as_deref()
            .and_then(parse_binding)
            .map(|(node, _)| node))
    }

    fn nodes_of(&self, holders: &[&PeerAddr]) -> Result<Vec<HolderNode>, StoreError> {
        if holders.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<String> = holders.iter().map(|h| self.node_key(h)).collect();
        let values: Vec<Option<Vec<u8>>> =
            self.call(|con| redis::cmd("MGET").arg(&keys).query(con))?;
        if values.len() != holders.len() {
            return Err(StoreError::Failed(format!(
                "MGET of {} bindings answered {}",
                holders.len(),
                values.len()
            )));
        }
        Ok(holders
            .iter()
            .zip(values)
            .filter_map(|(holder, value)| {
                let (node, _) = parse_binding(&value?)?;
                Some(HolderNode {
                    holder: (*holder).clone(),
                    node,
                })
            })
            .collect())
    }
}

/// A stored binding: the node id and the time of its last claim. Anything else reads as no
/// binding (the next claim overwrites it).
fn parse_binding(raw: &[u8]) -> Option<(NodeId, u64)> {
    let (id, seen) = raw.split_at_checked(32)?;
    let seen = std::str::from_utf8(seen).ok()?.parse().ok()?;
    Some((node_id(id)?, seen))
}

fn node_id(raw: &[u8]) -> Option<NodeId> {
    Some(NodeId::from_bytes(raw.try_into().ok()?))
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

fn check_prefix(prefix: &str) -> Result<(), StoreError> {
    let bad = prefix.is_empty()
        || prefix.len() > MAX_PREFIX
        || prefix
            .chars()
            .any(|c| c == '{' || c == '}' || c.is_whitespace() || c.is_control());
    if bad {
        return Err(StoreError::Config(format!(
            "the Redis key prefix {prefix:?} must be 1 to {MAX_PREFIX} bytes without braces, spaces or control characters"
        )));
    }
    Ok(())
}

fn without_password(url: &str) -> String {
    match (url.split_once("://"), url.rsplit_once('@')) {
        (Some((scheme, _)), Some((_, rest))) => format!("{scheme}://{rest}"),
        _ => url.to_string(),
    }
}

/// The connection is gone (or never came): drop it, Redis is unreachable.
fn lost_connection(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped() || e.is_unrecoverable_error()
}

/// Redis answers but does not serve (restarting, loading, out of memory, a replica).
fn busy(e: &RedisError) -> bool {
    matches!(
        e.code(),
        Some("LOADING" | "BUSY" | "MASTERDOWN" | "TRYAGAIN" | "CLUSTERDOWN" | "READONLY" | "OOM")
    )
}

fn brief(e: &RedisError) -> String {
    let text = e.to_string();
    text.chars().take(200).collect()
}

fn cap(limit: usize) -> String {
    if limit == usize::MAX {
        "-1".to_string()
    } else {
        limit.to_string()
    }
}

/// The names field of a name: `lowercase \0 name`.
fn name_field(name: &str) -> Vec<u8> {
    let lower = name.to_lowercase();
    let mut field = Vec::with_capacity(lower.len() + 1 + name.len());
    field.extend_from_slice(lower.as_bytes());
    field.push(0);
    field.extend_from_slice(name.as_bytes());
    field
}

fn encode_key(key: &FileKey) -> (&'static str, Vec<u8>) {
    match key {
        FileKey::Name(name) => ("n", name_field(name)),
        FileKey::Id(id) => ("i", id.0.to_vec()),
    }
}

/// id, name, size, chunk size, lowercase name ('' when the same).
fn encode_file(meta: &FileMeta) -> [Vec<u8>; 5] {
    let lower = meta.name.to_lowercase();
    let lower = if lower == meta.name {
        String::new()
    } else {
        lower
    };
    [
        meta.id.0.to_vec(),
        meta.name.as_bytes().to_vec(),
        meta.size.to_string().into_bytes(),
        meta.chunk_size.to_string().into_bytes(),
        lower.into_bytes(),
    ]
}

/// `HSCAN MATCH` pattern for names containing `query` (ignoring case): the query, escaped,
/// in the lowercase part of the field (before the NUL). Hits are checked again in Rust.
fn search_pattern(query: &str) -> Vec<u8> {
    if query.is_empty() {
        return b"*".to_vec();
    }
    let mut pattern = vec![b'*'];
    for &b in query.to_lowercase().as_bytes() {
        if matches!(b, b'*' | b'?' | b'[' | b']' | b'\\') {
            pattern.push(b'\\');
        }
        pattern.push(b);
    }
    pattern.extend_from_slice(b"*\0*");
    pattern
}

/// A listing's meta value: id (32 bytes), then `size chunk namelen name[lowercase]`.
fn parse_meta(raw: &[u8]) -> Result<FileMeta, StoreError> {
    let corrupt = || StoreError::Failed("a listing in Redis is not what shoal wrote".into());
    let (id, rest) = raw.split_at_checked(32).ok_or_else(corrupt)?;
    let mut parts = rest.splitn(4, |&b| b == b' ');
    let mut number = || -> Result<u64, StoreError> {
        let part = parts.next().ok_or_else(corrupt)?;
        std::str::from_utf8(part)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(corrupt)
    };
    let (size, chunk, len) = (number()?, number()?, number()?);
    let tail = parts.next().ok_or_else(corrupt)?;
    let name = usize::try_from(len)
        .ok()
        .and_then(|len| tail.get(..len))
        .ok_or_else(corrupt)?;
    Ok(FileMeta {
        name: String::from_utf8(name.to_vec()).map_err(|_| corrupt())?,
        size,
        chunk_size: u32::try_from(chunk).map_err(|_| corrupt())?,
        id: FileId(id.try_into().map_err(|_| corrupt())?),
    })
}

fn limit_from(holder: &PeerAddr, v: &[Value]) -> Result<LimitExceeded, StoreError> {
    let size = |x: &Value| int(x).map(|n| usize::try_from(n).unwrap_or(usize::MAX));
    match v {
        [kind, would, limit] if bytes(kind)? == b"holder" => Ok(LimitExceeded::Holder {
            holder: holder.clone(),
            would: size(would)?,
            limit: size(limit)?,
        }),
        [kind, host, would, limit] if bytes(kind)? == b"address" => Ok(LimitExceeded::Address {
            address: String::from_utf8_lossy(bytes(host)?).into_owned(),
            would: size(would)?,
            limit: size(limit)?,
        }),
        _ => Err(bad_reply("register", &Value::Array(v.to_vec()))),
    }
}

fn bad_reply(what: &str, v: &Value) -> StoreError {
    let shown: String = format!("{v:?}").chars().take(120).collect();
    StoreError::Failed(format!("unexpected Redis answer to {what}: {shown}"))
}

fn int(v: &Value) -> Result<u64, StoreError> {
    match v {
        Value::Int(n) => u64::try_from(*n).map_err(|_| bad_reply("a count", v)),
        Value::BulkString(b) => std::str::from_utf8(b)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| bad_reply("a count", v)),
        _ => Err(bad_reply("a count", v)),
    }
}

fn bytes(v: &Value) -> Result<&[u8], StoreError> {
    match v {
        Value::BulkString(b) => Ok(b),
        _ => Err(bad_reply("a string", v)),
    }
}

fn peer(v: &Value) -> Result<PeerAddr, StoreError> {
    let text = std::str::from_utf8(bytes(v)?).map_err(|_| bad_reply("an address", v))?;
    PeerAddr::new(text).map_err(|_| bad_reply("an address", v))
}

/// Addresses, sorted.
fn peers(v: &Value) -> Result<Vec<PeerAddr>, StoreError> {
    let Value::Array(items) = v else {
        return Err(bad_reply("addresses", v));
    };
    let mut out = items.iter().map(peer).collect::<Result<Vec<_>, _>>()?;
    out.sort_unstable();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listings_read_back_exactly_and_garbage_is_a_typed_error() {
        let meta = FileMeta {
            name: "Straße 1.ogg".into(),
            size: 12345,
            chunk_size: 1 << 20,
            id: FileId([9; 32]),
        };
        let [id, name, size, chunk, lower] = encode_file(&meta);
        let mut raw = id;
        raw.extend_from_slice(&size);
        raw.push(b' ');
        raw.extend_from_slice(&chunk);
        raw.push(b' ');
        raw.extend_from_slice(meta.name.len().to_string().as_bytes());
        raw.push(b' ');
        raw.extend_from_slice(&name);
        raw.extend_from_slice(&lower);
        assert_eq!(parse_meta(&raw).unwrap(), meta);
        for bad in [
            &b""[..],
            &[7u8; 31],
            &raw[..40],
            b"0123456789012345678901234567890123 x y",
        ] {
            assert!(
                matches!(parse_meta(bad), Err(StoreError::Failed(_))),
                "{bad:?}"
            );
        }
        let mut long = raw.clone();
        long.truncate(raw.len() - lower.len() - 3);
        assert!(matches!(parse_meta(&long), Err(StoreError::Failed(_))));
    }

    #[test]
    fn search_patterns_escape_glob_characters_and_match_the_lowercase_half() {
        assert_eq!(search_pattern(""), b"*".to_vec());
        assert_eq!(
            search_pattern("A*b?[c]\\"),
            b"*a\\*b\\?\\[c\\]\\\\*\0*".to_vec()
        );
        assert_eq!(name_field("Ab"), b"ab\0Ab".to_vec());
    }

    #[test]
    fn bad_urls_and_prefixes_are_refused_and_passwords_never_shown() {
        let options = |prefix: &str| RedisOptions {
            prefix: prefix.into(),
            ..RedisOptions::default()
        };
        for prefix in ["", "a{b", "a}", "a b", &"x".repeat(65)] {
            assert!(matches!(
                RedisStore::open("redis://127.0.0.1:1/0", options(prefix)),
                Err(StoreError::Config(_))
            ));
        }
        let Err(StoreError::Config(message)) =
            RedisStore::open("http://:secret@host:1", options("p"))
        else {
            panic!("an http URL was taken");
        };
        assert!(!message.contains("secret"), "{message}");
        assert_eq!(without_password("redis://:pw@h:1/0"), "redis://h:1/0");
    }

    #[test]
    fn an_unreachable_redis_is_unavailable_at_once_and_not_retried_before_the_backoff() {
        // A port nobody listens on (bound, then released).
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .unwrap()
            .port();
        let options = RedisOptions {
            timeout: Duration::from_millis(500),
            ..RedisOptions::default()
        };
        let store = RedisStore::open(&format!("redis://127.0.0.1:{port}/0"), options).unwrap();
        assert_eq!(store.identity(), None);
        let holder = PeerAddr::new("a:1").unwrap();
        for _ in 0..3 {
            assert!(matches!(
                store.renew(&holder),
                Err(StoreError::Unavailable(_))
            ));
            assert!(matches!(
                store.locate(&FileKey::Name("x".into())),
                Err(StoreError::Unavailable(_))
            ));
        }
        let health = lock(&store.health);
        let outage = health.outage.as_ref().unwrap();
        assert!(outage.backoff >= FIRST_BACKOFF && outage.backoff <= MAX_BACKOFF);
    }
}
