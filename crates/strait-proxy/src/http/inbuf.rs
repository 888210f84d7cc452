//! The read side of an HTTP/1 connection, shared by both ends of the proxy: the client
//! connections `server1` serves and the upstream connections `client1` sends on. Bytes are read
//! into one reused buffer; heads are parsed in place, small body chunks are copied out of it,
//! and large bodies are read into buffers of their own so they are neither copied nor zeroed.
//! Chunked bodies are decoded here, one byte of framing at a time and whole chunks of data.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll, Waker};

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http_body::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};

/// The buffer's size when first needed; heads may grow it up to `MAX_HEAD`.
pub(crate) const READ_BUF: usize = 8 * 1024;
/// The largest message head (start line and fields) accepted, in either direction.
pub(crate) const MAX_HEAD: usize = 64 * 1024;
/// Body reads larger than this go to a buffer of their own instead of the connection's.
const BIG_READ: usize = 256 * 1024;
/// The most trailer fields a chunked body may end with.
const MAX_TRAILERS: usize = 128;
/// Read buffers a worker keeps for reuse once their connections gave them back.
const SPARE_MAX: usize = 64;

thread_local! {
    /// Buffers given back by connections that went idle or closed, taken again by the next
    /// one that reads: no allocation, and no zeroing of 8 KiB, per new connection or per
    /// request on a released one. At most `SPARE_MAX` (512 KiB) per worker.
    static SPARE: std::cell::RefCell<Vec<Vec<u8>>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// Room for [`copied`] bytes, allocated a chunk at a time.
const COPY_CHUNK: usize = 2 * 1024;
/// Copies longer than this get an allocation of their own.
const COPY_MOST: usize = 512;

thread_local! {
    /// Where small copies go: heads and small body chunks out of read buffers, and the header
    /// values the proxy makes (`headers::made_value`), each a slice of a shared chunk rather
    /// than an allocation of its own (two, with the reference count `Bytes` adds once the copy
    /// is sliced into header values).
    static COPIES: std::cell::RefCell<BytesMut> = std::cell::RefCell::new(BytesMut::new());
}

/// `bytes` as `Bytes` of their own: a copy, into the worker's current chunk when small.
///
/// A chunk is freed when the last copy in it is dropped; a copy kept long (a head whose
/// values a long response still holds) keeps at most its chunk, 2 KiB.
pub(crate) fn copied(bytes: &[u8]) -> Bytes {
    if bytes.len() > COPY_MOST {
        return Bytes::copy_from_slice(bytes);
    }
    COPIES.with_borrow_mut(|room| {
        if room.capacity() - room.len() < bytes.len() {
            // A new chunk (or the old one again, if nothing still holds a copy in it).
            room.reserve(COPY_CHUNK);
        }
        room.extend_from_slice(bytes);
        room.split().freeze()
    })
}

/// A read buffer: a spare one when the worker has one.
fn take_spare() -> Vec<u8> {
    SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| vec![0; READ_BUF])
}

/// Keeps `buf` for the next connection, unless it grew for a large head or enough are kept.
fn give_back(buf: Vec<u8>) {
    if buf.len() == READ_BUF {
        SPARE.with_borrow_mut(|spare| {
            if spare.len() < SPARE_MAX {
                spare.push(buf);
            }
        });
    }
}

/// Bytes read off a connection and not yet consumed: `buf[start..end]`.
#[derive(Debug, Default)]
pub(crate) struct InBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Where large bodies are read (see `poll_read_big`).
    big: BytesMut,
}

impl Drop for InBuf {
    fn drop(&mut self) {
        give_back(std::mem::take(&mut self.buf));
    }
}

/// Why a chunked body could not be read.
#[derive(Debug)]
pub(crate) enum ChunkError {
    Io(io::Error),
    /// The peer closed the connection before the body's end.
    Closed,
    /// The framing is not valid chunked encoding.
    Invalid(&'static str),
}

impl InBuf {
    /// True when nothing read is left unconsumed.
    pub(crate) fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// The bytes read and not consumed.
    pub(crate) fn buffered(&self) -> &[u8] {
        self.buf.get(self.start..self.end).unwrap_or_default()
    }

    /// Marks `n` buffered bytes consumed.
    pub(crate) fn consume(&mut self, n: usize) {
        self.start = (self.start + n).min(self.end);
    }

    /// True when the buffer holds no memory (it was never needed, or was given back).
    pub(crate) fn is_released(&self) -> bool {
        self.buf.capacity() == 0
    }

