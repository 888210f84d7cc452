use super::*;

const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const SPAN: &str = "00f067aa0ba902b7";

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (k, v) in pairs {
        h.append(
            HeaderName::from_bytes(k.as_bytes()).unwrap(),
            HeaderValue::from_str(v).unwrap(),
        );
    }
    h
}

fn trace_id(hex: &str) -> TraceId {
    let mut id = [0u8; 16];
    hex_decode(hex.as_bytes(), &mut id).unwrap();
    TraceId(id)
}

fn span_id(hex: &str) -> SpanId {
    let mut id = [0u8; 8];
    hex_decode(hex.as_bytes(), &mut id).unwrap();
    SpanId(id)
}

const BOTH: [AcceptFormat; 2] = [AcceptFormat::W3c, AcceptFormat::B3];

// --- W3C traceparent -------------------------------------------------------------------------

#[test]
fn a_valid_traceparent_is_the_parent() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let parsed = parse_traceparent(tp.as_bytes()).unwrap();
    assert_eq!(parsed.version, 0);
    assert_eq!(parsed.trace_id, trace_id(TRACE));
    assert_eq!(parsed.span_id, span_id(SPAN));
    assert_eq!(parsed.flags, 1);
    let got = extract(&headers(&[("traceparent", &tp)]), &BOTH);
    assert_eq!(got.parent, Some((trace_id(TRACE), span_id(SPAN))));
    assert_eq!(got.sampling, Sampling::Sampled);
    let got = extract(
        &headers(&[("traceparent", &format!("00-{TRACE}-{SPAN}-00"))]),
        &BOTH,
    );
    assert_eq!(got.sampling, Sampling::NotSampled);
}

#[test]
fn only_the_sampled_bit_of_the_flags_counts() {
    for (flags, sampled) in [("02", false), ("03", true), ("ff", true), ("fe", false)] {
        let tp = format!("00-{TRACE}-{SPAN}-{flags}");
        let got = extract(&headers(&[("traceparent", &tp)]), &BOTH);
        let want = if sampled {
            Sampling::Sampled
        } else {
            Sampling::NotSampled
        };
        assert_eq!(got.sampling, want, "{tp}");
    }
}

#[test]
fn invalid_traceparents_are_rejected() {
    let bad = [
        // version ff is forbidden
        format!("ff-{TRACE}-{SPAN}-01"),
        // upper-case hex anywhere
        format!("00-{}-{SPAN}-01", TRACE.to_uppercase()),
        format!("00-{TRACE}-{}-01", SPAN.to_uppercase()),
        format!("0A-{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}-0A"),
        // all-zero ids
        format!("00-{}-{SPAN}-01", "0".repeat(32)),
        format!("00-{TRACE}-{}-01", "0".repeat(16)),
        // wrong lengths and separators
        format!("00-{}-{SPAN}-01", &TRACE[1..]),
        format!("00-{TRACE}-{}-01", &SPAN[1..]),
        format!("00-{TRACE}-{SPAN}-1"),
        format!("00_{TRACE}-{SPAN}-01"),
        format!("00-{TRACE}_{SPAN}-01"),
        format!("00-{TRACE}-{SPAN}_01"),
        format!("0-{TRACE}-{SPAN}-01"),
        // version 00 has exactly four fields
        format!("00-{TRACE}-{SPAN}-01-extra"),
        format!("00-{TRACE}-{SPAN}-01-"),
        format!("00-{TRACE}-{SPAN}-010"),
        // not hex
        format!("00-{}g-{SPAN}-01", &TRACE[1..]),
        format!("zz-{TRACE}-{SPAN}-01"),
        String::new(),
        "garbage".to_owned(),
    ];
    for tp in &bad {
        assert_eq!(parse_traceparent(tp.as_bytes()), None, "{tp:?}");
    }
}

