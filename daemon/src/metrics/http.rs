//! The metrics endpoint's HTTP: `GET /metrics` (and `/`) over HTTP/1.1 on
//! `--metrics-listen`, one request per connection.
//!
//! hyper replaced the hand-written HTTP/1.x answerer that was here (issue 18
//! item 4): request parsing, HEAD, HTTP/1.0 peers, pipelining and error
//! replies are a maintained crate's, not ours to keep right. The guarantees
//! the answerer gave are kept, each by one of two owners:
//!
//! - hyper ([`http1::Builder`], configured in [`http`]): a request head over
//!   [`MAX_REQUEST`] bytes is refused (431) without buffering more
//!   (`max_buf_size`); a head not complete within [`HEAD_TIMEOUT`]
//!   (slowloris) closes the connection (`header_read_timeout`); a request
//!   body is never asked for (at most a buffer's worth of it is read); one
//!   request per connection (`keep_alive(false)`, `Connection: close`);
//!   garbage gets a 400 and the connection closes; a HEAD reply keeps the
//!   GET reply's `Content-Length` without its body.
//! - This module's wrapper, for what hyper has no setting for: at most
//!   [`MAX_SCRAPES`] connections at once (a semaphore; one beyond them is
//!   closed at once, before hyper sees it), and a whole-connection deadline
//!   of [`REQUEST_TIMEOUT`] (`tokio::time::timeout` around
//!   `serve_connection`) that also bounds a client that never reads its
//!   reply, since hyper has no write timeout. Failures a client can cause
//!   are logged through [`crate::limited!`], per peer address.
//!
//! So a slow, stuck or garbage client costs one task and a few KiB for at
//! most [`REQUEST_TIMEOUT`], and never keeps the listener from accepting.

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, ALLOW, CONTENT_TYPE};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;

use crate::server::Daemon;

/// Most scrapes served at once; a connection beyond them is closed at once.
const MAX_SCRAPES: usize = 4;
/// A scrape that is not over within this (request read, reply written:
/// a client that stops reading included) is dropped.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// A request head not complete within this closes the connection (a
/// scraper sends its head at once).
const HEAD_TIMEOUT: Duration = Duration::from_secs(3);
/// Largest request head read (hyper's smallest allowed buffer limit).
const MAX_REQUEST: usize = 8192;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

/// Serves `GET /metrics` (and `/`) over HTTP/1.1 on `listener` until the
/// runtime stops. Anything else gets a 404 or 405; a slow, stuck or garbage
/// client costs one task and at most [`MAX_REQUEST`] bytes of request for
/// [`REQUEST_TIMEOUT`], and never keeps the listener from accepting.
pub async fn serve(listener: TcpListener, daemon: Arc<Daemon>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                crate::limited!(debug, "metrics accept failed", 0, error = %e, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            crate::limited!(
                debug,
                "metrics connection refused",
                scope(peer),
                %peer,
                "metrics: {MAX_SCRAPES} scrapes in progress; connection closed"
            );
            continue;
        };
        let daemon = daemon.clone();
        // The collector takes every BO's state lock in turn: off the async
        // workers.
        let render = move || tokio::task::block_in_place(|| super::render(&daemon));
        tokio::spawn(async move {
            match answer(stream, render, HEAD_TIMEOUT, REQUEST_TIMEOUT).await {
                Outcome::Done => {}
                Outcome::Failed(e) => crate::limited!(
                    debug,
                    "metrics request failed",
                    scope(peer),
                    %peer,
                    error = %e,
                    "metrics request failed"
                ),
                Outcome::TimedOut => crate::limited!(
                    debug,
                    "metrics scrape timed out",
                    scope(peer),
                    %peer,
                    "metrics scrape not over in time; dropped"
                ),
            }
            drop(permit);
        });
    }
}

/// The rate limiter's scope for a peer: its address (not its port, which a
/// client picks anew for each connection).
fn scope(peer: SocketAddr) -> u64 {
    match peer.ip() {
        IpAddr::V4(a) => u64::from(u32::from(a)),
        IpAddr::V6(a) => {
            let bits = u128::from(a);
            (bits >> 64) as u64 ^ bits as u64
        }
    }
}

