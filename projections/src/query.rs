//! Reading the read model: single records, and lists paged newest first.

use aicp_events::domain::access::Principal;
use aicp_events::domain::ledger::{Account, Escrow};
use aicp_events::domain::task::TaskStatus;
use aicp_events::id::{AgentId, BuyerId, TaskId, TokenId};
use aicp_events::token::TokenHash;
use serde::de::DeserializeOwned;

use crate::apply::COUNTERS;
use crate::tables::{decode, index_prefix, ledger_key_sequence, ProjectionError, ReadModel, Table};
use crate::views::{
    AgentView, BuyerView, Counters, LedgerEntry, LedgerRecord, MinuteStats, Page, PoisonRecord,
    RequestRecord, ReservationState, ReservationView, TaskView, TokenView,
};

/// Which tasks a list shows; every filter set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TaskFilter {
    /// Only this buyer's tasks.
    pub buyer: Option<BuyerId>,
    /// Only tasks assigned to this agent.
    pub agent: Option<AgentId>,
    /// Only tasks in this status.
    pub status: Option<TaskStatus>,
}

/// Where a page starts and how long it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageRequest {
    /// The `next_cursor` of the previous page, or `None` for the first.
    pub cursor: Option<String>,
    /// At most this many items.
    pub limit: usize,
}

impl PageRequest {
    /// The first page of `limit` items.
    pub fn first(limit: usize) -> Self {
        Self {
            cursor: None,
            limit,
        }
    }
}

/// A cursor that is not one this list handed out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid cursor {0:?}: pass the next_cursor of the previous page")]
pub struct InvalidCursor(pub String);

