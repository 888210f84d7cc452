//! Request paths made normal before anything reads them (a listener's `normalize_path`,
//! `merge_slashes` and `escaped_slashes`): authorization, routing, rewrites and the upstream then
//! all see one path. Without it a rule on `/admin` is walked around by `/public/../admin`,
//! `/%61dmin` or `//admin`, which the upstream resolves to `/admin` after the proxy allowed them.
//!
//! The steps, in order (Envoy's `normalize_path` and `merge_slashes` do the same):
//! 1. percent-escapes (RFC 3986 6.2.2): an unreserved character's is decoded (`%2e` is `.`),
//!    the others keep their escape with upper-case hex digits (`%2f` is `%2F`), and a malformed
//!    one (`%zz`, `%4`) refuses the request. Escaped slashes get what `escaped_slashes` says,
//!    and so does a bare `\`: no URI holds one (RFC 3986), and Windows servers take it for
//!    `/`, as they do `%5C`.
//! 2. dot segments (RFC 3986 5.2.4): `.` goes, `..` takes the segment before it with it, and
//!    none climbs above the root.
//! 3. runs of slashes become one.

use strait_config::EscapedSlashes;

/// What a listener does to request paths.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PathRules {
    /// Steps 1 and 2 above.
    pub normalize: bool,
    /// Step 3.
    pub merge_slashes: bool,
    /// `%2F`, `%5C` and `\`.
    pub escaped_slashes: EscapedSlashes,
}

impl PathRules {
    /// Paths taken as they come.
    pub const NONE: PathRules = PathRules {
        normalize: false,
        merge_slashes: false,
        escaped_slashes: EscapedSlashes::Keep,
    };

    /// Whether any path could change or be refused.
    pub fn any(&self) -> bool {
        *self != Self::NONE
    }
}

/// Why a path was refused (the answer is 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathRefusal {
    /// `%` not followed by two hex digits.
    MalformedEscape,
    /// `%2F`, `%5C` or `\` with `escaped_slashes: reject`.
    EscapedSlash,
    /// Normal, the path no longer made a URI (no byte it gains can do that: kept for safety).
    Unbuildable,
}

impl PathRefusal {
    /// The answer's detail.
    pub fn detail(self) -> &'static str {
        match self {
            PathRefusal::MalformedEscape => "malformed percent-escape in the path",
            PathRefusal::EscapedSlash => "escaped slash (%2F or %5C) or backslash in the path",
            PathRefusal::Unbuildable => "path not valid once normalized",
        }
    }
}

/// `path` made normal by `rules`: `Ok(None)` when it already is (the usual case, found in one
/// pass over its bytes without building anything), `Ok(Some(new))` when it changed. Only paths
/// starting with `/` are touched (not `*`).
#[inline]
pub fn normalize(path: &str, rules: PathRules) -> Result<Option<String>, PathRefusal> {
    let bytes = path.as_bytes();
    if bytes.first() != Some(&b'/') || !suspect(bytes) {
        return Ok(None);
    }
    rebuild(path, rules)
}

/// [`normalize`] of a path that may change.
#[cold]
fn rebuild(path: &str, rules: PathRules) -> Result<Option<String>, PathRefusal> {
    let bytes = path.as_bytes();
    if !rules.any() {
        return Ok(None);
    }
    let decoded = if rules.normalize || rules.escaped_slashes != EscapedSlashes::Keep {
        escapes(bytes, rules)?
    } else {
        bytes.to_vec()
    };
    let out = segments(&decoded, rules.normalize, rules.merge_slashes);
    // Every byte pushed is ASCII or came from `path`'s valid UTF-8 unchanged, so this holds; a
    // failure would leave the path as it came.
    let Ok(out) = String::from_utf8(out) else {
        return Ok(None);
    };
    Ok((out != path).then_some(out))
}

