//! The harness every library runs under: one cluster in memory, one thread, one client.
//!
//! A [`Cluster`] adapter owns the replicas of one library, their storages and an in-memory
//! message queue (messages travel as Rust values; nothing is serialized). The [`drive`] loop is
//! the client: it keeps at most `window` commands in flight — in flight meaning proposed but
//! not yet applied on *every* replica — and advances the cluster one delivery round at a time.
//! Every replica folds each applied command into an order-sensitive [`Digest`]; after the run
//! the digests must equal the digest of the proposed sequence, or the run fails loudly.

use crate::alloc;
use std::time::{Duration, Instant};

/// One library's cluster, seen by the client.
pub trait Cluster {
    /// Proposes `payload` at the leader. Panics if the library refuses it: the adapters size
    /// every limit above the client's window, so a refusal is a harness bug.
    fn propose(&mut self, payload: Vec<u8>);

    /// One delivery round: every queued message is delivered to its recipient, then every
    /// replica drains its output (messages are queued for the next round, writes go to its
    /// storage, chosen commands are applied). Returns false if nothing happened at all.
    fn round(&mut self) -> bool;

    /// One tick on every replica. The client ticks only when a round did nothing while
    /// commands are in flight (a library that batches on a timer needs it); the count of such
    /// ticks is reported.
    fn tick(&mut self);

    /// Discards, on every replica, the log prefix that every replica has applied: what a
    /// long-running deployment does once its state machines have snapshotted that far (the
    /// snapshot itself is not modelled). The client calls it every `compact_every` commands.
    fn compact(&mut self);

    /// What each replica has applied.
    fn appliers(&self) -> &[Digest];

    /// Messages delivered so far.
    fn messages(&self) -> u64;
}

/// What one replica applied: a count and an order-sensitive digest of the commands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Digest {
    pub count: u64,
    pub value: u64,
}

impl Digest {
    /// Folds one command in. The fold is not commutative: the same commands in another order
    /// give another digest. The command's bytes are hashed in four independent lanes of eight
    /// bytes each (then the tail word by word and byte by byte), so that hashing a 1 KiB command
    /// is not one long chain of dependent multiplications: the harness's own cost per entry is
    /// kept low, so what the table compares is the libraries.
    #[inline]
    pub fn apply(&mut self, data: &[u8]) {
        const MUL: u64 = 0x9E37_79B9_7F4A_7C15;
        #[inline(always)]
        fn mix(lane: u64, word: &[u8]) -> u64 {
            let word = u64::from_le_bytes(word.try_into().expect("8 bytes"));
            (lane ^ word).wrapping_mul(MUL).rotate_left(29)
        }
        let mut lanes = [
            0x243F_6A88_85A3_08D3 ^ data.len() as u64,
            0x1319_8A2E_0370_7344,
            0xA409_3822_299F_31D0,
            0x082E_FA98_EC4E_6C89,
        ];
        let mut blocks = data.chunks_exact(32);
        for block in &mut blocks {
            lanes[0] = mix(lanes[0], &block[0..8]);
            lanes[1] = mix(lanes[1], &block[8..16]);
            lanes[2] = mix(lanes[2], &block[16..24]);
            lanes[3] = mix(lanes[3], &block[24..32]);
        }
        let mut hash = lanes[0];
        for lane in &lanes[1..] {
            hash = (hash ^ lane).wrapping_mul(MUL).rotate_left(29);
        }
        let mut words = blocks.remainder().chunks_exact(8);
        for word in &mut words {
            hash = mix(hash, word);
        }
        for &byte in words.remainder() {
            hash = (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01B3);
        }
        self.count += 1;
        self.value = (self.value.rotate_left(7) ^ hash).wrapping_mul(0xD6E8_FEB8_6659_FD93);
    }
}

