//! Transport security: TLS 1.3 with mutual authentication, as a [`Transport`] wrapping any
//! other (TCP for real runs, the [`crate::mem`] network for tests).
//!
//! **Identities.** Every shoal process has a persistent Ed25519 key pair and a self-signed
//! certificate for it ([`Identity`], one PEM file, mode 0600, created on first use). The
//! public key *is* the node's [`NodeId`]: nothing else in a certificate identifies a node,
//! and names are never checked (clients send the fixed SNI name `shoal.invalid`).
//!
//! **The handshake.** Plain TLS 1.3 (rustls), no ALPN, no session resumption, and always
//! mutual: a server requires a certificate from every client, so an index learns the node
//! id of everything that talks to it, and [`Connection::peer_node`] gives each side the
//! other's verified key. [`TlsTransport::connect`] runs the client handshake before it
//! returns, and also waits for the server's word that it accepted our certificate (a TLS
//! 1.3 session ticket, which is then thrown away), so a refusal is an error of `connect`
//! on both sides, not of some later read. The accepting side's handshake runs on its first
//! read or write, in the connection's own thread, under the timeouts the server set (and
//! at most [`TlsConfig::handshake_timeout`] in all).
//!
//! **Open mode** (no membership): any well-formed certificate for an Ed25519 key is
//! accepted; the handshake signature proves the peer holds that key. Other keys are
//! refused.
//!
//! **Private swarms.** A swarm authority ([`SwarmAuthority`], a CA key and certificate,
//! kept secret by whoever runs the swarm) issues member certificates for node ids: since
//! the id is the public key, `admit` certifies that key directly, and the node never sends
//! the authority anything. A node started with its [`Membership`] (the member certificate
//! plus the authority's certificate, one public PEM file) presents the member certificate
//! and accepts only peers whose certificates chain to that authority and are within their
//! validity period: a stranger, a member of another swarm, or an expired member is
//! refused at the handshake, with a message on both sides ("127.0.0.1:7000 is not a member
//! of this swarm (its certificate is signed by another authority)"; "… refused us: this
//! node is not a member of its swarm").
//!
//! **Revocation.** [`TlsConfig::revoked`] names a file of node ids, one a line (`#`
//! comments). It is stat'ed at every handshake and reread when it changes, so a member is
//! shut out without reissuing anyone else's certificate; a revoked peer is refused in both
//! modes, on both sides. As no session is ever resumed, every connection is checked.
//!
//! **Mistakes.** A plaintext client that reaches a TLS server is told with an alert (which
//! [`crate::codec`] recognizes: [`crate::ProtoError::TlsServer`]) and the server logs it; a
//! TLS client that reaches a plaintext server says so. A byte altered on the wire fails the
//! record's authentication: the connection ends with an error, never a wrong byte.
//!
//! **Why ring.** rustls needs a crypto provider; ring builds in well under a minute from
//! Rust and a little C and assembly, where aws-lc-rs needs cmake and a long C build (minutes
//! on a two-core machine, for every CI run). Both use AES-NI/CLMUL for AES-GCM, which the
//! provider here prefers (AES-128-GCM first); ChaCha20-Poly1305 stays for machines without
//! AES instructions.

mod der;
mod error;
mod identity;
mod revoked;
mod stream;
mod swarm;
mod verify;

#[cfg(test)]
mod tests;

use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::client::{Resumption, Tls12Resumption};
use rustls::sign::CertifiedKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::{PrivateKeyDer, ServerName};

pub use der::format_time;
pub use error::TlsError;
pub use identity::Identity;
pub use stream::TlsStream;
pub use swarm::{Membership, SwarmAuthority};

use revoked::RevocationList;
use verify::{FixedCert, NoResumption, PeerCheck, Policy, Swarm};

use crate::{Connection, Listener, NodeId, PeerAddr, Transport};

/// For `fuzz/` only (not an API): what a node does with the certificate bytes a peer sends
/// in every handshake, before anything else is known about it.
#[doc(hidden)]
pub mod fuzzing {
    use std::sync::Arc;

    use rustls::RootCertStore;
    use rustls_pki_types::{CertificateDer, UnixTime};

    use super::der;
    use super::verify::{PeerCheck, Policy, Swarm};
    use crate::NodeId;

    /// An open-mode and a swarm-mode verifier (the swarm's authority made here).
    pub struct Verifiers {
        open: Arc<PeerCheck>,
        swarm: Arc<PeerCheck>,
    }

    /// Both verifiers; `None` if the authority cannot be made.
    pub fn verifiers() -> Option<Verifiers> {
        let authority = super::SwarmAuthority::generate("fuzz").ok()?;
        let mut roots = RootCertStore::empty();
        roots.add(authority.certificate().clone()).ok()?;
        let policy = |swarm| {
            Arc::new(Policy {
                provider: super::verify::provider(),
                swarm,
                revoked: None,
            })
        };
        Some(Verifiers {
            open: PeerCheck::new(policy(None)),
            swarm: PeerCheck::new(policy(Some(Swarm { roots }))),
        })
    }

