//! How each event changes the read model.
//!
//! The domain rules decide what is legal (the task state machine, the ledger); this module
//! only records the result. An event the rules refuse is counted as rejected and changes
//! nothing else: with every writer appending under an expected sequence that should never
//! happen, so a rejection means a bug or a forged event, and is logged loudly.

use std::sync::Arc;

use aicp_events::domain::access::Principal;
use aicp_events::domain::budget::{Budget, Limits};
use aicp_events::domain::ledger::{Account, Escrow, EscrowState, Ledger, Transfer};
use aicp_events::domain::reputation::Reputation;
use aicp_events::domain::task::TaskStatus;
use aicp_events::event::Event;
use aicp_events::id::{AgentId, BuyerId, TaskId};
use aicp_events::store::{PoisonMessage, StoredBatch};
use aicp_events::{Aggregate, Envelope};
use chrono::{DateTime, Utc};

use crate::tables::{deadline_key, index_key, Changes, Encoded, ProjectionError, ReadModel, Table};
use crate::views::{
    AgentView, BuyerView, Counters, LedgerRecord, MinuteStats, PoisonRecord, RequestRecord,
    ReservationState, ReservationView, TaskView, TokenView,
};

/// Key of the counters record in [`Table::Counters`].
pub const COUNTERS: &[u8] = b"all";

/// What applying one stream message did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// The message was new; this many of its events were applied and this many rejected.
    Events {
        /// Events applied.
        applied: usize,
        /// Events refused by the domain rules.
        rejected: usize,
    },
    /// The message was at or below the checkpoint: applied before, nothing changed.
    AlreadyApplied,
}

/// Why the rules refused an event.
struct Rejected(String);

impl<E: std::fmt::Display> From<E> for Rejected {
    fn from(e: E) -> Self {
        Rejected(e.to_string())
    }
}

/// One stream message as the projection takes it.
#[derive(Debug)]
pub enum Message {
    /// A decoded batch of events.
    Batch(StoredBatch),
    /// A message that is not a valid batch.
    Poison(Box<PoisonMessage>),
}

impl Message {
    /// Its stream sequence.
    pub fn sequence(&self) -> u64 {
        match self {
            Message::Batch(batch) => batch.sequence,
            Message::Poison(poison) => poison.sequence,
        }
    }
}

impl ReadModel {
    /// Applies one decoded stream message, atomically with its checkpoint.
    pub fn apply(&self, batch: &StoredBatch) -> Result<Applied, ProjectionError> {
        let _writing = self.lock_writes();
        if batch.sequence <= self.last_sequence()? {
            return Ok(Applied::AlreadyApplied);
        }
        let mut changes = Changes::default();
        let applied = apply_batch(self, &mut changes, batch)?;
        self.commit(changes, batch.sequence)?;
        Ok(applied)
    }

    /// Keeps an undecodable message aside and moves the checkpoint past it.
    pub fn apply_poison(&self, poison: &PoisonMessage) -> Result<Applied, ProjectionError> {
        let _writing = self.lock_writes();
        if poison.sequence <= self.last_sequence()? {
            return Ok(Applied::AlreadyApplied);
        }
        let mut changes = Changes::default();
        let applied = apply_poison(self, &mut changes, poison)?;
        self.commit(changes, poison.sequence)?;
        Ok(applied)
    }

    /// Applies consecutive messages in one transaction, with the last one's sequence as
    /// the checkpoint: all of them or none. The same result as applying them one by one
    /// (each message reads what the ones before it wrote), for one commit instead of many.
    pub fn apply_all(&self, messages: &[Message]) -> Result<Vec<Applied>, ProjectionError> {
        let _writing = self.lock_writes();
        let mut last = self.last_sequence()?;
        let checkpoint = last;
        let mut changes = Changes::default();
        let out = stage(self, &mut changes, messages, &mut last)?;
        if last > checkpoint {
            self.commit(changes, last)?;
        }
        Ok(out)
    }
}