/// The command the client proposes as number `sequence`: `size` bytes (at least 8), the
/// sequence number first, then a byte derived from it repeated (one `memset`: building the
/// command should cost the client little), so every command is distinct.
pub fn payload(sequence: u64, size: usize) -> Vec<u8> {
    let mut data = vec![(sequence as u8) ^ 0x5A; size.max(8)];
    data[..8].copy_from_slice(&sequence.to_le_bytes());
    data
}

/// The digest every replica must reach after applying commands `0..count`.
pub fn expected_digest(count: u64, size: usize) -> Digest {
    let mut digest = Digest::default();
    for sequence in 0..count {
        digest.apply(&payload(sequence, size));
    }
    digest
}

/// What one timed run measured.
#[derive(Clone, Copy, Debug)]
pub struct Measured {
    pub commits: u64,
    /// Wall-clock time of the timed section.
    pub elapsed: Duration,
    /// CPU time this process spent in the timed section. On a shared machine, where the
    /// scheduler may take the core away mid-run, commits per CPU-second is the steadier figure.
    pub cpu: Duration,
    pub messages: u64,
    pub allocations: alloc::Counts,
    /// Ticks the client had to give because a round did nothing (0 for a library that needs
    /// no timer to make progress).
    pub stall_ticks: u64,
}

impl Measured {
    pub fn commits_per_second(&self) -> f64 {
        self.commits as f64 / self.elapsed.as_secs_f64()
    }

    pub fn commits_per_cpu_second(&self) -> f64 {
        self.commits as f64 / self.cpu.as_secs_f64()
    }
}

/// What the client does: how many commands, how many in flight, how large, and how often the
/// logs are compacted.
#[derive(Clone, Copy, Debug)]
pub struct Load {
    /// Commands proposed before the timed run.
    pub warmup: u64,
    /// Commands proposed in the timed run.
    pub count: u64,
    /// At most this many commands in flight.
    pub window: u64,
    /// Bytes per command.
    pub size: usize,
    /// Compact every replica's log each time this many more commands have been applied
    /// everywhere (0: never; the logs grow for the whole run).
    pub compact_every: u64,
}

/// Proposes `count` more commands (numbered from `first`), keeping at most `window` in flight,
/// until every replica has applied all of them.
#[inline(never)]
pub fn timed_section<C: Cluster>(cluster: &mut C, first: u64, count: u64, load: Load) -> u64 {
    let Load {
        window,
        size,
        compact_every,
        ..
    } = load;
    let end = first + count;
    let mut next = first;
    let mut stall_ticks = 0;
    let mut compacted = applied_everywhere(cluster.appliers());
    loop {
        let applied = applied_everywhere(cluster.appliers());
        if applied >= end {
            return stall_ticks;
        }
        if compact_every > 0 && applied >= compacted + compact_every {
            cluster.compact();
            compacted = applied;
        }
        while next < end && next - applied < window {
            let command = alloc::uncounted(|| payload(next, size));
            cluster.propose(command);
            next += 1;
        }
        if !cluster.round() {
            cluster.tick();
            stall_ticks += 1;
            assert!(
                stall_ticks < 1_000_000,
                "no progress: {applied} of {end} applied everywhere"
            );
        }
    }
}

/// CPU time consumed by this process so far (`CLOCK_PROCESS_CPUTIME_ID`, nanosecond
/// resolution).
pub fn cpu_time() -> Duration {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid, writable timespec; the clock id is a constant Linux supports.
    let status = unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut now) };
    assert_eq!(status, 0, "clock_gettime(CLOCK_PROCESS_CPUTIME_ID) failed");
    Duration::new(now.tv_sec as u64, now.tv_nsec as u32)
}

/// The timed run itself: a function of its own so that a profiler can collect exactly it
/// (`valgrind --tool=callgrind --collect-atstart=no --toggle-collect='*measured_section*'`).
#[inline(never)]
pub fn measured_section<C: Cluster>(cluster: &mut C, first: u64, count: u64, load: Load) -> u64 {
    timed_section(cluster, first, count, load)
}