    /// Gives back the memory of an empty buffer (an idle connection keeps only its socket).
    pub(crate) fn release(&mut self) {
        if self.is_empty() {
            give_back(std::mem::take(&mut self.buf));
            *self = InBuf::default();
        }
    }

    /// The room kept for large bodies.
    #[cfg(test)]
    pub(crate) fn big_capacity(&self) -> usize {
        self.big.capacity()
    }

    /// Drops the room a large body was read into.
    pub(crate) fn drop_big(&mut self) {
        self.big = BytesMut::new();
    }

    /// Reads more bytes into the buffer, growing it up to `MAX_HEAD` for a head that does not
    /// fit; `Ok(0)` at the end of the stream.
    pub(crate) fn poll_fill<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if self.buf.is_empty() {
            self.buf = take_spare();
        } else if self.end == self.buf.len() {
            if self.start > 0 {
                self.buf.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            } else if self.buf.len() < MAX_HEAD {
                self.buf.resize(self.buf.len() * 2, 0);
            } else {
                return Poll::Ready(Err(io::Error::other("read buffer full")));
            }
        }
        let Some(room) = self.buf.get_mut(self.end..) else {
            return Poll::Ready(Err(io::Error::other("read buffer out of step")));
        };
        let mut rb = ReadBuf::new(room);
        ready!(Pin::new(io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        self.end += n;
        Poll::Ready(Ok(n))
    }

    /// Takes up to `max` buffered bytes as a chunk of their own.
    pub(crate) fn take(&mut self, max: usize) -> Bytes {
        let n = max.min(self.end - self.start);
        let chunk = copied(self.buf.get(self.start..self.start + n).unwrap_or_default());
        self.start += n;
        chunk
    }

    /// Up to `max` bytes of a body that has at least one more due: buffered bytes first, else
    /// a read (one of its own when much is left). Empty at the end of the stream, which here
    /// means the peer cut the body short.
    pub(crate) fn poll_body<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        max: u64,
    ) -> Poll<io::Result<Bytes>> {
        let max = usize::try_from(max).unwrap_or(usize::MAX);
        if self.is_empty() {
            if max >= READ_BUF {
                return self.poll_read_big(io, cx, max);
            }
            if ready!(self.poll_fill(io, cx))? == 0 {
                return Poll::Ready(Ok(Bytes::new()));
            }
        }
        Poll::Ready(Ok(self.take(max)))
    }

    /// The buffer holds nothing: a read of a large body goes to a buffer of its own, up to
    /// what is left of the body, so big bodies are neither copied out of the connection's
    /// buffer nor zeroed before the read. Successive chunks share one allocation until it is
    /// used up.
    pub(crate) fn poll_read_big<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        want: usize,
    ) -> Poll<io::Result<Bytes>> {
        let want = want.min(BIG_READ);
        if self.big.capacity() < want.min(BIG_READ / 4) {
            self.big = BytesMut::with_capacity(want);
        }
        let read = std::pin::pin!(io.read_buf(&mut self.big));
        ready!(read.poll(cx))?;
        Poll::Ready(Ok(self.big.split().freeze()))
    }

    /// The next frame of a chunked body at `chunk`: data, the trailers, or `None` once the
    /// body ended (`chunk` is then `Chunk::Ended`).
    pub(crate) fn poll_chunked<R: AsyncRead + Unpin>(
        &mut self,
        io: &mut R,
        cx: &mut Context<'_>,
        chunk: &mut Chunk,
    ) -> Poll<Result<Option<Frame<Bytes>>, ChunkError>> {
        loop {
            match chunk {
                Chunk::Ended => return Poll::Ready(Ok(None)),
                Chunk::Data(left) => {
                    let data = ready!(self.poll_body(io, cx, *left)).map_err(ChunkError::Io)?;
                    if data.is_empty() {
                        return Poll::Ready(Err(ChunkError::Closed));
                    }
                    *left -= data.len() as u64;
                    if *left == 0 {
                        *chunk = Chunk::DataEnd(false);
                    }
                    return Poll::Ready(Ok(Some(Frame::data(data))));
                }
                Chunk::Trailers => {
                    if let Some(trailers) = self.trailers()? {
                        *chunk = Chunk::Ended;
                        return Poll::Ready(Ok(trailers.map(Frame::trailers)));
                    }
                }
                _ => {
                    if let Some(&b) = self.buffered().first() {
                        self.start += 1;
                        *chunk = next_chunk_state(chunk, b).map_err(ChunkError::Invalid)?;
                        continue;
                    }
                }
            }
            match ready!(self.poll_fill(io, cx)) {
                Ok(0) => return Poll::Ready(Err(ChunkError::Closed)),
                Ok(_) => {}
                Err(e) => return Poll::Ready(Err(ChunkError::Io(e))),
            }
        }
    }

