//! The futures driver: three replicas on in-process channels, real threads for storage, a
//! ticker thread for time. Checks ordered delivery everywhere and group commit.

use bytes::Bytes;
use futures::channel::mpsc;
use futures::executor::block_on;
use futures::{FutureExt, StreamExt};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use synod::driver::{Applied, Driver, DriverConfig, Handle, ProposalError};
use synod::storage::{Recovered, Snapshot, WriteBatch};
use synod::transport::LocalTransport;
use synod::{
    Config, Entry, MemStorage, NodeId, ProposeError, Replica, Slot, Storage, StorageError, Value,
};

/// MemStorage whose syncs take a while (like a disk) and are counted.
struct SlowStorage {
    inner: MemStorage,
    syncs: Arc<AtomicU64>,
    entries_written: Arc<AtomicU64>,
}

impl Storage for SlowStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.inner.recover()
    }

    fn write(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        let (entries, must_sync) = (batch.entries().count() as u64, batch.must_sync);
        self.inner.write(batch)?;
        self.entries_written.fetch_add(entries, Ordering::Relaxed);
        if must_sync {
            std::thread::sleep(Duration::from_micros(500));
            self.syncs.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError> {
        self.inner.entries(first, last)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.inner.save_snapshot(snapshot)
    }

    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.inner.load_snapshot()
    }

    fn compact(&mut self, through: Slot) -> Result<(), StorageError> {
        Storage::compact(&mut self.inner, through)
    }
}

struct Node {
    handle: Handle,
    committed: mpsc::Receiver<Applied>,
    syncs: Arc<AtomicU64>,
}

/// A thread that sends one tick per millisecond to every driver and to the test body.
struct Ticker {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Ticker {
    /// Starts ticking `drivers`; returns the ticker and the test body's own tick stream.
    fn start(drivers: Vec<mpsc::UnboundedSender<()>>) -> (Ticker, mpsc::UnboundedReceiver<()>) {
        let (test_tick_sender, test_ticks) = mpsc::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    for sender in &drivers {
                        let _ = sender.unbounded_send(());
                    }
                    let _ = test_tick_sender.unbounded_send(());
                    std::thread::sleep(Duration::from_millis(1));
                }
            })
        };
        (Ticker { stop, thread }, test_ticks)
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().unwrap();
    }
}

async fn wait_for_leader(handles: &mut [Handle], ticks: &mut mpsc::UnboundedReceiver<()>) -> usize {
    loop {
        for (index, handle) in handles.iter_mut().enumerate() {
            if handle
                .status()
                .await
                .is_some_and(|status| status.role == synod::Role::Leader)
            {
                return index;
            }
        }
        ticks.next().await;
    }
}

async fn take_commands(committed: &mut mpsc::Receiver<Applied>, count: usize) -> Vec<Bytes> {
    let mut commands = Vec::new();
    while commands.len() < count {
        match committed.next().await.expect("driver running") {
            Applied::Entry(Entry {
                value: Value::Command { data, .. },
                ..
            }) => commands.push(data),
            Applied::Entry(_) => {}
            Applied::Snapshot(snapshot) => panic!("no node compacts here: {snapshot:?}"),
        }
    }
    commands
}

