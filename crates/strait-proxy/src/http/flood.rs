//! A budget for the HTTP/2 frames a client sends that open no request and carry no data.
//!
//! h2 answers every `PING` and `SETTINGS`, and takes every `PRIORITY`, `WINDOW_UPDATE`,
//! `RST_STREAM` and unknown frame, without end: a client sending nothing else kept a worker
//! 9-28 % busy per connection (the last probe), while nginx closes such a connection. h2 has no
//! hook for it, so the HTTP/2 server's reads pass through a [`FrameMeter`] that follows the
//! frame headers in the byte stream (payloads are skipped, not read) and charges one token for
//! each such frame. A connection starts with [`BURST`] tokens and earns more by being used:
//! [`PER_STREAM`] for each `HEADERS` frame, one for each 256 bytes written to it (the client's
//! `WINDOW_UPDATE`s follow what it is sent) and [`PER_SECOND`] with time, so a client's
//! keep-alive pings never run out. One that does run out is sent a `GOAWAY` with
//! `ENHANCE_YOUR_CALM` ([`goaway`]) and closed, and counted in
//! `strait_listener_http2_floods_total`. Envoy bounds the same frames by similar ratios
//! (`max_inbound_priority_frames_per_stream`, `max_inbound_window_update_frames_per_data_frame_sent`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::telemetry::metrics::ListenerStats;

/// Tokens a connection starts with, and the most it keeps.
pub(crate) const BURST: u32 = 10_000;
/// Tokens earned by each `HEADERS` frame: the `PRIORITY`, `RST_STREAM` and `WINDOW_UPDATE`
/// frames a stream may bring.
pub(crate) const PER_STREAM: u32 = 10;
/// Tokens earned each second.
pub(crate) const PER_SECOND: u32 = 100;
/// Bytes written to the client that earn one token.
const WRITTEN_PER_TOKEN: u32 = 256;

/// The connection preface a client opens with, skipped before the first frame header.
const PREFACE_LEN: u32 = 24;
const FRAME_HEADER_LEN: usize = 9;

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;

/// Follows the frames of one client connection and keeps its budget.
#[derive(Debug)]
pub(crate) struct FrameMeter {
    /// Bytes of the current frame's payload (or the preface) still to come.
    skip: u32,
    /// The next frame header, as far as it came.
    head: [u8; FRAME_HEADER_LEN],
    have: u8,
    tokens: u32,
    /// The highest stream a `HEADERS` frame opened: the last a `GOAWAY` says may have been
    /// acted on.
    last_stream: u32,
    /// Bytes written that earned no token yet.
    written: u32,
    /// Up to when time has been paid in tokens.
    paid_until: Instant,
    stats: Option<Arc<ListenerStats>>,
}

/// A client that ran out of tokens.
#[derive(Debug)]
pub(crate) struct Flood {
    /// The type of the frame it could not pay for.
    kind: u8,
}

impl std::fmt::Display for Flood {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "HTTP/2 flood: too many frames that open no request and carry no data (the last of type {:#x}); connection closed",
            self.kind
        )
    }
}

impl std::error::Error for Flood {}

impl FrameMeter {
    /// A meter for a connection about to send its preface; floods are counted in `stats`.
    pub(crate) fn new(stats: Option<Arc<ListenerStats>>) -> Self {
        FrameMeter {
            skip: PREFACE_LEN,
            head: [0; FRAME_HEADER_LEN],
            have: 0,
            tokens: BURST,
            last_stream: 0,
            written: 0,
            paid_until: Instant::now(),
            stats,
        }
    }

    /// Follows the frames in `bytes`, the next ones the client sent.
    pub(crate) fn read(&mut self, mut bytes: &[u8]) -> Result<(), Flood> {
        loop {
            if self.skip > 0 {
                let n = bytes.len().min(self.skip as usize);
                self.skip -= n as u32;
                bytes = &bytes[n..];
            }
            if bytes.is_empty() {
                return Ok(());
            }
            let head = match bytes.split_first_chunk::<FRAME_HEADER_LEN>() {
                Some((head, rest)) if self.have == 0 => {
                    bytes = rest;
                    *head
                }
                _ => {
                    let at = self.have as usize;
                    let n = bytes.len().min(FRAME_HEADER_LEN - at);
                    self.head[at..at + n].copy_from_slice(&bytes[..n]);
                    bytes = &bytes[n..];
                    self.have += n as u8;
                    if (self.have as usize) < FRAME_HEADER_LEN {
                        return Ok(());
                    }
                    self.have = 0;
                    self.head
                }
            };
            let len = u32::from_be_bytes([0, head[0], head[1], head[2]]);
            self.skip = len;
            match head[3] {
                DATA if len > 0 => {}
                CONTINUATION => {}
                HEADERS => {
                    self.tokens = (self.tokens + PER_STREAM).min(BURST);
                    let id = u32::from_be_bytes([head[5], head[6], head[7], head[8]]);
                    self.last_stream = self.last_stream.max(id & 0x7fff_ffff);
                }
                kind => self.spend(kind)?,
            }
        }
    }

    /// Credits `n` bytes written to the client.
    pub(crate) fn wrote(&mut self, n: usize) {
        let written = self.written as usize + n;
        let earned = (written / WRITTEN_PER_TOKEN as usize).min(BURST as usize) as u32;
        self.written = (written % WRITTEN_PER_TOKEN as usize) as u32;
        self.tokens = (self.tokens + earned).min(BURST);
    }

