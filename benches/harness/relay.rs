//! The harness's `relay` target: the floor under any proxy of the `h1` scenario.
//!
//! It does only what no proxy can avoid: one thread on epoll (through mio), each client
//! connection paired with its own upstream connection, and every read on one written to the
//! other. No parsing, no routing, no headers, no pool, no timers, no metrics. For a kept-alive
//! request that is the same four system calls (`recvfrom` and `sendto` on each side) and the
//! same four TCP segments as nginx, HAProxy and Strait make, so what it costs is the kernel's
//! share of proxying plus almost nothing. Ratios against it say how far above the floor each
//! proxy is.
//!
//! A write that cannot go at once is retried at once: right for small messages, which the
//! harness sends it (kept-alive HTTP/1.1 scenarios only), and not a design for large bodies.
//!
//! Usage: `relay LISTEN_ADDR UPSTREAM_ADDR` (runs until killed)

use std::io::{self, ErrorKind, Read, Write};
use std::net::SocketAddr;

use mio::net::{TcpListener, TcpStream};
use mio::{Events, Interest, Poll, Token};

const LISTENER: Token = Token(usize::MAX);
/// One read's worth; a kept-alive h1 request or response is far smaller.
const BUF: usize = 16 * 1024;

/// Sockets by token: a client at `2k`, its upstream connection at `2k + 1`, so a socket's
/// peer is its token with the low bit flipped.
struct Relay {
    poll: Poll,
    listener: TcpListener,
    upstream: SocketAddr,
    socks: Vec<Option<TcpStream>>,
    free_pairs: Vec<usize>,
    buf: Box<[u8]>,
}

impl Relay {
    fn bind(listen: SocketAddr, upstream: SocketAddr) -> io::Result<Self> {
        let poll = Poll::new()?;
        let mut listener = TcpListener::bind(listen)?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        Ok(Self {
            poll,
            listener,
            upstream,
            socks: Vec::new(),
            free_pairs: Vec::new(),
            buf: vec![0; BUF].into_boxed_slice(),
        })
    }

