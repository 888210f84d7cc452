//! Trace context propagation, pure: reading a request's W3C Trace Context or Zipkin B3 headers,
//! the sampling decision, and the headers written to what the proxy sends upstream. No I/O and
//! no allocation except the header values written.
//!
//! ```text
//! request headers ─► extract (accepted formats, in order; the first valid one wins)
//!   ─► sampler: the parent's decision when it carries one, else the ratio on the trace id
//!   ─► the server span's context (same trace id, new span id)
//!   ─► per upstream attempt: a client span id ─► strip old headers ─► inject emitted formats
//! ```
//!
//! Peers are hostile: every header is checked byte by byte, and anything invalid counts as
//! absent (a new trace starts) rather than failing the request.
//!
//! W3C Trace Context rules followed here (<https://www.w3.org/TR/trace-context/>): version
//! `ff` is invalid; version `00` is exactly 55 characters; a higher version is read leniently
//! (its first four fields, anything after them only behind a `-`); hex is lower case; an
//! all-zero trace id or parent id is invalid; several `traceparent` headers are invalid; when
//! `traceparent` is invalid, `tracestate` is dropped with it; `tracestate` with more than 32
//! list members, a malformed member or a key listed twice is dropped; otherwise it is passed on
//! unchanged (several header lines are joined with `,`, as HTTP allows).

use std::fmt;

use http::header::{HeaderMap, HeaderName, HeaderValue};
use strait_config::{AcceptFormat, EmitFormat};

/// `traceparent`.
pub static TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// `tracestate`.
pub static TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// B3 in one header.
pub static B3: HeaderName = HeaderName::from_static("b3");
/// `x-b3-traceid`.
pub static X_B3_TRACEID: HeaderName = HeaderName::from_static("x-b3-traceid");
/// `x-b3-spanid`.
pub static X_B3_SPANID: HeaderName = HeaderName::from_static("x-b3-spanid");
/// `x-b3-parentspanid`.
pub static X_B3_PARENTSPANID: HeaderName = HeaderName::from_static("x-b3-parentspanid");
/// `x-b3-sampled`.
pub static X_B3_SAMPLED: HeaderName = HeaderName::from_static("x-b3-sampled");
/// `x-b3-flags`.
pub static X_B3_FLAGS: HeaderName = HeaderName::from_static("x-b3-flags");

/// Most list members a valid `tracestate` has.
const TRACESTATE_MAX_MEMBERS: usize = 32;

/// A 128-bit trace id, never all zeros once valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId(pub [u8; 16]);

/// A 64-bit span id, never all zeros once valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId(pub [u8; 8]);

impl TraceId {
    /// A random, non-zero trace id.
    pub fn random() -> TraceId {
        let hi = fastrand::u64(..);
        let lo = fastrand::u64(1..);
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&hi.to_be_bytes());
        id[8..].copy_from_slice(&lo.to_be_bytes());
        TraceId(id)
    }

    /// 32 lower-case hex digits.
    pub fn to_hex(self) -> [u8; 32] {
        let mut out = [0u8; 32];
        hex_into(&self.0, &mut out);
        out
    }
}

impl SpanId {
    /// A random, non-zero span id.
    pub fn random() -> SpanId {
        SpanId(fastrand::u64(1..).to_be_bytes())
    }

    /// 16 lower-case hex digits.
    pub fn to_hex(self) -> [u8; 16] {
        let mut out = [0u8; 16];
        hex_into(&self.0, &mut out);
        out
    }
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Hex digits are ASCII.
        f.write_str(std::str::from_utf8(&self.to_hex()).unwrap_or_default())
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(std::str::from_utf8(&self.to_hex()).unwrap_or_default())
    }
}

/// What a request says about sampling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sampling {
    /// Record it.
    Sampled,
    /// Do not record it.
    NotSampled,
    /// Record it, and ask every hop to (B3 debug).
    Debug,
    /// No decision: the proxy decides (a root, or B3 that defers).
    Deferred,
}