#[test]
fn three_drivers_replicate_in_order_with_group_commit() {
    let ids: Vec<NodeId> = (1..=3).map(NodeId).collect();
    let mesh = LocalTransport::mesh(&ids, 65_536);
    let mut drivers = Vec::new();
    let mut nodes = Vec::new();
    let mut tickers = Vec::new();
    for ((transport, inbox), id) in mesh.into_iter().zip(&ids) {
        let mut config = Config::new(*id, ids.clone());
        config.uncommitted_entries_max = 100_000;
        // Ticks are real milliseconds here and CI machines stall: keep leadership stable.
        config.election_ticks = 300;
        config.heartbeat_ticks = 10;
        config.retransmit_ticks = 20;
        let mut storage = SlowStorage {
            inner: MemStorage::new(),
            syncs: Arc::new(AtomicU64::new(0)),
            entries_written: Arc::new(AtomicU64::new(0)),
        };
        let replica = Replica::new(config, storage.recover().unwrap()).unwrap();
        let (tick_sender, ticks) = mpsc::unbounded();
        tickers.push(tick_sender);
        let syncs = storage.syncs.clone();
        let (driver, handle, committed) = Driver::new(
            replica,
            storage,
            transport,
            ticks.boxed(),
            inbox.boxed(),
            DriverConfig::default(),
        );
        drivers.push(driver.run());
        nodes.push(Node {
            handle,
            committed,
            syncs,
        });
    }
    let (ticker, mut test_ticks) = Ticker::start(tickers);
    const COUNT: usize = 3_000;
    let body = async {
        let mut handles: Vec<Handle> = nodes.iter().map(|node| node.handle.clone()).collect();
        let leader = wait_for_leader(&mut handles, &mut test_ticks).await;
        let follower = (leader + 1) % 3;
        // A follower's proposal is forwarded and awaited to its commit.
        let (id, slot) = loop {
            match handles[follower]
                .propose_and_wait(Bytes::from_static(b"first"))
                .await
            {
                Ok(done) => break done,
                Err(ProposalError::Rejected(
                    ProposeError::Busy { .. } | ProposeError::NotLeader { .. },
                )) => {
                    test_ticks.next().await;
                }
                Err(other) => panic!("{other}"),
            }
        };
        assert_eq!(id.node, NodeId(follower as u64 + 1));
        assert!(slot >= 1);
        let syncs_before = nodes[leader].syncs.load(Ordering::Relaxed);
        // Pipeline many proposals at the leader without waiting for each.
        let mut sent = 0;
        while sent < COUNT {
            match handles[leader]
                .propose(Bytes::from(format!("c{sent}")))
                .await
            {
                Ok(_) => sent += 1,
                Err(ProposalError::Rejected(ProposeError::Busy { .. })) => {
                    test_ticks.next().await;
                }
                Err(other) => panic!("{other}"),
            }
        }
        let mut logs = Vec::new();
        for node in &mut nodes {
            logs.push(take_commands(&mut node.committed, COUNT + 1).await);
        }
        let syncs = nodes[leader].syncs.load(Ordering::Relaxed) - syncs_before;
        // A read-index read covers every write applied before it, at the leader and at a
        // follower (which asks the leader).
        let read = handles[leader]
            .read_index()
            .await
            .expect("the leader reads");
        assert!(read >= slot + COUNT as u64, "read at {read}");
        let read = handles[follower]
            .read_index()
            .await
            .expect("a follower reads through the leader");
        assert!(read >= slot + COUNT as u64, "follower read at {read}");
        // The live counters: every storage write merged one or more ready batches.
        let stats = handles[leader].stats().await.expect("the driver runs");
        assert!(
            stats.storage_writes > 0 && stats.writes >= stats.storage_writes,
            "{stats:?}"
        );
        assert_eq!(stats.reads_confirmed, 1);
        let stats = handles[follower].stats().await.expect("the driver runs");
        assert_eq!(stats.reads_confirmed, 1);
        // The leadership is handed over to the follower, which takes proposals at once.
        let target = NodeId(follower as u64 + 1);
        assert_eq!(
            handles[leader].transfer_leadership(target).await,
            Some(Ok(()))
        );
        while wait_for_leader(&mut handles, &mut test_ticks).await != follower {
            test_ticks.next().await;
        }
        (logs, syncs)
    };
    let all_drivers = futures::future::join_all(drivers);
    let (logs, syncs) = block_on(async {
        futures::select! {
            result = body.fuse() => result,
            _ = all_drivers.fuse() => panic!("drivers stopped early"),
        }
    });
    ticker.stop();
    let expected: Vec<Bytes> = std::iter::once(Bytes::from_static(b"first"))
        .chain((0..COUNT).map(|i| Bytes::from(format!("c{i}"))))
        .collect();
    for log in &logs {
        assert_eq!(log, &expected);
    }
    let per_sync = COUNT as f64 / syncs.max(1) as f64;
    assert!(
        per_sync > 2.0,
        "group commit: {COUNT} proposals took {syncs} syncs at the leader"
    );
    eprintln!(
        "group commit: {COUNT} proposals, {syncs} leader syncs, {per_sync:.1} proposals per sync"
    );
}

