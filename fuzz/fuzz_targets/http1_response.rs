//! Fuzzes the reading of HTTP/1 response heads from upstreams. The client reads a head two
//! ways: its fields built into a map, or kept as they came and copied to an HTTP/1 client. For
//! any bytes both must refuse the head, or read the same status, framing, keep-alive, announced
//! idle timeout and fields; and the lines written from a kept head must read back as the same
//! fields. A head one way reads differently from the other is a head passed on unchecked.
//!
//! Start it from the seed heads (without them libFuzzer does not get past the status line's
//! version, which is compared eight bytes at a time):
//!   cargo +nightly fuzz run http1_response fuzz/corpus/http1_response fuzz/seeds/http1_response

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::http::client1::check_response_heads;

fuzz_target!(|data: &[u8]| {
    check_response_heads(data);
});
