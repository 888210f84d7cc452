//! Fuzzes the hand-written HTTP/1 head parser (`http/head1.rs`, which reads every request from
//! a client and every answer from an upstream) against `httparse`, the parser it replaced: for
//! any bytes, read as a request head and as a response head, both accept the same heads with
//! the same parts, or both refuse them (one may wait for more bytes, or count too many fields,
//! where the other has already refused). A head one accepts and the other reads differently is
//! how requests are smuggled past a proxy.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::http::check_heads_against_httparse;

fuzz_target!(|data: &[u8]| {
    check_heads_against_httparse(data);
});