/// Storage that fails every write.
struct BrokenDisk;

impl Storage for BrokenDisk {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        Ok(Recovered::default())
    }

    fn write(&mut self, _batch: &mut WriteBatch) -> Result<(), StorageError> {
        Err(StorageError::Io {
            path: "disk0".to_string(),
            source: std::io::Error::other("device gone"),
        })
    }

    fn entries(&mut self, _first: Slot, _last: Slot) -> Result<Vec<Entry>, StorageError> {
        Ok(Vec::new())
    }

    fn save_snapshot(&mut self, _snapshot: &Snapshot) -> Result<(), StorageError> {
        Err(StorageError::Io {
            path: "disk0".to_string(),
            source: std::io::Error::other("device gone"),
        })
    }

    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        Ok(None)
    }

    fn compact(&mut self, _through: Slot) -> Result<(), StorageError> {
        Ok(())
    }
}

#[test]
fn a_failed_write_stops_the_driver_with_the_storage_error() {
    let config = Config::new(NodeId(1), vec![NodeId(1)]);
    let replica = Replica::new(config, Recovered::default()).unwrap();
    let ticks = futures::stream::repeat(()).boxed();
    let inbound = futures::stream::pending().boxed();
    let (driver, mut handle, _committed) = Driver::new(
        replica,
        BrokenDisk,
        Vec::new(),
        ticks,
        inbound,
        DriverConfig::default(),
    );
    let error = block_on(driver.run()).expect_err("the write fails");
    assert!(
        matches!(
            error,
            synod::driver::DriverError::Storage(StorageError::Io { .. })
        ),
        "{error}"
    );
    // Handles see the driver is gone, and get their command back.
    let command = Bytes::from_static(b"x");
    assert_eq!(
        block_on(handle.propose(command.clone())),
        Err(ProposalError::Stopped { command })
    );
}

#[test]
fn the_driver_stops_cleanly_when_ticks_end() {
    let config = Config::new(NodeId(1), vec![NodeId(1)]);
    let mut storage = MemStorage::new();
    let replica = Replica::new(config, storage.recover().unwrap()).unwrap();
    let ticks = futures::stream::iter(std::iter::repeat_n((), 200)).boxed();
    let inbound = futures::stream::pending().boxed();
    let (driver, _handle, _committed) = Driver::new(
        replica,
        storage,
        Vec::new(),
        ticks,
        inbound,
        DriverConfig::default(),
    );
    let stats = block_on(driver.run()).expect("clean stop");
    assert!(stats.writes >= 1 && stats.storage_writes >= 1, "{stats:?}");
}

/// MemStorage shared with the test, to look at after the driver is done with it.
struct SharedStorage(Arc<std::sync::Mutex<MemStorage>>);

impl Storage for SharedStorage {
    fn recover(&mut self) -> Result<Recovered, StorageError> {
        self.0.lock().unwrap().recover()
    }

    fn write(&mut self, batch: &mut WriteBatch) -> Result<(), StorageError> {
        self.0.lock().unwrap().write(batch)
    }

    fn entries(&mut self, first: Slot, last: Slot) -> Result<Vec<Entry>, StorageError> {
        self.0.lock().unwrap().entries(first, last)
    }

    fn save_snapshot(&mut self, snapshot: &Snapshot) -> Result<(), StorageError> {
        self.0.lock().unwrap().save_snapshot(snapshot)
    }

