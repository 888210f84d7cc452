//! Fuzzes trace context handling, which reads headers every client controls on every request
//! of a traced listener: `traceparent`, `tracestate` and the B3 headers as hostile as a peer
//! can make them, read in both orders of formats.
//!
//! Checks that nothing panics; that whatever is read, the context the proxy writes is valid
//! (one `traceparent` that parses, non-zero ids) and keeps the caller's trace when there was
//! one; that a `tracestate` passed on is valid and only goes with a valid `traceparent`; and
//! that stripping then injecting leaves exactly one header of each emitted kind.

#![no_main]

use http::{HeaderMap, HeaderName, HeaderValue};
use libfuzzer_sys::fuzz_target;
use strait_config::{AcceptFormat, EmitFormat};
use strait_proxy::telemetry::trace_context::{
    extract, inject, parse_traceparent, start, strip, valid_tracestate, Formats, Sampler, SpanId,
};

const NAMES: [&str; 8] = [
    "traceparent",
    "tracestate",
    "b3",
    "x-b3-traceid",
    "x-b3-spanid",
    "x-b3-parentspanid",
    "x-b3-sampled",
    "x-b3-flags",
];

fuzz_target!(|data: &[u8]| {
    let Some((&control, rest)) = data.split_first() else {
        return;
    };
    // Each chunk is one header line: its first byte picks the name.
    let mut headers = HeaderMap::new();
    for chunk in rest.split(|&b| b == b'\n') {
        let Some((&pick, value)) = chunk.split_first() else {
            continue;
        };
        let name = HeaderName::from_static(NAMES[usize::from(pick) % NAMES.len()]);
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(name, value);
        }
    }
    let accept: &[AcceptFormat] = match control % 3 {
        0 => &[AcceptFormat::W3c, AcceptFormat::B3],
        1 => &[AcceptFormat::B3, AcceptFormat::W3c],
        _ => &[],
    };
    let extracted = extract(&headers, accept);
    if let Some(state) = &extracted.tracestate {
        assert!(valid_tracestate(state.as_bytes()));
        let parents = headers.get_all("traceparent").iter().collect::<Vec<_>>();
        assert_eq!(parents.len(), 1, "tracestate only with one traceparent");
        assert!(parse_traceparent(parents[0].as_bytes()).is_some());
    }
    let caller = extracted.parent;
    let started = start(extracted, &Sampler::ratio(f64::from(control) / 2.55));
    if let Some((trace, span)) = caller {
        assert_eq!(started.context.trace_id, trace);
        assert_eq!(started.parent, Some(span));
    }
    assert_ne!(started.context.trace_id.0, [0; 16]);
    assert_ne!(started.context.span_id, SpanId([0; 8]));

    let emit = [EmitFormat::W3c, EmitFormat::B3Single, EmitFormat::B3Multi];
    let present = Formats::present(&headers);
    strip(&mut headers, Formats::owned(accept, &emit), present);
    inject(
        &mut headers,
        Formats::emitted(&emit),
        &started.context,
        started.tracestate.as_ref(),
    );
    for name in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"] {
        assert_eq!(headers.get_all(name).iter().count(), 1, "{name}");
    }
    let written = headers
        .get("traceparent")
        .and_then(|v| parse_traceparent(v.as_bytes()));
    assert_eq!(
        written.map(|t| (t.trace_id, t.span_id)),
        Some((started.context.trace_id, started.context.span_id))
    );
});