impl ReadModel {
    /// Applies batches of consecutive messages, each in one transaction with its last
    /// sequence as the checkpoint, computing each batch while the one before it commits:
    /// `aicp replay`'s path, on a read model with no other writer. A batch reads what the
    /// batch before it wrote before it reads the store, so the result is the same as
    /// [`ReadModel::apply_all`] on each batch in turn. `applied` hears each batch's last
    /// sequence and size once it is computed. Returns the checkpoint.
    pub fn apply_pipelined(
        &self,
        batches: impl IntoIterator<Item = Vec<Message>>,
        mut applied: impl FnMut(u64, usize),
    ) -> Result<u64, ProjectionError> {
        let _writing = self.lock_writes();
        let mut last = self.last_sequence()?;
        std::thread::scope(|scope| {
            // A rendezvous: a send returns once the writer has finished the batch before,
            // so only the batch being written can be missing from the store.
            let (to_writer, batches_to_write) =
                std::sync::mpsc::sync_channel::<(Arc<Encoded>, u64)>(0);
            let writer = scope.spawn(move || {
                for (encoded, sequence) in batches_to_write {
                    self.commit_encoded(&encoded, sequence)?;
                }
                Ok::<(), ProjectionError>(())
            });
            let mut computed = Ok(());
            let mut before: Option<Arc<Encoded>> = None;
            for batch in batches {
                let start = last;
                let mut changes = Changes::after(before.clone());
                let encoded = stage(self, &mut changes, &batch, &mut last)
                    .and_then(|_| changes.encode().map(Arc::new));
                match encoded {
                    Ok(encoded) if last > start => {
                        if to_writer.send((encoded.clone(), last)).is_err() {
                            break; // The writer failed: its error is the one to report.
                        }
                        before = Some(encoded);
                    }
                    Ok(_) => {}
                    Err(e) => {
                        computed = Err(e);
                        break;
                    }
                }
                applied(last, batch.len());
            }
            drop(to_writer);
            let written = writer
                .join()
                .unwrap_or_else(|_| Err(ProjectionError::Task("the writer panicked".into())));
            written.and(computed)
        })?;
        Ok(last)
    }
}

/// Stages the changes of the messages after `last` into `changes`, moving `last` to the
/// newest one applied; a message at or below it was applied before and is skipped.
fn stage(
    model: &ReadModel,
    changes: &mut Changes,
    messages: &[Message],
    last: &mut u64,
) -> Result<Vec<Applied>, ProjectionError> {
    let mut out = Vec::with_capacity(messages.len());
    for message in messages {
        if message.sequence() <= *last {
            out.push(Applied::AlreadyApplied);
            continue;
        }
        out.push(match message {
            Message::Batch(batch) => apply_batch(model, changes, batch)?,
            Message::Poison(poison) => apply_poison(model, changes, poison)?,
        });
        *last = message.sequence();
    }
    Ok(out)
}

/// The changes one message makes, added to `changes` (which earlier messages of the same
/// transaction may have written to: every read goes through it).
fn apply_batch(
    model: &ReadModel,
    changes: &mut Changes,
    batch: &StoredBatch,
) -> Result<Applied, ProjectionError> {
    let mut counters: Counters = changes
        .get(model, Table::Counters, COUNTERS)?
        .unwrap_or_default();
    let (mut applied, mut rejected) = (0, 0);
    // A message is on the subject of its first event's aggregate (the store checks it).
    let payment_subject = matches!(
        batch.events.first().map(|e| e.event.aggregate()),
        Some(Aggregate::Payment(_))
    );
    for envelope in &batch.events {
        let mut writer = Writer {
            model,
            changes: &mut *changes,
            counters: &mut counters,
            sequence: batch.sequence,
            payment_subject,
            at: envelope.occurred_at,
        };
        match writer.apply(envelope)? {
            Ok(()) => applied += 1,
            Err(Rejected(reason)) => {
                rejected += 1;
                tracing::warn!(
                    sequence = batch.sequence,
                    subject = %batch.subject,
                    event = envelope.event.event_type(),
                    %reason,
                    "event rejected by the domain rules"
                );
            }
        }
    }
    if let Some(first) = batch.events.first() {
        touch(model, changes, &first.event.aggregate(), batch.sequence)?;
        record_request(model, changes, first, batch)?;
    }
    counters.events_applied = counters.events_applied.saturating_add(applied as u64);
    counters.events_rejected = counters.events_rejected.saturating_add(rejected as u64);
    changes.put(Table::Counters, COUNTERS.to_vec(), counters);
    Ok(Applied::Events { applied, rejected })
}

/// Keeps the idempotency key a message was written with, and the aggregate as the message
/// left it: the answer a retry with the key gets. The first message with a key keeps it;
/// a later one (which only a replica blind to the first for longer than the duplicate
/// window could write) is noted on the record, for `aicp verify` to report.
fn record_request(
    model: &ReadModel,
    changes: &mut Changes,
    first: &Envelope,
    batch: &StoredBatch,
) -> Result<(), ProjectionError> {
    let (Some(request), Some(principal)) = (&first.request, &first.principal) else {
        return Ok(());
    };
    let key = request_key(principal, &request.key);
    if let Some(mut first) = changes.get::<RequestRecord>(model, Table::Requests, &key)? {
        if first.sequence != batch.sequence && !first.reused_by.contains(&batch.sequence) {
            first.reused_by.push(batch.sequence);
            changes.put(Table::Requests, key, first);
        }
        return Ok(());
    }
    let (mut task, mut agent, mut token, mut buyer) = (None, None, None, None);
    match first.event.aggregate() {
        Aggregate::Task(id) | Aggregate::Payment(id) => {
            task = changes.get::<TaskView>(model, Table::Tasks, id.as_str().as_bytes())?
        }
        Aggregate::Agent(id) => {
            agent = changes.get::<AgentView>(model, Table::Agents, id.as_str().as_bytes())?
        }
        Aggregate::Token(id) => {
            token = changes.get::<TokenView>(model, Table::Tokens, id.as_str().as_bytes())?
        }
        Aggregate::Buyer(id) => {
            buyer = changes.get::<BuyerView>(model, Table::Buyers, id.as_str().as_bytes())?
        }
    }
    let record = RequestRecord {
        fingerprint: request.fingerprint.clone(),
        sequence: batch.sequence,
        subject: batch.subject.to_string(),
        task,
        agent,
        token,
        buyer,
        reused_by: Vec::new(),
    };
    changes.put(Table::Requests, key, record);
    Ok(())
}