/// The trace context a request arrived with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Extracted {
    /// The calling span, when the request carried a valid one.
    pub parent: Option<(TraceId, SpanId)>,
    /// The caller's sampling decision.
    pub sampling: Sampling,
    /// W3C `tracestate` to pass on; only with a valid `traceparent` that was used.
    pub tracestate: Option<HeaderValue>,
}

impl Extracted {
    /// Nothing usable: a new trace.
    pub const NONE: Extracted = Extracted {
        parent: None,
        sampling: Sampling::Deferred,
        tracestate: None,
    };
}

/// Reads the formats of `accept`, in order: the first that yields a parent or a sampling
/// decision is used, and the others are ignored.
pub fn extract(headers: &HeaderMap, accept: &[AcceptFormat]) -> Extracted {
    extract_present(headers, accept, Formats::present(headers))
}

/// [`extract`], given which formats' headers the request carries ([`Formats::present`]):
/// most requests carry no context, and one pass over the names spares a lookup per header.
pub fn extract_present(
    headers: &HeaderMap,
    accept: &[AcceptFormat],
    present: Formats,
) -> Extracted {
    if present.is_empty() {
        return Extracted::NONE;
    }
    for format in accept {
        let found = match format {
            AcceptFormat::W3c if present.has(Formats::W3C) => extract_w3c(headers),
            AcceptFormat::B3 if present.has(Formats::B3_SINGLE | Formats::B3_MULTI) => {
                extract_b3(headers)
            }
            #[allow(unreachable_patterns)]
            _ => None,
        };
        if let Some(found) = found {
            return found;
        }
    }
    Extracted::NONE
}

/// The trace id of a request's valid W3C `traceparent`, for logs of listeners that do not
/// trace.
pub fn received_trace_id(headers: &HeaderMap) -> Option<TraceId> {
    extract_w3c(headers)?.parent.map(|(trace, _)| trace)
}

fn extract_w3c(headers: &HeaderMap) -> Option<Extracted> {
    let mut all = headers.get_all(&TRACEPARENT).iter();
    let value = all.next()?;
    if all.next().is_some() {
        // Two traceparents cannot both be the parent: treat as invalid, start anew.
        return None;
    }
    let parsed = parse_traceparent(value.as_bytes())?;
    Some(Extracted {
        parent: Some((parsed.trace_id, parsed.span_id)),
        sampling: if parsed.flags & 1 == 1 {
            Sampling::Sampled
        } else {
            Sampling::NotSampled
        },
        tracestate: tracestate(headers),
    })
}

/// The fields of a valid `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Traceparent {
    /// Its version (never `ff`).
    pub version: u8,
    /// The trace id (not all zeros).
    pub trace_id: TraceId,
    /// The caller's span id (not all zeros).
    pub span_id: SpanId,
    /// Trace flags; bit 0 is `sampled`.
    pub flags: u8,
}

/// Parses a W3C `traceparent` value: `None` when the header is invalid by the spec's rules.
pub fn parse_traceparent(value: &[u8]) -> Option<Traceparent> {
    if value.len() < 55 {
        return None;
    }
    let version = hex_byte(value.get(0..2)?)?;
    if version == 0xff {
        return None;
    }
    // Version 00 is exactly 55 characters; a later version may append fields after a dash.
    match (version, value.get(55)) {
        (0, Some(_)) => return None,
        (_, Some(&b)) if b != b'-' => return None,
        _ => {}
    }
    if value.get(2) != Some(&b'-') || value.get(35) != Some(&b'-') || value.get(52) != Some(&b'-') {
        return None;
    }
    let mut trace = [0u8; 16];
    let mut span = [0u8; 8];
    hex_decode(value.get(3..35)?, &mut trace)?;
    hex_decode(value.get(36..52)?, &mut span)?;
    let flags = hex_byte(value.get(53..55)?)?;
    if trace == [0; 16] || span == [0; 8] {
        return None;
    }
    Some(Traceparent {
        version,
        trace_id: TraceId(trace),
        span_id: SpanId(span),
        flags,
    })
}

