//! HTTP/1 message heads, delimited: the first thing done with every request head `server1` reads
//! off a client connection and every response head `client1` reads off an upstream connection.
//!
//! This finds where the head ends and where each part of it is (method, target, version or
//! status; each field's name and value). It checks the parts nothing else checks in full: the
//! version, the status code and reason, and the request target (`http::Uri` skips a fragment's
//! bytes). It also checks each field's value, as `HeaderValue` does, in the same pass that
//! finds the value's line end: fields passed on as they came (most of them) are not checked
//! again, and a `HeaderValue` built from one does not fail. It does **not** check the bytes
//! of the method or of a field's name: the caller builds `http::Method` and `HeaderName` from
//! them, and those constructors check every byte anyway (a name usually by matching a known
//! one). Checking them here too was paying for it twice. `httparse` (which this replaced)
//! checks them, and then the constructors did again: ~2,100 instructions a request on h1
//! keep-alive (callgrind), ~1,100 for a five-field response head alone.
//!
//! A complete head is accepted (parsed and then built into `http` types by the caller) exactly
//! when `httparse` accepts it; the tests compare the two over mutated heads. The difference is
//! when a malformed head is noticed. `httparse` stops at the first bad byte. Here a line's name
//! is looked at once its colon has arrived, a value's bytes as they arrive, and a bad method
//! or name when the caller builds it.
//!
//! Lines end at `\n`, with or without a `\r` before it, as `httparse` allows. Searching for
//! a value's line end (its first byte below 0x20) and for the `:` after a name is done eight
//! bytes at a time with integer arithmetic: no `unsafe`, no CPU feature checks.

/// A head is parsed within its first this many bytes, so offsets fit in a `u16`. Callers cap
/// heads at [`MAX_HEAD`](crate::http::inbuf::MAX_HEAD) (64 KiB) anyway: a head not complete
/// within these bytes is reported incomplete, and the caller's size limit ends it.
pub(crate) const MAX_PARSED: usize = u16::MAX as usize;

/// Field slots a caller keeps on the stack: heads with more fields are parsed again into
/// slots on the heap. (Zeroing room for the most a head may have, 100 or 128, on every parse
/// cost ~70 instructions a head.)
pub(crate) const FEW_FIELDS: usize = 24;

/// Where one field is in its head: byte offsets of the name and of the value (without the
/// whitespace around it). Neither has been checked: see the module's description.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Field {
    name_at: u16,
    name_end: u16,
    value_at: u16,
    value_end: u16,
}

impl Field {
    pub(crate) fn name(self) -> std::ops::Range<usize> {
        self.name_at as usize..self.name_end as usize
    }

    pub(crate) fn value(self) -> std::ops::Range<usize> {
        self.value_at as usize..self.value_end as usize
    }
}

/// Why a head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// A line that is not what belongs there.
    Malformed,
    /// More fields than the caller has room for.
    TooManyFields,
}

/// A complete request head. The method is an unchecked byte range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct RequestLine {
    pub(crate) method: std::ops::Range<usize>,
    pub(crate) target: std::ops::Range<usize>,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    /// How many of the caller's field slots were filled.
    pub(crate) fields: usize,
    /// The head's length, its final empty line included.
    pub(crate) len: usize,
}

/// A complete response head.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StatusLine {
    pub(crate) code: u16,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub(crate) minor: u8,
    /// How many of the caller's field slots were filled.
    pub(crate) fields: usize,
    /// The head's length, its final empty line included.
    pub(crate) len: usize,
}

/// What a step of the parse found: `Ok(None)` means the bytes ran out before it could tell.
type Step<T> = Result<Option<T>, HeadError>;

const ONES: u64 = 0x0101_0101_0101_0101;
const HIGHS: u64 = 0x8080_8080_8080_8080;

/// The high bit set in each byte of `x` that equals `b`. Bits above the first such byte may
/// be wrong (a borrow carries into the next byte up); the lowest set bit is always right, and
/// it is the only one read.
fn bytes_equal(x: u64, b: u8) -> u64 {
    let y = x ^ (ONES * u64::from(b));
    y.wrapping_sub(ONES) & !y & HIGHS
}

/// The offset of the first `b` at or after `at`, if it has arrived.
fn find(bytes: &[u8], at: usize, b: u8) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let mut words = rest.chunks_exact(8);
    let mut word_at = at;
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let found = bytes_equal(u64::from_le_bytes(word), b);
        if found != 0 {
            return Some(word_at + found.trailing_zeros() as usize / 8);
        }
        word_at += 8;
    }
    let tail = words.remainder();
    tail.iter().position(|&c| c == b).map(|i| word_at + i)
}

