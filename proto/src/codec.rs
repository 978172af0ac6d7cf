//! The gRPC codec of every muster service and client: prost, except that a large message is
//! decoded or encoded inside `tokio::task::block_in_place`. Decoding a 1.6 MB change set
//! takes a third of a second in a debug build (milliseconds in release, still far more than
//! a Get); done plainly it held an async worker, and two at once stalled every other request
//! on a two-core server. `block_in_place` hands the worker's other tasks to a fresh worker
//! first. Only on a multi-threaded runtime (it would panic on a current-thread one). At most
//! as many large messages as the machine has cores are coded at once (`HeavySlots`): the
//! rest wait without using a core (their threads are already out of the worker pool), and one
//! that waited `HEAVY_WAIT` is refused RESOURCE_EXHAUSTED, so a flood of large requests cannot
//! take every core from the requests being served.

use std::marker::PhantomData;
use std::sync::{Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Messages from this size on (bytes) are coded off the async worker. Not lower: a List page
/// (a few hundred KB) codes in well under a millisecond in release, less than the hand-off
/// `block_in_place` costs (it moves the worker's other tasks to a new thread).
pub const LARGE_MESSAGE: usize = 1024 * 1024;

/// Longest a large message waits for a coding slot before it is refused.
pub const HEAVY_WAIT: Duration = Duration::from_secs(10);

/// A counting limit on large codings in progress, waited on by blocking (the callers run
/// inside `block_in_place`, so a waiting thread holds no async worker).
#[derive(Debug)]
pub struct HeavySlots {
    max: usize,
    used: Mutex<usize>,
    freed: Condvar,
}

/// A held slot; freed on drop.
#[derive(Debug)]
pub struct HeavySlot<'a>(&'a HeavySlots);

impl Drop for HeavySlot<'_> {
    fn drop(&mut self) {
        let mut used = self.0.used.lock().unwrap_or_else(PoisonError::into_inner);
        *used -= 1;
        self.0.freed.notify_one();
    }
}

impl HeavySlots {
    pub fn new(max: usize) -> Self {
        Self {
            max: max.max(1),
            used: Mutex::new(0),
            freed: Condvar::new(),
        }
    }

    /// The process-wide slots: one per core (tokio's default worker count).
    pub fn global() -> &'static Self {
        static SLOTS: OnceLock<HeavySlots> = OnceLock::new();
        SLOTS.get_or_init(|| {
            Self::new(std::thread::available_parallelism().map_or(1, std::num::NonZero::get))
        })
    }

    /// A slot, waiting up to `wait`; RESOURCE_EXHAUSTED naming the limit after that.
    pub fn acquire(&self, wait: Duration) -> Result<HeavySlot<'_>, Status> {
        let used = self.used.lock().unwrap_or_else(PoisonError::into_inner);
        let (mut used, timeout) = self
            .freed
            .wait_timeout_while(used, wait, |u| *u >= self.max)
            .unwrap_or_else(PoisonError::into_inner);
        if timeout.timed_out() && *used >= self.max {
            return Err(Status::resource_exhausted(format!(
                "{} messages of {LARGE_MESSAGE} bytes or more are being coded (the limit, one \
                 per core) and this one waited {wait:?}; retry later",
                self.max
            )));
        }
        *used += 1;
        Ok(HeavySlot(self))
    }

    /// Slots in use (for tests and metrics).
    pub fn in_use(&self) -> usize {
        *self.used.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Runs `f` where it may block, holding a coding slot, when that can be arranged; else just
/// runs it.
fn maybe_block_in_place<R>(
    large: bool,
    f: impl FnOnce() -> Result<R, Status>,
) -> Result<R, Status> {
    let multi_thread = large
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(|| {
            let _slot = HeavySlots::global().acquire(HEAVY_WAIT)?;
            f()
        })
    } else {
        f()
    }
}

/// prost's codec with large messages coded off the async worker (see the module doc).
#[derive(Debug, Clone)]
pub struct BlockingCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for BlockingCodec<T, U> {
    fn default() -> Self {
        Self(PhantomData)
    }
}

impl<T, U> Codec for BlockingCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = LargeEncoder<T>;
    type Decoder = LargeDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        LargeEncoder(ProstEncoder::default())
    }

    fn decoder(&mut self) -> Self::Decoder {
        LargeDecoder(ProstDecoder::default())
    }
}

/// Encodes `T`, off the worker when large.
#[derive(Debug, Clone)]
pub struct LargeEncoder<T>(ProstEncoder<T>);

impl<T: Message> Encoder for LargeEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        let large = item.encoded_len() >= LARGE_MESSAGE;
        maybe_block_in_place(large, || self.0.encode(item, buf))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

/// Decodes `U`, off the worker when large.
#[derive(Debug, Clone)]
pub struct LargeDecoder<U>(ProstDecoder<U>);

impl<U: Message + Default> Decoder for LargeDecoder<U> {
    type Item = U;
    type Error = Status;

    fn decode(&mut self, buf: &mut DecodeBuf<'_>) -> Result<Option<U>, Status> {
        let large = buf.remaining() >= LARGE_MESSAGE;
        maybe_block_in_place(large, || self.0.decode(buf))
    }

    fn buffer_settings(&self) -> BufferSettings {
        self.0.buffer_settings()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Before: every large coding ran at once, one thread each, however many arrived.
    #[test]
    fn large_codings_run_at_most_max_at_once_and_a_long_wait_is_refused() {
        let slots = Arc::new(HeavySlots::new(2));
        let (now, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let threads: Vec<_> = (0..12)
            .map(|_| {
                let (slots, now, most) = (slots.clone(), now.clone(), most.clone());
                std::thread::spawn(move || {
                    let _s = slots.acquire(Duration::from_secs(10)).unwrap();
                    let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                    most.fetch_max(n, Ordering::SeqCst);
                    std::thread::sleep(Duration::from_millis(20));
                    now.fetch_sub(1, Ordering::SeqCst);
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert_eq!(most.load(Ordering::SeqCst), 2);
        assert_eq!(slots.in_use(), 0);
        let _a = slots.acquire(Duration::ZERO).unwrap();
        let _b = slots.acquire(Duration::ZERO).unwrap();
        let e = slots.acquire(Duration::from_millis(10)).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("the limit, one per core"), "{e:?}");
    }
}
