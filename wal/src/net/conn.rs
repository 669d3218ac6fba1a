//! Socket plumbing shared by both ends: a buffered frame reader and the writer loop that drains
//! a connection's bounded outgoing queue.

use std::io;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::frame::{self, FrameError, Limits, Message, FRAME_PREFIX_BYTES};

/// Bytes asked of the socket per read when no large frame is pending.
const READ_CHUNK_BYTES: usize = 64 << 10;
/// A reader or writer buffer above this is given back once it is empty.
const BUFFER_KEEP_BYTES_MAX: usize = 4 << 20;
/// The writer coalesces queued messages into one write(2) up to about this many bytes.
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

/// Writes `first` (if any) and then every message from `rx`, in order, coalescing what is
/// queued into one write. Ends (and cancels `cancel`) when the queue closes, a write fails, or
/// `cancel` fires.
pub(crate) async fn write_loop<M, W>(
    mut wr: W,
    mut rx: mpsc::Receiver<M>,
    first: Option<Message>,
    wrap: fn(M) -> Message,
    cancel: CancellationToken,
) where
    W: AsyncWrite + Unpin,
{
    let mut buf = Vec::new();
    if let Some(msg) = first {
        frame::encode(&msg, &mut buf);
    }
    loop {
        if buf.is_empty() {
            let next = tokio::select! {
                _ = cancel.cancelled() => break,
                next = rx.recv() => next,
            };
            let Some(msg) = next else { break };
            frame::encode(&wrap(msg), &mut buf);
        }
        while buf.len() < WRITE_BATCH_BYTES_MAX {
            match rx.try_recv() {
                Ok(msg) => frame::encode(&wrap(msg), &mut buf),
                Err(_) => break,
            }
        }
        let written = tokio::select! {
            _ = cancel.cancelled() => break,
            written = wr.write_all(&buf) => written,
        };
        if let Err(e) = written {
            tracing::debug!(error = %e, "WAL replication write failed; closing the connection");
            break;
        }
        buf.clear();
        if buf.capacity() > BUFFER_KEEP_BYTES_MAX {
            buf = Vec::new();
        }
    }
    cancel.cancel();
    let _ = wr.shutdown().await;
}