/// The high bit set in each byte of `x` that a field value may not hold: below 0x20 (tab
/// included: the caller tells it apart) or 0x7f. The lowest set bit is always right (the
/// borrow trick: a borrow only carries out of a byte that is below 0x20), and it is the only
/// one read. Bytes from 0x80 up are allowed, as `HeaderValue` allows them.
fn controls(x: u64) -> u64 {
    x.wrapping_sub(ONES * 0x20) & !x & HIGHS | bytes_equal(x, 0x7f)
}

/// The offset of the first byte below 0x20 or of 0x7f at or after `at`, if one has arrived.
fn find_control(bytes: &[u8], at: usize) -> Option<usize> {
    let rest = bytes.get(at..)?;
    let mut words = rest.chunks_exact(8);
    let mut word_at = at;
    for word in &mut words {
        let Ok(word) = <[u8; 8]>::try_from(word) else {
            break;
        };
        let found = controls(u64::from_le_bytes(word));
        if found != 0 {
            return Some(word_at + found.trailing_zeros() as usize / 8);
        }
        word_at += 8;
    }
    let tail = words.remainder();
    tail.iter()
        .position(|&c| c < 0x20 || c == 0x7f)
        .map(|i| word_at + i)
}

/// The rest of a field's line from `at` (just past its colon), checked as `HeaderValue`
/// checks a value: tab and bytes from 0x20 up but 0x7f. Where the content ends and where the
/// next line starts, once its line end has arrived. One pass finds both the line's end and
/// any refused byte: searching for `\n` and then checking the value cost two, ~2 instructions
/// a byte each.
#[inline]
fn value_line(bytes: &[u8], mut at: usize) -> Step<(usize, usize)> {
    loop {
        let Some(control) = find_control(bytes, at) else {
            return Ok(None);
        };
        match bytes.get(control) {
            Some(b'\n') => return Ok(Some((control, control + 1))),
            Some(b'\r') => return Ok(after_cr(bytes, control)?.map(|next| (control, next))),
            Some(b'\t') => at = control + 1,
            _ => return Err(HeadError::Malformed),
        }
    }
}

/// Whether a request target is visible ASCII (0x21 to 0x7e), or UTF-8 with characters above it,
/// as `httparse` requires. Eight bytes at a time, without a branch per word: one byte at a time
/// cost ~9 instructions a byte (418 for a 45-byte path and query), and `http` then checks the
/// path's bytes again.
fn is_target(target: &[u8]) -> bool {
    let visible = |b: u8| b > b' ' && b != 0x7f;
    if target.len() < 4 {
        // `/` and its like: a word's set-up would cost more than the bytes.
        return target.iter().all(|&b| visible(b) && b.is_ascii())
            || target.iter().all(|&b| visible(b)) && std::str::from_utf8(target).is_ok();
    }
    // Per word: high bits where a byte is below 0x21 (the borrow trick, exact as a yes or no
    // for bytes below 0x80) or is 0x7f; and the high bits themselves (bytes from 0x80 up).
    let refused = |x: u64| x.wrapping_sub(ONES * 0x21) & !x & HIGHS | bytes_equal(x, 0x7f);
    let (mut bad, mut high) = (0, 0);
    let mut words = target.chunks_exact(8);
    for word in &mut words {
        let x = word.try_into().map_or(0, u64::from_le_bytes);
        bad |= refused(x);
        high |= x & HIGHS;
    }
    if !words.remainder().is_empty() {
        // The last eight bytes as a word (overlapping the one before), or a target of four to
        // seven bytes as its first four and last four.
        let x = match (target.last_chunk::<8>(), target.first_chunk::<4>()) {
            (Some(last), _) => u64::from_le_bytes(*last),
            (None, Some(first)) => {
                let last = target.last_chunk::<4>().unwrap_or(first);
                u64::from(u32::from_le_bytes(*first)) | u64::from(u32::from_le_bytes(*last)) << 32
            }
            (None, None) => 0,
        };
        bad |= refused(x);
        high |= x & HIGHS;
    }
    bad == 0 && (high == 0 || std::str::from_utf8(target).is_ok())
}

/// Where the content of the line ending with the `\n` at `newline` ends (before `\r\n` or `\n`).
fn content_end(bytes: &[u8], line_at: usize, newline: usize) -> usize {
    if newline > line_at && bytes.get(newline - 1) == Some(&b'\r') {
        newline - 1
    } else {
        newline
    }
}

