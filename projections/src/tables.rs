//! The sled trees of the read model, and the change set one stream message makes to them.
//!
//! One writer (the projector) applies messages in stream order. It reads current records,
//! computes the new ones into a [`Changes`] overlay, and commits them together with the
//! checkpoint (the message's stream sequence) in one sled transaction over every tree. So
//! a crash leaves either the whole message applied with its checkpoint, or neither.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};

use serde::{de::DeserializeOwned, Serialize};
use sled::transaction::{ConflictableTransactionError, TransactionError};
use sled::Transactional;

/// What can go wrong with the read model.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// sled failed (disk full, corrupt file, another process holds the directory).
    #[error("read model storage: {0}")]
    Storage(#[from] sled::Error),
    /// A stored record could not be decoded: written by other code, or corrupt.
    #[error("read model record {table}/{key}: {source}")]
    Record {
        /// The tree.
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
}

/// The trees of the read model. The discriminant is the tree's index in [`ReadModel::trees`].
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
}

impl Table {
    /// Every table, in index order.
    pub const ALL: [Table; 16] = [
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
    ];

    /// The sled tree's name.
    pub fn name(self) -> &'static str {
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
        }
    }
}

/// Version of the read model's record layout; bump it when a view or key format changes,
/// and every replica rebuilds its read model from the stream on start.
pub const LAYOUT_VERSION: u64 = 7;

/// sled's page cache, in MiB, unless configured: sled's own default (1 GiB) let a
/// coordinator grow past 200 MiB after 80,000 tasks; the benchmark measures the effect.
pub const DEFAULT_CACHE_MIB: u64 = 64;

/// Key of the layout version in [`Table::Meta`].
const LAYOUT_VERSION_KEY: &[u8] = b"layout_version";

/// Key of the checkpoint in [`Table::Meta`].
pub const LAST_SEQUENCE: &[u8] = b"last_sequence";

/// The opened sled database and its trees.
#[derive(Debug, Clone)]
pub struct ReadModel {
    db: sled::Db,
    /// Shared, so that cloning the read model (every handle to it) allocates nothing.
    trees: Arc<[sled::Tree]>,
    /// Held while a message is applied, and by [`ReadModel::consistent`]: a reader that
    /// scans several trees sees them all at one checkpoint.
    writing: Arc<Mutex<()>>,
    /// Tokens looked up, emptied by every commit that changes one.
    tokens: Arc<crate::token_cache::TokenCache>,
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

    /// [`ReadModel::open`] with sled's page cache limited to `cache_mib` MiB.
    pub fn open_with_cache(dir: &Path, cache_mib: u64) -> Result<Self, ProjectionError> {
        let db = open_db(dir, cache_mib)?;
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Arc<[_]>, _>>()?;
        let model = Self {
            db,
            trees,
            writing: Arc::default(),
            tokens: Arc::default(),
        };
        let meta = model.tree(Table::Meta);
        let stored = meta.get(LAYOUT_VERSION_KEY)?.map(|v| decode_u64(&v));
        if stored != Some(LAYOUT_VERSION) {
            if stored.is_some() || model.last_sequence()? > 0 {
                tracing::warn!(
                    ?stored,
                    current = LAYOUT_VERSION,
                    "read model layout changed; rebuilding from the stream"
                );
            }
            for tree in model.trees.iter() {
                tree.clear()?;
            }
            meta.insert(LAYOUT_VERSION_KEY, &LAYOUT_VERSION.to_be_bytes())?;
            model.db.flush()?;
        }
        Ok(model)
    }

    /// Opens an existing read model to inspect it, never emptying it: a directory without
    /// one, or with another record layout, is an error.
    pub fn open_existing(dir: &Path) -> Result<Self, ProjectionError> {
        if !dir.join("db").exists() {
            return Err(ProjectionError::Layout { found: None });
        }
        let db = open_db(dir, DEFAULT_CACHE_MIB)?;
        let found = db
            .open_tree(Table::Meta.name())?
            .get(LAYOUT_VERSION_KEY)?
            .map(|v| decode_u64(&v));
        if found != Some(LAYOUT_VERSION) {
            return Err(ProjectionError::Layout { found });
        }
        let trees = Table::ALL
            .iter()
            .map(|t| db.open_tree(t.name()))
            .collect::<Result<Arc<[_]>, _>>()?;
        Ok(Self {
            db,
            trees,
            writing: Arc::default(),
            tokens: Arc::default(),
        })
    }

    /// Runs `read` while no message is being applied, so every tree it reads is at the
    /// same checkpoint. Applying waits meanwhile: keep `read` to operator actions.
    pub fn consistent<T>(&self, read: impl FnOnce(&Self) -> T) -> T {
        let _guard = self.lock_writes();
        read(self)
    }

    /// Excludes [`ReadModel::consistent`] readers while a message is applied.
    pub(crate) fn lock_writes(&self) -> MutexGuard<'_, ()> {
        // The guarded data is `()`: a panic elsewhere cannot leave it inconsistent.
        self.writing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// One tree.
    pub fn tree(&self, table: Table) -> &sled::Tree {
        &self.trees[table as usize]
    }