    fn load_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        self.0.lock().unwrap().load_snapshot()
    }

    fn compact(&mut self, through: Slot) -> Result<(), StorageError> {
        Storage::compact(&mut *self.0.lock().unwrap(), through)
    }
}

#[test]
fn compact_saves_the_snapshot_and_compacts_only_what_was_handed_out() {
    let shared = Arc::new(std::sync::Mutex::new(MemStorage::new()));
    let mut storage = SharedStorage(shared.clone());
    let config = Config::new(NodeId(1), vec![NodeId(1)]);
    let replica = Replica::new(config, storage.recover().unwrap()).unwrap();
    let (tick_sender, ticks) = mpsc::unbounded();
    let inbound = futures::stream::pending().boxed();
    let (driver, mut handle, mut committed) = Driver::new(
        replica,
        storage,
        Vec::new(),
        ticks.boxed(),
        inbound,
        DriverConfig::default(),
    );
    let running = std::thread::spawn(move || block_on(driver.run()));
    let stop = Arc::new(AtomicBool::new(false));
    let ticker = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) && tick_sender.unbounded_send(()).is_ok() {
                std::thread::sleep(Duration::from_millis(1));
            }
        })
    };
    block_on(async {
        let mut last = 0;
        for command in ["a", "b", "c"] {
            loop {
                match handle
                    .propose_and_wait(Bytes::from_static(command.as_bytes()))
                    .await
                {
                    Ok((_, slot)) => {
                        last = slot;
                        break;
                    }
                    Err(ProposalError::Rejected(_)) => {
                        futures_timer_sleep().await;
                    }
                    Err(error) => panic!("{error}"),
                }
            }
        }
        // Everything up to `last` has been handed out on `committed` once it is read.
        let mut handed_out = 0;
        while handed_out < last {
            match committed.next().await.expect("driver running") {
                Applied::Entry(entry) => handed_out = entry.slot,
                Applied::Snapshot(snapshot) => panic!("unexpected {snapshot:?}"),
            }
        }
        let beyond = Snapshot {
            slot: last + 10,
            data: Bytes::from_static(b"state"),
            membership: None,
        };
        assert_eq!(
            handle.compact(beyond).await,
            Err(synod::driver::CompactError::NotApplied {
                slot: last + 10,
                applied: last
            })
        );
        let max = Config::new(NodeId(1), vec![NodeId(1)]).snapshot_bytes_max;
        let huge = Snapshot {
            slot: last,
            data: Bytes::from(vec![0u8; max + 1]),
            membership: None,
        };
        assert_eq!(
            handle.compact(huge).await,
            Err(synod::driver::CompactError::TooLarge { size: max + 1, max })
        );
        assert_eq!(
            shared.lock().unwrap().compacted_through(),
            0,
            "nothing compacted"
        );
        let snapshot = Snapshot {
            slot: last,
            data: Bytes::from_static(b"state"),
            membership: None,
        };
        handle.compact(snapshot.clone()).await.expect("compacted");
        let mut storage = shared.lock().unwrap();
        assert_eq!(storage.load_snapshot().unwrap(), Some(snapshot));
        assert_eq!(storage.compacted_through(), last);
    });
    // Ending the ticks stops the driver cleanly.
    stop.store(true, Ordering::Relaxed);
    ticker.join().unwrap();
    let stats = running.join().unwrap().expect("clean stop");
    assert_eq!(stats.snapshots_installed, 0);
}

/// A short pause without a runtime timer.
async fn futures_timer_sleep() {
    let (sender, receiver) = futures::channel::oneshot::channel::<()>();
    std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(5));
        let _ = sender.send(());
    });
    let _ = receiver.await;
}

