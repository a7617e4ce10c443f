//! Certificate checks for both ends of a handshake, the crypto provider, and the small
//! rustls plumbing around them (fixed certificate, acceptance signal).

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::SystemTime;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::{ClientSessionStore, ResolvesClientCert};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ClientHello, ParsedCertificate, ResolvesServerCert, StoresServerSessions};
use rustls::sign::CertifiedKey;
use rustls::{CertificateError, DigitallySignedStruct, DistinguishedName, Error, NamedGroup};
use rustls::{RootCertStore, SignatureScheme};
use rustls_pki_types::{CertificateDer, ServerName, UnixTime};

use super::revoked::RevocationList;
use super::{TlsError, der};
use crate::{NodeId, PeerAddr};

/// The crypto provider: ring, TLS 1.3 suites only, AES-128-GCM first (the fastest with
/// AES instructions; ChaCha20 stays for machines without them).
pub(crate) fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            use rustls::crypto::ring::cipher_suite as suite;
            let mut provider = rustls::crypto::ring::default_provider();
            provider.cipher_suites = vec![
                suite::TLS13_AES_128_GCM_SHA256,
                suite::TLS13_AES_256_GCM_SHA384,
                suite::TLS13_CHACHA20_POLY1305_SHA256,
            ];
            Arc::new(provider)
        })
        .clone()
}

/// The swarm a node belongs to: its authority's certificate as the only trust anchor.
pub(crate) struct Swarm {
    pub(crate) roots: RootCertStore,
}

/// What a node accepts from peers, shared by all its connections.
pub(crate) struct Policy {
    pub(crate) provider: Arc<CryptoProvider>,
    pub(crate) swarm: Option<Swarm>,
    pub(crate) revoked: Option<RevocationList>,
}

/// Why a peer's certificate was refused.
#[derive(Clone, Debug)]
pub(crate) enum Refusal {
    /// Not X.509 we can read.
    Malformed(String),
    /// A key other than Ed25519.
    NotEd25519,
    /// In a swarm: a self-signed (open mode) certificate.
    NoMembership,
    /// In a swarm: a certificate signed by another authority.
    OtherAuthority,
    /// Past its end date.
    Expired(SystemTime),
    /// Before its start date.
    NotYetValid(SystemTime),
    /// On the revocation list.
    Revoked(NodeId, PathBuf),
    /// Anything else webpki found wrong.
    Invalid(String),
}

impl Refusal {
    /// The rustls error (and so the alert the peer receives) for it.
    fn to_rustls(&self) -> Error {
        Error::InvalidCertificate(match self {
            Refusal::Malformed(_) => CertificateError::BadEncoding,
            Refusal::NotEd25519 => CertificateError::BadEncoding,
            Refusal::NoMembership | Refusal::OtherAuthority => CertificateError::UnknownIssuer,
            Refusal::Expired(_) => CertificateError::Expired,
            Refusal::NotYetValid(_) => CertificateError::NotValidYet,
            Refusal::Revoked(..) => CertificateError::Revoked,
            Refusal::Invalid(_) => CertificateError::BadSignature,
        })
    }

    /// The connection error, naming the peer's address.
    pub(crate) fn to_error(&self, addr: &PeerAddr) -> TlsError {
        let addr = addr.clone();
        match self {
            Refusal::Malformed(reason) => TlsError::BadPeerCertificate {
                addr,
                reason: format!("malformed certificate ({reason})"),
            },
            Refusal::NotEd25519 => TlsError::BadPeerCertificate {
                addr,
                reason: "its key is not Ed25519, so it is not a shoal node".into(),
            },
            Refusal::NoMembership => TlsError::NotMember {
                addr,
                reason: "it presented no member certificate",
            },
            Refusal::OtherAuthority => TlsError::NotMember {
                addr,
                reason: "its certificate is signed by another authority",
            },
            Refusal::Expired(at) => TlsError::PeerCertificateDate {
                addr,
                what: format!("expired (since {})", der::format_time(*at)),
            },
            Refusal::NotYetValid(at) => TlsError::PeerCertificateDate {
                addr,
                what: format!("not valid yet (until {})", der::format_time(*at)),
            },
            Refusal::Revoked(node, file) => TlsError::Revoked {
                addr,
                node: *node,
                file: file.clone(),
            },
            Refusal::Invalid(reason) => TlsError::BadPeerCertificate {
                addr,
                reason: reason.clone(),
            },
        }
    }
}

/// The checks of one connection: its verifier (client or server side), what it decided,
/// and, for clients, whether the server has accepted us (it sends a session ticket once
/// it has verified our certificate; the ticket itself is thrown away, since resuming a
/// session would skip the revocation check).
pub(crate) struct PeerCheck {
    policy: Arc<Policy>,
    outcome: Mutex<Option<Result<NodeId, Refusal>>>,
    accepted: AtomicBool,
}

impl std::fmt::Debug for PeerCheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PeerCheck")
    }
}

impl PeerCheck {
    pub(crate) fn new(policy: Arc<Policy>) -> Arc<PeerCheck> {
        Arc::new(PeerCheck {
            policy,
            outcome: Mutex::new(None),
            accepted: AtomicBool::new(false),
        })
    }

