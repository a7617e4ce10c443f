//! A node's persistent key pair and self-signed certificate, and the file helpers shared by
//! every shoal key and certificate file.

use std::fmt;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{CertificateParams, DistinguishedName, DnType, KeyPair, PKCS_ED25519};
use rustls_pki_types::pem::{PemObject, SectionKind};
use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};

use super::TlsError;
use super::der;
use crate::NodeId;

/// Written in the O= field of a node's self-signed certificate.
pub(crate) const ORG_NODE: &str = "shoal node";
/// Written in the O= field of a swarm authority's certificate.
pub(crate) const ORG_AUTHORITY: &str = "shoal swarm authority";
/// Written in the O= field of a member certificate.
pub(crate) const ORG_MEMBER: &str = "shoal swarm member";

/// Largest key or certificate file read (they are a few hundred bytes).
const MAX_FILE: u64 = 1 << 20;

/// A node's key pair and self-signed certificate (Ed25519). Its public key is the node's
/// [`NodeId`]. Secret: whoever holds it is that node.
pub struct Identity {
    key: PrivatePkcs8KeyDer<'static>,
    cert: CertificateDer<'static>,
    node: NodeId,
}

impl Clone for Identity {
    fn clone(&self) -> Self {
        Identity {
            key: self.key.clone_key(),
            cert: self.cert.clone(),
            node: self.node,
        }
    }
}

impl fmt::Debug for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Identity({})", self.node)
    }
}

impl Identity {
    /// A new random identity (not saved anywhere).
    pub fn generate() -> Result<Identity, TlsError> {
        let key = KeyPair::generate_for(&PKCS_ED25519)?;
        let node = node_of_key(&key)?;
        let mut params = CertificateParams::default();
        params.distinguished_name = name(&node.to_string(), ORG_NODE);
        // The default validity (1975 to 4096): a node's own certificate never expires; in
        // open mode only its key counts, and in a swarm its member certificate has dates.
        let cert = params.self_signed(&key)?;
        Ok(Identity {
            key: PrivatePkcs8KeyDer::from(key.serialize_der()),
            cert: cert.der().clone(),
            node,
        })
    }

    /// Loads the identity at `path`, creating it when missing: the new file is written
    /// whole to a temporary file (mode 0600) and linked into place without replacing
    /// anything, so processes racing to create it all end up with the one that won. The
    /// bool says whether this call created it.
    pub fn load_or_create(path: &Path) -> Result<(Identity, bool), TlsError> {
        match fs::symlink_metadata(path) {
            Ok(_) => return Ok((Identity::load(path)?, false)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TlsError::Read {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
        let identity = Identity::generate()?;
        if write_new_file(path, identity.to_pem().as_bytes(), 0o600)? {
            Ok((identity, true))
        } else {
            Ok((Identity::load(path)?, false))
        }
    }

    /// Loads the identity at `path`.
    pub fn load(path: &Path) -> Result<Identity, TlsError> {
        const WHAT: &str = "node identity";
        let sections = read_pem(path, WHAT)?;
        warn_if_readable_by_others(path);
        let wrong = |reason: String| TlsError::WrongFile {
            path: path.to_path_buf(),
            expected: WHAT,
            reason,
        };
        let (key, certs) = split_sections(sections);
        let [cert] = <[_; 1]>::try_from(certs)
            .map_err(|c| wrong(format!("it holds {} certificates, not one", c.len())))?;
        let key = key.ok_or_else(|| wrong("it holds no private key".into()))?;
        let pair = ed25519_key(&key).map_err(wrong)?;
        let node = node_of_key(&pair)?;
        let info = der::parse_cert(&cert).map_err(|e| wrong(format!("bad certificate: {e}")))?;
        match der::organization(info.subject).as_deref() {
            Some(ORG_NODE) => {}
            Some(ORG_AUTHORITY) => {
                return Err(wrong(
                    "it is a swarm authority (keep it apart from node identities)".into(),
                ));
            }
            _ => return Err(wrong("its certificate was not made by shoal".into())),
        }
        if info.node_id() != Some(node) {
            return Err(wrong("its certificate is not for its key".into()));
        }
        Ok(Identity {
            key,
            cert: CertificateDer::from(cert),
            node,
        })
    }

    /// This node's id (its public key).
    pub fn node_id(&self) -> NodeId {
        self.node
    }

    /// Saves it to `path` (mode 0600), replacing nothing: fails if the file exists.
    pub fn save_new(&self, path: &Path) -> Result<(), TlsError> {
        if write_new_file(path, self.to_pem().as_bytes(), 0o600)? {
            Ok(())
        } else {
            Err(TlsError::Exists {
                path: path.to_path_buf(),
            })
        }
    }

    fn to_pem(&self) -> String {
        let mut out = format!(
            "shoal node identity: node {}\nSECRET: whoever has this file is this node.\n",
            self.node
        );
        push_pem(&mut out, "PRIVATE KEY", self.key.secret_pkcs8_der());
        push_pem(&mut out, "CERTIFICATE", &self.cert);
        out
    }

    pub(crate) fn key(&self) -> &PrivatePkcs8KeyDer<'static> {
        &self.key
    }

    pub(crate) fn certificate(&self) -> &CertificateDer<'static> {
        &self.cert
    }
}

/// The Name shoal gives its certificates: CN = `common`, O = what kind of certificate.
pub(crate) fn name(common: &str, org: &str) -> DistinguishedName {
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, common);
    dn.push(DnType::OrganizationName, org);
    dn
}

