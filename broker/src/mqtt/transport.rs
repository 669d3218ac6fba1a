//! The MQTT listeners beside plain TCP: TLS (`mqtt.tls_listen`, rustls, the Kafka listener's
//! certificate loader) and WebSocket (`mqtt.ws_listen`, path `/mqtt`, subprotocol `mqtt`,
//! binary frames). Both end in the same [`connection`](super::connection::connection) task
//! over a byte stream.
//!
//! *WebSocket bridge:* after the handshake, two small tasks copy between the WebSocket and an
//! in-memory pipe the connection task reads and writes: binary frames' payloads in order
//! (an MQTT packet may span frames, a frame may hold several packets), and each flush of the
//! connection as one binary frame. A text frame closes the WebSocket with 1003 (unsupported
//! data); a client Close, an error or the connection's end closes both sides.
//!
//! *Client certificates* (`mqtt.tls_client_auth`, `mqtt.tls_client_ca`, `mqtt.tls_client_crl`,
//! the Kafka listener's verifier and CRL reloading): a certificate that does not chain to the
//! CAs, or is revoked, fails the handshake. With `mqtt.tls_cert_as_username` the verified
//! certificate names the connection's user (its CN or subject) for the ACLs, and no password
//! is asked; without a certificate (`requested`) the CONNECT's credentials count as usual.
//!
//! *Boundary:* an upgrade request for another path or without the `mqtt` subprotocol gets an
//! HTTP error reply; a TLS handshake that fails closes only that socket.

use super::clients::Transport;
use super::connection::{self, Shared};
use crate::config::NodeConfig;
use crate::kafka::auth::{ClientAuth, ListenerTls, TlsSettings};
use futures::{SinkExt, StreamExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio_rustls::rustls;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::{CloseFrame, WebSocketConfig};
use tokio_tungstenite::tungstenite::Message as WsMessage;

/// The WebSocket path MQTT clients connect to.
pub const WS_PATH: &str = "/mqtt";
/// The WebSocket subprotocol of MQTT (3.1.1 §6, 5.0 §6).
pub const WS_SUBPROTOCOL: &str = "mqtt";
/// A TLS or WebSocket handshake must finish within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes buffered in each direction between the WebSocket and the connection task.
const BRIDGE_BYTES: usize = 64 * 1024;

/// The optional listeners, bound before the node says it is ready.
#[derive(Default)]
pub struct Listeners {
    pub ws: Option<TcpListener>,
    pub tls: Option<(TcpListener, ListenerTls)>,
    /// MQTT over QUIC (`super::quic`), a UDP endpoint.
    pub quic: Option<quinn::Endpoint>,
}

impl Listeners {
    /// What is bound, for the startup lines: `("websocket", addr)`, `("tls", addr)`.
    pub fn addrs(&self) -> Vec<(&'static str, SocketAddr)> {
        let mut out = Vec::new();
        if let Some(a) = self.ws.as_ref().and_then(|l| l.local_addr().ok()) {
            out.push(("websocket", a));
        }
        if let Some(a) = self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok()) {
            out.push(("tls", a));
        }
        if let Some(a) = self.quic.as_ref().and_then(|e| e.local_addr().ok()) {
            out.push(("quic (udp)", a));
        }
        out
    }
}

impl std::fmt::Debug for Listeners {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listeners")
            .field("ws", &self.ws.as_ref().and_then(|l| l.local_addr().ok()))
            .field(
                "tls",
                &self.tls.as_ref().and_then(|(l, _)| l.local_addr().ok()),
            )
            .field(
                "quic",
                &self.quic.as_ref().and_then(|e| e.local_addr().ok()),
            )
            .finish()
    }
}

/// `mqtt.tls_*` loaded: the acceptor (with a verifier of client certificates when
/// `mqtt.tls_client_auth` asks for them); `Ok(None)` when no certificate is set. The error
/// names the offending key.
pub fn listener_tls(
    m: &crate::config::MqttSection,
) -> Result<Option<ListenerTls>, (&'static str, String)> {
    let t = ListenerTls::for_mqtt(&TlsSettings {
        cert: m.tls_cert_file.as_deref(),
        key: m.tls_key_file.as_deref(),
        client_auth: &m.tls_client_auth,
        client_ca: m.tls_client_ca.as_deref(),
        client_crl: m.tls_client_crl.as_deref(),
    })?;
    CertUsername::parse(&m.tls_cert_as_username, t.client_auth)?;
    Ok(t.tls.is_some().then_some(t))
}