#[test]
fn future_versions_are_read_leniently() {
    // A higher version: the first four fields count, more may follow after a dash.
    for tp in [
        format!("01-{TRACE}-{SPAN}-01"),
        format!("01-{TRACE}-{SPAN}-01-what-the-future-holds"),
        format!("cc-{TRACE}-{SPAN}-01-"),
        format!("fe-{TRACE}-{SPAN}-00-x"),
    ] {
        let parsed = parse_traceparent(tp.as_bytes()).unwrap_or_else(|| panic!("{tp}"));
        assert_eq!(parsed.trace_id, trace_id(TRACE), "{tp}");
        assert_eq!(parsed.span_id, span_id(SPAN), "{tp}");
    }
    // ...but only after a dash, and the known fields still follow the rules.
    for tp in [
        format!("01-{TRACE}-{SPAN}-01x"),
        format!("01-{TRACE}-{SPAN}-01.x"),
        format!("01-{TRACE}-{}-01-x", "0".repeat(16)),
        format!("01-{}-{SPAN}-01-x", TRACE.to_uppercase()),
    ] {
        assert_eq!(parse_traceparent(tp.as_bytes()), None, "{tp}");
    }
}

#[test]
fn two_traceparents_start_a_new_trace() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let h = headers(&[
        ("traceparent", &tp),
        ("traceparent", &tp),
        ("tracestate", "a=1"),
    ]);
    assert_eq!(extract(&h, &[AcceptFormat::W3c]), Extracted::NONE);
}

// --- W3C tracestate --------------------------------------------------------------------------

#[test]
fn tracestate_goes_with_a_valid_traceparent_unchanged() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let state = "congo=t61rcWkgMzE, rojo=00f067aa0ba902b7,,tenant@vendor=x";
    let got = extract(
        &headers(&[("traceparent", &tp), ("tracestate", state)]),
        &BOTH,
    );
    assert_eq!(got.tracestate.unwrap(), state);
    // Several lines are one list.
    let got = extract(
        &headers(&[
            ("traceparent", &tp),
            ("tracestate", "a=1"),
            ("tracestate", "b=2"),
        ]),
        &BOTH,
    );
    assert_eq!(got.tracestate.unwrap(), "a=1,b=2");
}

#[test]
fn tracestate_is_dropped_with_an_invalid_traceparent() {
    let tp = format!("ff-{TRACE}-{SPAN}-01");
    let got = extract(
        &headers(&[("traceparent", &tp), ("tracestate", "a=1")]),
        &BOTH,
    );
    assert_eq!(got, Extracted::NONE);
}

#[test]
fn tracestate_rules() {
    let members = |n: usize| {
        (0..n)
            .map(|i| format!("k{i}=v"))
            .collect::<Vec<_>>()
            .join(",")
    };
    assert!(valid_tracestate(members(32).as_bytes()));
    assert!(!valid_tracestate(members(33).as_bytes()), "33 members");
    // Empty members do not count.
    assert!(valid_tracestate(format!("{},,,", members(32)).as_bytes()));
    assert!(valid_tracestate(b""));
    for good in [
        "a=1",
        "a-b_c*d/e=value with spaces",
        "0tenant@sys=v",
        "t@s1-2=v",
        " a=1 , b=2 ",
        "a=~!\"#$%&'()*+-./:;<>?@[\\]^_`{|}",
    ] {
        assert!(valid_tracestate(good.as_bytes()), "{good:?}");
    }
    for bad in [
        "a",
        "=1",
        "A=1",
        "1a=1",
        "a=",
        "a=1=2",
        "a=tab\tinside",
        "a=1,a=2",
        "a@=1",
        "@s=1",
        "t@S=1",
        "t@1s=1",
        "t@abcdefghijklmno=1",
        "a=\u{7f}",
    ] {
        assert!(!valid_tracestate(bad.as_bytes()), "{bad:?}");
    }
    let long_key = format!("a{}=1", "b".repeat(256));
    assert!(!valid_tracestate(long_key.as_bytes()));
    let max_key = format!("a{}=1", "b".repeat(255));
    assert!(valid_tracestate(max_key.as_bytes()));
    let long_value = format!("a={}", "v".repeat(257));
    assert!(!valid_tracestate(long_value.as_bytes()));
}