    /// The trailer section after the last chunk, when all of it is buffered: `Some(None)` for
    /// the usual empty one, `Some(Some(fields))` otherwise; `None` until it is complete.
    fn trailers(&mut self) -> Result<Option<Option<HeaderMap>>, ChunkError> {
        let bytes = self.buffered();
        if bytes.starts_with(b"\r\n") {
            self.start += 2;
            return Ok(Some(None));
        }
        if bytes.is_empty() || b"\r".starts_with(bytes) {
            return Ok(None);
        }
        let mut slots = [httparse::EMPTY_HEADER; MAX_TRAILERS];
        match httparse::parse_headers(bytes, &mut slots) {
            Ok(httparse::Status::Complete((len, fields))) => {
                let mut trailers = HeaderMap::with_capacity(fields.len());
                for f in fields {
                    let (Ok(name), Ok(value)) = (
                        HeaderName::from_bytes(f.name.as_bytes()),
                        HeaderValue::from_bytes(f.value),
                    ) else {
                        return Err(ChunkError::Invalid("bad trailer field"));
                    };
                    trailers.append(name, value);
                }
                self.start += len;
                Ok(Some(Some(trailers)))
            }
            Ok(httparse::Status::Partial) if bytes.len() < MAX_HEAD => Ok(None),
            Ok(httparse::Status::Partial) => Err(ChunkError::Invalid("trailers too large")),
            Err(_) => Err(ChunkError::Invalid("malformed trailers")),
        }
    }
}

/// Decodes a whole chunked body held in memory, as a connection reads one: its data and its
/// trailers, or what is wrong with it. The fuzz target `http1_request` drives it with hostile
/// bytes.
pub fn decode_chunked(mut wire: &[u8]) -> Result<(Vec<u8>, Option<HeaderMap>), &'static str> {
    let mut rd = InBuf::default();
    let mut chunk = Chunk::START;
    let mut data = Vec::new();
    let mut trailers = None;
    let mut cx = Context::from_waker(Waker::noop());
    loop {
        // Bytes in memory are always ready: `Pending` cannot happen.
        let Poll::Ready(frame) = rd.poll_chunked(&mut wire, &mut cx, &mut chunk) else {
            return Err("stalled");
        };
        match frame {
            Ok(Some(frame)) => match frame.into_data() {
                Ok(bytes) => data.extend_from_slice(&bytes),
                Err(frame) => trailers = frame.into_trailers().ok(),
            },
            Ok(None) => return Ok((data, trailers)),
            Err(ChunkError::Invalid(what)) => return Err(what),
            Err(ChunkError::Closed) => return Err("cut short"),
            Err(ChunkError::Io(_)) => return Err("read failed"),
        }
    }
}

/// Where a chunked body's reader is.
#[derive(Debug)]
pub(crate) enum Chunk {
    /// The hex size line.
    Size { value: u64, digits: u8 },
    /// A chunk extension, skipped up to its line end.
    Extension { value: u64 },
    /// The `\n` ending the size line.
    SizeLf { value: u64 },
    /// Data bytes still to come in this chunk.
    Data(u64),
    /// The `\r\n` after a chunk's data; the flag says the `\r` was seen.
    DataEnd(bool),
    /// The trailer section after the last chunk.
    Trailers,
    /// The body ended.
    Ended,
}

impl Chunk {
    /// The start of a chunked body.
    pub(crate) const START: Chunk = Chunk::Size {
        value: 0,
        digits: 0,
    };
}