/// The request's `tracestate`, if valid: its header lines joined, unchanged otherwise.
fn tracestate(headers: &HeaderMap) -> Option<HeaderValue> {
    let mut lines = headers.get_all(&TRACESTATE).iter();
    let first = lines.next()?;
    let value = match lines.next() {
        None => first.clone(),
        Some(second) => {
            let mut joined = first.as_bytes().to_vec();
            for line in std::iter::once(second).chain(lines) {
                joined.push(b',');
                joined.extend_from_slice(line.as_bytes());
            }
            HeaderValue::from_bytes(&joined).ok()?
        }
    };
    valid_tracestate(value.as_bytes()).then_some(value)
}

/// True when `value` is a `tracestate` list worth passing on: at most 32 members, each
/// `key=value` by the spec's grammar, no key twice. Empty members (`a=1,,b=2`) are allowed.
pub fn valid_tracestate(value: &[u8]) -> bool {
    let mut keys: [&[u8]; TRACESTATE_MAX_MEMBERS] = [&[]; TRACESTATE_MAX_MEMBERS];
    let mut count = 0;
    for member in value.split(|&b| b == b',') {
        let member = trim_ows(member);
        if member.is_empty() {
            continue;
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return false;
        };
        let (key, val) = (&member[..eq], &member[eq + 1..]);
        if !valid_tracestate_key(key) || !valid_tracestate_value(val) {
            return false;
        }
        if count == TRACESTATE_MAX_MEMBERS || keys[..count].contains(&key) {
            return false;
        }
        keys[count] = key;
        count += 1;
    }
    true
}

/// `simple-key = lcalpha 0*255( lcalpha / DIGIT / "_" / "-"/ "*" / "/" )` or
/// `tenant-id "@" system-id` (tenant: lcalpha/DIGIT then up to 240; system: lcalpha then up
/// to 13).
fn valid_tracestate_key(key: &[u8]) -> bool {
    let rest_ok = |s: &[u8]| {
        s.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.iter().position(|&b| b == b'@') {
        None => {
            key.len() <= 256
                && key.first().is_some_and(u8::is_ascii_lowercase)
                && rest_ok(&key[1..])
        }
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            (1..=241).contains(&tenant.len())
                && tenant
                    .first()
                    .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
                && rest_ok(&tenant[1..])
                && (1..=14).contains(&system.len())
                && system.first().is_some_and(u8::is_ascii_lowercase)
                && rest_ok(&system[1..])
        }
    }
}

/// `value = 0*255(chr) nblk-chr`: printable ASCII without `,` and `=`, not ending in a space.
fn valid_tracestate_value(value: &[u8]) -> bool {
    (1..=256).contains(&value.len())
        && value
            .iter()
            .all(|&b| (0x20..=0x7e).contains(&b) && b != b',' && b != b'=')
        && value.last() != Some(&b' ')
}

