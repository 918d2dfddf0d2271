//! Deterministic claim names from conversation ids.
//!
//! A claim name is `<prefix>-<readable>-<hash>`: the prefix from the options, a readable,
//! sanitized slice of the conversation id, and the first 16 hex digits (64 bits) of the
//! SHA-256 of the full id. The same conversation always maps to the same name; two
//! conversations collide only if their 64-bit hashes do (about one in 10^9 for 190,000
//! live conversations in one namespace).

use sha2::{Digest, Sha256};

/// Longest valid name (DNS-1123 label, which also keeps the cold Sandbox, its pod and its
/// Service names valid).
pub const MAX_NAME_LEN: usize = 63;
/// Hex digits of the hash in a claim name.
const NAME_HASH_LEN: usize = 16;
/// Hex digits of the hash in the conversation-hash label (label values are ≤ 63 chars).
const LABEL_HASH_LEN: usize = 40;

/// Errors of this module.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The prefix is not a short DNS-1123 label starting with a letter.
    #[error(
        "invalid claim name prefix {prefix:?}: want 1-20 of [a-z0-9-], starting with a letter, not ending with '-'"
    )]
    InvalidPrefix {
        /// The rejected prefix.
        prefix: String,
    },
}

fn sha256_hex(conversation_id: &str) -> String {
    hex::encode(Sha256::digest(conversation_id.as_bytes()))
}

/// Hash of a conversation id, as stored in the [`crate::labels::CONVERSATION_HASH`] label.
pub fn conversation_hash(conversation_id: &str) -> String {
    let mut h = sha256_hex(conversation_id);
    h.truncate(LABEL_HASH_LEN);
    h
}

/// Checks a claim name prefix: 1–20 characters of `[a-z0-9-]`, first a letter, last not `-`.
///
/// # Errors
/// [`Error::InvalidPrefix`] when it is not.
pub fn validate_prefix(prefix: &str) -> Result<(), Error> {
    let ok = (1..=20).contains(&prefix.len())
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && !prefix.ends_with('-')
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if ok {
        Ok(())
    } else {
        Err(Error::InvalidPrefix {
            prefix: prefix.to_owned(),
        })
    }
}

/// The claim name for a conversation.
///
/// Any string is accepted as a conversation id (UUIDs, upper case, underscores, very long,
/// unicode, empty). The result is a DNS-1123 label of at most 63 characters.
///
/// # Errors
/// [`Error::InvalidPrefix`] when `prefix` fails [`validate_prefix`].
pub fn claim_name(prefix: &str, conversation_id: &str) -> Result<String, Error> {
    validate_prefix(prefix)?;
    let hash = &sha256_hex(conversation_id)[..NAME_HASH_LEN];
    // Room for the readable part: total minus prefix, hash and two dashes.
    let room = MAX_NAME_LEN - prefix.len() - NAME_HASH_LEN - 2;
    let mut readable = String::with_capacity(room);
    for c in conversation_id.chars() {
        if readable.len() >= room {
            break;
        }
        let c = c.to_ascii_lowercase();
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            readable.push(c);
        } else if !readable.is_empty() && !readable.ends_with('-') {
            // Every run of other characters (including non-ASCII) becomes one dash.
            readable.push('-');
        }
    }
    let readable = readable.trim_end_matches('-');
    Ok(if readable.is_empty() {
        format!("{prefix}-{hash}")
    } else {
        format!("{prefix}-{readable}-{hash}")
    })
}

/// Whether `name` is a DNS-1123 label (what Kubernetes requires of these names).
pub fn is_dns1123_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_uuid_keeps_its_readable_form() {
        let n = claim_name("conv", "3F2504E0-4F89-11D3-9A0C-0305E82C3301").unwrap();
        assert!(
            n.starts_with("conv-3f2504e0-4f89-11d3-9a0c-0305e82c3301-"),
            "{n}"
        );
        assert!(is_dns1123_label(&n));
    }

    #[test]
    fn ids_that_differ_only_in_case_or_punctuation_get_different_names() {
        let a = claim_name("conv", "Chat_1").unwrap();
        let b = claim_name("conv", "chat-1").unwrap();
        let c = claim_name("conv", "chat 1").unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert!(a.starts_with("conv-chat-1-"));
    }

    #[test]
    fn empty_and_all_unicode_ids_get_a_hash_only_name() {
        let n = claim_name("conv", "").unwrap();
        assert_eq!(n.len(), 4 + 1 + 16);
        let u = claim_name("conv", "会話🙂").unwrap();
        assert_eq!(u.len(), 4 + 1 + 16);
        assert_ne!(n, u);
    }

    #[test]
    fn a_500_char_id_is_truncated_to_63() {
        let id = "x".repeat(500);
        let n = claim_name("conv", &id).unwrap();
        assert_eq!(n.len(), 63);
        assert!(is_dns1123_label(&n));
    }

    #[test]
    fn bad_prefixes_are_rejected() {
        for p in ["", "1abc", "Abc", "a_b", "abc-", "abcdefghijklmnopqrstu"] {
            assert!(claim_name(p, "x").is_err(), "{p:?}");
        }
    }

    #[test]
    fn the_hash_label_is_a_valid_label_value() {
        let h = conversation_hash("anything");
        assert_eq!(h.len(), 40);
        assert!(h.chars().all(|c| c.is_ascii_hexdigit()));
    }

    proptest! {
        #[test]
        fn every_id_maps_to_a_valid_stable_name(id in any::<String>(), prefix in "[a-z][a-z0-9-]{0,18}[a-z0-9]") {
            let n = claim_name(&prefix, &id).unwrap();
            prop_assert!(is_dns1123_label(&n), "{}", n);
            let want = format!("{prefix}-");
            prop_assert!(n.starts_with(&want));
            prop_assert_eq!(n.clone(), claim_name(&prefix, &id).unwrap());
        }

        #[test]
        fn long_and_odd_ids_stay_valid(id in "[A-Za-z0-9_ .:/\\-é日]{0,600}") {
            let n = claim_name("conv", &id).unwrap();
            prop_assert!(is_dns1123_label(&n), "{}", n);
        }

        #[test]
        fn distinct_ids_get_distinct_names(a in any::<String>(), b in any::<String>()) {
            prop_assume!(a != b);
            prop_assert_ne!(claim_name("conv", &a).unwrap(), claim_name("conv", &b).unwrap());
        }
    }
}
