//! Socket plumbing shared by both ends: a buffered frame reader, and the writer of a
//! connection's bounded outgoing queue that the producing thread drives itself.

use std::io;

use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::net::tcp::OwnedWriteHalf;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameError, Limits, Message, FRAME_PREFIX_BYTES};

/// Bytes asked of the socket per read when no large frame is pending.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// A reader or writer buffer above this is given back once it is empty.
const BUFFER_KEEP_BYTES_MAX: usize = 4 << 20;
/// A writer coalesces queued messages into one write(2) up to about this many bytes.
const WRITE_BATCH_BYTES_MAX: usize = 1 << 20;

/// Why a connection was closed by its reader.
#[derive(Debug)]
pub(crate) enum ReadError {
    Io(io::Error),
    Frame(FrameError),
    /// The peer closed the connection in the middle of a frame.
    EofInFrame,
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Io(e) => write!(f, "read failed: {e}"),
            ReadError::Frame(e) => write!(f, "{e}"),
            ReadError::EofInFrame => write!(f, "connection closed inside a frame"),
        }
    }
}

/// Reads frames from a socket into one buffer and decodes them in place.
pub(crate) struct FrameReader {
    buf: Vec<u8>,
    /// Start of the bytes not yet decoded.
    pos: usize,
    limits: Limits,
}

impl FrameReader {
    pub fn new(limits: Limits) -> FrameReader {
        FrameReader {
            buf: Vec::new(),
            pos: 0,
            limits,
        }
    }

    /// The next complete message in the buffer, or `None` when more bytes are needed.
    pub fn next_buffered(&mut self) -> Result<Option<Message>, FrameError> {
        match frame::decode(&self.buf[self.pos..], self.limits)? {
            None => Ok(None),
            Some((msg, used)) => {
                self.pos += used;
                if self.pos == self.buf.len() {
                    self.buf.clear();
                    self.pos = 0;
                    if self.buf.capacity() > BUFFER_KEEP_BYTES_MAX {
                        self.buf = Vec::new();
                    }
                }
                Ok(Some(msg))
            }
        }
    }

    /// Reads more bytes. `Ok(false)`: the peer closed the connection between frames.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, rd: &mut R) -> Result<bool, ReadError> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        // The rest of a frame whose length is known (it was checked against the limit when it
        // was first decoded), or a chunk.
        let pending = self
            .buf
            .first_chunk::<4>()
            .map(|b| FRAME_PREFIX_BYTES + u32::from_le_bytes(*b) as usize)
            .map_or(0, |total| total.saturating_sub(self.buf.len()));
        self.buf.reserve(pending.max(READ_CHUNK_BYTES));
        let n = rd.read_buf(&mut self.buf).await.map_err(ReadError::Io)?;
        if n == 0 {
            return if self.buf.is_empty() {
                Ok(false)
            } else {
                Err(ReadError::EofInFrame)
            };
        }
        Ok(true)
    }

    /// The next message, reading as needed; `Ok(None)` on a clean end of stream.
    pub async fn next<R: AsyncRead + Unpin>(
        &mut self,
        rd: &mut R,
    ) -> Result<Option<Message>, ReadError> {
        loop {
            if let Some(msg) = self.next_buffered().map_err(ReadError::Frame)? {
                return Ok(Some(msg));
            }
            if !self.fill(rd).await? {
                return Ok(None);
            }
        }
    }
}

/// What one pass of [`SocketWriter::write_some`] left behind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Everything queued is in the socket.
    Idle,
    /// The socket takes no more now; the rest waits for it to become writable.
    Blocked,
    /// The connection is closed (a write failed, or it was cancelled).
    Closed,
}

/// Where a [`SocketWriter`]'s queued messages are turned into bytes.
struct Pending<M> {
    rx: mpsc::Receiver<M>,
    /// Encoded frames; `buf[pos..]` is not written yet.
    buf: Vec<u8>,
    pos: usize,
}

