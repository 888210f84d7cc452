//! Fuzzes the reading of HTTP/1 requests from clients: the request head and a chunked body
//! both come from the network, so any byte may be hostile. Checks that nothing panics, that an
//! accepted head ends where a head ends, that a refused one gets one of the statuses the server
//! answers with, and that a decoded chunked body is never longer than its encoding.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::http::inbuf::decode_chunked;
use strait_proxy::http::server1::check_request_head;

fuzz_target!(|data: &[u8]| {
    match check_request_head(data) {
        Ok(Some(len)) => {
            let head = data.get(..len).expect("a head within the bytes");
            assert!(
                head.ends_with(b"\n\n") || head.ends_with(b"\n\r\n"),
                "a head ends with an empty line"
            );
        }
        Ok(None) => {}
        Err(status) => assert!(
            matches!(status.as_u16(), 400 | 431 | 501),
            "unexpected status {status}"
        ),
    }
    if let Ok((body, _trailers)) = decode_chunked(data) {
        assert!(body.len() <= data.len(), "decoding never adds bytes");
    }
});
