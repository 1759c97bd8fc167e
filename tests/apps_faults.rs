//! Adversarial review of the example applications and the ring: the replicated key-value
//! server `examples/kv.rs` (with `examples/kv/resp.rs` and `examples/support`), the sharded
//! bank `examples/bank.rs` (with `examples/bank/state.rs`), and `src/ring.rs`.
//!
//! What was reviewed, and how:
//! - **kv as a hostile or careless Redis client sees it**, one real process per node on
//!   loopback, spoken to in raw RESP2 over a `TcpStream` (no `redis-cli`): malformed frames
//!   (bad, negative and huge lengths, nested arrays, a bulk string not ended by CRLF, too
//!   many arguments, endless header and inline lines, a request above 4 MiB), frames split
//!   byte by byte, pipelines, `QUIT` mid-pipeline, a client that vanishes mid-frame and one
//!   that never reads, wrong arities, unknown and unsupported commands (`MULTI`, `WATCH`,
//!   expiry, `SET` options), binary keys and values at and above the limits, the `INCR`
//!   family at the edges of `i64`, the connection limit and session close on disconnect,
//!   the operator commands (`SYNOD.SETPEER`, `SYNOD.SETMEMBERS`) sent by a careless client,
//!   and a pipeline of `INCR`s and `SET`s through a follower while the leader is
//!   `SIGKILL`ed (exactly once, in order, reads see acknowledged writes, survivors agree).
//!   Every reply is parsed strictly: a malformed reply fails the test, not just a wrong
//!   value.
//! - **the bank** (one process: every group has one voter): hostile input (amounts, names,
//!   keys, arities), money conservation and keyed retries across a `SIGKILL` in the middle
//!   of cross-shard transfers, vote timeouts shorter than a shard's round trip, and how
//!   account names that are not UTF-8 are told apart.
//! - **the ring**: balance against the documented bound, exact transfer lists and movement
//!   only to or from the changed group (removal, weight change), and bad input through the
//!   API, `RingSpec` and serde.
//!
//! `src/kv.rs` and its `SessionTable` were reviewed in session 14
//! (`tests/lock_session_faults.rs`) and are not repeated here.
//!
//! Bugs found, all fixed in session 15 (their scenarios now pass; each doc comment gives the
//! input, the guarantee it broke and the fix): `SYNOD.SETPEER` grew the peer set (a dialer
//! each, retrying forever) without bound (`TcpPeers` refuses peers beyond `PEERS_MAX`);
//! `SYNOD.SETMEMBERS` accepted a voter no node can reach, so one command stopped the cluster
//! (every node named must now be this node or a peer); a value above the 1 MiB argument limit
//! got a TCP reset instead of the documented protocol error (the server now stops writing
//! and drains the input, bounded, before closing); the bank folded account names that are
//! not UTF-8 into one account (refused now).
//!
//! Run: `cargo nextest run --all-features --test apps_faults`. The process tests build the examples themselves, for this
//! test's profile and features, as `tests/kv_processes.rs` does, and use free ports below the
//! ephemeral range and temporary directories, removed with their processes.

mod examples_support;

use examples_support::{build_example, free_port_blocks, free_ports, text, Nodes, Reply};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};
use synod::ring::{GroupId, Ring, RingConfig, RingError, RingSpec};

// =======================================================================================
// Helpers (building the examples, free ports and processes from tests/examples_support; here
// a strict reply parser, raw writes, and processes with their own arguments).

/// Waits below end as soon as their condition holds; this bounds them on a busy machine.
const PATIENCE: Duration = Duration::from_secs(20);

fn kv_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_example("kv"))
}

fn bank_binary() -> &'static Path {
    static BINARY: OnceLock<PathBuf> = OnceLock::new();
    BINARY.get_or_init(|| build_example("bank"))
}

/// A blocking RESP2 client that writes raw bytes and parses replies strictly: a reply that
/// is not well-formed RESP2 is an error (`InvalidData`), never guessed at.
struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

fn invalid(what: String) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, what)
}

impl Client {
    fn connect(port: u16, timeout: Duration) -> std::io::Result<Client> {
        let address = std::net::SocketAddr::from(([127, 0, 0, 1], port));
        let stream = TcpStream::connect_timeout(&address, Duration::from_secs(1))?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        stream.set_nodelay(true)?;
        Ok(Client {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.raw(&frame(args))
    }

    fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    fn read_line(&mut self) -> std::io::Result<Vec<u8>> {
        let mut line = Vec::new();
        (&mut self.reader)
            .take(1 << 20)
            .read_until(b'\n', &mut line)?;
        if line.is_empty() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed",
            ));
        }
        if !line.ends_with(b"\r\n") || line[..line.len() - 2].contains(&b'\r') {
            return Err(invalid(format!(
                "reply line not ended by a lone CRLF: {:?}",
                line.escape_ascii().to_string()
            )));
        }
        line.truncate(line.len() - 2);
        Ok(line)
    }

    fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let Some((&kind, rest)) = line.split_first() else {
            return Err(invalid("an empty reply line".to_string()));
        };
        let text =
            || String::from_utf8(rest.to_vec()).map_err(|_| invalid("line not UTF-8".to_string()));
        let number = || -> std::io::Result<i64> {
            let text = text()?;
            let value: i64 = text
                .parse()
                .map_err(|_| invalid(format!("bad number {text:?}")))?;
            if value.to_string() != text {
                return Err(invalid(format!("non-canonical number {text:?}")));
            }
            Ok(value)
        };
        Ok(match kind {
            b'+' => Reply::Simple(text()?),
            b'-' => {
                let text = text()?;
                // An error's first word is its kind (ERR, TRYAGAIN, ...).
                if !text.split(' ').next().is_some_and(|word| {
                    !word.is_empty() && word.bytes().all(|b| b.is_ascii_uppercase() || b == b'_')
                }) {
                    return Err(invalid(format!("error reply without a kind: {text:?}")));
                }
                Reply::Error(text)
            }
            b':' => Reply::Integer(number()?),
            b'$' => match number()? {
                -1 => Reply::Bulk(None),
                length if length >= 0 => {
                    let mut data = vec![0; length as usize + 2];
                    self.reader.read_exact(&mut data)?;
                    if !data.ends_with(b"\r\n") {
                        return Err(invalid("bulk string not ended by CRLF".to_string()));
                    }
                    data.truncate(length as usize);
                    Reply::Bulk(Some(data))
                }
                length => return Err(invalid(format!("bulk length {length}"))),
            },
            b'*' => {
                let count = number()?;
                if count < 0 {
                    return Err(invalid(format!("array length {count}")));
                }
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.read_reply()?);
                }
                Reply::Array(items)
            }
            other => {
                return Err(invalid(format!(
                    "unknown reply kind {:?}",
                    char::from(other)
                )))
            }
        })
    }

    /// True once the server has closed the connection (nothing more to read), false if it
    /// sent more bytes; waits up to the read timeout.
    fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match self.reader.read(&mut byte) {
            Ok(0) => true,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}

