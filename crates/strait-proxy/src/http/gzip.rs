//! A gzip stream written piece by piece, each piece flushed: what a compressed answer's body
//! is made of (see `gateway::compress`).

use std::io::Write;

use flate2::write::GzEncoder;
use flate2::Compression as Level;

/// A gzip stream being written: what each piece of input adds to the output, flushed so that
/// the client can decode all of it so far, then the stream's end.
pub struct Gzip {
    encoder: Option<GzEncoder<Vec<u8>>>,
}

impl std::fmt::Debug for Gzip {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gzip")
            .field("finished", &self.encoder.is_none())
            .finish()
    }
}

impl Gzip {
    /// A stream at `level` (1 to 9).
    pub fn new(level: u32) -> Self {
        Gzip {
            encoder: Some(GzEncoder::new(Vec::new(), Level::new(level))),
        }
    }

    /// The output for `data`, flushed. (Writing to memory does not fail.)
    pub fn push(&mut self, data: &[u8]) -> Vec<u8> {
        let Some(encoder) = self.encoder.as_mut() else {
            return Vec::new();
        };
        let _ = encoder.write_all(data);
        let _ = encoder.flush();
        std::mem::take(encoder.get_mut())
    }

    /// The output that ends the stream (once; nothing after).
    pub fn finish(&mut self) -> Vec<u8> {
        self.encoder
            .take()
            .and_then(|e| e.finish().ok())
            .unwrap_or_default()
    }

    /// Whether the stream has ended.
    pub fn finished(&self) -> bool {
        self.encoder.is_none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn gunzip(bytes: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .expect("gzip");
        out
    }

    #[test]
    fn a_stream_flushed_piece_by_piece_decodes_to_its_input() {
        let mut gzip = Gzip::new(1);
        let mut out = Vec::new();
        let mut input = Vec::new();
        for i in 0..50 {
            let piece = format!("event {i}: {}\n", "x".repeat(i * 10));
            let got = gzip.push(piece.as_bytes());
            assert!(!got.is_empty(), "each piece is flushed");
            out.extend_from_slice(&got);
            input.extend_from_slice(piece.as_bytes());
        }
        out.extend_from_slice(&gzip.finish());
        assert!(gzip.finished());
        assert!(gzip.finish().is_empty());
        assert_eq!(gunzip(&out), input);
        assert!(
            out.len() < input.len() / 4,
            "{} of {}",
            out.len(),
            input.len()
        );
    }
}
