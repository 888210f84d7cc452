//! Header work on the request and response path: hop-by-hop removal (RFC 9110 §7.6.1), the
//! standard forwarding headers, request ids, and the per-route header edits compiled from
//! config.

use std::cell::RefCell;
use std::net::IpAddr;
use std::time::{SystemTime, UNIX_EPOCH};

use http::header::{self, Entry, HeaderMap, HeaderName, HeaderValue};
use strait_config::{ForwardedMode, HeaderEdits, ProxyHeaders};

use crate::http::inbuf::copied;

/// `x-request-id`.
pub static X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The verified client identity on TLS listeners (Envoy's `x-forwarded-client-cert` form).
pub static X_FORWARDED_CLIENT_CERT: HeaderName = HeaderName::from_static("x-forwarded-client-cert");
/// `x-forwarded-for`.
pub static X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
/// `x-forwarded-proto`.
pub static X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
/// The header naming the cause of an error the proxy generated.
pub static X_STRAIT_ERROR: HeaderName = HeaderName::from_static("x-strait-error");
/// A gRPC answer's status, in its trailers or (trailers-only) its head.
pub static GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

static KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
static PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Removes hop-by-hop headers. `te: trailers` survives (gRPC needs it end to end); for an
/// upgrade, `upgrade` survives and `connection: upgrade` is written back. `trailer` is not
/// hop-by-hop in RFC 9110 (it was in RFC 2616) and must survive: an HTTP/1 hop sends only the
/// trailer fields it declares. True when it removed headers that `connection` named (beyond
/// `keep-alive` and `close`).
pub fn strip_hop_by_hop(headers: &mut HeaderMap, keep_upgrade: bool) -> bool {
    // One pass over the names says which are there: most messages carry none or only
    // `connection`, and a removal is a hashed lookup each.
    let present = headers
        .keys()
        .fold(0u8, |acc, name| acc | hop_by_hop_bit(name));
    if present == 0 && !keep_upgrade {
        return false;
    }
    let mut removed_named = false;
    // Headers named in `connection` are hop-by-hop too (RFC 9110 §7.6.1).
    // Most `connection` headers say only `keep-alive` or `close`: nothing more to remove.
    let only_standard = || {
        headers
            .get_all(header::CONNECTION)
            .iter()
            .all(|v| names_no_headers(v.as_bytes()))
    };
    if present & HOP_CONNECTION != 0 && only_standard() {
        headers.remove(header::CONNECTION);
    } else if present & HOP_CONNECTION != 0 {
        let named: Vec<HeaderName> = headers
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
            .collect();
        for name in named {
            if !(keep_upgrade && name == header::UPGRADE) {
                removed_named |= headers.remove(&name).is_some();
            }
        }
        headers.remove(header::CONNECTION);
    }
    for (bit, name) in [
        (HOP_KEEP_ALIVE, &KEEP_ALIVE),
        (HOP_PROXY_CONNECTION, &PROXY_CONNECTION),
        (HOP_TRANSFER_ENCODING, &header::TRANSFER_ENCODING),
        (HOP_PROXY_AUTHENTICATE, &header::PROXY_AUTHENTICATE),
        (HOP_PROXY_AUTHORIZATION, &header::PROXY_AUTHORIZATION),
    ] {
        if present & bit != 0 {
            headers.remove(name);
        }
    }
    if present & HOP_TE != 0 {
        if let Some(te) = headers.get(header::TE) {
            if !te.as_bytes().eq_ignore_ascii_case(b"trailers") {
                headers.remove(header::TE);
            }
        }
    }
    if keep_upgrade {
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    } else if present & HOP_UPGRADE != 0 {
        headers.remove(header::UPGRADE);
    }
    removed_named
}

/// Calls `f` with now as an HTTP date (`date`'s value), made once a second per worker.
pub(crate) fn with_date<R>(f: impl FnOnce(&HeaderValue) -> R) -> R {
    thread_local! {
        static DATE: RefCell<(u64, HeaderValue)> =
            const { RefCell::new((0, HeaderValue::from_static(""))) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    DATE.with_borrow_mut(|(at, date)| {
        if *at != secs {
            *at = secs;
            let text = httpdate::fmt_http_date(now);
            *date = HeaderValue::from_maybe_shared(bytes::Bytes::from(text))
                .unwrap_or_else(|_| HeaderValue::from_static(""));
        }
        f(date)
    })
}

/// Now as an HTTP date, a `date` field's value.
pub(crate) fn http_date() -> HeaderValue {
    with_date(HeaderValue::clone)
}

/// Header maps given back once their head is written, kept per worker for the next head
/// parsed: a new map's two tables cost two allocations (~290 instructions with their setup per
/// map, two maps a proxied request), a cleared one none.
mod spare {
    use std::cell::RefCell;

    use http::HeaderMap;

    /// Maps kept per worker: as many as heads in flight between a give and a take.
    const KEPT: usize = 32;
    /// A map grown past this many fields (a rare large head) is freed, not kept.
    const LARGEST: usize = 64;

    thread_local! {
        static MAPS: RefCell<Vec<HeaderMap>> = const { RefCell::new(Vec::new()) };
    }

    /// An empty map with room for `fields`: a kept one when there is one.
    pub(crate) fn take(fields: usize) -> HeaderMap {
        match MAPS.with_borrow_mut(Vec::pop) {
            Some(mut map) => {
                map.reserve(fields);
                map
            }
            None => HeaderMap::with_capacity(fields),
        }
    }

    /// Keeps `map`'s tables for a later [`take`] (its fields are dropped now).
    pub(crate) fn give(mut map: HeaderMap) {
        let capacity = map.capacity();
        if capacity == 0 || capacity > LARGEST {
            super::drop_empty(map);
            return;
        }
        map.clear();
        MAPS.with_borrow_mut(|maps| {
            if maps.len() < KEPT {
                maps.push(map);
            }
        });
    }
}
pub(crate) use spare::{give as give_map, take as take_map};

/// Drops `map`, without its drop glue when it holds no allocation: a map made by
/// `HeaderMap::new()` (as `Request::new` and `Response::new` make theirs) and never grown has
/// none, and its drop ran ~64 instructions that freed nothing, several times a request.
pub(crate) fn drop_empty(map: HeaderMap) {
    // No capacity: its index table, fields and extra values are all empty and unallocated.
    if map.capacity() == 0 {
        std::mem::forget(map);
    }
}

/// Puts `map` in `slot`, dropping the map it replaces (see [`drop_empty`]).
pub(crate) fn put_map(slot: &mut HeaderMap, map: HeaderMap) {
    drop_empty(std::mem::replace(slot, map));
}

/// The header name of a field's raw bytes as received: one of the common names (see
/// [`common_name`]), or from a small per-thread cache of the names last parsed: an upstream
/// sends the same few names, spelt the same way, in every answer, and
/// `HeaderName::from_bytes` (lowercasing, then matching the standard names) cost about 120
/// instructions a name.
#[inline]
pub(crate) fn received_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    match common_name(raw) {
        Some((name, _)) => Ok(name),
        None => cached_name(raw),
    }
}

/// A received field's name as [`received_name`] gives it, and what its match tells.
pub(crate) struct Received {
    pub name: HeaderName,
    /// The name's [`hop_by_hop_bit`].
    pub hop: u8,
    /// The name is one of the common names ([`common_name`]): none of them is a field the
    /// proxy writes itself ([`proxy_field`] is 0), and only `connection` is hop-by-hop.
    pub common: bool,
    /// Which of the names the HTTP/1 heads' readers act on it is.
    pub known: Known,
}

/// The names whose values the HTTP/1 heads' readers look at as they go through the fields (the
/// hop-by-hop ones are told by [`Received::hop`]). The match that finds a common name tells
/// this too: comparing each field's `HeaderName` with each of these cost ~12 instructions a
/// comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Known {
    Host,
    ContentLength,
    ContentType,
    Expect,
    Date,
    Connection,
    /// Any other name.
    Other,
}

/// [`received_name`], with its [`hop_by_hop_bit`], whether it was a common name, and which
/// [`Known`] name it is. A common name's bit is known from the match that found it; looking it
/// up again by the name's text cost ~20 instructions a field, and so did [`proxy_field`].
#[inline]
pub(crate) fn received(raw: &[u8]) -> Result<Received, http::header::InvalidHeaderName> {
    match common_name(raw) {
        Some((name, known)) => {
            let hop = if known == Known::Connection {
                HOP_CONNECTION
            } else {
                0
            };
            Ok(Received {
                name,
                hop,
                common: true,
                known,
            })
        }
        None => {
            // Every spelling of a `Known` name is a common one.
            let name = cached_name(raw)?;
            let hop = hop_by_hop_bit(&name);
            Ok(Received {
                name,
                hop,
                common: false,
                known: Known::Other,
            })
        }
    }
}

/// [`received_name`] for the names not common: kept out of line, so that a common name does
/// not pay for this one's registers and thread-local access.
#[inline(never)]
fn cached_name(raw: &[u8]) -> Result<HeaderName, http::header::InvalidHeaderName> {
    /// Slots in the cache (pairs: a name may sit in either of two), and the longest name kept
    /// (longer ones are parsed every time).
    const SLOTS: usize = 64;
    const LONGEST: usize = 48;
    thread_local! {
        static NAMES: std::cell::RefCell<[(Vec<u8>, Option<HeaderName>); SLOTS]> =
            std::cell::RefCell::new(std::array::from_fn(|_| (Vec::new(), None)));
    }
    let (Some(&first), Some(&last)) = (raw.first(), raw.last()) else {
        return HeaderName::from_bytes(raw);
    };
    if raw.len() > LONGEST {
        return HeaderName::from_bytes(raw);
    }
    let middle = raw.get(raw.len() / 2).copied().unwrap_or(0);
    let mix = raw.len() * 31 + usize::from(first) * 7 + usize::from(middle) * 13;
    let pair = ((mix + usize::from(last) * 11) % SLOTS) & !1;
    NAMES.with_borrow_mut(|names| {
        for slot in [pair, pair + 1] {
            if let Some((bytes, Some(name))) = names.get(slot) {
                if bytes.as_slice() == raw {
                    return Ok(name.clone());
                }
            }
        }
        // Not there: the pair's first slot's name moves to the second, the new one takes the
        // first (each slot's buffer reused).
        let name = HeaderName::from_bytes(raw)?;
        names.swap(pair, pair + 1);
        if let Some((bytes, kept)) = names.get_mut(pair) {
            bytes.clear();
            bytes.extend_from_slice(raw);
            *kept = Some(name.clone());
        }
        Ok(name)
    })
}

/// The names nearly every request or answer carries, found ahead of the cache (whose hashing,
/// thread-local access and byte comparison cost ~90 instructions a name): the received bytes
/// as one 128-bit word (see [`Lower`]), compared with each name of their length in one step.
#[inline]
fn common_name(raw: &[u8]) -> Option<(HeaderName, Known)> {
    use http::header::{
        ACCEPT, ACCEPT_ENCODING, ACCEPT_LANGUAGE, ACCEPT_RANGES, AUTHORIZATION, CACHE_CONTROL,
        CONNECTION, CONTENT_ENCODING, CONTENT_LENGTH, CONTENT_TYPE, COOKIE, DATE, ETAG, EXPECT,
        EXPIRES, HOST, IF_NONE_MATCH, LAST_MODIFIED, LOCATION, ORIGIN, PRAGMA, RANGE, REFERER,
        SERVER, SET_COOKIE, USER_AGENT, VARY,
    };
    // Names `http` has no constant for, which every browser request carries (fetch metadata,
    // client hints, priority). A static name is cloned without a reference count.
    const SEC_FETCH_DEST: HeaderName = HeaderName::from_static("sec-fetch-dest");
    const SEC_FETCH_MODE: HeaderName = HeaderName::from_static("sec-fetch-mode");
    const SEC_FETCH_SITE: HeaderName = HeaderName::from_static("sec-fetch-site");
    const SEC_FETCH_USER: HeaderName = HeaderName::from_static("sec-fetch-user");
    const SEC_CH_UA: HeaderName = HeaderName::from_static("sec-ch-ua");
    const SEC_CH_UA_MOBILE: HeaderName = HeaderName::from_static("sec-ch-ua-mobile");
    const PRIORITY: HeaderName = HeaderName::from_static("priority");
    let word = word_of(raw)?;
    let is = |name: Lower| word | name.case == name.word;
    // Constants matched arm by arm (each name's word computed at compile time): a table of
    // `HeaderName`s (which have drop glue) would be built on the stack at every call. Within
    // a length, the more frequent names first.
    Some(match raw.len() {
        4 if is(const { lower(b"host") }) => (HOST, Known::Host),
        4 if is(const { lower(b"date") }) => (DATE, Known::Date),
        4 if is(const { lower(b"etag") }) => (ETAG, Known::Other),
        4 if is(const { lower(b"vary") }) => (VARY, Known::Other),
        5 if is(const { lower(b"range") }) => (RANGE, Known::Other),
        6 if is(const { lower(b"server") }) => (SERVER, Known::Other),
        6 if is(const { lower(b"accept") }) => (ACCEPT, Known::Other),
        6 if is(const { lower(b"cookie") }) => (COOKIE, Known::Other),
        6 if is(const { lower(b"origin") }) => (ORIGIN, Known::Other),
        6 if is(const { lower(b"expect") }) => (EXPECT, Known::Expect),
        6 if is(const { lower(b"pragma") }) => (PRAGMA, Known::Other),
        7 if is(const { lower(b"referer") }) => (REFERER, Known::Other),
        7 if is(const { lower(b"expires") }) => (EXPIRES, Known::Other),
        8 if is(const { lower(b"priority") }) => (PRIORITY, Known::Other),
        8 if is(const { lower(b"location") }) => (LOCATION, Known::Other),
        9 if is(const { lower(b"sec-ch-ua") }) => (SEC_CH_UA, Known::Other),
        10 if is(const { lower(b"connection") }) => (CONNECTION, Known::Connection),
        10 if is(const { lower(b"user-agent") }) => (USER_AGENT, Known::Other),
        10 if is(const { lower(b"set-cookie") }) => (SET_COOKIE, Known::Other),
        12 if is(const { lower(b"content-type") }) => (CONTENT_TYPE, Known::ContentType),
        13 if is(const { lower(b"cache-control") }) => (CACHE_CONTROL, Known::Other),
        13 if is(const { lower(b"last-modified") }) => (LAST_MODIFIED, Known::Other),
        13 if is(const { lower(b"authorization") }) => (AUTHORIZATION, Known::Other),
        13 if is(const { lower(b"accept-ranges") }) => (ACCEPT_RANGES, Known::Other),
        13 if is(const { lower(b"if-none-match") }) => (IF_NONE_MATCH, Known::Other),
        14 if is(const { lower(b"content-length") }) => (CONTENT_LENGTH, Known::ContentLength),
        14 if is(const { lower(b"sec-fetch-mode") }) => (SEC_FETCH_MODE, Known::Other),
        14 if is(const { lower(b"sec-fetch-site") }) => (SEC_FETCH_SITE, Known::Other),
        14 if is(const { lower(b"sec-fetch-dest") }) => (SEC_FETCH_DEST, Known::Other),
        14 if is(const { lower(b"sec-fetch-user") }) => (SEC_FETCH_USER, Known::Other),
        15 if is(const { lower(b"accept-encoding") }) => (ACCEPT_ENCODING, Known::Other),
        15 if is(const { lower(b"accept-language") }) => (ACCEPT_LANGUAGE, Known::Other),
        16 if is(const { lower(b"content-encoding") }) => (CONTENT_ENCODING, Known::Other),
        16 if is(const { lower(b"sec-ch-ua-mobile") }) => (SEC_CH_UA_MOBILE, Known::Other),
        _ => return None,
    })
}

/// A lower-case name of 4 to 16 bytes as a word: its first and last 8 bytes (4 when it is
/// shorter than 8), overlapping when it is shorter than 16, so that two loads read any length
/// without a copy; and the case bit (0x20) of each of its letters, placed alike. Received bytes
/// of the same length whose word `w` has `w | case == word` spell the name in any case and
/// nothing else: only an ASCII letter becomes a lower-case letter when its case bit is set, and
/// every other byte must match exactly.
struct Lower {
    word: u128,
    case: u128,
}

/// The word of 4 to 16 received bytes (as [`Lower`] places them), `None` for other lengths.
#[inline]
fn word_of(raw: &[u8]) -> Option<u128> {
    if raw.len() >= 8 && raw.len() <= 16 {
        let first = u64::from_le_bytes(*raw.first_chunk::<8>()?);
        let last = u64::from_le_bytes(*raw.last_chunk::<8>()?);
        Some(u128::from(first) | u128::from(last) << 64)
    } else if raw.len() >= 4 {
        let first = u32::from_le_bytes(*raw.first_chunk::<4>()?);
        let last = u32::from_le_bytes(*raw.last_chunk::<4>()?);
        Some(u128::from(first) | u128::from(last) << 32)
    } else {
        None
    }
}

const fn lower(name: &[u8]) -> Lower {
    let len = name.len();
    let half = if len >= 8 { 8 } else { 4 };
    let (mut word, mut case, mut i) = (0u128, 0u128, 0);
    while i < half {
        // Byte i of the first half, and byte i of the last half (at bit 8 * (half + i)).
        let (first, last) = (name[i], name[len - half + i]);
        word |= (first as u128) << (8 * i) | (last as u128) << (8 * (half + i));
        if first.is_ascii_lowercase() {
            case |= 0x20 << (8 * i);
        }
        if last.is_ascii_lowercase() {
            case |= 0x20 << (8 * (half + i));
        }
        i += 1;
    }
    Lower { word, case }
}

/// A `content-type` that says gRPC (`application/grpc`, `application/grpc+proto`, ...).
pub(crate) fn is_grpc_content_type(value: &[u8]) -> bool {
    value.starts_with(b"application/grpc")
}

/// Whether a comma-separated field value (`upgrade`, `te`, `cache-control`, ...) holds
/// `token`, regardless of case.
#[inline]
pub(crate) fn has_token(value: &[u8], token: &[u8]) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token))
}

