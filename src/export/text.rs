//! The bytes of one export file on their way to a parser.
//!
//! Every byte is checked to be UTF-8 here, before csv or serde_json sees it,
//! so invalid input is reported at its exact line and column whatever the
//! format, and a leading byte-order mark (Excel and Windows PowerShell write
//! one) is dropped. Defects found below the parsers travel up through them
//! inside an [`io::Error`] as an [`InputDefect`].

use std::cell::{Cell, RefCell};
use std::error::Error;
use std::fmt;
use std::io::{self, BufRead, Read};

pub(super) const UTF8_BOM: &[u8] = b"\xEF\xBB\xBF";
const BUFFER_SIZE: usize = 256 * 1024;

/// A problem in the bytes of a file, found by a reader wrapper rather than by
/// the parser on top of it. Lines and columns are 1-based; columns count
/// bytes, as serde_json's do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct InputDefect {
    pub line: u64,
    pub column: u64,
    pub message: String,
}

impl InputDefect {
    pub fn into_io_error(self) -> io::Error {
        io::Error::new(io::ErrorKind::InvalidData, self)
    }

    /// The defect carried by `error`, if it carries one.
    pub fn carried_by(error: &io::Error) -> Option<&InputDefect> {
        error.get_ref()?.downcast_ref()
    }
}

impl fmt::Display for InputDefect {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}: {}", self.line, self.column, self.message)
    }
}

impl Error for InputDefect {}

/// Hands out only bytes that have been checked to be UTF-8. When an invalid
/// byte is found, the valid bytes before it are still handed out first, so a
/// parser reports any earlier problem of its own before this one.
pub(super) struct TextInput<R> {
    inner: R,
    buffer: Box<[u8]>,
    /// Next byte to hand out.
    position: usize,
    /// End of the checked bytes; `valid_end..filled` is the start of a
    /// multi-byte character whose remaining bytes have not been read yet.
    valid_end: usize,
    filled: usize,
    bom_checked: bool,
    at_eof: bool,
    /// Line and column of `buffer[valid_end]`.
    line: u64,
    column: u64,
    defect: Option<InputDefect>,
}

impl<R: Read> TextInput<R> {
    pub fn new(inner: R) -> Self {
        TextInput {
            inner,
            buffer: vec![0; BUFFER_SIZE].into_boxed_slice(),
            position: 0,
            valid_end: 0,
            filled: 0,
            bom_checked: false,
            at_eof: false,
            line: 1,
            column: 1,
            defect: None,
        }
    }

    fn refill(&mut self) -> io::Result<()> {
        self.buffer.copy_within(self.valid_end..self.filled, 0);
        self.filled -= self.valid_end;
        self.position = 0;
        self.valid_end = 0;

        let read = loop {
            match self.inner.read(&mut self.buffer[self.filled..]) {
                Ok(read) => break read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
                Err(error) => return Err(error),
            }
        };
        self.filled += read;
        self.at_eof = read == 0;

        if !self.bom_checked {
            // A short first read could split the BOM; decide only once three
            // bytes (or the whole file) are in.
            if self.filled < UTF8_BOM.len() && !self.at_eof {
                return Ok(());
            }
            self.bom_checked = true;
            if self.buffer[..self.filled].starts_with(UTF8_BOM) {
                self.position = UTF8_BOM.len();
                self.valid_end = UTF8_BOM.len();
            }
        }

        let unchecked = &self.buffer[self.valid_end..self.filled];
        // The SIMD check first; where it fails, the exact one says where.
        let (valid_len, invalid_len) = if simdutf8::basic::from_utf8(unchecked).is_ok() {
            (unchecked.len(), None)
        } else {
            match std::str::from_utf8(unchecked) {
                Ok(_) => (unchecked.len(), None),
                Err(error) => (error.valid_up_to(), Some(error.error_len())),
            }
        };
        self.accept(self.valid_end + valid_len);

        match invalid_len {
            None => {}
            Some(Some(_)) => {
                let byte = self.buffer[self.valid_end];
                self.defect = Some(self.defect_here(format!("invalid UTF-8 byte 0x{byte:02X}")));
            }
            // The last character is not complete yet: keep its bytes and
            // read on, unless the file ends inside it.
            Some(None) if self.at_eof => {
                self.defect = Some(
                    self.defect_here("invalid UTF-8: the file ends inside a character".into()),
                );
            }
            Some(None) => {}
        }
        Ok(())
    }

    /// Mark `buffer[valid_end..end]` as checked and move the line and column
    /// past it.
    fn accept(&mut self, end: usize) {
        let accepted = &self.buffer[self.valid_end..end];
        match accepted.iter().rposition(|&byte| byte == b'\n') {
            Some(last_newline) => {
                self.line += count_newlines(accepted);
                self.column = (accepted.len() - last_newline) as u64;
            }
            None => self.column += accepted.len() as u64,
        }
        self.valid_end = end;
    }

