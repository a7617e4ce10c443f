//! Private swarms: a swarm authority (a CA key and certificate) and the member
//! certificates it issues for node ids.

use std::fmt;
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, PKCS_ED25519, PublicKeyData, SerialNumber, SignatureAlgorithm,
};
use rustls::RootCertStore;
use rustls::server::ParsedCertificate;
use rustls_pki_types::{CertificateDer, UnixTime};

use super::identity::{
    ORG_AUTHORITY, ORG_MEMBER, ORG_NODE, ed25519_key, name, node_of_key, push_pem, read_pem,
    split_sections, write_new_file, write_replace,
};
use super::{TlsError, der, verify};
use crate::NodeId;

/// Longest swarm name (the X.509 upper bound for a common name).
const MAX_NAME: usize = 64;
/// Member certificates start this long before they are issued, for clocks a little behind.
const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// A swarm authority: the CA key and certificate that make nodes members of one private
/// swarm. Secret: whoever holds it can admit anyone.
pub struct SwarmAuthority {
    name: String,
    key: KeyPair,
    cert: CertificateDer<'static>,
    params: CertificateParams,
}

impl fmt::Debug for SwarmAuthority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SwarmAuthority({:?})", self.name)
    }
}

fn check_name(name: &str) -> Result<(), TlsError> {
    let bad = |reason| TlsError::BadSwarmName {
        name: name.to_string(),
        reason,
    };
    if name.trim().is_empty() {
        return Err(bad("it is empty"));
    }
    if name.chars().count() > MAX_NAME {
        return Err(bad("it is longer than 64 characters"));
    }
    if name.chars().any(char::is_control) {
        return Err(bad("it holds control characters"));
    }
    Ok(())
}

/// The authority certificate's parameters for swarm `name`; the same name always gives the
/// same subject, which member certificates name as their issuer.
fn authority_params(swarm: &str) -> CertificateParams {
    let mut params = CertificateParams::default();
    params.distinguished_name = name(swarm, ORG_AUTHORITY);
    // Path length 0: it signs member certificates, never other authorities.
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params
}

/// A node's public key, as rcgen signs it.
struct NodeKey([u8; 32]);

impl PublicKeyData for NodeKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }
    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ED25519
    }
}

/// Whole seconds since the Unix epoch, as certificates hold them.
fn unix_seconds(when: SystemTime) -> Result<Duration, TlsError> {
    let since = when
        .duration_since(UNIX_EPOCH)
        .map_err(|_| TlsError::Generate("certificate dates before 1970".into()))?;
    Ok(Duration::from_secs(since.as_secs()))
}

impl SwarmAuthority {
    /// A new authority for the swarm called `name` (not saved anywhere).
    pub fn generate(name: &str) -> Result<SwarmAuthority, TlsError> {
        check_name(name)?;
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let params = authority_params(name);
        let cert = params.self_signed(&key)?.der().clone();
        Ok(SwarmAuthority {
            name: name.to_string(),
            key,
            cert,
            params,
        })
    }

    /// A new authority for swarm `name`, written to `path` (mode 0600); refuses to
    /// overwrite an existing file.
    pub fn create(path: &Path, name: &str) -> Result<SwarmAuthority, TlsError> {
        if path.exists() {
            return Err(TlsError::Exists {
                path: path.to_path_buf(),
            });
        }
        let authority = SwarmAuthority::generate(name)?;
        if !write_new_file(path, authority.to_pem().as_bytes(), 0o600)? {
            return Err(TlsError::Exists {
                path: path.to_path_buf(),
            });
        }
        Ok(authority)
    }