/// True when a `connection` value names no other header: only `keep-alive` and `close`.
fn names_no_headers(connection: &[u8]) -> bool {
    // The usual value, before splitting.
    if connection == b"keep-alive" {
        return true;
    }
    connection.split(|&b| b == b',').all(|t| {
        let t = t.trim_ascii();
        t.eq_ignore_ascii_case(b"keep-alive") || t.eq_ignore_ascii_case(b"close")
    })
}

pub(crate) const HOP_CONNECTION: u8 = 1;
pub(crate) const HOP_KEEP_ALIVE: u8 = 1 << 1;
const HOP_PROXY_CONNECTION: u8 = 1 << 2;
pub(crate) const HOP_TRANSFER_ENCODING: u8 = 1 << 3;
const HOP_PROXY_AUTHENTICATE: u8 = 1 << 4;
const HOP_PROXY_AUTHORIZATION: u8 = 1 << 5;
pub(crate) const HOP_TE: u8 = 1 << 6;
pub(crate) const HOP_UPGRADE: u8 = 1 << 7;

/// The bit of a fixed hop-by-hop header, 0 for others (those named in `connection` go with
/// `connection` itself).
pub(crate) fn hop_by_hop_bit(name: &HeaderName) -> u8 {
    hop_bit(name.as_str())
}