/// Whether anything in `bytes` may change: an escape, a backslash, a slash before another or
/// before a dot. (`/.well-known` is a suspect that does not change.)
///
/// Eight bytes at a time, each against the eight after it: a byte at a time cost ~16
/// instructions a byte (callgrind, a 30-byte path: 468 a request), this ~3.
fn suspect(bytes: &[u8]) -> bool {
    let mut at = 0;
    while let (Some(here), Some(next)) = (bytes.get(at..at + 8), bytes.get(at + 1..at + 9)) {
        let (here, next) = (word(here), word(next));
        let slash_then = lanes_equal(next, b'/') | lanes_equal(next, b'.');
        let odd = lanes_equal(here, b'%') | lanes_equal(here, b'\\');
        if odd | (lanes_equal(here, b'/') & slash_then) != 0 {
            return true;
        }
        at += 8;
    }
    // The rest: the pair across the seam was in the last word's last lane.
    let mut after_slash = false;
    for &b in bytes.get(at..).unwrap_or_default() {
        if b == b'%' || b == b'\\' || (after_slash && (b == b'/' || b == b'.')) {
            return true;
        }
        after_slash = b == b'/';
    }
    false
}

/// Eight bytes as one word, the first in the low lane.
fn word(bytes: &[u8]) -> u64 {
    u64::from_le_bytes(bytes.try_into().unwrap_or([0; 8]))
}

/// The high bit of each lane of `w` that holds `c`, and no other bit (exact: no borrow
/// crosses lanes).
fn lanes_equal(w: u64, c: u8) -> u64 {
    const LOW7: u64 = 0x7f7f_7f7f_7f7f_7f7f;
    let y = w ^ (0x0101_0101_0101_0101 * u64::from(c));
    !(((y & LOW7) + LOW7) | y) & !LOW7
}

/// Step 1: escapes decoded, kept with upper-case hex digits, or refused.
fn escapes(bytes: &[u8], rules: PathRules) -> Result<Vec<u8>, PathRefusal> {
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        if b == b'\\' {
            i += 1;
            out.push(if slash_decoded(rules)? { b'/' } else { b });
            continue;
        }
        if b != b'%' {
            out.push(b);
            i += 1;
            continue;
        }
        let (Some(hi), Some(lo)) = (
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) else {
            return Err(PathRefusal::MalformedEscape);
        };
        let c = hi << 4 | lo;
        i += 3;
        if c == b'/' || c == b'\\' {
            if slash_decoded(rules)? {
                out.push(b'/');
                continue;
            }
        } else if rules.normalize && unreserved(c) {
            out.push(c);
            continue;
        }
        if rules.normalize {
            out.extend_from_slice(&[b'%', HEX[usize::from(hi)], HEX[usize::from(lo)]]);
        } else {
            out.extend_from_slice(&bytes[i - 3..i]);
        }
    }
    Ok(out)
}

/// What `escaped_slashes` makes of a `%2F`, `%5C` or bare `\\`: refused, `/` (true), or kept as
/// it came (false).
fn slash_decoded(rules: PathRules) -> Result<bool, PathRefusal> {
    match rules.escaped_slashes {
        EscapedSlashes::Reject => Err(PathRefusal::EscapedSlash),
        EscapedSlashes::Decode => Ok(true),
        EscapedSlashes::Keep => Ok(false),
    }
}

const HEX: &[u8; 16] = b"0123456789ABCDEF";

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// RFC 3986 2.3: ALPHA / DIGIT / "-" / "." / "_" / "~".
fn unreserved(c: u8) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_' | b'~')
}