    #[cfg(test)]
    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    fn run(mut self) -> io::Result<()> {
        let mut events = Events::with_capacity(1024);
        loop {
            if let Err(e) = self.poll.poll(&mut events, None) {
                if e.kind() == ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            for ev in &events {
                match ev.token() {
                    LISTENER => self.accept_all(),
                    Token(i) => self.pump(i),
                }
            }
        }
    }

    fn accept_all(&mut self) {
        loop {
            match self.listener.accept() {
                Ok((client, _)) => {
                    if let Err(e) = self.pair(client) {
                        eprintln!("relay: upstream {}: {e}", self.upstream);
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => {
                    eprintln!("relay: accept: {e}");
                    return;
                }
            }
        }
    }

    /// Connects the client's upstream connection (blocking: once per client, before any load
    /// matters) and registers both.
    fn pair(&mut self, mut client: TcpStream) -> io::Result<()> {
        let up = std::net::TcpStream::connect(self.upstream)?;
        up.set_nodelay(true)?;
        up.set_nonblocking(true)?;
        let mut up = TcpStream::from_std(up);
        client.set_nodelay(true)?;
        let k = self.free_pairs.pop().unwrap_or_else(|| {
            self.socks.extend([None, None]);
            self.socks.len() / 2 - 1
        });
        let registry = self.poll.registry();
        registry.register(&mut client, Token(2 * k), Interest::READABLE)?;
        registry.register(&mut up, Token(2 * k + 1), Interest::READABLE)?;
        self.socks[2 * k] = Some(client);
        self.socks[2 * k + 1] = Some(up);
        Ok(())
    }

    /// Moves what socket `i` has to its peer. mio's readiness is edge-triggered, and a new
    /// arrival raises a new edge, so a read shorter than the buffer has emptied the socket:
    /// reading again only to see `WouldBlock` would be a system call no proxy makes.
    fn pump(&mut self, i: usize) {
        loop {
            let Some(Some(src)) = self.socks.get_mut(i) else {
                return;
            };
            let n = match src.read(&mut self.buf) {
                Ok(0) => return self.close(i / 2),
                Ok(n) => n,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == ErrorKind::Interrupted => continue,
                Err(_) => return self.close(i / 2),
            };
            let Some(Some(dst)) = self.socks.get_mut(i ^ 1) else {
                return;
            };
            if write_all_now(dst, &self.buf[..n]).is_err() {
                return self.close(i / 2);
            }
            if n < BUF {
                return;
            }
        }
    }

    fn close(&mut self, k: usize) {
        for i in [2 * k, 2 * k + 1] {
            if let Some(mut s) = self.socks[i].take() {
                // Out of epoll first, then closed by the drop.
                let _ = self.poll.registry().deregister(&mut s);
            }
        }
        self.free_pairs.push(k);
    }
}

/// Writes all of `data`, retrying at once when the socket's buffer is full.
fn write_all_now(s: &mut TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        match s.write(data) {
            Ok(0) => return Err(ErrorKind::WriteZero.into()),
            Ok(n) => data = &data[n..],
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::Interrupted) => {
                std::thread::yield_now();
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn main() {
    let (listen, upstream) = strait_benches::listen_and_upstream("relay", &[]);
    let result = Relay::bind(listen, upstream).and_then(Relay::run);
    if let Err(e) = result {
        eprintln!("relay: {e}");
        std::process::exit(1);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::net::{Shutdown, TcpListener as StdListener, TcpStream as StdStream};
    use std::time::Duration;

    /// A relay in a thread of its own, in front of `upstream`; returns its address.
    fn start_relay(upstream: SocketAddr) -> SocketAddr {
        let relay = Relay::bind("127.0.0.1:0".parse().unwrap(), upstream).unwrap();
        let addr = relay.local_addr().unwrap();
        std::thread::spawn(move || relay.run());
        addr
    }

    fn connect(addr: SocketAddr) -> StdStream {
        let s = StdStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        s
    }

    #[test]
    fn bytes_go_both_ways_and_a_close_reaches_the_other_side() {
        let up = StdListener::bind("127.0.0.1:0").unwrap();
        let upstream = up.local_addr().unwrap();
        let server = std::thread::spawn(move || {
            let (mut s, _) = up.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut req = [0; 4];
            for answer in [b"pong", b"PONG"] {
                s.read_exact(&mut req).unwrap();
                s.write_all(answer).unwrap();
            }
            // the client's close arrives as the end of the stream
            let mut rest = Vec::new();
            s.read_to_end(&mut rest).unwrap();
            rest
        });
        let mut c = connect(start_relay(upstream));
        let mut answer = [0; 4];
        for (ask, expect) in [(b"ping", b"pong"), (b"PING", b"PONG")] {
            c.write_all(ask).unwrap();
            c.read_exact(&mut answer).unwrap();
            assert_eq!(&answer, expect);
        }
        c.shutdown(Shutdown::Write).unwrap();
        assert_eq!(server.join().unwrap(), b"");
        // and the relay closed the client's side too
        assert_eq!(c.read(&mut answer).unwrap(), 0);
    }

    #[test]
    fn a_message_larger_than_one_read_arrives_whole() {
        let up = StdListener::bind("127.0.0.1:0").unwrap();
        let upstream = up.local_addr().unwrap();
        let len = 3 * BUF + 123;
        let server = std::thread::spawn(move || {
            let (mut s, _) = up.accept().unwrap();
            s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
            let mut got = vec![0; len];
            s.read_exact(&mut got).unwrap();
            s.write_all(b"ok").unwrap();
            got
        });
        let mut c = connect(start_relay(upstream));
        let sent: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
        c.write_all(&sent).unwrap();
        let mut ok = [0; 2];
        c.read_exact(&mut ok).unwrap();
        assert_eq!(&ok, b"ok");
        assert_eq!(server.join().unwrap(), sent);
    }

    #[test]
    fn a_client_whose_upstream_refuses_is_closed() {
        // a port that was just free: nothing listens there
        let upstream = StdListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        let mut c = connect(start_relay(upstream));
        let mut b = [0; 1];
        // closed, never an answer and never a hang (the read times out after 5 s)
        assert_eq!(c.read(&mut b).unwrap(), 0);
    }
}