    /// Real certificates for seed corpora: a node's self-signed one, a swarm authority's and
    /// a member certificate it issued (in that order).
    pub fn sample_certificates() -> Vec<Vec<u8>> {
        let Ok(identity) = super::Identity::generate() else {
            return Vec::new();
        };
        let Ok(authority) = super::SwarmAuthority::generate("fuzz") else {
            return Vec::new();
        };
        let mut out = vec![
            identity.certificate().to_vec(),
            authority.certificate().to_vec(),
        ];
        if let Ok(member) =
            authority.admit(&identity.node_id(), std::time::Duration::from_secs(3600))
        {
            out.push(member.member_certificate().to_vec());
        }
        out
    }

    /// Runs both verifiers' certificate checks on `end_entity` (with `intermediate`, as a
    /// peer may send a chain) and the field readers on it; returns the node ids accepted
    /// (open, swarm). Must never panic.
    pub fn peer_certificate(
        v: &Verifiers,
        end_entity: &[u8],
        intermediate: Option<&[u8]>,
    ) -> (Option<NodeId>, Option<NodeId>) {
        if let Ok(info) = der::parse_cert(end_entity) {
            let _ = (info.node_id(), info.is_self_issued());
            let _ = (
                der::common_name(info.subject),
                der::organization(info.issuer),
            );
            let _ = (
                der::format_time(info.not_before),
                der::format_time(info.not_after),
            );
        }
        let cert = CertificateDer::from(end_entity.to_vec());
        let chain: Vec<CertificateDer<'static>> = intermediate
            .map(|i| CertificateDer::from(i.to_vec()))
            .into_iter()
            .collect();
        let now = UnixTime::now();
        (
            v.open.decide(&cert, &chain, now).ok(),
            v.swarm.decide(&cert, &chain, now).ok(),
        )
    }
}

/// The server name every client sends (names are not checked: a node is its key).
pub const SNI_NAME: &str = "shoal.invalid";

/// How a [`TlsTransport`] authenticates.
#[derive(Clone, Debug)]
pub struct TlsConfig {
    /// This node's key pair and self-signed certificate.
    pub identity: Identity,
    /// Its member certificate: given, the node is in that private swarm and accepts only
    /// its members; `None` is open mode.
    pub membership: Option<Membership>,
    /// A revocation list file (node ids, one a line), reread when it changes.
    pub revoked: Option<PathBuf>,
    /// The longest a handshake may take, from its first byte.
    pub handshake_timeout: Duration,
}

impl TlsConfig {
    /// Open mode, no revocation list, a 10 s handshake timeout.
    pub fn new(identity: Identity) -> TlsConfig {
        TlsConfig {
            identity,
            membership: None,
            revoked: None,
            handshake_timeout: Duration::from_secs(10),
        }
    }
}

struct Shared {
    node: NodeId,
    swarm_name: Option<String>,
    policy: Arc<Policy>,
    cert: Arc<FixedCert>,
    handshake_timeout: Duration,
}