/// The sending side of a connection: a bounded queue of messages that **any thread** may write
/// into the socket.
///
/// A sender pushes onto the queue ([`mpsc::Sender::try_send`]: a full queue means the peer
/// stopped reading) and then calls [`SocketWriter::flush`], which encodes what is queued and
/// writes as much as the socket takes now (a non-blocking write(2); on loopback or an idle
/// link, all of it). Only what the socket refuses is left to the connection's writer task
/// ([`SocketWriter::run`]), which waits for the socket to become writable. So a reply or an
/// append leaves on the thread that produced it, without waking a tokio worker: on a busy
/// machine that wake-up is what a WAL thread under `SCHED_FIFO` would otherwise wait for.
///
/// Frames leave in queue order: whoever flushes takes the queue under one lock and writes from
/// the front of one buffer. Every sender must flush after pushing (a message pushed and never
/// flushed waits for the next flush).
pub(crate) struct SocketWriter<M> {
    pending: parking_lot::Mutex<Pending<M>>,
    wr: OwnedWriteHalf,
    wrap: fn(M) -> Message,
    /// Set by a flush that left bytes the socket refused: the writer task takes over.
    blocked: Notify,
    cancel: CancellationToken,
}

impl<M> SocketWriter<M> {
    /// A writer for `wr` draining `rx`, with `first` (if any) ahead of everything queued. The
    /// writer task ([`SocketWriter::run`]) must be spawned for it.
    pub fn new(
        wr: OwnedWriteHalf,
        rx: mpsc::Receiver<M>,
        first: Option<Message>,
        wrap: fn(M) -> Message,
        cancel: CancellationToken,
    ) -> Arc<SocketWriter<M>> {
        let mut buf = Vec::new();
        if let Some(msg) = first {
            frame::encode(&msg, &mut buf);
        }
        Arc::new(SocketWriter {
            pending: parking_lot::Mutex::new(Pending { rx, buf, pos: 0 }),
            wr,
            wrap,
            blocked: Notify::new(),
            cancel,
        })
    }

    /// Writes what is queued, as far as the socket takes it without waiting; hands the rest to
    /// the writer task. A failed write closes the connection (cancels its token). `true`:
    /// everything queued is in the socket.
    pub fn flush(&self) -> bool {
        match self.write_some() {
            Progress::Idle => true,
            Progress::Blocked => {
                self.blocked.notify_one();
                false
            }
            Progress::Closed => {
                self.cancel.cancel();
                false
            }
        }
    }

