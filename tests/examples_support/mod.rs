//! What the tests that run example servers as processes share: building an example for the
//! running test's profile and features, a RESP2 client, and free loopback ports.
//!
//! Integration tests get `CARGO_BIN_EXE_<name>` for `[[bin]]` targets only, not for examples.
//! So a test builds the example itself with the cargo that is running it (`$CARGO`), the
//! same manifest, target directory, profile and features, and takes the executable's path
//! from cargo's JSON messages. (Nesting is safe: `cargo test` releases the build lock before
//! it runs tests. The package variables `cargo test` sets for a test are not passed on: some
//! dependencies' build scripts watch them and would rebuild.)
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Building an example.

/// Builds example `name` for the running test's profile and features (see the module
/// documentation) and returns its executable.
pub fn build_example(name: &str) -> PathBuf {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| env!("CARGO").to_string());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("Cargo.toml");
    // A test runs from <target>/<profile>/deps/<test>-<hash>.
    let test_exe = std::env::current_exe().expect("the test's own path");
    let profile_dir = test_exe
        .parent()
        .and_then(Path::parent)
        .expect("the test runs from <target>/<profile>/deps");
    let target_dir = profile_dir.parent().expect("a target directory");
    let features = if cfg!(feature = "tls") {
        "net,tls"
    } else {
        "net"
    };
    let mut command = Command::new(&cargo);
    command
        .arg("build")
        .arg("--manifest-path")
        .arg(&manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(["--example", name, "--features", features])
        .arg("--message-format=json-render-diagnostics");
    match profile_dir.file_name().and_then(|name| name.to_str()) {
        Some("debug") => {}
        Some("release") => {
            command.arg("--release");
        }
        Some(other) => {
            command.args(["--profile", other]);
        }
        None => panic!("unexpected test path {}", test_exe.display()),
    }
    // `cargo test` gives this process the package's own variables (CARGO_MANIFEST_DIR, ...).
    // Build scripts of dependencies watch some of them, so passing them on would make the
    // inner build see them as changed and rebuild those dependencies every time.
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO_PKG_")
            || [
                "CARGO_MANIFEST_DIR",
                "CARGO_MANIFEST_PATH",
                "CARGO_CRATE_NAME",
                "CARGO_BIN_NAME",
                "CARGO_PRIMARY_PACKAGE",
                "CARGO_TARGET_TMPDIR",
                "OUT_DIR",
            ]
            .contains(&name.as_ref())
        {
            command.env_remove(name.as_ref());
        }
    }
    let started = Instant::now();
    let output = command
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|error| panic!("running {cargo}: {error}"));
    assert!(
        output.status.success(),
        "building the {name} example failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let binary = stdout
        .lines()
        .filter(|line| line.contains(r#""reason":"compiler-artifact""#))
        .filter(|line| {
            line.contains(r#""kind":["example"]"#) && line.contains(&format!(r#""name":"{name}""#))
        })
        .find_map(json_executable)
        .unwrap_or_else(|| panic!("cargo named no {name} executable:\n{stdout}"));
    eprintln!(
        "{name} example: {} (cargo build: {:.1} s)",
        binary.display(),
        started.elapsed().as_secs_f64()
    );
    binary
}

/// The `"executable":"..."` field of one cargo JSON message.
fn json_executable(line: &str) -> Option<PathBuf> {
    let start = line.find(r#""executable":""#)? + r#""executable":""#.len();
    let mut path = String::new();
    let mut characters = line[start..].chars();
    while let Some(character) = characters.next() {
        match character {
            '"' => return Some(PathBuf::from(path)),
            '\\' => path.push(characters.next()?),
            other => path.push(other),
        }
    }
    None
}

// ---------------------------------------------------------------------------------------
// A hand-written RESP client.

/// One RESP2 reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Vec<Reply>),
}

impl Reply {
    /// True for an error reply whose text starts with `prefix` (`"NOAUTH"`, say).
    pub fn is_error_starting(&self, prefix: &str) -> bool {
        matches!(self, Reply::Error(text) if text.starts_with(prefix))
    }
}

/// A simple-string reply.
pub fn simple(text: &str) -> Reply {
    Reply::Simple(text.to_string())
}

/// `args` as one RESP2 request (an array of bulk strings).
pub fn frame(args: &[&[u8]]) -> Vec<u8> {
    let mut request = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        request.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        request.extend_from_slice(arg);
        request.extend_from_slice(b"\r\n");
    }
    request
}

/// A blocking RESP2 client over one TCP connection.
pub struct Client {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Client {
    pub fn connect(port: u16, timeout: Duration) -> std::io::Result<Client> {
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

    /// The client's own port (to find the connection on the server's side).
    pub fn local_port(&self) -> u16 {
        self.writer.local_addr().unwrap().port()
    }

    pub fn set_read_timeout(&self, timeout: Duration) {
        self.writer.set_read_timeout(Some(timeout)).unwrap();
    }

    /// Writes `bytes` as they are (malformed or pipelined requests).
    pub fn raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.writer.write_all(bytes)
    }

    pub fn send(&mut self, args: &[&[u8]]) -> std::io::Result<()> {
        self.raw(&frame(args))
    }

    pub fn command(&mut self, args: &[&[u8]]) -> std::io::Result<Reply> {
        self.send(args)?;
        self.read_reply()
    }

    /// `command`, whose reply must come: panics on a closed connection or a timeout.
    pub fn ask(&mut self, args: &[&[u8]]) -> Reply {
        self.command(args).unwrap_or_else(|error| {
            panic!(
                "{:?} got no reply: {error}",
                String::from_utf8_lossy(args[0])
            )
        })
    }

    /// Waits (up to the read timeout) for the server to close the connection: true once it
    /// has (end of input or a reset), false if it sent bytes or the wait ran out.
    pub fn closed_by_server(&mut self) -> bool {
        let mut byte = [0u8; 1];
        match std::io::Read::read(&mut self.reader, &mut byte) {
            Ok(0) => true,
            Ok(_) => false,
            Err(error) => error.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    fn read_line(&mut self) -> std::io::Result<String> {
        let mut line = Vec::new();
        self.reader.read_until(b'\n', &mut line)?;
        if !line.ends_with(b"\r\n") {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "connection closed mid-reply",
            ));
        }
        line.truncate(line.len() - 2);
        String::from_utf8(line).map_err(|_| std::io::Error::other("reply line not UTF-8"))
    }

    pub fn read_reply(&mut self) -> std::io::Result<Reply> {
        let line = self.read_line()?;
        let (kind, rest) = line.split_at(1.min(line.len()));
        let number = || {
            rest.parse::<i64>()
                .map_err(|_| std::io::Error::other(format!("bad reply line {line:?}")))
        };
        Ok(match kind {
            "+" => Reply::Simple(rest.to_string()),
            "-" => Reply::Error(rest.to_string()),
            ":" => Reply::Integer(number()?),
            "$" => match number()? {
                -1 => Reply::Bulk(None),
                length => {
                    let mut data = vec![0; length as usize + 2];
                    std::io::Read::read_exact(&mut self.reader, &mut data)?;
                    data.truncate(length as usize);
                    Reply::Bulk(Some(data))
                }
            },
            "*" => {
                let count = number()?;
                let mut items = Vec::new();
                for _ in 0..count {
                    items.push(self.read_reply()?);
                }
                Reply::Array(items)
            }
            _ => return Err(std::io::Error::other(format!("bad reply line {line:?}"))),
        })
    }
}

/// The text of a bulk or simple reply.
pub fn text(reply: &Reply) -> String {
    match reply {
        Reply::Bulk(Some(bytes)) => String::from_utf8_lossy(bytes).into_owned(),
        Reply::Simple(text) => text.clone(),
        other => panic!("expected text, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------------------
// Ports.

/// Ports that were free a moment ago (the processes bind them right away), all below the
/// kernel's ephemeral range: see [`free_port_blocks`].
pub fn free_ports(count: usize) -> Vec<u16> {
    free_port_blocks(count, 1)
}

/// The `--peers` argument for nodes `1..=ports.len()` on loopback at `ports`.
pub fn peers_argument(ports: &[u16]) -> String {
    ports
        .iter()
        .enumerate()
        .map(|(index, port)| format!("{}=127.0.0.1:{port}", index + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// The lowest port of the kernel's ephemeral range (outgoing connections take their local
/// port from it), 32768 where it cannot be read.
fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}

/// The first ports of `count` blocks of `width` consecutive loopback ports that were all
/// free a moment ago (for a server that derives more ports from one, like `bank`'s groups).
///
/// The ports lie below the ephemeral range. A port from that range (what binding port 0
/// gives) can be taken, while a killed node is down, as the local port of some outgoing
/// connection, and the node could not listen on it again when it restarts.
pub fn free_port_blocks(count: usize, width: u16) -> Vec<u16> {
    const LOW: u16 = 10_000;
    let high = ephemeral_low().max(LOW + 1_000);
    let span = high - LOW - width;
    let mut held = Vec::new();
    let mut bases = Vec::new();
    // Start somewhere new on every call (process id, call count and clock mixed), so calls
    // in one test and tests running at once rarely probe the same ports; step by a prime
    // so every candidate gets visited.
    // Ports this process handed out already: its servers may not have bound them yet.
    static GIVEN: std::sync::Mutex<std::collections::BTreeSet<u16>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let calls = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());
    let mix = std::process::id()
        .wrapping_mul(2_654_435_761)
        .wrapping_add(calls.wrapping_mul(7_919))
        .wrapping_add(nanos);
    let mut offset = (mix % u32::from(span)) as u16;
    for _ in 0..2000 {
        if bases.len() == count {
            return bases;
        }
        offset = ((u32::from(offset) + 97) % u32::from(span)) as u16;
        let candidate = LOW + offset;
        let mut given = GIVEN
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if (candidate..candidate + width).any(|port| given.contains(&port)) {
            continue;
        }
        let listeners: Vec<TcpListener> = (0..width)
            .map_while(|step| TcpListener::bind(("127.0.0.1", candidate + step)).ok())
            .collect();
        if listeners.len() == usize::from(width) {
            bases.push(candidate);
            given.extend(candidate..candidate + width);
            held.extend(listeners);
        }
    }
    panic!("no {count} blocks of {width} consecutive free ports below {high}");
}

// ---------------------------------------------------------------------------------------
// Server processes.

/// An example server per node as OS processes, with their data directories and numbered logs
/// (`node-N.K.log`: node N's K-th start) in one temporary directory. Dropping it kills them,
/// and prints their logs if the test is failing.
pub struct Nodes {
    binary: PathBuf,
    root: tempfile::TempDir,
    children: Vec<Option<std::process::Child>>,
    starts: Vec<u32>,
}

impl Nodes {
    /// Builds example `name` and makes room for `count` nodes; none runs yet.
    pub fn new(name: &str, count: usize) -> Nodes {
        Nodes::with_binary(build_example(name), count)
    }

    /// Makes room for `count` nodes of the server `binary` (built already); none runs yet.
    pub fn with_binary(binary: PathBuf, count: usize) -> Nodes {
        Nodes {
            binary,
            root: tempfile::TempDir::new().expect("a temporary directory"),
            children: (0..count).map(|_| None).collect(),
            starts: vec![0; count],
        }
    }

    /// Node `index`'s data directory (`--data`).
    pub fn data(&self, index: usize) -> PathBuf {
        self.root.path().join(format!("node-{}", index + 1))
    }

    /// Starts node `index` with `args` followed by `--data` and its directory.
    pub fn start(&mut self, index: usize, args: &[String]) {
        assert!(self.children[index].is_none(), "node {} runs", index + 1);
        self.starts[index] += 1;
        let log = self
            .root
            .path()
            .join(format!("node-{}.{}.log", index + 1, self.starts[index]));
        let log = std::fs::File::create(log).expect("a log file");
        let child = Command::new(&self.binary)
            .args(args)
            .arg("--data")
            .arg(self.data(index))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("a log file"))
            .stderr(log)
            .spawn()
            .expect("starting the server");
        self.children[index] = Some(child);
    }

    /// `SIGKILL`s node `index` (no chance to flush or say goodbye) and reaps it; nothing if
    /// it is not running.
    pub fn kill(&mut self, index: usize) {
        if let Some(mut child) = self.children[index].take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Whether node `index` was started and not killed.
    pub fn started(&self, index: usize) -> bool {
        self.children[index].is_some()
    }

    /// Panics if a node process exited by itself (it failed to start, or crashed).
    pub fn check_running(&mut self) {
        for (index, child) in self.children.iter_mut().enumerate() {
            if let Some(child) = child {
                if let Some(status) = child.try_wait().expect("waiting on a child") {
                    panic!("node {} exited: {status}", index + 1);
                }
            }
        }
    }

    /// Prints every log.
    pub fn print_logs(&self) {
        let entries = std::fs::read_dir(self.root.path()).expect("the temporary directory");
        for entry in entries.flatten() {
            if entry.path().extension().is_some_and(|ext| ext == "log") {
                let log = std::fs::read_to_string(entry.path()).unwrap_or_default();
                eprintln!("--- {}\n{log}", entry.path().display());
            }
        }
    }
}

impl Drop for Nodes {
    fn drop(&mut self) {
        for index in 0..self.children.len() {
            self.kill(index);
        }
        if std::thread::panicking() {
            self.print_logs();
        }
    }
}
