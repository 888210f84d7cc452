//! The two messages of the gRPC health protocol (`grpc.health.v1`), encoded by hand: a
//! `HealthCheckRequest { string service = 1; }` out, a `HealthCheckResponse { ServingStatus
//! status = 1; }` back. Too small for a protobuf dependency.
//!
//! The answer comes from the endpoint, so it is parsed as hostile bytes: every length is checked
//! and nothing here panics or allocates more than it was given.

use bytes::{BufMut, Bytes, BytesMut};

/// The request path of the health check method.
pub const CHECK_PATH: &str = "/grpc.health.v1.Health/Check";

/// `ServingStatus.SERVING`; every other value (`UNKNOWN`, `NOT_SERVING`, `SERVICE_UNKNOWN`)
/// fails the check.
pub const SERVING: u64 = 1;

/// The request body: the message `HealthCheckRequest { service }` in a gRPC frame (uncompressed).
pub fn request_frame(service: &str) -> Bytes {
    let mut message = BytesMut::with_capacity(service.len() + 11);
    if !service.is_empty() {
        // Field 1, wire type 2 (length-delimited).
        message.put_u8(0x0a);
        put_varint(&mut message, service.len() as u64);
        message.put_slice(service.as_bytes());
    }
    let mut frame = BytesMut::with_capacity(5 + message.len());
    frame.put_u8(0);
    frame.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    frame.put_slice(&message);
    frame.freeze()
}

/// Why an answer could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Fewer bytes than the frame or a field announced.
    #[error("truncated gRPC message")]
    Truncated,
    /// The frame is compressed, which the request did not allow.
    #[error("compressed gRPC message")]
    Compressed,
    /// Bytes that are not protobuf.
    #[error("malformed protobuf")]
    Malformed,
}

/// The `status` of the first `HealthCheckResponse` in `body` (gRPC frames, as received).
/// A message without the field has status 0 (`UNKNOWN`), as protobuf defaults say.
pub fn response_status(body: &[u8]) -> Result<u64, DecodeError> {
    let (&flag, rest) = body.split_first().ok_or(DecodeError::Truncated)?;
    if flag != 0 {
        return Err(DecodeError::Compressed);
    }
    let (len, rest) = rest.split_at_checked(4).ok_or(DecodeError::Truncated)?;
    let len = u32::from_be_bytes(len.try_into().map_err(|_| DecodeError::Truncated)?);
    let message = rest.get(..len as usize).ok_or(DecodeError::Truncated)?;
    let mut status = 0;
    let mut at = message;
    while !at.is_empty() {
        let (key, rest) = varint(at)?;
        at = rest;
        let field = key >> 3;
        match (field, key & 7) {
            (1, 0) => {
                let (value, rest) = varint(at)?;
                status = value;
                at = rest;
            }
            // Unknown fields are skipped, as protobuf readers must.
            (_, 0) => at = varint(at)?.1,
            (_, 1) => at = at.get(8..).ok_or(DecodeError::Truncated)?,
            (_, 2) => {
                let (n, rest) = varint(at)?;
                let n = usize::try_from(n).map_err(|_| DecodeError::Truncated)?;
                at = rest.get(n..).ok_or(DecodeError::Truncated)?;
            }
            (_, 5) => at = at.get(4..).ok_or(DecodeError::Truncated)?,
            _ => return Err(DecodeError::Malformed),
        }
    }
    Ok(status)
}

/// A base-128 varint off the front of `bytes` (at most 10 bytes).
fn varint(bytes: &[u8]) -> Result<(u64, &[u8]), DecodeError> {
    let mut value = 0u64;
    for (i, &b) in bytes.iter().enumerate().take(10) {
        value |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Ok((value, bytes.get(i + 1..).unwrap_or_default()));
        }
    }
    if bytes.len() >= 10 {
        Err(DecodeError::Malformed)
    } else {
        Err(DecodeError::Truncated)
    }
}

fn put_varint(out: &mut BytesMut, mut value: u64) {
    while value >= 0x80 {
        out.put_u8((value as u8 & 0x7f) | 0x80);
        value >>= 7;
    }
    out.put_u8(value as u8);
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn requests_encode_the_service() {
        assert_eq!(&request_frame("")[..], [0, 0, 0, 0, 0]);
        assert_eq!(
            &request_frame("echo.Echo")[..],
            b"\0\0\0\0\x0b\x0a\x09echo.Echo"
        );
        let long = "s".repeat(200);
        let frame = request_frame(&long);
        assert_eq!(&frame[..8], [0, 0, 0, 0, 203, 0x0a, 0xc8, 0x01]);
    }

    #[test]
    fn responses_decode_their_status() {
        assert_eq!(response_status(b"\0\0\0\0\x02\x08\x01"), Ok(SERVING));
        assert_eq!(response_status(b"\0\0\0\0\x02\x08\x02"), Ok(2));
        assert_eq!(
            response_status(b"\0\0\0\0\0"),
            Ok(0),
            "absent means UNKNOWN"
        );
        // Unknown fields of every wire type before the status are skipped.
        let msg = b"\x10\x96\x01\x19\x01\x02\x03\x04\x05\x06\x07\x08\x22\x02ab\x2d\x01\x02\x03\x04\x08\x01";
        let mut body = vec![0, 0, 0, 0, msg.len() as u8];
        body.extend_from_slice(msg);
        assert_eq!(response_status(&body), Ok(SERVING));
        // Bytes after the first message are not read.
        assert_eq!(response_status(b"\0\0\0\0\x02\x08\x01garbage"), Ok(SERVING));
    }

    #[test]
    fn hostile_answers_are_refused_without_panic() {
        assert_eq!(response_status(b""), Err(DecodeError::Truncated));
        assert_eq!(
            response_status(b"\x01\0\0\0\x02\x08\x01"),
            Err(DecodeError::Compressed)
        );
        assert_eq!(
            response_status(b"\0\0\0\0\x05\x08\x01"),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            response_status(b"\0\0\0\0\x01\x08"),
            Err(DecodeError::Truncated)
        );
        assert_eq!(
            response_status(b"\0\0\0\0\x01\x0f"),
            Err(DecodeError::Malformed)
        );
        assert_eq!(
            response_status(b"\0\0\0\0\x0b\x08\xff\xff\xff\xff\xff\xff\xff\xff\xff\xff"),
            Err(DecodeError::Malformed)
        );
        assert_eq!(
            response_status(b"\0\xff\xff\xff\xff\x08\x01"),
            Err(DecodeError::Truncated),
            "a 4 GiB announcement is not trusted"
        );
        assert_eq!(
            response_status(b"\0\0\0\0\x0b\x12\xff\xff\xff\xff\xff\xff\xff\xff\x7f\x01"),
            Err(DecodeError::Truncated)
        );
        // Every prefix of a valid answer, and noise: an answer or an error, never a panic.
        let valid = b"\0\0\0\0\x07\x22\x02ab\x08\x96\x01";
        for n in 0..valid.len() {
            let _ = response_status(&valid[..n]);
        }
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for _ in 0..10_000 {
            let len = (seed % 24) as usize;
            let noise: Vec<u8> = (0..len)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    if seed.is_multiple_of(3) {
                        0
                    } else {
                        seed as u8
                    }
                })
                .collect();
            let _ = response_status(&noise);
        }
    }

    #[test]
    fn varints_round_trip() {
        for v in [0, 1, 127, 128, 300, u64::from(u32::MAX), u64::MAX] {
            let mut b = BytesMut::new();
            put_varint(&mut b, v);
            assert_eq!(varint(&b), Ok((v, &[][..])), "{v}");
        }
    }
}
