//! Just enough DER to read the fields of an X.509 certificate that shoal shows or checks
//! itself: issuer and subject names (the swarm's name, whether a certificate is
//! self-signed), the validity period, and the public key. Signatures and chains are
//! verified by rustls/webpki, never here.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use crate::NodeId;

/// SubjectPublicKeyInfo of an Ed25519 key, up to the key: SEQUENCE { SEQUENCE { OID
/// 1.3.101.112 }, BIT STRING (33 bytes, no unused bits) }.
const ED25519_SPKI_PREFIX: [u8; 12] = [
    0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
];
/// id-at-commonName.
const OID_CN: [u8; 3] = [0x55, 0x04, 0x03];
/// id-at-organizationName.
const OID_O: [u8; 3] = [0x55, 0x04, 0x0a];

/// The fields of a certificate shoal reads.
#[derive(Clone, Debug)]
pub(crate) struct CertInfo<'a> {
    /// The issuer's Name, whole (tag and length included).
    pub(crate) issuer: &'a [u8],
    /// The subject's Name, whole.
    pub(crate) subject: &'a [u8],
    pub(crate) not_before: SystemTime,
    pub(crate) not_after: SystemTime,
    /// The SubjectPublicKeyInfo, whole.
    pub(crate) spki: &'a [u8],
}

impl CertInfo<'_> {
    /// The node id of an Ed25519 key; `None` for any other kind of key.
    pub(crate) fn node_id(&self) -> Option<NodeId> {
        node_id_of_spki(self.spki)
    }

    /// Issued by its own subject (a node's self-signed certificate, or an authority's).
    pub(crate) fn is_self_issued(&self) -> bool {
        self.issuer == self.subject
    }
}

/// The node id of an Ed25519 SubjectPublicKeyInfo.
pub(crate) fn node_id_of_spki(spki: &[u8]) -> Option<NodeId> {
    let key = spki.strip_prefix(&ED25519_SPKI_PREFIX[..])?;
    let key: [u8; 32] = key.try_into().ok()?;
    Some(NodeId::from_bytes(key))
}

/// One TLV: its tag, its content, the whole encoding, and what follows it.
struct Tlv<'a> {
    tag: u8,
    content: &'a [u8],
    whole: &'a [u8],
}

fn next(input: &[u8]) -> Result<(Tlv<'_>, &[u8]), &'static str> {
    let (&tag, rest) = input.split_first().ok_or("truncated")?;
    if tag & 0x1f == 0x1f {
        return Err("unsupported tag");
    }
    let (&first, mut rest) = rest.split_first().ok_or("truncated")?;
    let len = if first < 0x80 {
        usize::from(first)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return Err("bad length");
        }
        let mut len = 0usize;
        for &b in &rest[..n] {
            len = (len << 8) | usize::from(b);
        }
        rest = &rest[n..];
        len
    };
    if rest.len() < len {
        return Err("truncated");
    }
    let header = input.len() - rest.len();
    let tlv = Tlv {
        tag,
        content: &rest[..len],
        whole: &input[..header + len],
    };
    Ok((tlv, &rest[len..]))
}