#[test]
fn an_invalid_tracestate_is_dropped_but_the_parent_kept() {
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let got = extract(
        &headers(&[("traceparent", &tp), ("tracestate", "a=1,a=2")]),
        &BOTH,
    );
    assert_eq!(got.parent, Some((trace_id(TRACE), span_id(SPAN))));
    assert_eq!(got.tracestate, None);
}

// --- B3 --------------------------------------------------------------------------------------

#[test]
fn b3_single_header_shapes() {
    let cases = [
        (format!("{TRACE}-{SPAN}-1"), Sampling::Sampled),
        (format!("{TRACE}-{SPAN}-0"), Sampling::NotSampled),
        (format!("{TRACE}-{SPAN}-d"), Sampling::Debug),
        (format!("{TRACE}-{SPAN}"), Sampling::Deferred),
        (
            format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90"),
            Sampling::Sampled,
        ),
    ];
    for (value, sampling) in cases {
        let got = extract(&headers(&[("b3", &value)]), &[AcceptFormat::B3]);
        assert_eq!(
            got.parent,
            Some((trace_id(TRACE), span_id(SPAN))),
            "{value}"
        );
        assert_eq!(got.sampling, sampling, "{value}");
        assert_eq!(got.tracestate, None);
    }
}

#[test]
fn b3_decisions_without_ids() {
    for (value, sampling) in [
        ("0", Sampling::NotSampled),
        ("1", Sampling::Sampled),
        ("d", Sampling::Debug),
    ] {
        let got = extract(&headers(&[("b3", value)]), &[AcceptFormat::B3]);
        assert_eq!(got.parent, None, "{value}");
        assert_eq!(got.sampling, sampling, "{value}");
    }
    let got = extract(&headers(&[("x-b3-sampled", "0")]), &[AcceptFormat::B3]);
    assert_eq!((got.parent, got.sampling), (None, Sampling::NotSampled));
}

#[test]
fn b3_64_bit_trace_ids_are_the_low_half() {
    let got = extract(
        &headers(&[("b3", &format!("a3ce929d0e0e4736-{SPAN}-1"))]),
        &[AcceptFormat::B3],
    );
    assert_eq!(
        got.parent.unwrap().0,
        trace_id("0000000000000000a3ce929d0e0e4736")
    );
}

#[test]
fn invalid_b3_single_headers() {
    for bad in [
        format!("{}-{SPAN}-1", TRACE.to_uppercase()),
        format!("{}-{SPAN}-1", "0".repeat(32)),
        format!("{TRACE}-{}-1", "0".repeat(16)),
        format!("{}-{SPAN}-1", &TRACE[2..]),
        format!("{TRACE}-{SPAN}-2"),
        format!("{TRACE}-{SPAN}-true"),
        format!("{TRACE}-{SPAN}-1-bad"),
        format!("{TRACE}-{SPAN}-1-05e3ac9a4f6e3b90-more"),
        TRACE.to_owned(),
        "x".to_owned(),
        String::new(),
    ] {
        assert_eq!(parse_b3_single(bad.as_bytes()), None, "{bad:?}");
    }
}

