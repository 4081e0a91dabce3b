//! The tables of the read model (one redb file), and the change set one batch of stream
//! messages makes to them.
//!
//! One writer (the projector) applies messages in stream order. It reads current records,
//! computes the new ones into a [`Changes`] overlay, and commits them together with the
//! checkpoint (the last message's stream sequence) in one redb write transaction. So a
//! crash leaves either the whole batch applied with its checkpoint, or neither. Readers
//! read committed snapshots and never wait for the writer.

use std::any::Any;
use std::cell::OnceCell;
use std::ops::{Bound, RangeBounds};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use redb::{ReadableDatabase, TableDefinition};
use rustc_hash::FxHashMap;
use serde::{de::DeserializeOwned, Serialize};

/// What can go wrong with the read model.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The store failed (disk full, corrupt file).
    #[error("read model storage: {0}")]
    Storage(#[from] Box<redb::Error>),
    /// Another process (or another handle in this one) has the read model open.
    #[error("read model is in use by another process")]
    InUse,
    /// Work on the read model's thread panicked or was cancelled.
    #[error("read model task failed: {0}")]
    Task(String),
    /// A stored record could not be decoded: written by other code, or corrupt.
    #[error("read model record {table}/{key}: {source}")]
    Record {
        /// The table.
        table: &'static str,
        /// The key, lossily as text.
        key: String,
        /// Why.
        source: rmp_serde::decode::Error,
    },
    /// A record could not be encoded.
    #[error("read model encoding: {0}")]
    Encode(#[from] rmp_serde::encode::Error),
    /// The directory holds no read model, or one of another record layout.
    #[error("no read model of layout version {LAYOUT_VERSION} here (found {found:?})")]
    Layout {
        /// The layout version found, if any.
        found: Option<u64>,
    },
    /// The directory could not be created or read.
    #[error("read model directory: {0}")]
    Io(#[from] std::io::Error),
}

/// redb's error types, each turned into [`ProjectionError::Storage`] by `?`.
macro_rules! storage_errors {
    ($($error:ty),*) => {$(
        impl From<$error> for ProjectionError {
            fn from(e: $error) -> Self {
                match redb::Error::from(e) {
                    redb::Error::DatabaseAlreadyOpen => ProjectionError::InUse,
                    other => ProjectionError::Storage(Box::new(other)),
                }
            }
        }
    )*};
}
storage_errors!(
    redb::Error,
    redb::DatabaseError,
    redb::TransactionError,
    redb::TableError,
    redb::StorageError,
    redb::CommitError,
    redb::SetDurabilityError,
    redb::CompactionError
);

/// The tables of the read model. The discriminant is the table's index in [`Table::ALL`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Table {
    /// The checkpoint and other single values.
    Meta,
    /// task id -> TaskView.
    Tasks,
    /// submitted seq -> task id: every task, newest last.
    TasksByTime,
    /// buyer id, 0, submitted seq -> task id.
    TasksByBuyer,
    /// agent id, 0, submitted seq -> task id.
    TasksByAgent,
    /// status, 0, submitted seq -> task id.
    TasksByStatus,
    /// agent id -> AgentView.
    Agents,
    /// buyer id -> BuyerView.
    Buyers,
    /// account -> balance (i64).
    Balances,
    /// account, 0, seq, n -> LedgerRecord.
    Ledger,
    /// "all" -> Counters.
    Counters,
    /// minute (i64) -> MinuteStats.
    Series,
    /// seq -> PoisonRecord.
    Poison,
    /// deadline (µs since the epoch), task id -> task id: unfinished tasks with a deadline.
    Deadlines,
    /// token id -> TokenView.
    Tokens,
    /// token hash -> token id: how a request's token is found.
    TokenHashes,
    /// principal, newline, idempotency key -> RequestRecord: keys used by writes.
    Requests,
    /// task id -> ReservationView: task prices reserved from prepaid balances.
    Reservations,
}

impl Table {
    /// Every table, in index order.
    pub const ALL: [Table; 18] = [
        Table::Meta,
        Table::Tasks,
        Table::TasksByTime,
        Table::TasksByBuyer,
        Table::TasksByAgent,
        Table::TasksByStatus,
        Table::Agents,
        Table::Buyers,
        Table::Balances,
        Table::Ledger,
        Table::Counters,
        Table::Series,
        Table::Poison,
        Table::Deadlines,
        Table::Tokens,
        Table::TokenHashes,
        Table::Requests,
        Table::Reservations,
    ];

    /// The table's name in the file.
    pub const fn name(self) -> &'static str {
        match self {
            Table::Meta => "meta",
            Table::Tasks => "tasks",
            Table::TasksByTime => "tasks_by_time",
            Table::TasksByBuyer => "tasks_by_buyer",
            Table::TasksByAgent => "tasks_by_agent",
            Table::TasksByStatus => "tasks_by_status",
            Table::Agents => "agents",
            Table::Buyers => "buyers",
            Table::Balances => "balances",
            Table::Ledger => "ledger",
            Table::Counters => "counters",
            Table::Series => "series",
            Table::Poison => "poison",
            Table::Deadlines => "deadlines",
            Table::Tokens => "tokens",
            Table::TokenHashes => "token_hashes",
            Table::Requests => "requests",
            Table::Reservations => "reservations",
        }
    }
}