/// The next line from `at`: where its content ends and where the next line starts, once its
/// `\n` has arrived.
fn line(bytes: &[u8], at: usize) -> Option<(usize, usize)> {
    let newline = find(bytes, at, b'\n')?;
    Some((content_end(bytes, at, newline), newline + 1))
}

/// Where the line after the `\r` at `cr` starts: a `\r` ends a line only before `\n`.
#[inline(always)]
fn after_cr(bytes: &[u8], cr: usize) -> Step<usize> {
    match bytes.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some(cr + 2)),
        Some(_) => Err(HeadError::Malformed),
    }
}

/// Skips the empty lines a peer may send before the first line (as `httparse` does).
fn skip_empty_lines(bytes: &[u8], mut at: usize) -> Step<usize> {
    loop {
        match bytes.get(at) {
            None => return Ok(None),
            Some(b'\r') => match after_cr(bytes, at)? {
                None => return Ok(None),
                Some(next) => at = next,
            },
            Some(b'\n') => at += 1,
            Some(_) => return Ok(Some(at)),
        }
    }
}

/// `HTTP/1.0` or `HTTP/1.1`: the minor version.
fn version(text: &[u8]) -> Result<u8, HeadError> {
    match text {
        b"HTTP/1.1" => Ok(1),
        b"HTTP/1.0" => Ok(0),
        _ => Err(HeadError::Malformed),
    }
}

/// The head's first line, past any empty lines before it: the bytes within [`MAX_PARSED`],
/// where the line starts, where its content ends and where the next line starts.
#[inline(always)]
fn first_line(bytes: &[u8]) -> Step<(&[u8], usize, usize, usize)> {
    let bytes = bytes.get(..MAX_PARSED).unwrap_or(bytes);
    let Some(at) = skip_empty_lines(bytes, 0)? else {
        return Ok(None);
    };
    match line(bytes, at) {
        Some((end, next)) => Ok(Some((bytes, at, end, next))),
        // No `\n` yet. A `\r` ends a line only before one (RFC 9112 2.2), so a `\r` followed by
        // anything is refused now: a client that ends its lines with `\r` alone would otherwise
        // wait for the head's timer, its line never ending.
        None => match find(bytes, at, b'\r') {
            Some(cr) => after_cr(bytes, cr).map(|_| None),
            None => Ok(None),
        },
    }
}

/// Whether the head's first line (past any empty lines) has ended within `bytes`: a head that
/// outgrows its room before it has is a request target too long (414), not too many fields
/// (431).
pub(crate) fn first_line_ended(bytes: &[u8]) -> bool {
    matches!(first_line(bytes), Ok(Some(_)))
}

/// A head's field slots: a few on the stack, and room on the heap only for a head that has
/// more fields than those.
#[derive(Debug)]
pub(crate) struct Slots {
    few: [Field; FEW_FIELDS],
    many: Vec<Field>,
}

impl Slots {
    #[inline(always)]
    pub(crate) fn new() -> Self {
        Self {
            few: [Field::default(); FEW_FIELDS],
            many: Vec::new(),
        }
    }

    /// Parses a head with `parse` (`parse_request` or `parse_response`) into the few slots,
    /// and again into `most` slots if it has more fields.
    #[inline(always)]
    pub(crate) fn parse<T>(
        &mut self,
        bytes: &[u8],
        most: usize,
        parse: fn(&[u8], &mut [Field]) -> Step<T>,
    ) -> Step<T> {
        let few = most.min(FEW_FIELDS);
        match parse(bytes, self.few.get_mut(..few).unwrap_or_default()) {
            Err(HeadError::TooManyFields) if most > FEW_FIELDS => {
                self.many.resize(most, Field::default());
                parse(bytes, &mut self.many)
            }
            parsed => parsed,
        }
    }

    /// The first `count` fields parsed.
    #[inline(always)]
    pub(crate) fn fields(&self, count: usize) -> &[Field] {
        let all = if self.many.is_empty() {
            &self.few[..]
        } else {
            &self.many[..]
        };
        all.get(..count).unwrap_or_default()
    }
}