/// How one connection ended.
#[derive(Debug)]
enum Outcome {
    Done,
    /// hyper gave up on it: bad or too long a head, the header read timeout,
    /// the peer gone.
    Failed(hyper::Error),
    /// Not over within the connection's deadline.
    TimedOut,
}

/// hyper's HTTP/1.1 server as the endpoint configures it.
fn http(header_timeout: Duration) -> http1::Builder {
    let mut http = http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(header_timeout)
        .max_buf_size(MAX_REQUEST)
        .keep_alive(false);
    http
}

/// Answers the one request on `io`, whose head must arrive within
/// `head_timeout`; the connection then closes. Dropped, with the
/// connection, when not over within `limit`.
async fn answer<I, R>(io: I, render: R, head_timeout: Duration, limit: Duration) -> Outcome
where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    R: Fn() -> String + Clone + Send + 'static,
{
    let service = service_fn(move |req: Request<hyper::body::Incoming>| {
        let render = render.clone();
        async move { Ok::<_, Infallible>(reply(req.method(), req.uri().path(), render)) }
    });
    match tokio::time::timeout(limit, http(head_timeout).serve_connection(TokioIo::new(io), service)).await {
        Ok(Ok(())) => Outcome::Done,
        Ok(Err(e)) => Outcome::Failed(e),
        Err(_) => Outcome::TimedOut,
    }
}