pub(crate) fn node_of_key(key: &KeyPair) -> Result<NodeId, TlsError> {
    let raw: [u8; 32] = key
        .public_key_raw()
        .try_into()
        .map_err(|_| TlsError::Generate("an Ed25519 public key is not 32 bytes".into()))?;
    Ok(NodeId::from_bytes(raw))
}

/// The Ed25519 key pair in a PKCS#8 section; the error is a reason for `WrongFile`.
pub(crate) fn ed25519_key(key: &PrivatePkcs8KeyDer<'_>) -> Result<KeyPair, String> {
    KeyPair::from_pkcs8_der_and_sign_algo(key, &PKCS_ED25519)
        .map_err(|_| "its private key is not an Ed25519 key".to_string())
}

/// The private key (if any) and the certificates of a PEM file, in order.
pub(crate) fn split_sections(
    sections: Vec<(SectionKind, Vec<u8>)>,
) -> (Option<PrivatePkcs8KeyDer<'static>>, Vec<Vec<u8>>) {
    let mut key = None;
    let mut certs = Vec::new();
    for (kind, der) in sections {
        match kind {
            SectionKind::PrivateKey => key = Some(PrivatePkcs8KeyDer::from(der)),
            SectionKind::Certificate => certs.push(der),
            _ => {}
        }
    }
    (key, certs)
}

/// The PEM sections of `path`; `what` names the expected kind of file for errors.
pub(crate) fn read_pem(
    path: &Path,
    what: &'static str,
) -> Result<Vec<(SectionKind, Vec<u8>)>, TlsError> {
    let read_error = |source| TlsError::Read {
        path: path.to_path_buf(),
        source,
    };
    let file = fs::File::open(path).map_err(read_error)?;
    let mut bytes = Vec::new();
    io::Read::read_to_end(&mut io::Read::take(file, MAX_FILE + 1), &mut bytes)
        .map_err(read_error)?;
    let wrong = |reason: String| TlsError::WrongFile {
        path: path.to_path_buf(),
        expected: what,
        reason,
    };
    if bytes.len() as u64 > MAX_FILE {
        return Err(wrong("it is far too large".into()));
    }
    let mut sections = Vec::new();
    for section in <(SectionKind, Vec<u8>)>::pem_slice_iter(&bytes) {
        sections.push(section.map_err(|e| wrong(format!("malformed PEM ({e})")))?);
    }
    if sections.is_empty() {
        return Err(wrong("it holds no PEM sections".into()));
    }
    Ok(sections)
}