/// Membership change through the driver: n4 starts with `Config::joining`, is added as a
/// learner, promoted, and n1 is removed; every node that stays applies every command.
#[test]
fn drivers_change_membership_while_proposing() {
    let ids: Vec<NodeId> = (1..=4).map(NodeId).collect();
    let mesh = LocalTransport::mesh(&ids, 65_536);
    let mut drivers = Vec::new();
    let mut handles = Vec::new();
    let mut committed = Vec::new();
    let mut tickers = Vec::new();
    for ((transport, inbox), id) in mesh.into_iter().zip(&ids) {
        let mut config = if id.0 == 4 {
            Config::joining(*id)
        } else {
            Config::new(*id, ids[..3].to_vec())
        };
        config.election_ticks = 300;
        config.heartbeat_ticks = 10;
        config.retransmit_ticks = 20;
        let mut storage = MemStorage::new();
        let replica = Replica::new(config, storage.recover().unwrap()).unwrap();
        let (tick_sender, ticks) = mpsc::unbounded();
        tickers.push(tick_sender);
        let (driver, handle, applied) = Driver::new(
            replica,
            storage,
            transport,
            ticks.boxed(),
            inbox.boxed(),
            DriverConfig::default(),
        );
        drivers.push(driver.run());
        handles.push(handle);
        committed.push(applied);
    }
    let (ticker, mut test_ticks) = Ticker::start(tickers);
    let membership = |voters: &[u64], learners: &[u64]| {
        synod::Membership::new(
            voters.iter().copied().map(NodeId),
            learners.iter().copied().map(NodeId),
        )
    };
    let body = async {
        // Proposes `command` at whoever leads until it is taken.
        async fn propose(
            handles: &mut [Handle],
            ticks: &mut mpsc::UnboundedReceiver<()>,
            command: String,
        ) {
            loop {
                let leader = wait_for_leader(handles, ticks).await;
                match handles[leader].propose(Bytes::from(command.clone())).await {
                    Ok(_) => return,
                    Err(ProposalError::Rejected(_)) => {
                        ticks.next().await;
                    }
                    Err(other) => panic!("{other}"),
                }
            }
        }
        // Changes the membership at whoever leads until the change is proposed.
        async fn change(
            handles: &mut [Handle],
            ticks: &mut mpsc::UnboundedReceiver<()>,
            membership: synod::Membership,
        ) {
            loop {
                let leader = wait_for_leader(handles, ticks).await;
                match handles[leader].change_membership(membership.clone()).await {
                    Some(Ok(_)) => return,
                    Some(Err(_)) => {
                        ticks.next().await;
                    }
                    None => panic!("driver stopped"),
                }
            }
        }
        let mut handles_now = handles.clone();
        propose(&mut handles_now, &mut test_ticks, "a".into()).await;
        change(
            &mut handles_now,
            &mut test_ticks,
            membership(&[1, 2, 3], &[4]),
        )
        .await;
        propose(&mut handles_now, &mut test_ticks, "b".into()).await;
        change(
            &mut handles_now,
            &mut test_ticks,
            membership(&[1, 2, 3, 4], &[]),
        )
        .await;
        propose(&mut handles_now, &mut test_ticks, "c".into()).await;
        change(
            &mut handles_now,
            &mut test_ticks,
            membership(&[2, 3, 4], &[]),
        )
        .await;
        // n1 is out: only n2..n4 lead from now on.
        let mut remaining = handles_now[1..].to_vec();
        propose(&mut remaining, &mut test_ticks, "d".into()).await;
        let mut logs = Vec::new();
        for applied in committed[1..].iter_mut() {
            logs.push(take_commands(applied, 4).await);
        }
        let status = remaining[2].status().await.expect("n4 runs");
        assert!(status.chosen >= 7, "{status:?}");
        logs
    };
    let all_drivers = futures::future::join_all(drivers);
    let logs = block_on(async {
        futures::select! {
            result = body.fuse() => result,
            _ = all_drivers.fuse() => panic!("drivers stopped early"),
        }
    });
    ticker.stop();
    for log in logs {
        assert_eq!(
            log,
            ["a", "b", "c", "d"].map(|c| Bytes::from_static(c.as_bytes()))
        );
    }
}
