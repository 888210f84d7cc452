//! Fuzzes the reading of gRPC health answers: the bytes come from an upstream during a health
//! check, so any of them may be hostile. Checks that nothing panics and that whatever is
//! accepted was really there: a status is only ever read from a complete, uncompressed frame.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::resilience::grpc_health::{request_frame, response_status};

fuzz_target!(|data: &[u8]| {
    if let Ok(_status) = response_status(data) {
        assert_eq!(data.first(), Some(&0), "only uncompressed frames are read");
        let len = data
            .get(1..5)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
            .expect("an accepted answer has a frame header");
        assert!(data.len() >= 5 + len, "the whole message was there");
    }
    // Whatever the service name, the request is one well-formed frame around it.
    let service = String::from_utf8_lossy(data);
    let frame = request_frame(&service);
    let len = u32::from_be_bytes([frame[1], frame[2], frame[3], frame[4]]) as usize;
    assert_eq!(frame.len(), 5 + len);
});
