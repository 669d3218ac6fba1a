//! MQTT over QUIC (`mqtt.quic_listen`, UDP, conventionally port 14567), the convention EMQX
//! uses: ALPN `mqtt`, and each QUIC connection carries one MQTT connection on the first
//! bidirectional stream the client opens. That stream's two halves go to the same
//! [`connection`](super::connection::connection) task as a TCP socket's.
//!
//! TLS is QUIC's own (always 1.3): the certificate is the MQTT TLS listener's
//! (`mqtt.tls_cert_file` / `mqtt.tls_key_file`, a config error without them), with ALPN `mqtt`
//! required — a client offering another protocol, or none, fails the handshake
//! (`no_application_protocol`).
//!
//! *Lifetime:* the MQTT connection ends as it would over TCP: the client finishes its stream
//! (end of stream), closes the QUIC connection, or goes silent past the idle timeout (the
//! server sends QUIC PINGs every [`KEEP_ALIVE`], so a live but quiet client is never timed
//! out; MQTT's own keep alive still applies). When the connection task ends, its stream is
//! finished, we wait (bounded) until the client has acknowledged everything sent on it — a
//! DISCONNECT or the last PUBLISH must not be lost to an abrupt close — and close the QUIC
//! connection with [`CLOSE_NORMAL`].
//!
//! *Boundary:* one stream per connection. The transport parameters allow one more
//! bidirectional stream than that and no unidirectional ones, so a client opening a second
//! stream gets it refused at once (reset and stopped with [`STREAM_REFUSED`]) instead of
//! waiting for stream credit forever; the MQTT connection on the first stream goes on.
//! Each listener has its own `mqtt.connections_max` bound: a QUIC connection past it is
//! refused before its handshake (a QUIC `CONNECTION_REFUSED`).

use super::clients::Transport;
use super::connection::{self, Shared};
use super::transport::CertUsername;
use crate::config::NodeConfig;
use quinn::crypto::rustls::QuicServerConfig;
use quinn::{Endpoint, Incoming, TransportConfig, VarInt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::{watch, Semaphore};

/// The ALPN protocol id of MQTT over QUIC.
pub const ALPN: &[u8] = b"mqtt";
/// Application error code of a normal close (the MQTT connection ended).
pub const CLOSE_NORMAL: VarInt = VarInt::from_u32(0);
/// Application error code on a refused extra stream.
pub const STREAM_REFUSED: VarInt = VarInt::from_u32(1);
/// Application error code when the client opened no stream in time.
pub const CLOSE_NO_STREAM: VarInt = VarInt::from_u32(2);
/// The QUIC handshake plus the client's first stream must arrive within this time.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that hears nothing (not even an ACK of our PINGs) this long is gone.
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);
/// How often we PING a quiet connection (well under the idle timeout, and under common NAT
/// UDP timeouts of ~30 s).
const KEEP_ALIVE: Duration = Duration::from_secs(15);
/// After the MQTT connection ends, how long we wait for the client to acknowledge what we
/// sent before closing the QUIC connection.
const LINGER: Duration = Duration::from_secs(5);
/// Bidirectional streams a client may have open: its MQTT stream plus one that we refuse
/// (see the module doc).
const STREAMS_BIDI_MAX: u32 = 2;

/// The QUIC server configuration: the MQTT TLS certificate (already loaded into `tls`) with
/// ALPN `mqtt`, and our transport limits. The error names the config key to fix.
pub fn server_config(
    tls: &tokio_rustls::TlsAcceptor,
) -> Result<quinn::ServerConfig, (&'static str, String)> {
    // QUIC runs only TLS 1.3; the listeners' config (`kafka::auth::ListenerTls`) enables rustls's
    // safe default versions, which include it.
    let mut crypto = (**tls.config()).clone();
    crypto.alpn_protocols = vec![ALPN.to_vec()];
    // No 0-RTT: a replayed CONNECT or PUBLISH is not what a broker wants.
    crypto.max_early_data_size = 0;
    let crypto = QuicServerConfig::try_from(crypto)
        .map_err(|e| ("mqtt.tls_cert_file", format!("QUIC needs TLS 1.3: {e}")))?;
    let mut transport = TransportConfig::default();
    transport
        .max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_BIDI_MAX))
        .max_concurrent_uni_streams(VarInt::from_u32(0))
        .keep_alive_interval(Some(KEEP_ALIVE))
        .max_idle_timeout(Some(
            IDLE_TIMEOUT
                .try_into()
                .map_err(|e| ("mqtt.quic_listen", format!("idle timeout: {e}")))?,
        ));
    let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    config.transport_config(Arc::new(transport));
    Ok(config)
}

/// Binds the UDP endpoint of `mqtt.quic_listen`, when set.
pub fn bind(cfg: &NodeConfig) -> Result<Option<Endpoint>, (SocketAddr, std::io::Error)> {
    let Some(addr) = cfg.mqtt_quic_listen else {
        return Ok(None);
    };
    // The configuration was checked when it was loaded (certificate set and readable); a
    // failure here means the files changed since.
    let unusable = |why: String| (addr, std::io::Error::other(why));
    let tls = match super::transport::tls_acceptor(&cfg.file.mqtt) {
        Ok(Some(a)) => a,
        Ok(None) => return Err(unusable("mqtt.quic_listen needs mqtt.tls_cert_file".into())),
        Err((key, why)) => return Err(unusable(format!("{key}: {why}"))),
    };
    let config = server_config(&tls).map_err(|(key, why)| unusable(format!("{key}: {why}")))?;
    Endpoint::server(config, addr)
        .map(Some)
        .map_err(|e| (addr, e))
}

