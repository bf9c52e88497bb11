//! JSON Lines: one record object per line, as ad-hoc scripts write them.

use std::io::BufRead;
use std::ops::ControlFlow;
use std::path::Path;

use serde::de::DeserializeSeed;

use super::json::{RecordFields, json_error, not_an_object};
use super::{ExportError, Sink, input_error};

/// Read one JSON Lines file, handing each record to `sink`. Blank lines are
/// skipped; `\n` and `\r\n` line ends are both accepted.
pub(super) fn read_jsonl<R: BufRead>(
    path: &Path,
    mut input: R,
    sink: &mut Sink<'_>,
) -> Result<ControlFlow<()>, ExportError> {
    let mut line = Vec::new();
    let mut line_number = 0;
    loop {
        line.clear();
        let read = input
            .read_until(b'\n', &mut line)
            .map_err(|error| input_error(path, error))?;
        if read == 0 {
            return Ok(ControlFlow::Continue(()));
        }
        line_number += 1;
        let text = without_line_end(&line);
        let Some(start) = text.iter().position(|byte| !byte.is_ascii_whitespace()) else {
            continue;
        };
        if text[start] != b'{' {
            return Err(ExportError::Parse {
                path: path.to_path_buf(),
                line: line_number,
                column: start as u64 + 1,
                message: not_an_object(text[start]),
            });
        }

        let mut deserializer = serde_json::Deserializer::from_slice(text);
        let fields = RecordFields
            .deserialize(&mut deserializer)
            .and_then(|fields| deserializer.end().map(|()| fields))
            .map_err(|error| json_error(path, error, Some(line_number)))?;
        if sink.emit(path, line_number, fields).is_break() {
            return Ok(ControlFlow::Break(()));
        }
    }
}

fn without_line_end(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}