    /// The peer's verified node id.
    pub(crate) fn verified(&self) -> Option<NodeId> {
        match &*self.outcome.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(Ok(node)) => Some(*node),
            _ => None,
        }
    }

    /// Why the peer's certificate was refused, if it was.
    pub(crate) fn refusal(&self) -> Option<Refusal> {
        match &*self.outcome.lock().unwrap_or_else(PoisonError::into_inner) {
            Some(Err(refusal)) => Some(refusal.clone()),
            _ => None,
        }
    }

    /// Whether the server has said it accepted us (client side).
    pub(crate) fn accepted(&self) -> bool {
        self.accepted.load(Ordering::SeqCst)
    }

    /// Whether this node is in a swarm.
    pub(crate) fn in_swarm(&self) -> bool {
        self.policy.swarm.is_some()
    }

    fn check(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<(), Error> {
        let decision = self.decide(end_entity, intermediates, now);
        let result = decision.as_ref().map(|_| ()).map_err(Refusal::to_rustls);
        *self.outcome.lock().unwrap_or_else(PoisonError::into_inner) = Some(decision);
        result
    }

    pub(crate) fn decide(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<NodeId, Refusal> {
        let info = der::parse_cert(end_entity).map_err(|e| Refusal::Malformed(e.into()))?;
        let node = info.node_id().ok_or(Refusal::NotEd25519)?;
        let parsed = ParsedCertificate::try_from(end_entity)
            .map_err(|e| Refusal::Malformed(e.to_string()))?;
        if let Some(swarm) = &self.policy.swarm {
            // Names are not checked: a member is its key, which the handshake proves.
            let verified = rustls::client::verify_server_cert_signed_by_trust_anchor(
                &parsed,
                &swarm.roots,
                intermediates,
                now,
                self.policy.provider.signature_verification_algorithms.all,
            );
            if let Err(e) = verified {
                return Err(match e {
                    Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature,
                    ) if info.is_self_issued() => Refusal::NoMembership,
                    // BadSignature: another authority that took our swarm's name.
                    Error::InvalidCertificate(
                        CertificateError::UnknownIssuer | CertificateError::BadSignature,
                    ) => Refusal::OtherAuthority,
                    Error::InvalidCertificate(
                        CertificateError::Expired | CertificateError::ExpiredContext { .. },
                    ) => Refusal::Expired(info.not_after),
                    Error::InvalidCertificate(
                        CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. },
                    ) => Refusal::NotYetValid(info.not_before),
                    other => Refusal::Invalid(other.to_string()),
                });
            }
        }
        if let Some(list) = &self.policy.revoked
            && list.contains(&node)
        {
            return Err(Refusal::Revoked(node, list.path().to_path_buf()));
        }
        Ok(node)
    }

    fn verify_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.policy.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.policy
            .provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

impl ServerCertVerifier for PeerCheck {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PeerCheck {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, Error> {
        self.check(end_entity, intermediates, now)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        Err(Error::General("TLS 1.2 is not offered".into()))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, Error> {
        self.verify_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

/// Client side: a ticket from the server means it verified our certificate. Nothing is
/// stored, so no session is ever resumed.
impl ClientSessionStore for PeerCheck {
    fn set_kx_hint(&self, _: ServerName<'static>, _: NamedGroup) {}

    fn kx_hint(&self, _: &ServerName<'_>) -> Option<NamedGroup> {
        None
    }

    fn set_tls12_session(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls12ClientSessionValue,
    ) {
    }

    fn tls12_session(&self, _: &ServerName<'_>) -> Option<rustls::client::Tls12ClientSessionValue> {
        None
    }

    fn remove_tls12_session(&self, _: &ServerName<'static>) {}

    fn insert_tls13_ticket(
        &self,
        _: ServerName<'static>,
        _: rustls::client::Tls13ClientSessionValue,
    ) {
        self.accepted.store(true, Ordering::SeqCst);
    }

    fn take_tls13_ticket(
        &self,
        _: &ServerName<'static>,
    ) -> Option<rustls::client::Tls13ClientSessionValue> {
        None
    }
}

/// Server side: "stores" every session so rustls sends the client its ticket (the
/// signal that the client was accepted), and never finds one, so no session is resumed:
/// every connection runs the full check, revocation included.
#[derive(Debug)]
pub(crate) struct NoResumption;

impl StoresServerSessions for NoResumption {
    fn put(&self, _key: Vec<u8>, _value: Vec<u8>) -> bool {
        true
    }
    fn get(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn take(&self, _key: &[u8]) -> Option<Vec<u8>> {
        None
    }
    fn can_cache(&self) -> bool {
        true
    }
}

/// This node's certificate chain and key, presented on both sides.
#[derive(Debug)]
pub(crate) struct FixedCert(pub(crate) Arc<CertifiedKey>);

impl ResolvesClientCert for FixedCert {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl ResolvesServerCert for FixedCert {
    fn resolve(&self, _client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }
}