    fn defect_here(&self, message: String) -> InputDefect {
        InputDefect {
            line: self.line,
            column: self.column,
            message,
        }
    }
}

impl<R: Read> BufRead for TextInput<R> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        while self.position == self.valid_end {
            if let Some(defect) = &self.defect {
                return Err(defect.clone().into_io_error());
            }
            if self.at_eof {
                break;
            }
            self.refill()?;
        }
        Ok(&self.buffer[self.position..self.valid_end])
    }

    fn consume(&mut self, amount: usize) {
        self.position = (self.position + amount).min(self.valid_end);
    }
}

impl<R: Read> Read for TextInput<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        // serde_json reads one byte per call: keep that path short.
        if let ([slot], true) = (&mut *out, self.position < self.valid_end) {
            *slot = self.buffer[self.position];
            self.position += 1;
            return Ok(1);
        }
        let available = self.fill_buf()?;
        let amount = available.len().min(out.len());
        out[..amount].copy_from_slice(&available[..amount]);
        self.consume(amount);
        Ok(amount)
    }
}

/// How far a parser has consumed its input, kept by [`ProgressReader`] where
/// code that cannot reach the reader (a serde visitor) can look.
#[derive(Debug, Default)]
pub(super) struct ReadProgress {
    /// The bytes consumed since [`Self::start_capture`], while capturing.
    capture: RefCell<Option<Vec<u8>>>,
    newlines: Cell<u64>,
    /// Bytes consumed since the last newline.
    column: Cell<u64>,
    last_byte: Cell<Option<u8>>,
    content_seen: Cell<bool>,
}

impl ReadProgress {
    /// Whether anything but whitespace has been consumed.
    pub fn content_seen(&self) -> bool {
        self.content_seen.get()
    }

    /// Newlines consumed so far.
    pub fn newlines(&self) -> u64 {
        self.newlines.get()
    }

    /// 1-based line and column of the byte consumed last (column 0 when that
    /// byte is a newline, as serde_json counts).
    pub fn last_position(&self) -> (u64, u64) {
        (self.newlines.get() + 1, self.column.get())
    }

    /// The byte consumed last.
    pub fn last_byte(&self) -> Option<u8> {
        self.last_byte.get()
    }

    /// Keep every byte consumed from now on, after `start`.
    pub fn start_capture(&self, start: &[u8]) {
        let mut capture = self.capture.borrow_mut();
        let buffer = capture.get_or_insert_with(Vec::new);
        buffer.clear();
        buffer.extend_from_slice(start);
    }

    /// The bytes kept since [`Self::start_capture`]; capturing stops.
    pub fn take_capture(&self) -> Vec<u8> {
        self.capture.borrow_mut().take().unwrap_or_default()
    }

    fn capture(&self, bytes: &[u8]) {
        if let Some(buffer) = self.capture.borrow_mut().as_mut() {
            buffer.extend_from_slice(bytes);
        }
    }
}

pub(super) struct ProgressReader<'p, R> {
    inner: R,
    progress: &'p ReadProgress,
}

impl<'p, R: Read> ProgressReader<'p, R> {
    pub fn new(inner: R, progress: &'p ReadProgress) -> Self {
        ProgressReader { inner, progress }
    }
}

impl<R: Read> Read for ProgressReader<'_, R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let read = self.inner.read(out)?;
        let consumed = &out[..read];
        let progress = self.progress;
        progress.capture(consumed);
        if let [byte] = consumed {
            // The one-byte reads of serde_json, without the slice scans.
            if *byte == b'\n' {
                progress.newlines.set(progress.newlines.get() + 1);
                progress.column.set(0);
            } else {
                progress.column.set(progress.column.get() + 1);
            }
            progress.last_byte.set(Some(*byte));
            if !byte.is_ascii_whitespace() {
                progress.content_seen.set(true);
            }
            return Ok(read);
        }
        if !consumed.iter().all(u8::is_ascii_whitespace) {
            progress.content_seen.set(true);
        }
        match consumed.iter().rposition(|&byte| byte == b'\n') {
            Some(last_newline) => {
                progress
                    .newlines
                    .set(progress.newlines.get() + count_newlines(consumed));
                progress
                    .column
                    .set((consumed.len() - last_newline - 1) as u64);
            }
            None => progress
                .column
                .set(progress.column.get() + consumed.len() as u64),
        }
        if let Some(&last) = consumed.last() {
            progress.last_byte.set(Some(last));
        }
        Ok(read)
    }
}

pub(super) fn count_newlines(bytes: &[u8]) -> u64 {
    memchr::memchr_iter(b'\n', bytes).count() as u64
}

#[cfg(test)]
mod tests {
    use super::super::Trickle;
    use super::*;