    /// The writer task: writes what a flush could not, until the connection is cancelled or a
    /// write fails (then it cancels the token). The socket's write half is shut down when the
    /// last handle on the writer is dropped.
    pub async fn run(self: Arc<Self>) {
        loop {
            match self.write_some() {
                Progress::Idle => {
                    tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        _ = self.blocked.notified() => {}
                    }
                }
                Progress::Blocked => {
                    let ready = tokio::select! {
                        _ = self.cancel.cancelled() => break,
                        ready = self.wr.writable() => ready,
                    };
                    if let Err(e) = ready {
                        tracing::debug!(error = %e, "WAL replication socket failed; closing the connection");
                        break;
                    }
                }
                Progress::Closed => break,
            }
        }
        self.cancel.cancel();
    }

    /// One pass: encode what is queued (about [`WRITE_BATCH_BYTES_MAX`] at a time) and write it
    /// until the queue is empty or the socket would block.
    fn write_some(&self) -> Progress {
        let mut p = self.pending.lock();
        loop {
            if self.cancel.is_cancelled() {
                return Progress::Closed;
            }
            let Pending { rx, buf, pos } = &mut *p;
            while buf.len() - *pos < WRITE_BATCH_BYTES_MAX {
                match rx.try_recv() {
                    Ok(msg) => frame::encode(&(self.wrap)(msg), buf),
                    Err(_) => break,
                }
            }
            if *pos == buf.len() {
                buf.clear();
                *pos = 0;
                if buf.capacity() > BUFFER_KEEP_BYTES_MAX {
                    *buf = Vec::new();
                }
                return Progress::Idle;
            }
            match self.wr.try_write(&buf[*pos..]) {
                Ok(0) => {
                    tracing::debug!(
                        "WAL replication socket takes no bytes; closing the connection"
                    );
                    return Progress::Closed;
                }
                Ok(n) => {
                    *pos += n;
                    if *pos == buf.len() {
                        buf.clear();
                        *pos = 0;
                    } else if *pos >= WRITE_BATCH_BYTES_MAX {
                        buf.drain(..*pos);
                        *pos = 0;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Progress::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!(error = %e, "WAL replication write failed; closing the connection");
                    return Progress::Closed;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use tokio::net::{TcpListener, TcpStream};

    use super::*;
    use crate::net::one_entry_append;
    use crate::replication::ToReplica;

    const LIMITS: Limits = Limits {
        frame_bytes_max: 1 << 20,
        entry_bytes_max: 1 << 19,
    };

    async fn pair() -> (TcpStream, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let client = TcpStream::connect(addr).await.expect("connect");
        let (server, _) = listener.accept().await.expect("accept");
        (client, server)
    }

    fn append(lsn: u64, payload_bytes: usize) -> ToReplica {
        one_entry_append(lsn, vec![(lsn % 251) as u8; payload_bytes].into())
    }

    /// The LSNs of the next `n` appends read from `socket`, and whether each payload is intact.
    async fn read_appends(socket: &mut TcpStream, n: usize) -> Vec<(u64, bool)> {
        let mut reader = FrameReader::new(LIMITS);
        let mut got = Vec::with_capacity(n);
        while got.len() < n {
            match reader.next(socket).await.expect("read") {
                Some(Message::ToReplica(ToReplica::Append(m))) => {
                    let e = &m.entries[0];
                    let intact = e.payload.iter().all(|&b| b == (e.lsn.0 % 251) as u8);
                    got.push((e.lsn.0, intact));
                }
                other => panic!("expected an append, got {other:?}"),
            }
        }
        got
    }

    /// A flush on a thread outside the runtime writes the frames itself: no writer task runs
    /// here, and the peer gets every frame in queue order.
    #[tokio::test]
    async fn a_flush_writes_from_the_calling_thread() {
        let (client, mut server) = pair().await;
        let (_rd, wr) = client.into_split();
        let (tx, rx) = mpsc::channel(1024);
        let writer = SocketWriter::new(wr, rx, None, Message::ToReplica, CancellationToken::new());
        let on_thread = writer.clone();
        let all_written = std::thread::spawn(move || {
            (1..=100u64).all(|lsn| {
                tx.try_send(append(lsn, 100)).expect("queue");
                on_thread.flush()
            })
        })
        .join()
        .expect("thread");
        assert!(
            all_written,
            "loopback takes 100 small frames without blocking"
        );
        let got = read_appends(&mut server, 100).await;
        let expected: Vec<(u64, bool)> = (1..=100).map(|lsn| (lsn, true)).collect();
        assert_eq!(got, expected);
    }

    /// More than the socket buffers hold while the peer does not read: the flushes write what
    /// fits, the writer task finishes the rest once the peer reads, in order.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn what_the_socket_refuses_is_finished_by_the_writer_task() {
        const N: u64 = 1_600; // 16 KiB each: 25 MiB, beyond loopback's socket buffers
        let (client, mut server) = pair().await;
        let (_rd, wr) = client.into_split();
        let (tx, rx) = mpsc::channel(N as usize);
        let cancel = CancellationToken::new();
        let writer = SocketWriter::new(wr, rx, None, Message::ToReplica, cancel.clone());
        let task = tokio::spawn(writer.clone().run());
        let on_thread = writer.clone();
        let blocked = std::thread::spawn(move || {
            let mut blocked = 0;
            for lsn in 1..=N {
                tx.try_send(append(lsn, 16 << 10)).expect("queue");
                if !on_thread.flush() {
                    blocked += 1;
                }
            }
            blocked
        })
        .join()
        .expect("thread");
        assert!(blocked > 0, "the socket refused some of 25 MiB");
        let got = read_appends(&mut server, N as usize).await;
        let expected: Vec<(u64, bool)> = (1..=N).map(|lsn| (lsn, true)).collect();
        assert!(got == expected, "frames out of order or damaged");
        assert!(!cancel.is_cancelled());
        cancel.cancel();
        task.await.expect("writer task");
    }

    /// A write into a connection the peer closed closes this one: the token is cancelled.
    #[tokio::test]
    async fn a_failed_write_cancels_the_connection() {
        let (client, server) = pair().await;
        let (_rd, wr) = client.into_split();
        drop(server);
        let (tx, rx) = mpsc::channel(1024);
        let cancel = CancellationToken::new();
        let writer = SocketWriter::new(wr, rx, None, Message::ToReplica, cancel.clone());
        let task = tokio::spawn(writer.clone().run());
        // The first write may still be taken (the reset comes back with it); a later one fails.
        for lsn in 1..=1_000u64 {
            if cancel.is_cancelled() {
                break;
            }
            tx.try_send(append(lsn, 1024)).expect("queue");
            writer.flush();
            tokio::time::sleep(std::time::Duration::from_millis(1)).await;
        }
        assert!(
            cancel.is_cancelled(),
            "writing into a reset connection closes it"
        );
        task.await.expect("writer task");
    }
}
