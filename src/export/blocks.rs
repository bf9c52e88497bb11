//! An export file read in large blocks into one window that slides over
//! it: memory bounded by the largest record, not by the file.
//!
//! Every byte handed out has been checked to be UTF-8 (the whole block at
//! once, which is several times faster than checking byte by byte) and a
//! leading byte-order mark is dropped. Lines are counted on demand, from
//! the last place counted, so a reader pays for them only once.

use std::io::{self, Read, Seek, SeekFrom};
use std::ops::ControlFlow;
use std::path::Path;

use super::text::{TextInput, UTF8_BOM, count_newlines};
use super::{FileOutcome, Sink, input_error, io_error};

/// Bytes asked of the file at a time.
const BLOCK: usize = 4 * 1024 * 1024;

/// The largest window: a record (or an envelope value) longer than this is
/// left to the streaming reader, which holds no record whole.
pub(super) const MAX_WINDOW: usize = 64 * 1024 * 1024;

/// Why more bytes could not be had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Short {
    /// The file ends here.
    End,
    /// The next bytes are not UTF-8 (or the file ends inside a character).
    NotUtf8,
    /// What is being scanned does not fit in [`MAX_WINDOW`].
    TooLong,
}

/// Why a block pass stopped before the end of its file.
pub(super) enum Detour {
    /// Reading the file failed.
    Io(io::Error),
    /// Something the exact reader must look at.
    Exact,
}

impl From<io::Error> for Detour {
    fn from(error: io::Error) -> Detour {
        Detour::Io(error)
    }
}

