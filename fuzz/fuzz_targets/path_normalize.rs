//! Fuzzes request-path normalization (a listener's `normalize_path`, `merge_slashes` and
//! `escaped_slashes`), which authorization, routing and the upstream all trust to see one path:
//! any path a client can send, under every combination of the three.
//!
//! Checks that nothing panics, and that what comes out is normal by the rules' own terms: done
//! once, doing it again changes nothing; no `.` or `..` segment is left when dots are resolved;
//! no `//` when slashes are merged; every escape left is upper-case and of a character that
//! must stay escaped; a refused path really holds what it was refused for; and a path that was
//! a valid URI path still is. A path returned unchanged is held to the same terms, so a fast
//! path that let a suspect path through unread would be caught.
//!
//! Run with `cargo +nightly fuzz run path_normalize` in `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_config::EscapedSlashes;
use strait_proxy::route::normalize::{normalize, PathRefusal, PathRules};

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let rules = PathRules {
        normalize: flags & 1 != 0,
        merge_slashes: flags & 2 != 0,
        escaped_slashes: match (flags >> 2) % 3 {
            0 => EscapedSlashes::Reject,
            1 => EscapedSlashes::Keep,
            _ => EscapedSlashes::Decode,
        },
    };
    let text = String::from_utf8_lossy(rest);
    // Paths not starting with `/` (`*`, or whatever a client wrote) are left as they are.
    let path = if flags & 0x80 != 0 {
        format!("/{text}")
    } else {
        text.into_owned()
    };
    let result = normalize(&path, rules);
    if !path.starts_with('/') {
        assert_eq!(result, Ok(None), "{path:?} does not start with /");
        return;
    }
    let normal = match result {
        Ok(None) => path.clone(),
        Ok(Some(changed)) => {
            assert_ne!(changed, path, "Some(unchanged)");
            changed
        }
        Err(PathRefusal::MalformedEscape) => {
            assert!(rules.any(), "refused with no rule on: {path:?}");
            assert!(
                malformed_escape(path.as_bytes()),
                "no malformed escape in {path:?}"
            );
            return;
        }
        Err(PathRefusal::EscapedSlash) => {
            assert_eq!(rules.escaped_slashes, EscapedSlashes::Reject, "{path:?}");
            let upper = path.to_ascii_uppercase();
            assert!(
                upper.contains("%2F") || upper.contains("%5C") || path.contains('\\'),
                "{path:?}"
            );
            return;
        }
        Err(PathRefusal::Unbuildable) => panic!("unbuildable: {path:?} under {rules:?}"),
    };
    assert!(normal.starts_with('/'), "{path:?} -> {normal:?}");
    assert_eq!(
        normalize(&normal, rules),
        Ok(None),
        "{path:?} -> {normal:?} is not normal under {rules:?}"
    );
    if rules.normalize {
        for segment in normal.split('/') {
            assert!(segment != "." && segment != "..", "{path:?} -> {normal:?}");
        }
        let bytes = normal.as_bytes();
        for (i, _) in normal.match_indices('%') {
            let escape = bytes.get(i + 1..i + 3).unwrap_or_default();
            assert!(
                escape.len() == 2 && escape.iter().all(|b| b"0123456789ABCDEF".contains(b)),
                "{path:?} -> {normal:?}: escape at {i}"
            );
            let c =
                u8::from_str_radix(std::str::from_utf8(escape).unwrap_or("00"), 16).unwrap_or(0);
            assert!(
                !(c.is_ascii_alphanumeric() || b"-._~".contains(&c)),
                "{path:?} -> {normal:?}: unreserved {c:#x} left escaped"
            );
        }
    }
    if rules.merge_slashes {
        assert!(!normal.contains("//"), "{path:?} -> {normal:?}");
    }
    if path.parse::<http::uri::PathAndQuery>().is_ok() && !path.contains(['?', '#']) {
        assert!(
            normal.parse::<http::uri::PathAndQuery>().is_ok(),
            "{path:?} -> {normal:?} is no longer a URI path"
        );
    }
});

/// A `%` not followed by two hex digits.
fn malformed_escape(path: &[u8]) -> bool {
    path.iter().enumerate().any(|(i, &b)| {
        b == b'%'
            && !path
                .get(i + 1..i + 3)
                .is_some_and(|h| h.len() == 2 && h.iter().all(u8::is_ascii_hexdigit))
    })
}
