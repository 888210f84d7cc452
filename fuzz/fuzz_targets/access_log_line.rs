//! Fuzzes the access log's line writers (`telemetry/access_log.rs`: hand-written JSON, with
//! eight-bytes-at-a-time scans for what to escape and per-thread caches of names, addresses and
//! the second's date). Most of a line is what a client sent: its method, host, path and request
//! id. A line that is not one line of JSON lets a client forge log records.
//!
//! Checks that, for any entry, the default line and a line of fuzzer-chosen fields are each one
//! line of JSON (no raw control character), an object whose keys are the fields in order, and
//! whose values are what the entry holds, as `serde_json` reads them: strings exactly, numbers,
//! the date as `httpdate` writes it, addresses as `std` does.
//!
//! The input is read as a sequence of numbers and length-prefixed byte strings. Run with
//! `cargo +nightly fuzz run access_log_line` in `fuzz/`.

#![no_main]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use strait_proxy::telemetry::access_log::differential::{check, Sample};

/// The last second `httpdate` writes: 9999-12-31T23:59:59Z.
const LAST_SECOND: u64 = 253_402_300_799;

/// Reads the input from the front; past its end, zeros and empty strings.
struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn bytes(&mut self, n: usize) -> &'a [u8] {
        let (taken, rest) = self.0.split_at(n.min(self.0.len()));
        self.0 = rest;
        taken
    }
    fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    fn u64(&mut self) -> u64 {
        let mut word = [0u8; 8];
        let taken = self.bytes(8);
        word[..taken.len()].copy_from_slice(taken);
        u64::from_le_bytes(word)
    }
    /// A string of up to 255 bytes (its length first).
    fn string(&mut self) -> &'a [u8] {
        let n = usize::from(self.u8());
        self.bytes(n)
    }
    /// A string, or none when the flag's bit is clear.
    fn maybe(&mut self, flags: u16, bit: u16) -> Option<&'a [u8]> {
        let s = self.string();
        (flags & bit != 0).then_some(s)
    }
    fn text(&mut self) -> &'a str {
        let s = self.string();
        std::str::from_utf8(s).unwrap_or("not UTF-8")
    }
    /// Text, or none when the flag's bit is clear.
    fn maybe_text(&mut self, flags: u16, bit: u16) -> Option<&'a str> {
        let s = self.text();
        (flags & bit != 0).then_some(s)
    }
    fn ip(&mut self) -> IpAddr {
        let kind = self.u8();
        let raw = self.bytes(16);
        let mut octets = [0u8; 16];
        octets[..raw.len()].copy_from_slice(raw);
        if kind & 1 == 0 {
            IpAddr::V4(Ipv4Addr::new(octets[0], octets[1], octets[2], octets[3]))
        } else {
            IpAddr::V6(Ipv6Addr::from(octets))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = u16::from(input.u8()) | u16::from(input.u8()) << 8;
    let method = input.string();
    let authority = input.maybe(flags, 1);
    let path = input.maybe(flags, 2);
    let request_id = input.maybe(flags, 4);
    let version = input.u8();
    let listener = input.text();
    let route = input.maybe_text(flags, 8);
    let cluster = input.maybe_text(flags, 16);
    let peer_identity = input.maybe_text(flags, 32);
    let response_flags = input.text();
    let endpoint_ip = input.ip();
    let port = input.u64() as u16;
    let endpoint = (flags & 64 != 0).then_some(SocketAddr::new(endpoint_ip, port));
    let client_ip = input.ip();
    let status = input.u64() as u16;
    let grpc_status = (flags & 128 != 0).then_some(input.u64() as u16);
    let bytes_received = input.u64();
    let bytes_sent = input.u64();
    let duration = Duration::new(input.u64(), (input.u64() % 1_000_000_000) as u32);
    let upstream = Duration::new(input.u64(), (input.u64() % 1_000_000_000) as u32);
    let upstream_duration = (flags & 256 != 0).then_some(upstream);
    let retries = input.u64() as u32;
    let mut trace = [0u8; 16];
    let raw = input.bytes(16);
    trace[..raw.len()].copy_from_slice(raw);
    let trace_id = (flags & 512 != 0).then_some(trace);
    let arrived = Duration::from_millis(input.u64() % ((LAST_SECOND + 1) * 1_000))
        + Duration::from_nanos(input.u64() % 1_000_000);
    let fields = input.string();
    check(&Sample {
        method,
        authority,
        path,
        version,
        listener,
        route,
        cluster,
        endpoint,
        client_ip,
        status,
        grpc_status,
        bytes_received,
        bytes_sent,
        duration,
        upstream_duration,
        retries,
        peer_identity,
        request_id,
        trace_id,
        flags: response_flags,
        arrived,
        fields,
    });
});
