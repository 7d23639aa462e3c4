//! Bounded capture of command output. A command may print gigabytes; we keep the start (what
//! ran) and the end (how it ended) in fixed memory and count what fell in between.

use std::collections::VecDeque;

/// Keeps the first `limit / 2` bytes and the last `limit / 2` bytes written to it.
#[derive(Debug)]
pub struct HeadTailBuffer {
    head: Vec<u8>,
    tail: VecDeque<u8>,
    head_cap: usize,
    tail_cap: usize,
    omitted: u64,
}

impl HeadTailBuffer {
    pub fn new(limit: usize) -> Self {
        let head_cap = limit / 2;
        HeadTailBuffer {
            head: Vec::with_capacity(head_cap.min(64 * 1024)),
            tail: VecDeque::new(),
            head_cap,
            tail_cap: limit - head_cap,
            omitted: 0,
        }
    }

    pub fn push(&mut self, mut bytes: &[u8]) {
        let room = self.head_cap - self.head.len();
        if room > 0 {
            let take = room.min(bytes.len());
            self.head.extend_from_slice(&bytes[..take]);
            bytes = &bytes[take..];
        }
        if bytes.is_empty() {
            return;
        }
        if bytes.len() >= self.tail_cap {
            self.omitted += (self.tail.len() + bytes.len() - self.tail_cap) as u64;
            self.tail.clear();
            self.tail.extend(&bytes[bytes.len() - self.tail_cap..]);
            return;
        }
        let overflow = (self.tail.len() + bytes.len()).saturating_sub(self.tail_cap);
        self.tail.drain(..overflow);
        self.omitted += overflow as u64;
        self.tail.extend(bytes);
    }

    /// How many bytes were dropped from the middle.
    pub fn omitted(&self) -> u64 {
        self.omitted
    }

    /// The kept text, with a marker line where bytes were dropped.
    pub fn render(&self) -> String {
        let mut text = String::from_utf8_lossy(&self.head).into_owned();
        if self.omitted > 0 {
            text.push_str(&format!(
                "\n[... {} bytes of output omitted ...]\n",
                self.omitted
            ));
        }
        let (a, b) = self.tail.as_slices();
        let mut tail = Vec::with_capacity(a.len() + b.len());
        tail.extend_from_slice(a);
        tail.extend_from_slice(b);
        text.push_str(&String::from_utf8_lossy(&tail));
        text
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_everything_under_the_limit() {
        let mut buffer = HeadTailBuffer::new(100);
        buffer.push(b"hello ");
        buffer.push(b"world");
        assert_eq!(buffer.render(), "hello world");
        assert_eq!(buffer.omitted(), 0);
    }

    #[test]
    fn keeps_head_and_tail_of_long_output() {
        let mut buffer = HeadTailBuffer::new(10);
        for chunk in [b"0123".as_slice(), b"4567", b"89ab", b"cdef"] {
            buffer.push(chunk);
        }
        assert_eq!(buffer.omitted(), 6);
        assert_eq!(
            buffer.render(),
            "01234\n[... 6 bytes of output omitted ...]\nbcdef"
        );
    }

    #[test]
    fn one_huge_write_is_bounded() {
        let mut buffer = HeadTailBuffer::new(8);
        buffer.push(&vec![b'x'; 1_000_000]);
        assert_eq!(buffer.omitted(), 1_000_000 - 8);
        assert!(buffer.render().len() < 100);
    }
}