    /// Loads the authority at `path`.
    pub fn load(path: &Path) -> Result<SwarmAuthority, TlsError> {
        const WHAT: &str = "swarm authority";
        let wrong = |reason: String| TlsError::WrongFile {
            path: path.to_path_buf(),
            expected: WHAT,
            reason,
        };
        let (key, certs) = split_sections(read_pem(path, WHAT)?);
        let key = key.ok_or_else(|| {
            wrong("it holds no private key (a membership file is not an authority)".into())
        })?;
        let [cert] = <[_; 1]>::try_from(certs)
            .map_err(|c| wrong(format!("it holds {} certificates, not one", c.len())))?;
        let key = ed25519_key(&key).map_err(wrong)?;
        let info = der::parse_cert(&cert).map_err(|e| wrong(format!("bad certificate: {e}")))?;
        match der::organization(info.subject).as_deref() {
            Some(ORG_AUTHORITY) => {}
            Some(ORG_NODE) => return Err(wrong("it is a node identity".into())),
            _ => return Err(wrong("its certificate was not made by shoal".into())),
        }
        let swarm = der::common_name(info.subject)
            .ok_or_else(|| wrong("its certificate names no swarm".into()))?;
        check_name(&swarm)?;
        if info.node_id() != Some(node_of_key(&key)?) {
            return Err(wrong("its certificate is not for its key".into()));
        }
        let params = authority_params(&swarm);
        // Member certificates name the subject rebuilt from the swarm name: it must be the
        // subject of this certificate, byte for byte.
        let rebuilt = params.self_signed(&key)?;
        let same = der::parse_cert(rebuilt.der()).is_ok_and(|r| r.subject == info.subject);
        if !same {
            return Err(wrong("its certificate was not made by shoal".into()));
        }
        Ok(SwarmAuthority {
            name: swarm,
            key,
            cert: CertificateDer::from(cert),
            params,
        })
    }

    /// The swarm's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The authority's (public) certificate, which every member holds.
    pub fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }

    /// A member certificate for `node`, valid from now (backdated five minutes for clocks
    /// a little behind) for `valid_for`.
    pub fn admit(&self, node: &NodeId, valid_for: Duration) -> Result<Membership, TlsError> {
        let now = SystemTime::now();
        let from = now.checked_sub(BACKDATE).unwrap_or(now);
        let until = now
            .checked_add(valid_for)
            .ok_or_else(|| TlsError::Generate("validity period too long".into()))?;
        self.admit_between(node, from, until)
    }

    /// A member certificate for `node` valid from `not_before` to `not_after` (whole
    /// seconds).
    pub fn admit_between(
        &self,
        node: &NodeId,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Membership, TlsError> {
        if not_after <= not_before {
            return Err(TlsError::Generate(
                "a membership must end after it starts".into(),
            ));
        }
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&node.to_string(), ORG_MEMBER);
        params.not_before = rcgen::date_time_ymd(1970, 1, 1) + unix_seconds(not_before)?;
        params.not_after = rcgen::date_time_ymd(1970, 1, 1) + unix_seconds(not_after)?;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        // Both: a member is a client of some nodes and a server to others.
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let mut serial = [0u8; 16];
        verify::provider()
            .secure_random
            .fill(&mut serial)
            .map_err(|_| TlsError::Generate("no randomness for a serial number".into()))?;
        serial[0] &= 0x7f;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        let issuer = Issuer::from_params(&self.params, &self.key);
        let cert = params.signed_by(&NodeKey(*node.as_bytes()), &issuer)?;
        Membership::from_certs(cert.der().to_vec(), self.cert.to_vec()).map_err(|reason| {
            TlsError::Generate(format!("the new certificate is unusable: {reason}"))
        })
    }

    fn to_pem(&self) -> String {
        let mut out = format!(
            "shoal swarm authority: swarm {:?}\nSECRET: whoever has this file can admit anyone to the swarm.\n",
            self.name
        );
        push_pem(&mut out, "PRIVATE KEY", self.key.serialized_der());
        push_pem(&mut out, "CERTIFICATE", &self.cert);
        out
    }
}

/// A member certificate (for one node, signed by a swarm authority) and that authority's
/// certificate: what a node needs to take part in a private swarm. Public: it holds no
/// key, and is useless without the node's identity.
#[derive(Clone)]
pub struct Membership {
    member: CertificateDer<'static>,
    authority: CertificateDer<'static>,
    node: NodeId,
    swarm: String,
    not_before: SystemTime,
    not_after: SystemTime,
}

impl fmt::Debug for Membership {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Membership({} in {:?})", self.node, self.swarm)
    }
}