/// The key of `principal`'s idempotency key `key` in [`Table::Requests`].
pub fn request_key(principal: &Principal, key: &str) -> Vec<u8> {
    format!("{principal}\n{key}").into_bytes()
}

/// Moves the aggregate's last sequence in the read model to `sequence`, whatever the
/// message did: even a refused or undecodable message is on the aggregate's subject, so the
/// next append must expect it, or every later command on the aggregate would conflict.
fn touch(
    model: &ReadModel,
    changes: &mut Changes,
    aggregate: &Aggregate,
    sequence: u64,
) -> Result<(), ProjectionError> {
    match aggregate {
        Aggregate::Task(id) | Aggregate::Payment(id) => {
            let key = id.as_str().as_bytes();
            if let Some(mut view) = changes.get::<TaskView>(model, Table::Tasks, key)? {
                match aggregate {
                    Aggregate::Task(_) => view.last_sequence = sequence,
                    _ => view.payment_sequence = sequence,
                }
                changes.put(Table::Tasks, key.to_vec(), view);
            }
        }
        Aggregate::Agent(id) => {
            let key = id.as_str().as_bytes();
            if let Some(mut view) = changes.get::<AgentView>(model, Table::Agents, key)? {
                view.last_sequence = sequence;
                changes.put(Table::Agents, key.to_vec(), view);
            }
        }
        Aggregate::Token(id) => {
            let key = id.as_str().as_bytes();
            if let Some(mut view) = changes.get::<TokenView>(model, Table::Tokens, key)? {
                view.last_sequence = sequence;
                changes.put(Table::Tokens, key.to_vec(), view);
            }
        }
        Aggregate::Buyer(id) => {
            // Even a buyer whose first budget event was refused has a subject to expect.
            let key = id.as_str().as_bytes();
            let mut view = changes
                .get::<BuyerView>(model, Table::Buyers, key)?
                .unwrap_or_else(|| BuyerView::new(id.clone()));
            view.last_sequence = sequence;
            changes.put(Table::Buyers, key.to_vec(), view);
        }
    }
    Ok(())
}

/// The aggregate a subject names, whatever the namespace prefix before `aicp.evt.`.
fn aggregate_of(subject: &str) -> Option<Aggregate> {
    let start = subject.find("aicp.evt.")?;
    aicp_events::Namespace::default().parse_aggregate(&subject[start..])
}

fn apply_poison(
    model: &ReadModel,
    changes: &mut Changes,
    poison: &PoisonMessage,
) -> Result<Applied, ProjectionError> {
    tracing::error!(
        sequence = poison.sequence,
        subject = %poison.subject,
        error = %poison.error,
        "poison message kept aside"
    );
    let mut counters: Counters = changes
        .get(model, Table::Counters, COUNTERS)?
        .unwrap_or_default();
    counters.poison = counters.poison.saturating_add(1);
    changes.put(Table::Counters, COUNTERS.to_vec(), counters);
    let record = PoisonRecord {
        sequence: poison.sequence,
        subject: poison.subject.clone(),
        error: poison.error.to_string(),
        payload: poison.payload.to_vec(),
    };
    changes.put(
        Table::Poison,
        poison.sequence.to_be_bytes().to_vec(),
        record,
    );
    if let Some(aggregate) = aggregate_of(&poison.subject) {
        touch(model, changes, &aggregate, poison.sequence)?;
    }
    Ok(Applied::Events {
        applied: 0,
        rejected: 0,
    })
}

/// Applies the events of one message into one change set.
struct Writer<'a> {
    model: &'a ReadModel,
    changes: &'a mut Changes,
    counters: &'a mut Counters,
    sequence: u64,
    /// Whether the message is on a payment subject (older tasks' money) rather than in
    /// its task's message.
    payment_subject: bool,
    at: DateTime<Utc>,
}

type Outcome = Result<Result<(), Rejected>, ProjectionError>;