#[test]
fn b3_multi_headers() {
    let h = headers(&[
        ("X-B3-TraceId", TRACE),
        ("X-B3-SpanId", SPAN),
        ("X-B3-ParentSpanId", "05e3ac9a4f6e3b90"),
        ("X-B3-Sampled", "1"),
    ]);
    let got = extract(&h, &[AcceptFormat::B3]);
    assert_eq!(got.parent, Some((trace_id(TRACE), span_id(SPAN))));
    assert_eq!(got.sampling, Sampling::Sampled);
    let cases: [(&[(&str, &str)], Sampling); 5] = [
        (&[("x-b3-sampled", "0")], Sampling::NotSampled),
        (&[("x-b3-sampled", "true")], Sampling::Sampled),
        (&[("x-b3-sampled", "false")], Sampling::NotSampled),
        (&[("x-b3-flags", "1")], Sampling::Debug),
        (&[], Sampling::Deferred),
    ];
    for (extra, sampling) in cases {
        let mut pairs = vec![("x-b3-traceid", "a3ce929d0e0e4736"), ("x-b3-spanid", SPAN)];
        pairs.extend_from_slice(extra);
        let got = extract(&headers(&pairs), &[AcceptFormat::B3]);
        assert_eq!(got.sampling, sampling, "{extra:?}");
        assert!(got.parent.is_some());
    }
    // Half the ids, or a bad one: nothing.
    for pairs in [
        &[("x-b3-traceid", TRACE)][..],
        &[("x-b3-spanid", SPAN)],
        &[("x-b3-traceid", "xyz"), ("x-b3-spanid", SPAN)],
        &[("x-b3-traceid", TRACE), ("x-b3-spanid", "0000000000000000")],
    ] {
        assert_eq!(
            extract(&headers(pairs), &[AcceptFormat::B3]),
            Extracted::NONE
        );
    }
}

#[test]
fn a_bad_single_header_falls_back_to_the_multi_headers() {
    let h = headers(&[
        ("b3", "nonsense"),
        ("x-b3-traceid", TRACE),
        ("x-b3-spanid", SPAN),
    ]);
    assert!(extract(&h, &[AcceptFormat::B3]).parent.is_some());
}

// --- choosing among formats ------------------------------------------------------------------

#[test]
fn accepted_formats_are_tried_in_order() {
    let other = "11111111111111111111111111111111";
    let h = headers(&[
        ("traceparent", &format!("00-{TRACE}-{SPAN}-01")),
        ("b3", &format!("{other}-{SPAN}-0")),
    ]);
    assert_eq!(extract(&h, &BOTH).parent.unwrap().0, trace_id(TRACE));
    let b3_first = [AcceptFormat::B3, AcceptFormat::W3c];
    let got = extract(&h, &b3_first);
    assert_eq!(got.parent.unwrap().0, trace_id(other));
    assert_eq!(got.sampling, Sampling::NotSampled);
    // Not accepted, not read.
    assert_eq!(extract(&h, &[]), Extracted::NONE);
    let only_b3 = headers(&[("b3", &format!("{other}-{SPAN}-1"))]);
    assert_eq!(extract(&only_b3, &[AcceptFormat::W3c]), Extracted::NONE);
    // An invalid first format falls through to the next.
    let h = headers(&[
        ("traceparent", "00-garbage"),
        ("b3", &format!("{other}-{SPAN}-1")),
    ]);
    assert_eq!(extract(&h, &BOTH).parent.unwrap().0, trace_id(other));
}

// --- sampling --------------------------------------------------------------------------------

#[test]
fn the_parents_decision_wins_over_the_ratio() {
    let id = TraceId::random();
    let never = Sampler::ratio(0.0);
    let always = Sampler::ratio(100.0);
    assert!(never.sampled(Sampling::Sampled, id));
    assert!(never.sampled(Sampling::Debug, id));
    assert!(!always.sampled(Sampling::NotSampled, id));
    assert!(always.sampled(Sampling::Deferred, id));
    assert!(!never.sampled(Sampling::Deferred, id));
}

#[test]
fn the_ratio_samples_its_share_of_trace_ids() {
    let sampler = Sampler::ratio(10.0);
    let n = 100_000;
    let hits = (0..n)
        .filter(|_| sampler.sampled(Sampling::Deferred, TraceId::random()))
        .count();
    assert!((9_000..11_000).contains(&hits), "{hits} of {n}");
    // The draw is on the trace id: the same trace gets the same answer everywhere.
    let id = TraceId::random();
    let first = sampler.sampled(Sampling::Deferred, id);
    assert!((0..100).all(|_| sampler.sampled(Sampling::Deferred, id) == first));
}

