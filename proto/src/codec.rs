//! The gRPC codec of every muster service and client: prost, except that a large message is
//! decoded or encoded inside `tokio::task::block_in_place`. Decoding a 1.6 MB change set
//! takes a third of a second in a debug build (milliseconds in release, still far more than
//! a Get); done plainly it held an async worker, and two at once stalled every other request
//! on a two-core server. `block_in_place` hands the worker's other tasks to a fresh worker
//! first. Only on a multi-threaded runtime (it would panic on a current-thread one).

use std::marker::PhantomData;

use prost::Message;
use prost::bytes::Buf;
use tonic::Status;
use tonic::codec::{BufferSettings, Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic_prost::{ProstDecoder, ProstEncoder};

/// Messages from this size on (bytes) are coded off the async worker. Not lower: a List page
/// (a few hundred KB) codes in well under a millisecond in release, less than the hand-off
/// `block_in_place` costs (it moves the worker's other tasks to a new thread).
pub const LARGE_MESSAGE: usize = 1024 * 1024;

/// Runs `f` where it may block, when that can be arranged; else just runs it.
fn maybe_block_in_place<R>(large: bool, f: impl FnOnce() -> R) -> R {
    let multi_thread = large
        && tokio::runtime::Handle::try_current()
            .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(f)
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
