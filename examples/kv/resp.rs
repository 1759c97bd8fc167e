//! RESP2, the Redis serialization protocol: requests parsed from a byte buffer, replies
//! written into one.
//!
//! A request is an array of bulk strings (`*2\r\n$3\r\nGET\r\n$1\r\nk\r\n`, what redis-cli
//! and redis-benchmark send) or an inline command (`GET k\r\n`, what a person types into
//! `nc`; words split on spaces, no quoting). Everything a peer declares is bounded by
//! [`Limits`] before it is buffered: argument count, argument length, line length and the
//! whole request. A request that breaks the protocol or a bound is a [`Parsed::Error`]; the
//! stream cannot be resynchronized after it, so the caller answers the error and closes the
//! connection (as Redis does).

use std::ops::Range;

/// Bounds on one request.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Arguments in one request, the command name included.
    pub args_max: usize,
    /// Bytes of one argument.
    pub arg_bytes_max: usize,
    /// Bytes of one request (every argument and the framing).
    pub request_bytes_max: usize,
    /// Bytes of an inline command line.
    pub inline_bytes_max: usize,
}

/// The bytes of a header line (`*N`, `$N`): a sign and 19 digits is plenty.
const HEADER_LINE_BYTES_MAX: usize = 32;

/// The outcome of parsing the front of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Parsed {
    /// No complete request yet (and nothing wrong so far): read more bytes.
    Incomplete,
    /// A complete request: the byte ranges of its arguments in the buffer, and how many bytes
    /// of the buffer it took. `args` is empty for an empty request (`*0`, a blank line): skip.
    Request {
        args: Vec<Range<usize>>,
        consumed: usize,
    },
    /// The buffer breaks the protocol or a bound: answer the error and close.
    Error(String),
}

/// Parses the request at the front of `buffer`.
pub fn parse(buffer: &[u8], limits: &Limits) -> Parsed {
    match buffer.first() {
        None => Parsed::Incomplete,
        Some(b'*') => parse_array(buffer, limits),
        Some(_) => parse_inline(buffer, limits),
    }
}

/// The line starting at `start` (without its `\r\n`) and where the next one starts; `Ok(None)`
/// if it is not complete yet; an error if it is longer than `max` or not ended by `\r\n`.
fn line(buffer: &[u8], start: usize, max: usize) -> Result<Option<(Range<usize>, usize)>, String> {
    let available = &buffer[start..];
    let window = &available[..available.len().min(max + 2)];
    match window.iter().position(|&byte| byte == b'\n') {
        Some(newline) => {
            if newline == 0 || window[newline - 1] != b'\r' {
                return Err("Protocol error: expected '\\r\\n'".to_string());
            }
            Ok(Some((start..start + newline - 1, start + newline + 1)))
        }
        None if window.len() > max + 1 => Err("Protocol error: too big header line".to_string()),
        None => Ok(None),
    }
}

/// A decimal integer with an optional minus sign, nothing else.
fn integer(bytes: &[u8]) -> Option<i64> {
    let (negative, digits) = match bytes.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, bytes),
    };
    if digits.is_empty() || digits.len() > 18 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let value = digits
        .iter()
        .fold(0i64, |value, digit| value * 10 + i64::from(digit - b'0'));
    Some(if negative { -value } else { value })
}