/// Appends one PEM section to `out` (the `pem` crate, already in the tree through rcgen;
/// Unix line endings).
pub(crate) fn push_pem(out: &mut String, label: &str, der: &[u8]) {
    let config = pem::EncodeConfig::new().set_line_ending(pem::LineEnding::LF);
    out.push_str(&pem::encode_config(&pem::Pem::new(label, der), config));
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = fs::metadata(path)
        && meta.permissions().mode() & 0o077 != 0
    {
        log::warn!(
            "{} is readable by other users (mode {:o}); it should be 0600",
            path.display(),
            meta.permissions().mode() & 0o777
        );
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_path: &Path) {}

/// A fresh temporary path next to `path`.
fn temp_path(path: &Path) -> PathBuf {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    path.with_file_name(format!(
        ".{name}.{}.{}.tmp",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ))
}

/// Writes `contents` to a new temporary file next to `path` (created with `mode`),
/// synced, creating missing parent folders.
fn write_temp(path: &Path, contents: &[u8], mode: u32) -> Result<PathBuf, TlsError> {
    let write_error = |source| TlsError::Write {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        fs::create_dir_all(parent).map_err(write_error)?;
    }
    let temp = temp_path(path);
    let result = create_new(&temp, mode).and_then(|mut file| {
        file.write_all(contents)?;
        file.sync_all()
    });
    if let Err(e) = result {
        let _ = fs::remove_file(&temp);
        return Err(write_error(e));
    }
    Ok(temp)
}

/// Puts `contents` at `path` unless something is already there: written whole to a
/// temporary file, then hard-linked into place (which never replaces a file). Returns
/// false, writing nothing, when `path` exists (another process may just have won a race).
pub(crate) fn write_new_file(path: &Path, contents: &[u8], mode: u32) -> Result<bool, TlsError> {
    let temp = write_temp(path, contents, mode)?;
    let linked = fs::hard_link(&temp, path);
    let _ = fs::remove_file(&temp);
    match linked {
        Ok(()) => {
            sync_parent(path);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        // A file system without hard links: create the file exclusively instead (a racing
        // reader could then see it half written, never a replaced one).
        Err(_) => write_exclusive(path, contents, mode),
    }
}

/// Creates `path`, which must not exist, for writing, with permissions `mode` on Unix.
fn create_new(path: &Path, mode: u32) -> io::Result<fs::File> {
    let mut options = fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    options.open(path)
}

fn write_exclusive(path: &Path, contents: &[u8], mode: u32) -> Result<bool, TlsError> {
    let mut file = match create_new(path, mode) {
        Ok(file) => file,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => return Ok(false),
        Err(source) => {
            return Err(TlsError::Write {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    let written = file.write_all(contents).and_then(|()| file.sync_all());
    if let Err(source) = written {
        let _ = fs::remove_file(path);
        return Err(TlsError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    sync_parent(path);
    Ok(true)
}

/// Replaces `path` with `contents` atomically (temporary file, then rename).
pub(crate) fn write_replace(path: &Path, contents: &[u8], mode: u32) -> Result<(), TlsError> {
    let temp = write_temp(path, contents, mode)?;
    if let Err(source) = fs::rename(&temp, path) {
        let _ = fs::remove_file(&temp);
        return Err(TlsError::Write {
            path: path.to_path_buf(),
            source,
        });
    }
    sync_parent(path);
    Ok(())
}

/// Makes a new directory entry durable (best effort).
fn sync_parent(path: &Path) {
    if let Some(parent) = path.parent() {
        let parent = if parent.as_os_str().is_empty() {
            Path::new(".")
        } else {
            parent
        };
        if let Ok(dir) = fs::File::open(parent) {
            let _ = dir.sync_all();
        }
    }
}
