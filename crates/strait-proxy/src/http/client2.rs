//! Requests to HTTP/2 upstreams, on the h2 crate's client connections directly (the pool opens
//! them and runs each on a task of its own).
//!
//! hyper's HTTP/2 client, which this replaces, handed every request from the caller's task to
//! the connection's task over a channel and the answer back over a oneshot, spawned a task per
//! request to await the answer (and another to send a body that did not go at once), and parsed
//! and stripped headers the gateway had already made right. Here the caller opens the stream on
//! the shared connection itself and awaits its answer; a body that does not go whole at once is
//! sent by a task of its own, as it must go on while the answer streams (gRPC).

use std::future::{poll_fn, Future};
use std::task::Poll;

use bytes::Bytes;
use h2::client::SendRequest;
use http::{header, HeaderValue, Request, Response};
use http_body::Body;

use crate::http::body::RequestBody;
use crate::http::stream2::{self, RecvBody};

/// Sends `req` on the connection `sender` belongs to, and waits for the answer's head. The
/// request's URI is absolute (`:scheme` and `:authority` come from it) and its head holds no
/// connection-specific field (the gateway left them out).
pub(crate) async fn send(
    sender: SendRequest<Bytes>,
    req: Box<Request<RequestBody>>,
) -> Result<Response<ResponseBody2>, Failed> {
    // Waits while the upstream's `SETTINGS_MAX_CONCURRENT_STREAMS` are all open. Fails when the
    // connection is going away (the upstream sent `GOAWAY`) or gone: then no stream was opened
    // and the request is given back, to go on a new connection.
    let mut sender = match sender.ready().await {
        Ok(sender) => sender,
        Err(error) => {
            return Err(Failed {
                error,
                unsent: Some(req),
            })
        }
    };
    let failed = |error| Failed {
        error,
        unsent: None,
    };
    let (mut head, mut body) = req.into_parts();
    let end = body.is_end_stream();
    if !end {
        if let Some(len) = body.size_hint().exact() {
            head.headers
                .entry(header::CONTENT_LENGTH)
                .or_insert_with(|| HeaderValue::from(len));
        }
    }
    let (answer, mut tx) = sender
        .send_request(Request::from_parts(head, ()), end)
        .map_err(failed)?;
    let mut sending = None;
    if !end {
        let mut pipe = Box::pin(async move {
            stream2::send_body(&mut body, &mut tx, None).await;
        });
        // A body that is all here (a gRPC unary call's message) goes now, without a task.
        if poll_fn(|cx| Poll::Ready(pipe.as_mut().poll(cx)))
            .await
            .is_pending()
        {
            sending = Some(Sending(crate::runtime::busy_poll::spawn(pipe)));
        }
    }
    let answer = answer.await.map_err(failed)?;
    let (head, recv) = answer.into_parts();
    let declared = stream2::declared_length(&head.headers);
    let body = ResponseBody2 {
        body: RecvBody::new(recv, declared),
        _sending: sending,
    };
    Ok(Response::from_parts(head, body))
}

/// Why an HTTP/2 request got no answer.
#[derive(Debug)]
pub(crate) struct Failed {
    pub(crate) error: h2::Error,
    /// The request, when it was never sent (no stream was opened for it).
    pub(crate) unsent: Option<Box<Request<RequestBody>>>,
}

/// The task sending a request's body, ended (and the stream reset, `CANCEL`) when the answer is
/// dropped before the body went whole: a request timed out, or whose client left, stops
/// sending at once rather than when its client's body ends.
#[derive(Debug)]
struct Sending(tokio::task::JoinHandle<()>);

impl Drop for Sending {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// An HTTP/2 upstream's answer body; while it is read, the request's body may still be sent.
#[derive(Debug)]
pub struct ResponseBody2 {
    pub(crate) body: RecvBody,
    _sending: Option<Sending>,
}