impl Membership {
    /// Checks that `member` is a shoal member certificate signed by `authority`; the
    /// error is a reason for `WrongFile`.
    fn from_certs(member: Vec<u8>, authority: Vec<u8>) -> Result<Membership, String> {
        let ca = der::parse_cert(&authority)
            .map_err(|e| format!("its authority certificate is malformed ({e})"))?;
        if der::organization(ca.subject).as_deref() != Some(ORG_AUTHORITY) {
            return Err("its second certificate is not a shoal swarm authority".into());
        }
        let swarm =
            der::common_name(ca.subject).ok_or("its authority certificate names no swarm")?;
        let info = der::parse_cert(&member)
            .map_err(|e| format!("its member certificate is malformed ({e})"))?;
        if der::organization(info.subject).as_deref() != Some(ORG_MEMBER) {
            return Err("its first certificate is not a shoal member certificate".into());
        }
        let node = info
            .node_id()
            .ok_or("its member certificate is not for an Ed25519 key")?;
        if info.issuer != ca.subject {
            return Err(format!(
                "its member certificate was not issued by swarm {swarm:?}, whose certificate it holds"
            ));
        }
        // The signature, checked at a moment the certificate is valid (an expired
        // membership still loads: TlsTransport::new refuses it with a clear error).
        let mut roots = RootCertStore::empty();
        roots
            .add(CertificateDer::from(authority.as_slice()))
            .map_err(|e| format!("its authority certificate is unusable ({e})"))?;
        let at = info
            .not_before
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .saturating_add(Duration::from_secs(1));
        let member_der = CertificateDer::from(member.as_slice());
        let parsed = ParsedCertificate::try_from(&member_der)
            .map_err(|e| format!("its member certificate is malformed ({e})"))?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &roots,
            &[],
            UnixTime::since_unix_epoch(at),
            verify::provider().signature_verification_algorithms.all,
        )
        .map_err(|e| {
            format!("its member certificate does not verify against its authority ({e})")
        })?;
        let (not_before, not_after) = (info.not_before, info.not_after);
        Ok(Membership {
            member: CertificateDer::from(member),
            authority: CertificateDer::from(authority),
            node,
            swarm,
            not_before,
            not_after,
        })
    }

    /// Loads the membership file at `path` (the member certificate, then the authority's).
    pub fn load(path: &Path) -> Result<Membership, TlsError> {
        const WHAT: &str = "swarm membership";
        let wrong = |reason: String| TlsError::WrongFile {
            path: path.to_path_buf(),
            expected: WHAT,
            reason,
        };
        let (key, certs) = split_sections(read_pem(path, WHAT)?);
        if key.is_some() {
            return Err(wrong(
                "it holds a private key (an identity or authority file?); a membership file holds two certificates".into(),
            ));
        }
        let [member, authority] = <[_; 2]>::try_from(certs)
            .map_err(|c| wrong(format!("it holds {} certificates, not two", c.len())))?;
        Membership::from_certs(member, authority).map_err(wrong)
    }

    /// Writes it to `path` atomically (temporary file, then rename).
    pub fn save(&self, path: &Path) -> Result<(), TlsError> {
        let mut out = format!(
            "shoal swarm membership: node {} in swarm {:?}, valid until {}\n",
            self.node,
            self.swarm,
            der::format_time(self.not_after)
        );
        push_pem(&mut out, "CERTIFICATE", &self.member);
        push_pem(&mut out, "CERTIFICATE", &self.authority);
        write_replace(path, out.as_bytes(), 0o644)
    }

    /// The node it was issued for.
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// The swarm's name.
    pub fn swarm_name(&self) -> &str {
        &self.swarm
    }

    /// When it starts to be valid.
    pub fn not_before(&self) -> SystemTime {
        self.not_before
    }

    /// When it expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after
    }

    pub(crate) fn member_certificate(&self) -> &CertificateDer<'static> {
        &self.member
    }

    pub(crate) fn authority_certificate(&self) -> &CertificateDer<'static> {
        &self.authority
    }
}