#[test]
fn a_request_continues_its_callers_trace_or_starts_one() {
    let sampler = Sampler::ratio(0.0);
    let tp = format!("00-{TRACE}-{SPAN}-01");
    let started = start(extract(&headers(&[("traceparent", &tp)]), &BOTH), &sampler);
    assert_eq!(started.context.trace_id, trace_id(TRACE));
    assert_eq!(started.parent, Some(span_id(SPAN)));
    assert_ne!(started.context.span_id, span_id(SPAN));
    assert!(started.context.sampled);

    let fresh = start(Extracted::NONE, &Sampler::ratio(100.0));
    assert_eq!(fresh.parent, None);
    assert!(fresh.context.sampled);
    assert_ne!(fresh.context.trace_id, TraceId([0; 16]));
    assert_ne!(fresh.context.span_id, SpanId([0; 8]));

    let denied = start(
        extract(&headers(&[("b3", "0")]), &BOTH),
        &Sampler::ratio(100.0),
    );
    assert_eq!(denied.parent, None);
    assert!(!denied.context.sampled);
    let debug = start(extract(&headers(&[("b3", "d")]), &BOTH), &sampler);
    assert!(debug.context.sampled && debug.context.debug);
}

// --- writing ---------------------------------------------------------------------------------

fn context(sampled: bool, debug: bool) -> SpanContext {
    SpanContext {
        trace_id: trace_id(TRACE),
        span_id: span_id(SPAN),
        sampled,
        debug,
    }
}

#[test]
fn injected_headers_in_every_format() {
    let all = Formats::emitted(&[EmitFormat::W3c, EmitFormat::B3Single, EmitFormat::B3Multi]);
    let state = HeaderValue::from_static("a=1");
    let mut h = HeaderMap::new();
    inject(&mut h, all, &context(true, false), Some(&state));
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-01"));
    assert_eq!(h["tracestate"], "a=1");
    assert_eq!(h["b3"], format!("{TRACE}-{SPAN}-1"));
    assert_eq!(h["x-b3-traceid"], TRACE);
    assert_eq!(h["x-b3-spanid"], SPAN);
    assert_eq!(h["x-b3-sampled"], "1");
    assert!(!h.contains_key("x-b3-flags"));
    // Each request's ids are kept out of HPACK's tables; the decision and the state are not.
    for name in ["traceparent", "b3", "x-b3-traceid", "x-b3-spanid"] {
        assert!(h[name].is_sensitive(), "{name}");
    }
    for name in ["tracestate", "x-b3-sampled"] {
        assert!(!h[name].is_sensitive(), "{name}");
    }

    let mut h = HeaderMap::new();
    inject(&mut h, all, &context(false, false), None);
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-00"));
    assert_eq!(h["b3"], format!("{TRACE}-{SPAN}-0"));
    assert_eq!(h["x-b3-sampled"], "0");
    assert!(!h.contains_key("tracestate"));

    let mut h = HeaderMap::new();
    inject(&mut h, all, &context(true, true), None);
    assert_eq!(h["b3"], format!("{TRACE}-{SPAN}-d"));
    assert_eq!(h["x-b3-flags"], "1");
    assert!(!h.contains_key("x-b3-sampled"));
    assert_eq!(h["traceparent"], format!("00-{TRACE}-{SPAN}-01"));
}