fn trim_ows(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

fn extract_b3(headers: &HeaderMap) -> Option<Extracted> {
    if let Some(single) = headers.get(&B3) {
        if let Some(found) = parse_b3_single(single.as_bytes()) {
            return Some(found);
        }
    }
    let sampling = match (
        headers.get(&X_B3_FLAGS).map(HeaderValue::as_bytes),
        headers.get(&X_B3_SAMPLED).map(HeaderValue::as_bytes),
    ) {
        (Some(b"1"), _) => Sampling::Debug,
        (_, Some(b"1" | b"true")) => Sampling::Sampled,
        (_, Some(b"0" | b"false")) => Sampling::NotSampled,
        _ => Sampling::Deferred,
    };
    match (headers.get(&X_B3_TRACEID), headers.get(&X_B3_SPANID)) {
        (Some(trace), Some(span)) => Some(Extracted {
            parent: Some((
                parse_b3_trace_id(trace.as_bytes())?,
                parse_span_id(span.as_bytes())?,
            )),
            sampling,
            tracestate: None,
        }),
        // Ids are all or nothing; a sampling decision alone still counts.
        (None, None) if sampling != Sampling::Deferred => Some(Extracted {
            parent: None,
            sampling,
            tracestate: None,
        }),
        _ => None,
    }
}

/// Parses `b3: {trace}-{span}[-{sampling}[-{parent}]]` or a decision alone (`0`, `1`, `d`).
pub fn parse_b3_single(value: &[u8]) -> Option<Extracted> {
    let decision = |s: &[u8]| match s {
        b"1" => Some(Sampling::Sampled),
        b"0" => Some(Sampling::NotSampled),
        b"d" => Some(Sampling::Debug),
        _ => None,
    };
    let mut parts = value.split(|&b| b == b'-');
    let first = parts.next()?;
    let Some(span) = parts.next() else {
        return Some(Extracted {
            parent: None,
            sampling: decision(first)?,
            tracestate: None,
        });
    };
    let trace_id = parse_b3_trace_id(first)?;
    let span_id = parse_span_id(span)?;
    let sampling = match parts.next() {
        None => Sampling::Deferred,
        Some(s) => decision(s)?,
    };
    if let Some(parent) = parts.next() {
        parse_span_id(parent)?;
    }
    if parts.next().is_some() {
        return None;
    }
    Some(Extracted {
        parent: Some((trace_id, span_id)),
        sampling,
        tracestate: None,
    })
}

/// A B3 trace id: 32 or 16 lower-hex digits (a 64-bit id is the low half), not all zeros.
fn parse_b3_trace_id(value: &[u8]) -> Option<TraceId> {
    let mut id = [0u8; 16];
    match value.len() {
        32 => hex_decode(value, &mut id)?,
        16 => hex_decode(value, &mut id[8..])?,
        _ => return None,
    }
    (id != [0; 16]).then_some(TraceId(id))
}

/// A span id: 16 lower-hex digits, not all zeros.
fn parse_span_id(value: &[u8]) -> Option<SpanId> {
    let mut id = [0u8; 8];
    if value.len() != 16 {
        return None;
    }
    hex_decode(value, &mut id)?;
    (id != [0; 8]).then_some(SpanId(id))
}

/// Head sampling: the parent's decision when there is one, else `percent` % of trace ids. The
/// draw is made on the trace id so that every proxy with the same ratio agrees on a trace.
#[derive(Debug, Clone, Copy)]
pub struct Sampler {
    /// Trace ids whose low 63 bits fall under this are sampled.
    threshold: u64,
}

impl Sampler {
    /// Samples `percent` (0 to 100) % of new traces.
    pub fn ratio(percent: f64) -> Sampler {
        let share = (percent / 100.0).clamp(0.0, 1.0);
        let threshold = if share >= 1.0 {
            u64::MAX
        } else {
            (share * (1u64 << 63) as f64) as u64
        };
        Sampler { threshold }
    }

    /// Whether a trace with this id and this caller's decision is recorded.
    pub fn sampled(&self, sampling: Sampling, trace_id: TraceId) -> bool {
        match sampling {
            Sampling::Sampled | Sampling::Debug => true,
            Sampling::NotSampled => false,
            Sampling::Deferred => {
                let mut low = [0u8; 8];
                low.copy_from_slice(&trace_id.0[8..]);
                (u64::from_be_bytes(low) >> 1) < self.threshold
            }
        }
    }
}

/// One span's context, as written to the next hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpanContext {
    /// The trace.
    pub trace_id: TraceId,
    /// This span.
    pub span_id: SpanId,
    /// Recorded (and so asked to be recorded downstream).
    pub sampled: bool,
    /// B3 debug: every hop is asked to record.
    pub debug: bool,
}

/// A request's place in its trace: the context of its server span, and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The server span (same trace as the caller, a new span id).
    pub context: SpanContext,
    /// The caller's span, when the request had a valid context.
    pub parent: Option<SpanId>,
    /// `tracestate` to pass on.
    pub tracestate: Option<HeaderValue>,
}

/// Places a request in its trace: the caller's when it sent a valid context, else a new one.
pub fn start(extracted: Extracted, sampler: &Sampler) -> Started {
    let (trace_id, parent) = match extracted.parent {
        Some((trace, span)) => (trace, Some(span)),
        None => (TraceId::random(), None),
    };
    Started {
        context: SpanContext {
            trace_id,
            span_id: SpanId::random(),
            sampled: sampler.sampled(extracted.sampling, trace_id),
            debug: extracted.sampling == Sampling::Debug,
        },
        parent,
        tracestate: extracted.tracestate,
    }
}

