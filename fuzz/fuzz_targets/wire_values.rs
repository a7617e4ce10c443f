//! The value parsers every name, id and address from the wire or the command line goes
//! through: `validate_name`, `FileKey::parse`, `FileId::from_str`, `PeerAddr::new`. Oracle:
//! an accepted name is exactly one normal path component (it cannot leave a folder).
#![no_main]

use std::path::{Component, Path};

use libfuzzer_sys::fuzz_target;
use shoal_proto::{FileId, FileKey, MAX_NAME_LEN, PeerAddr, validate_name};

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if validate_name(s).is_ok() {
        assert!(!s.is_empty() && s.len() <= MAX_NAME_LEN);
        let parts: Vec<_> = Path::new(s).components().collect();
        assert_eq!(parts.len(), 1, "{s:?} is not a single path component");
        assert!(
            matches!(parts[0], Component::Normal(n) if n == s),
            "{s:?} is not a plain name"
        );
        assert!(!s.contains('\0') && !s.contains('/') && !s.contains('\\'));
    }
    match FileKey::parse(s) {
        Ok(key) => {
            key.validate().unwrap();
            assert_eq!(
                FileKey::parse(&key.to_string()).unwrap(),
                key,
                "display/parse"
            );
            if let FileKey::Id(id) = key {
                assert!(id.to_hex().eq_ignore_ascii_case(s));
            }
        }
        Err(_) => assert!(validate_name(s).is_err()),
    }
    if let Ok(id) = s.parse::<FileId>() {
        assert_eq!(id.to_hex().parse::<FileId>().unwrap(), id);
    }
    if let Ok(addr) = PeerAddr::new(s) {
        assert_eq!(addr.as_str(), s);
        assert!(s.len() <= 255 && !s.chars().any(|c| c.is_whitespace() || c.is_control()));
        let _ = addr.host();
        assert_eq!(s.parse::<PeerAddr>().unwrap(), addr);
    }
});
