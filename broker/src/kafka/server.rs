//! The Kafka listener: framing, pipelining and per-connection ordering.
//!
//! Each connection has a reader loop and a writer task. The reader takes one size-prefixed
//! frame at a time (refusing frames over `kafka.request_bytes_max` by closing the connection),
//! decodes the header, and *dispatches*: the order-sensitive part of a request (for Produce:
//! validating and enqueueing to the sequencer) runs right there, in arrival order, and what is
//! left is a future that yields the response. Those futures go, in order, through a bounded
//! channel (`kafka.inflight_requests_max`) to the writer, which awaits them one after another —
//! so responses leave in request order, as the protocol requires, while later requests are
//! already being worked on.
//!
//! With `kafka.tls_*` set, each accepted socket first completes a TLS handshake (bounded by the
//! frame timeout) — and, with `kafka.tls_client_auth`, the client certificate's verified subject
//! becomes the connection's principal when SASL is off. With `kafka.sasl_mechanisms` set, every
//! frame first passes the connection's
//! [`auth::Session`], which answers the SASL requests and closes a connection that sends
//! anything else before authenticating.
//!
//! *Boundary:* bytes from the network are never `unwrap`ped; a frame that does not decode
//! closes only its own connection.

use super::auth::{self, Intercept};
use super::frame::Frame;
use super::handlers;
use crate::metrics::Metrics;
use crate::node::Node;
use bytes::{Bytes, BytesMut};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tracing::Instrument as _;

/// How long a connection whose authentication failed stays open after its answer (Kafka's
/// `connection.failed.authentication.delay.ms` default). Nothing more is read from it.
const FAILED_AUTH_CLOSE_DELAY: Duration = Duration::from_millis(100);

/// A response still being computed; `None` when the request gets no response (acks=0).
pub type ResponseFuture = Pin<Box<dyn Future<Output = Option<Frame>> + Send>>;

/// Once a frame has started, the rest of it must arrive within this time.
const FRAME_READ_TIMEOUT: Duration = Duration::from_secs(30);

pub async fn serve(node: Arc<Node>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let max = node.config.file.kafka.connections_max as usize;
    crate::listener::accept_bounded(
        listener,
        max,
        "kafka.connections_max",
        shutdown,
        |stream, peer| {
            let node = node.clone();
            async move {
                Metrics::inc(&node.metrics.kafka_connections_total);
                node.metrics
                    .kafka_connections_open
                    .fetch_add(1, Ordering::Relaxed);
                let _ = stream.set_nodelay(true);
                let result = match node.config.kafka_security.acceptor() {
                    // Plain TCP splits into owned halves (no lock between reader and writer).
                    None => {
                        let (rd, wr) = stream.into_split();
                        connection(node.clone(), rd, wr, peer.ip(), None).await
                    }
                    Some(acceptor) => {
                        match tokio::time::timeout(FRAME_READ_TIMEOUT, acceptor.accept(stream))
                            .await
                        {
                            Ok(Ok(tls)) => {
                                let sec = &node.config.kafka_security;
                                match sec.certificate_principal(tls.get_ref().1.peer_certificates())
                                {
                                    Ok(principal) => {
                                        let (rd, wr) = tokio::io::split(tls);
                                        connection(node.clone(), rd, wr, peer.ip(), principal).await
                                    }
                                    Err(why) => Err(CloseReason::Auth(why)),
                                }
                            }
                            Ok(Err(e)) => Err(CloseReason::Tls(e.to_string())),
                            Err(_) => Err(CloseReason::Tls("handshake timed out".into())),
                        }
                    }
                };
                if let Err(reason) = result {
                    tracing::info!(%peer, %reason, "kafka connection closed");
                }
                node.metrics
                    .kafka_connections_open
                    .fetch_sub(1, Ordering::Relaxed);
            }
        },
    )
    .await
}

/// Why a connection was closed by us.
#[derive(Debug, thiserror::Error)]
pub enum CloseReason {
    #[error("request of {size} bytes exceeds kafka.request_bytes_max ({max})")]
    FrameTooLarge { size: i64, max: u32 },
    #[error("request frame with negative size {size}")]
    NegativeSize { size: i32 },
    #[error("request frame incomplete after {secs} s", secs = FRAME_READ_TIMEOUT.as_secs())]
    FrameTimeout,
    #[error("malformed request: {0}")]
    Malformed(String),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Auth(String),
}

