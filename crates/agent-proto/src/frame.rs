//! Line framing with a hard size cap, shared by the agent (sync) and the client (async).

use serde::Serialize;

use crate::msg::{ErrorCode, Request, Response};

/// One JSON line, newline included. Compact JSON never contains a raw newline.
pub fn encode<T: Serialize>(msg: &T) -> Vec<u8> {
    let mut line = serde_json::to_vec(msg).expect("protocol types always serialize");
    line.push(b'\n');
    line
}

/// A line went past the cap; its bytes were dropped up to the next newline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Oversized;

/// Splits a byte stream into lines without ever buffering more than `max` bytes.
///
/// Empty lines (and a trailing `\r`) are dropped. After an oversized line it reports
/// [`Oversized`] once and skips input until the next newline, so the stream resyncs.
#[derive(Debug)]
pub struct LineSplitter {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

impl LineSplitter {
    /// `max` counts the newline, like [`crate::MAX_LINE`].
    pub fn new(max: usize) -> Self {
        LineSplitter {
            buf: Vec::new(),
            max,
            skipping: false,
        }
    }

    /// Feed `data`; `sink` gets each complete line (without newline) or [`Oversized`].
    pub fn push(&mut self, mut data: &[u8], mut sink: impl FnMut(Result<&[u8], Oversized>)) {
        while !data.is_empty() {
            let newline = data.iter().position(|&b| b == b'\n');
            let (chunk, rest) = match newline {
                Some(i) => (&data[..i], &data[i + 1..]),
                None => (data, &[][..]),
            };
            data = rest;
            if !self.skipping {
                // +1 for the newline that ends (or will end) this line.
                if self.buf.len() + chunk.len() + 1 > self.max {
                    self.buf = Vec::new();
                    self.skipping = true;
                    sink(Err(Oversized));
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            if newline.is_some() {
                if !self.skipping {
                    let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
                    if !line.is_empty() {
                        sink(Ok(line));
                    }
                }
                self.buf.clear();
                self.skipping = false;
            }
        }
    }

    /// Bytes of the unfinished line held so far.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }
}

/// Parse one line from the agent (the host's side of the protocol).
pub fn parse_response(line: &[u8]) -> Result<Response, serde_json::Error> {
    serde_json::from_slice(line)
}

/// The host's reading side: turns the guest's byte stream into replies.
///
/// Everything here comes from the guest and is untrusted. A line longer than
/// `max` is fatal (the decoder stays failed): an honest agent never sends one.
/// Lines that are not a valid reply are dropped: they are tails of frames cut
/// off when an earlier session disconnected.
#[derive(Debug)]
pub struct ReplyDecoder {
    lines: LineSplitter,
    failed: bool,
}

impl ReplyDecoder {
    /// `max` counts the newline, like [`crate::MAX_LINE`].
    pub fn new(max: usize) -> Self {
        ReplyDecoder {
            lines: LineSplitter::new(max),
            failed: false,
        }
    }

    /// Feed `data`; replies it completes are appended to `out`.
    pub fn push(&mut self, data: &[u8], out: &mut Vec<Response>) -> Result<(), Oversized> {
        if self.failed {
            return Err(Oversized);
        }
        let failed = &mut self.failed;
        self.lines.push(data, |line| match line {
            Ok(_) if *failed => {}
            Ok(line) => out.extend(parse_response(line).ok()),
            Err(Oversized) => *failed = true,
        });
        if self.failed {
            return Err(Oversized);
        }
        Ok(())
    }

    /// Bytes of the unfinished line held so far (never more than `max`).
    pub fn pending(&self) -> usize {
        self.lines.pending()
    }
}

/// Why a request line was rejected, with the id when one could be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub id: Option<u64>,
    pub code: ErrorCode,
    pub message: String,
}

/// Parse a request line, recovering the `id` of a malformed request so the error can be
/// routed back to its caller.
pub fn parse_request(line: &[u8]) -> Result<Request, ParseError> {
    let value: serde_json::Value = serde_json::from_slice(line).map_err(|e| ParseError {
        id: None,
        code: ErrorCode::BadRequest,
        message: format!("invalid JSON: {e}"),
    })?;
    let id = value.get("id").and_then(serde_json::Value::as_u64);
    serde_json::from_value(value).map_err(|e| ParseError {
        id,
        code: ErrorCode::BadRequest,
        message: format!("invalid request: {e}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{ExecRequest, Op, Reply, Response};

    fn split(max: usize, chunks: &[&[u8]]) -> Vec<Result<Vec<u8>, Oversized>> {
        let mut s = LineSplitter::new(max);
        let mut out = Vec::new();
        for c in chunks {
            s.push(c, |l| out.push(l.map(<[u8]>::to_vec)));
        }
        out
    }

    #[test]
    fn lines_split_across_chunks_are_joined() {
        let out = split(64, &[b"ab", b"c\nde", b"f\n"]);
        assert_eq!(out, vec![Ok(b"abc".to_vec()), Ok(b"def".to_vec())]);
    }

    #[test]
    fn empty_lines_and_carriage_returns_are_dropped() {
        let out = split(64, &[b"\n\r\n\nx\r\n"]);
        assert_eq!(out, vec![Ok(b"x".to_vec())]);
    }

    #[test]
    fn oversized_line_is_reported_once_and_stream_resyncs() {
        let out = split(8, &[b"0123456", b"789abcdef", b"ghij\nok\n"]);
        assert_eq!(out, vec![Err(Oversized), Ok(b"ok".to_vec())]);
    }

    #[test]
    fn line_of_exactly_max_bytes_with_newline_is_accepted() {
        let out = split(4, &[b"abc\nabcd\n"]);
        assert_eq!(out, vec![Ok(b"abc".to_vec()), Err(Oversized)]);
    }

    #[test]
    fn buffer_never_exceeds_cap() {
        let mut s = LineSplitter::new(16);
        s.push(&[b'x'; 1000], |_| {});
        assert_eq!(s.pending(), 0);
    }

    fn decode(max: usize, chunks: &[&[u8]]) -> (Vec<Response>, Result<(), Oversized>) {
        let mut d = ReplyDecoder::new(max);
        let mut out = Vec::new();
        let mut result = Ok(());
        for c in chunks {
            result = result.and(d.push(c, &mut out));
        }
        (out, result)
    }

    #[test]
    fn a_reply_split_anywhere_decodes_the_same() {
        let line = encode(&Response {
            id: Some(7),
            reply: Reply::Stdout {
                data: b"hi".to_vec(),
            },
        });
        let whole = decode(1024, &[&line]);
        let bytewise: Vec<&[u8]> = line.chunks(1).collect();

        assert_eq!(decode(1024, &bytewise), whole);
        assert_eq!(whole.0.len(), 1);
    }

    #[test]
    fn garbage_bad_utf8_and_bad_base64_lines_are_dropped() {
        let good = encode(&Response {
            id: Some(1),
            reply: Reply::Ok,
        });
        let (out, result) = decode(
            1024,
            &[
                b"\xff\xfe{\n",
                b"{\"id\":2,\"type\":\"stdout\",\"data\":\"!!\"}\n",
                b"{\"id\":\"\xc3\x28\",\"type\":\"ok\"}\n",
                b"{\"id\":-1,\"type\":\"ok\"}\n",
                &good,
            ],
        );

        assert_eq!(result, Ok(()));
        assert_eq!(out.len(), 1);
        assert_eq!(out[0].id, Some(1));
    }

    #[test]
    fn an_oversized_reply_fails_the_decoder_for_good() {
        let mut d = ReplyDecoder::new(16);
        let mut out = Vec::new();

        let first = d.push(&[b'x'; 100], &mut out);
        let later = d.push(b"{\"id\":1,\"type\":\"ok\"}\n", &mut out);

        assert_eq!((first, later), (Err(Oversized), Err(Oversized)));
        assert!(out.is_empty());
        assert!(d.pending() <= 16);
    }

    #[test]
    fn garbage_is_bad_request_without_id() {
        let err = parse_request(b"\x00not json").unwrap_err();
        assert_eq!((err.id, err.code), (None, ErrorCode::BadRequest));
    }

    #[test]
    fn unknown_op_keeps_the_id() {
        let err = parse_request(br#"{"id":42,"op":"launch_missiles"}"#).unwrap_err();
        assert_eq!(err.id, Some(42));
        assert!(err.message.contains("launch_missiles"), "{}", err.message);
    }

    #[test]
    fn bad_base64_is_rejected_with_id() {
        let err = parse_request(br#"{"id":5,"op":"add_entropy","bytes":"!!"}"#).unwrap_err();
        assert_eq!(err.id, Some(5));
    }

    #[test]
    fn exec_request_round_trips() {
        let mut exec = ExecRequest::new(["sh", "-c", "cat"]);
        exec.stdin = Some(b"\x00\xffhi".to_vec());
        exec.env.insert("A".into(), "b".into());
        exec.timeout_ms = Some(1500);
        let req = Request {
            id: u64::MAX,
            op: Op::Exec(exec),
        };
        let line = encode(&req);
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
        assert_eq!(parse_request(&line[..line.len() - 1]).unwrap(), req);
    }

    #[test]
    fn minimal_exec_request_parses() {
        let req = parse_request(br#"{"id":1,"op":"exec","argv":["true"]}"#).unwrap();
        assert_eq!(req.op, Op::Exec(ExecRequest::new(["true"])));
    }

    #[test]
    fn unit_requests_have_flat_wire_form() {
        let line = encode(&Request {
            id: 3,
            op: Op::Ping,
        });
        assert_eq!(line, b"{\"id\":3,\"op\":\"ping\"}\n");
    }

    #[test]
    fn configure_network_has_flat_wire_form_and_optional_fields() {
        let line = br#"{"id":4,"op":"configure_network","mac":"02:74:0a:d1:00:02","address":"10.209.0.2/16"}"#;

        let req = parse_request(line).unwrap();

        let want = crate::NetworkConfig {
            mac: "02:74:0a:d1:00:02".into(),
            address: "10.209.0.2/16".into(),
            ..Default::default()
        };
        assert_eq!(req.op, Op::ConfigureNetwork(want));
        assert_eq!(encode(&req).trim_ascii_end(), &line[..]);
    }

    #[test]
    fn responses_round_trip_including_null_id() {
        for resp in [
            Response {
                id: Some(9),
                reply: Reply::Stdout {
                    data: b"hi\n".to_vec(),
                },
            },
            Response {
                id: None,
                reply: Reply::Error {
                    code: ErrorCode::TooLarge,
                    message: "x".into(),
                },
            },
            Response {
                id: Some(1),
                reply: Reply::Ok,
            },
        ] {
            let line = encode(&resp);
            let back: Response = serde_json::from_slice(&line).unwrap();
            assert_eq!(back, resp);
        }
    }

    #[test]
    fn unknown_error_code_from_newer_agent_parses_as_other() {
        let line = br#"{"id":1,"type":"error","code":"quota","message":"m"}"#;
        let resp: Response = serde_json::from_slice(line).unwrap();
        assert!(matches!(
            resp.reply,
            Reply::Error {
                code: ErrorCode::Other,
                ..
            }
        ));
    }
}