/// [`hop_by_hop_bit`] of a name's text (a standard name's is looked up in a table: taken once
/// where a name is matched against several lists).
#[inline]
fn hop_bit(name: &str) -> u8 {
    // By length first: most names have a length no hop-by-hop name has, and are settled
    // without comparing bytes (this runs for every header of every response).
    let (bit, hop) = match name.len() {
        2 => (HOP_TE, "te"),
        7 => (HOP_UPGRADE, "upgrade"),
        10 if name.starts_with('c') => (HOP_CONNECTION, "connection"),
        10 => (HOP_KEEP_ALIVE, "keep-alive"),
        16 => (HOP_PROXY_CONNECTION, "proxy-connection"),
        17 => (HOP_TRANSFER_ENCODING, "transfer-encoding"),
        18 => (HOP_PROXY_AUTHENTICATE, "proxy-authenticate"),
        19 => (HOP_PROXY_AUTHORIZATION, "proxy-authorization"),
        _ => return 0,
    };
    if name == hop {
        bit
    } else {
        0
    }
}

/// What a hop knows about the request it forwards.
#[derive(Debug, Clone, Copy)]
pub struct Hop<'a> {
    /// The client's address.
    pub client_ip: IpAddr,
    /// The same address as header text, formatted once per connection.
    pub client_ip_text: &'a HeaderValue,
    /// `http` or `https`, as the client reached us.
    pub scheme: &'static str,
    /// The request's host (authority) as received.
    pub host: &'a str,
    /// The HTTP version for `via` (`1.1`, `2`).
    pub version: &'static str,
}

/// Fields the HTTP/1 client writes into the request head after the request's own, rather than
/// the map holding them: inserting a field into a `HeaderMap` (hash, probe, insert), then
/// iterating, writing and dropping it costs ~400 instructions where writing it costs ~30.
/// For HTTP/2 they are inserted into the headers instead ([`Appended::insert_into`]).
#[derive(Debug, Clone, Copy, Default)]
pub struct Appended<'a> {
    /// `x-request-id`: the id made on arrival, when the request came with none.
    pub request_id: Option<&'a [u8]>,
    /// `traceparent`, for the attempt's span.
    pub traceparent: Option<&'a [u8]>,
    /// `x-forwarded-for`: the client's address, when the request came with none.
    pub forwarded_for: Option<&'a HeaderValue>,
    /// `x-forwarded-proto`: the scheme, when the request came with none.
    pub forwarded_proto: Option<&'static str>,
    /// The request's own fields, when `server1` kept them as they came (its map then holds
    /// none of them): written first, as they came (see `RawHead`).
    pub received: Option<&'a crate::http::client1::RawHead>,
}

/// A field [`Appended`] may hold: its name, the name with the separator as a head line starts
/// (`name: `), and its value when it is to be written.
type AppendedField<'v> = (&'static HeaderName, &'static [u8], Option<&'v [u8]>);

impl<'a> Appended<'a> {
    /// The `x-forwarded-*` fields [`add_forwarding_headers`] leaves out when told the request
    /// has neither: for such a request `append` and `replace` both write this hop alone.
    pub fn forwarding(
        cfg: &ProxyHeaders,
        client_ip_text: &'a HeaderValue,
        scheme: &'static str,
    ) -> Self {
        let written = |mode| !matches!(mode, ForwardedMode::Untouched);
        Appended {
            request_id: None,
            traceparent: None,
            forwarded_for: written(cfg.x_forwarded_for).then_some(client_ip_text),
            forwarded_proto: written(cfg.x_forwarded_proto).then_some(scheme),
            received: None,
        }
    }

    /// Every field this may hold, in the order they are written.
    fn table(&self) -> [AppendedField<'_>; 4] {
        let traceparent: &'static HeaderName = &crate::telemetry::trace_context::TRACEPARENT;
        [
            (&X_REQUEST_ID, b"x-request-id: ", self.request_id),
            (
                &X_FORWARDED_FOR,
                b"x-forwarded-for: ",
                self.forwarded_for.map(HeaderValue::as_bytes),
            ),
            (
                &X_FORWARDED_PROTO,
                b"x-forwarded-proto: ",
                self.forwarded_proto.map(str::as_bytes),
            ),
            (traceparent, b"traceparent: ", self.traceparent),
        ]
    }

    /// Each field as a name and its value's bytes, in the order they are written.
    pub fn fields(&self) -> impl Iterator<Item = (&'static HeaderName, &[u8])> {
        self.table()
            .into_iter()
            .filter_map(|(name, _, value)| Some((name, value?)))
    }