/// Parses a request head at the start of `bytes` into `fields`.
pub(crate) fn parse_request(bytes: &[u8], fields: &mut [Field]) -> Step<RequestLine> {
    let Some((bytes, at, end, next)) = first_line(bytes)? else {
        return Ok(None);
    };
    // method SP target SP version: the version is the line's last eight bytes.
    let text = bytes.get(at..end).unwrap_or_default();
    let Some(method_len) = text.iter().position(|&b| b == b' ') else {
        return Err(HeadError::Malformed);
    };
    let target_at = at + method_len + 1;
    let Some(version_at) = end.checked_sub(8).filter(|&v| v > target_at + 1) else {
        return Err(HeadError::Malformed);
    };
    if bytes.get(version_at - 1) != Some(&b' ') {
        return Err(HeadError::Malformed);
    }
    let minor = version(bytes.get(version_at..end).unwrap_or_default())?;
    // `http::Uri` does not look at the bytes of a fragment (after `#`), so the target is
    // checked here.
    let target = bytes.get(target_at..version_at - 1).unwrap_or_default();
    if !is_target(target) {
        return Err(HeadError::Malformed);
    }
    let Some((count, len)) = parse_fields(bytes, next, fields)? else {
        return Ok(None);
    };
    Ok(Some(RequestLine {
        method: at..at + method_len,
        target: target_at..version_at - 1,
        minor,
        fields: count,
        len,
    }))
}

/// Parses a response head at the start of `bytes` into `fields`.
pub(crate) fn parse_response(bytes: &[u8], fields: &mut [Field]) -> Step<StatusLine> {
    let Some((bytes, at, end, next)) = first_line(bytes)? else {
        return Ok(None);
    };
    // version SP 3DIGIT [SP reason]
    let text = bytes.get(at..end).unwrap_or_default();
    let Some((head, reason)) = text.split_at_checked(12) else {
        return Err(HeadError::Malformed);
    };
    let minor = version(head.get(..8).unwrap_or_default())?;
    let [b' ', digits @ ..] = head.get(8..).unwrap_or_default() else {
        return Err(HeadError::Malformed);
    };
    let mut code = 0u16;
    for &d in digits {
        if !d.is_ascii_digit() {
            return Err(HeadError::Malformed);
        }
        code = code * 10 + u16::from(d - b'0');
    }
    // The reason is dropped, so nothing else would check it: tab, space, visible ASCII and
    // obs-text, as `httparse` allows.
    match reason {
        [] => {}
        [b' ', phrase @ ..]
            if phrase
                .iter()
                .all(|&b| b == b'\t' || (b >= b' ' && b != 0x7f)) => {}
        _ => return Err(HeadError::Malformed),
    }
    let Some((count, len)) = parse_fields(bytes, next, fields)? else {
        return Ok(None);
    };
    Ok(Some(StatusLine {
        code,
        minor,
        fields: count,
        len,
    }))
}

/// Delimits header fields from `at` up to and including the empty line that ends them: how
/// many there were and the offset after the head.
fn parse_fields(bytes: &[u8], mut at: usize, fields: &mut [Field]) -> Step<(usize, usize)> {
    let mut count = 0;
    loop {
        match bytes.get(at) {
            None => return Ok(None),
            Some(b'\n') => return Ok(Some((count, at + 1))),
            Some(b'\r') => return Ok(after_cr(bytes, at)?.map(|next| (count, next))),
            Some(_) => {}
        }
        // The name runs to the first colon, and the value from there to the line's end. A line
        // without a colon makes the "name" run across the line break, and building it (which
        // refuses `\r` and `\n`) refuses the head.
        let Some(colon) = find(bytes, at, b':') else {
            // No colon yet: malformed if this line is whole, else wait for more.
            return match find(bytes, at, b'\n') {
                Some(_) => Err(HeadError::Malformed),
                None => Ok(None),
            };
        };
        let Some((end, next)) = value_line(bytes, colon + 1)? else {
            return Ok(None);
        };
        // Without the whitespace around it: usually one space before, none after.
        let mut value_at = colon + 1;
        while value_at < end && matches!(bytes.get(value_at), Some(b' ' | b'\t')) {
            value_at += 1;
        }
        let mut value_end = end;
        while value_end > value_at && matches!(bytes.get(value_end - 1), Some(b' ' | b'\t')) {
            value_end -= 1;
        }
        let Some(slot) = fields.get_mut(count) else {
            return Err(HeadError::TooManyFields);
        };
        // Offsets fit: `bytes` is at most MAX_PARSED long.
        *slot = Field {
            name_at: at as u16,
            name_end: colon as u16,
            value_at: value_at as u16,
            value_end: value_end as u16,
        };
        count += 1;
        at = next;
    }
}