/// The acceptor of [`listener_tls`] as configured at start.
pub fn tls_acceptor(
    m: &crate::config::MqttSection,
) -> Result<Option<tokio_rustls::TlsAcceptor>, (&'static str, String)> {
    Ok(listener_tls(m)?.and_then(|t| t.tls))
}

/// `mqtt.tls_cert_as_username`: which name a verified client certificate gives its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CertUsername {
    None,
    CommonName,
    Subject,
}

impl CertUsername {
    pub fn parse(s: &str, client_auth: ClientAuth) -> Result<CertUsername, (&'static str, String)> {
        const KEY: &str = "mqtt.tls_cert_as_username";
        let mode = match s {
            "none" => CertUsername::None,
            "cn" => CertUsername::CommonName,
            "dn" => CertUsername::Subject,
            other => return Err((KEY, format!("`{other}`: expected none, cn or dn"))),
        };
        if mode != CertUsername::None && client_auth == ClientAuth::None {
            return Err((
                KEY,
                "needs client certificates: set mqtt.tls_client_auth = \"required\" (or \"requested\") and mqtt.tls_client_ca".into(),
            ));
        }
        Ok(mode)
    }

    /// The mode `mqtt.tls_*` configure (checked when the configuration was loaded, so a bad
    /// value cannot reach here; it would read as `None`).
    pub fn configured(m: &crate::config::MqttSection) -> CertUsername {
        ClientAuth::parse(&m.tls_client_auth)
            .and_then(|auth| CertUsername::parse(&m.tls_cert_as_username, auth).ok())
            .unwrap_or(CertUsername::None)
    }

    /// The user name of a connection from its verified certificate chain (leaf first);
    /// `Ok(None)`: no certificate, or names are not taken from certificates. An error (a
    /// certificate without a Common Name) refuses the connection.
    pub fn user(
        self,
        chain: Option<&[rustls::pki_types::CertificateDer<'_>]>,
    ) -> Result<Option<String>, String> {
        let Some(leaf) = chain.and_then(|c| c.first()) else {
            return Ok(None);
        };
        match self {
            CertUsername::None => Ok(None),
            CertUsername::CommonName => crate::kafka::principal::subject_cn(leaf)
                .map(Some)
                .ok_or_else(|| "the client certificate's subject has no Common Name".into()),
            CertUsername::Subject => crate::kafka::principal::subject_dn(leaf)
                .map(Some)
                .ok_or_else(|| "the client certificate's subject does not parse".into()),
        }
    }
}

/// Binds `mqtt.ws_listen` (when set), `mqtt.tls_listen` (when a certificate is set) and
/// `mqtt.quic_listen` (when set).
pub async fn bind(cfg: &NodeConfig) -> Result<Listeners, (SocketAddr, std::io::Error)> {
    let mut out = Listeners::default();
    if let Some(addr) = cfg.mqtt_ws_listen {
        out.ws = Some(TcpListener::bind(addr).await.map_err(|e| (addr, e))?);
    }
    if let Some(addr) = cfg.mqtt_tls_listen {
        let acceptor = match listener_tls(&cfg.file.mqtt) {
            Ok(Some(a)) => a,
            // Checked when the configuration was loaded.
            Ok(None) | Err(_) => {
                return Err((
                    addr,
                    std::io::Error::other("mqtt.tls_cert_file / mqtt.tls_key_file not usable"),
                ))
            }
        };
        let l = TcpListener::bind(addr).await.map_err(|e| (addr, e))?;
        out.tls = Some((l, acceptor));
    }
    out.quic = super::quic::bind(cfg)?;
    Ok(out)
}

/// Accepts TLS connections until shutdown.
pub async fn serve_tls(
    shared: Arc<Shared>,
    listener: TcpListener,
    tls: ListenerTls,
    shutdown: watch::Receiver<bool>,
) {
    let names = CertUsername::configured(&shared.node.config.file.mqtt);
    let max = shared.node.config.file.mqtt.connections_max as usize;
    let stop = shutdown.clone();
    crate::listener::accept_bounded(
        listener,
        max,
        "mqtt.connections_max",
        shutdown,
        |stream: TcpStream, peer| {
            let (shared, shutdown, tls) = (shared.clone(), stop.clone(), tls.clone());
            async move {
                let _ = stream.set_nodelay(true);
                let Some(acceptor) = tls.acceptor() else {
                    return;
                };
                let tls =
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(s)) => s,
                        Ok(Err(err)) => {
                            tracing::info!(%peer, %err, "mqtt tls handshake failed");
                            return;
                        }
                        Err(_) => {
                            tracing::info!(%peer, "mqtt tls handshake timed out");
                            return;
                        }
                    };
                let cert_user = match names.user(tls.get_ref().1.peer_certificates()) {
                    Ok(u) => u,
                    Err(why) => {
                        tracing::info!(%peer, "mqtt tls client refused: {why}");
                        return;
                    }
                };
                let (rd, wr) = tokio::io::split(tls);
                let task =
                    connection::connection(shared, Box::new(rd), Box::new(wr), cert_user, shutdown);
                if let Err(reason) = super::clients::scoped(Transport::Tls, peer, task).await {
                    tracing::info!(%peer, %reason, "mqtt tls connection closed");
                }
            }
        },
    )
    .await
}