    /// Writes the fields as head lines (`name: value` and CRLF) into `s`: each name with its
    /// separator as one constant, where writing the `HeaderName`'s text and the separator
    /// apart cost a match and a copy more a field.
    pub fn write_lines(&self, s: &mut bytes::BytesMut) {
        use bytes::BufMut;
        for (_, line_start, value) in self.table() {
            if let Some(value) = value {
                s.put_slice(line_start);
                s.put_slice(value);
                s.put_slice(b"\r\n");
            }
        }
    }

    /// Writes the fields into `headers` (for a hop whose head is not written by Strait's
    /// HTTP/1 client), replacing what is there.
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        if let Some(received) = self.received {
            received.fill(headers);
        }
        for (name, value) in self.fields() {
            if let Ok(mut v) = HeaderValue::from_bytes(value) {
                // This request's own: kept out of HPACK's tables (see `made_unique_value`).
                let unique =
                    *name == X_REQUEST_ID || *name == crate::telemetry::trace_context::TRACEPARENT;
                v.set_sensitive(unique);
                headers.insert(name.clone(), v);
            }
        }
    }
}

/// [`proxy_field`]: `x-forwarded-for` or `x-forwarded-proto`.
pub(crate) const FIELD_X_FORWARDED: u8 = 1;
/// [`proxy_field`]: `x-request-id`.
pub(crate) const FIELD_REQUEST_ID: u8 = 2;
/// Not a field the proxy writes, but told with them: a hop-by-hop field came (one
/// [`strip_hop_by_hop`] removes or keeps), so the request's map must be looked through.
pub(crate) const FIELD_HOP_BY_HOP: u8 = 4;
/// [`proxy_field`]: `x-forwarded-client-cert`, which a TLS listener removes from every request
/// (and writes itself from the client's verified certificate).
pub(crate) const FIELD_CLIENT_CERT: u8 = 8;

/// Whether `name` is one of the fields the proxy writes itself, and which: `x-forwarded-for`
/// or `x-forwarded-proto` ([`FIELD_X_FORWARDED`]), `x-request-id` ([`FIELD_REQUEST_ID`]),
/// `x-forwarded-client-cert` ([`FIELD_CLIENT_CERT`]), or 0. A request that came with none of
/// them may have them written after its own fields (see [`Appended`]). By length first: most
/// names are settled by it.
pub(crate) fn proxy_field(name: &HeaderName) -> u8 {
    proxy_field_named(name.as_str())
}

/// [`proxy_field`] of a name's text.
#[inline]
fn proxy_field_named(name: &str) -> u8 {
    match name.len() {
        12 if name == "x-request-id" => FIELD_REQUEST_ID,
        15 | 17 if name == "x-forwarded-for" || name == "x-forwarded-proto" => FIELD_X_FORWARDED,
        23 if name == "x-forwarded-client-cert" => FIELD_CLIENT_CERT,
        _ => 0,
    }
}

/// [`proxy_field`] of every name in `headers`, and [`FIELD_HOP_BY_HOP`] when one is
/// hop-by-hop, in one pass over them (cheaper than a hashed lookup for each of the fields), as
/// `server1` notes them while it parses a head. An HTTP/2 request has none but `te: trailers`
/// and the proxy authentication fields (the h2 crate refuses the rest), so the gateway's own
/// pass to remove them is saved: ~300 instructions a request of ten fields, net. Out of line: its
/// caller's HTTP/1 requests, which need no pass, paid ~18 instructions for it inlined.
#[inline(never)]
pub(crate) fn proxy_fields_in(headers: &HeaderMap) -> u8 {
    headers.keys().fold(0, |fields, name| {
        let name = name.as_str();
        let hop = if hop_bit(name) != 0 {
            FIELD_HOP_BY_HOP
        } else {
            0
        };
        fields | proxy_field_named(name) | hop
    })
}

/// Writes `x-forwarded-for`, `x-forwarded-proto`, `forwarded`, `via` and `x-request-id` as
/// the listener's settings say.
///
/// `id_in_place`: the request's `x-request-id` is settled (the one it came with is still
/// there, or the one made on arrival is written, into the map or after the fields), so it is
/// not looked for again. `forwarding_appended`: the
/// request has no `x-forwarded-for` or `x-forwarded-proto` and the caller writes them itself
/// (see [`Appended::forwarding`]): they are left out here.
pub fn add_forwarding_headers(
    headers: &mut HeaderMap,
    cfg: &ProxyHeaders,
    hop: &Hop<'_>,
    id_in_place: bool,
    forwarding_appended: bool,
) {
    if !forwarding_appended {
        add_x_forwarded(headers, cfg, hop);
    }
    if !matches!(cfg.forwarded, ForwardedMode::Untouched) {
        let node = match hop.client_ip {
            IpAddr::V4(v4) => v4.to_string(),
            IpAddr::V6(v6) => format!("\"[{v6}]\""),
        };
        let mut element = format!("for={node};proto={}", hop.scheme);
        if is_token(hop.host) {
            element.push_str(";host=");
            element.push_str(hop.host);
        } else if !hop.host.is_empty() {
            element.push_str(&format!(";host=\"{}\"", hop.host.replace('"', "")));
        }
        let value = match (cfg.forwarded, fold_all(headers, &header::FORWARDED)) {
            (ForwardedMode::Append, Some(prior)) => format!("{prior}, {element}"),
            _ => element,
        };
        set(headers, header::FORWARDED, &value);
    }
    if let Some(via) = &cfg.via {
        append_via(headers, hop.version, via);
    }
    if cfg.request_id && !id_in_place {
        if let Entry::Vacant(slot) = headers.entry(&X_REQUEST_ID) {
            slot.insert(new_request_id());
        }
    }
}

/// `x-forwarded-for` and `x-forwarded-proto`, into the map.
fn add_x_forwarded(headers: &mut HeaderMap, cfg: &ProxyHeaders, hop: &Hop<'_>) {
    // Entries, so that looking for a header and writing it hash its name once.
    match cfg.x_forwarded_for {
        ForwardedMode::Append => match headers.entry(&X_FORWARDED_FOR) {
            Entry::Occupied(mut prior) => match fold_values(prior.iter()) {
                Some(all) => {
                    let ip = hop.client_ip_text.to_str().unwrap_or_default();
                    if let Ok(v) = HeaderValue::from_str(&format!("{all}, {ip}")) {
                        prior.insert(v);
                    }
                }
                None => {
                    prior.insert(hop.client_ip_text.clone());
                }
            },
            Entry::Vacant(slot) => {
                slot.insert(hop.client_ip_text.clone());
            }
        },
        ForwardedMode::Replace => {
            headers.insert(X_FORWARDED_FOR.clone(), hop.client_ip_text.clone());
        }
        _ => {}
    }
    match cfg.x_forwarded_proto {
        ForwardedMode::Append => {
            if let Entry::Vacant(slot) = headers.entry(&X_FORWARDED_PROTO) {
                slot.insert(HeaderValue::from_static(hop.scheme));
            }
        }
        ForwardedMode::Replace => {
            headers.insert(
                X_FORWARDED_PROTO.clone(),
                HeaderValue::from_static(hop.scheme),
            );
        }
        _ => {}
    }
}

/// Appends this proxy to `via`.
pub fn append_via(headers: &mut HeaderMap, version: &'static str, via: &str) {
    let hop = format!("{version} {via}");
    let value =
        fold_all(headers, &header::VIA).map_or(hop.clone(), |prior| format!("{prior}, {hop}"));
    set(headers, header::VIA, &value);
}

/// All values of a header joined with `, `, or `None` when absent or not text.
fn fold_all(headers: &HeaderMap, name: &HeaderName) -> Option<String> {
    fold_values(headers.get_all(name).iter())
}

/// Values joined with `, `, or `None` when there are none or one is not text.
fn fold_values<'a>(values: impl Iterator<Item = &'a HeaderValue>) -> Option<String> {
    let mut out: Option<String> = None;
    for v in values {
        let v = v.to_str().ok()?.trim();
        if v.is_empty() {
            continue;
        }
        match &mut out {
            Some(s) => {
                s.push_str(", ");
                s.push_str(v);
            }
            None => out = Some(v.to_owned()),
        }
    }
    out
}

