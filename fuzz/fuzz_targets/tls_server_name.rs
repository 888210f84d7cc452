//! Fuzzes the TLS passthrough listener's ClientHello reader: the first bytes of a connection
//! from anyone, read to find the server name before a single byte goes upstream.
//!
//! Checks that nothing panics, and that the answer never changes as bytes arrive: every prefix
//! of the input either asks for more or gives the input's own answer, and once a prefix has an
//! answer every longer one keeps it. A reader that said "not TLS" on the first half of a
//! ClientHello, or named a server before its extension was whole, would route a connection by
//! where the network split its bytes. A name given is one the input holds: non-empty, visible
//! ASCII.
//!
//! Seeds: `fuzz/seeds/tls_server_name` (ClientHellos from `openssl s_client`). Run with
//! `cargo +nightly fuzz run tls_server_name fuzz/seeds/tls_server_name` in `fuzz/`.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::server_name;

fuzz_target!(|data: &[u8]| {
    let whole = server_name(data);
    if let Ok(Some(name)) = &whole {
        assert!(
            !name.is_empty() && name.bytes().all(|b| b.is_ascii_graphic()),
            "{name:?}"
        );
        assert!(
            data.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name:?} is not in the input"
        );
    }
    let mut decided = false;
    for cut in 0..data.len() {
        let part = server_name(&data[..cut]);
        match &part {
            Err(true) => assert!(!decided, "asked for more at {cut} after deciding"),
            _ => {
                assert_eq!(part, whole, "the first {cut} bytes decide otherwise");
                decided = true;
            }
        }
    }
});