fn parse_array(buffer: &[u8], limits: &Limits) -> Parsed {
    let (count_line, mut position) = match line(buffer, 0, HEADER_LINE_BYTES_MAX) {
        Ok(Some(found)) => found,
        Ok(None) => return Parsed::Incomplete,
        Err(error) => return Parsed::Error(error),
    };
    let Some(count) = integer(&buffer[count_line.start + 1..count_line.end]) else {
        return Parsed::Error("Protocol error: invalid multibulk length".to_string());
    };
    if count <= 0 {
        // `*0` and `*-1` are empty requests: nothing to run.
        return Parsed::Request {
            args: Vec::new(),
            consumed: position,
        };
    }
    if count as u64 > limits.args_max as u64 {
        return Parsed::Error(format!(
            "Protocol error: {count} arguments, at most {} allowed",
            limits.args_max
        ));
    }
    let mut args = Vec::with_capacity(count as usize);
    for _ in 0..count {
        if position >= buffer.len() {
            return Parsed::Incomplete;
        }
        if buffer[position] != b'$' {
            return Parsed::Error(format!(
                "Protocol error: expected '$', got '{}'",
                char::from(buffer[position]).escape_default()
            ));
        }
        let (length_line, next) = match line(buffer, position, HEADER_LINE_BYTES_MAX) {
            Ok(Some(found)) => found,
            Ok(None) => return Parsed::Incomplete,
            Err(error) => return Parsed::Error(error),
        };
        let length = match integer(&buffer[length_line.start + 1..length_line.end]) {
            Some(length) if length >= 0 => length as u64,
            _ => return Parsed::Error("Protocol error: invalid bulk length".to_string()),
        };
        if length > limits.arg_bytes_max as u64 {
            return Parsed::Error(format!(
                "Protocol error: argument of {length} bytes, at most {} allowed",
                limits.arg_bytes_max
            ));
        }
        let length = length as usize;
        // Checked before the argument is buffered: a peer cannot make us hold more.
        if next + length + 2 > limits.request_bytes_max {
            return Parsed::Error(format!(
                "Protocol error: request larger than {} bytes",
                limits.request_bytes_max
            ));
        }
        if buffer.len() < next + length + 2 {
            return Parsed::Incomplete;
        }
        if &buffer[next + length..next + length + 2] != b"\r\n" {
            return Parsed::Error("Protocol error: bulk string not ended by '\\r\\n'".to_string());
        }
        args.push(next..next + length);
        position = next + length + 2;
    }
    Parsed::Request {
        args,
        consumed: position,
    }
}

fn parse_inline(buffer: &[u8], limits: &Limits) -> Parsed {
    let window = &buffer[..buffer.len().min(limits.inline_bytes_max + 1)];
    let Some(newline) = window.iter().position(|&byte| byte == b'\n') else {
        if window.len() > limits.inline_bytes_max {
            return Parsed::Error("Protocol error: too big inline request".to_string());
        }
        return Parsed::Incomplete;
    };
    let end = if newline > 0 && buffer[newline - 1] == b'\r' {
        newline - 1
    } else {
        newline
    };
    let mut args = Vec::new();
    let mut start = None;
    for (index, byte) in buffer[..end].iter().enumerate() {
        match (byte.is_ascii_whitespace(), start) {
            (false, None) => start = Some(index),
            (true, Some(word_start)) => {
                args.push(word_start..index);
                start = None;
            }
            _ => {}
        }
    }
    if let Some(word_start) = start {
        args.push(word_start..end);
    }
    if args.len() > limits.args_max {
        return Parsed::Error(format!(
            "Protocol error: {} arguments, at most {} allowed",
            args.len(),
            limits.args_max
        ));
    }
    Parsed::Request {
        args,
        consumed: newline + 1,
    }
}

/// `+text`: a status reply. `text` must not contain `\r` or `\n`.
pub fn simple(out: &mut Vec<u8>, text: &str) {
    out.push(b'+');
    push_line(out, text.as_bytes());
}

/// `-text`: an error reply, its first word the error kind (`ERR`, `TRYAGAIN`, ...). Line
/// breaks in `text` are replaced by spaces.
pub fn error(out: &mut Vec<u8>, text: &str) {
    out.push(b'-');
    push_line(out, text.as_bytes());
}

/// `:n`: an integer reply.
pub fn integer_reply(out: &mut Vec<u8>, value: i64) {
    out.extend_from_slice(format!(":{value}\r\n").as_bytes());
}

/// `$n\r\nbytes\r\n`, or the null bulk string `$-1\r\n` for `None`.
pub fn bulk(out: &mut Vec<u8>, value: Option<&[u8]>) {
    match value {
        Some(bytes) => {
            out.extend_from_slice(format!("${}\r\n", bytes.len()).as_bytes());
            out.extend_from_slice(bytes);
            out.extend_from_slice(b"\r\n");
        }
        None => out.extend_from_slice(b"$-1\r\n"),
    }
}

/// `*n`: the header of an array of `count` replies, which follow.
pub fn array(out: &mut Vec<u8>, count: usize) {
    out.extend_from_slice(format!("*{count}\r\n").as_bytes());
}