#[test]
fn what_is_written_reads_back_the_same() {
    for emit in [EmitFormat::W3c, EmitFormat::B3Single, EmitFormat::B3Multi] {
        for (sampled, debug) in [(true, false), (false, false), (true, true)] {
            let mut h = HeaderMap::new();
            let ctx = context(sampled, debug);
            inject(&mut h, Formats::emitted(&[emit]), &ctx, None);
            let got = extract(&h, &BOTH);
            assert_eq!(got.parent, Some((ctx.trace_id, ctx.span_id)), "{emit:?}");
            let started = start(got, &Sampler::ratio(50.0));
            assert_eq!(started.context.sampled, sampled, "{emit:?}");
            if emit != EmitFormat::W3c {
                assert_eq!(started.context.debug, debug, "{emit:?}");
            }
        }
    }
}

#[test]
fn owned_families_are_stripped_and_others_kept() {
    let all = [
        ("traceparent", "x"),
        ("tracestate", "x"),
        ("b3", "x"),
        ("x-b3-traceid", "x"),
        ("x-b3-spanid", "x"),
        ("x-b3-parentspanid", "x"),
        ("x-b3-sampled", "x"),
        ("x-b3-flags", "x"),
        ("x-other", "x"),
    ];
    let mut h = headers(&all);
    let present = Formats::present(&h);
    strip(
        &mut h,
        Formats::owned(&[AcceptFormat::W3c], &[EmitFormat::W3c]),
        present,
    );
    assert!(!h.contains_key("traceparent") && !h.contains_key("tracestate"));
    assert!(h.contains_key("b3") && h.contains_key("x-b3-traceid"));

    let mut h = headers(&all);
    strip(
        &mut h,
        Formats::owned(&[], &[EmitFormat::B3Single]),
        present,
    );
    assert!(h.contains_key("traceparent"));
    assert!(!h.contains_key("b3") && !h.contains_key("x-b3-flags"));

    let mut h = headers(&all);
    strip(&mut h, Formats::owned(&BOTH, &[]), present);
    assert_eq!(h.len(), 1);
    assert!(Formats::owned(&[], &[]).is_empty());
}

#[test]
fn replacing_a_context_leaves_no_stale_header() {
    let mut h = headers(&[
        ("traceparent", "00-old"),
        ("tracestate", "old=1"),
        ("x-b3-flags", "1"),
    ]);
    let present = Formats::present(&h);
    strip(
        &mut h,
        Formats::owned(&BOTH, &[EmitFormat::W3c, EmitFormat::B3Multi]),
        present,
    );
    let emit = Formats::emitted(&[EmitFormat::W3c, EmitFormat::B3Multi]);
    inject(&mut h, emit, &context(true, false), None);
    assert_eq!(h.get_all("traceparent").iter().count(), 1);
    assert!(!h.contains_key("tracestate"));
    assert!(!h.contains_key("x-b3-flags"));
}

#[test]
fn ids_print_as_lower_hex() {
    assert_eq!(trace_id(TRACE).to_string(), TRACE);
    assert_eq!(span_id(SPAN).to_string(), SPAN);
    assert_ne!(TraceId::random(), TraceId::random());
    assert_ne!(SpanId::random(), SpanId::random());
}

#[test]
fn present_finds_each_family_by_its_names() {
    let of = |pairs: &[(&str, &str)]| Formats::present(&headers(pairs));
    assert!(of(&[("host", "a"), ("user-agent", "x")]).is_empty());
    assert_eq!(of(&[("traceparent", "x")]), Formats(Formats::W3C));
    assert_eq!(of(&[("tracestate", "x")]), Formats(Formats::W3C));
    assert_eq!(of(&[("b3", "1")]), Formats(Formats::B3_SINGLE));
    assert_eq!(of(&[("x-b3-sampled", "1")]), Formats(Formats::B3_MULTI));
    assert_eq!(
        of(&[("b3", "1"), ("traceparent", "x"), ("x-b3-traceid", "y")]),
        Formats(Formats::W3C | Formats::B3_SINGLE | Formats::B3_MULTI)
    );
    // Near misses are not trace headers.
    assert!(of(&[("b33", "1"), ("x-b3", "1"), ("traceparents", "x")]).is_empty());
}