/// This parser against `httparse`, on the same bytes: the tests here run it over mutated heads,
/// and the fuzz target `http1_heads` over whatever the fuzzer makes. Not used when serving.
#[doc(hidden)]
pub mod differential {
    use super::{parse_request, parse_response, Field, HeadError};
    use http::header::{HeaderName, HeaderValue};
    use http::{Method, Uri};
    use std::mem::MaybeUninit;

    /// Parses `bytes` as a request head and as a response head with both parsers, and panics
    /// where they disagree (see [`agree`]).
    pub fn check(bytes: &[u8]) {
        agree(bytes, &ours_request(bytes), &reference_request(bytes));
        agree(bytes, &ours_response(bytes), &reference_response(bytes));
    }

    /// A head's outcome once its parts are built into `http` types, as the callers do.
    #[derive(Debug, PartialEq)]
    pub enum Outcome<'a> {
        Partial,
        TooMany,
        Malformed,
        Request(&'a [u8], &'a [u8], u8, Fields<'a>, usize),
        Response(u16, u8, Fields<'a>, usize),
    }

    pub type Fields<'a> = Vec<(&'a [u8], &'a [u8])>;

    const SLOTS: usize = 6;

    /// Whether the callers' constructors take every part.
    fn built<'a>(method: Option<&[u8]>, target: Option<&[u8]>, fields: &Fields<'a>) -> bool {
        method.is_none_or(|m| Method::from_bytes(m).is_ok())
            && target.is_none_or(|t| Uri::try_from(t).is_ok())
            && fields.iter().all(|(n, v)| {
                HeaderName::from_bytes(n).is_ok() && HeaderValue::from_bytes(v).is_ok()
            })
    }