fn set(headers: &mut HeaderMap, name: HeaderName, value: &str) {
    // Every value written here is built from addresses, header text that already parsed, or
    // config validated as header-safe, so a failure can only drop this hop's addition.
    if let Ok(v) = HeaderValue::from_str(value) {
        headers.insert(name, v);
    }
}

/// An RFC 9110 token (`tchar`s): anything else in a `forwarded` value is quoted, a host with
/// its port (`:`) and an IPv6 literal included (RFC 7239 4).
fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// A new random request id: 32 lower-case hex digits (128 bits).
pub fn new_request_id() -> HeaderValue {
    RequestId::random().to_value()
}

/// A request id made here: 32 lower-case hex digits of a random 128-bit number. Kept as bytes
/// until something needs a header value of it; when the HTTP/1 client writes it after the
/// request's fields (see [`Appended`]), it never becomes one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestId([u8; 32]);

impl RequestId {
    /// A new random id.
    pub fn random() -> Self {
        let mut out = [0u8; 32];
        let (hi, lo) = out.split_at_mut(16);
        hi.copy_from_slice(&hex_digits(fastrand::u64(..)));
        lo.copy_from_slice(&hex_digits(fastrand::u64(..)));
        RequestId(out)
    }

    /// The id's hex digits.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The id as a header value, kept out of HPACK's tables (see [`made_unique_value`]).
    pub fn to_value(&self) -> HeaderValue {
        // Hex digits are always a valid header value.
        made_unique_value(&self.0).unwrap_or_else(|| HeaderValue::from_static("0"))
    }
}

/// The 16 nibbles of `x` as lower-case hex digits, least significant first (a random id has
/// no order to keep). Every nibble is moved into a byte of its own with shifts and masks and
/// turned into its digit in all 16 bytes at once: a digit at a time cost ~250 instructions a
/// request id.
fn hex_digits(x: u64) -> [u8; 16] {
    const LOW_HALVES: u128 = 0x0000_0000_ffff_ffff_0000_0000_ffff_ffff;
    const LOW_QUARTERS: u128 = 0x0000_ffff_0000_ffff_0000_ffff_0000_ffff;
    const LOW_BYTES: u128 = 0x00ff_00ff_00ff_00ff_00ff_00ff_00ff_00ff;
    const LOW_NIBBLES: u128 = 0x0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f_0f0f;
    const EVERY_BYTE: u128 = 0x0101_0101_0101_0101_0101_0101_0101_0101;
    let mut n = u128::from(x);
    n = (n | n << 32) & LOW_HALVES;
    n = (n | n << 16) & LOW_QUARTERS;
    n = (n | n << 8) & LOW_BYTES;
    n = (n | n << 4) & LOW_NIBBLES;
    // 1 in each byte whose nibble is 10 or more (adding 6 carries it into bit 4).
    let letters = ((n + 6 * EVERY_BYTE) >> 4) & EVERY_BYTE;
    // '0' + nibble, and for letters the 39 more from '0' + 10 (':') to 'a'.
    (n + u128::from(b'0') * EVERY_BYTE + letters * 39).to_le_bytes()
}

/// A header value as text, as `HeaderValue::to_str` gives it (`None` unless every byte is
/// visible ASCII or a tab), in a word-at-a-time check: a `HeaderValue` holds no control byte
/// but the tab and no DEL (it is checked when made), so only bytes over 127 are left to refuse.
/// `to_str` checked each byte again, ~7 instructions a byte (~100 for a request's host).
pub(crate) fn value_text(value: &HeaderValue) -> Option<&str> {
    let bytes = value.as_bytes();
    if bytes.is_ascii() {
        std::str::from_utf8(bytes).ok()
    } else {
        None
    }
}

/// The bytes a `host` field may hold: a host and port's (RFC 3986: unreserved, sub-delims, `%`,
/// and `:`, `[`, `]`). Not `@`: `user@host` is an authority with userinfo, which a `host`
/// cannot carry (RFC 9112 3.2) and which hides the host from whoever reads it otherwise (RFC
/// 9110 4.2.4 asks that it be treated as an error). A byte per byte value, 0 where allowed:
/// one load and one `or` a byte, no branch (a `u128` mask cost ~14 instructions a byte in its
/// shifts).
static NOT_HOST: [u8; 256] = {
    let allowed =
        b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$&'()*+,;=%:[]";
    let mut table = [1u8; 256];
    let mut i = 0;
    while i < allowed.len() {
        table[allowed[i] as usize] = 0;
        i += 1;
    }
    table
};

/// Whether `value` is a `host` field's value that RFC 9112 3.2 lets a server take: without
/// spaces, controls, `/`, `?`, `#`, quotes or bytes above 127. Others are refused (400), as
/// nginx refuses them: routes would match the upstream's idea of the host against a string
/// that names none. Empty is allowed (a target without an authority).
pub(crate) fn is_host(value: &[u8]) -> bool {
    value
        .iter()
        .fold(0u8, |bad, &b| bad | NOT_HOST[usize::from(b)])
        == 0
}

/// Joins an HTTP/2 request's `cookie` fields into one, their values separated by `; `, as
/// RFC 9113 8.2.3 requires before the request leaves HTTP/2. Clients may send a cookie as
/// crumbs, one field each, so that HPACK indexes each (browsers do); an HTTP/1.1 upstream
/// reads one `Cookie` field (RFC 6265 5.4), and many read only the first of several. Joined
/// where the request arrives, so routes, rate limits, hashing and logs see what an upstream
/// sees. A map without any name twice (its length is its number of names) is left at once.
///
/// A `content-length` sent twice (h2 refuses two different ones, not the same one twice) is
/// kept once on the way: an HTTP/2 upstream refuses the stream for two, and nginx a request
/// with two lines.
pub(crate) fn fold_repeats(headers: &mut HeaderMap) {
    if headers.len() == headers.keys_len() {
        return;
    }
    let mut lengths = headers.get_all(header::CONTENT_LENGTH).iter();
    if let (Some(first), Some(_)) = (lengths.next(), lengths.next()) {
        let first = first.clone();
        headers.insert(header::CONTENT_LENGTH, first);
    }
    let crumbs = headers.get_all(header::COOKIE);
    if crumbs.iter().nth(1).is_none() {
        return;
    }
    let mut joined = Vec::with_capacity(crumbs.iter().map(|c| c.len() + 2).sum());
    let mut sensitive = false;
    for crumb in &crumbs {
        if !joined.is_empty() {
            joined.extend_from_slice(b"; ");
        }
        joined.extend_from_slice(crumb.as_bytes());
        sensitive |= crumb.is_sensitive();
    }
    // Made of values that were valid, joined by bytes that are: it does not fail.
    if let Ok(mut value) = HeaderValue::from_maybe_shared(bytes::Bytes::from(joined)) {
        value.set_sensitive(sensitive);
        headers.insert(header::COOKIE, value);
    }
}

/// A header value the proxy writes itself (a request id, a `traceparent`, an HTTP/2 request's
/// host), carved from the worker's shared chunk of small copies ([`copied`]) rather than
/// allocated alone; these live as long as their request.
pub(crate) fn made_value(bytes: &[u8]) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(copied(bytes)).ok()
}

/// [`made_value`] for a value no other request carries (a request id, a `traceparent`),
/// marked so that an HTTP/2 hop's HPACK encoder leaves it out of its dynamic table (the h2
/// crate sends such a value as a literal never indexed; `sensitive` is the only way it has to
/// be told). Indexed, each request's new value went into the table, evicting entries other
/// requests use again, and was compared with every earlier value of its name still there:
/// ~2,800 instructions a gRPC call to an HTTP/2 upstream.
pub(crate) fn made_unique_value(bytes: &[u8]) -> Option<HeaderValue> {
    let mut value = made_value(bytes)?;
    value.set_sensitive(true);
    Some(value)
}