/// Read one file with a block pass, falling back to the exact reader.
/// `pass` reads the file through [`Blocks`] and says how it ended and how
/// many records it offered to the sink. Where it took a detour (the file is
/// not well formed, or not in a way the pass reads), the file is read again
/// from its start by `exact`, the reader that names what is wrong and
/// where, which skips the records the pass offered already: none is handed
/// over twice, and every error and position is the exact reader's (a record
/// handed over unparsed is parsed, and its error placed, by its taker).
pub(super) fn read_with_fallback<'s, R: Read + Seek>(
    path: &Path,
    mut input: R,
    sink: &mut Sink<'s>,
    pass: impl FnOnce(&mut Blocks<&mut R>, &mut Sink<'s>) -> (Result<ControlFlow<()>, Detour>, u64),
    exact: impl FnOnce(TextInput<&mut R>, &mut Sink<'s>) -> FileOutcome,
) -> FileOutcome {
    let mut blocks = Blocks::with_buffer(&mut input, std::mem::take(&mut sink.window));
    let ended = pass(&mut blocks, sink);
    sink.window = blocks.into_buffer();
    let offered = match ended {
        (Ok(flow), _) => return Ok(flow),
        (Err(Detour::Io(error)), _) => return Err(input_error(path, error)),
        (Err(Detour::Exact), offered) => offered,
    };
    input
        .seek(SeekFrom::Start(0))
        .map_err(|source| io_error(path, source))?;
    sink.skip = offered;
    let outcome = exact(TextInput::new(&mut input), sink);
    sink.skip = 0;
    outcome
}

pub(super) struct Blocks<R> {
    inner: R,
    buffer: Vec<u8>,
    /// `buffer[start..checked]` is what is handed out; `checked..end` the
    /// start of a character whose other bytes are still to be read.
    start: usize,
    checked: usize,
    end: usize,
    at_eof: bool,
    bom_checked: bool,
    /// Whether the bytes after `checked` are known not to be UTF-8.
    not_utf8: bool,
    /// Lines before `buffer[counted]`, 1-based.
    line: u64,
    counted: usize,
    /// The place in the file (counted as [`Self::offset`] is) of the first
    /// byte of the line `buffer[counted]` is on.
    line_began: u64,
    /// Bytes of the file before `buffer[0]`.
    offset: u64,
}

impl<R: Read> Blocks<R> {
    /// Read `inner` into a new window (the readers hand one on instead).
    #[cfg(test)]
    pub fn new(inner: R) -> Self {
        Blocks::with_buffer(inner, Vec::new())
    }

    /// Read `inner` into `buffer`, an earlier window (see
    /// [`Self::into_buffer`]): its bytes are overwritten, its size kept.
    pub fn with_buffer(inner: R, buffer: Vec<u8>) -> Self {
        Blocks {
            inner,
            buffer,
            start: 0,
            checked: 0,
            end: 0,
            at_eof: false,
            bom_checked: false,
            not_utf8: false,
            line: 1,
            counted: 0,
            line_began: 0,
            offset: 0,
        }
    }

    /// The window, for the next file. One grown past a block for a long
    /// record is let go rather than held for the rest of the export.
    pub fn into_buffer(self) -> Vec<u8> {
        if self.buffer.len() > BLOCK {
            Vec::new()
        } else {
            self.buffer
        }
    }

    /// The checked bytes not yet consumed.
    pub fn data(&self) -> &[u8] {
        &self.buffer[self.start..self.checked]
    }

    /// [`Self::data`] as text, when it starts on a character boundary (it
    /// does wherever a reader consumed up to an ASCII token; a reader that
    /// consumed into a character gets `None`).
    pub fn text(&self) -> Option<&str> {
        let data = self.data();
        // A UTF-8 continuation byte is 0b10xx_xxxx.
        if data.first().is_some_and(|&byte| byte & 0xC0 == 0x80) {
            return None;
        }
        // SAFETY: `check` accepted `buffer[..checked]` piece by piece, each
        // piece valid UTF-8 and ending on a character boundary, so the
        // whole is valid UTF-8 and so is any part of it that starts on a
        // character boundary, as this one was just seen to.
        Some(unsafe { std::str::from_utf8_unchecked(data) })
    }

    /// Mark the first `amount` bytes of [`Self::data`] as consumed.
    pub fn consume(&mut self, amount: usize) {
        self.start = (self.start + amount).min(self.checked);
    }

    /// The 1-based line of the byte at `at` in [`Self::data`]. Calls must
    /// ask for places in increasing order.
    pub fn line_at(&mut self, at: usize) -> u64 {
        self.count_to(self.start + at);
        self.line
    }

    /// The 1-based column, in bytes as serde_json counts them, of the byte
    /// at `at` in [`Self::data`]. The same order of calls as
    /// [`Self::line_at`].
    pub fn column_at(&mut self, at: usize) -> u64 {
        let target = self.start + at;
        self.count_to(target);
        (self.offset + target as u64).saturating_sub(self.line_began) + 1
    }

    /// Count the lines of `buffer[counted..target]`.
    fn count_to(&mut self, target: usize) {
        if target <= self.counted {
            return;
        }
        let span = &self.buffer[self.counted..target];
        let newlines = count_newlines(span);
        if newlines > 0 {
            self.line += newlines;
            if let Some(last) = memchr::memrchr(b'\n', span) {
                self.line_began = self.offset + (self.counted + last + 1) as u64;
            }
        }
        self.counted = target;
    }

    /// Read more of the file into the window, keeping what is not consumed.
    pub fn fill(&mut self) -> io::Result<Result<(), Short>> {
        loop {
            if self.not_utf8 {
                return Ok(Err(Short::NotUtf8));
            }
            if self.at_eof {
                return Ok(Err(if self.checked < self.end {
                    Short::NotUtf8
                } else {
                    Short::End
                }));
            }
            self.make_room()?;
            if self.end == self.buffer.len() {
                return Ok(Err(Short::TooLong));
            }
            let read = loop {
                match self.inner.read(&mut self.buffer[self.end..]) {
                    Ok(read) => break read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                    Err(error) => return Err(error),
                }
            };
            self.end += read;
            self.at_eof = read == 0;
            let before = self.checked;
            self.check();
            if self.checked > before {
                return Ok(Ok(()));
            }
        }
    }

    /// Move the unconsumed bytes to the front, and grow the buffer when
    /// they fill it.
    fn make_room(&mut self) -> io::Result<()> {
        if self.start > 0 && (self.end == self.buffer.len() || self.start >= BLOCK) {
            // Lines of the consumed bytes are counted before they go.
            self.count_to(self.start);
            self.buffer.copy_within(self.start..self.end, 0);
            self.offset += self.start as u64;
            self.counted -= self.start;
            self.checked -= self.start;
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buffer.len() && self.buffer.len() < MAX_WINDOW {
            let grown = (self.buffer.len() * 2).clamp(BLOCK, MAX_WINDOW);
            self.buffer.resize(grown, 0);
        }
        Ok(())
    }

    /// Check the bytes read since the last check.
    fn check(&mut self) {
        if !self.bom_checked {
            if self.end < UTF8_BOM.len() && !self.at_eof {
                return;
            }
            self.bom_checked = true;
            if self.buffer[..self.end].starts_with(UTF8_BOM) {
                self.start = UTF8_BOM.len();
                self.checked = UTF8_BOM.len();
                self.counted = UTF8_BOM.len();
                // serde_json, reading the text after the mark, counts
                // columns from there.
                self.line_began = UTF8_BOM.len() as u64;
            }
        }
        let unchecked = &self.buffer[self.checked..self.end];
        // The SIMD check first; where it fails, the exact one says where.
        if simdutf8::basic::from_utf8(unchecked).is_ok() {
            self.checked = self.end;
            return;
        }
        match std::str::from_utf8(unchecked) {
            Ok(_) => self.checked = self.end,
            Err(error) => {
                self.checked += error.valid_up_to();
                // A character cut by the end of the block completes with
                // the next one; anything else is not UTF-8.
                if error.error_len().is_some() || self.at_eof {
                    self.not_utf8 = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::Trickle;
    use super::*;

    fn read_all(bytes: &[u8], chunk: usize) -> (Vec<u8>, Short) {
        let mut blocks = Blocks::new(Trickle { bytes, chunk });
        let mut out = Vec::new();
        loop {
            match blocks.fill().unwrap() {
                Ok(()) => {
                    out.extend_from_slice(blocks.data());
                    let amount = blocks.data().len();
                    blocks.consume(amount);
                }
                Err(short) => return (out, short),
            }
        }
    }

    #[test]
    fn hands_out_checked_text_without_the_bom() {
        let text = "\u{feff}a€b\nçd\n".as_bytes();
        for chunk in 1..=text.len() {
            assert_eq!(
                read_all(text, chunk),
                ("a€b\nçd\n".as_bytes().to_vec(), Short::End),
                "chunk {chunk}"
            );
        }
        assert_eq!(read_all(b"ab\xffcd", 2), (b"ab".to_vec(), Short::NotUtf8));
        assert_eq!(read_all(b"ab\xe2\x82", 2), (b"ab".to_vec(), Short::NotUtf8));
    }

    #[test]
    fn places_bytes_at_the_line_and_column_serde_json_would() {
        // Lines of every length up to a few times a block, one of them
        // longer than a block, so that the window slides while a line is
        // still being counted; a mark first, which serde_json never sees.
        let mut text = String::from("\u{feff}");
        for n in 0..3000usize {
            let len = if n == 1500 {
                BLOCK + 17
            } else {
                (n * 7919) % 4000
            };
            text.push_str(&"é".repeat(len / 2));
            text.push('\n');
        }
        let body = &text.as_bytes()[UTF8_BOM.len()..];
        let expected = |at: usize| {
            let before = &body[..at];
            let line = 1 + before.iter().filter(|&&byte| byte == b'\n').count() as u64;
            let began = before
                .iter()
                .rposition(|&byte| byte == b'\n')
                .map_or(0, |n| n + 1);
            (line, (at - began) as u64 + 1)
        };
        let mut blocks = Blocks::new(Trickle {
            bytes: text.as_bytes(),
            chunk: 1 << 20,
        });
        let mut consumed = 0;
        let mut asked = 0;
        let mut checked = 0;
        while blocks.fill().unwrap().is_ok() {
            // A few places in each fill, in increasing order, then most of
            // what was read is consumed.
            let data_len = blocks.data().len();
            for at in [0, data_len / 3, data_len / 2, data_len.saturating_sub(1)] {
                if consumed + at < asked {
                    continue;
                }
                asked = consumed + at;
                let place = (blocks.line_at(at), blocks.column_at(at));
                assert_eq!(place, expected(consumed + at), "at {}", consumed + at);
                checked += 1;
            }
            let amount = data_len - data_len / 4;
            blocks.consume(amount);
            consumed += amount;
        }
        assert!(checked > 20, "{checked} places checked");
    }

    #[test]
    fn a_window_handed_on_reads_the_next_file_as_a_fresh_one() {
        let first = "\u{feff}x€y\nz\n".repeat(1000);
        let mut blocks = Blocks::new(first.as_bytes());
        while blocks.fill().unwrap().is_ok() {}
        let buffer = blocks.into_buffer();
        assert_eq!(buffer.len(), BLOCK);
        let second = "ab\ncd\n\u{feff}";
        let mut blocks = Blocks::with_buffer(second.as_bytes(), buffer);
        while blocks.fill().unwrap().is_ok() {}
        assert_eq!(blocks.data(), second.as_bytes());
        assert_eq!(blocks.line_at(second.len()), 3);
        // One grown past a block is let go.
        let long = "a".repeat(BLOCK + 1);
        let mut blocks = Blocks::new(long.as_bytes());
        while blocks.fill().unwrap().is_ok() {}
        assert_eq!(blocks.data().len(), BLOCK + 1);
        assert!(blocks.into_buffer().is_empty());
    }

    #[test]
    fn counts_lines_across_refills() {
        let text = b"\xEF\xBB\xBFab\ncd\n\nef";
        let mut blocks = Blocks::new(Trickle {
            bytes: text,
            chunk: 4,
        });
        while blocks.fill().unwrap().is_ok() {}
        let data = blocks.data().to_vec();
        assert_eq!(data, b"ab\ncd\n\nef");
        let e = data.iter().position(|&b| b == b'e').unwrap();
        assert_eq!(blocks.line_at(0), 1);
        assert_eq!(blocks.line_at(3), 2);
        assert_eq!(blocks.line_at(e), 4);
    }
}