fn frame(args: &[&[u8]]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

/// `field:value` lines of a bulk reply (INFO), as pairs.
fn field(reply: &Reply, name: &str) -> Option<String> {
    text(reply)
        .split("\r\n")
        .find_map(|line| line.strip_prefix(&format!("{name}:")).map(str::to_owned))
}

/// Server processes with their own arguments (`examples_support::Nodes`: data directories
/// and logs in one temporary directory; dropping it kills them and prints their logs if the
/// test is failing).
struct Procs {
    nodes: Nodes,
    args: Vec<Vec<String>>,
}

impl Procs {
    fn new(binary: &Path, args: Vec<Vec<String>>) -> Procs {
        Procs {
            nodes: Nodes::with_binary(binary.to_path_buf(), args.len()),
            args,
        }
    }

    fn start(&mut self, index: usize) {
        self.nodes.start(index, &self.args[index]);
    }

    /// `SIGKILL`s node `index` and reaps it.
    fn kill(&mut self, index: usize) {
        self.nodes.kill(index);
    }

    /// Panics if a node exited by itself (failed to start, or crashed: a panic aborts).
    fn check_running(&mut self) {
        self.nodes.check_running();
    }
}

/// `kv` nodes on loopback: their processes and client ports.
struct Kv {
    procs: Procs,
    ports: Vec<u16>,
}

impl Kv {
    /// `nodes` kv nodes (not started), each with `extra` options.
    fn new(nodes: usize, extra: &[&str]) -> Kv {
        let ports = free_ports(2 * nodes);
        let peers = (0..nodes)
            .map(|index| format!("{}=127.0.0.1:{}", index + 1, ports[index]))
            .collect::<Vec<_>>()
            .join(",");
        // One node elects itself at once; three get a margin for a busy machine.
        let election_ticks = if nodes == 1 { "5" } else { "30" };
        let args = (0..nodes)
            .map(|index| {
                let mut args: Vec<String> = [
                    "--id",
                    &(index + 1).to_string(),
                    "--peers",
                    &peers,
                    "--client",
                    &format!("127.0.0.1:{}", ports[nodes + index]),
                    "--cluster-id",
                    "16",
                    "--tick-ms",
                    "10",
                    "--election-ticks",
                    election_ticks,
                    "--heartbeat-ticks",
                    "3",
                ]
                .iter()
                .map(|arg| arg.to_string())
                .collect();
                args.extend(extra.iter().map(|arg| arg.to_string()));
                args
            })
            .collect();
        Kv {
            procs: Procs::new(kv_binary(), args),
            ports: ports[nodes..].to_vec(),
        }
    }

    /// One node, started, leading.
    fn single(extra: &[&str]) -> Kv {
        let mut kv = Kv::new(1, extra);
        kv.procs.start(0);
        kv.wait_for_leader();
        kv
    }

    fn client(&self, index: usize) -> Client {
        Client::connect(self.ports[index], Duration::from_secs(15)).expect("connecting")
    }

    /// A connection the node serves (retried while it is full of start-up connections).
    fn served_client(&self, index: usize) -> Client {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let mut client = self.client(index);
            if client.command(&[b"PING"]).ok() == Some(Reply::Simple("PONG".into())) {
                return client;
            }
            assert!(Instant::now() < deadline, "node {} never served", index + 1);
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn info(&self, index: usize) -> std::io::Result<Reply> {
        Client::connect(self.ports[index], Duration::from_secs(5))?.command(&[b"INFO"])
    }

    /// The node that says it leads, once exactly one running node does.
    fn wait_for_leader(&mut self) -> usize {
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.procs.check_running();
            let leaders: Vec<usize> = (0..self.ports.len())
                .filter(|&index| self.procs.nodes.started(index))
                .filter(|&index| {
                    self.info(index).is_ok_and(|reply| {
                        matches!(reply, Reply::Bulk(Some(_)))
                            && field(&reply, "role").as_deref() == Some("leader")
                    })
                })
                .collect();
            if let [leader] = leaders[..] {
                return leader;
            }
            assert!(Instant::now() < deadline, "no single leader: {leaders:?}");
            thread::sleep(Duration::from_millis(30));
        }
    }
}

// =======================================================================================
// kv: the RESP2 surface.

/// Malformed frames, one per connection, each after a good `PING` in the same write: the
/// `PING` is answered, then exactly one well-formed `-ERR Protocol error ...`, then the
/// server closes the connection (the stream cannot be resynchronized). The node serves on.
#[cfg(unix)]
#[test]
fn kv_malformed_frames_get_one_protocol_error_then_close() {
    let kv = Kv::single(&[]);
    let long_header = format!("*1\r\n${}\r\n", "0".repeat(40));
    let long_inline = format!("SET k {}", "v".repeat(64 * 1024 + 1)); // no newline yet
    let many = "*1025\r\n".to_string();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("count not a number", b"*x\r\n".to_vec()),
        ("LF without CR", b"*1\n$4\r\nPING\r\n".to_vec()),
        (
            "nested array",
            b"*2\r\n$3\r\nGET\r\n*1\r\n$1\r\nk\r\n".to_vec(),
        ),
        ("integer in a request", b"*1\r\n:5\r\n".to_vec()),
        ("null bulk argument", b"*1\r\n$-1\r\n".to_vec()),
        ("negative bulk length", b"*1\r\n$-7\r\n".to_vec()),
        (
            "bulk length overflowing i64",
            b"*1\r\n$99999999999999999999\r\n".to_vec(),
        ),
        (
            "bulk length above 1 MiB",
            b"*2\r\n$3\r\nSET\r\n$1048577\r\n".to_vec(),
        ),
        ("bulk not ended by CRLF", b"*1\r\n$4\r\nPINGxx\r\n".to_vec()),
        ("1025 arguments", many.into_bytes()),
        ("endless header line", long_header.into_bytes()),
        ("inline line above 64 KiB", long_inline.into_bytes()),
        (
            "request above 4 MiB",
            // Four arguments of 1 MiB and a fifth header: the whole request is too large.
            {
                let mut bytes = b"*6\r\n$3\r\nDEL\r\n".to_vec();
                for _ in 0..4 {
                    bytes.extend_from_slice(b"$1048576\r\n");
                    bytes.extend_from_slice(&vec![b'k'; 1024 * 1024]);
                    bytes.extend_from_slice(b"\r\n");
                }
                bytes.extend_from_slice(b"$16\r\n");
                bytes
            },
        ),
    ];
    for (name, bytes) in cases {
        let mut client = kv.client(0);
        let mut request = frame(&[b"PING"]);
        request.extend_from_slice(&bytes);
        client.raw(&request).expect(name);
        assert_eq!(
            client.read_reply().expect(name),
            Reply::Simple("PONG".into()),
            "{name}"
        );
        let error = client.read_reply().expect(name);
        assert!(
            error.is_error_starting("ERR Protocol error"),
            "{name}: {error:?}"
        );
        assert!(client.closed_by_server(), "{name}: the connection stayed");
    }
    // Empty requests are skipped without a reply, as Redis does.
    let mut client = kv.client(0);
    client
        .raw(b"*0\r\n*-1\r\n\r\n   \r\n*1\r\n$4\r\nPING\r\n")
        .unwrap();
    assert_eq!(client.read_reply().unwrap(), Reply::Simple("PONG".into()));
    assert_eq!(
        kv.client(0).command(&[b"PING", b"still"]).unwrap(),
        Reply::Bulk(Some(b"still".to_vec()))
    );
}