impl Table {
    /// A stored record as JSON with its field names (records are stored as MessagePack
    /// arrays, without them); `None` if it does not decode as this table's record.
    pub fn record_json(self, bytes: &[u8]) -> Option<serde_json::Value> {
        use crate::views::*;
        fn json<T: DeserializeOwned + Serialize>(bytes: &[u8]) -> Option<serde_json::Value> {
            let value: T = rmp_serde::from_slice(bytes).ok()?;
            serde_json::to_value(value).ok()
        }
        match self {
            Table::Meta => Some(decode_u64(bytes).into()),
            Table::Tasks => json::<TaskView>(bytes),
            Table::TasksByTime
            | Table::TasksByBuyer
            | Table::TasksByAgent
            | Table::TasksByStatus
            | Table::Deadlines
            | Table::TokenHashes => json::<String>(bytes),
            Table::Agents => json::<AgentView>(bytes),
            Table::Buyers => json::<BuyerView>(bytes),
            Table::Balances => json::<i64>(bytes),
            Table::Ledger => json::<LedgerRecord>(bytes),
            Table::Counters => json::<Counters>(bytes),
            Table::Series => json::<MinuteStats>(bytes),
            Table::Poison => json::<PoisonRecord>(bytes),
            Table::Tokens => json::<TokenView>(bytes),
            Table::Requests => json::<RequestRecord>(bytes),
            Table::Reservations => json::<ReservationView>(bytes),
        }
    }
}

/// Version of the read model's record layout; bump it when a view or key format changes,
/// and every replica rebuilds its read model from the stream on start.
pub const LAYOUT_VERSION: u64 = 10;

/// redb's page cache, in MiB, unless configured: with redb the cache, not the size of the
/// read model, bounds the coordinator's memory; the benchmark measures the effect.
pub const DEFAULT_CACHE_MIB: u64 = 64;

/// The read model's file, in its directory.
pub const FILE_NAME: &str = "read-model.redb";

/// How often a commit also waits for the disk (fsync). Commits in between are atomic and
/// visible at once; a crash loses at most this much of them, and the projector re-applies
/// it from the stream, idempotently, from the checkpoint that survived with it.
const DURABLE_EVERY: Duration = Duration::from_millis(500);

/// Key of the layout version in [`Table::Meta`].
const LAYOUT_VERSION_KEY: &[u8] = b"layout_version";

/// Key of the checkpoint in [`Table::Meta`].
pub const LAST_SEQUENCE: &[u8] = b"last_sequence";

/// A table's definition for redb: byte keys, byte values.
const fn definition(table: Table) -> TableDefinition<'static, &'static [u8], &'static [u8]> {
    TableDefinition::new(table.name())
}

/// The opened read model.
#[derive(Debug, Clone)]
pub struct ReadModel {
    db: Arc<redb::Database>,
    /// Held while a batch is applied, and by [`ReadModel::consistent`]: a reader that
    /// makes several reads sees them all at one checkpoint.
    writing: Arc<Mutex<()>>,
    /// Tokens looked up, emptied by every commit that changes one.
    tokens: Arc<crate::token_cache::TokenCache>,
    /// When a commit last waited for the disk.
    durable_at: Arc<Mutex<Instant>>,
}