async fn connection<R, W>(
    node: Arc<Node>,
    rd: R,
    wr: W,
    peer: std::net::IpAddr,
    certificate_principal: Option<String>,
) -> Result<(), CloseReason>
where
    R: AsyncRead + Unpin + Send + 'static,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let mut rd = BufReader::with_capacity(64 * 1024, rd);
    let inflight = node.config.file.kafka.inflight_requests_max as usize;
    // Each response travels with its API key and arrival time, for the latency histogram.
    let (tx, mut rx) = mpsc::channel::<(ResponseFuture, i16, Instant)>(inflight);
    let metrics = node.metrics.clone();
    let writer = tokio::spawn(async move {
        let mut wr = BufWriter::with_capacity(64 * 1024, wr);
        while let Some((response, api_key, arrived)) = rx.recv().await {
            if let Some(frame) = response.await {
                // Segments in order: small ones gather in the buffer, record chunks (at least
                // the buffer's size) go to the socket straight from the read cache's memory.
                for segment in frame.segments() {
                    wr.write_all(segment).await?;
                }
            }
            metrics
                .kafka_request_seconds
                .observe(api_key, arrived.elapsed());
            if rx.is_empty() {
                wr.flush().await?;
            }
        }
        wr.flush().await?;
        wr.shutdown().await
    });
    let max = node.config.file.kafka.request_bytes_max;
    let mut session = auth::Session::new(&node.config.kafka_security, certificate_principal);
    let mut authz = super::acl_handlers::Authorizer::for_connection(&node, None, peer);
    let result = loop {
        let frame = match read_frame(&mut rd, max).await {
            Ok(Some(frame)) => frame,
            Ok(None) => break Ok(()),
            Err(reason) => break Err(reason),
        };
        let api_key = frame
            .get(..2)
            .map_or(-1, |k| i16::from_be_bytes([k[0], k[1]]));
        let frame = match session.intercept(&node, frame, Instant::now()).await {
            Intercept::Pass(frame) => frame,
            Intercept::Reply(answer) => {
                let ready: ResponseFuture = Box::pin(async move { Some(answer.into()) });
                if tx.send((ready, api_key, Instant::now())).await.is_err() {
                    break Ok(());
                }
                continue;
            }
            Intercept::ReplyClose(answer, why) => {
                let ready: ResponseFuture = Box::pin(async move { Some(answer.into()) });
                let _ = tx.send((ready, api_key, Instant::now())).await;
                // The answer leaves first and the close comes later, as Kafka does
                // (`connection.failed.authentication.delay.ms`): a client that reads the
                // answer and the close in one go may drop the answer and report only a lost
                // connection (kafka-python does). It also slows down password guessing.
                tokio::time::sleep(FAILED_AUTH_CLOSE_DELAY).await;
                break Err(CloseReason::Auth(why));
            }
            Intercept::Close(why) => break Err(CloseReason::Auth(why)),
        };
        Metrics::inc(&node.metrics.kafka_requests_total);
        let arrived = Instant::now();
        authz.refresh(&node, session.principal.as_deref(), peer);
        // The request's trace span lasts until its response is ready (`trace.rs`).
        let span = super::trace::request_span(&frame);
        match handlers::dispatch(&node, frame, &authz)
            .instrument(span.clone())
            .await
        {
            Ok(response) => {
                let response: ResponseFuture = if span.is_disabled() {
                    response
                } else {
                    Box::pin(response.instrument(span))
                };
                if tx.send((response, api_key, arrived)).await.is_err() {
                    break Ok(()); // the writer failed: the peer is gone
                }
            }
            Err(reason) => {
                Metrics::inc(&node.metrics.kafka_request_errors_total);
                break Err(reason);
            }
        }
    };
    drop(tx);
    // Answer what was already accepted, then close.
    let _ = writer.await;
    result
}

/// Reads one size-prefixed frame. `Ok(None)` on a clean EOF between frames.
async fn read_frame<R: AsyncRead + Unpin>(
    rd: &mut BufReader<R>,
    max: u32,
) -> Result<Option<Bytes>, CloseReason> {
    let mut size_buf = [0u8; 4];
    match rd.read_exact(&mut size_buf).await {
        Ok(_) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    let size = i32::from_be_bytes(size_buf);
    if size < 0 {
        return Err(CloseReason::NegativeSize { size });
    }
    if size as u32 > max {
        return Err(CloseReason::FrameTooLarge {
            size: i64::from(size),
            max,
        });
    }
    let mut body = BytesMut::zeroed(size as usize);
    match tokio::time::timeout(FRAME_READ_TIMEOUT, rd.read_exact(&mut body)).await {
        Ok(Ok(_)) => Ok(Some(body.freeze())),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => Err(CloseReason::FrameTimeout),
    }
}
