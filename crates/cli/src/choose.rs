//! Which content `get NAME` fetches when the index lists several under one name: the index's
//! choice (the content most holders have), or the one `--id PREFIX` names. Plain data: the
//! candidates come from a search for the name.

use shoal_proto::FileId;
use shoal_proto::message::SearchHit;

/// The shortest id prefix accepted: the length the output prints ([`FileId::short`]).
pub(crate) const MIN_PREFIX: usize = 12;

/// One content listed under a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Candidate {
    pub(crate) id: FileId,
    pub(crate) holders: u32,
    pub(crate) downloading: u32,
}

/// Why no single content could be chosen.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ChooseError {
    #[error(
        "--id {prefix}: an id prefix has at least {MIN_PREFIX} hex digits (as `search` prints them)"
    )]
    TooShort { prefix: String },
    #[error("--id {prefix}: not hex digits")]
    NotHex { prefix: String },
    #[error(
        "no content of {name} has an id starting {prefix}; the index lists {}",
        list(candidates)
    )]
    NoMatch {
        name: String,
        prefix: String,
        candidates: Vec<Candidate>,
    },
    #[error(
        "--id {prefix} is ambiguous for {name}: it starts {}; give more digits",
        list(candidates)
    )]
    Ambiguous {
        name: String,
        prefix: String,
        candidates: Vec<Candidate>,
    },
}

fn list(candidates: &[Candidate]) -> String {
    candidates
        .iter()
        .map(|c| format!("{} ({} holders)", c.id.short(), c.holders))
        .collect::<Vec<_>>()
        .join(", ")
}

/// The contents listed exactly under `name` among `hits`, most holders first (ties: smallest
/// id), which is the order the index prefers them in.
pub(crate) fn candidates(name: &str, hits: &[SearchHit]) -> Vec<Candidate> {
    let mut found: Vec<Candidate> = hits
        .iter()
        .filter(|h| h.file.name == name)
        .map(|h| Candidate {
            id: h.file.id,
            holders: h.holders,
            downloading: h.downloading,
        })
        .collect();
    found.sort_by(|a, b| b.holders.cmp(&a.holders).then(a.id.0.cmp(&b.id.0)));
    found.dedup_by_key(|c| c.id);
    found
}

/// The one candidate whose id starts with `prefix` (hex, any case).
pub(crate) fn by_prefix(
    name: &str,
    prefix: &str,
    candidates: &[Candidate],
) -> Result<FileId, ChooseError> {
    if !prefix.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(ChooseError::NotHex {
            prefix: prefix.into(),
        });
    }
    if prefix.len() < MIN_PREFIX {
        return Err(ChooseError::TooShort {
            prefix: prefix.into(),
        });
    }
    let wanted = prefix.to_ascii_lowercase();
    let matching: Vec<Candidate> = candidates
        .iter()
        .filter(|c| c.id.to_hex().starts_with(&wanted))
        .cloned()
        .collect();
    match matching.as_slice() {
        [one] => Ok(one.id),
        [] => Err(ChooseError::NoMatch {
            name: name.into(),
            prefix: prefix.into(),
            candidates: candidates.to_vec(),
        }),
        _ => Err(ChooseError::Ambiguous {
            name: name.into(),
            prefix: prefix.into(),
            candidates: matching,
        }),
    }
}

/// What `get` says when it took `taken` of several contents under `name`.
pub(crate) fn took_one_of_several(
    name: &str,
    taken: &FileId,
    candidates: &[Candidate],
) -> Option<String> {
    let others: Vec<&Candidate> = candidates.iter().filter(|c| c.id != *taken).collect();
    if others.is_empty() {
        return None;
    }
    let listed = others
        .iter()
        .map(|c| format!("{} ({} holders)", c.id.short(), c.holders))
        .collect::<Vec<_>>()
        .join(", ");
    Some(format!(
        "{name}: took {} (the content most holders have); {} other content{} under this name: \
         {listed}; choose one with --id PREFIX",
        taken.short(),
        others.len(),
        if others.len() == 1 { "" } else { "s" }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(hex_start: &str) -> FileId {
        let hex = format!("{hex_start:0<64}");
        hex.parse().unwrap()
    }

    fn c(hex: &str, holders: u32) -> Candidate {
        Candidate {
            id: id(hex),
            holders,
            downloading: 0,
        }
    }

    #[test]
    fn an_id_prefix_selects_one_content_and_an_ambiguous_one_lists_the_candidates() {
        let all = [
            c("aaaaaaaaaaaa11", 3),
            c("aaaaaaaaaaaa22", 1),
            c("bbbbbbbbbbbb", 2),
        ];
        assert_eq!(by_prefix("x", "BBBBBBBBBBBB", &all), Ok(id("bbbbbbbbbbbb")));
        assert_eq!(
            by_prefix("x", "aaaaaaaaaaaa2", &all),
            Ok(id("aaaaaaaaaaaa22"))
        );
        let Err(ambiguous) = by_prefix("x", "aaaaaaaaaaaa", &all) else {
            panic!("two ids start aaaaaaaaaaaa");
        };
        let text = ambiguous.to_string();
        assert!(
            text.contains("ambiguous") && text.contains("aaaaaaaaaaaa (3 holders)"),
            "{text}"
        );
        assert!(
            !text.contains("bbbb"),
            "only the matching candidates: {text}"
        );
        assert!(matches!(
            by_prefix("x", "aaaa", &all),
            Err(ChooseError::TooShort { .. })
        ));
        assert!(matches!(
            by_prefix("x", "zzzzzzzzzzzz", &all),
            Err(ChooseError::NotHex { .. })
        ));
        let none = by_prefix("x", "cccccccccccc", &all)
            .unwrap_err()
            .to_string();
        assert!(none.contains("bbbbbbbbbbbb (2 holders)"), "{none}");
    }

    #[test]
    fn several_contents_are_ordered_as_the_index_prefers_them_and_reported() {
        let file = |hex: &str, holders| SearchHit {
            file: shoal_proto::FileMeta {
                name: "song.ogg".into(),
                size: 1,
                chunk_size: 1024,
                id: id(hex),
            },
            holders,
            downloading: 0,
            nodes: Vec::new(),
        };
        let mut other = file("dd", 5);
        other.file.name = "song.ogg.bak".into();
        let hits = [file("cc", 1), file("bb", 2), file("aa", 2), other];
        let found = candidates("song.ogg", &hits);
        assert_eq!(
            found.iter().map(|c| c.holders).collect::<Vec<_>>(),
            [2, 2, 1]
        );
        assert_eq!(found[0].id, id("aa"), "ties: the smallest id");
        let note = took_one_of_several("song.ogg", &id("aa"), &found).unwrap();
        assert!(
            note.contains("took aa0000000000") && note.contains("2 other contents"),
            "{note}"
        );
        assert_eq!(
            took_one_of_several("song.ogg", &id("aa"), &found[..1]),
            None
        );
    }
}
