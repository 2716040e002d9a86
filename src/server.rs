//! Listeners: HTTP/1.1 and HTTP/2 (h2c by prior knowledge, or ALPN over TLS), graceful
//! shutdown.
//!
//! [`serve`] takes a bound listener and a shutdown future (the caller binds and owns shutdown;
//! tests bind `127.0.0.1:0`). When `shutdown` completes it stops accepting, asks every
//! connection to finish (HTTP/1.1 closes after the in-flight response, HTTP/2 sends GOAWAY) and
//! returns when all have. A hard deadline is the caller's: drop the future.
//!
//! A plaintext connection is HTTP/2 when it opens with the HTTP/2 preface, else HTTP/1.1. A
//! client that sends nothing, or not a complete request head, within `header_read_timeout` is
//! disconnected; so is a TLS handshake that takes longer.

use std::convert::Infallible;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::server::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::{TcpListener, TcpStream};
use tower::{Service, ServiceExt};

use crate::proxy::{BoxError, ClientInfo};

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct ConnOptions {
    pub header_read_timeout: Duration,
}

/// Serves `service` on `listener` until `shutdown` completes and every connection has closed.
pub async fn serve<S, B>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    service: S,
    options: ConnOptions,
    shutdown: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Body<Data = Bytes> + Send + 'static,
    B::Error: Into<BoxError>,
{
    let graceful = GracefulShutdown::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let _ = stream.set_nodelay(true);
        let info = ClientInfo {
            remote,
            tls: tls.is_some(),
        };
        let svc = service.clone();
        let hyper_svc = hyper::service::service_fn(move |mut req: Request<Incoming>| {
            req.extensions_mut().insert(info);
            svc.clone().oneshot(req)
        });
        let watcher = graceful.watcher();
        let tls = tls.clone();
        tokio::spawn(async move {
            let timeout = options.header_read_timeout;
            let result = match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(timeout, acceptor.accept(stream)).await
                    else {
                        tracing::debug!(%remote, "TLS handshake failed or timed out");
                        return;
                    };
                    let h2 = stream.get_ref().1.alpn_protocol() == Some(b"h2");
                    let io = TokioIo::new(stream);
                    if h2 {
                        watcher
                            .watch(http2_builder().serve_connection(io, hyper_svc))
                            .await
                    } else {
                        watcher
                            .watch(http1_builder(options).serve_connection(io, hyper_svc))
                            .await
                    }
                }
                None => match tokio::time::timeout(timeout, sniff_h2(&stream)).await {
                    Ok(Ok(true)) => {
                        let io = TokioIo::new(stream);
                        watcher
                            .watch(http2_builder().serve_connection(io, hyper_svc))
                            .await
                    }
                    Ok(Ok(false)) => {
                        let io = TokioIo::new(stream);
                        watcher
                            .watch(http1_builder(options).serve_connection(io, hyper_svc))
                            .await
                    }
                    Ok(Err(_)) | Err(_) => return,
                },
            };
            if let Err(e) = result {
                tracing::debug!(%remote, error = %e, "connection ended with an error");
            }
        });
    }
    drop(listener);
    graceful.shutdown().await;
}

fn http1_builder(options: ConnOptions) -> http1::Builder {
    let mut b = http1::Builder::new();
    b.timer(TokioTimer::new())
        .header_read_timeout(options.header_read_timeout)
        .keep_alive(true);
    b
}

fn http2_builder() -> http2::Builder<TokioExecutor> {
    let mut b = http2::Builder::new(TokioExecutor::new());
    b.timer(TokioTimer::new())
        .keep_alive_interval(Some(Duration::from_secs(30)));
    b
}

/// Whether the connection opens with the HTTP/2 preface (`PRI * HTTP/2.0…`). Only its first
/// three bytes are needed: no HTTP/1.1 method starts with `PRI`. Peeks, so nothing is consumed.
async fn sniff_h2(stream: &TcpStream) -> std::io::Result<bool> {
    let mut buf = [0u8; 3];
    loop {
        let n = stream.peek(&mut buf).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if buf[..n] != b"PRI"[..n] {
            return Ok(false);
        }
        if n == 3 {
            return Ok(true);
        }
        // A partial "P" or "PR": wait for the rest (bounded by the caller's timeout).
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