fn expect(input: &[u8], tag: u8) -> Result<(Tlv<'_>, &[u8]), &'static str> {
    let (tlv, rest) = next(input)?;
    if tlv.tag != tag {
        return Err("unexpected field");
    }
    Ok((tlv, rest))
}

const SEQUENCE: u8 = 0x30;

/// Reads the fields of certificate `der`; the error says what is wrong with it.
pub(crate) fn parse_cert(der: &[u8]) -> Result<CertInfo<'_>, &'static str> {
    let (cert, rest) = expect(der, SEQUENCE).map_err(|_| "not a DER certificate")?;
    if !rest.is_empty() {
        return Err("trailing bytes after the certificate");
    }
    let (tbs, _) = expect(cert.content, SEQUENCE)?;
    let mut fields = tbs.content;
    // Optional [0] EXPLICIT version.
    if fields.first() == Some(&0xa0) {
        fields = next(fields)?.1;
    }
    let (_serial, fields) = expect(fields, 0x02)?;
    let (_algorithm, fields) = expect(fields, SEQUENCE)?;
    let (issuer, fields) = expect(fields, SEQUENCE)?;
    let (validity, fields) = expect(fields, SEQUENCE)?;
    let (subject, fields) = expect(fields, SEQUENCE)?;
    let (spki, _) = expect(fields, SEQUENCE)?;
    let (not_before, times) = next(validity.content)?;
    let (not_after, _) = next(times)?;
    Ok(CertInfo {
        issuer: issuer.whole,
        subject: subject.whole,
        not_before: parse_time(&not_before)?,
        not_after: parse_time(&not_after)?,
        spki: spki.whole,
    })
}

/// The first value of attribute `oid` in Name `name` (as text).
fn attribute(name: &[u8], oid: &[u8]) -> Option<String> {
    let (name, _) = expect(name, SEQUENCE).ok()?;
    let mut sets = name.content;
    while !sets.is_empty() {
        let (set, rest) = expect(sets, 0x31).ok()?;
        sets = rest;
        let mut attrs = set.content;
        while !attrs.is_empty() {
            let (attr, rest) = expect(attrs, SEQUENCE).ok()?;
            attrs = rest;
            let (id, value) = expect(attr.content, 0x06).ok()?;
            if id.content == oid {
                let (value, _) = next(value).ok()?;
                return String::from_utf8(value.content.to_vec()).ok();
            }
        }
    }
    None
}

/// The common name (CN) of Name `name`.
pub(crate) fn common_name(name: &[u8]) -> Option<String> {
    attribute(name, &OID_CN)
}

/// The organization (O) of Name `name`; shoal writes what kind of certificate it is there.
pub(crate) fn organization(name: &[u8]) -> Option<String> {
    attribute(name, &OID_O)
}

fn parse_time(tlv: &Tlv<'_>) -> Result<SystemTime, &'static str> {
    let digits_only = tlv.content.strip_suffix(b"Z").ok_or("time not in UTC")?;
    // All ASCII digits before any slicing: a multi-byte character must not reach a byte
    // offset that is not a character boundary (found by fuzz/peer_certificate).
    if !digits_only.iter().all(u8::is_ascii_digit) {
        return Err("bad time");
    }
    let text = std::str::from_utf8(digits_only).map_err(|_| "bad time")?;
    let (year, rest) = match tlv.tag {
        // UTCTime: YYMMDDHHMMSS, 50..99 are 19xx.
        0x17 if text.len() == 12 => {
            let yy: i64 = digits(&text[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &text[2..])
        }
        // GeneralizedTime: YYYYMMDDHHMMSS.
        0x18 if text.len() == 14 => (digits(&text[..4])?, &text[4..]),
        _ => return Err("bad time"),
    };
    let month = digits(&rest[0..2])?;
    let day = digits(&rest[2..4])?;
    let hour = digits(&rest[4..6])?;
    let minute = digits(&rest[6..8])?;
    let second = digits(&rest[8..10])?;
    if !(1..=12).contains(&month)
        || !(1..=31).contains(&day)
        || hour > 23
        || minute > 59
        || second > 60
    {
        return Err("bad time");
    }
    let days = days_from_civil(year, month, day);
    let secs = days * 86_400 + hour * 3600 + minute * 60 + second;
    Ok(from_unix(secs))
}

fn digits(text: &str) -> Result<i64, &'static str> {
    if !text.bytes().all(|b| b.is_ascii_digit()) {
        return Err("bad time");
    }
    text.parse().map_err(|_| "bad time")
}

/// Seconds since the Unix epoch (negative before it) as a `SystemTime`.
pub(crate) fn from_unix(secs: i64) -> SystemTime {
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs.unsigned_abs())
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs())
    }
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// `when` as `YYYY-MM-DD HH:MM:SS UTC`, as the TLS errors write certificate dates (and
/// `shoal id --member` the end of a membership).
pub fn format_time(when: SystemTime) -> String {
    let secs = match when.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_secs()).unwrap_or(i64::MAX),
        Err(e) => -i64::try_from(e.duration().as_secs()).unwrap_or(i64::MAX),
    };
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Inverse of days_from_civil.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates_round_trip() {
        for (secs, text) in [
            (0, "1970-01-01 00:00:00 UTC"),
            (951_782_400, "2000-02-29 00:00:00 UTC"),
            (253_402_300_799, "9999-12-31 23:59:59 UTC"),
            (-86_400, "1969-12-31 00:00:00 UTC"),
        ] {
            assert_eq!(format_time(from_unix(secs)), text);
        }
        assert_eq!(days_from_civil(2000, 3, 1), 11_017);
    }

    #[test]
    fn garbage_is_refused_not_panicked_on() {
        for bad in [
            &[][..],
            &[0x30],
            &[0x30, 0x85, 1, 2, 3, 4, 5],
            &[0x30, 0x03, 0x02, 0x01],
        ] {
            assert!(parse_cert(bad).is_err());
        }
        assert!(node_id_of_spki(&[0x30, 0x2a]).is_none());
    }

    #[test]
    fn times_with_non_ascii_characters_are_refused_not_sliced() {
        // A UTCTime of 12 bytes whose third "digit" pair ends inside a 3-byte character.
        for (tag, content) in [
            (0x17, "26120\u{308b}5814Z"),
            (0x18, "2026120\u{308b}5814Z"),
            (0x17, "2612\u{e9}0151814Z"),
        ] {
            let tlv = Tlv {
                tag,
                content: content.as_bytes(),
                whole: content.as_bytes(),
            };
            assert_eq!(parse_time(&tlv), Err("bad time"), "{content}");
        }
        let good = Tlv {
            tag: 0x17,
            content: b"261202161314Z",
            whole: b"",
        };
        assert_eq!(
            format_time(parse_time(&good).unwrap()),
            "2026-12-02 16:13:14 UTC"
        );
    }
}