/// Sets of header families, by format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Formats(u8);

impl Formats {
    const W3C: u8 = 1;
    const B3_SINGLE: u8 = 2;
    const B3_MULTI: u8 = 4;

    /// The formats written.
    pub fn emitted(emit: &[EmitFormat]) -> Formats {
        Formats(emit.iter().fold(0, |bits, f| {
            bits | match f {
                EmitFormat::W3c => Self::W3C,
                EmitFormat::B3Single => Self::B3_SINGLE,
                EmitFormat::B3Multi => Self::B3_MULTI,
                #[allow(unreachable_patterns)]
                _ => 0,
            }
        }))
    }

    /// The header families a listener owns: those it reads and those it writes. Requests
    /// lose them before forwarding, so upstreams never see a stale context beside the new one.
    pub fn owned(accept: &[AcceptFormat], emit: &[EmitFormat]) -> Formats {
        let read = accept.iter().fold(0, |bits, f| {
            bits | match f {
                AcceptFormat::W3c => Self::W3C,
                AcceptFormat::B3 => Self::B3_SINGLE | Self::B3_MULTI,
                #[allow(unreachable_patterns)]
                _ => 0,
            }
        });
        let written = Formats::emitted(emit).0;
        // B3's two shapes are one family: writing either replaces both.
        let mut bits = read | written;
        if bits & (Self::B3_SINGLE | Self::B3_MULTI) != 0 {
            bits |= Self::B3_SINGLE | Self::B3_MULTI;
        }
        Formats(bits)
    }

    /// The families of the trace headers a request carries, found in one pass over its
    /// header names (a lookup per name would hash each of seven names).
    pub fn present(headers: &HeaderMap) -> Formats {
        let mut bits = 0;
        for name in headers.keys() {
            bits |= match name.as_str().as_bytes() {
                b"traceparent" | b"tracestate" => Self::W3C,
                b"b3" => Self::B3_SINGLE,
                [b'x', b'-', b'b', b'3', b'-', ..] => Self::B3_MULTI,
                _ => 0,
            };
        }
        Formats(bits)
    }

    fn has(self, bits: u8) -> bool {
        self.0 & bits != 0
    }

    /// True when there is nothing in the set.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

/// Removes the headers of `families` from a request.
/// `present`: the formats whose headers the message carries ([`Formats::present`], found when
/// its context was extracted).
pub fn strip(headers: &mut HeaderMap, families: Formats, present: Formats) {
    let families = Formats(families.0 & present.0);
    if families.has(Formats::W3C) {
        headers.remove(&TRACEPARENT);
        headers.remove(&TRACESTATE);
    }
    if families.has(Formats::B3_SINGLE) {
        headers.remove(&B3);
    }
    if families.has(Formats::B3_MULTI) {
        for name in [
            &X_B3_TRACEID,
            &X_B3_SPANID,
            &X_B3_PARENTSPANID,
            &X_B3_SAMPLED,
            &X_B3_FLAGS,
        ] {
            headers.remove(name);
        }
    }
}

/// A `traceparent` value: `00-{trace}-{span}-{flags}`.
#[derive(Debug, Clone, Copy)]
pub struct TraceparentValue([u8; 55]);

impl TraceparentValue {
    /// The value for `context`.
    pub fn of(context: &SpanContext) -> TraceparentValue {
        let mut v = [b'-'; 55];
        v[..2].copy_from_slice(b"00");
        hex_into(&context.trace_id.0, &mut v[3..35]);
        hex_into(&context.span_id.0, &mut v[36..52]);
        v[53..].copy_from_slice(if context.sampled { b"01" } else { b"00" });
        TraceparentValue(v)
    }