/// Accepts WebSocket connections until shutdown.
pub async fn serve_ws(shared: Arc<Shared>, listener: TcpListener, shutdown: watch::Receiver<bool>) {
    let max = shared.node.config.file.mqtt.connections_max as usize;
    let stop = shutdown.clone();
    crate::listener::accept_bounded(
        listener,
        max,
        "mqtt.connections_max",
        shutdown,
        |stream: TcpStream, peer| {
            let (shared, shutdown) = (shared.clone(), stop.clone());
            async move {
                let _ = stream.set_nodelay(true);
                let Some(pipe) = ws_accept(&shared, stream, peer).await else {
                    return;
                };
                let (rd, wr) = tokio::io::split(pipe);
                let task =
                    connection::connection(shared, Box::new(rd), Box::new(wr), None, shutdown);
                if let Err(reason) = super::clients::scoped(Transport::Ws, peer, task).await {
                    tracing::info!(%peer, %reason, "mqtt websocket connection closed");
                }
            }
        },
    )
    .await
}

/// Checks the upgrade request: path `/mqtt` and the `mqtt` subprotocol offered (chosen in the
/// reply).
#[allow(clippy::result_large_err)]
fn check_upgrade(req: &Request, mut resp: Response) -> Result<Response, ErrorResponse> {
    let reject = |status: StatusCode, why: &str| {
        let mut r = ErrorResponse::new(Some(why.to_string()));
        *r.status_mut() = status;
        r
    };
    if req.uri().path() != WS_PATH {
        return Err(reject(
            StatusCode::NOT_FOUND,
            "MQTT over WebSocket is served at /mqtt",
        ));
    }
    let offered = req
        .headers()
        .get_all("sec-websocket-protocol")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|p| p.trim().eq_ignore_ascii_case(WS_SUBPROTOCOL));
    if !offered {
        return Err(reject(
            StatusCode::BAD_REQUEST,
            "the WebSocket subprotocol `mqtt` is required (Sec-WebSocket-Protocol: mqtt)",
        ));
    }
    resp.headers_mut().insert(
        "sec-websocket-protocol",
        HeaderValue::from_static(WS_SUBPROTOCOL),
    );
    Ok(resp)
}