/// The chunked-body parser's next state after byte `b` outside chunk data.
pub(crate) fn next_chunk_state(chunk: &Chunk, b: u8) -> Result<Chunk, &'static str> {
    Ok(match (chunk, b) {
        (Chunk::Size { value, digits }, _) if b.is_ascii_hexdigit() => {
            if *digits >= 16 {
                return Err("chunk size too large");
            }
            let d = (b as char).to_digit(16).map_or(0, u64::from);
            Chunk::Size {
                value: value << 4 | d,
                digits: digits + 1,
            }
        }
        // Whitespace after the size: only an extension or the line end may follow.
        (Chunk::Size { value, digits }, b' ' | b'\t') if *digits > 0 => Chunk::Size {
            value: *value,
            digits: 16,
        },
        (Chunk::Size { value, digits }, b';') if *digits > 0 => Chunk::Extension { value: *value },
        (Chunk::Size { value, digits }, b'\r') if *digits > 0 => Chunk::SizeLf { value: *value },
        (Chunk::Extension { .. }, b'\n') => return Err("bare LF in a chunk extension"),
        (Chunk::Extension { value }, b'\r') => Chunk::SizeLf { value: *value },
        (Chunk::Extension { value }, _) => Chunk::Extension { value: *value },
        (Chunk::SizeLf { value: 0 }, b'\n') => Chunk::Trailers,
        (Chunk::SizeLf { value }, b'\n') => Chunk::Data(*value),
        (Chunk::DataEnd(false), b'\r') => Chunk::DataEnd(true),
        (Chunk::DataEnd(true), b'\n') => Chunk::START,
        _ => return Err("malformed chunked body"),
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn small_copies_share_a_chunk_and_large_ones_do_not() {
        let heads: Vec<Vec<u8>> = (0..40u8)
            .map(|i| vec![b'a' + i % 26; 50 + usize::from(i) * 7])
            .collect();
        let copies: Vec<Bytes> = heads.iter().map(|h| copied(h)).collect();
        for (head, copy) in heads.iter().zip(&copies) {
            assert_eq!(copy.as_ref(), head.as_slice());
        }
        // Consecutive copies sit side by side, until a chunk is full.
        let adjacent = copies
            .windows(2)
            .filter(|w| w[0].as_ptr() as usize + w[0].len() == w[1].as_ptr() as usize)
            .count();
        let total: usize = heads.iter().map(Vec::len).sum();
        assert!(
            adjacent >= copies.len() - 1 - total / COPY_CHUNK - 1,
            "only {adjacent} of {} copies followed the one before",
            copies.len() - 1
        );
        let big = vec![b'x'; COPY_MOST + 1];
        let a = copied(&big);
        let b = copied(b"after");
        assert_eq!(a.as_ref(), big.as_slice());
        assert_ne!(a.as_ptr() as usize + a.len(), b.as_ptr() as usize);
    }

    #[test]
    fn chunked_bodies_decode_with_extensions_any_case_and_trailers() {
        // Cut short after a size line: an error, not a short body.
        assert_eq!(
            decode_chunked(b"3;note=x\r\nabc\r\n1A\r\n"),
            Err("cut short")
        );

        let body = [
            b"3;note=x\r\nabc\r\n1A\r\n".as_slice(),
            &[b'z'; 26],
            b"\r\n0\r\n\r\n",
        ]
        .concat();
        let (data, trailers) = decode_chunked(&body).unwrap();
        assert_eq!(data, [b"abc".as_slice(), &[b'z'; 26]].concat());
        assert!(trailers.is_none());

        let (data, trailers) = decode_chunked(b"2\r\nhi\r\n0\r\nx-sum: 7\r\n\r\n").unwrap();
        assert_eq!(data, b"hi");
        assert_eq!(trailers.unwrap()["x-sum"], "7");
    }

    #[test]
    fn a_buffer_given_back_is_the_next_one_taken() {
        let mut cx = Context::from_waker(Waker::noop());
        let mut first = InBuf::default();
        let mut wire: &[u8] = b"abc";
        assert!(matches!(
            first.poll_fill(&mut wire, &mut cx),
            Poll::Ready(Ok(3))
        ));
        let at = first.buffered().as_ptr();
        first.consume(3);
        first.release();
        assert!(first.is_released());
        let mut next = InBuf::default();
        let mut wire: &[u8] = b"de";
        assert!(matches!(
            next.poll_fill(&mut wire, &mut cx),
            Poll::Ready(Ok(2))
        ));
        assert_eq!(next.buffered(), b"de");
        assert_eq!(next.buffered().as_ptr(), at, "the spare buffer was reused");
    }

    #[test]
    fn malformed_chunked_bodies_are_refused() {
        for wire in [
            b"zz\r\n".as_slice(),
            b"3\r\nabcd\r\n0\r\n\r\n",
            b"3\nabc\r\n0\r\n\r\n",
            b"11111111111111111\r\n",
            b"3 4\r\nabc\r\n0\r\n\r\n",
            b"0\r\nbad trailer\r\n\r\n",
            b"",
        ] {
            assert!(
                decode_chunked(wire).is_err(),
                "{:?}",
                String::from_utf8_lossy(wire)
            );
        }
    }
}