/// The reply to `method` on `path`; `render` makes the metrics text. A HEAD
/// gets the GET reply, whose body hyper leaves out (its `Content-Length`
/// stays).
fn reply(method: &Method, path: &str, render: impl FnOnce() -> String) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (method, path) {
        (&Method::GET | &Method::HEAD, "/metrics") => (StatusCode::OK, OPENMETRICS, render()),
        (&Method::GET | &Method::HEAD, "/") => (StatusCode::OK, TEXT, "cohmemd: metrics at /metrics\n".to_string()),
        (&Method::GET | &Method::HEAD, _) => (StatusCode::NOT_FOUND, TEXT, format!("no {path}; try /metrics\n")),
        _ => (StatusCode::METHOD_NOT_ALLOWED, TEXT, "only GET and HEAD\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
    if status == StatusCode::METHOD_NOT_ALLOWED {
        headers.insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    /// Serves one connection whose metrics text is `text`, over an in-memory
    /// pipe with `buffer` bytes each way: (the client's end, the server).
    fn serve_one(
        text: &'static str,
        buffer: usize,
        head_timeout: Duration,
        limit: Duration,
    ) -> (DuplexStream, tokio::task::JoinHandle<Outcome>) {
        let (client, server) = tokio::io::duplex(buffer);
        let server = tokio::spawn(answer(server, move || text.to_string(), head_timeout, limit));
        (client, server)
    }

    /// Sends `request`, reads the reply until the server closes:
    /// (the reply, how the connection ended).
    async fn exchange(request: &[u8], text: &'static str) -> (String, Outcome) {
        let (mut client, server) = serve_one(text, 64 * 1024, HEAD_TIMEOUT, REQUEST_TIMEOUT);
        client.write_all(request).await.expect("request written");
        let mut reply = Vec::new();
        client.read_to_end(&mut reply).await.expect("reply read");
        let outcome = server.await.expect("server task");
        (String::from_utf8_lossy(&reply).into_owned(), outcome)
    }

    /// The reply's status line, its headers lower-cased, and its body.
    fn parts(reply: &str) -> (&str, String, &str) {
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((reply, ""));
        let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
        (status, headers.to_ascii_lowercase(), body)
    }

    #[tokio::test]
    async fn paths_methods_content_types_and_bodies() {
        const EOF: &str = "# EOF\n";
        const NO: &str = "no /nope; try /metrics\n";
        for (request, status, ctype, length, body) in [
            ("GET /metrics HTTP/1.1", "HTTP/1.1 200 OK", OPENMETRICS, EOF.len(), EOF),
            (
                "GET /metrics?x=1 HTTP/1.1",
                "HTTP/1.1 200 OK",
                OPENMETRICS,
                EOF.len(),
                EOF,
            ),
            ("HEAD /metrics HTTP/1.1", "HTTP/1.1 200 OK", OPENMETRICS, EOF.len(), ""),
            (
                "GET / HTTP/1.1",
                "HTTP/1.1 200 OK",
                TEXT,
                29,
                "cohmemd: metrics at /metrics\n",
            ),
            ("GET /nope?q HTTP/1.1", "HTTP/1.1 404 Not Found", TEXT, NO.len(), NO),
            ("HEAD /nope HTTP/1.1", "HTTP/1.1 404 Not Found", TEXT, NO.len(), ""),
            (
                "POST /metrics HTTP/1.1",
                "HTTP/1.1 405 Method Not Allowed",
                TEXT,
                18,
                "only GET and HEAD\n",
            ),
            ("GET /metrics HTTP/1.0", "HTTP/1.0 200 OK", OPENMETRICS, EOF.len(), EOF),
        ] {
            let (reply, outcome) = exchange(format!("{request}\r\nHost: x\r\n\r\n").as_bytes(), EOF).await;
            let (got_status, headers, got_body) = parts(&reply);
            assert_eq!(got_status, status, "{request}: {reply}");
            assert!(
                headers.contains(&format!("content-type: {ctype}")),
                "{request}: {reply}"
            );
            // A HEAD reply announces the GET reply's length.
            assert!(
                headers.contains(&format!("content-length: {length}\r")),
                "{request}: {reply}"
            );
            assert_eq!(got_body, body, "{request}: {reply}");
            if request.ends_with("1.1") {
                assert!(headers.contains("connection: close"), "{request}: {reply}");
            }
            assert!(matches!(outcome, Outcome::Done), "{request}: {outcome:?}");
        }
        let (reply, _) = exchange(b"DELETE /x HTTP/1.1\r\n\r\n", EOF).await;
        assert!(parts(&reply).1.contains("allow: get, head"), "{reply}");
    }

    #[tokio::test]
    async fn one_request_per_connection_and_a_body_larger_than_the_buffer_limit() {
        let big: &'static str = Box::leak("x".repeat(100 * MAX_REQUEST).into_boxed_str());
        let (reply, outcome) = exchange(b"GET /metrics HTTP/1.1\r\n\r\nGET / HTTP/1.1\r\n\r\n", big).await;
        assert_eq!(parts(&reply).2, big, "the whole body, then the connection closed");
        assert!(matches!(outcome, Outcome::Done), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_head_over_the_limit_is_refused_and_garbage_gets_a_400() {
        let long = format!("GET /metrics HTTP/1.1\r\nX-A: {}\r\n\r\n", "a".repeat(2 * MAX_REQUEST));
        let (reply, outcome) = exchange(long.as_bytes(), "# EOF\n").await;
        assert!(reply.starts_with("HTTP/1.1 431 "), "{reply}");
        assert!(
            matches!(outcome, Outcome::Failed(ref e) if e.is_parse_too_large()),
            "{outcome:?}"
        );
        let (reply, outcome) = exchange(&[0xff; 9000], "# EOF\n").await;
        assert!(reply.starts_with("HTTP/1.1 400 "), "{reply}");
        assert!(matches!(outcome, Outcome::Failed(_)), "{outcome:?}");
    }

    #[tokio::test]
    async fn a_slow_head_and_a_client_that_never_reads_are_dropped_in_time() {
        let (head, limit) = (Duration::from_millis(200), Duration::from_millis(1000));
        // Slowloris: a head that never ends. hyper closes it.
        let (mut client, server) = serve_one("# EOF\n", 64 * 1024, head, limit);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\nX-A: ")
            .await
            .expect("written");
        let t0 = std::time::Instant::now();
        let outcome = server.await.expect("server task");
        assert!(
            matches!(outcome, Outcome::Failed(ref e) if e.is_timeout()),
            "{outcome:?}"
        );
        assert!(t0.elapsed() < limit, "{:?}", t0.elapsed());
        // A client that asks and never reads (the reply does not fit the
        // pipe): the connection's deadline drops it.
        let big: &'static str = Box::leak("x".repeat(1 << 20).into_boxed_str());
        let (mut client, server) = serve_one(big, 4096, head, limit);
        client
            .write_all(b"GET /metrics HTTP/1.1\r\n\r\n")
            .await
            .expect("written");
        let t0 = std::time::Instant::now();
        let outcome = server.await.expect("server task");
        assert!(matches!(outcome, Outcome::TimedOut), "{outcome:?}");
        assert!(t0.elapsed() < 2 * limit, "{:?}", t0.elapsed());
        drop(client);
    }
}