/// A route's header edits, parsed once when the config is compiled.
#[derive(Debug, Clone, Default)]
pub struct CompiledEdits {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

/// A header name or value in the config that HTTP does not allow.
#[derive(Debug, thiserror::Error)]
#[error("invalid header {0:?}")]
pub struct InvalidHeader(String);

impl CompiledEdits {
    /// Parses the names and values.
    pub fn compile(edits: &HeaderEdits) -> Result<Self, InvalidHeader> {
        let name =
            |n: &str| HeaderName::from_bytes(n.as_bytes()).map_err(|_| InvalidHeader(n.to_owned()));
        let pair = |(n, v): (&String, &String)| -> Result<_, InvalidHeader> {
            Ok((
                name(n)?,
                HeaderValue::from_str(v).map_err(|_| InvalidHeader(format!("{n}: {v}")))?,
            ))
        };
        Ok(CompiledEdits {
            remove: edits
                .remove
                .iter()
                .map(|n| name(n))
                .collect::<Result<_, _>>()?,
            set: edits.set.iter().map(pair).collect::<Result<_, _>>()?,
            add: edits.add.iter().map(pair).collect::<Result<_, _>>()?,
        })
    }

    /// True when there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }

    /// Applies remove, then set, then add.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn appended_lines_are_the_fields_written_as_a_head_writes_them() {
        let ip = HeaderValue::from_static("10.0.0.1");
        let all = Appended {
            request_id: Some(b"0123456789abcdef0123456789abcdef"),
            traceparent: Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            forwarded_for: Some(&ip),
            forwarded_proto: Some("https"),
            received: None,
        };
        let some = Appended {
            forwarded_proto: Some("http"),
            ..Appended::default()
        };
        for appended in [all, some, Appended::default()] {
            let mut lines = bytes::BytesMut::new();
            appended.write_lines(&mut lines);
            let mut fields = bytes::BytesMut::new();
            for (name, value) in appended.fields() {
                crate::http::client1::put_field(&mut fields, name.as_str().as_bytes(), value);
            }
            assert_eq!(lines, fields);
        }
    }

    #[test]
    fn value_text_is_what_to_str_gives() {
        let values: [&[u8]; 7] = [
            b"127.0.0.1:18080",
            b"",
            b"a\tb",
            b"caf\xc3\xa9",
            b"\xff",
            b"x y ~!",
            b"0123456789abcdef0123456789abcdef-long-enough-for-words",
        ];
        for bytes in values {
            let value = HeaderValue::from_bytes(bytes).unwrap();
            assert_eq!(value_text(&value), value.to_str().ok(), "{bytes:?}");
        }
    }

    #[test]
    fn maps_given_back_come_back_empty_with_their_room() {
        let mut map = take_map(8);
        map.insert(header::HOST, HeaderValue::from_static("a"));
        map.append("x-a", HeaderValue::from_static("1"));
        map.append("x-a", HeaderValue::from_static("2"));
        let room = map.capacity();
        give_map(map);
        let again = take_map(4);
        assert!(again.is_empty());
        assert_eq!(again.capacity(), room, "the same tables");
        // Asked for more than it has: it grows.
        give_map(again);
        assert!(take_map(40).capacity() >= 40);
        // A map grown large is not kept.
        let mut big = HeaderMap::with_capacity(200);
        big.insert(header::HOST, HeaderValue::from_static("a"));
        give_map(big);
        assert!(take_map(1).capacity() < 200);
    }

    #[test]
    fn only_maps_without_allocations_skip_their_drop() {
        let value = bytes::BytesMut::from(&b"abc"[..]).freeze();
        let mut map = HeaderMap::new();
        assert_eq!(map.capacity(), 0);
        map.insert(
            header::HOST,
            HeaderValue::from_maybe_shared(value.clone()).unwrap(),
        );
        assert!(!value.is_unique());
        // A map with a field is dropped whole, its value with it.
        drop_empty(map);
        assert!(value.is_unique());
        // Replaced, a map that held a field is dropped too; an empty one is left alone.
        let mut slot = HeaderMap::new();
        let mut full = HeaderMap::new();
        full.insert(
            header::HOST,
            HeaderValue::from_maybe_shared(value.clone()).unwrap(),
        );
        put_map(&mut slot, full);
        assert_eq!(slot["host"], "abc");
        put_map(&mut slot, HeaderMap::new());
        assert!(slot.is_empty());
        assert!(value.is_unique());
    }

    #[test]
    fn made_values_keep_their_bytes_across_blocks() {
        // More values than one block holds, each checked after the rest were made.
        let texts: Vec<String> = (0..300)
            .map(|i| format!("{i:032x}-{}", "v".repeat(i % 40)))
            .collect();
        let values: Vec<HeaderValue> = texts
            .iter()
            .map(|t| made_value(t.as_bytes()).unwrap())
            .collect();
        for (t, v) in texts.iter().zip(&values) {
            assert_eq!(v.as_bytes(), t.as_bytes());
        }
        assert!(made_value(b"bad\nvalue").is_none());
        // Longer than a shared chunk holds.
        let long = "x".repeat(4096);
        assert_eq!(made_value(long.as_bytes()).unwrap().len(), long.len());
        let id = new_request_id();
        assert_eq!(id.len(), 32);
        assert!(id.as_bytes().iter().all(u8::is_ascii_hexdigit));
    }

