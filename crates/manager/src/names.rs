//! Instance names and ids. Names become directory-free labels only (ids name
//! directories), but we still refuse anything that could be read as a path.

/// Longest instance, snapshot or image name.
pub const MAX_NAME_LEN: usize = 63;

/// `[a-z0-9][a-z0-9_.-]{0,62}`
pub fn validate_name(name: &str) -> Result<(), String> {
    let bytes = name.as_bytes();
    let ok_first = bytes
        .first()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    let ok_rest = bytes[1.min(bytes.len())..]
        .iter()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'_' | b'.' | b'-'));
    if ok_first && ok_rest && bytes.len() <= MAX_NAME_LEN {
        Ok(())
    } else {
        // Quote a bounded prefix: the name may be a megabyte of garbage.
        let shown: String = name.chars().take(MAX_NAME_LEN + 1).collect();
        let more = if shown.len() < name.len() { "…" } else { "" };
        Err(format!(
            "invalid name {shown:?}{more}: use 1-63 characters from a-z 0-9 _ . -, starting with a letter or digit"
        ))
    }
}

/// A short random id (12 hex digits): unique enough per host, and short so
/// socket paths under the instance directory stay within sun_path.
pub fn new_id() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..12].to_string()
}

pub fn looks_like_id(s: &str) -> bool {
    s.len() == 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_accepted() {
        for n in ["a", "web-1", "x.y_z", "0abc", &"a".repeat(63)] {
            assert!(validate_name(n).is_ok(), "{n}");
        }
    }

    #[test]
    fn path_like_and_malformed_names_are_refused() {
        for n in [
            "",
            "..",
            "../x",
            "a/b",
            "-a",
            ".a",
            "A",
            "a b",
            &"a".repeat(64),
            "é",
        ] {
            assert!(validate_name(n).is_err(), "{n}");
        }
    }

    #[test]
    fn the_error_for_a_huge_name_quotes_only_its_start() {
        let err = validate_name(&"A".repeat(1 << 20)).unwrap_err();
        assert!(err.len() < 300, "{}", err.len());
    }

    #[test]
    fn ids_are_twelve_hex_digits_and_differ() {
        let (a, b) = (new_id(), new_id());
        assert!(looks_like_id(&a));
        assert_ne!(a, b);
    }
}