/// The WebSocket handshake, then the bridge tasks; returns the connection's end of the pipe.
async fn ws_accept(shared: &Shared, stream: TcpStream, peer: SocketAddr) -> Option<DuplexStream> {
    let mut config = WebSocketConfig::default();
    // A frame or message carries at most one largest packet plus its header.
    let max = shared.node.config.file.mqtt.packet_bytes_max as usize + 8;
    config.max_message_size = Some(max);
    config.max_frame_size = Some(max);
    let ws = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        tokio_tungstenite::accept_hdr_async_with_config(stream, check_upgrade, Some(config)),
    )
    .await
    {
        Ok(Ok(ws)) => ws,
        Ok(Err(err)) => {
            tracing::info!(%peer, %err, "mqtt websocket handshake failed");
            return None;
        }
        Err(_) => {
            tracing::info!(%peer, "mqtt websocket handshake timed out");
            return None;
        }
    };
    let (conn_end, bridge_end) = tokio::io::duplex(BRIDGE_BYTES);
    let (mut from_conn, mut to_conn) = tokio::io::split(bridge_end);
    let (mut sink, mut frames) = ws.split();
    // The reader asks the writer to close the WebSocket with this code.
    let (close_tx, mut close_rx) = mpsc::channel::<CloseCode>(1);
    let reader = tokio::spawn(async move {
        let code = loop {
            match frames.next().await {
                Some(Ok(WsMessage::Binary(data))) => {
                    if to_conn.write_all(&data).await.is_err() {
                        break CloseCode::Normal;
                    }
                }
                Some(Ok(WsMessage::Text(_))) => {
                    tracing::info!(%peer, "mqtt websocket text frame; closing");
                    break CloseCode::Unsupported;
                }
                // Pings are answered by the codec; pongs need nothing.
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {}
                Some(Ok(WsMessage::Close(_))) | None => break CloseCode::Normal,
                Some(Err(err)) => {
                    tracing::info!(%peer, %err, "mqtt websocket read failed");
                    break CloseCode::Protocol;
                }
            }
        };
        // The close code first (the writer reads it when the connection's end follows), then
        // the connection task sees end of stream (its will goes out as for a TCP close).
        let _ = close_tx.send(code).await;
        let _ = to_conn.shutdown().await;
        drop(to_conn);
    });
    tokio::spawn(async move {
        let mut buf = vec![0u8; BRIDGE_BYTES];
        let code = loop {
            tokio::select! {
                biased;
                code = close_rx.recv() => break code.unwrap_or(CloseCode::Normal),
                n = from_conn.read(&mut buf) => match n {
                    Ok(0) | Err(_) => break close_rx.try_recv().unwrap_or(CloseCode::Normal),
                    Ok(n) => {
                        let frame = WsMessage::Binary(bytes::Bytes::copy_from_slice(&buf[..n]));
                        if sink.send(frame).await.is_err() {
                            break CloseCode::Normal;
                        }
                    }
                },
            }
        };
        let _ = sink
            .send(WsMessage::Close(Some(CloseFrame {
                code,
                reason: "".into(),
            })))
            .await;
        let _ = sink.close().await;
        // Wait a little for the client's Close reply, then stop reading.
        let abort = reader.abort_handle();
        if tokio::time::timeout(HANDSHAKE_TIMEOUT, reader)
            .await
            .is_err()
        {
            abort.abort();
        }
    });
    Some(conn_end)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(path: &str, protocol: Option<&str>) -> Request {
        let mut b = Request::builder().uri(path);
        if let Some(p) = protocol {
            b = b.header("Sec-WebSocket-Protocol", p);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn upgrade_needs_path_and_subprotocol() {
        let ok =
            check_upgrade(&request("/mqtt", Some("mqttv3.1, MQTT")), Response::new(())).unwrap();
        assert_eq!(ok.headers()["sec-websocket-protocol"], "mqtt");
        let no_proto = check_upgrade(&request("/mqtt", None), Response::new(())).unwrap_err();
        assert_eq!(no_proto.status(), StatusCode::BAD_REQUEST);
        assert!(no_proto.body().as_deref().unwrap().contains("mqtt"));
        let other = check_upgrade(&request("/mqtt", Some("wamp")), Response::new(())).unwrap_err();
        assert_eq!(other.status(), StatusCode::BAD_REQUEST);
        let path = check_upgrade(&request("/ws", Some("mqtt")), Response::new(())).unwrap_err();
        assert_eq!(path.status(), StatusCode::NOT_FOUND);
    }

    #[test]
    fn tls_keys_come_in_pairs() {
        let mut m = crate::config::MqttSection::default();
        assert!(tls_acceptor(&m).unwrap().is_none());
        m.tls_cert_file = Some("/nonexistent/cert.pem".into());
        let err = |m: &crate::config::MqttSection| tls_acceptor(m).err().expect("an error");
        assert_eq!(err(&m).0, "mqtt.tls_key_file");
        m.tls_key_file = Some("/nonexistent/key.pem".into());
        let (key, why) = err(&m);
        assert_eq!(key, "mqtt.tls_cert_file");
        assert!(why.contains("/nonexistent/cert.pem"), "{why}");
    }
}