/// A pipeline of every kind of command, written one byte per `write` (every frame arrives
/// split at every possible point): each reply comes once, in order, well-formed. `QUIT`
/// answers `+OK` and closes, and a `SET` after it in the same write is not applied. A client
/// that vanishes mid-frame leaves the node serving and the half-sent `SET` unapplied.
#[cfg(unix)]
#[test]
fn kv_frames_split_byte_by_byte_answer_in_order_and_quit_stops_the_pipeline() {
    let kv = Kv::single(&[]);
    let mut pipeline = Vec::new();
    pipeline.extend(frame(&[b"SET", b"k\r\n\0", b"v\r\n1"]));
    pipeline.extend(b"GET k\r\n"); // inline: no such key (the key above has CRLF in it)
    pipeline.extend(frame(&[b"GET", b"k\r\n\0"]));
    pipeline.extend(frame(&[b"INCR", b"n"]));
    pipeline.extend(frame(&[b"incrby", b"n", b"41"]));
    pipeline.extend(frame(&[b"EXISTS", b"n", b"k\r\n\0", b"nope"]));
    pipeline.extend(frame(&[b"DEL", b"n", b"nope"]));
    pipeline.extend(frame(&[b"DBSIZE"]));
    pipeline.extend(frame(&[b"ECHO", b""]));
    let expected = vec![
        Reply::Simple("OK".into()),
        Reply::Bulk(None),
        Reply::Bulk(Some(b"v\r\n1".to_vec())),
        Reply::Integer(1),
        Reply::Integer(42),
        Reply::Integer(2),
        Reply::Integer(1),
        Reply::Integer(1),
        Reply::Bulk(Some(Vec::new())),
    ];
    let mut client = kv.client(0);
    for byte in &pipeline {
        client.raw(std::slice::from_ref(byte)).unwrap();
    }
    for (index, want) in expected.iter().enumerate() {
        assert_eq!(&client.read_reply().unwrap(), want, "reply {index}");
    }

    // QUIT in the middle of a write: +OK, closed, and what followed it never ran.
    let mut tail = frame(&[b"QUIT"]);
    tail.extend(frame(&[b"SET", b"after-quit", b"x"]));
    client.raw(&tail).unwrap();
    assert_eq!(client.read_reply().unwrap(), Reply::Simple("OK".into()));
    assert!(client.closed_by_server());

    // A client that vanishes in the middle of a frame.
    let mut vanishing = kv.client(0);
    vanishing
        .raw(b"*3\r\n$3\r\nSET\r\n$4\r\nhalf\r\n$10\r\nonly")
        .unwrap();
    drop(vanishing);
    let mut client = kv.client(0);
    for key in [&b"after-quit"[..], b"half"] {
        assert_eq!(
            client.command(&[b"GET", key]).unwrap(),
            Reply::Bulk(None),
            "{}",
            String::from_utf8_lossy(key)
        );
    }
}

/// Was a bug (fixed in session 15): a client that sends a value above the 1 MiB argument limit got
/// a connection reset
/// instead of the documented `-ERR Protocol error: argument of N bytes ...`.
///
/// Input: `SET big <6 MiB value>`, written in full before the reply is read (what every
/// blocking Redis client, `redis-cli` included, does).
///
/// Broken: the server answers the error as soon as it parses the `$6291456` header and
/// closes the socket with the rest of the value unread, so the kernel resets the
/// connection; the client's write fails with `ECONNRESET`/`EPIPE` and it reports "connection
/// reset by peer", never the reason. Measured by hand: 3 of 5 attempts with a 1.1 MB value,
/// 5 of 5 from 4 MB. Redis closes the same way, but only past its 512 MB
/// `proto-max-bulk-len`; at 1 MiB an ordinary careless client meets it. Nothing is applied
/// and the node is fine: the guarantee broken is the clear error the module documents.
///
/// Fix direction: in `support::serve_resp`, after writing a protocol error, shut down the
/// write side and discard input for a bounded time and byte count (a lingering close, as
/// HTTP servers do; here at least the declared bulk length, capped), then close.
#[cfg(unix)]
#[test]
fn kv_an_oversized_value_is_answered_not_reset() {
    let kv = Kv::single(&[]);
    let mut client = kv.client(0);
    let value = vec![b'x'; 6 * 1024 * 1024];
    let written = client.send(&[b"SET", b"big", &value]);
    let reply = client.read_reply();
    assert!(
        written.is_ok()
            && matches!(&reply, Ok(reply) if reply.is_error_starting("ERR Protocol error: argument of 6291456 bytes")),
        "writing the request: {written:?}; the reply: {reply:?}"
    );
}

/// Wrong arities, unknown commands (binary names included), unsupported options, and the
/// Redis features the server does not have (`MULTI`/`EXEC`, `WATCH`, expiry, `SET` options):
/// one clear `-ERR` each, nothing applied, and the connection stays.
#[cfg(unix)]
#[test]
fn kv_arity_and_unknown_command_errors_keep_the_connection() {
    let kv = Kv::single(&[]);
    let mut client = kv.client(0);
    let cases: Vec<(&str, &str)> = vec![
        ("GET", "ERR wrong number of arguments for 'get'"),
        ("get a b", "ERR wrong number of arguments for 'get'"),
        ("SET k", "ERR wrong number of arguments for 'set'"),
        ("SET k v EX 10", "ERR syntax error"),
        ("DEL", "ERR wrong number of arguments for 'del'"),
        ("INCRBY k", "ERR wrong number of arguments for 'incrby'"),
        ("DBSIZE x", "ERR wrong number of arguments for 'dbsize'"),
        ("CONFIG", "ERR wrong number of arguments for 'config'"),
        ("CONFIG SET a b", "ERR only CONFIG GET"),
        ("SELECT 1", "ERR DB index is out of range"),
        ("FLUSHALL", "ERR unknown command 'FLUSHALL'"),
        // No transactions, optimistic locks or expiry: refused, never half-understood.
        ("MULTI", "ERR unknown command 'MULTI'"),
        ("WATCH k", "ERR unknown command 'WATCH'"),
        ("EXEC", "ERR unknown command 'EXEC'"),
        ("EXPIRE k 10", "ERR unknown command 'EXPIRE'"),
        ("SET k v NX", "ERR syntax error"),
        ("SYNOD.SETPEER 1", "ERR wrong number of arguments"),
        ("SYNOD.SETPEER x 127.0.0.1:1", "ERR bad node id"),
        ("SYNOD.SETPEER 2 nowhere", "ERR bad address"),
        ("SYNOD.SETPEER 1 127.0.0.1:1", "ERR node n1 is this node"),
        ("SYNOD.SETMEMBERS 1,x", "ERR bad node id"),
    ];
    for (command, prefix) in cases {
        let args: Vec<&[u8]> = command.split(' ').map(str::as_bytes).collect();
        let reply = client.command(&args).unwrap();
        assert!(reply.is_error_starting(prefix), "{command}: {reply:?}");
    }
    // Names that are empty, binary or hold a line break are escaped in the error line.
    for (name, want) in [
        (&b""[..], "ERR unknown command ''"),
        (b"\xff\r\nX", "ERR unknown command '\\u{fffd}\\r\\nX'"),
    ] {
        assert_eq!(client.command(&[name]).unwrap(), Reply::Error(want.into()));
    }
    assert!(client
        .command(&[b"SYNOD.SETMEMBERS", b""])
        .unwrap()
        .is_error_starting("ERR invalid membership"));
    // A SET whose options were refused (EX, NX) was not applied.
    assert_eq!(client.command(&[b"GET", b"k"]).unwrap(), Reply::Bulk(None));
    assert_eq!(
        client.command(&[b"PING"]).unwrap(),
        Reply::Simple("PONG".into())
    );
    assert_eq!(
        client.command(&[b"COMMAND", b"COUNT"]).unwrap(),
        Reply::Integer(23)
    );
    assert_eq!(client.command(&[b"COMMAND"]).unwrap(), Reply::Array(vec![]));
}