fn applied_everywhere(appliers: &[Digest]) -> u64 {
    appliers
        .iter()
        .map(|digest| digest.count)
        .min()
        .unwrap_or(0)
}

/// Warms `cluster` up with `load.warmup` commands (untimed), then times `load.count` more, and
/// checks that every replica applied exactly the proposed sequence.
pub fn drive<C: Cluster>(cluster: &mut C, load: Load) -> Measured {
    let Load {
        warmup,
        count,
        size,
        ..
    } = load;
    assert!(
        cluster.appliers().iter().all(|d| d.count == 0),
        "no command may be applied before the run"
    );
    timed_section(cluster, 0, warmup, load);
    let messages_before = cluster.messages();
    alloc::start();
    let started = Instant::now();
    let cpu_started = cpu_time();
    let stall_ticks = measured_section(cluster, warmup, count, load);
    let cpu = cpu_time() - cpu_started;
    let elapsed = started.elapsed();
    let allocations = alloc::stop();
    let messages = cluster.messages() - messages_before;
    let expected = expected_digest(warmup + count, size);
    for (index, digest) in cluster.appliers().iter().enumerate() {
        assert_eq!(
            *digest, expected,
            "replica #{index} applied something other than the proposed sequence"
        );
    }
    Measured {
        commits: count,
        elapsed,
        cpu,
        messages,
        allocations,
        stall_ticks,
    }
}

/// No consensus at all: every proposal is applied on every "replica" at once. Its cost per
/// entry is the harness's own floor (building the payload, the digests, the client loop), to
/// subtract from a library's figure.
///
/// With `retain`, it also keeps every command (once, as `Bytes`) until the next `compact`, as a
/// replicated log must: the floor of any library that holds its log in memory until the
/// application compacts it.
pub struct NullCluster {
    appliers: Vec<Digest>,
    retained: Option<Vec<bytes::Bytes>>,
}

impl NullCluster {
    pub fn new(nodes: usize, retain: bool) -> NullCluster {
        NullCluster {
            appliers: vec![Digest::default(); nodes],
            retained: retain.then(Vec::new),
        }
    }
}

impl Cluster for NullCluster {
    fn propose(&mut self, payload: Vec<u8>) {
        for digest in &mut self.appliers {
            digest.apply(&payload);
        }
        if let Some(retained) = &mut self.retained {
            retained.push(bytes::Bytes::from(payload));
        }
    }

    fn round(&mut self) -> bool {
        false
    }

    fn tick(&mut self) {}

    fn compact(&mut self) {
        if let Some(retained) = &mut self.retained {
            retained.clear();
        }
    }

    fn appliers(&self) -> &[Digest] {
        &self.appliers
    }

    fn messages(&self) -> u64 {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_depends_on_order_and_content() {
        let (a, b) = (payload(1, 64), payload(2, 64));
        let mut ab = Digest::default();
        ab.apply(&a);
        ab.apply(&b);
        let mut ba = Digest::default();
        ba.apply(&b);
        ba.apply(&a);
        assert_ne!(ab, ba);
        let mut aa = Digest::default();
        aa.apply(&a);
        aa.apply(&a);
        assert_ne!(ab, aa);
        // Every byte counts, wherever it falls: in a lane, in the tail words, in the tail bytes.
        let command = payload(9, 1027);
        let digest_of = |data: &[u8]| {
            let mut digest = Digest::default();
            digest.apply(data);
            digest
        };
        for index in [0, 9, 17, 25, 500, 1023, 1024, 1026] {
            let mut changed = command.clone();
            changed[index] ^= 1;
            assert_ne!(digest_of(&changed), digest_of(&command), "byte {index}");
        }
        assert_eq!(payload(7, 1024).len(), 1024);
        assert_eq!(&payload(7, 64)[..8], &7u64.to_le_bytes());
    }
}
