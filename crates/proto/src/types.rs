use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

/// Longest accepted file name, in bytes (the common file-system limit).
pub const MAX_NAME_LEN: usize = 255;

/// Longest accepted peer address, in bytes.
const MAX_ADDR_LEN: usize = 255;

/// A file's content identity: the BLAKE3 hash of its bytes (what `b3sum` prints).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct FileId(pub [u8; 32]);

impl FileId {
    /// The id as 64 lowercase hex digits.
    pub fn to_hex(&self) -> String {
        let mut out = String::with_capacity(64);
        for byte in self.0 {
            out.push(char::from(b"0123456789abcdef"[usize::from(byte >> 4)]));
            out.push(char::from(b"0123456789abcdef"[usize::from(byte & 0xf)]));
        }
        out
    }

    /// A short prefix for logs and tables.
    pub fn short(&self) -> String {
        self.to_hex()[..12].to_string()
    }
}

impl fmt::Display for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for FileId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "FileId({})", self.short())
    }
}

impl FromStr for FileId {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtoError::BadId(s.chars().take(80).collect());
        if s.len() != 64 {
            return Err(bad());
        }
        let mut id = [0u8; 32];
        for (i, pair) in s.as_bytes().chunks_exact(2).enumerate() {
            let hex = std::str::from_utf8(pair).map_err(|_| bad())?;
            id[i] = u8::from_str_radix(hex, 16).map_err(|_| bad())?;
        }
        Ok(FileId(id))
    }
}

/// What the index and peers know about a file.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FileMeta {
    /// Plain file name (see [`validate_name`]).
    pub name: String,
    /// Size in bytes.
    pub size: u64,
    /// Chunk size in bytes: a power of two, see [`crate::content`].
    pub chunk_size: u32,
    /// Content hash.
    pub id: FileId,
}

/// Where a peer (or index) can be reached: `host:port` for TCP, `name:port` on the in-memory
/// network. Validated on construction and when decoded from the wire.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct PeerAddr(String);

impl PeerAddr {
    /// Checks and wraps an address: `HOST:PORT`, at most 255 bytes, printable, no spaces.
    pub fn new(addr: impl Into<String>) -> Result<Self, ProtoError> {
        let addr = addr.into();
        let reason = if addr.is_empty() {
            Some("empty")
        } else if addr.len() > MAX_ADDR_LEN {
            Some("longer than 255 bytes")
        } else if addr.chars().any(|c| c.is_control() || c.is_whitespace()) {
            Some("contains whitespace or control characters")
        } else if !has_host_and_port(&addr) {
            Some("is not HOST:PORT (a port from 0 to 65535, written plainly)")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(ProtoError::BadAddr {
                addr: addr.chars().take(80).collect(),
                reason,
            }),
            None => Ok(PeerAddr(addr)),
        }
    }

    /// The address as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host part (everything before the last `:`).
    pub fn host(&self) -> &str {
        self.0.rsplit_once(':').map_or(&self.0, |(host, _)| host)
    }

    /// The port (checked when the address was made, so always there).
    pub fn port(&self) -> u16 {
        self.0
            .rsplit_once(':')
            .and_then(|(_, port)| port.parse().ok())
            .unwrap_or(0)
    }
}

/// `HOST:PORT` with a non-empty host and a port in its plain decimal form: no sign, no
/// leading zeros (a padded port would make one endpoint look like many).
fn has_host_and_port(addr: &str) -> bool {
    match addr.rsplit_once(':') {
        // Printed back, only the plain form reads the same ("+80" and "080" do not).
        Some((host, port)) => {
            !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p.to_string() == port)
        }
        None => false,
    }
}

impl TryFrom<String> for PeerAddr {
    type Error = ProtoError;
    fn try_from(s: String) -> Result<Self, Self::Error> {
        PeerAddr::new(s)
    }
}

impl From<PeerAddr> for String {
    fn from(a: PeerAddr) -> String {
        a.0
    }
}

impl FromStr for PeerAddr {
    type Err = ProtoError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        PeerAddr::new(s)
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PeerAddr({})", self.0)
    }
}

/// How a user names a file: by name, or by content id (64 hex digits).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum FileKey {
    /// A plain file name.
    Name(String),
    /// A content id.
    Id(FileId),
}