    fn read_all(bytes: &[u8], chunk: usize) -> (Vec<u8>, Option<InputDefect>) {
        let mut input = TextInput::new(Trickle { bytes, chunk });
        let mut out = Vec::new();
        let defect = input
            .read_to_end(&mut out)
            .err()
            .map(|error| InputDefect::carried_by(&error).cloned().unwrap());
        (out, defect)
    }

    fn defect(line: u64, column: u64, message: &str) -> Option<InputDefect> {
        Some(InputDefect {
            line,
            column,
            message: message.into(),
        })
    }

    #[test]
    fn checks_utf8_and_places_defects() {
        let truncated = "invalid UTF-8: the file ends inside a character";
        let cases: &[(&[u8], &[u8], Option<InputDefect>)] = &[
            (b"", b"", None),
            (b"plain\ntext\n", b"plain\ntext\n", None),
            (b"\xEF\xBB\xBFa,b\n", b"a,b\n", None),
            (b"\xEF\xBB", b"", defect(1, 1, truncated)),
            (b"a\xEF\xBB\xBF", b"a\xEF\xBB\xBF", None),
            (
                "S\u{e3}o Paulo \u{20ac}".as_bytes(),
                "S\u{e3}o Paulo \u{20ac}".as_bytes(),
                None,
            ),
            (
                b"ok\nbad \xFF here",
                b"ok\nbad ",
                defect(2, 5, "invalid UTF-8 byte 0xFF"),
            ),
            (
                b"\xEF\xBB\xBFx\xC3(",
                b"x",
                defect(1, 2, "invalid UTF-8 byte 0xC3"),
            ),
            (b"one\ntwo\xE2\x82", b"one\ntwo", defect(2, 4, truncated)),
            (
                b"\n\n\xC0\x80",
                b"\n\n",
                defect(3, 1, "invalid UTF-8 byte 0xC0"),
            ),
        ];
        for &(input, expected_out, ref expected_defect) in cases {
            for chunk in [1, 2, 3, 7, BUFFER_SIZE] {
                let (out, defect) = read_all(input, chunk);
                assert_eq!(out, expected_out, "input {input:?}, chunk {chunk}");
                assert_eq!(&defect, expected_defect, "input {input:?}, chunk {chunk}");
            }
        }
    }

    #[test]
    fn places_a_defect_beyond_the_first_buffer() {
        let mut bytes = vec![b'x'; BUFFER_SIZE + 10];
        bytes[BUFFER_SIZE - 1] = b'\n';
        bytes[BUFFER_SIZE + 3] = 0xFE;
        let (out, defect) = read_all(&bytes, BUFFER_SIZE);
        assert_eq!(out.len(), BUFFER_SIZE + 3);
        assert_eq!(defect.unwrap().line, 2);
    }

    #[test]
    fn a_multibyte_character_split_across_buffers_is_valid() {
        let mut text = "a".repeat(BUFFER_SIZE - 1);
        text.push('\u{20ac}');
        text.push_str("\nend");
        let (out, defect) = read_all(text.as_bytes(), BUFFER_SIZE);
        assert_eq!(defect, None);
        assert_eq!(out, text.as_bytes());
    }

    #[test]
    fn progress_reader_keeps_count() {
        let progress = ReadProgress::default();
        let mut reader = ProgressReader::new(&b"a\nbc\n\nde"[..], &progress);
        let mut seen = vec![(
            progress.newlines(),
            progress.last_position(),
            progress.last_byte(),
        )];
        let mut byte = [0];
        while reader.read(&mut byte).unwrap() == 1 {
            seen.push((
                progress.newlines(),
                progress.last_position(),
                progress.last_byte(),
            ));
        }
        assert_eq!(
            seen,
            [
                (0, (1, 0), None),
                (0, (1, 1), Some(b'a')),
                (1, (2, 0), Some(b'\n')),
                (1, (2, 1), Some(b'b')),
                (1, (2, 2), Some(b'c')),
                (2, (3, 0), Some(b'\n')),
                (3, (4, 0), Some(b'\n')),
                (3, (4, 1), Some(b'd')),
                (3, (4, 2), Some(b'e')),
            ]
        );
        assert!(progress.content_seen());

        let progress = ReadProgress::default();
        let mut reader = ProgressReader::new(&b" \r\n\t x"[..], &progress);
        let mut blank = [0; 5];
        reader.read_exact(&mut blank).unwrap();
        assert!(!progress.content_seen());
        reader.read_exact(&mut blank[..1]).unwrap();
        assert!(progress.content_seen());

        let progress = ReadProgress::default();
        let mut reader = ProgressReader::new(&b"ab\ncd\nef"[..], &progress);
        let mut first = [0; 5];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(progress.last_position(), (2, 2));
        reader.read_to_end(&mut Vec::new()).unwrap();
        assert_eq!(progress.last_position(), (3, 2));
    }
}