    /// Reads and decodes one record.
    pub fn get<T: DeserializeOwned>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        match self.tree(table).get(key)? {
            Some(bytes) => decode(table, key, &bytes).map(Some),
            None => Ok(None),
        }
    }

    /// The last stream sequence applied; 0 for an empty read model.
    pub fn last_sequence(&self) -> Result<u64, ProjectionError> {
        Ok(self
            .tree(Table::Meta)
            .get(LAST_SEQUENCE)?
            .map(|v| decode_u64(&v))
            .unwrap_or(0))
    }

    /// The token cache, for [`ReadModel::token_by_hash`].
    pub(crate) fn token_cache(&self) -> &crate::token_cache::TokenCache {
        &self.tokens
    }

    /// Writes `changes` and the checkpoint `sequence` atomically.
    pub fn commit(&self, changes: Changes, sequence: u64) -> Result<(), ProjectionError> {
        let tokens_change = changes.touches(Table::Tokens) || changes.touches(Table::TokenHashes);
        let trees: Vec<&sled::Tree> = self.trees.iter().collect();
        let checkpoint = sequence.to_be_bytes();
        let writes = changes.encode()?;
        // The closure may run more than once, so it only writes what was computed before.
        let result: Result<(), TransactionError<()>> = trees.as_slice().transaction(|views| {
            for (table, records) in &writes {
                let view = &views[*table as usize];
                for (key, value) in records {
                    match value {
                        Some(value) => view.insert(key.as_slice(), value.as_slice())?,
                        None => view.remove(key.as_slice())?,
                    };
                }
            }
            views[Table::Meta as usize].insert(LAST_SEQUENCE, &checkpoint[..])?;
            Ok::<(), ConflictableTransactionError<()>>(())
        });
        if tokens_change {
            // Also after a failed commit: what sled holds now is the only truth.
            self.tokens.invalidate();
        }
        match result {
            Ok(()) => Ok(()),
            Err(TransactionError::Storage(e)) => Err(ProjectionError::Storage(e)),
            // We never abort the transaction ourselves.
            Err(TransactionError::Abort(())) => Ok(()),
        }
    }

    /// A fingerprint of every tree, to compare a rebuilt read model with a live one.
    pub fn digest(&self) -> Result<Vec<TreeDigest>, ProjectionError> {
        let mut out = Vec::with_capacity(Table::ALL.len());
        for table in Table::ALL {
            let mut digest = TreeDigest {
                table: table.name(),
                records: 0,
                hash: FNV_OFFSET,
            };
            for row in self.tree(table).iter() {
                let (key, value) = row?;
                digest.records += 1;
                digest.hash = fnv1a(fnv1a(digest.hash, &key), &value);
            }
            out.push(digest);
        }
        Ok(out)
    }

    /// Flushes to disk; sled otherwise flushes in the background every half second.
    pub fn flush(&self) -> Result<(), ProjectionError> {
        self.db.flush()?;
        Ok(())
    }
}

/// The fingerprint of one tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeDigest {
    /// The tree.
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

/// Opens sled, waiting a moment for the lock: a database dropped in this process releases
/// it from a background thread, shortly after.
fn open_db(dir: &Path, cache_mib: u64) -> Result<sled::Db, ProjectionError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    loop {
        match sled::Config::new()
            .path(dir)
            .cache_capacity(cache_mib.saturating_mul(1 << 20))
            .open()
        {
            // sled reports the lock as a plain I/O error with this message.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock")
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

/// Writes computed for one transaction, readable before they are committed so that each
/// event sees what the ones before it changed.
///
/// Records are kept decoded and encoded once, at commit: a task's view is changed by
/// several events of a transaction, and MessagePack encoding and decoding it each time was
/// a fifth of the projection's time.
#[derive(Default)]
pub struct Changes {
    /// One map per table, indexed like [`Table::ALL`].
    writes: [BTreeMap<Vec<u8>, Pending>; Table::ALL.len()],
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
            None => model.get(table, key),
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

    /// Every staged write encoded, by table: `None` removes the key.
    #[allow(clippy::type_complexity)]
    fn encode(self) -> Result<Vec<(Table, Vec<(Vec<u8>, Option<Vec<u8>>)>)>, ProjectionError> {
        let mut out = Vec::with_capacity(Table::ALL.len());
        for (table, writes) in Table::ALL.into_iter().zip(self.writes) {
            let mut encoded = Vec::with_capacity(writes.len());
            for (key, pending) in writes {
                let value = match pending {
                    Pending::Record(record) => Some(record.encode()?),
                    Pending::Encoded(bytes) | Pending::Created(bytes) => Some(bytes),
                    Pending::Remove => None,
                };
                encoded.push((key, value));
            }
            out.push((table, encoded));
        }
        Ok(out)
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
