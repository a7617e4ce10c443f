//! Node identity: who is at the other end of a connection, as opposed to where.
//!
//! A [`NodeId`] is a node's Ed25519 public key (32 bytes), the key its TLS certificate
//! carries and its handshakes are signed with. It is the key itself, not a hash of it: a
//! swarm authority can then issue a member certificate for a node from its id alone
//! (`shoal swarm admit --id`), without the node sending it anything else.
//!
//! Written for people as 52 base32 letters and digits (RFC 4648 alphabet) in 13 groups of
//! four, `ABCD-EFGH-...`, which can be read aloud and compared; parsing ignores case, dashes
//! and spaces.
//!
//! ```
//! use shoal_proto::NodeId;
//! let id = NodeId::from_bytes([7; 32]);
//! let text = id.to_string();
//! assert_eq!(text.len(), 52 + 12);
//! assert_eq!(text.parse::<NodeId>().unwrap(), id);
//! assert_eq!(text.to_lowercase().replace('-', "").parse::<NodeId>().unwrap(), id);
//! assert!("not-an-id".parse::<NodeId>().is_err());
//! ```

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::ProtoError;

const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
/// Base32 characters of an id (256 bits, 5 bits a character, rounded up).
const CHARS: usize = 52;
/// Characters between dashes in the written form.
const GROUP: usize = 4;

/// A node's Ed25519 public key; see the [module docs](self).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeId([u8; 32]);

impl NodeId {
    /// The id of the Ed25519 public key `key`.
    pub fn from_bytes(key: [u8; 32]) -> NodeId {
        NodeId(key)
    }

    /// The public key's 32 bytes.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The first two groups of the written form (`ABCD-EFGH`), for logs and narrow tables.
    pub fn short(&self) -> String {
        let text = self.base32();
        format!("{}-{}", &text[..GROUP], &text[GROUP..GROUP * 2])
    }

    fn base32(&self) -> String {
        let mut out = String::with_capacity(CHARS);
        let mut acc: u32 = 0;
        let mut bits = 0;
        for &byte in &self.0 {
            acc = (acc << 8) | u32::from(byte);
            bits += 8;
            while bits >= 5 {
                bits -= 5;
                out.push(char::from(ALPHABET[((acc >> bits) & 31) as usize]));
            }
        }
        if bits > 0 {
            out.push(char::from(ALPHABET[((acc << (5 - bits)) & 31) as usize]));
        }
        out
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let text = self.base32();
        for (i, group) in text.as_bytes().chunks(GROUP).enumerate() {
            if i > 0 {
                f.write_str("-")?;
            }
            // Base32 is ASCII.
            f.write_str(std::str::from_utf8(group).map_err(|_| fmt::Error)?)?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({})", self.short())
    }
}

impl FromStr for NodeId {
    type Err = ProtoError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let bad = || ProtoError::BadNodeId(s.chars().take(80).collect());
        let mut out = [0u8; 32];
        let mut acc: u32 = 0;
        let mut bits = 0;
        let mut chars = 0;
        let mut filled = 0;
        for c in s.chars() {
            if c == '-' || c == ' ' {
                continue;
            }
            let upper = c.to_ascii_uppercase();
            let value = ALPHABET
                .iter()
                .position(|&a| char::from(a) == upper)
                .ok_or_else(bad)?;
            chars += 1;
            if chars > CHARS {
                return Err(bad());
            }
            acc = (acc << 5) | value as u32;
            bits += 5;
            if bits >= 8 {
                bits -= 8;
                if filled < 32 {
                    out[filled] = (acc >> bits) as u8;
                    filled += 1;
                }
            }
            acc &= (1 << bits) - 1;
        }
        // 52 characters carry 260 bits: the last 4 must be zero, as the encoder writes them.
        if chars != CHARS || filled != 32 || acc != 0 {
            return Err(bad());
        }
        Ok(NodeId(out))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_every_byte_pattern() {
        for seed in 0u8..=255 {
            let mut key = [0u8; 32];
            for (i, b) in key.iter_mut().enumerate() {
                *b = seed.wrapping_mul(31).wrapping_add(i as u8 * 7);
            }
            let id = NodeId::from_bytes(key);
            assert_eq!(id.to_string().parse::<NodeId>().unwrap(), id);
        }
    }

    #[test]
    fn refuses_wrong_lengths_letters_and_trailing_bits() {
        let id = NodeId::from_bytes([0xff; 32]).to_string();
        assert!(id[..id.len() - 1].parse::<NodeId>().is_err());
        assert!(format!("{id}A").parse::<NodeId>().is_err());
        assert!(id.replace('7', "1").parse::<NodeId>().is_err());
        // The last character may only carry one significant bit (256 = 51 * 5 + 1).
        let mut tampered = id.clone();
        tampered.pop();
        tampered.push('B');
        assert!(tampered.parse::<NodeId>().is_err(), "{tampered}");
    }
}