/// Binary keys and values at and above the limits: a 1 MiB value (the largest argument) and
/// a 1024-byte key are stored and read back byte for byte; a 1025-byte key is refused by the
/// state machine with a clear error on every command that proposes it, and reads of it
/// answer nil (it cannot exist).
#[cfg(unix)]
#[test]
fn kv_binary_keys_and_values_at_the_limits() {
    let kv = Kv::single(&[]);
    let mut client = kv.client(0);
    let key: Vec<u8> = (0..1024u32).map(|index| (index % 256) as u8).collect();
    let value: Vec<u8> = (0..1024 * 1024u32)
        .map(|index| (index.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    assert_eq!(
        client.command(&[b"SET", &key, &value]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        client.command(&[b"GET", &key]).unwrap(),
        Reply::Bulk(Some(value.clone()))
    );
    let long_key = vec![b'k'; 1025];
    for command in [&b"SET"[..], b"DEL", b"INCR"] {
        let mut args: Vec<&[u8]> = vec![command, &long_key];
        if command == b"SET" {
            args.push(b"v");
        }
        let reply = client.command(&args).unwrap();
        assert_eq!(
            reply,
            Reply::Error("ERR key of 1025 bytes exceeds the maximum of 1024".into()),
            "{}",
            String::from_utf8_lossy(command)
        );
    }
    assert_eq!(
        client.command(&[b"GET", &long_key]).unwrap(),
        Reply::Bulk(None)
    );
    assert_eq!(
        client.command(&[b"EXISTS", &long_key, &key]).unwrap(),
        Reply::Integer(1)
    );
    // An empty key is a key.
    assert_eq!(
        client.command(&[b"SET", b"", b""]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(
        client.command(&[b"GET", b""]).unwrap(),
        Reply::Bulk(Some(Vec::new()))
    );
}

/// The `INCR` family at the edges: only canonical decimals count as integers (as Redis:
/// no `+`, no leading zeros, no `-0`, no spaces), overflow either way is refused and leaves
/// the value, `DECRBY i64::MIN` is refused (its negation overflows).
#[cfg(unix)]
#[test]
fn kv_incr_family_edge_cases() {
    let kv = Kv::single(&[]);
    let mut client = kv.client(0);
    for bad in [
        &b"+1"[..],
        b"007",
        b"-0",
        b" 1",
        b"1 ",
        b"1e3",
        b"",
        b"\xff",
    ] {
        client.command(&[b"SET", b"bad", bad]).unwrap();
        let reply = client.command(&[b"INCR", b"bad"]).unwrap();
        assert_eq!(
            reply,
            Reply::Error("ERR value is not an integer or out of range".into()),
            "{:?}",
            bad.escape_ascii().to_string()
        );
        let reply = client.command(&[b"INCRBY", b"fresh", bad]).unwrap();
        assert!(
            reply.is_error_starting("ERR value is not an integer"),
            "{reply:?}"
        );
    }
    let max = i64::MAX.to_string();
    let min = i64::MIN.to_string();
    assert_eq!(
        client.command(&[b"INCRBY", b"n", max.as_bytes()]).unwrap(),
        Reply::Integer(i64::MAX)
    );
    assert!(client
        .command(&[b"INCR", b"n"])
        .unwrap()
        .is_error_starting("ERR increment or decrement would overflow"));
    assert_eq!(
        client.command(&[b"GET", b"n"]).unwrap(),
        Reply::Bulk(Some(max.clone().into_bytes()))
    );
    assert!(client
        .command(&[b"DECRBY", b"n", min.as_bytes()])
        .unwrap()
        .is_error_starting("ERR decrement would overflow"));
    assert_eq!(
        client.command(&[b"SET", b"m", min.as_bytes()]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert!(client
        .command(&[b"DECR", b"m"])
        .unwrap()
        .is_error_starting("ERR increment or decrement would overflow"));
    assert_eq!(
        client.command(&[b"INCRBY", b"m", max.as_bytes()]).unwrap(),
        Reply::Integer(-1)
    );
    // A refused increment of a missing key did not create it.
    assert_eq!(
        client.command(&[b"GET", b"fresh"]).unwrap(),
        Reply::Bulk(None)
    );
}

/// `--connections-max 2`: a third client is answered `-ERR max number of clients reached`
/// and closed, the two served are unaffected, and the slot is free again once one of them
/// leaves. A client that opened a session (by a write) and left has it closed through the
/// log (`sessions` in `INFO` comes back down).
#[cfg(unix)]
#[test]
fn kv_connection_limit_refuses_then_frees_the_slot_and_sessions_close() {
    let kv = Kv::single(&["--connections-max", "2"]);
    let sessions = |client: &mut Client| {
        let info = client.command(&[b"INFO"]).unwrap();
        field(&info, "sessions").unwrap().parse::<u64>().unwrap()
    };
    // The connections the start-up used are counted until their tasks end: wait for room.
    let mut first = kv.served_client(0);
    let mut second = kv.served_client(0);
    let before = sessions(&mut first);
    assert_eq!(
        second.command(&[b"SET", b"k", b"v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    assert_eq!(sessions(&mut first), before + 1);
    let mut third = kv.client(0);
    assert_eq!(
        third.read_reply().unwrap(),
        Reply::Error("ERR max number of clients reached".into())
    );
    assert!(third.closed_by_server());
    let info = first.command(&[b"INFO"]).unwrap();
    assert_eq!(field(&info, "connected_clients").as_deref(), Some("2"));
    drop(second);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let mut fourth = kv.client(0);
        match fourth.command(&[b"PING"]) {
            Ok(Reply::Simple(pong)) if pong == "PONG" => break,
            Ok(Reply::Error(error)) if error.contains("max number of clients") => {}
            other => panic!("{other:?}"),
        }
        assert!(Instant::now() < deadline, "the slot was never freed");
        thread::sleep(Duration::from_millis(20));
    }
    let deadline = Instant::now() + PATIENCE;
    while sessions(&mut first) != before {
        assert!(
            Instant::now() < deadline,
            "the gone client's session stayed open"
        );
        thread::sleep(Duration::from_millis(20));
    }
}

/// A client that pipelines 40 000 `PING`s (about 560 KB) and reads nothing until it has
/// written them all (the node's writes to it back up once the socket buffers are full):
/// another client is served meanwhile, and once the first one reads, it gets every reply,
/// in order, well-formed.
#[cfg(unix)]
#[test]
fn kv_a_client_that_does_not_read_stalls_only_itself() {
    let kv = Kv::single(&[]);
    let mut slow = kv.client(0);
    const COUNT: usize = 40_000;
    let writer = {
        let mut stream = slow.writer.try_clone().unwrap();
        thread::spawn(move || {
            let mut request = Vec::new();
            for index in 0..COUNT {
                request.extend(frame(&[b"PING", index.to_string().as_bytes()]));
            }
            stream.write_all(&request).map(|()| request.len())
        })
    };
    thread::sleep(Duration::from_millis(300));
    let mut other = kv.served_client(0);
    assert_eq!(
        other.command(&[b"SET", b"k", b"v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    for index in 0..COUNT {
        assert_eq!(
            slow.read_reply().unwrap(),
            Reply::Bulk(Some(index.to_string().into_bytes())),
            "reply {index}"
        );
    }
    writer.join().unwrap().unwrap();
}

/// Was a bug: `SYNOD.SETPEER` grew the transport's peer set without any bound.
///
/// Input: one client pipelines `SYNOD.SETPEER <id> 127.0.0.1:<port>` for 2 × `MEMBERS_MAX`
/// (128) distinct ids that are not, and can never all be, members.
///
/// Broken: every one is answered `+OK` and becomes a peer with its own dialer task that
/// connects, fails and reconnects forever (with the kv's 500 ms backoff cap). Nothing bounds
/// it: measured by hand, 5 000 such commands in one write left a node burning ~38 % of a
/// core for good and holding ~870 sockets in `connect`, and `SYNOD.PEERS` grew to 100 KB.
/// Any client of the RESP port can do it (the commands have no authentication), so
/// "memory is bounded" does not hold for the peer set, nor CPU and descriptors.
///
/// Fixed in session 15: `TcpPeers::set` refuses a new peer beyond `PEERS_MAX` (twice
/// `MEMBERS_MAX`: room for a membership being replaced by another), `TcpPeerError::TooMany`.
/// (Session 16 put the `SYNOD.*` operator commands behind `--admin-token`; without a token
/// they stay open to any client of the RESP port, with a warning at start.)
#[cfg(all(unix, feature = "net"))] // `PEERS_MAX` lives in `synod::transport::tcp`
#[test]
fn kv_setpeer_grows_the_peer_set_without_bound() {
    let kv = Kv::single(&[]);
    let mut client = kv.client(0);
    let count = synod::transport::tcp::PEERS_MAX + 10;
    let mut pipeline = Vec::new();
    for index in 0..count {
        let id = (100 + index).to_string();
        // Ports that nothing listens on: dialers fail and retry.
        let address = format!("127.0.0.1:{}", 1 + index % 5);
        pipeline.extend(frame(&[
            b"SYNOD.SETPEER",
            id.as_bytes(),
            address.as_bytes(),
        ]));
    }
    client.raw(&pipeline).unwrap();
    let mut accepted = 0;
    for _ in 0..count {
        match client.read_reply().unwrap() {
            Reply::Simple(ok) if ok == "OK" => accepted += 1,
            Reply::Error(_) => {}
            other => panic!("SYNOD.SETPEER answered {other:?}"),
        }
    }
    let peers = text(&client.command(&[b"SYNOD.PEERS"]).unwrap());
    let listed = peers.split(',').filter(|item| !item.is_empty()).count();
    let max = synod::transport::tcp::PEERS_MAX;
    assert!(
        listed <= max && accepted <= max,
        "{accepted} of {count} SYNOD.SETPEER accepted; the node now dials {listed} peers \
         (more than PEERS_MAX = {max})"
    );
}

/// Was a bug (fixed in session 15): `SYNOD.SETMEMBERS` accepted a voter set that can never form a
/// quorum, and one
/// careless command makes the cluster unavailable for good.
///
/// Input: a one-node cluster (node 1, leading); a client sends `SYNOD.SETMEMBERS 1,9`: add
/// node 9 as a voter, a node no one has an address for (not in `--peers`, never
/// `SYNOD.SETPEER`ed: a typo for the node being added, or a node not started yet).
///
/// Broken: the change is accepted (`:slot`) and chosen. From the next slot on a quorum needs
/// node 9, which this node cannot even send to, so no write or read-index can ever be served
/// again; the membership cannot be changed back either (that needs a leader, and a leader
/// needs node 9). Replacing the sole voter (`SYNOD.SETMEMBERS 9`) or `SYNOD.SETMEMBERS 0`
/// does the same. Mature systems refuse this (etcd's `--strict-reconfig-check`: a
/// reconfiguration that would lose quorum is rejected).
///
/// Fix direction: in `support::set_members` (or `Handle::change_membership` with a flag)
/// refuse a membership naming a node that is neither this node nor among the transport's
/// peers (`TcpPeers::addresses`), and one whose new voters do not include a quorum of nodes
/// that are connected and caught up (the leader knows their progress).
#[cfg(unix)]
#[test]
fn kv_setmembers_accepts_a_voter_set_without_a_reachable_quorum() {
    let mut kv = Kv::single(&[]);
    let mut client = kv.client(0);
    assert_eq!(
        client.command(&[b"SET", b"k", b"v"]).unwrap(),
        Reply::Simple("OK".into())
    );
    let reply = client.command(&[b"SYNOD.SETMEMBERS", b"1,9"]).unwrap();
    if let Reply::Error(_) = reply {
        // Refused, as it should be; the node still leads and serves.
        assert_eq!(kv.wait_for_leader(), 0);
        return;
    }
    // Accepted: show what it did.
    thread::sleep(Duration::from_millis(500));
    let members = text(&client.command(&[b"SYNOD.MEMBERS"]).unwrap());
    let info = client.command(&[b"INFO"]).unwrap();
    panic!(
        "SYNOD.SETMEMBERS 1,9 answered {reply:?}: the membership is now `{members}`, the \
         node's role is {:?}, and node 9 has no address anywhere: no quorum can form until \
         a node 9 is started and made known",
        field(&info, "role")
    );
}

/// A client pipelines ten `INCR`s and ten `SET`s into a follower and the leader is
/// `SIGKILL`ed right after: every reply is well-formed and in order, each `SET` is `+OK`
/// or `-TRYAGAIN`, each `INCR` an integer (one more than the last one answered) or
/// `-TRYAGAIN`, and the counter ends exactly at the number of increments answered (plus those
/// answered `-TRYAGAIN`, which may or may not have happened): none applied twice though the
/// follower proposed again what the dead leader had taken. Reads at the follower see every
/// acknowledged `SET`, and the two survivors applied the same entries in the same order.
#[cfg(unix)]
#[test]
fn kv_leader_kill_under_a_pipeline_through_a_follower_applies_each_command_once() {
    let mut kv = Kv::new(3, &[]);
    for index in 0..3 {
        kv.procs.start(index);
    }
    let leader = kv.wait_for_leader();
    let follower = (leader + 1) % 3;
    let mut client = kv.client(follower);
    client.set_timeouts(Duration::from_secs(30));
    // The session is opened before the kill.
    assert_eq!(
        client.command(&[b"SET", b"warm", b"up"]).unwrap(),
        Reply::Simple("OK".into())
    );
    let mut pipeline = Vec::new();
    for index in 0..10 {
        pipeline.extend(frame(&[b"INCR", b"counter"]));
        let (key, value) = (format!("k{index}"), format!("v{index}"));
        pipeline.extend(frame(&[b"SET", key.as_bytes(), value.as_bytes()]));
    }
    client.raw(&pipeline).unwrap();
    thread::sleep(Duration::from_millis(30));
    kv.procs.kill(leader);
    let killed = Instant::now();
    // Increments answered with a count, and those answered -TRYAGAIN (may or may not have
    // happened): every count is above the last one and at most the increments sent so far.
    let (mut last_count, mut answered, mut ambiguous) = (0, 0, 0);
    let mut written = Vec::new();
    for index in 0..10 {
        match client.read_reply().expect("INCR reply") {
            Reply::Integer(count) => {
                answered += 1;
                assert!(
                    count > last_count && count <= answered + ambiguous,
                    "INCR {index} answered {count} after {last_count} ({answered} answered, \
                     {ambiguous} ambiguous)"
                );
                last_count = count;
            }
            reply if reply.is_error_starting("TRYAGAIN") => ambiguous += 1,
            other => panic!("INCR {index} answered {other:?}"),
        }
        match client.read_reply().expect("SET reply") {
            Reply::Simple(ok) if ok == "OK" => written.push(index),
            reply if reply.is_error_starting("TRYAGAIN") => {}
            other => panic!("SET {index} answered {other:?}"),
        }
    }
    eprintln!(
        "replies {:.2} s after the kill: {answered} increments answered, {ambiguous} \
         ambiguous, {} writes acknowledged",
        killed.elapsed().as_secs_f64(),
        written.len()
    );
    let counter = match client.command(&[b"GET", b"counter"]).unwrap() {
        Reply::Bulk(Some(bytes)) => String::from_utf8(bytes).unwrap().parse::<i64>().unwrap(),
        other => panic!("GET counter answered {other:?}"),
    };
    assert!(
        counter >= last_count && counter >= answered && counter <= answered + ambiguous,
        "counter {counter}: {answered} increments answered (the last {last_count}), \
         {ambiguous} ambiguous"
    );
    for index in written {
        let key = format!("k{index}");
        assert_eq!(
            client.command(&[b"GET", key.as_bytes()]).unwrap(),
            Reply::Bulk(Some(format!("v{index}").into_bytes())),
            "{key}"
        );
    }
    // The survivors converge on one history.
    let survivors: Vec<usize> = (0..3).filter(|&index| index != leader).collect();
    let deadline = Instant::now() + PATIENCE;
    loop {
        let digests: Vec<String> = survivors
            .iter()
            .map(|&index| text(&kv.client(index).command(&[b"SYNOD.DIGEST"]).unwrap()))
            .collect();
        if digests[0] == digests[1] {
            break;
        }
        assert!(Instant::now() < deadline, "survivors differ: {digests:?}");
        thread::sleep(Duration::from_millis(50));
    }
}

impl Client {
    fn set_timeouts(&mut self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
        self.writer.set_write_timeout(Some(timeout)).unwrap();
    }
}

// =======================================================================================
// The bank.

/// A one-node bank (every group has one voter, so it elects itself at once) with two
/// shards: `alice` is on shard 1 and `carol` on shard 2.
struct Bank {
    procs: Procs,
    port: u16,
}

impl Bank {
    fn new() -> Bank {
        Bank::with_options(&[])
    }

    fn with_options(extra: &[&str]) -> Bank {
        let base = free_port_blocks(1, 3)[0];
        let port = free_ports(1)[0];
        let args: Vec<String> = [
            "--id".to_string(),
            "1".to_string(),
            "--peers".to_string(),
            format!("1=127.0.0.1:{base}"),
            "--client".to_string(),
            format!("127.0.0.1:{port}"),
            "--shards".to_string(),
            "2".to_string(),
            "--election-ticks".to_string(),
            "10".to_string(),
            "--resend-ticks".to_string(),
            "20".to_string(),
            "--query-ticks".to_string(),
            "20".to_string(),
        ]
        .into_iter()
        .chain(extra.iter().map(|arg| arg.to_string()))
        .collect();
        let mut bank = Bank {
            procs: Procs::new(bank_binary(), vec![args]),
            port,
        };
        bank.start();
        bank
    }

    fn start(&mut self) {
        self.procs.start(0);
        let deadline = Instant::now() + PATIENCE;
        loop {
            self.procs.check_running();
            let leading = self.command(&["INFO"]).is_ok_and(|info| {
                ["ledger_role", "shard1_role", "shard2_role"]
                    .iter()
                    .all(|name| field(&info, name).as_deref() == Some("Leader"))
                    && field(&info, "coordinator").as_deref() == Some("here")
            });
            if leading {
                return;
            }
            assert!(Instant::now() < deadline, "the bank never led its groups");
            thread::sleep(Duration::from_millis(30));
        }
    }

    fn client(&self) -> Client {
        Client::connect(self.port, Duration::from_secs(15)).expect("connecting")
    }

    fn command(&self, args: &[&str]) -> std::io::Result<Reply> {
        let args: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        Client::connect(self.port, Duration::from_secs(15))?.command(&args)
    }

    fn balance(&self, account: &str) -> i64 {
        match self.command(&["BALANCE", account]).unwrap() {
            Reply::Integer(balance) => balance,
            other => panic!("BALANCE {account} answered {other:?}"),
        }
    }

    /// `AUDIT` once nothing is prepared or pending: the total.
    fn settled_total(&self) -> i64 {
        let deadline = Instant::now() + PATIENCE;
        loop {
            match self.command(&["AUDIT"]).unwrap() {
                Reply::Array(items) => {
                    if let [Reply::Integer(total), Reply::Integer(0), Reply::Integer(0)] = items[..]
                    {
                        return total;
                    }
                    assert!(Instant::now() < deadline, "never settled: {items:?}");
                }
                other => panic!("AUDIT answered {other:?}"),
            }
            thread::sleep(Duration::from_millis(50));
        }
    }
}

/// Hostile input to the bank: every bad amount, name, key and arity gets one clear `-ERR`
/// and the connection stays; the placement the README states holds.
#[cfg(unix)]
#[test]
fn bank_refuses_bad_amounts_names_keys_and_arities() {
    let bank = Bank::new();
    assert_eq!(
        bank.command(&["SHARD", "alice"]).unwrap(),
        Reply::Integer(1)
    );
    assert_eq!(
        bank.command(&["SHARD", "carol"]).unwrap(),
        Reply::Integer(2)
    );
    let mut client = bank.client();
    let long_name = "a".repeat(65);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["DEPOSIT", "alice", "0"], "ERR an amount is between 1"),
        (vec!["DEPOSIT", "alice", "-5"], "ERR an amount is between 1"),
        (
            vec!["DEPOSIT", "alice", "1000000000001"],
            "ERR an amount is between 1",
        ),
        (
            vec!["DEPOSIT", "alice", "-9223372036854775808"],
            "ERR an amount",
        ),
        (
            vec!["DEPOSIT", "alice", "9223372036854775808"],
            "ERR '9223372036854775808' is not a number",
        ),
        (vec!["DEPOSIT", "alice", "1.5"], "ERR '1.5' is not a number"),
        (
            vec!["DEPOSIT", "", "5"],
            "ERR an account name has 1 to 64 bytes",
        ),
        (
            vec!["DEPOSIT", &long_name, "5"],
            "ERR an account name has 1 to 64 bytes",
        ),
        (
            vec!["DEPOSIT", "a b", "5"],
            "ERR an account name has no spaces",
        ),
        (
            vec!["DEPOSIT", "a\tb", "5"],
            "ERR an account name has no spaces",
        ),
        (
            vec!["DEPOSIT", "alice", "5", "KEY"],
            "ERR unknown command or wrong number",
        ),
        (
            vec!["DEPOSIT", "alice", "5", "KEY", "-1"],
            "ERR '-1' is not a number",
        ),
        (
            vec!["DEPOSIT", "alice", "5", "LOCK", "1"],
            "ERR syntax error",
        ),
        (vec!["WITHDRAW", "alice", "5"], "INSUFFICIENT balance 0"),
        (
            vec!["TRANSFER", "alice", "alice", "5"],
            "ERR a transfer needs two different accounts",
        ),
        (
            vec!["TRANSFER", "alice", "carol", "0"],
            "ERR an amount is between 1",
        ),
        (
            vec!["TRANSFER", "alice", "carol"],
            "ERR unknown command or wrong number",
        ),
        (vec!["BALANCE", ""], "ERR an account name has 1 to 64 bytes"),
        (vec!["TXN", "-1"], "ERR '-1' is not a number"),
        (vec!["SHARD"], "ERR unknown command or wrong number"),
        (vec!["FLUSHALL"], "ERR unknown command or wrong number"),
    ];
    for (args, prefix) in cases {
        let bytes: Vec<&[u8]> = args.iter().map(|arg| arg.as_bytes()).collect();
        let reply = client.command(&bytes).unwrap();
        assert!(reply.is_error_starting(prefix), "{args:?}: {reply:?}");
    }
    // Nothing to transfer: the shard votes no, and the ledger remembers the abort.
    let reply = client
        .command(&[b"TRANSFER", b"alice", b"carol", b"5"])
        .unwrap();
    let Reply::Error(aborted) = &reply else {
        panic!("{reply:?}")
    };
    let txn = aborted
        .strip_prefix("ABORTED t")
        .and_then(|rest| rest.split(' ').next())
        .unwrap_or_else(|| panic!("{aborted}"));
    assert_eq!(
        client.command(&[b"TXN", txn.as_bytes()]).unwrap(),
        Reply::Simple("ABORTED".into())
    );
    assert_eq!(
        client.command(&[b"TXN", b"18446744073709551615"]).unwrap(),
        Reply::Simple("UNKNOWN".into())
    );
    assert_eq!(bank.settled_total(), 0);
}

/// Cross-shard transfers (each with a client key) run while the only node is `SIGKILL`ed;
/// it restarts on its data. The transfer in flight at the kill, retried with its key, is
/// the same transaction and gets a definite answer; every earlier answer stands (`TXN`);
/// nothing stays prepared or pending; every balance is exactly what the committed
/// transfers make it; no money was made or lost.
#[cfg(unix)]
#[test]
fn bank_sigkill_mid_transfers_conserves_money_and_keyed_retries_are_the_same_txn() {
    let mut bank = Bank::new();
    for (account, key) in [("alice", "1"), ("carol", "2")] {
        assert_eq!(
            bank.command(&["DEPOSIT", account, "1000", "KEY", key])
                .unwrap(),
            Reply::Integer(1000)
        );
    }
    // (key, from, to, amount)
    let transfers: Vec<(u64, &str, &str, i64)> = (0..2000u64)
        .map(|index| {
            if index % 3 == 2 {
                (100 + index, "carol", "alice", 7)
            } else {
                (100 + index, "alice", "carol", 5)
            }
        })
        .collect();
    let port = bank.port;
    let progress = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let runner = {
        let (transfers, progress) = (transfers.clone(), progress.clone());
        thread::spawn(move || {
            // (key, answer) for every transfer answered before the kill broke the
            // connection; the first unanswered one is retried after the restart.
            let mut answered: Vec<(u64, Reply)> = Vec::new();
            let Ok(mut client) = Client::connect(port, Duration::from_secs(15)) else {
                return answered;
            };
            for (key, from, to, amount) in transfers {
                let key_text = key.to_string();
                let amount_text = amount.to_string();
                let args: [&[u8]; 6] = [
                    b"TRANSFER",
                    from.as_bytes(),
                    to.as_bytes(),
                    amount_text.as_bytes(),
                    b"KEY",
                    key_text.as_bytes(),
                ];
                match client.command(&args) {
                    Ok(reply) => answered.push((key, reply)),
                    Err(_) => break,
                }
                progress.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            }
            answered
        })
    };
    // The kill lands while transfers run: after 40 answers, between two of them or in one.
    let deadline = Instant::now() + PATIENCE;
    while progress.load(std::sync::atomic::Ordering::Relaxed) < 40 {
        assert!(Instant::now() < deadline, "the transfers do not progress");
        thread::sleep(Duration::from_millis(1));
    }
    bank.procs.kill(0);
    let answered = runner.join().unwrap();
    assert!(
        !answered.is_empty() && answered.len() < transfers.len(),
        "{} transfers answered before the kill: move the kill",
        answered.len()
    );
    eprintln!(
        "{} transfers answered before the kill, the last {:?}",
        answered.len(),
        answered.last()
    );
    bank.start();

    // Every transfer answered before the kill, and the one in flight, asked again with its
    // key: the same transaction, and a definite answer (the one given before, if any).
    let mut outcomes: Vec<(u64, Option<u64>, bool)> = Vec::new(); // key, txn, committed
    let mut client = bank.client();
    client.set_timeouts(Duration::from_secs(30));
    for &(key, from, to, amount) in &transfers[..answered.len() + 1] {
        let (key_text, amount_text) = (key.to_string(), amount.to_string());
        let args: [&[u8]; 6] = [
            b"TRANSFER",
            from.as_bytes(),
            to.as_bytes(),
            amount_text.as_bytes(),
            b"KEY",
            key_text.as_bytes(),
        ];
        let deadline = Instant::now() + PATIENCE;
        let reply = loop {
            let reply = client.command(&args).unwrap();
            if !reply.is_error_starting("TRYAGAIN") {
                break reply;
            }
            assert!(Instant::now() < deadline, "key {key}: {reply:?}");
        };
        let (committed, txn) = match &reply {
            Reply::Simple(text) if text.starts_with("COMMITTED t") => (true, &text[11..]),
            Reply::Error(text) if text.starts_with("ABORTED t") => {
                (false, text[9..].split(' ').next().unwrap())
            }
            other => panic!("key {key}: {other:?}"),
        };
        if let Some((_, before)) = answered.iter().find(|(answered, _)| *answered == key) {
            assert_eq!(
                &reply, before,
                "key {key} answered differently after the restart"
            );
        }
        outcomes.push((key, txn.parse().ok(), committed));
    }
    let mut txns: Vec<u64> = outcomes.iter().map(|(_, txn, _)| txn.unwrap()).collect();
    txns.sort_unstable();
    txns.dedup();
    assert_eq!(
        txns.len(),
        outcomes.len(),
        "a key named two transactions, or two keys one"
    );
    for (key, txn, committed) in &outcomes {
        let txn = txn.unwrap().to_string();
        let want = if *committed { "COMMITTED" } else { "ABORTED" };
        assert_eq!(
            bank.command(&["TXN", &txn]).unwrap(),
            Reply::Simple(want.into()),
            "key {key}, t{txn}"
        );
    }
    eprintln!(
        "after the restart, the one in flight: {:?}",
        outcomes.last().expect("one at least")
    );
    assert_eq!(bank.settled_total(), 2000, "money was made or lost");
    let mut alice = 1000;
    for (key, _, committed) in &outcomes {
        let (_, from, _, amount) = transfers[(key - 100) as usize];
        if *committed {
            alice += if from == "alice" { -amount } else { amount };
        }
    }
    assert_eq!(bank.balance("alice"), alice);
    assert_eq!(bank.balance("carol"), 2000 - alice);
}

/// Vote timeouts of one tick (`--vote-ticks 1`, 10 ms: shorter than a shard's round trip):
/// the coordinator aborts transfers whose participants vote yes (and hold the debit) after
/// the decision. Each client gets a definite answer that `TXN` confirms, every hold is
/// released (nothing prepared or pending), the balances are exactly what the committed
/// transfers make them, and no money was made or lost.
#[cfg(unix)]
#[test]
fn bank_vote_timeouts_release_every_hold_and_conserve_money() {
    let bank = Bank::with_options(&["--vote-ticks", "1"]);
    for (account, key) in [("alice", "1"), ("carol", "2")] {
        assert_eq!(
            bank.command(&["DEPOSIT", account, "1000", "KEY", key])
                .unwrap(),
            Reply::Integer(1000)
        );
    }
    let mut client = bank.client();
    let (mut alice, mut committed, mut aborted) = (1000, 0, 0);
    // At least 40 transfers, and more (up to 300) until some commit and some time out.
    for index in 0..300 {
        if index >= 40 && committed >= 3 && aborted >= 3 {
            break;
        }
        let (from, to, amount) = if index % 2 == 0 {
            ("alice", "carol", 10)
        } else {
            ("carol", "alice", 3)
        };
        let amount_text = amount.to_string();
        let reply = client
            .command(&[
                b"TRANSFER",
                from.as_bytes(),
                to.as_bytes(),
                amount_text.as_bytes(),
            ])
            .unwrap();
        let (outcome, txn) = match &reply {
            Reply::Simple(text) if text.starts_with("COMMITTED t") => ("COMMITTED", &text[11..]),
            Reply::Error(text) if text.starts_with("ABORTED t") => {
                ("ABORTED", text[9..].split(' ').next().unwrap())
            }
            other => panic!("transfer {index}: {other:?}"),
        };
        if outcome == "COMMITTED" {
            committed += 1;
            alice += if from == "alice" { -amount } else { amount };
        } else {
            aborted += 1;
        }
        assert_eq!(
            client.command(&[b"TXN", txn.as_bytes()]).unwrap(),
            Reply::Simple(outcome.into()),
            "transfer {index}"
        );
    }
    eprintln!("{committed} committed, {aborted} aborted by the vote timeout");
    assert!(
        aborted > 0,
        "no vote timed out: the scenario did not happen"
    );
    assert_eq!(bank.settled_total(), 2000, "money was made or lost");
    assert_eq!(bank.balance("alice"), alice);
    assert_eq!(bank.balance("carol"), 2000 - alice);
    // Nothing is held any more: all of alice's money can be withdrawn.
    let all = alice.to_string();
    assert_eq!(
        bank.command(&["WITHDRAW", "alice", &all]).unwrap(),
        Reply::Integer(0)
    );
}

/// Was a bug (fixed in session 15): account names that are not UTF-8 were folded into one account.
///
/// Input: `DEPOSIT caf\xe9 100` (a Latin-1 "café", as a client that does not speak UTF-8
/// sends it), then `BALANCE caf\xe8` ("cafè", another account) and `WITHDRAW caf\xe8 100`.
///
/// Broken: `bank.rs` turns every argument into text with `String::from_utf8_lossy`, so both
/// names become `caf\u{fffd}` (as does the literal UTF-8 name `caf�`): the second client sees
/// and withdraws the first one's money. Any two names that differ only in invalid bytes
/// are one account; `check_name` accepts U+FFFD.
///
/// Fix direction: `text()` in `examples/bank.rs` refuses arguments that are not UTF-8
/// (`std::str::from_utf8`, `-ERR an account name must be UTF-8`) for account names, or the
/// bank keys accounts by bytes.
#[cfg(unix)]
#[test]
fn bank_non_utf8_account_names_alias_one_account() {
    let bank = Bank::new();
    let mut client = bank.client();
    let deposit = client.command(&[b"DEPOSIT", b"caf\xe9", b"100"]).unwrap();
    if let Reply::Error(_) = deposit {
        return; // refused: names must be text
    }
    assert_eq!(deposit, Reply::Integer(100));
    let other = client.command(&[b"BALANCE", b"caf\xe8"]).unwrap();
    let withdraw = client.command(&[b"WITHDRAW", b"caf\xe8", b"100"]).unwrap();
    assert!(
        matches!(other, Reply::Integer(0) | Reply::Error(_))
            && !matches!(withdraw, Reply::Integer(_)),
        "after DEPOSIT caf\\xe9 100, BALANCE caf\\xe8 answered {other:?} and WITHDRAW \
         caf\\xe8 100 answered {withdraw:?}: two accounts are one"
    );
}

// =======================================================================================
// The ring.

fn ring(groups: &[(u64, u32)], config: RingConfig) -> Ring {
    let mut ring = Ring::new(config).unwrap();
    for &(group, weight) in groups {
        ring.insert(GroupId(group), weight).unwrap();
    }
    ring
}

fn keys(count: u64) -> impl Iterator<Item = Vec<u8>> {
    (0..count).map(|index| format!("account-{index}").into_bytes())
}

/// The documented balance: with the default 128 points per weight, every group's share is
/// within about ±25 % of its fair share for tens of groups. Measured on the pinned hash
/// (seed 0, groups 1..=n): worst 12.7 % at 8 groups, 25.2 % at 32, 28.1 % at 50 (the
/// "about"), 22.9 % at 64; within 30 % throughout, and the shares sum to the circle.
#[test]
fn ring_balance_is_within_the_documented_bound() {
    for groups in [2u64, 3, 8, 16, 32, 50, 64] {
        let ring = ring(
            &(1..=groups).map(|group| (group, 1)).collect::<Vec<_>>(),
            RingConfig::default(),
        );
        let fair = 1.0 / groups as f64;
        let mut total = 0.0;
        for group in 1..=groups {
            let share = ring.share(GroupId(group));
            total += share;
            assert!(
                (share - fair).abs() <= 0.30 * fair,
                "{groups} groups: g{group} owns {share}, fair {fair}"
            );
        }
        assert!(
            (total - 1.0).abs() < 1e-9,
            "{groups} groups: shares sum to {total}"
        );
    }
}

/// Removing a group moves exactly its keys, each to the group that follows its points, and
/// `transfers_to` lists exactly those arcs (every key whose owner changes is in one transfer
/// from the removed group, no other key is in any). Lowering a weight gives keys away and
/// takes none; each step round-trips.
#[test]
fn ring_removal_and_weight_changes_move_only_what_they_must() {
    let config = RingConfig {
        vnodes_per_weight: 16,
        seed: 11,
    };
    let before = ring(&[(1, 1), (2, 3), (3, 1), (4, 2), (5, 1)], config);
    let mut removed = before.clone();
    removed.remove(GroupId(2)).unwrap();
    let transfers = before.transfers_to(&removed);
    assert!(transfers.iter().all(|transfer| transfer.from == GroupId(2)));
    for key in keys(5_000) {
        let position = before.hash_key(&key);
        let (old, new) = (before.locate(&key).unwrap(), removed.locate(&key).unwrap());
        let covering: Vec<_> = transfers
            .iter()
            .filter(|transfer| transfer.range.contains(position))
            .collect();
        if old == GroupId(2) {
            assert_ne!(new, GroupId(2));
            assert_eq!(covering.len(), 1, "{position}");
            assert_eq!(covering[0].to, new);
            // The successors of the key in the old ring name the new owner second.
            let successors: Vec<GroupId> = before.successors(&key).take(2).collect();
            assert_eq!(successors, vec![GroupId(2), new]);
        } else {
            assert_eq!(old, new);
            assert!(covering.is_empty(), "{position}: {covering:?}");
        }
    }
    let share: f64 = transfers
        .iter()
        .map(|transfer| transfer.range.fraction())
        .sum();
    assert!((share - before.share(GroupId(2))).abs() < 1e-9);
    let mut restored = removed.clone();
    restored.insert(GroupId(2), 3).unwrap();
    assert_eq!(restored, before);

    let mut lowered = before.clone();
    lowered.set_weight(GroupId(2), 1).unwrap();
    for transfer in before.transfers_to(&lowered) {
        assert_eq!(transfer.from, GroupId(2), "{transfer:?}");
    }
    for key in keys(5_000) {
        let (old, new) = (before.locate(&key).unwrap(), lowered.locate(&key).unwrap());
        assert!(
            old == new || old == GroupId(2),
            "a key moved between bystanders"
        );
    }
}

/// Bad input is refused and changes nothing: through the API, through `RingSpec`, and
/// through serde (a stored spec is data from disk or the network). The point bound is
/// exact, and a weight change that would pass it is refused without touching the ring.
#[test]
fn ring_bad_input_is_refused_and_changes_nothing() {
    // Refused before a point is placed: one unit of weight is already too many points.
    let mut huge = Ring::new(RingConfig {
        vnodes_per_weight: u32::MAX,
        seed: 0,
    })
    .unwrap();
    assert!(matches!(
        huge.insert(GroupId(1), 1),
        Err(RingError::TooManyPoints { .. })
    ));
    assert!(huge.is_empty() && huge.point_count() == 0);
    // A quarter of the bound per unit of weight: 4 units fit, a fifth is refused, by a
    // new group or a heavier one, and the refusal leaves the ring as it was.
    let mut full = ring(
        &[(1, 1)],
        RingConfig {
            vnodes_per_weight: (Ring::POINTS_MAX / 4) as u32,
            seed: 0,
        },
    );
    let before = full.clone();
    assert!(matches!(
        full.set_weight(GroupId(1), 5),
        Err(RingError::TooManyPoints { points, .. }) if points == 5 * (Ring::POINTS_MAX / 4)
    ));
    assert!(matches!(
        full.insert(GroupId(2), 4),
        Err(RingError::TooManyPoints { .. })
    ));
    assert!(matches!(
        full.insert(GroupId(1), 1),
        Err(RingError::DuplicateGroup(GroupId(1)))
    ));
    assert_eq!(full, before);

    for (spec, want) in [
        (
            RingSpec {
                config: RingConfig {
                    vnodes_per_weight: 0,
                    seed: 0,
                },
                groups: vec![(GroupId(1), 1)],
            },
            "vnodes_per_weight must be at least 1",
        ),
        (
            RingSpec {
                config: RingConfig {
                    vnodes_per_weight: u32::MAX,
                    seed: 0,
                },
                groups: vec![(GroupId(1), u32::MAX), (GroupId(2), u32::MAX)],
            },
            "more than the 4194304 allowed",
        ),
        (
            RingSpec {
                config: RingConfig::default(),
                groups: vec![(GroupId(u64::MAX), 1), (GroupId(u64::MAX), 2)],
            },
            "already on the ring",
        ),
    ] {
        let error = Ring::from_spec(&spec).unwrap_err().to_string();
        assert!(error.contains(want), "{error}");
        let bytes = bincode::serde::encode_to_vec(&spec, bincode::config::standard()).unwrap();
        let decoded: Result<(Ring, usize), _> =
            bincode::serde::decode_from_slice(&bytes, bincode::config::standard());
        let error = decoded.unwrap_err().to_string();
        assert!(error.contains(want), "{error}");
    }
    // Group ids at the edges are ordinary groups.
    let edges = ring(&[(0, 1), (u64::MAX, 1)], RingConfig::default());
    let owners: std::collections::BTreeSet<GroupId> =
        keys(1_000).map(|key| edges.locate(&key).unwrap()).collect();
    assert_eq!(owners.len(), 2);
}