fn push_line(out: &mut Vec<u8>, text: &[u8]) {
    out.extend(text.iter().map(|&byte| match byte {
        b'\r' | b'\n' => b' ',
        other => other,
    }));
    out.extend_from_slice(b"\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    const LIMITS: Limits = Limits {
        args_max: 4,
        arg_bytes_max: 10,
        request_bytes_max: 64,
        inline_bytes_max: 20,
    };

    fn words(buffer: &[u8]) -> (Vec<&[u8]>, usize) {
        match parse(buffer, &LIMITS) {
            Parsed::Request { args, consumed } => (
                args.into_iter().map(|range| &buffer[range]).collect(),
                consumed,
            ),
            other => panic!("{other:?} for {:?}", buffer.escape_ascii().to_string()),
        }
    }

    #[test]
    fn arrays_of_bulk_strings_parse_and_report_what_they_consumed() {
        let request = b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$0\r\n\r\n*1\r\n$4\r\nPING\r\n";
        let (args, consumed) = words(request);
        assert_eq!(args, [&b"SET"[..], b"k", b""]);
        assert_eq!(consumed, 26);
        assert_eq!(words(&request[consumed..]).0, [&b"PING"[..]]);
        // Binary-safe: the length, not a delimiter, ends the argument.
        assert_eq!(words(b"*1\r\n$4\r\na\r\nb\r\n").0, [&b"a\r\nb"[..]]);
        assert_eq!(words(b"*0\r\n"), (vec![], 4));
        assert_eq!(words(b"*-1\r\n"), (vec![], 5));
    }

    #[test]
    fn every_strict_prefix_of_a_request_is_incomplete() {
        let request = b"*3\r\n$3\r\nSET\r\n$5\r\nkey-1\r\n$7\r\nvalue-1\r\n";
        for end in 0..request.len() {
            assert_eq!(parse(&request[..end], &LIMITS), Parsed::Incomplete, "{end}");
        }
        assert_eq!(words(request).1, request.len());
        let inline = b"GET key\r\n";
        for end in 0..inline.len() - 1 {
            assert_eq!(parse(&inline[..end], &LIMITS), Parsed::Incomplete, "{end}");
        }
    }

    #[test]
    fn inline_commands_split_on_whitespace() {
        assert_eq!(words(b"GET  key\r\n"), (vec![&b"GET"[..], b"key"], 10));
        assert_eq!(words(b"PING\n"), (vec![&b"PING"[..]], 5));
        assert_eq!(words(b"\r\n"), (vec![], 2));
    }

    #[test]
    fn malformed_or_oversized_requests_are_errors() {
        let bad: [&[u8]; 13] = [
            b"*x\r\n",
            b"*1\n",
            b"*1\r\n:5\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$z\r\n",
            b"*1\r\n$3\r\nabcd\r\n",
            b"*5\r\n",                                    // too many arguments
            b"*1\r\n$11\r\n",                             // argument too long
            b"*99999999999999999999\r\n",                 // overflowing count
            b"*1\r\n$000000000000000000000000000001\r\n", // endless header
            b"*4\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n0123456789\r\n$10\r\n", // request
            b"GET aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa", // inline line too long, no newline yet
            b"a b c d e\r\n",                                  // too many inline arguments
        ];
        for buffer in bad {
            assert!(
                matches!(parse(buffer, &LIMITS), Parsed::Error(_)),
                "{:?} parsed as {:?}",
                buffer.escape_ascii().to_string(),
                parse(buffer, &LIMITS)
            );
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A cheap deterministic generator: every buffer is parsed without a panic, and a
        // request never claims more bytes than the buffer has.
        let mut state = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"*$:\r\n-0123456789abc ";
        for _ in 0..20_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let length = (state % 40) as usize;
            let buffer: Vec<u8> = (0..length)
                .map(|index| alphabet[((state >> (index % 48)) as usize + index) % alphabet.len()])
                .collect();
            if let Parsed::Request { args, consumed } = parse(&buffer, &LIMITS) {
                assert!(consumed <= buffer.len());
                assert!(args.iter().all(|range| range.end <= consumed));
            }
        }
    }

    #[test]
    fn replies_are_framed() {
        let mut out = Vec::new();
        simple(&mut out, "OK");
        error(&mut out, "ERR bad\r\nthing");
        integer_reply(&mut out, -3);
        bulk(&mut out, Some(b"v"));
        bulk(&mut out, None);
        array(&mut out, 2);
        assert_eq!(
            out,
            b"+OK\r\n-ERR bad  thing\r\n:-3\r\n$1\r\nv\r\n$-1\r\n*2\r\n".to_vec()
        );
    }
}