impl Writer<'_> {
    fn apply(&mut self, envelope: &Envelope) -> Outcome {
        match &envelope.event {
            Event::TaskSubmitted(e) => self.task_submitted(e),
            Event::AgentRegistered(e) => self.agent_registered(e),
            Event::AgentOutcomeRecorded(e) => {
                let sequence = self.sequence;
                let outcome =
                    self.agent_changed(&e.agent_id, |agent| agent.record_outcome(e, sequence))?;
                if outcome.is_ok() {
                    self.task_marked(&e.task_id, |view| view.outcome_recorded = true)?;
                }
                Ok(outcome)
            }
            Event::AgentOutcomeCounted(e) => self.outcome_counted(e),
            Event::AgentUpdated(e) => self.agent_changed(&e.agent_id, |agent| {
                if let Some(name) = &e.name {
                    agent.name = name.clone();
                }
                if let Some(skills) = &e.skills {
                    agent.skills = skills.clone();
                }
                if let Some(mode) = e.mode {
                    agent.mode = mode;
                }
                if let Some(accepting) = e.accepting {
                    agent.accepting = accepting;
                }
                if let Some(executor) = &e.executor {
                    agent.executor = Some(executor.clone());
                }
            }),
            Event::EscrowHeld(_) | Event::EscrowReleased(_) | Event::EscrowRefunded(_) => {
                self.payment(&envelope.event)
            }
            Event::TokenIssued(e) => self.token_issued(e, envelope.principal.clone()),
            Event::TokenRevoked(e) => self.token_revoked(e, envelope.principal.clone()),
            Event::FundsDeposited(e) => self.deposited(e),
            Event::SpendingLimitsSet(e) => self
                .budget_changed(&e.buyer_id, |budget| {
                    budget.limits = Limits {
                        daily_sats: e.daily_sats,
                        total_sats: e.total_sats,
                    };
                })
                .map(Ok),
            Event::FundsReserved(e) => self.reserved(e),
            Event::FundsReleased(e) => self.released(e),
            task_event => self.task_changed(task_event),
        }
    }

    fn token_issued(
        &mut self,
        e: &aicp_events::event::TokenIssued,
        by: Option<Principal>,
    ) -> Outcome {
        let key = e.token_id.as_str().as_bytes();
        if self.get::<TokenView>(Table::Tokens, key)?.is_some() {
            return Ok(Err(Rejected(format!(
                "token {} already exists",
                e.token_id
            ))));
        }
        // One hash names one token: a second token with the same secret would be ambiguous.
        let hash = e.hash.as_str().as_bytes();
        if self.get::<String>(Table::TokenHashes, hash)?.is_some() {
            return Ok(Err(Rejected(format!(
                "token {} has the hash of another token",
                e.token_id
            ))));
        }
        let view = TokenView {
            token_id: e.token_id.clone(),
            principal: e.principal.clone(),
            label: e.label.clone(),
            issued_at: self.at,
            issued_by: by,
            revoked_at: None,
            revoked_by: None,
            revoke_reason: None,
            last_sequence: self.sequence,
        };
        self.changes.put(Table::Tokens, key.to_vec(), view);
        self.changes
            .put(Table::TokenHashes, hash.to_vec(), e.token_id.to_string());
        Ok(Ok(()))
    }

    fn token_revoked(
        &mut self,
        e: &aicp_events::event::TokenRevoked,
        by: Option<Principal>,
    ) -> Outcome {
        let key = e.token_id.as_str().as_bytes();
        let Some(mut view) = self.get::<TokenView>(Table::Tokens, key)? else {
            return Ok(Err(Rejected(format!(
                "token {} does not exist",
                e.token_id
            ))));
        };
        if view.revoked_at.is_some() {
            return Ok(Err(Rejected(format!(
                "token {} is already revoked",
                e.token_id
            ))));
        }
        view.revoked_at = Some(self.at);
        view.revoked_by = by;
        view.revoke_reason = Some(e.reason.clone());
        view.last_sequence = self.sequence;
        self.changes.put(Table::Tokens, key.to_vec(), view);
        Ok(Ok(()))
    }

    fn get<T: serde::de::DeserializeOwned + Clone + 'static>(
        &self,
        table: Table,
        key: &[u8],
    ) -> Result<Option<T>, ProjectionError> {
        self.changes.get(self.model, table, key)
    }

    fn task_submitted(&mut self, e: &aicp_events::event::TaskSubmitted) -> Outcome {
        let key = e.task_id.as_str().as_bytes();
        if self.get::<TaskView>(Table::Tasks, key)?.is_some() {
            return Ok(Err(Rejected(format!("task {} already exists", e.task_id))));
        }
        let view = TaskView::submitted(e, self.sequence, self.at);
        let seq = self.sequence;
        let id = e.task_id.as_str();
        self.changes.put(Table::Tasks, key.to_vec(), view);
        self.changes
            .put_new_id(Table::TasksByTime, seq.to_be_bytes().to_vec(), id)?;
        self.changes
            .put_new_id(Table::TasksByBuyer, index_key(e.buyer_id.as_str(), seq), id)?;
        self.changes.put_new_id(
            Table::TasksByStatus,
            index_key(TaskStatus::Submitted.as_str(), seq),
            id,
        )?;
        if let Some(deadline) = e.deadline {
            self.changes
                .put_new_id(Table::Deadlines, deadline_key(deadline, id), id)?;
        }
        self.buyer_changed(&e.buyer_id, |buyer| buyer.tasks_submitted += 1)?;
        self.counters.submitted += 1;
        self.minute_changed(|m| m.submitted += 1)?;
        Ok(Ok(()))
    }

    fn task_changed(&mut self, event: &Event) -> Outcome {
        let Aggregate::Task(task_id) = event.aggregate() else {
            return Ok(Err(Rejected(format!(
                "{} is not a task event",
                event.event_type()
            ))));
        };
        let key = task_id.as_str().as_bytes().to_vec();
        let Some(mut view) = self.get::<TaskView>(Table::Tasks, &key)? else {
            return Ok(Err(Rejected(format!("task {task_id} does not exist"))));
        };
        let before = match view.change(event, self.sequence, self.at) {
            Ok(before) => before,
            Err(e) => return Ok(Err(e.into())),
        };
        let after = view.task.status;
        let seq = view.submitted_seq;
        let id = task_id.as_str();
        // A task has one status entry, its current status's: the new one is not stored yet.
        if before != after {
            self.changes
                .remove(Table::TasksByStatus, index_key(before.as_str(), seq));
            self.changes
                .put_new_id(Table::TasksByStatus, index_key(after.as_str(), seq), id)?;
        }
        if let Event::TaskAssigned(e) = event {
            self.changes
                .put_id(Table::TasksByAgent, index_key(e.agent_id.as_str(), seq), id)?;
            self.update_agent(&e.agent_id, |agent| {
                agent.active_tasks += 1;
                agent.tasks_assigned += 1;
            })?;
        }
        if after.is_terminal() {
            if let Some(deadline) = view.task.deadline {
                self.changes
                    .remove(Table::Deadlines, deadline_key(deadline, id));
            }
            let was_active = matches!(before, TaskStatus::Assigned | TaskStatus::Running);
            if let (Some(agent_id), true) = (view.task.agent_id.clone(), was_active) {
                self.update_agent(&agent_id, |agent| {
                    agent.active_tasks = agent.active_tasks.saturating_sub(1);
                    match after {
                        TaskStatus::Completed => agent.tasks_completed += 1,
                        TaskStatus::Failed => agent.tasks_failed += 1,
                        _ => {}
                    }
                })?;
            }
            match after {
                TaskStatus::Completed => {
                    self.counters.completed += 1;
                    self.minute_changed(|m| m.completed += 1)?;
                }
                TaskStatus::Failed => self.counters.failed += 1,
                TaskStatus::Cancelled => self.counters.cancelled += 1,
                TaskStatus::Expired => self.counters.expired += 1,
                _ => {}
            }
            if after != TaskStatus::Completed {
                self.minute_changed(|m| m.failed += 1)?;
            }
        }
        self.changes.put(Table::Tasks, key, view);
        Ok(Ok(()))
    }

    /// Counts a task's outcome on its agent's reputation: once, for the task's own agent,
    /// as the outcome the task reached.
    fn outcome_counted(&mut self, e: &aicp_events::event::AgentOutcomeCounted) -> Outcome {
        let key = e.task_id.as_str().as_bytes();
        let Some(mut view) = self.get::<TaskView>(Table::Tasks, key)? else {
            return Ok(Err(Rejected(format!("task {} does not exist", e.task_id))));
        };
        if view.outcome_recorded {
            return Ok(Err(Rejected(format!(
                "task {}'s outcome is already counted",
                e.task_id
            ))));
        }
        if view.task.agent_id.as_ref() != Some(&e.agent_id) {
            return Ok(Err(Rejected(format!(
                "task {} is not {}'s",
                e.task_id, e.agent_id
            ))));
        }
        let reached = match view.task.status {
            TaskStatus::Completed => true,
            TaskStatus::Failed => false,
            status => {
                return Ok(Err(Rejected(format!(
                    "task {} is {status}: no outcome to count",
                    e.task_id
                ))))
            }
        };
        if reached != e.success {
            return Ok(Err(Rejected(format!(
                "task {} is {}, not counted as {}",
                e.task_id,
                view.task.status,
                if e.success { "a success" } else { "a failure" }
            ))));
        }
        if !self.update_agent(&e.agent_id, |agent| agent.count_outcome(e.success))? {
            return Ok(Err(Rejected(format!(
                "agent {} does not exist",
                e.agent_id
            ))));
        }
        view.outcome_recorded = true;
        self.changes.put(Table::Tasks, key.to_vec(), view);
        Ok(Ok(()))
    }

    fn agent_registered(&mut self, e: &aicp_events::event::AgentRegistered) -> Outcome {
        let key = e.agent_id.as_str().as_bytes();
        if self.get::<AgentView>(Table::Agents, key)?.is_some() {
            return Ok(Err(Rejected(format!(
                "agent {} already exists",
                e.agent_id
            ))));
        }
        let reputation = match Reputation::new(e.prior_rate_bp, e.prior_weight) {
            Ok(r) => r,
            Err(err) => return Ok(Err(err.into())),
        };
        let balance: i64 = self
            .get(
                Table::Balances,
                Account::Agent(e.agent_id.clone()).to_string().as_bytes(),
            )?
            .unwrap_or(0);
        let view = AgentView {
            agent_id: e.agent_id.clone(),
            name: e.name.clone(),
            skills: e.skills.clone(),
            mode: e.mode,
            accepting: true,
            executor: e.executor.clone(),
            reputation,
            rate_bp: reputation.rate_bp(),
            multiplier: reputation.multiplier(),
            balance_sats: balance,
            active_tasks: 0,
            tasks_completed: 0,
            tasks_failed: 0,
            tasks_assigned: 0,
            registered_at: self.at,
            last_sequence: self.sequence,
        };
        self.changes.put(Table::Agents, key.to_vec(), view);
        Ok(Ok(()))
    }

    /// An agent event: changes the agent and moves its last sequence; an unknown agent is
    /// a rejection.
    fn agent_changed(
        &mut self,
        agent_id: &AgentId,
        change: impl FnOnce(&mut AgentView),
    ) -> Outcome {
        let sequence = self.sequence;
        let found = self.update_agent(agent_id, |agent| {
            change(agent);
            agent.last_sequence = sequence;
        })?;
        Ok(if found {
            Ok(())
        } else {
            Err(Rejected(format!("agent {agent_id} does not exist")))
        })
    }

    /// Changes an agent's figures on behalf of a task or payment event; false if the agent
    /// is unknown (its figures then start from the events it sees once registered).
    fn update_agent(
        &mut self,
        agent_id: &AgentId,
        change: impl FnOnce(&mut AgentView),
    ) -> Result<bool, ProjectionError> {
        let key = agent_id.as_str().as_bytes();
        let Some(mut agent) = self.get::<AgentView>(Table::Agents, key)? else {
            tracing::warn!(agent = %agent_id, sequence = self.sequence, "event names an unknown agent");
            return Ok(false);
        };
        change(&mut agent);
        self.changes.put(Table::Agents, key.to_vec(), agent);
        Ok(true)
    }

    fn buyer_changed(
        &mut self,
        buyer_id: &BuyerId,
        change: impl FnOnce(&mut BuyerView),
    ) -> Result<(), ProjectionError> {
        let key = buyer_id.as_str().as_bytes();
        let mut buyer = self
            .get::<BuyerView>(Table::Buyers, key)?
            .unwrap_or_else(|| BuyerView::new(buyer_id.clone()));
        change(&mut buyer);
        self.changes.put(Table::Buyers, key.to_vec(), buyer);
        Ok(())
    }

    fn deposited(&mut self, e: &aicp_events::event::FundsDeposited) -> Outcome {
        if e.amount_sats == 0 {
            return Ok(Err(Rejected(format!(
                "a deposit of 0 sat for {}",
                e.buyer_id
            ))));
        }
        let mut overflow = false;
        self.budget_changed(&e.buyer_id, |budget| {
            overflow = budget.deposit(e.amount_sats).is_none();
        })?;
        if overflow {
            return Ok(Err(Rejected(format!(
                "a deposit of {} sat would overflow {}'s balance",
                e.amount_sats, e.buyer_id
            ))));
        }
        Ok(Ok(()))
    }

    /// Changes a buyer's budget, giving it one if it had none.
    fn budget_changed(
        &mut self,
        buyer_id: &BuyerId,
        change: impl FnOnce(&mut Budget),
    ) -> Result<(), ProjectionError> {
        self.buyer_changed(buyer_id, |b| {
            change(b.budget.get_or_insert_with(Budget::default))
        })
    }

    fn reserved(&mut self, e: &aicp_events::event::FundsReserved) -> Outcome {
        let key = e.task_id.as_str().as_bytes();
        if self
            .get::<ReservationView>(Table::Reservations, key)?
            .is_some()
        {
            return Ok(Err(Rejected(format!(
                "task {} already has a reservation",
                e.task_id
            ))));
        }
        let (amount, day) = (e.amount_sats, e.day);
        self.buyer_changed(&e.buyer_id, |b| {
            let budget = b.budget.get_or_insert_with(Budget::default);
            // The stream's word is final: a reservation the rules refuse is still booked,
            // and counted, so `aicp verify` shows the writer that skipped the check.
            if budget.check(amount, day).is_err() {
                b.overdrawn += 1;
            }
            budget.record_commit(amount, day);
            b.pending_sats = b.pending_sats.saturating_add(amount);
        })?;
        let reservation = ReservationView {
            task_id: e.task_id.clone(),
            buyer_id: e.buyer_id.clone(),
            amount_sats: amount,
            day,
            state: ReservationState::Pending,
            sequence: self.sequence,
            reserved_at: self.at,
        };
        self.changes
            .put(Table::Reservations, key.to_vec(), reservation);
        Ok(Ok(()))
    }

    fn released(&mut self, e: &aicp_events::event::FundsReleased) -> Outcome {
        let key = e.task_id.as_str().as_bytes();
        let Some(mut reservation) = self.get::<ReservationView>(Table::Reservations, key)? else {
            return Ok(Err(Rejected(format!(
                "task {} has no reservation",
                e.task_id
            ))));
        };
        if reservation.state != ReservationState::Pending || reservation.buyer_id != e.buyer_id {
            return Ok(Err(Rejected(format!(
                "task {}'s reservation is {:?} for {}: only a pending one of its buyer is released",
                e.task_id, reservation.state, reservation.buyer_id
            ))));
        }
        let (amount, day) = (reservation.amount_sats, reservation.day);
        self.buyer_changed(&e.buyer_id, |b| {
            if let Some(budget) = &mut b.budget {
                budget.give_back(amount, day);
            }
            b.pending_sats = b.pending_sats.saturating_sub(amount);
        })?;
        reservation.state = ReservationState::Released;
        self.changes
            .put(Table::Reservations, key.to_vec(), reservation);
        Ok(Ok(()))
    }

    /// Moves a reserved task's price along with its escrow: held once the task holds the
    /// reserved amount from the reserving buyer, back in the balance once refunded.
    fn reservation_settled(
        &mut self,
        task_id: &TaskId,
        escrow: &Escrow,
    ) -> Result<(), ProjectionError> {
        let key = task_id.as_str().as_bytes();
        let Some(mut reservation) = self.get::<ReservationView>(Table::Reservations, key)? else {
            return Ok(());
        };
        let (amount, day) = (reservation.amount_sats, reservation.day);
        let same = reservation.buyer_id == escrow.buyer_id && amount == escrow.amount_sats;
        let next = match (reservation.state, escrow.state) {
            (ReservationState::Pending, EscrowState::Held) if same => ReservationState::Held,
            (ReservationState::Held, EscrowState::Refunded) => ReservationState::Refunded,
            _ => return Ok(()),
        };
        self.buyer_changed(&reservation.buyer_id, |b| match next {
            ReservationState::Held => b.pending_sats = b.pending_sats.saturating_sub(amount),
            _ => {
                if let Some(budget) = &mut b.budget {
                    budget.give_back(amount, day);
                }
            }
        })?;
        reservation.state = next;
        self.changes
            .put(Table::Reservations, key.to_vec(), reservation);
        Ok(())
    }

    fn minute_changed(
        &mut self,
        change: impl FnOnce(&mut MinuteStats),
    ) -> Result<(), ProjectionError> {
        let minute = self.at.timestamp().div_euclid(60) * 60;
        let key = (minute.max(0) as u64).to_be_bytes().to_vec();
        let mut stats = self
            .get::<MinuteStats>(Table::Series, &key)?
            .unwrap_or(MinuteStats {
                minute,
                ..MinuteStats::default()
            });
        change(&mut stats);
        self.changes.put(Table::Series, key, stats);
        Ok(())
    }

    /// Books a payment event through the domain ledger, seeded with this task's escrow.
    fn payment(&mut self, event: &Event) -> Outcome {
        let Aggregate::Payment(task_id) = event.aggregate() else {
            return Ok(Err(Rejected(format!(
                "{} is not a payment event",
                event.event_type()
            ))));
        };
        let key = task_id.as_str().as_bytes().to_vec();
        // A task's escrow is its price, from its buyer, for its agent, in the state its view
        // records: kept with the task rather than as a record of its own, which was two more
        // writes per task for nothing the view did not already say.
        let Some(view) = self.get::<TaskView>(Table::Tasks, &key)? else {
            return Ok(Err(Rejected(format!(
                "{} for task {task_id}, which does not exist",
                event.event_type()
            ))));
        };
        if let Event::EscrowHeld(held) = event {
            // Escrow must hold the task's own price, from its own buyer, for its own agent.
            let t = &view.task;
            let matches = t.price_sats == Some(held.amount_sats)
                && t.agent_id.as_ref() == Some(&held.agent_id)
                && t.buyer_id == held.buyer_id;
            if !matches {
                return Ok(Err(Rejected(format!(
                    "escrow of {} sat for {} from {} does not match task {task_id}",
                    held.amount_sats, held.agent_id, held.buyer_id
                ))));
            }
        }
        let stored = view.escrow();
        if view.payment.is_some() && stored.is_none() {
            return Ok(Err(Rejected(format!(
                "task {task_id} has money but no agent or price"
            ))));
        }
        let mut ledger = match ledger_with(&task_id, stored.as_ref()) {
            Ok(ledger) => ledger,
            Err(e) => return Ok(Err(e)),
        };
        let transfer = match ledger.apply(event) {
            Ok(Some(transfer)) => transfer,
            Ok(None) => return Ok(Err(Rejected("not a payment event".into()))),
            Err(e) => return Ok(Err(e.into())),
        };
        let Some(escrow) = ledger.escrow(&task_id).cloned() else {
            return Ok(Err(Rejected(format!(
                "task {task_id} has no escrow after {}",
                event.event_type()
            ))));
        };
        self.book(&transfer)?;
        let amount = transfer.amount_sats;
        self.reservation_settled(&task_id, &escrow)?;
        match escrow.state {
            EscrowState::Held => {
                self.buyer_changed(&escrow.buyer_id, |b| {
                    b.open_escrow_sats = b.open_escrow_sats.saturating_add(amount)
                })?;
            }
            EscrowState::Released => {
                self.buyer_changed(&escrow.buyer_id, |b| {
                    b.open_escrow_sats = b.open_escrow_sats.saturating_sub(amount);
                    b.spent_sats = b.spent_sats.saturating_add(amount);
                })?;
                let balance = self.balance(&Account::Agent(escrow.agent_id.clone()))?;
                // An agent paid before it registered picks its balance up at registration.
                self.update_agent(&escrow.agent_id, |a| a.balance_sats = balance)?;
                self.counters.settled_sats = self.counters.settled_sats.saturating_add(amount);
                self.minute_changed(|m| m.settled_sats = m.settled_sats.saturating_add(amount))?;
            }
            EscrowState::Refunded => {
                self.buyer_changed(&escrow.buyer_id, |b| {
                    b.open_escrow_sats = b.open_escrow_sats.saturating_sub(amount);
                    b.refunded_sats = b.refunded_sats.saturating_add(amount);
                })?;
                self.counters.refunded_sats = self.counters.refunded_sats.saturating_add(amount);
            }
        }
        let sequence = self.payment_subject.then_some(self.sequence);
        self.task_marked(&task_id, |view| {
            view.payment = Some(escrow.state);
            // Only a payment subject's message is what its next append must expect.
            if let Some(sequence) = sequence {
                view.payment_sequence = sequence;
            }
        })?;
        Ok(Ok(()))
    }

    /// Notes on a task what another aggregate's event did to it (its money, its outcome);
    /// the task's own last sequence is left alone.
    fn task_marked(
        &mut self,
        task_id: &TaskId,
        mark: impl FnOnce(&mut TaskView),
    ) -> Result<(), ProjectionError> {
        let key = task_id.as_str().as_bytes();
        if let Some(mut view) = self.get::<TaskView>(Table::Tasks, key)? {
            mark(&mut view);
            self.changes.put(Table::Tasks, key.to_vec(), view);
        }
        Ok(())
    }

    fn balance(&self, account: &Account) -> Result<i64, ProjectionError> {
        Ok(self
            .get(Table::Balances, account.to_string().as_bytes())?
            .unwrap_or(0))
    }

    /// Writes both sides of a transfer: balances and ledger entries.
    fn book(&mut self, transfer: &Transfer) -> Result<(), ProjectionError> {
        // Amounts above i64::MAX were refused by the ledger, so this cannot saturate.
        let amount = i64::try_from(transfer.amount_sats).unwrap_or(i64::MAX);
        for (n, (account, counterparty, delta)) in [
            (&transfer.from, &transfer.to, -amount),
            (&transfer.to, &transfer.from, amount),
        ]
        .into_iter()
        .enumerate()
        {
            let name = account.to_string();
            let balance = self.balance(account)?.saturating_add(delta);
            self.changes
                .put(Table::Balances, name.as_bytes().to_vec(), balance);
            let mut key = index_key(&name, self.sequence);
            key.push(n as u8);
            let entry = LedgerRecord {
                task_id: transfer.task_id.clone(),
                counterparty: counterparty.clone(),
                amount_sats: delta,
                balance_sats: balance,
                at: self.at,
            };
            self.changes.put(Table::Ledger, key, entry);
        }
        Ok(())
    }
}

/// A ledger holding only `task_id`'s escrow as stored, so that the domain's rules (held
/// once, settled once, to its own party and amount) judge the next payment event.
fn ledger_with(task_id: &TaskId, escrow: Option<&Escrow>) -> Result<Ledger, Rejected> {
    let mut ledger = Ledger::new();
    if let Some(e) = escrow {
        ledger.hold(task_id, &e.buyer_id, &e.agent_id, e.amount_sats)?;
        match e.state {
            EscrowState::Held => {}
            EscrowState::Released => {
                ledger.release(task_id)?;
            }
            EscrowState::Refunded => {
                ledger.refund(task_id)?;
            }
        }
    }
    Ok(ledger)
}
