//! `tine --json logs`: the serial console as one `{"line": …}` object per
//! line. The console is the guest's: its bytes may be any bytes, so lines
//! are decoded lossily and an endless line is cut.

/// Longest line kept before it is emitted unfinished.
const MAX_LINE: usize = 64 * 1024;

/// Splits a byte stream into lines as chunks arrive.
#[derive(Default)]
pub struct Lines {
    buf: Vec<u8>,
}

impl Lines {
    /// The lines `chunk` completes (without their `\r\n` or `\n`).
    pub fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut out = Vec::new();
        for &b in chunk {
            if b == b'\n' {
                out.push(text(&std::mem::take(&mut self.buf)));
            } else {
                self.buf.push(b);
                if self.buf.len() >= MAX_LINE {
                    out.push(text(&std::mem::take(&mut self.buf)));
                }
            }
        }
        out
    }

    /// What is left after the last newline, if anything.
    pub fn finish(self) -> Option<String> {
        (!self.buf.is_empty()).then(|| text(&self.buf))
    }
}

fn text(line: &[u8]) -> String {
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    String::from_utf8_lossy(line).into_owned()
}

/// The JSON object printed for one line.
pub fn json(line: &str) -> String {
    serde_json::json!({ "line": line }).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_split_across_chunks_come_out_whole_without_carriage_returns() {
        let mut l = Lines::default();

        let first = l.push(b"[ 0.1] boot\r\ntine-ag");
        let second = l.push(b"ent: serving\r\npartial");

        assert_eq!(first, vec!["[ 0.1] boot"]);
        assert_eq!(second, vec!["tine-agent: serving"]);
        assert_eq!(l.finish().as_deref(), Some("partial"));
    }

    #[test]
    fn invalid_utf8_and_endless_lines_still_give_json_strings() {
        let mut l = Lines::default();

        let bad = l.push(b"\xff\xfeok\n");
        let long = l.push(&vec![b'x'; MAX_LINE + 5]);

        assert_eq!(bad, vec!["\u{fffd}\u{fffd}ok"]);
        assert_eq!(json("say \"hi\""), r#"{"line":"say \"hi\""}"#);
        assert_eq!(long.len(), 1);
        assert_eq!(long[0].len(), MAX_LINE);
        assert_eq!(l.finish().map(|s| s.len()), Some(5));
    }
}
