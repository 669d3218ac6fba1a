//! The accept loop every TCP listener shares (Kafka, MQTT): a bound on open connections (one
//! more is closed at accept), a short pause after a failed accept, and a stop on shutdown.

use futures::FutureExt;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Semaphore};

/// Accepts until `shutdown` changes; runs `handle` on its own task for each connection while
/// fewer than `connections_max` are open. `limit_key` names the config key in the log line.
pub async fn accept_bounded<F, Fut>(
    listener: TcpListener,
    connections_max: usize,
    limit_key: &'static str,
    mut shutdown: watch::Receiver<bool>,
    handle: F,
) where
    F: Fn(TcpStream, SocketAddr) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let permits = Arc::new(Semaphore::new(connections_max));
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.changed() => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(err) => {
                tracing::warn!(%err, limit_key, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "{limit_key} reached; closing new connection");
            drop(stream);
            continue;
        };
        // A combinator, not `async move { task.await; drop(permit) }`: an async block would
        // hold the connection's future twice (captured, then awaited), doubling the memory of
        // every open connection.
        tokio::spawn(handle(stream, peer).map(move |()| drop(permit)));
    }
}