    pub fn reference_request(bytes: &[u8]) -> Outcome<'_> {
        let mut slots = [const { MaybeUninit::uninit() }; SLOTS];
        let mut req = httparse::Request::new(&mut []);
        match req.parse_with_uninit_headers(bytes, &mut slots) {
            Ok(httparse::Status::Complete(len)) => {
                let method = req.method.unwrap_or_default().as_bytes();
                let target = req.path.unwrap_or_default().as_bytes();
                let fields = req
                    .headers
                    .iter()
                    .map(|h| (h.name.as_bytes(), h.value))
                    .collect();
                if !built(Some(method), Some(target), &fields) {
                    return Outcome::Malformed;
                }
                Outcome::Request(method, target, req.version.unwrap_or(9), fields, len)
            }
            Ok(httparse::Status::Partial) => Outcome::Partial,
            Err(httparse::Error::TooManyHeaders) => Outcome::TooMany,
            Err(_) => Outcome::Malformed,
        }
    }

    pub fn reference_response(bytes: &[u8]) -> Outcome<'_> {
        let mut slots = [const { MaybeUninit::uninit() }; SLOTS];
        let mut res = httparse::Response::new(&mut []);
        match httparse::ParserConfig::default()
            .parse_response_with_uninit_headers(&mut res, bytes, &mut slots)
        {
            Ok(httparse::Status::Complete(len)) => {
                let fields = res
                    .headers
                    .iter()
                    .map(|h| (h.name.as_bytes(), h.value))
                    .collect();
                if !built(None, None, &fields) {
                    return Outcome::Malformed;
                }
                Outcome::Response(
                    res.code.unwrap_or_default(),
                    res.version.unwrap_or(9),
                    fields,
                    len,
                )
            }
            Ok(httparse::Status::Partial) => Outcome::Partial,
            Err(httparse::Error::TooManyHeaders) => Outcome::TooMany,
            Err(_) => Outcome::Malformed,
        }
    }

    fn listed<'a>(bytes: &'a [u8], fields: &[Field], count: usize) -> Fields<'a> {
        fields[..count]
            .iter()
            .map(|f| (&bytes[f.name()], &bytes[f.value()]))
            .collect()
    }

    pub fn ours_request(bytes: &[u8]) -> Outcome<'_> {
        let mut fields = [Field::default(); SLOTS];
        match parse_request(bytes, &mut fields) {
            Ok(None) => Outcome::Partial,
            Err(HeadError::TooManyFields) => Outcome::TooMany,
            Err(HeadError::Malformed) => Outcome::Malformed,
            Ok(Some(l)) => {
                let list = listed(bytes, &fields, l.fields);
                let (method, target) = (&bytes[l.method], &bytes[l.target]);
                if !built(Some(method), Some(target), &list) {
                    return Outcome::Malformed;
                }
                Outcome::Request(method, target, l.minor, list, l.len)
            }
        }
    }

    pub fn ours_response(bytes: &[u8]) -> Outcome<'_> {
        let mut fields = [Field::default(); SLOTS];
        match parse_response(bytes, &mut fields) {
            Ok(None) => Outcome::Partial,
            Err(HeadError::TooManyFields) => Outcome::TooMany,
            Err(HeadError::Malformed) => Outcome::Malformed,
            Ok(Some(l)) => {
                let list = listed(bytes, &fields, l.fields);
                if !built(None, None, &list) {
                    return Outcome::Malformed;
                }
                Outcome::Response(l.code, l.minor, list, l.len)
            }
        }
    }

    /// Ours against `httparse`'s: the same head and fields whenever either accepts it. A
    /// refusal may come later here (once the line or the head is whole) and may be "too many
    /// fields" where `httparse` saw a bad byte in an earlier one.
    pub fn agree(bytes: &[u8], ours: &Outcome<'_>, theirs: &Outcome<'_>) -> bool {
        let fine = match (ours, theirs) {
            (Outcome::Partial, Outcome::Partial | Outcome::Malformed) => true,
            (Outcome::Malformed, Outcome::Malformed) => true,
            (Outcome::TooMany, Outcome::TooMany | Outcome::Malformed) => true,
            (a, b) => a == b,
        };
        assert!(
            fine,
            "{:?}: ours {ours:?}, httparse {theirs:?}",
            bytes.escape_ascii().to_string()
        );
        matches!(ours, Outcome::Request(..) | Outcome::Response(..))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::differential::*;
    use super::*;
    use http::header::HeaderValue;

    const REQUESTS: &[&[u8]] = &[
        b"GET / HTTP/1.1\r\nHost: example.com\r\nUser-Agent: curl/8.0\r\nAccept: */*\r\n\r\n",
        b"POST /upload?a=1&b=%20 HTTP/1.0\r\nContent-Length: 5\r\nX-Long-Value: abcdefghijklmnopqrstuvwxyz0123456789\r\n\r\nhello",
        b"\r\n\nOPTIONS * HTTP/1.1\nhost:x\nempty:\nspaced:  a b \t \n\n",
        b"M-SEARCH http://h/p HTTP/1.1\r\nX:\t\ttab\tin\tvalue\t\r\nY: obs\xe9text\r\n\r\n",
        b"GET /a HTTP/1.1\r\nA: 1\r\nB: 2\r\nC: 3\r\nD: 4\r\nE: 5\r\nF: 6\r\nG: 7\r\n\r\n",
    ];

    const RESPONSES: &[&[u8]] = &[
        b"HTTP/1.1 200 OK\r\nServer: nginx/1.22.1\r\nDate: Fri, 04 Dec 2026 14:07:49 GMT\r\nContent-Type: text/plain\r\nContent-Length: 20\r\nConnection: keep-alive\r\n\r\nhello",
        b"HTTP/1.0 404\r\nX: y\r\n\r\n",
        b"\r\nHTTP/1.1 101 Switching Protocols\nUpgrade: websocket\nConnection: Upgrade\n\n",
        b"HTTP/1.1 500 Internal \t Error \xff\r\nA:\r\nB: \t\r\nC: 1\r\nD: 2\r\nE: 3\r\nF: 4\r\nG: 5\r\n\r\n",
    ];

    /// Bytes that sit on the boundaries the parsers decide on.
    const INTERESTING: &[u8] = b"\r\n\t :/HT10\x00\x7f\x80\xff\"(,aZ9-!~";

    fn mutated(rng: &mut fastrand::Rng, base: &[u8]) -> Vec<u8> {
        let mut v = base.to_vec();
        for _ in 0..rng.usize(1..4) {
            let at = rng.usize(..=v.len());
            let b = if rng.bool() {
                INTERESTING[rng.usize(..INTERESTING.len())]
            } else {
                rng.u8(..)
            };
            match rng.u8(..3) {
                0 if at < v.len() => v[at] = b,
                1 => v.insert(at, b),
                _ if at < v.len() => {
                    v.remove(at);
                }
                _ => v.push(b),
            }
        }
        v
    }

    #[test]
    fn every_prefix_parses_as_httparse_parses_it() {
        for head in REQUESTS {
            for end in 0..=head.len() {
                let b = &head[..end];
                agree(b, &ours_request(b), &reference_request(b));
            }
        }
        for head in RESPONSES {
            for end in 0..=head.len() {
                let b = &head[..end];
                agree(b, &ours_response(b), &reference_response(b));
            }
        }
        // Whole, every one is accepted, but the last of each with one field too many.
        let (last, others) = REQUESTS.split_last().unwrap();
        assert!(others
            .iter()
            .all(|h| matches!(ours_request(h), Outcome::Request(..))));
        assert_eq!(ours_request(last), Outcome::TooMany);
        let (last, others) = RESPONSES.split_last().unwrap();
        assert!(others
            .iter()
            .all(|h| matches!(ours_response(h), Outcome::Response(..))));
        assert_eq!(ours_response(last), Outcome::TooMany);
    }

    #[test]
    fn mutated_heads_are_accepted_exactly_when_httparse_accepts_them() {
        let mut rng = fastrand::Rng::with_seed(0x5742_a17e);
        let (mut accepted, mut refused) = (0, 0);
        for _ in 0..20_000 {
            for (bases, request) in [(REQUESTS, true), (RESPONSES, false)] {
                let base = bases[rng.usize(..bases.len())];
                let v = mutated(&mut rng, base);
                let (ours, theirs) = if request {
                    (ours_request(&v), reference_request(&v))
                } else {
                    (ours_response(&v), reference_response(&v))
                };
                if agree(&v, &ours, &theirs) {
                    accepted += 1;
                } else if ours != Outcome::Partial {
                    refused += 1;
                }
            }
        }
        // The mutations reach both sides of the decision.
        assert!(
            accepted > 5_000 && refused > 5_000,
            "{accepted} accepted, {refused} refused"
        );
    }

    #[test]
    fn a_bare_cr_in_a_first_line_without_its_end_is_refused_at_once() {
        let mut fields = [Field::default(); 4];
        for head in [
            &b"GET / HTTP/1.1\rHost: a\r\r"[..],
            b"GET / HTTP/1.1\rX",
            b"GET /\rX",
            b"\r\n\rX",
            b"HTTP/1.1 200 OK\rX",
        ] {
            assert_eq!(parse_request(head, &mut fields), Err(HeadError::Malformed));
            assert_eq!(parse_response(head, &mut fields), Err(HeadError::Malformed));
            assert!(!first_line_ended(head));
        }
        // A `\r` that may yet be followed by its `\n` waits for it.
        for head in [&b"GET / HTTP/1.1\r"[..], b"GET / HTTP/1.1", b"\r\n\r", b""] {
            assert_eq!(parse_request(head, &mut fields), Ok(None), "{head:?}");
            assert!(!first_line_ended(head));
        }
        assert!(first_line_ended(b"\r\nGET / HTTP/1.1\r\nHost"));
        assert!(first_line_ended(b"GET /x HTTP/1.1\n"));
    }

    #[test]
    fn a_byte_is_found_at_any_position_among_any_bytes() {
        let mut rng = fastrand::Rng::with_seed(7);
        for _ in 0..100_000 {
            let mut bytes = [0u8; 19];
            rng.fill(&mut bytes);
            for b in [b'\n', b':', bytes[rng.usize(..19)]] {
                let from = rng.usize(..19);
                let expected = bytes[from..].iter().position(|&c| c == b).map(|i| from + i);
                assert_eq!(
                    find(&bytes, from, b),
                    expected,
                    "{bytes:02x?} {b:02x} from {from}"
                );
            }
        }
    }

    /// Checks `check` against `expected` on every byte value at every position of strings of
    /// each length in `lens` (around a word, its tail and a short string), and on 100,000 random
    /// strings mostly of `usual` bytes.
    fn agrees_bytewise(
        check: impl Fn(&[u8]) -> bool,
        expected: impl Fn(&[u8]) -> bool,
        lens: &[usize],
        usual: std::ops::Range<u8>,
        seed: u64,
    ) {
        for b in 0..=255u8 {
            for &len in lens {
                for at in 0..len {
                    let mut bytes = vec![b'a'; len];
                    bytes[at] = b;
                    assert_eq!(check(&bytes), expected(&bytes), "{bytes:02x?}");
                }
            }
        }
        let mut rng = fastrand::Rng::with_seed(seed);
        for _ in 0..100_000 {
            let len = rng.usize(..40);
            let bytes: Vec<u8> = (0..len)
                .map(|_| match rng.u8(..4) {
                    0 => rng.u8(..),
                    1 => INTERESTING[rng.usize(..INTERESTING.len())],
                    _ => rng.u8(usual.clone()),
                })
                .collect();
            assert_eq!(check(&bytes), expected(&bytes), "{bytes:02x?}");
        }
    }

    #[test]
    fn field_values_are_accepted_exactly_when_header_value_accepts_them() {
        // A value followed by its line end is read to that end exactly when `HeaderValue`
        // takes it; `\r` and `\n` inside it end it early or refuse it.
        let whole = |v: &[u8]| {
            let line = [v, b"\r\n"].concat();
            value_line(&line, 0) == Ok(Some((v.len(), v.len() + 2)))
        };
        agrees_bytewise(
            whole,
            |v| HeaderValue::from_bytes(v).is_ok(),
            &[1, 2, 3, 4, 5, 7, 8, 9, 12, 16, 19],
            0x20..0x7f,
            11,
        );
        // Tabs are passed over, bare `\n` ends a line too, and a line end not yet arrived
        // (or a `\r` without what follows it) waits.
        assert_eq!(value_line(b" a\tb\t\tc\n", 0), Ok(Some((7, 8))));
        assert_eq!(value_line(b"\t\t\t\t\t\t\t\t\t\r\n", 0), Ok(Some((9, 11))));
        assert_eq!(value_line(b" abc", 0), Ok(None));
        assert_eq!(value_line(b" abc\r", 0), Ok(None));
        assert_eq!(value_line(b" abc\rx\r\n", 0), Err(HeadError::Malformed));
        assert_eq!(value_line(b" a\x7fc\r\n", 0), Err(HeadError::Malformed));
        assert_eq!(value_line(b" \xe9t\xe9\r\n", 0), Ok(Some((4, 6))));
    }

    #[test]
    fn a_control_byte_is_found_at_any_position_among_any_bytes() {
        let mut rng = fastrand::Rng::with_seed(8);
        for _ in 0..100_000 {
            let mut bytes = [0u8; 19];
            for b in &mut bytes {
                // Mostly allowed bytes, so that the first control byte falls anywhere.
                *b = if rng.u8(..8) == 0 {
                    rng.u8(..)
                } else {
                    rng.u8(0x20..)
                };
            }
            let from = rng.usize(..19);
            let expected = bytes[from..]
                .iter()
                .position(|&c| c < 0x20 || c == 0x7f)
                .map(|i| from + i);
            assert_eq!(
                find_control(&bytes, from),
                expected,
                "{bytes:02x?} from {from}"
            );
        }
    }

    #[test]
    fn targets_are_accepted_exactly_when_each_byte_is_visible_or_the_target_is_utf8() {
        let lens: Vec<usize> = (1..=19).collect();
        agrees_bytewise(
            is_target,
            |t| t.iter().all(|&b| b > b' ' && b != 0x7f) && std::str::from_utf8(t).is_ok(),
            &lens,
            0x21..0x7f,
            12,
        );
        assert!(is_target(b""));
        assert!(is_target("/caf\u{e9}/\u{1f600}?q=\u{fc}".as_bytes()));
        assert!(!is_target(b"/caf\xe9/x"), "Latin-1, not UTF-8");
    }

    #[test]
    fn slots_hold_at_most_the_fields_asked_for() {
        let head = |n: usize| {
            let fields: String = (0..n).map(|i| format!("x-{i}: {i}\r\n")).collect();
            format!("GET / HTTP/1.1\r\n{fields}\r\n")
        };
        for (most, n, fits) in [(3, 3, true), (3, 4, false), (30, 30, true), (30, 31, false)] {
            let bytes = head(n);
            let mut slots = Slots::new();
            let parsed = slots.parse(bytes.as_bytes(), most, parse_request);
            match parsed {
                Ok(Some(line)) => {
                    assert!(fits, "{n} fields in {most} slots");
                    let last = slots.fields(line.fields).last().copied().unwrap();
                    assert_eq!(
                        &bytes.as_bytes()[last.value()],
                        (n - 1).to_string().as_bytes()
                    );
                }
                Err(HeadError::TooManyFields) => assert!(!fits, "{n} fields in {most} slots"),
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn heads_past_the_offset_range_are_not_read_past_it() {
        let mut head = b"GET / HTTP/1.1\r\nX: ".to_vec();
        head.resize(MAX_PARSED + 100, b'a');
        head.extend_from_slice(b"\r\n\r\n");
        let mut fields = [Field::default(); 4];
        assert_eq!(parse_request(&head, &mut fields), Ok(None));
    }
}