impl ReadModel {
    /// Opens (or creates) the read model in `dir`.
    ///
    /// A read model written by another version of the record layout is emptied, so that
    /// the projector rebuilds it from sequence 1 instead of failing on records it cannot
    /// decode: the stream, not the read model, is the system of record.
    pub fn open(dir: &Path) -> Result<Self, ProjectionError> {
        Self::open_with_cache(dir, DEFAULT_CACHE_MIB)
    }

    /// [`ReadModel::open`] with redb's page cache limited to `cache_mib` MiB.
    pub fn open_with_cache(dir: &Path, cache_mib: u64) -> Result<Self, ProjectionError> {
        std::fs::create_dir_all(dir)?;
        remove_sled_files(dir)?;
        let model = Self::new(open_db(&dir.join(FILE_NAME), cache_mib)?);
        let stored = model.layout_version()?;
        if stored != Some(LAYOUT_VERSION) {
            if stored.is_some() {
                tracing::warn!(
                    ?stored,
                    current = LAYOUT_VERSION,
                    "read model layout changed; rebuilding from the stream"
                );
            }
            model.reset()?;
        }
        Ok(model)
    }

    /// Opens an existing read model to inspect it, never emptying it: a directory without
    /// one, or with another record layout, is an error.
    pub fn open_existing(dir: &Path) -> Result<Self, ProjectionError> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Err(ProjectionError::Layout { found: None });
        }
        let model = Self::new(open_db(&path, DEFAULT_CACHE_MIB)?);
        let found = model.layout_version()?;
        if found != Some(LAYOUT_VERSION) {
            return Err(ProjectionError::Layout { found });
        }
        Ok(model)
    }

    /// Whether another process (or handle) has the read model in `dir` open right now.
    pub fn in_use(dir: &Path) -> Result<bool, ProjectionError> {
        let path = dir.join(FILE_NAME);
        if !path.is_file() {
            return Ok(false);
        }
        match redb::Builder::new().create(&path) {
            Ok(_) => Ok(false),
            Err(redb::DatabaseError::DatabaseAlreadyOpen) => Ok(true),
            Err(e) => Err(e.into()),
        }
    }

    fn new(db: redb::Database) -> Self {
        Self {
            db: Arc::new(db),
            writing: Arc::default(),
            tokens: Arc::default(),
            durable_at: Arc::new(Mutex::new(Instant::now())),
        }
    }

    /// The layout version stored, if the file holds one.
    fn layout_version(&self) -> Result<Option<u64>, ProjectionError> {
        let txn = self.db.begin_read()?;
        let meta = match txn.open_table(definition(Table::Meta)) {
            Ok(meta) => meta,
            Err(redb::TableError::TableDoesNotExist(_)) => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        let version = meta.get(LAYOUT_VERSION_KEY)?.map(|v| decode_u64(v.value()));
        Ok(version)
    }

    /// Empties every table (creating those that do not exist) and stamps the layout version.
    fn reset(&self) -> Result<(), ProjectionError> {
        self.write(true, |txn| {
            for table in Table::ALL {
                txn.delete_table(definition(table))?;
                txn.open_table(definition(table))?;
            }
            txn.open_table(definition(Table::Meta))?
                .insert(LAYOUT_VERSION_KEY, &LAYOUT_VERSION.to_be_bytes()[..])?;
            Ok(())
        })
    }

    /// Runs `read` while no batch is being applied, so every read it makes is at the same
    /// checkpoint. Applying waits meanwhile: keep `read` to operator actions.
    pub fn consistent<T>(&self, read: impl FnOnce(&Self) -> T) -> T {
        let _guard = self.lock_writes();
        read(self)
    }

    /// Excludes [`ReadModel::consistent`] readers while a batch is applied.
    pub(crate) fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Reads and decodes one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        let txn = self.db.begin_read()?;
        let records = txn.open_table(definition(table))?;
        let found = records.get(key)?;
        match found {
            Some(bytes) => decode(table, key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }

    /// The records of `table` whose keys are in `range`, in key order (`.rev()` for
    /// descending), read from one snapshot.
    pub fn rows(
        &self,
        table: Table,
        range: impl RangeBounds<Vec<u8>>,
    ) -> Result<Rows, ProjectionError> {
        fn slice(bound: Bound<&Vec<u8>>) -> Bound<&[u8]> {
            bound.map(Vec::as_slice)
        }
        let txn = self.db.begin_read()?;
        let records = txn.open_table(definition(table))?;
        // This range keeps the snapshot alive by itself, after the table and transaction.
        let range =
            records.range::<&[u8]>((slice(range.start_bound()), slice(range.end_bound())))?;
        Ok(Rows { range })
    }

    /// The last stream sequence applied; 0 for an empty read model.
    pub fn last_sequence(&self) -> Result<u64, ProjectionError> {
        let txn = self.db.begin_read()?;
        let meta = txn.open_table(definition(Table::Meta))?;
        let sequence = meta.get(LAST_SEQUENCE)?.map(|v| decode_u64(v.value()));
        Ok(sequence.unwrap_or(0))
    }

    /// The token cache, for [`ReadModel::token_by_hash`].
    pub(crate) fn token_cache(&self) -> &crate::token_cache::TokenCache {
        &self.tokens
    }

    /// Writes `changes` and the checkpoint `sequence` atomically.
    pub fn commit(&self, changes: Changes, sequence: u64) -> Result<(), ProjectionError> {
        self.commit_encoded(&changes.encode()?, sequence)
    }

    /// Writes a transaction's encoded changes with `sequence` as the checkpoint, in one
    /// write transaction.
    pub(crate) fn commit_encoded(
        &self,
        encoded: &Encoded,
        sequence: u64,
    ) -> Result<(), ProjectionError> {
        let tokens_change = encoded.touches(Table::Tokens) || encoded.touches(Table::TokenHashes);
        let checkpoint = sequence.to_be_bytes();
        let durable = self.durable_at().elapsed() >= DURABLE_EVERY;
        let result = self.write(durable, |txn| {
            for (table, records) in Table::ALL.into_iter().zip(&encoded.tables) {
                if records.is_empty() {
                    continue;
                }
                let mut stored = txn.open_table(definition(table))?;
                for (key, value) in records {
                    match value {
                        Some(value) => stored.insert(key.as_slice(), value.as_slice())?,
                        None => stored.remove(key.as_slice())?,
                    };
                }
            }
            txn.open_table(definition(Table::Meta))?
                .insert(LAST_SEQUENCE, &checkpoint[..])?;
            Ok(())
        });
        if tokens_change {
            // Also after a failed commit: what the store holds now is the only truth.
            self.tokens.invalidate();
        }
        result
    }

    /// Runs `work` in one write transaction and commits it; `durable` waits for the disk.
    fn write(
        &self,
        durable: bool,
        work: impl FnOnce(&redb::WriteTransaction) -> Result<(), ProjectionError>,
    ) -> Result<(), ProjectionError> {
        let mut txn = self.db.begin_write()?;
        if durable {
            // A crash then reopens at once instead of walking the whole file.
            txn.set_quick_repair(true);
        } else {
            txn.set_durability(redb::Durability::None)?;
        }
        // An error drops the transaction, which aborts it.
        work(&txn)?;
        txn.commit()?;
        if durable {
            *self.durable_at() = Instant::now();
        }
        Ok(())
    }

    /// When a commit last waited for the disk.
    fn durable_at(&self) -> MutexGuard<'_, Instant> {
        // An `Instant` is always valid: a panic elsewhere cannot leave it inconsistent.
        self.durable_at.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A fingerprint of every table, to compare a rebuilt read model with a live one.
    pub fn digest(&self) -> Result<Vec<TreeDigest>, ProjectionError> {
        let mut out = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            let mut digest = TreeDigest {
                table: table.name(),
                records: 0,
                hash: FNV_OFFSET,
            };
            for row in self.rows(table, ..)? {
                let (key, value) = row?;
                digest.records += 1;
                digest.hash = fnv1a(fnv1a(digest.hash, &key), &value);
            }
            out.push(digest);
        }
        Ok(out)
    }

    /// Rewrites the file without its free pages, and returns whether it moved any. Needs
    /// the only handle: `aicp replay` calls it once the rebuild is applied.
    pub fn compact(self) -> Result<bool, ProjectionError> {
        // Pages that non-durable commits supersede are free again only after the next
        // durable one, so the file grows for them meanwhile, and redb never shrinks it.
        let mut db = Arc::try_unwrap(self.db).map_err(|_| ProjectionError::InUse)?;
        Ok(db.compact()?)
    }

    /// Waits until every commit so far is on disk; otherwise that happens every half second.
    pub fn flush(&self) -> Result<(), ProjectionError> {
        self.write(true, |_| Ok(()))
    }
}