impl FileKey {
    /// Reads user input: 64 hex digits are an id, anything else must be a valid name.
    pub fn parse(input: &str) -> Result<FileKey, ProtoError> {
        if input.len() == 64 && input.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Ok(FileKey::Id(input.parse()?));
        }
        validate_name(input)?;
        Ok(FileKey::Name(input.to_string()))
    }

    /// Checks a key received from the wire.
    pub fn validate(&self) -> Result<(), ProtoError> {
        match self {
            FileKey::Name(name) => validate_name(name),
            FileKey::Id(_) => Ok(()),
        }
    }
}

impl fmt::Display for FileKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileKey::Name(name) => f.write_str(name),
            FileKey::Id(id) => write!(f, "{id}"),
        }
    }
}

/// Accepts only a plain file name: not empty, not `.` or `..`, no `/`, `\` or NUL, at most
/// [`MAX_NAME_LEN`] bytes. Such a name can never leave the folder it is joined to.
pub fn validate_name(name: &str) -> Result<(), ProtoError> {
    let reason = if name.is_empty() {
        Some("empty")
    } else if name.len() > MAX_NAME_LEN {
        Some("longer than 255 bytes")
    } else if name == "." || name == ".." || name.contains("..") {
        Some("contains `..`")
    } else if name.contains('/') || name.contains('\\') {
        Some("contains a path separator")
    } else if name.contains('\0') {
        Some("contains NUL")
    } else if name.chars().any(char::is_control) {
        Some("contains control characters")
    } else if name.chars().any(is_bidi_control) {
        // "invoice\u{202E}fdp.exe" lists as "invoiceexe.pdf": a name must read as it is.
        Some("contains a text-direction control character")
    } else {
        None
    };
    match reason {
        Some(reason) => Err(ProtoError::BadName {
            name: name.chars().take(80).collect(),
            reason,
        }),
        None => Ok(()),
    }
}

/// Unicode's explicit bidirectional formatting characters, which reorder how a name is
/// displayed (the "Trojan Source" and right-to-left-override tricks).
fn is_bidi_control(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        // Right-to-left scripts themselves are fine; only the override controls are not.
        for ok in [
            "a",
            "song.ogg",
            "x y z.txt",
            "é.bin",
            "שיר.ogg",
            &"a".repeat(255),
        ] {
            assert!(validate_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a\\b",
            "a\0b",
            "x..y",
            "\n",
            &"a".repeat(256),
            "invoice\u{202E}fdp.exe",
            "a\u{2066}b",
            "a\u{200F}b",
        ] {
            assert!(validate_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn id_hex_round_trip() {
        let id = FileId(*blake3::hash(b"x").as_bytes());
        assert_eq!(id.to_hex(), blake3::hash(b"x").to_hex().as_str());
        assert_eq!(id.to_hex().parse::<FileId>().unwrap(), id);
        assert!("zz".parse::<FileId>().is_err());
        assert!("g".repeat(64).parse::<FileId>().is_err());
    }

    #[test]
    fn keys() {
        let id = FileId([7; 32]);
        assert_eq!(FileKey::parse(&id.to_hex()).unwrap(), FileKey::Id(id));
        assert!(FileKey::parse("a/b").is_err());
    }

    #[test]
    fn addrs() {
        assert_eq!(PeerAddr::new("127.0.0.1:80").unwrap().host(), "127.0.0.1");
        assert_eq!(PeerAddr::new("[::1]:1024").unwrap().host(), "[::1]");
        assert_eq!(PeerAddr::new("[::1]:1024").unwrap().port(), 1024);
        assert!(PeerAddr::new("peer.example:0").is_ok());
        let padded = format!("victim:{:0>248}", 7002);
        for bad in [
            "",
            "a b",
            "victim",
            "victim:",
            ":7000",
            "victim:http",
            "victim:65536",
            "victim:+80",
            "victim:080",
            &padded,
        ] {
            assert!(PeerAddr::new(bad).is_err(), "{bad:?}");
            // Off the wire too: an address is checked as it is decoded.
            let mut frame = Vec::new();
            crate::codec::encode_frame(&bad.to_string(), &mut frame).unwrap();
            assert!(
                crate::codec::decode_body::<PeerAddr>(&frame[4..]).is_err(),
                "{bad:?}"
            );
        }
    }
}