    fn map(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).unwrap(),
                HeaderValue::from_str(v).unwrap(),
            );
        }
        h
    }

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = map(&[
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "timeout=5"),
            ("x-secret", "1"),
            ("te", "gzip"),
            ("upgrade", "websocket"),
            ("x-kept", "yes"),
        ]);
        assert!(strip_hop_by_hop(&mut h, false), "x-secret was named");
        assert_eq!(h.len(), 1, "{h:?}");
        assert!(h.contains_key("x-kept"));
        let mut h = map(&[("connection", "keep-alive"), ("x-request-id", "a")]);
        assert!(!strip_hop_by_hop(&mut h, false), "nothing named");
        assert!(h.contains_key("x-request-id"));
    }

    #[test]
    fn host_values_are_an_authoritys_bytes() {
        for good in [
            &b""[..],
            b"example.com",
            b"EXAMPLE.com:8080",
            b"127.0.0.1:80",
            b"[::1]:443",
            b"xn--bcher-kva.example",
            b"a_b~c!$&'()*+,;=%20",
        ] {
            assert!(is_host(good), "{:?}", String::from_utf8_lossy(good));
        }
        for bad in [
            &b"a b"[..],
            b"a\tb",
            b"host/path",
            b"host?q",
            b"host#f",
            b"a\"b",
            b"<host>",
            b"a\\b",
            b"h\x7fst",
            b"h\xc3\xa9",
            b"{a}",
            b"a|b",
            b"a^b",
            b"a`b",
            b"user@host",
            b"user:pass@host:80",
        ] {
            assert!(!is_host(bad), "{:?}", String::from_utf8_lossy(bad));
        }
        // Every byte: exactly the 81 allowed ones pass.
        let passing = (0..=255u8).filter(|&b| is_host(&[b])).count();
        assert_eq!(passing, 81);
    }

    #[test]
    fn cookie_crumbs_are_joined_and_a_repeated_length_kept_once() {
        let mut h = map(&[
            ("cookie", "a=1"),
            ("x-other", "x"),
            ("cookie", "theme=dark"),
            ("cookie", "b=2"),
        ]);
        fold_repeats(&mut h);
        let all: Vec<_> = h.get_all(header::COOKIE).iter().collect();
        assert_eq!(all, ["a=1; theme=dark; b=2"]);
        assert_eq!(h.get("x-other").unwrap(), "x");
        // One crumb, or none: left as it is.
        for pairs in [
            &[("cookie", "a=1"), ("x", "1"), ("x", "2")][..],
            &[("x", "1"), ("x", "2")],
        ] {
            let mut h = map(pairs);
            let before = h.clone();
            fold_repeats(&mut h);
            assert_eq!(h, before);
        }
        // The same length twice is one.
        let mut h = map(&[("content-length", "5"), ("x", "1"), ("content-length", "5")]);
        fold_repeats(&mut h);
        let all: Vec<_> = h.get_all(header::CONTENT_LENGTH).iter().collect();
        assert_eq!(all, ["5"]);
        // A crumb HPACK kept out of its tables stays so, joined.
        let mut h = HeaderMap::new();
        let mut secret = HeaderValue::from_static("s=1");
        secret.set_sensitive(true);
        h.append(header::COOKIE, HeaderValue::from_static("a=1"));
        h.append(header::COOKIE, secret);
        fold_repeats(&mut h);
        assert!(h.get(header::COOKIE).unwrap().is_sensitive());
    }

    /// Which `Known` name `name` is, by comparing it with each.
    fn known_of(name: &HeaderName) -> Known {
        match name {
            n if n == header::HOST => Known::Host,
            n if n == header::CONTENT_LENGTH => Known::ContentLength,
            n if n == header::CONTENT_TYPE => Known::ContentType,
            n if n == header::EXPECT => Known::Expect,
            n if n == header::DATE => Known::Date,
            n if n == header::CONNECTION => Known::Connection,
            _ => Known::Other,
        }
    }

    #[test]
    fn common_names_match_in_any_case_and_nothing_one_byte_off() {
        let common = [
            "host",
            "date",
            "etag",
            "vary",
            "range",
            "server",
            "accept",
            "cookie",
            "origin",
            "expect",
            "pragma",
            "referer",
            "expires",
            "priority",
            "location",
            "sec-ch-ua",
            "connection",
            "user-agent",
            "set-cookie",
            "content-type",
            "cache-control",
            "last-modified",
            "authorization",
            "accept-ranges",
            "if-none-match",
            "content-length",
            "sec-fetch-mode",
            "sec-fetch-site",
            "sec-fetch-dest",
            "sec-fetch-user",
            "accept-encoding",
            "accept-language",
            "content-encoding",
            "sec-ch-ua-mobile",
        ];
        // None of them is a field the proxy writes or a hop-by-hop one but `connection`:
        // `received` tells callers so without looking. Each tells which `Known` name it is,
        // in any case, and every `Known` name is among them.
        for name in common {
            let name = HeaderName::from_static(name);
            assert_eq!(proxy_field(&name), 0, "{name}");
            assert_eq!(
                hop_by_hop_bit(&name) != 0,
                name == header::CONNECTION,
                "{name}"
            );
            let upper = name.as_str().to_uppercase();
            for raw in [name.as_str(), &upper] {
                assert_eq!(
                    received(raw.as_bytes()).unwrap().known,
                    known_of(&name),
                    "{raw}"
                );
            }
        }
        for known in [
            header::HOST,
            header::CONTENT_LENGTH,
            header::CONTENT_TYPE,
            header::EXPECT,
            header::DATE,
            header::CONNECTION,
        ] {
            assert!(common.contains(&known.as_str()), "{known}");
            assert_ne!(known_of(&known), Known::Other, "{known}");
        }
        for name in common {
            let want = HeaderName::from_static(name);
            let name_of = |raw: &[u8]| common_name(raw).map(|(name, _)| name);
            assert_eq!(name_of(name.as_bytes()), Some(want.clone()));
            assert_eq!(name_of(name.to_uppercase().as_bytes()), Some(want.clone()));
            // Every byte at every position: the name only when the byte is the same letter in
            // either case (or the same byte).
            for at in 0..name.len() {
                for b in 0..=255u8 {
                    let mut raw = name.as_bytes().to_vec();
                    raw[at] = b;
                    let same = b.eq_ignore_ascii_case(&name.as_bytes()[at]);
                    let got = name_of(&raw);
                    assert_eq!(got.is_some(), same, "{name} with {b:#04x} at {at}: {got:?}");
                    if same {
                        assert_eq!(got, Some(want.clone()));
                    }
                }
            }
            // One byte more or fewer is another name.
            assert_ne!(name_of(format!("{name}s").as_bytes()), Some(want.clone()));
            assert_ne!(name_of(&name.as_bytes()[1..]), Some(want.clone()));
        }
        for other in [
            "x-a",
            "a",
            "",
            "x-custom-header",
            "content-lengths-and-more",
        ] {
            assert!(common_name(other.as_bytes()).is_none(), "{other}");
        }
    }

    #[test]
    fn received_names_are_the_names_parsed_whatever_the_cache_holds() {
        let mut names: Vec<String> = [
            "Content-Type",
            "content-type",
            "CONTENT-TYPE",
            "Server",
            "Date",
            "x-a",
            "X-A",
            "x-custom-header",
            "Connection",
            "a",
            "set-cookie",
            "Set-Cookie",
            "HOST",
            "Host",
            "hosT",
            "User-Agent",
            "Accept",
            "Accept-Encoding",
            "Content-Length",
            "cache-control",
            "Last-Modified",
            "Authorization",
            "ETag",
            "Vary",
            "Cookie",
            // Lengths the common names have, spelt otherwise.
            "hist",
            "x-ab",
            "server-timing",
            "content-lengtx",
        ]
        .iter()
        .map(|n| (*n).to_owned())
        .collect();
        // Enough names that many share a slot, and one longer than the cache keeps.
        names.extend((0..100).map(|i| format!("x-h{i}")));
        names.push(format!("x-{}", "l".repeat(60)));
        for _ in 0..3 {
            for n in &names {
                let got = received_name(n.as_bytes()).unwrap();
                assert_eq!(got, HeaderName::from_bytes(n.as_bytes()).unwrap(), "{n}");
            }
        }
        // Bytes that only a looser case fold would take for a common name: `\r` is `-` without
        // its 0x20 bit, `@` is a letter's neighbour, `H\0st`'s padding must not match.
        for bad in [
            "",
            "bad name",
            "a:b",
            "x\u{e9}",
            "ho t",
            "content\rlength",
            "user\ragent",
            "@ost",
            "ho\0t",
        ] {
            assert!(received_name(bad.as_bytes()).is_err(), "{bad:?}");
            assert!(received_name(bad.as_bytes()).is_err(), "{bad:?} again");
        }
    }

    #[test]
    fn hop_by_hop_names_are_known_by_their_bits_and_only_they() {
        let hop = [
            "connection",
            "keep-alive",
            "proxy-connection",
            "transfer-encoding",
            "proxy-authenticate",
            "proxy-authorization",
            "te",
            "upgrade",
        ];
        let mut seen = 0u8;
        for name in hop {
            let bit = hop_by_hop_bit(&HeaderName::from_static(name));
            assert_eq!(bit.count_ones(), 1, "{name}");
            assert_eq!(seen & bit, 0, "{name} shares a bit");
            seen |= bit;
        }
        // Names of the same lengths, and the common ones.
        for name in [
            "tt",
            "x-upgrad",
            "xonnection",
            "content-md5",
            "x-keep-alive",
            "proxy-connectiox",
            "transfer-encodinx",
            "proxy-authenticatx",
            "proxy-authorizatiox",
            "date",
            "server",
            "content-type",
            "content-length",
            "x-request-id",
            "trailer",
        ] {
            assert_eq!(hop_by_hop_bit(&HeaderName::from_static(name)), 0, "{name}");
        }
        // `received` agrees with the functions it stands for, for common names, hop-by-hop
        // ones (in any case), the proxy's own and others.
        for name in hop.iter().chain(&[
            "date",
            "server",
            "Connection",
            "CONTENT-LENGTH",
            "x-a",
            "x-request-id",
            "X-Forwarded-For",
        ]) {
            let got = received(name.as_bytes()).unwrap();
            let want = received_name(name.as_bytes()).unwrap();
            assert_eq!(got.name, want, "{name}");
            assert_eq!(got.hop, hop_by_hop_bit(&want), "{name}");
            assert_eq!(got.common, common_name(name.as_bytes()).is_some(), "{name}");
            assert_eq!(got.known, known_of(&want), "{name}");
            if got.common {
                assert_eq!(proxy_field(&want), 0, "{name}");
            }
        }
        assert!(received(b"bad name").is_err());
        assert!(names_no_headers(b"Keep-Alive"));
        assert!(names_no_headers(b"close"));
        assert!(names_no_headers(b"keep-alive , Close"));
        assert!(!names_no_headers(b"keep-alive, x-secret"));
        assert!(!names_no_headers(b"upgrade"));
    }

    #[test]
    fn te_trailers_and_upgrades_survive() {
        let mut h = map(&[
            ("te", "trailers"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
        ]);
        strip_hop_by_hop(&mut h, true);
        assert_eq!(h["te"], "trailers");
        assert_eq!(h["upgrade"], "websocket");
        assert_eq!(h["connection"], "upgrade");
    }

    /// A hop from 10.0.0.9 (`text`) for `a.example`.
    fn hop_from<'a>(text: &'a HeaderValue, scheme: &'static str) -> Hop<'a> {
        Hop {
            client_ip: "10.0.0.9".parse().unwrap(),
            client_ip_text: text,
            scheme,
            host: "a.example",
            version: "1.1",
        }
    }

    #[test]
    fn forwarding_headers_follow_the_modes() {
        let text = HeaderValue::from_static("10.0.0.9");
        let hop = hop_from(&text, "http");
        let mut h = map(&[
            ("x-forwarded-for", "1.1.1.1"),
            ("x-forwarded-for", "2.2.2.2"),
        ]);
        let cfg = ProxyHeaders {
            forwarded: ForwardedMode::Append,
            via: Some("strait".into()),
            ..Default::default()
        };
        add_forwarding_headers(&mut h, &cfg, &hop, false, false);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 10.0.0.9");
        assert_eq!(h["x-forwarded-proto"], "http");
        assert_eq!(h["forwarded"], "for=10.0.0.9;proto=http;host=a.example");
        assert_eq!(h["via"], "1.1 strait");
        assert_eq!(h["x-request-id"].len(), 32);
        // A port's `:` is no token character: the host is quoted.
        let with_port = Hop {
            host: "a.example:8443",
            ..hop_from(&text, "https")
        };
        let mut h = HeaderMap::new();
        add_forwarding_headers(&mut h, &cfg, &with_port, true, false);
        assert_eq!(
            h["forwarded"],
            "for=10.0.0.9;proto=https;host=\"a.example:8443\""
        );

        let mut h = map(&[("x-forwarded-for", "1.1.1.1"), ("x-request-id", "abc")]);
        let cfg = ProxyHeaders {
            x_forwarded_for: ForwardedMode::Replace,
            ..Default::default()
        };
        add_forwarding_headers(&mut h, &cfg, &hop, false, false);
        assert_eq!(h["x-forwarded-for"], "10.0.0.9");
        assert_eq!(h["x-request-id"], "abc");
        assert!(!h.contains_key("forwarded"));
    }

    #[test]
    fn appended_forwarding_fields_are_what_the_map_would_get() {
        let text = HeaderValue::from_static("10.0.0.9");
        let hop = hop_from(&text, "https");
        let modes = [
            ForwardedMode::Append,
            ForwardedMode::Replace,
            ForwardedMode::Untouched,
        ];
        for x_forwarded_for in modes {
            for x_forwarded_proto in modes {
                let cfg = ProxyHeaders {
                    x_forwarded_for,
                    x_forwarded_proto,
                    ..Default::default()
                };
                let mut in_map = map(&[("host", "a.example")]);
                add_forwarding_headers(&mut in_map, &cfg, &hop, false, false);
                let mut left = map(&[("host", "a.example")]);
                add_forwarding_headers(&mut left, &cfg, &hop, false, true);
                let appended = Appended::forwarding(&cfg, &text, hop.scheme);
                for name in [&X_FORWARDED_FOR, &X_FORWARDED_PROTO] {
                    assert!(!left.contains_key(name), "{cfg:?}: {name} left out");
                    let written = appended.fields().find(|(n, _)| *n == name).map(|(_, v)| v);
                    let want = in_map.get(name).map(HeaderValue::as_bytes);
                    assert_eq!(written, want, "{cfg:?}: {name}");
                }
                let mut inserted = left.clone();
                appended.insert_into(&mut inserted);
                assert_eq!(inserted.len(), in_map.len(), "{cfg:?}");
            }
        }
        // The request id first, a trace context last.
        let id = RequestId::random();
        let appended = Appended {
            request_id: Some(id.as_bytes()),
            traceparent: Some(b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ..Appended::forwarding(&ProxyHeaders::default(), &text, "http")
        };
        let names: Vec<&str> = appended.fields().map(|(n, _)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "x-request-id",
                "x-forwarded-for",
                "x-forwarded-proto",
                "traceparent"
            ]
        );
        let mut h = HeaderMap::new();
        appended.insert_into(&mut h);
        assert_eq!(h["x-request-id"], id.to_value());
        assert_eq!(h.len(), 4);
        // The request's own values are kept out of HPACK's tables, the forwarding ones not.
        assert!(id.to_value().is_sensitive());
        for (name, unique) in [
            ("x-request-id", true),
            ("traceparent", true),
            ("x-forwarded-for", false),
            ("x-forwarded-proto", false),
        ] {
            assert_eq!(h[name].is_sensitive(), unique, "{name}");
        }
    }

    #[test]
    fn the_proxy_s_own_fields_are_found_in_one_pass() {
        assert_eq!(
            proxy_fields_in(&map(&[("host", "a"), ("x-forwarded-host", "b")])),
            0
        );
        assert_eq!(
            proxy_fields_in(&map(&[("x-forwarded-proto", "https")])),
            FIELD_X_FORWARDED
        );
        assert_eq!(
            proxy_fields_in(&map(&[
                ("x-request-id", "7"),
                ("x-forwarded-for", "1.2.3.4")
            ])),
            FIELD_X_FORWARDED | FIELD_REQUEST_ID
        );
        // Hop-by-hop fields are told with them; `te` too, which `strip_hop_by_hop` looks at.
        for hop in ["connection", "te", "proxy-authorization", "keep-alive"] {
            assert_eq!(
                proxy_fields_in(&map(&[("accept", "*/*"), (hop, "x")])),
                FIELD_HOP_BY_HOP,
                "{hop}"
            );
        }
    }

    #[test]
    fn an_id_in_place_is_not_looked_for_again() {
        let text = HeaderValue::from_static("10.0.0.9");
        let hop = hop_from(&text, "http");
        let cfg = ProxyHeaders::default();
        let mut h = map(&[("x-request-id", "abc")]);
        add_forwarding_headers(&mut h, &cfg, &hop, true, false);
        assert_eq!(h["x-request-id"], "abc");
        // Not in place (`connection` named it): a new one is made.
        let mut h = HeaderMap::new();
        add_forwarding_headers(&mut h, &cfg, &hop, false, false);
        assert_eq!(h["x-request-id"].len(), 32);
    }

    #[test]
    fn request_ids_differ() {
        assert_ne!(new_request_id(), new_request_id());
    }

    #[test]
    fn request_ids_are_32_lower_case_hex_digits() {
        for _ in 0..1000 {
            let id = new_request_id();
            assert_eq!(id.len(), 32, "{id:?}");
            assert!(
                id.as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(b)),
                "{id:?}"
            );
        }
        // Every nibble, in order from the least significant.
        assert_eq!(&hex_digits(0xfedc_ba98_7654_3210), b"0123456789abcdef");
        assert_eq!(&hex_digits(0), b"0000000000000000");
        assert_eq!(&hex_digits(u64::MAX), b"ffffffffffffffff");
        assert_eq!(&hex_digits(0xa0), b"0a00000000000000");
    }

    #[test]
    fn edits_apply_remove_set_add_in_order() {
        let edits = HeaderEdits {
            set: [("x-a".to_owned(), "1".to_owned())].into(),
            add: [("x-a".to_owned(), "2".to_owned())].into(),
            remove: vec!["x-gone".to_owned(), "x-a".to_owned()],
        };
        let compiled = CompiledEdits::compile(&edits).unwrap();
        let mut h = map(&[("x-a", "0"), ("x-gone", "1")]);
        compiled.apply(&mut h);
        let values: Vec<_> = h.get_all("x-a").iter().collect();
        assert_eq!(values, ["1", "2"]);
        assert!(!h.contains_key("x-gone"));
    }
}
