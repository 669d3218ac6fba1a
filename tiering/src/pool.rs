//! Recycled read buffers.
//!
//! An HTTP backend hands a ranged GET back as many small pieces (the response body's frames);
//! the tier wants one contiguous [`Bytes`] per chunk (its CRC is checked, its batches are cut
//! and cached). Gathering the pieces into a fresh allocation per chunk made a replay pay for
//! new pages on every chunk: glibc gives large freed blocks back to the kernel (a whole
//! per-thread heap once it is empty), and the next chunk faults them in and clears them again —
//! a quarter of the broker's CPU during a replay (BENCHMARKS.md, session 18).
//!
//! [`ReadPool`] keeps the buffers instead: a gathered chunk is a [`Bytes`] whose owner puts its
//! `Vec` back into the pool when the last slice of it is dropped (the read cache evicts it, the
//! Fetch response that referenced it is written). The pool holds at most
//! [`ReadPool::IDLE_BYTES_MAX`] of idle buffers; beyond that a returned buffer is freed.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use bytes::Bytes;

/// Buffers are allocated in multiples of this, so chunks of slightly different lengths (cut at
/// batch boundaries) reuse one another's buffers.
const GRAIN_BYTES: usize = 256 * 1024;

/// Gathers smaller than this are plain allocations: small reads (indexes, probes) are not worth
/// keeping buffers for.
const POOLED_BYTES_MIN: usize = 64 * 1024;

/// Idle read buffers, shared by every read of one store.
#[derive(Debug, Default)]
pub(crate) struct ReadPool {
    idle: Mutex<Idle>,
}

#[derive(Debug, Default)]
struct Idle {
    buffers: Vec<Vec<u8>>,
    bytes: usize,
}

/// The owner behind a pooled [`Bytes`]: gives its buffer back when dropped.
struct Pooled {
    buf: Vec<u8>,
    pool: Arc<ReadPool>,
}

impl AsRef<[u8]> for Pooled {
    fn as_ref(&self) -> &[u8] {
        &self.buf
    }
}

impl Drop for Pooled {
    fn drop(&mut self) {
        self.pool.put(std::mem::take(&mut self.buf));
    }
}

impl ReadPool {
    /// Idle buffers kept at most (all sizes together).
    pub(crate) const IDLE_BYTES_MAX: usize = 32 * 1024 * 1024;

    /// One contiguous [`Bytes`] holding `pieces` in order (`len` bytes in all). A single piece
    /// is returned as it is; several are copied into a recycled buffer.
    pub(crate) fn gather<I>(self: &Arc<Self>, len: usize, pieces: I) -> Bytes
    where
        I: IntoIterator<Item = Bytes>,
    {
        let mut pieces = pieces.into_iter().peekable();
        let Some(first) = pieces.next() else {
            return Bytes::new();
        };
        if pieces.peek().is_none() {
            return first;
        }
        let mut buf = if len >= POOLED_BYTES_MIN {
            self.take(len)
        } else {
            Vec::with_capacity(len)
        };
        buf.extend_from_slice(&first);
        for piece in pieces {
            buf.extend_from_slice(&piece);
        }
        if len < POOLED_BYTES_MIN {
            return Bytes::from(buf);
        }
        Bytes::from_owner(Pooled {
            buf,
            pool: self.clone(),
        })
    }

    /// An empty buffer with room for at least `len` bytes: an idle one if one is large enough
    /// (the smallest such), else a new one rounded up to [`GRAIN_BYTES`].
    fn take(&self, len: usize) -> Vec<u8> {
        let mut idle = self.lock();
        let best = idle
            .buffers
            .iter()
            .enumerate()
            .filter(|(_, b)| b.capacity() >= len)
            .min_by_key(|(_, b)| b.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            let buf = idle.buffers.swap_remove(i);
            idle.bytes -= buf.capacity();
            return buf;
        }
        drop(idle);
        Vec::with_capacity(len.div_ceil(GRAIN_BYTES) * GRAIN_BYTES)
    }

    /// The idle list stays consistent whatever a panicking holder did (each change to it is
    /// one push or one remove with its byte count), so a poisoned lock is used as it is.
    fn lock(&self) -> MutexGuard<'_, Idle> {
        self.idle.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn put(&self, mut buf: Vec<u8>) {
        let mut idle = self.lock();
        if idle.bytes + buf.capacity() > Self::IDLE_BYTES_MAX {
            return;
        }
        buf.clear();
        idle.bytes += buf.capacity();
        idle.buffers.push(buf);
    }

    #[cfg(test)]
    fn idle(&self) -> (usize, usize) {
        let idle = self.lock();
        (idle.buffers.len(), idle.bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pieces(data: &[u8], n: usize) -> Vec<Bytes> {
        data.chunks(data.len().div_ceil(n))
            .map(Bytes::copy_from_slice)
            .collect()
    }

    #[test]
    fn a_gathered_buffer_returns_to_the_pool_and_is_reused() {
        let pool = Arc::new(ReadPool::default());
        let data: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7) as u8).collect();
        let got = pool.gather(data.len(), pieces(&data, 13));
        assert_eq!(&got[..], &data[..]);
        let first_ptr = got.as_ptr();
        // A slice keeps the buffer out of the pool until it goes too.
        let slice = got.slice(10..20);
        drop(got);
        assert_eq!(pool.idle().0, 0);
        drop(slice);
        assert_eq!(pool.idle(), (1, 4 * GRAIN_BYTES));
        // A slightly shorter chunk reuses it.
        let again = pool.gather(data.len() - 5000, pieces(&data[5000..], 7));
        assert_eq!(&again[..], &data[5000..]);
        assert_eq!(again.as_ptr(), first_ptr);
        assert_eq!(pool.idle().0, 0);
    }

    #[test]
    fn one_piece_is_not_copied_and_small_gathers_are_not_pooled() {
        let pool = Arc::new(ReadPool::default());
        let one = Bytes::from(vec![1u8; 200_000]);
        let got = pool.gather(one.len(), [one.clone()]);
        assert_eq!(got.as_ptr(), one.as_ptr());
        let small = pool.gather(300, pieces(&[9u8; 300], 3));
        assert_eq!(&small[..], &[9u8; 300][..]);
        drop(small);
        assert_eq!(pool.idle().0, 0);
        assert!(pool.gather(0, Vec::<Bytes>::new()).is_empty());
    }

    #[test]
    fn the_pool_keeps_a_bounded_amount_idle() {
        let pool = Arc::new(ReadPool::default());
        let data = vec![3u8; 4 * GRAIN_BYTES];
        let held: Vec<Bytes> = (0..ReadPool::IDLE_BYTES_MAX / data.len() + 5)
            .map(|_| pool.gather(data.len(), pieces(&data, 2)))
            .collect();
        drop(held);
        let (_, bytes) = pool.idle();
        assert!(bytes <= ReadPool::IDLE_BYTES_MAX, "{bytes} idle bytes");
        assert_eq!(bytes, ReadPool::IDLE_BYTES_MAX);
    }
}
