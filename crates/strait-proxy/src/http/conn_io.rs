//! A connection's byte stream, plain TCP or TLS over it, as one type: the HTTP/1 server's
//! client connections (`ClientIo`) and the upstream connections (`UpstreamIo`). The server,
//! the request body it hands out and an upgraded connection stay the same types whichever the
//! listener is; the pool's connections likewise whichever the cluster is.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// Plain TCP, or TLS over it (boxed: a TLS session is kilobytes, and a plain connection must
/// not carry room for one). `T` is the TLS stream, the server's or the client's side.
///
/// A TLS write may leave encrypted bytes in the session when the socket is full: they go out
/// with the next write or `poll_flush`.
#[derive(Debug)]
pub enum MaybeTls<T> {
    Plain(TcpStream),
    Tls(Box<T>),
}

/// A client connection.
pub type ClientIo = MaybeTls<tokio_rustls::server::TlsStream<TcpStream>>;
/// An upstream connection.
pub type UpstreamIo = MaybeTls<tokio_rustls::client::TlsStream<TcpStream>>;

impl<T> MaybeTls<T> {
    pub(crate) fn is_tls(&self) -> bool {
        matches!(self, MaybeTls::Tls(_))
    }
}

impl ClientIo {
    /// The TCP socket under the stream.
    pub(crate) fn tcp(&self) -> &TcpStream {
        match self {
            MaybeTls::Plain(io) => io,
            MaybeTls::Tls(io) => io.get_ref().0,
        }
    }

    /// Ready once the socket has bytes to read. Only a plain connection waits on its socket
    /// alone: a TLS session may hold decrypted bytes already, so a TLS connection is always
    /// ready (and is read).
    pub(crate) fn poll_read_ready(&self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self {
            MaybeTls::Plain(io) => io.poll_read_ready(cx),
            MaybeTls::Tls(_) => Poll::Ready(Ok(())),
        }
    }
}

/// A TLS stream over a TCP socket.
pub trait OverTcp {
    /// The socket, when the session holds nothing decrypted to give: only the socket's bytes
    /// can make a read succeed then.
    fn waits_on(&self) -> Option<&TcpStream>;
}

impl OverTcp for tokio_rustls::server::TlsStream<TcpStream> {
    fn waits_on(&self) -> Option<&TcpStream> {
        let (tcp, session) = self.get_ref();
        session.wants_read().then_some(tcp)
    }
}

impl OverTcp for tokio_rustls::client::TlsStream<TcpStream> {
    fn waits_on(&self) -> Option<&TcpStream> {
        let (tcp, session) = self.get_ref();
        session.wants_read().then_some(tcp)
    }
}

impl<T: AsyncRead + OverTcp + Unpin> AsyncRead for MaybeTls<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_read(cx, buf),
            MaybeTls::Tls(io) => {
                // The socket's readiness first when only its bytes can help: a read through the
                // session that finds nothing makes and drops a `WouldBlock` error on the way.
                if let Some(tcp) = io.waits_on() {
                    ready!(tcp.poll_read_ready(cx))?;
                }
                Pin::new(io.as_mut()).poll_read(cx, buf)
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for MaybeTls<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write(cx, buf),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_write_vectored(cx, bufs),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            MaybeTls::Plain(io) => io.is_write_vectored(),
            MaybeTls::Tls(io) => io.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_flush(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_flush(cx),
        }
    }

    /// TLS: `close_notify`, then the socket's write side.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            MaybeTls::Plain(io) => Pin::new(io).poll_shutdown(cx),
            MaybeTls::Tls(io) => Pin::new(io.as_mut()).poll_shutdown(cx),
        }
    }
}
