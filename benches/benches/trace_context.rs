//! Trace context on the request path: what every request of a traced listener pays (reading
//! its headers, the sampling decision, writing the emitted ones) with and without an incoming
//! context, and with W3C and B3.
//!
//! `cargo bench -p strait-benches --bench trace_context`

use criterion::{black_box, criterion_group, criterion_main, Criterion};
use http::{HeaderMap, HeaderValue};
use strait_config::{AcceptFormat, EmitFormat};
use strait_proxy::telemetry::trace_context::{
    extract_present, inject, start, strip, Formats, Sampler, SpanContext, SpanId,
};

const ACCEPT: [AcceptFormat; 2] = [AcceptFormat::W3c, AcceptFormat::B3];

fn request(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in [
        ("host", "api.example.com"),
        ("user-agent", "bench/1"),
        ("accept", "*/*"),
        ("x-request-id", "0123456789abcdef0123456789abcdef"),
    ]
    .iter()
    .chain(pairs)
    {
        h.insert(*k, HeaderValue::from_static(v));
    }
    h
}

/// What a traced listener does per request: extract, decide, and for one attempt strip and
/// inject.
fn per_request(headers: &HeaderMap, emit: &[EmitFormat], sampler: &Sampler) -> HeaderMap {
    let present = Formats::present(headers);
    let started = start(extract_present(headers, &ACCEPT, present), sampler);
    let mut upstream = headers.clone();
    strip(&mut upstream, Formats::owned(&ACCEPT, emit), present);
    let attempt = SpanContext {
        span_id: SpanId::random(),
        ..started.context
    };
    inject(
        &mut upstream,
        Formats::emitted(emit),
        &attempt,
        started.tracestate.as_ref(),
    );
    upstream
}

fn propagation(c: &mut Criterion) {
    let mut group = c.benchmark_group("trace_context");
    let sampler = Sampler::ratio(10.0);
    let w3c = [EmitFormat::W3c];
    let cases = [
        ("no_context", request(&[])),
        (
            "w3c",
            request(&[
                (
                    "traceparent",
                    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                ),
                ("tracestate", "congo=t61rcWkgMzE,rojo=00f067aa0ba902b7"),
            ]),
        ),
        (
            "b3_single",
            request(&[("b3", "4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-1")]),
        ),
    ];
    // The baseline: cloning the headers, which the proxy does not do; subtract it.
    group.bench_function("clone_headers_only", |b| {
        b.iter(|| black_box(cases[0].1.clone()))
    });
    for (name, headers) in &cases {
        group.bench_function(*name, |b| {
            b.iter(|| black_box(per_request(black_box(headers), &w3c, &sampler)))
        });
    }
    let all = [EmitFormat::W3c, EmitFormat::B3Single, EmitFormat::B3Multi];
    group.bench_function("w3c_in_every_format_out", |b| {
        b.iter(|| black_box(per_request(black_box(&cases[1].1), &all, &sampler)))
    });
    group.finish();
}

criterion_group!(benches, propagation);
criterion_main!(benches);
