//! An OCSP staple checked before it is stapled: a successful basic OCSP response (RFC 6960
//! 4.2.1) with an answer for the certificate it goes with. A file of anything else was stapled
//! as it was, and a client that asks for stapling (`openssl s_client -status`, browsers that
//! enforce must-staple) refused every handshake; nginx refuses such a file at start.
//!
//! Only the structure and the certificate's serial number are checked, with a small DER reader:
//! the response's signature and freshness are the client's to judge, as with nginx's
//! `ssl_stapling_file`.

/// The DER object identifier `id-pkix-ocsp-basic` (1.3.6.1.5.5.7.48.1.1), as its content bytes.
const OCSP_BASIC: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x30, 0x01, 0x01];

use super::der::{expect, tlv};

const SEQUENCE: u8 = 0x30;
const INTEGER: u8 = 0x02;
const ENUMERATED: u8 = 0x0a;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
/// `[0]`, constructed: an explicit tag (OCSP `responseBytes`, a certificate's `version`).
const CONTEXT_0: u8 = 0xa0;

/// Checks that `response` is a successful basic OCSP response answering for the certificate
/// `leaf` (DER). The error says what is wrong.
pub fn check(response: &[u8], leaf: &[u8]) -> Result<(), String> {
    let not_ocsp = || "not an OCSP response (DER)".to_owned();
    let (outer, _) = expect(response, SEQUENCE).ok_or_else(not_ocsp)?;
    let (status, rest) = expect(outer, ENUMERATED).ok_or_else(not_ocsp)?;
    if status != [0] {
        return Err(format!(
            "the OCSP response's status is {}, not successful (0)",
            status.first().copied().unwrap_or_default()
        ));
    }
    let basic = (|| {
        let (bytes, _) = expect(rest, CONTEXT_0)?;
        let (bytes, _) = expect(bytes, SEQUENCE)?;
        let (kind, rest) = expect(bytes, OID)?;
        if kind != OCSP_BASIC {
            return None;
        }
        let (basic, _) = expect(rest, OCTET_STRING)?;
        Some(basic)
    })()
    .ok_or_else(|| "not a basic OCSP response".to_owned())?;
    let serials =
        answered_serials(basic).ok_or_else(|| "a malformed basic OCSP response".to_owned())?;
    let leaf_serial =
        serial_of(leaf).ok_or_else(|| "its certificate has no serial number".to_owned())?;
    if serials.contains(&leaf_serial) {
        Ok(())
    } else {
        Err(format!(
            "the OCSP response is for another certificate (serial {}, the certificate's {})",
            hex(serials.first().copied().unwrap_or_default()),
            hex(leaf_serial)
        ))
    }
}

/// The serial numbers a `BasicOCSPResponse` answers for: `tbsResponseData.responses[*].certID`.
fn answered_serials(basic: &[u8]) -> Option<Vec<&[u8]>> {
    let (basic, _) = expect(basic, SEQUENCE)?;
    let (mut data, _) = expect(basic, SEQUENCE)?;
    // `version` `[0]` (optional), `responderID` (`[1]` or `[2]`), `producedAt`, then
    // `responses`: the first SEQUENCE.
    let responses = loop {
        let (tag, contents, rest) = tlv(data)?;
        if tag == SEQUENCE {
            break contents;
        }
        data = rest;
    };
    let mut serials = Vec::new();
    let mut rest = responses;
    while !rest.is_empty() {
        let (single, after) = expect(rest, SEQUENCE)?;
        let (cert_id, _) = expect(single, SEQUENCE)?;
        let (_, after_hash) = expect(cert_id, SEQUENCE)?;
        let (_, after_name) = expect(after_hash, OCTET_STRING)?;
        let (_, after_key) = expect(after_name, OCTET_STRING)?;
        let (serial, _) = expect(after_key, INTEGER)?;
        serials.push(serial);
        rest = after;
    }
    Some(serials)
}

/// A certificate's `tbsCertificate.serialNumber`.
fn serial_of(cert: &[u8]) -> Option<&[u8]> {
    let (cert, _) = expect(cert, SEQUENCE)?;
    let (tbs, _) = expect(cert, SEQUENCE)?;
    let (tag, _, after_version) = tlv(tbs)?;
    let rest = if tag == CONTEXT_0 { after_version } else { tbs };
    expect(rest, INTEGER).map(|(serial, _)| serial)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_is_no_ocsp_response_is_refused_and_nothing_panics() {
        let leaf = [0x30, 0x03, 0x30, 0x01, 0x02];
        for bad in [
            &b""[..],
            b"test OCSP response bytes",
            &[0x30, 0x03, 0x0a, 0x01, 0x01],
            &[0x30, 0x03, 0x0a, 0x01, 0x00],
            &[0x30, 0x84, 0xff, 0xff, 0xff, 0xff],
            &[0x30, 0x80],
        ] {
            assert!(check(bad, &leaf).is_err(), "{bad:?}");
        }
        let refused = check(&[0x30, 0x03, 0x0a, 0x01, 0x01], &leaf);
        assert!(refused.is_err_and(|e| e.contains("status is 1")));
    }
}
