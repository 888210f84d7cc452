//! Socket options that socket2 does not offer, set with `setsockopt(2)` itself. This is the one
//! module allowed `unsafe`: each call passes a pointer to a local `c_int` and its size, and the
//! descriptor is borrowed from a live socket, so nothing here outlives what it points to.
#![allow(unsafe_code)]

use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

/// `TCP_DEFER_ACCEPT` on a listening socket: the kernel hands a connection to `accept` only
/// once its first bytes have arrived, or once `wait` has passed without them. The accepting
/// worker then wakes once for a new connection and its first request (or ClientHello), not
/// twice, and each wakeup of an idle core is paid by the sender. Suits every listener that
/// Strait has, as all of them wait for the client to speak first; a listener for a protocol
/// whose server speaks first (opaque TCP, when it comes) must not set it, or its clients wait.
#[cfg(target_os = "linux")]
pub(crate) fn set_defer_accept(socket: &impl AsRawFd, wait: Duration) -> io::Result<()> {
    let seconds = libc::c_int::try_from(wait.as_secs().max(1)).unwrap_or(libc::c_int::MAX);
    set_int(socket, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT, seconds)
}

/// Elsewhere the option does not exist; connections are accepted as they are established.
#[cfg(not(target_os = "linux"))]
pub(crate) fn set_defer_accept(_socket: &impl AsRawFd, _wait: Duration) -> io::Result<()> {
    Ok(())
}

/// Reads an integer option back, for tests.
#[cfg(all(test, target_os = "linux"))]
fn get_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
) -> io::Result<libc::c_int> {
    let mut value: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `value` and `len` are live locals of the sizes the kernel is told.
    let rc = unsafe {
        libc::getsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_mut(&mut value).cast(),
            &mut len,
        )
    };
    if rc == 0 {
        Ok(value)
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(target_os = "linux")]
fn set_int(
    socket: &impl AsRawFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    let len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: the pointer is to `value`, a live local of the size given.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(&value).cast(),
            len,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(all(test, target_os = "linux"))]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn a_listener_defers_accept_for_the_whole_seconds_asked_and_at_least_one() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let read = || get_int(&listener, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT).unwrap();
        assert_eq!(read(), 0);
        set_defer_accept(&listener, Duration::from_millis(10)).unwrap();
        // The kernel rounds seconds up to SYN-ACK retransmissions: 1 s reads back as 1 s.
        assert_eq!(read(), 1);
        set_defer_accept(&listener, Duration::from_secs(3)).unwrap();
        // 3 s takes two retransmissions (1 s, then 2 s), which the kernel reports as 3.
        assert_eq!(read(), 3);
    }

    #[tokio::test]
    async fn strait_listeners_wait_for_the_first_bytes_before_accepting() {
        let listener = crate::listener::bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let deferred = get_int(&listener, libc::IPPROTO_TCP, libc::TCP_DEFER_ACCEPT).unwrap();
        assert_eq!(deferred, 1);
    }
}