/// A failed query: bad input, or the storage.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    /// The cursor is malformed.
    #[error(transparent)]
    Cursor(#[from] InvalidCursor),
    /// The read model could not be read.
    #[error(transparent)]
    Storage(#[from] ProjectionError),
}

/// A sequence cursor: lists ordered by stream sequence page on the sequence of the last
/// item shown; the next page holds items strictly older.
fn sequence_cursor(page: &PageRequest) -> Result<u64, InvalidCursor> {
    match &page.cursor {
        None => Ok(u64::MAX),
        Some(c) => c.parse().map_err(|_| InvalidCursor(c.clone())),
    }
}

/// Reads the records named by an index (`load` gets each key and value), newest first,
/// keeping those `keep` accepts.
fn newest_first<T: DeserializeOwned>(
    model: &ReadModel,
    index: Table,
    prefix: &[u8],
    page: &PageRequest,
    load: impl Fn(&[u8], &[u8]) -> Result<Option<T>, ProjectionError>,
    keep: impl Fn(&T) -> bool,
    sequence_of: impl Fn(&T) -> u64,
) -> Result<Page<T>, QueryError> {
    let before = sequence_cursor(page)?;
    let mut upper = prefix.to_vec();
    upper.extend_from_slice(&before.to_be_bytes());
    let mut items = Vec::new();
    let mut more = false;
    for row in model.rows(index, prefix.to_vec()..upper)?.rev() {
        let (key, value) = row?;
        let Some(item) = load(&key, &value)? else {
            continue;
        };
        if !keep(&item) {
            continue;
        }
        if items.len() == page.limit {
            more = true;
            break;
        }
        items.push(item);
    }
    let next_cursor = match (more, items.last()) {
        (true, Some(last)) => Some(sequence_of(last).to_string()),
        _ => None,
    };
    Ok(Page { items, next_cursor })
}

/// Reads records keyed by id, in id order, after the cursor id.
fn by_id<T: DeserializeOwned>(
    model: &ReadModel,
    table: Table,
    page: &PageRequest,
) -> Result<Page<T>, QueryError> {
    let start = match &page.cursor {
        // Strictly after the cursor: the smallest key greater than it.
        Some(c) => {
            let mut key = c.as_bytes().to_vec();
            key.push(0);
            key
        }
        None => Vec::new(),
    };
    let mut items = Vec::new();
    let mut last_key = None;
    let mut more = false;
    for row in model.rows(table, start..)? {
        let (key, value) = row?;
        if items.len() == page.limit {
            more = true;
            break;
        }
        items.push(decode(table, &key, &value)?);
        last_key = Some(String::from_utf8_lossy(&key).into_owned());
    }
    Ok(Page {
        items,
        next_cursor: if more { last_key } else { None },
    })
}

impl ReadModel {
    /// One task.
    pub fn task(&self, id: &TaskId) -> Result<Option<TaskView>, ProjectionError> {
        self.get(Table::Tasks, id.as_str().as_bytes())
    }

    /// Tasks matching `filter`, newest first.
    pub fn tasks(
        &self,
        filter: &TaskFilter,
        page: &PageRequest,
    ) -> Result<Page<TaskView>, QueryError> {
        // Walk the most selective index; check the other filters on each task.
        let (index, prefix) = if let Some(buyer) = &filter.buyer {
            (Table::TasksByBuyer, index_prefix(buyer.as_str()))
        } else if let Some(agent) = &filter.agent {
            (Table::TasksByAgent, index_prefix(agent.as_str()))
        } else if let Some(status) = filter.status {
            (Table::TasksByStatus, index_prefix(status.as_str()))
        } else {
            (Table::TasksByTime, Vec::new())
        };
        newest_first(
            self,
            index,
            &prefix,
            page,
            |_, id| self.get(Table::Tasks, &decode_id(id)?),
            |view: &TaskView| {
                filter
                    .buyer
                    .as_ref()
                    .is_none_or(|b| *b == view.task.buyer_id)
                    && filter
                        .agent
                        .as_ref()
                        .is_none_or(|a| Some(a) == view.task.agent_id.as_ref())
                    && filter.status.is_none_or(|s| s == view.task.status)
            },
            |view| view.submitted_seq,
        )
    }

    /// One agent.
    pub fn agent(&self, id: &AgentId) -> Result<Option<AgentView>, ProjectionError> {
        self.get(Table::Agents, id.as_str().as_bytes())
    }

    /// What `principal`'s write with idempotency key `key` stored, if it made one.
    pub fn request(
        &self,
        principal: &Principal,
        key: &str,
    ) -> Result<Option<RequestRecord>, ProjectionError> {
        self.get(Table::Requests, &crate::apply::request_key(principal, key))
    }

    /// One token by id.
    pub fn token(&self, id: &TokenId) -> Result<Option<TokenView>, ProjectionError> {
        self.get(Table::Tokens, id.as_str().as_bytes())
    }

    /// The token whose secret has this hash, revoked or not; `None` if no token has it.
    /// From memory once looked up (see `token_cache`): every request asks.
    pub fn token_by_hash(&self, hash: &TokenHash) -> Result<Option<TokenView>, ProjectionError> {
        let generation = match self.token_cache().get(hash) {
            Ok(view) => return Ok(Some(view)),
            Err(generation) => generation,
        };
        let Some(id) = self.get::<String>(Table::TokenHashes, hash.as_str().as_bytes())? else {
            return Ok(None);
        };
        let view: Option<TokenView> = self.get(Table::Tokens, id.as_bytes())?;
        if let Some(view) = &view {
            self.token_cache().fill(hash, view, generation);
        }
        Ok(view)
    }

    /// Tokens in id order.
    pub fn tokens(&self, page: &PageRequest) -> Result<Page<TokenView>, QueryError> {
        by_id(self, Table::Tokens, page)
    }

    /// Agents in id order.
    pub fn agents(&self, page: &PageRequest) -> Result<Page<AgentView>, QueryError> {
        by_id(self, Table::Agents, page)
    }

    /// One buyer; `None` if it never submitted a task.
    pub fn buyer(&self, id: &BuyerId) -> Result<Option<BuyerView>, ProjectionError> {
        self.get(Table::Buyers, id.as_str().as_bytes())
    }

    /// Buyers in id order.
    pub fn buyers(&self, page: &PageRequest) -> Result<Page<BuyerView>, QueryError> {
        by_id(self, Table::Buyers, page)
    }

    /// A task's reservation from its buyer's prepaid balance, if it had one.
    pub fn reservation(&self, task: &TaskId) -> Result<Option<ReservationView>, ProjectionError> {
        self.get(Table::Reservations, task.as_str().as_bytes())
    }

    /// Reservations still waiting for their task; none is read unless a buyer shows some
    /// pending, which is the rare case.
    pub fn pending_reservations(&self) -> Result<Vec<ReservationView>, QueryError> {
        let mut any = false;
        for row in self.rows(Table::Buyers, ..)? {
            let (key, bytes) = row?;
            let buyer: BuyerView = decode(Table::Buyers, &key, &bytes)?;
            if buyer.pending_sats > 0 {
                any = true;
                break;
            }
        }
        let mut out = Vec::new();
        if !any {
            return Ok(out);
        }
        for row in self.rows(Table::Reservations, ..)? {
            let (key, bytes) = row?;
            let reservation: ReservationView = decode(Table::Reservations, &key, &bytes)?;
            if reservation.state == ReservationState::Pending {
                out.push(reservation);
            }
        }
        Ok(out)
    }

    /// An account's balance in satoshis (buyers negative: what they paid).
    pub fn balance(&self, account: &Account) -> Result<i64, ProjectionError> {
        Ok(self
            .get(Table::Balances, account.to_string().as_bytes())?
            .unwrap_or(0))
    }

    /// Every account with its balance.
    pub fn balances(&self) -> Result<Vec<(String, i64)>, QueryError> {
        let mut out = Vec::new();
        for row in self.rows(Table::Balances, ..)? {
            let (key, bytes) = row?;
            let balance: i64 = decode(Table::Balances, &key, &bytes)?;
            out.push((String::from_utf8_lossy(&key).into_owned(), balance));
        }
        Ok(out)
    }

    /// A task's escrow, as its view records it.
    pub fn escrow(&self, task: &TaskId) -> Result<Option<Escrow>, ProjectionError> {
        let view: Option<TaskView> = self.get(Table::Tasks, task.as_str().as_bytes())?;
        Ok(view.and_then(|v| v.escrow()))
    }

    /// An account's ledger entries, newest first.
    pub fn ledger(
        &self,
        account: &Account,
        page: &PageRequest,
    ) -> Result<Page<LedgerEntry>, QueryError> {
        newest_first(
            self,
            Table::Ledger,
            &index_prefix(&account.to_string()),
            page,
            |key, bytes| {
                let record: LedgerRecord = decode(Table::Ledger, key, bytes)?;
                // A key without a sequence is not one the projection wrote: skip it.
                Ok(
                    ledger_key_sequence(key)
                        .map(|sequence| record.entry(account.clone(), sequence)),
                )
            },
            |_: &LedgerEntry| true,
            |entry| entry.sequence,
        )
    }

    /// The dashboard counters.
    pub fn counters(&self) -> Result<Counters, ProjectionError> {
        Ok(self.get(Table::Counters, COUNTERS)?.unwrap_or_default())
    }

    /// Per-minute figures from `from` (seconds since the epoch) on, oldest first.
    pub fn series(&self, from: i64) -> Result<Vec<MinuteStats>, QueryError> {
        let start = (from.max(0) as u64).to_be_bytes();
        let mut out = Vec::new();
        for row in self.rows(Table::Series, start.to_vec()..)? {
            let (key, bytes) = row?;
            out.push(decode(Table::Series, &key, &bytes)?);
        }
        Ok(out)
    }

    /// Unfinished tasks whose deadline is at or before `now`, soonest first.
    pub fn due(&self, now: chrono::DateTime<chrono::Utc>) -> Result<Vec<TaskId>, QueryError> {
        let end = crate::tables::deadline_key(now, "\u{7f}");
        let mut due = Vec::new();
        for row in self.rows(Table::Deadlines, ..end)? {
            let (_, value) = row?;
            let id: String = decode(Table::Deadlines, b"", &value)?;
            if let Ok(id) = id.parse() {
                due.push(id);
            }
        }
        Ok(due)
    }

    /// Poison messages, newest first.
    pub fn poison(&self, page: &PageRequest) -> Result<Page<PoisonRecord>, QueryError> {
        newest_first(
            self,
            Table::Poison,
            &[],
            page,
            |key, bytes| decode(Table::Poison, key, bytes).map(Some),
            |_: &PoisonRecord| true,
            |record| record.sequence,
        )
    }
}

/// Index values hold the task id as a MessagePack string.
fn decode_id(bytes: &[u8]) -> Result<Vec<u8>, ProjectionError> {
    let id: String = decode(Table::TasksByTime, b"", bytes)?;
    Ok(id.into_bytes())
}