/// Records of one table, from one snapshot: `(key, value)` pairs.
pub struct Rows {
    range: redb::Range<'static, &'static [u8], &'static [u8]>,
}

/// One row as owned bytes.
type Row = Result<(Vec<u8>, Vec<u8>), ProjectionError>;

/// A row as redb's range yields it.
type StoredBytes = redb::AccessGuard<'static, &'static [u8]>;

fn owned(row: Result<(StoredBytes, StoredBytes), redb::StorageError>) -> Row {
    let (key, value) = row?;
    Ok((key.value().to_vec(), value.value().to_vec()))
}

impl Iterator for Rows {
    type Item = Row;

    fn next(&mut self) -> Option<Row> {
        self.range.next().map(owned)
    }
}

impl DoubleEndedIterator for Rows {
    fn next_back(&mut self) -> Option<Row> {
        self.range.next_back().map(owned)
    }
}

/// The fingerprint of one table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    /// The table.
    pub table: &'static str,
    /// How many records it holds.
    pub records: u64,
    /// FNV-1a over every key and value, in key order.
    pub hash: u64,
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

/// FNV-1a: tiny, stable across versions and platforms, enough to spot a difference.
fn fnv1a(mut hash: u64, bytes: &[u8]) -> u64 {
    for byte in bytes {
        hash ^= u64::from(*byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    // Length-prefix-free concatenation is ambiguous; mixing in the length is not.
    hash ^ bytes.len() as u64
}

/// Opens the redb file, waiting a moment for it: another handle in this process (a
/// coordinator shutting down in a test) may still be closing it.
fn open_db(path: &Path, cache_mib: u64) -> Result<redb::Database, ProjectionError> {
    let deadline = Instant::now() + Duration::from_secs(5);
    let cache = usize::try_from(cache_mib.saturating_mul(1 << 20)).unwrap_or(usize::MAX);
    loop {
        match redb::Builder::new().set_cache_size(cache).create(path) {
            Err(redb::DatabaseError::DatabaseAlreadyOpen) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Deletes the files of a sled read model (what versions before layout 8 wrote): the
/// stream rebuilds the read model, and they would only take disk space.
fn remove_sled_files(dir: &Path) -> Result<(), ProjectionError> {
    let (conf, db) = (dir.join("conf"), dir.join("db"));
    if !(conf.is_file() && db.is_file()) {
        return Ok(());
    }
    tracing::warn!(dir = %dir.display(), "removing the sled read model of an older version; rebuilding from the stream");
    let mut old: Vec<PathBuf> = vec![conf, db, dir.join("blobs")];
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path
            .file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("snap."))
        {
            old.push(path);
        }
    }
    for path in old {
        if path.is_dir() {
            std::fs::remove_dir_all(&path)?;
        } else if path.exists() {
            std::fs::remove_file(&path)?;
        }
    }
    Ok(())
}

/// Writes computed for one transaction, readable before they are committed so that each
/// event sees what the ones before it changed.
///
/// Records are kept decoded and encoded once, at commit: a task's view is changed by
/// several events of a transaction, and MessagePack encoding and decoding it each time was
/// a fifth of the projection's time.
#[derive(Default)]
pub struct Changes {
    /// One map per table, indexed like [`Table::ALL`]; sorted by key only at encoding,
    /// because a transaction reads its staged writes far more often than it lists them.
    writes: [FxHashMap<Vec<u8>, Pending>; Table::ALL.len()],
    /// What the store held at this transaction's first read, for all of its reads,
    /// instead of a read transaction and a table opened per read. The write lock keeps
    /// other writers out while it computes; the only commit that can land meanwhile is
    /// the one of `before`, which is read first.
    snapshot: Snapshot,
    /// The transaction before this one, read before the store while it commits.
    before: Option<Arc<Encoded>>,
}

/// A transaction's writes, encoded, in key order within each table: what a commit writes.
pub(crate) struct Encoded {
    /// One list per table, indexed like [`Table::ALL`].
    tables: Vec<Vec<EncodedWrite>>,
}

/// A key and its new value; `None` removes the key.
type EncodedWrite = (Vec<u8>, Option<Vec<u8>>);

impl Encoded {
    /// What this transaction writes under `key`: `Some(None)` when it removes it, `None`
    /// when it leaves the key alone.
    fn get(&self, table: Table, key: &[u8]) -> Option<Option<&[u8]>> {
        let records = &self.tables[table as usize];
        let found = records
            .binary_search_by(|(k, _)| k.as_slice().cmp(key))
            .ok()?;
        Some(records[found].1.as_deref())
    }

    /// Whether it writes to `table`.
    fn touches(&self, table: Table) -> bool {
        !self.tables[table as usize].is_empty()
    }
}

/// One read transaction and the tables read from it, opened on first use.
#[derive(Default)]
struct Snapshot {
    txn: OnceCell<redb::ReadTransaction>,
    tables: [OnceCell<StoredTable>; Table::ALL.len()],
}

/// A table as a read transaction sees it.
type StoredTable = redb::ReadOnlyTable<&'static [u8], &'static [u8]>;

impl Snapshot {
    /// The stored record of `table` under `key`.
    fn get<T: DeserializeOwned>(
        &self,
        model: &ReadModel,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        let txn = match self.txn.get() {
            Some(txn) => txn,
            None => {
                let txn = model.db.begin_read()?;
                self.txn.get_or_init(|| txn)
            }
        };
        let records = match self.tables[table as usize].get() {
            Some(records) => records,
            None => {
                let records = txn.open_table(definition(table))?;
                self.tables[table as usize].get_or_init(|| records)
            }
        };
        match records.get(key)? {
            Some(bytes) => decode(table, key, bytes.value()).map(Some),
            None => Ok(None),
        }
    }
}

/// A staged write.
enum Pending {
    /// A record, encoded at commit.
    Record(Box<dyn Record>),
    /// A record already encoded.
    Encoded(Vec<u8>),
    /// A record already encoded, under a key the store does not hold: removing it again
    /// leaves nothing to write (a task's status index entries, in a transaction that holds
    /// several of its events).
    Created(Vec<u8>),
    /// A removal.
    Remove,
}

/// A value the read model stores.
trait Record: Send {
    /// Its stored bytes.
    fn encode(&self) -> Result<Vec<u8>, ProjectionError>;
    /// For reading it back as its own type.
    fn as_any(&self) -> &dyn Any;
}

impl<T: Serialize + Send + 'static> Record for T {
    fn encode(&self) -> Result<Vec<u8>, ProjectionError> {
        Ok(rmp_serde::to_vec(self)?)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

impl Changes {
    /// Changes to make after `before`, which may still be committing: it is read first.
    pub(crate) fn after(before: Option<Arc<Encoded>>) -> Self {
        Changes {
            before,
            ..Changes::default()
        }
    }

    /// Reads a record: the pending write if there is one, else the stored record.
    pub fn get<T: DeserializeOwned + Clone + 'static>(
        &self,
        model: &ReadModel,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        match self.writes[table as usize].get(key) {
            Some(Pending::Record(record)) => match record.as_any().downcast_ref::<T>() {
                Some(value) => Ok(Some(value.clone())),
                // Staged as another type: read it as the store would.
                None => decode(table, key, &record.encode()?).map(Some),
            },
            Some(Pending::Encoded(bytes) | Pending::Created(bytes)) => {
                decode(table, key, bytes).map(Some)
            }
            Some(Pending::Remove) => Ok(None),
            None => match self.before.as_ref().and_then(|b| b.get(table, key)) {
                Some(Some(bytes)) => decode(table, key, bytes).map(Some),
                Some(None) => Ok(None),
                None => self.snapshot.get(model, table, key),
            },
        }
    }

    /// Whether a write to `table` is staged.
    pub fn touches(&self, table: Table) -> bool {
        !self.writes[table as usize].is_empty()
    }

    /// Stages a write.
    pub fn put<T: Serialize + Send + 'static>(&mut self, table: Table, key: Vec<u8>, value: T) {
        self.writes[table as usize].insert(key, Pending::Record(Box::new(value)));
    }

    /// Stages a record already encoded: for repairs and for tests that break a record.
    pub fn put_bytes(&mut self, table: Table, key: Vec<u8>, bytes: Vec<u8>) {
        self.writes[table as usize].insert(key, Pending::Encoded(bytes));
    }

    /// Stages an index entry (its value is a task id).
    pub fn put_id(&mut self, table: Table, key: Vec<u8>, id: &str) -> Result<(), ProjectionError> {
        let bytes = rmp_serde::to_vec(id)?;
        self.writes[table as usize].insert(key, Pending::Encoded(bytes));
        Ok(())
    }

    /// Stages a new index entry (its value is a task id) under a key the caller knows the
    /// store does not hold.
    pub fn put_new_id(
        &mut self,
        table: Table,
        key: Vec<u8>,
        id: &str,
    ) -> Result<(), ProjectionError> {
        let bytes = rmp_serde::to_vec(id)?;
        let writes = &mut self.writes[table as usize];
        // A removal staged earlier in this transaction means the store may hold the key.
        let pending = match writes.get(&key) {
            None | Some(Pending::Created(_)) => Pending::Created(bytes),
            Some(_) => Pending::Encoded(bytes),
        };
        writes.insert(key, pending);
        Ok(())
    }

    /// Stages a removal.
    pub fn remove(&mut self, table: Table, key: Vec<u8>) {
        let writes = &mut self.writes[table as usize];
        if let Some(Pending::Created(_)) = writes.get(&key) {
            writes.remove(&key);
        } else {
            writes.insert(key, Pending::Remove);
        }
    }

    /// Every staged write encoded, by table.
    pub(crate) fn encode(self) -> Result<Encoded, ProjectionError> {
        let mut tables = Vec::with_capacity(Table::ALL.len());
        // The snapshot is released here, before the write transaction begins.
        let Changes {
            writes,
            snapshot,
            before,
        } = self;
        drop((snapshot, before));
        for writes in writes {
            let mut encoded = Vec::with_capacity(writes.len());
            for (key, pending) in writes {
                let value = match pending {
                    Pending::Record(record) => Some(record.encode()?),
                    Pending::Encoded(bytes) | Pending::Created(bytes) => Some(bytes),
                    Pending::Remove => None,
                };
                encoded.push((key, value));
            }
            // In key order: `Encoded::get` searches it, and redb inserts in order cheaper.
            encoded.sort_unstable_by(|(a, _), (b, _)| a.cmp(b));
            tables.push(encoded);
        }
        Ok(Encoded { tables })
    }
}

/// Decodes a stored record of `table`.
pub(crate) fn decode<T: DeserializeOwned>(
    table: Table,
    key: &[u8],
    bytes: &[u8],
) -> Result<T, ProjectionError> {
    rmp_serde::from_slice(bytes).map_err(|source| ProjectionError::Record {
        table: table.name(),
        key: String::from_utf8_lossy(key).into_owned(),
        source,
    })
}

/// A big-endian u64 key or value; anything but 8 bytes reads as 0.
pub fn decode_u64(bytes: &[u8]) -> u64 {
    <[u8; 8]>::try_from(bytes)
        .map(u64::from_be_bytes)
        .unwrap_or(0)
}

/// `prefix`, a 0 byte, then `sequence` big-endian: index keys that sort by sequence within
/// a prefix. Ids never contain a 0 byte, so prefixes cannot run into each other.
pub fn index_key(prefix: &str, sequence: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 9);
    key.extend_from_slice(prefix.as_bytes());
    key.push(0);
    key.extend_from_slice(&sequence.to_be_bytes());
    key
}

/// The stream sequence in a [`Table::Ledger`] key (account, 0, sequence, side); `None` for
/// a key of another shape.
pub fn ledger_key_sequence(key: &[u8]) -> Option<u64> {
    let end = key.len().checked_sub(1)?;
    let start = end.checked_sub(8)?;
    <[u8; 8]>::try_from(&key[start..end])
        .ok()
        .map(u64::from_be_bytes)
}

/// The start of every index key under `prefix`.
pub fn index_prefix(prefix: &str) -> Vec<u8> {
    let mut key = prefix.as_bytes().to_vec();
    key.push(0);
    key
}

/// Key of a task in [`Table::Deadlines`]: its deadline, then its id, so a range scan up to
/// "now" finds every task that is due.
pub fn deadline_key(deadline: chrono::DateTime<chrono::Utc>, task_id: &str) -> Vec<u8> {
    let micros = deadline.timestamp_micros().max(0) as u64;
    let mut key = micros.to_be_bytes().to_vec();
    key.extend_from_slice(task_id.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ledger_key_gives_back_its_sequence() {
        let mut key = index_key("agent:agent-1", 4_242);
        key.push(1);
        assert_eq!(ledger_key_sequence(&key), Some(4_242));
        assert_eq!(ledger_key_sequence(b"short"), None);
        assert_eq!(ledger_key_sequence(b""), None);
    }
}