    fn spend(&mut self, kind: u8) -> Result<(), Flood> {
        if self.tokens == 0 {
            // Only a spent budget reads the clock.
            let now = Instant::now();
            let tick = Duration::from_secs(1) / PER_SECOND;
            let earned = now.duration_since(self.paid_until).as_nanos() / tick.as_nanos();
            let earned = earned.min(u128::from(BURST)) as u32;
            self.paid_until = if earned == BURST {
                now
            } else {
                self.paid_until + tick * earned
            };
            self.tokens = earned;
        }
        match self.tokens.checked_sub(1) {
            Some(left) => {
                self.tokens = left;
                Ok(())
            }
            None => {
                if let Some(stats) = &self.stats {
                    stats.http2_flooded();
                }
                Err(Flood { kind })
            }
        }
    }
}

/// The `GOAWAY` frame a flooding client is sent before its connection closes: no stream after
/// the last one it opened was acted on, and the error is `ENHANCE_YOUR_CALM` (RFC 9113 5.4.1,
/// as nginx and Envoy send for floods).
pub(crate) fn goaway(meter: &FrameMeter) -> [u8; FRAME_HEADER_LEN + 8] {
    const GOAWAY: u8 = 0x7;
    const ENHANCE_YOUR_CALM: u32 = 0xb;
    let mut frame = [0u8; FRAME_HEADER_LEN + 8];
    frame[2] = 8;
    frame[3] = GOAWAY;
    frame[9..13].copy_from_slice(&meter.last_stream.to_be_bytes());
    frame[13..].copy_from_slice(&ENHANCE_YOUR_CALM.to_be_bytes());
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

    fn frame(kind: u8, payload: &[u8]) -> Vec<u8> {
        let len = (payload.len() as u32).to_be_bytes();
        let mut f = vec![len[1], len[2], len[3], kind, 0, 0, 0, 0, 1];
        f.extend_from_slice(payload);
        f
    }

    const PING: u8 = 0x6;

    #[test]
    fn data_and_requests_cost_nothing_and_pings_cost_one() {
        let mut meter = FrameMeter::new(None);
        meter.read(PREFACE).expect("paid");
        meter.read(&frame(HEADERS, &[0x82; 20])).expect("paid");
        meter.read(&frame(CONTINUATION, &[0x84; 3])).expect("paid");
        meter.read(&frame(DATA, &[7; 100])).expect("paid");
        assert_eq!(meter.tokens, BURST);
        meter.read(&frame(PING, &[0; 8])).expect("paid");
        meter.read(&frame(DATA, &[])).expect("paid");
        assert_eq!(meter.tokens, BURST - 2);
    }

    #[test]
    fn frames_split_anywhere_are_followed() {
        let mut stream = PREFACE.to_vec();
        for _ in 0..3 {
            stream.extend(frame(DATA, &[1; 40]));
            stream.extend(frame(PING, &[0; 8]));
            stream.extend(frame(HEADERS, &[0x82; 5]));
        }
        for size in 1..stream.len() {
            let mut meter = FrameMeter::new(None);
            meter.tokens = 100;
            for chunk in stream.chunks(size) {
                meter.read(chunk).expect("paid");
            }
            // Three pings paid, three streams earned.
            assert_eq!(meter.tokens, 100 - 3 + 3 * PER_STREAM, "chunks of {size}");
            assert_eq!((meter.skip, meter.have), (0, 0));
        }
    }

    #[test]
    fn a_ping_flood_runs_out_and_is_counted() {
        let stats = Arc::new(ListenerStats::default());
        let mut meter = FrameMeter::new(Some(Arc::clone(&stats)));
        meter.read(PREFACE).expect("paid");
        let ping = frame(PING, &[0; 8]);
        let pings: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 1000)
            .collect();
        let mut sent = 0;
        let flood = loop {
            match meter.read(&pings) {
                Ok(()) => sent += 1000,
                Err(flood) => break flood,
            }
            assert!(sent <= 2 * BURST, "never ran out");
        };
        assert_eq!(flood.kind, PING);
        assert!(sent >= BURST - 1000, "ran out after {sent}");
        assert_eq!(stats.http2_floods(), 1);
    }

    #[test]
    fn the_goaway_names_the_last_stream_opened() {
        let mut meter = FrameMeter::new(None);
        meter.read(PREFACE).expect("paid");
        for id in [1u32, 7, 3] {
            let mut headers = frame(HEADERS, &[0x82; 4]);
            headers[5..9].copy_from_slice(&id.to_be_bytes());
            meter.read(&headers).expect("paid");
        }
        let goaway = goaway(&meter);
        // Length 8, type GOAWAY, no flags, stream 0; last stream 7; ENHANCE_YOUR_CALM.
        assert_eq!(goaway[..9], [0, 0, 8, 7, 0, 0, 0, 0, 0]);
        assert_eq!(goaway[9..], [0, 0, 0, 7, 0, 0, 0, 0xb]);
    }

    #[test]
    fn writing_to_the_client_and_time_earn_tokens() {
        let mut meter = FrameMeter::new(None);
        meter.tokens = 0;
        meter.wrote(250);
        assert_eq!(meter.tokens, 0);
        // The 250 bytes carried over count.
        meter.wrote(3 * 256 + 6);
        assert_eq!(meter.tokens, 4);
        meter.wrote(usize::MAX / 2);
        assert_eq!(meter.tokens, BURST);
        // A spent budget is paid for the time since it was last paid.
        meter.tokens = 0;
        meter.paid_until = Instant::now() - Duration::from_secs(2);
        meter.read(PREFACE).expect("paid");
        meter.read(&frame(PING, &[0; 8])).expect("paid");
        assert!(
            (2 * PER_SECOND - 1..=2 * PER_SECOND + 1).contains(&meter.tokens),
            "{}",
            meter.tokens
        );
    }
}
