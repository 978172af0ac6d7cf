//! Bounded capture of one output stream: the first and the last bytes are kept, the middle is
//! counted and dropped. Reading never stops (an undrained russh channel wedges the whole
//! session); only what is *stored* is capped.

use std::collections::VecDeque;

/// What was kept of one stream.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CapturedStream {
    /// The first bytes (all of them when nothing was dropped).
    pub head: Vec<u8>,
    /// The last bytes, after the dropped middle; empty when nothing was dropped.
    pub tail: Vec<u8>,
    /// Bytes the stream carried in all.
    pub total_bytes: u64,
    /// Bytes dropped between `head` and `tail`.
    pub truncated_bytes: u64,
}

impl CapturedStream {
    /// Head and tail as text (lossy UTF-8), with a marker saying how much was cut between them.
    pub fn to_text_lossy(&self) -> String {
        let mut s = String::from_utf8_lossy(&self.head).into_owned();
        if self.truncated_bytes > 0 {
            s.push_str(&format!(
                "\n[... {} bytes truncated ...]\n",
                self.truncated_bytes
            ));
        }
        s.push_str(&String::from_utf8_lossy(&self.tail));
        s
    }

    /// A stream short enough to be kept whole.
    pub fn whole(data: Vec<u8>) -> Self {
        Self {
            total_bytes: data.len() as u64,
            head: data,
            tail: Vec::new(),
            truncated_bytes: 0,
        }
    }

    /// The last `max` bytes kept, as text (report excerpts show how a step ended).
    pub fn excerpt(&self, max: usize) -> String {
        let src = if self.tail.is_empty() {
            &self.head
        } else {
            &self.tail
        };
        let from = src.len().saturating_sub(max);
        String::from_utf8_lossy(&src[from..]).into_owned()
    }

    /// Everything that was kept, in order (head then tail).
    pub fn kept(&self) -> Vec<u8> {
        let mut v = self.head.clone();
        v.extend_from_slice(&self.tail);
        v
    }
}

/// Accumulates one stream under a byte bound: `limit / 2` bytes of head, the rest of tail.
#[derive(Debug)]
pub struct Capture {
    head_cap: usize,
    tail_cap: usize,
    head: Vec<u8>,
    tail: VecDeque<u8>,
    total: u64,
}

impl Capture {
    /// A capture keeping at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        Self {
            head_cap,
            tail_cap: limit - head_cap,
            head: Vec::new(),
            tail: VecDeque::new(),
            total: 0,
        }
    }

    /// Takes one chunk: fills the head first, then keeps a rolling tail.
    pub fn push(&mut self, mut data: &[u8]) {
        self.total = self.total.saturating_add(data.len() as u64);
        if self.head.len() < self.head_cap {
            let n = (self.head_cap - self.head.len()).min(data.len());
            self.head.extend_from_slice(&data[..n]);
            data = &data[n..];
        }
        if data.is_empty() || self.tail_cap == 0 {
            return;
        }
        if data.len() >= self.tail_cap {
            self.tail.clear();
            self.tail
                .extend(data[data.len() - self.tail_cap..].iter().copied());
            return;
        }
        let overflow = (self.tail.len() + data.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.tail.extend(data.iter().copied());
    }

    /// Bytes seen so far.
    pub fn total_bytes(&self) -> u64 {
        self.total
    }

    /// The kept bytes and the count of dropped ones.
    pub fn finish(self) -> CapturedStream {
        let kept = (self.head.len() + self.tail.len()) as u64;
        let truncated = self.total.saturating_sub(kept);
        let mut head = self.head;
        let mut tail: Vec<u8> = self.tail.into_iter().collect();
        if truncated == 0 {
            // Nothing was dropped: one contiguous buffer is simpler for readers.
            head.append(&mut tail);
        }
        CapturedStream {
            head,
            tail,
            total_bytes: self.total,
            truncated_bytes: truncated,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn short_output_is_kept_whole() {
        let mut c = Capture::new(16);
        c.push(b"hello ");
        c.push(b"world");
        let s = c.finish();
        assert_eq!(s.head, b"hello world");
        assert!(s.tail.is_empty());
        assert_eq!((s.total_bytes, s.truncated_bytes), (11, 0));
        assert_eq!(s.to_text_lossy(), "hello world");
        assert_eq!(s.excerpt(5), "world");
        assert_eq!(s, CapturedStream::whole(b"hello world".to_vec()));
    }

    #[test]
    fn long_output_keeps_head_and_tail_and_counts_the_middle() {
        let mut c = Capture::new(10);
        let data: Vec<u8> = (0u8..100).collect();
        for chunk in data.chunks(7) {
            c.push(chunk);
        }
        let s = c.finish();
        assert_eq!(s.head, (0u8..5).collect::<Vec<_>>());
        assert_eq!(s.tail, (95u8..100).collect::<Vec<_>>());
        assert_eq!((s.total_bytes, s.truncated_bytes), (100, 90));
        assert!(s.to_text_lossy().contains("[... 90 bytes truncated ...]"));
        // The excerpt is the end of the output, from the tail.
        assert_eq!(s.excerpt(2).as_bytes(), &[98u8, 99]);
    }

    #[test]
    fn a_chunk_larger_than_the_tail_replaces_it() {
        let mut c = Capture::new(4);
        c.push(b"ab");
        c.push(b"cdefgh");
        c.push(b"i");
        let s = c.finish();
        assert_eq!(
            (s.head.as_slice(), s.tail.as_slice()),
            (&b"ab"[..], &b"hi"[..])
        );
        assert_eq!(s.truncated_bytes, 5);
    }

    #[test]
    fn zero_limit_keeps_nothing_but_counts_everything() {
        let mut c = Capture::new(0);
        c.push(b"abc");
        let s = c.finish();
        assert!(s.head.is_empty() && s.tail.is_empty());
        assert_eq!((s.total_bytes, s.truncated_bytes), (3, 3));
    }
}