/// Accepts QUIC connections until shutdown, each on its own task while fewer than
/// `mqtt.connections_max` are open.
pub async fn serve(shared: Arc<Shared>, endpoint: Endpoint, mut shutdown: watch::Receiver<bool>) {
    let max = shared.node.config.file.mqtt.connections_max as usize;
    let permits = Arc::new(Semaphore::new(max));
    let names = CertUsername::configured(&shared.node.config.file.mqtt);
    loop {
        let incoming = tokio::select! {
            i = endpoint.accept() => i,
            _ = shutdown.changed() => break,
        };
        // `None`: the endpoint was closed.
        let Some(incoming) = incoming else { break };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(peer = %incoming.remote_address(), "mqtt.connections_max reached; refusing new QUIC connection");
            incoming.refuse();
            continue;
        };
        let (shared, stop) = (shared.clone(), shutdown.clone());
        tokio::spawn(async move {
            handle(shared, incoming, names, stop).await;
            drop(permit);
        });
    }
    // Connection tasks end on the same shutdown signal and close their connections; the
    // endpoint's socket goes when the last of them does.
}

/// One QUIC connection: handshake, the first bidirectional stream, the MQTT connection task,
/// then an orderly close.
async fn handle(
    shared: Arc<Shared>,
    incoming: Incoming,
    names: CertUsername,
    shutdown: watch::Receiver<bool>,
) {
    let peer = incoming.remote_address();
    let connecting = match incoming.accept() {
        Ok(c) => c,
        Err(err) => {
            tracing::info!(%peer, %err, "mqtt quic connection not accepted");
            return;
        }
    };
    let opened = tokio::time::timeout(HANDSHAKE_TIMEOUT, async {
        let conn = connecting
            .await
            .map_err(|e| format!("handshake failed: {e}"))?;
        match conn.accept_bi().await {
            Ok(stream) => Ok((conn, stream)),
            Err(e) => {
                conn.close(CLOSE_NO_STREAM, b"");
                Err(format!("no stream: {e}"))
            }
        }
    })
    .await;
    let (conn, (send, recv)) = match opened {
        Ok(Ok(opened)) => opened,
        Ok(Err(why)) => {
            tracing::info!(%peer, %why, "mqtt quic connection closed");
            return;
        }
        Err(_) => {
            // Dropping the handshake (or the connection) closes it.
            tracing::info!(%peer, "mqtt quic handshake or first stream timed out");
            return;
        }
    };
    // Any later stream is refused; this task ends when the connection does.
    let refuser = tokio::spawn({
        let conn = conn.clone();
        async move {
            while let Ok((mut send, mut recv)) = conn.accept_bi().await {
                tracing::info!(%peer, "mqtt quic: a second stream on one connection; refused");
                let _ = send.reset(STREAM_REFUSED);
                let _ = recv.stop(STREAM_REFUSED);
            }
        }
    });
    // Resolves once the client acknowledged all we sent on the stream (or stopped it, or the
    // connection is gone); created now because the connection task takes the stream.
    let delivered = send.stopped();
    // A verified client certificate may name the user (`mqtt.tls_cert_as_username`).
    let chain = conn.peer_identity().and_then(|id| {
        id.downcast::<Vec<tokio_rustls::rustls::pki_types::CertificateDer<'static>>>()
            .ok()
    });
    let cert_user = match names.user(chain.as_deref().map(Vec::as_slice)) {
        Ok(u) => u,
        Err(why) => {
            tracing::info!(%peer, "mqtt quic client refused: {why}");
            conn.close(CLOSE_NORMAL, b"");
            refuser.abort();
            return;
        }
    };
    let task = connection::connection(shared, Box::new(recv), Box::new(send), cert_user, shutdown);
    if let Err(reason) = super::clients::scoped(Transport::Quic, peer, task).await {
        tracing::info!(%peer, %reason, "mqtt quic connection closed");
    }
    // The send stream was dropped with the connection task, which finished it.
    let _ = tokio::time::timeout(LINGER, delivered).await;
    conn.close(CLOSE_NORMAL, b"");
    refuser.abort();
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The MQTT certificate makes a QUIC server config: TLS 1.3 with an initial suite, on the
    /// aws-lc-rs provider the TLS listeners use.
    #[test]
    fn server_config_from_the_mqtt_certificate() {
        let dir = tempfile::tempdir().unwrap();
        let cert = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert_path, key_path) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert_path, cert.cert.pem()).unwrap();
        std::fs::write(&key_path, cert.signing_key.serialize_pem()).unwrap();
        let m = crate::config::MqttSection {
            tls_cert_file: Some(cert_path),
            tls_key_file: Some(key_path),
            ..Default::default()
        };
        let tls = super::super::transport::tls_acceptor(&m)
            .unwrap()
            .expect("an acceptor");
        server_config(&tls).expect("a QUIC server config");
        // ALPN `mqtt` went on a copy: the TLS listener's config offers none.
        assert!(tls.config().alpn_protocols.is_empty());
    }
}