    /// The value's bytes: hex digits and dashes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Writes the value into `headers`, replacing what is there; kept out of HPACK's tables
    /// (each request's is its own).
    pub fn insert_into(&self, headers: &mut HeaderMap) {
        // Hex digits and dashes: always a valid header value.
        if let Some(v) = crate::http::headers::made_unique_value(&self.0) {
            headers.insert(TRACEPARENT.clone(), v);
        }
    }
}

/// Writes `context` in every format of `emit`, replacing what is there; `tracestate` goes with
/// W3C.
pub fn inject(
    headers: &mut HeaderMap,
    emit: Formats,
    context: &SpanContext,
    tracestate: Option<&HeaderValue>,
) {
    if let Some(traceparent) = inject_but_traceparent(headers, emit, context, tracestate) {
        traceparent.insert_into(headers);
    }
}

/// As [`inject`], but the `traceparent` (when `emit` has W3C) is returned rather than written
/// into `headers`: Strait's HTTP/1 client writes it straight into the request head, which
/// costs less than making a header value and inserting it into the map (about 500
/// instructions per request).
pub fn inject_but_traceparent(
    headers: &mut HeaderMap,
    emit: Formats,
    context: &SpanContext,
    tracestate: Option<&HeaderValue>,
) -> Option<TraceparentValue> {
    if emit.has(Formats::B3_SINGLE) || emit.has(Formats::B3_MULTI) {
        inject_b3(headers, emit, context);
    }
    if !emit.has(Formats::W3C) {
        return None;
    }
    // Without a tracestate there is nothing to remove: the request's own went with [`strip`],
    // and an attempt before this one wrote none.
    if let Some(state) = tracestate {
        headers.insert(TRACESTATE.clone(), state.clone());
    }
    Some(TraceparentValue::of(context))
}

/// The B3 headers of [`inject`]. The ids are each request's own, kept out of HPACK's tables;
/// the sampling decision is not.
fn inject_b3(headers: &mut HeaderMap, emit: Formats, context: &SpanContext) {
    let mut put = |name: &HeaderName, parts: &[&[u8]], unique: bool| {
        let mut buf = [0u8; 64];
        let mut len = 0;
        for part in parts {
            let end = len + part.len();
            if let Some(slot) = buf.get_mut(len..end) {
                slot.copy_from_slice(part);
                len = end;
            }
        }
        // Hex digits and dashes: always a valid header value.
        if let Some(mut v) = crate::http::headers::made_value(&buf[..len]) {
            v.set_sensitive(unique);
            headers.insert(name.clone(), v);
        }
    };
    let trace = context.trace_id.to_hex();
    let span = context.span_id.to_hex();
    let b3_decision: &[u8] = match (context.debug, context.sampled) {
        (true, _) => b"d",
        (false, true) => b"1",
        (false, false) => b"0",
    };
    if emit.has(Formats::B3_SINGLE) {
        put(&B3, &[&trace, b"-", &span, b"-", b3_decision], true);
    }
    if emit.has(Formats::B3_MULTI) {
        put(&X_B3_TRACEID, &[&trace], true);
        put(&X_B3_SPANID, &[&span], true);
        if context.debug {
            // Debug implies sampled: B3 sends the flag instead of `x-b3-sampled`.
            put(&X_B3_FLAGS, &[b"1"], false);
        } else {
            put(&X_B3_SAMPLED, &[b3_decision], false);
        }
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Each byte's two hex digits: one lookup per byte instead of two shifts and two lookups.
const HEX_PAIRS: [[u8; 2]; 256] = {
    let mut table = [[0u8; 2]; 256];
    let mut i = 0;
    while i < 256 {
        table[i] = [HEX[i >> 4], HEX[i & 0xf]];
        i += 1;
    }
    table
};

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (byte, pair) in bytes.iter().zip(out.chunks_exact_mut(2)) {
        pair.copy_from_slice(&HEX_PAIRS[usize::from(*byte)]);
    }
}

/// A lower-case hex digit's value.
fn nibble(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(pair: &[u8]) -> Option<u8> {
    match pair {
        [hi, lo] => Some(nibble(*hi)? << 4 | nibble(*lo)?),
        _ => None,
    }
}

/// Decodes exactly `2 * out.len()` lower-case hex digits.
fn hex_decode(hex: &[u8], out: &mut [u8]) -> Option<()> {
    if hex.len() != out.len() * 2 {
        return None;
    }
    for (slot, pair) in out.iter_mut().zip(hex.chunks_exact(2)) {
        *slot = hex_byte(pair)?;
    }
    Some(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests;