impl Shared {
    fn client(&self) -> Result<(rustls::Connection, Arc<PeerCheck>), TlsError> {
        let check = PeerCheck::new(Arc::clone(&self.policy));
        let mut config = ClientConfig::builder_with_provider(Arc::clone(&self.policy.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(check.clone())
            .with_client_cert_resolver(self.cert.clone());
        config.resumption =
            Resumption::store(check.clone()).tls12_resumption(Tls12Resumption::Disabled);
        let name = ServerName::try_from(SNI_NAME).map_err(|e| TlsError::Config(e.to_string()))?;
        let conn = rustls::ClientConnection::new(Arc::new(config), name)?;
        Ok((rustls::Connection::Client(conn), check))
    }

    fn server(&self) -> Result<(rustls::Connection, Arc<PeerCheck>), TlsError> {
        let check = PeerCheck::new(Arc::clone(&self.policy));
        let mut config = ServerConfig::builder_with_provider(Arc::clone(&self.policy.provider))
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(check.clone())
            .with_cert_resolver(self.cert.clone());
        config.session_storage = Arc::new(NoResumption);
        // One ticket: the client's sign that we accepted it (see PeerCheck).
        config.send_tls13_tickets = 1;
        let conn = rustls::ServerConnection::new(Arc::new(config))?;
        Ok((rustls::Connection::Server(conn), check))
    }
}

/// TLS over the transport `T`; see the [module docs](self). Cheap to clone.
pub struct TlsTransport<T: Transport> {
    inner: T,
    shared: Arc<Shared>,
}

impl<T: Transport> Clone for TlsTransport<T> {
    fn clone(&self) -> Self {
        TlsTransport {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<T: Transport> std::fmt::Debug for TlsTransport<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsTransport")
            .field("node", &self.shared.node)
            .field("swarm", &self.shared.swarm_name)
            .finish_non_exhaustive()
    }
}

impl<T: Transport> TlsTransport<T> {
    /// TLS over `inner`. Refuses a membership issued for another node than the identity's,
    /// or one that has expired, and a revocation list that cannot be read or parsed.
    pub fn new(inner: T, config: TlsConfig) -> Result<TlsTransport<T>, TlsError> {
        TlsTransport::build(inner, config, SystemTime::now())
    }

    /// [`TlsTransport::new`] with the membership's expiry checked against `now` (tests
    /// build nodes that present expired certificates with it).
    fn build(inner: T, config: TlsConfig, now: SystemTime) -> Result<TlsTransport<T>, TlsError> {
        let provider = verify::provider();
        let node = config.identity.node_id();
        if config.handshake_timeout.is_zero() {
            return Err(TlsError::Config(
                "the handshake timeout must not be zero".into(),
            ));
        }
        let (chain, swarm, swarm_name) = match &config.membership {
            Some(membership) => {
                if membership.node_id() != node {
                    return Err(TlsError::WrongNode {
                        cert: membership.node_id(),
                        identity: node,
                    });
                }
                if membership.not_after() <= now {
                    return Err(TlsError::MembershipExpired {
                        node,
                        swarm: membership.swarm_name().to_string(),
                        at: der::format_time(membership.not_after()),
                    });
                }
                let mut roots = RootCertStore::empty();
                roots.add(membership.authority_certificate().clone())?;
                (
                    vec![membership.member_certificate().clone()],
                    Some(Swarm { roots }),
                    Some(membership.swarm_name().to_string()),
                )
            }
            None => (vec![config.identity.certificate().clone()], None, None),
        };
        let key = provider
            .key_provider
            .load_private_key(PrivateKeyDer::Pkcs8(config.identity.key().clone_key()))?;
        let certified = CertifiedKey::new(chain, key);
        let revoked = config
            .revoked
            .as_deref()
            .map(RevocationList::load)
            .transpose()?;
        Ok(TlsTransport {
            inner,
            shared: Arc::new(Shared {
                node,
                swarm_name,
                policy: Arc::new(Policy {
                    provider,
                    swarm,
                    revoked,
                }),
                cert: Arc::new(FixedCert(Arc::new(certified))),
                handshake_timeout: config.handshake_timeout,
            }),
        })
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.node
    }

    /// The private swarm this node is in, if any.
    pub fn swarm_name(&self) -> Option<&str> {
        self.shared.swarm_name.as_deref()
    }

    /// The wrapped transport.
    pub fn inner(&self) -> &T {
        &self.inner
    }
}

impl<T: Transport> Transport for TlsTransport<T> {
    type Stream = TlsStream<T::Stream>;
    type Listener = TlsListener<T::Listener>;

    fn bind(&self, addr: &PeerAddr) -> io::Result<Self::Listener> {
        Ok(TlsListener {
            inner: self.inner.bind(addr)?,
            shared: Arc::clone(&self.shared),
        })
    }

    /// Connects, then runs the whole handshake (bounded by the handshake timeout), so the
    /// stream returned is authenticated both ways and its `peer_node()` is known.
    fn connect(&self, addr: &PeerAddr) -> io::Result<Self::Stream> {
        let sock = self.inner.connect(addr)?;
        let timeout = Some(self.shared.handshake_timeout);
        sock.set_read_timeout(timeout)?;
        sock.set_write_timeout(timeout)?;
        let (conn, check) = self.shared.client().map_err(TlsError::into_io)?;
        let mut stream = TlsStream::new(
            sock,
            conn,
            check,
            addr.clone(),
            self.shared.handshake_timeout,
        );
        stream.connect_handshake()?;
        stream.get_ref().set_read_timeout(None)?;
        stream.get_ref().set_write_timeout(None)?;
        Ok(stream)
    }

    /// The inner transport's wake-up: no handshake, which nobody may be there to answer.
    fn wake(&self, addr: &PeerAddr) {
        self.inner.wake(addr);
    }
}

/// A bound TLS endpoint. `accept` returns at once, the handshake not done: it runs on the
/// stream's first read or write (see the [module docs](self)).
pub struct TlsListener<L> {
    inner: L,
    shared: Arc<Shared>,
}

impl<L> std::fmt::Debug for TlsListener<L> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsListener")
            .field("node", &self.shared.node)
            .finish_non_exhaustive()
    }
}

impl<L: Listener> Listener for TlsListener<L> {
    type Stream = TlsStream<L::Stream>;

    fn accept(&self) -> io::Result<(Self::Stream, PeerAddr)> {
        let (sock, from) = self.inner.accept()?;
        let (conn, check) = self.shared.server().map_err(TlsError::into_io)?;
        let stream = TlsStream::new(
            sock,
            conn,
            check,
            from.clone(),
            self.shared.handshake_timeout,
        );
        Ok((stream, from))
    }

    fn local_addr(&self) -> io::Result<PeerAddr> {
        self.inner.local_addr()
    }

    fn set_accept_timeout(&self, timeout: Option<Duration>) -> io::Result<()> {
        self.inner.set_accept_timeout(timeout)
    }
}