/// Steps 2 and 3 on a path starting with `/`: its segments, with dot segments resolved
/// (`dots`) and empty ones dropped (`merge`). A path whose last segment was `.`, `..` or empty
/// keeps its trailing slash.
fn segments(path: &[u8], dots: bool, merge: bool) -> Vec<u8> {
    let mut kept: Vec<&[u8]> = Vec::new();
    let mut trailing_slash = false;
    // After the leading `/`: `/a//b/` splits into `a`, ``, `b`, ``.
    for segment in path.get(1..).unwrap_or_default().split(|&b| b == b'/') {
        trailing_slash = false;
        match segment {
            b"." if dots => trailing_slash = true,
            b".." if dots => {
                kept.pop();
                trailing_slash = true;
            }
            b"" if merge => trailing_slash = true,
            _ => kept.push(segment),
        }
    }
    let mut out = Vec::with_capacity(path.len());
    for segment in &kept {
        out.push(b'/');
        out.extend_from_slice(segment);
    }
    if out.is_empty() || trailing_slash {
        out.push(b'/');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL: PathRules = PathRules {
        normalize: true,
        merge_slashes: true,
        escaped_slashes: EscapedSlashes::Reject,
    };

    fn norm(path: &str, rules: PathRules) -> Result<String, PathRefusal> {
        normalize(path, rules).map(|p| p.unwrap_or_else(|| path.to_owned()))
    }

    #[test]
    fn normal_paths_are_left_without_building_anything() {
        for p in [
            "/",
            "/a",
            "/a/b/",
            "/a.b/c",
            "/.well-known/x",
            "/a/.b",
            "*",
            "/~u/a-b_c",
        ] {
            assert_eq!(normalize(p, ALL), Ok(None), "{p}");
        }
    }

    /// `suspect` a byte at a time: the oracle for the word-wise one.
    fn suspect_bytewise(bytes: &[u8]) -> bool {
        bytes
            .windows(2)
            .any(|w| w[0] == b'/' && (w[1] == b'/' || w[1] == b'.'))
            || bytes.contains(&b'%')
            || bytes.contains(&b'\\')
    }

    #[test]
    fn suspects_are_found_in_every_lane_and_across_words() {
        let plain = "/api/v2/products/48213/reviews-and-more/x";
        assert!(!suspect(plain.as_bytes()));
        for at in 0..=plain.len() {
            for insert in ["%", "\\", "/", ".", "a", "/.", "./"] {
                let mut p = plain.to_owned();
                p.insert_str(at, insert);
                assert_eq!(suspect(p.as_bytes()), suspect_bytewise(p.as_bytes()), "{p}");
            }
        }
        assert!(suspect(b"/abcdefg/."));
        assert!(suspect(b"/abcdefghijklmno//"));
        assert!(!suspect(b"/abcdefg/h"));
    }

    #[test]
    fn the_walks_around_a_rule_on_admin_all_end_at_admin() {
        for p in [
            "/public/../admin",
            "/public/%2e%2e/admin",
            "/public/%2E%2E/admin",
            "/public/./../admin",
            "//admin",
            "/./admin",
            "/x/../admin",
            "/%61dmin",
            "/adm%69n",
            "/../admin",
            "/../../admin",
            "///admin",
        ] {
            assert_eq!(norm(p, ALL).as_deref(), Ok("/admin"), "{p}");
        }
    }

    #[test]
    fn dot_segments_follow_rfc_3986() {
        // RFC 3986 5.2.4's examples, and the trailing slash a dot segment leaves.
        assert_eq!(norm("/a/b/c/./../../g", ALL).as_deref(), Ok("/a/g"));
        assert_eq!(norm("/a/b/.", ALL).as_deref(), Ok("/a/b/"));
        assert_eq!(norm("/a/b/..", ALL).as_deref(), Ok("/a/"));
        assert_eq!(norm("/..", ALL).as_deref(), Ok("/"));
        assert_eq!(norm("/a/..b/.c", ALL).as_deref(), Ok("/a/..b/.c"));
        assert_eq!(norm("/a/...", ALL).as_deref(), Ok("/a/..."));
    }

    #[test]
    fn escapes_of_reserved_characters_stay_with_upper_case_hex() {
        assert_eq!(
            norm("/a%20b%3f%c3%a9", ALL).as_deref(),
            Ok("/a%20b%3F%C3%A9")
        );
        assert_eq!(norm("/%7e%2d%5f%41", ALL).as_deref(), Ok("/~-_A"));
        // An escaped `%` stays one: decoding it would make a new escape.
        assert_eq!(norm("/%2561", ALL).as_deref(), Ok("/%2561"));
    }

    #[test]
    fn malformed_escapes_are_refused() {
        for p in ["/%", "/%4", "/%zz", "/a%g1", "/%%41"] {
            assert_eq!(norm(p, ALL), Err(PathRefusal::MalformedEscape), "{p}");
        }
    }

    #[test]
    fn escaped_slashes_are_refused_kept_or_decoded() {
        // A bare `\\` too: Windows servers take it for `/`, as they take `%5C`.
        for p in [
            "/admin%2fx",
            "/a/..%2Fadmin",
            "/a%5cb",
            "/a%5C",
            "/a\\b",
            "/public\\..\\admin",
        ] {
            assert_eq!(norm(p, ALL), Err(PathRefusal::EscapedSlash), "{p}");
        }
        let keep = PathRules {
            escaped_slashes: EscapedSlashes::Keep,
            ..ALL
        };
        assert_eq!(norm("/admin%2fx", keep).as_deref(), Ok("/admin%2Fx"));
        assert_eq!(norm("/a/..%2Fadmin", keep).as_deref(), Ok("/a/..%2Fadmin"));
        assert_eq!(norm("/a\\b", keep).as_deref(), Ok("/a\\b"));
        let decode = PathRules {
            escaped_slashes: EscapedSlashes::Decode,
            ..ALL
        };
        assert_eq!(norm("/admin%2fx", decode).as_deref(), Ok("/admin/x"));
        assert_eq!(norm("/public/..%2Fadmin", decode).as_deref(), Ok("/admin"));
        assert_eq!(norm("/a%5cb", decode).as_deref(), Ok("/a/b"));
        assert_eq!(norm("/a%2F%2Fb", decode).as_deref(), Ok("/a/b"));
        assert_eq!(norm("/public\\..\\admin", decode).as_deref(), Ok("/admin"));
    }

    #[test]
    fn each_step_can_be_turned_off() {
        let no_merge = PathRules {
            merge_slashes: false,
            ..ALL
        };
        assert_eq!(norm("//a//b/./c", no_merge).as_deref(), Ok("//a//b/c"));
        assert_eq!(norm("/a//../b", no_merge).as_deref(), Ok("/a/b"));
        let merge_only = PathRules {
            normalize: false,
            merge_slashes: true,
            escaped_slashes: EscapedSlashes::Keep,
        };
        assert_eq!(norm("//a/../b%2f", merge_only).as_deref(), Ok("/a/../b%2f"));
        assert_eq!(normalize("//a/../%zz", PathRules::NONE), Ok(None));
        let reject_only = PathRules {
            escaped_slashes: EscapedSlashes::Reject,
            ..PathRules::NONE
        };
        assert_eq!(
            norm("/a/../%2f", reject_only),
            Err(PathRefusal::EscapedSlash)
        );
        assert_eq!(norm("/a/../%41", reject_only).as_deref(), Ok("/a/../%41"));
    }

    #[test]
    fn non_ascii_and_odd_inputs_never_panic() {
        for p in [
            "/é/../x",
            "/%",
            "/%c3",
            "/a/%2e",
            "/%2e%2e%2f",
            "",
            "/",
            "//",
            "/.",
            "/..",
        ] {
            let _ = normalize(p, ALL);
            let _ = normalize(p, PathRules::NONE);
        }
        assert_eq!(norm("/é/../x", ALL).as_deref(), Ok("/x"));
        assert_eq!(norm("//", ALL).as_deref(), Ok("/"));
    }
}
