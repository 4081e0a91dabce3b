//! The read model fed by hand-made stream messages: every rule of the projection, without
//! a server (the projector's own tests use a real one).

use std::collections::BTreeSet;

use aicp_events::domain::access::Principal;
use aicp_events::domain::ledger::{Account, EscrowState};
use aicp_events::domain::pricing::MultiplierMilli;
use aicp_events::domain::reputation::SEED_AGENTS;
use aicp_events::domain::task::TaskStatus;
use aicp_events::event::*;
use aicp_events::id::{AgentId, TaskId};
use aicp_events::request::RequestKey;
use aicp_events::store::{PoisonMessage, StoredBatch};
use aicp_events::testing::sample_submitted;
use aicp_events::{Envelope, Namespace};
use aicp_projections::{Applied, Changes, PageRequest, ReadModel, TaskFilter};
use anyhow::Result;

struct Harness {
    /// Kept for the test's life: where `Harness::new` opens the model.
    dir: tempfile::TempDir,
    model: ReadModel,
    sequence: u64,
    /// Every message pushed, in order.
    history: Vec<StoredBatch>,
}

impl Harness {
    fn new() -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let model = ReadModel::open(dir.path())?;
        Ok(Self {
            dir,
            model,
            sequence: 0,
            history: Vec::new(),
        })
    }

    /// Applies `events` as the next stream message.
    fn push(&mut self, events: Vec<Event>) -> Result<(StoredBatch, Applied)> {
        self.push_envelopes(events.into_iter().map(Envelope::new).collect())
    }

    /// Applies `events` as the next stream message, written by `principal` with `key`.
    fn push_keyed(
        &mut self,
        events: Vec<Event>,
        principal: Principal,
        key: RequestKey,
    ) -> Result<StoredBatch> {
        let mut envelopes: Vec<Envelope> = events
            .into_iter()
            .map(|e| Envelope::new(e).by(principal.clone()))
            .collect();
        envelopes[0].request = Some(key);
        Ok(self.push_envelopes(envelopes)?.0)
    }

    /// Applies `events` as the next stream message, as they are.
    fn push_envelopes(&mut self, events: Vec<Envelope>) -> Result<(StoredBatch, Applied)> {
        self.sequence += 1;
        let subject = Namespace::default().aggregate_subject(&events[0].event.aggregate());
        let batch = StoredBatch {
            sequence: self.sequence,
            subject,
            events,
        };
        let applied = self.model.apply(&batch)?;
        self.history.push(batch.clone());
        Ok((batch, applied))
    }

    fn seed_agents(&mut self) -> Result<()> {
        for (id, rate) in SEED_AGENTS {
            self.push(vec![AgentRegistered {
                agent_id: agent(id),
                name: id.to_owned(),
                skills: BTreeSet::new(),
                mode: AgentMode::Worker,
                prior_rate_bp: rate,
                prior_weight: 20,
                executor: None,
            }
            .into()])?;
        }
        Ok(())
    }

    /// Submit + assign (one message) and escrow (another), as the coordinator will.
    fn submit(&mut self, task: &str, buyer: &str, agent_id: &str, multiplier: u32) -> Result<u64> {
        let price = 100_000 * 2 * u64::from(multiplier) / 1000;
        self.push(vec![
            submitted(task, buyer).into(),
            assigned(task, agent_id, multiplier, price).into(),
        ])?;
        self.push(vec![EscrowHeld {
            task_id: tid(task),
            buyer_id: buyer.parse()?,
            agent_id: agent(agent_id),
            amount_sats: price,
        }
        .into()])?;
        Ok(price)
    }
}

/// What applying a message whose one event the rules refuse reports.
const REFUSED: Applied = Applied::Events {
    applied: 0,
    rejected: 1,
};

fn tid(s: &str) -> TaskId {
    s.parse().expect("valid task id")
}

fn agent(s: &str) -> AgentId {
    s.parse().expect("valid agent id")
}

fn submitted(task: &str, buyer: &str) -> TaskSubmitted {
    let buyer = buyer.parse().expect("valid buyer id");
    sample_submitted(&tid(task), &buyer, "Process payment".into())
}

fn assigned(task: &str, agent_id: &str, multiplier: u32, price: u64) -> TaskAssigned {
    TaskAssigned {
        task_id: tid(task),
        agent_id: agent(agent_id),
        multiplier: MultiplierMilli(multiplier),
        price_sats: price,
        assignment: 1,
    }
}

fn completed(task: &str, agent_id: &str) -> TaskCompleted {
    TaskCompleted {
        task_id: tid(task),
        agent_id: agent(agent_id),
        result: "done".into(),
    }
}

fn released(task: &str, agent_id: &str, amount: u64) -> EscrowReleased {
    EscrowReleased {
        task_id: tid(task),
        agent_id: agent(agent_id),
        amount_sats: amount,
    }
}

#[test]
fn the_prototype_stories_project_into_tasks_agents_buyers_and_the_ledger() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    let price = h.submit("t1", "buyer-001", "agent-1", 2000)?;
    assert_eq!(price, 400_000);

    let view = h.model.task(&tid("t1"))?.expect("task exists");
    assert_eq!(view.task.status, TaskStatus::Assigned);
    assert_eq!(view.task.price_sats, Some(400_000));
    assert_eq!(view.payment, Some(EscrowState::Held));
    assert_eq!(view.last_sequence, 4, "the task's own last message");
    let buyer = h.model.buyer(&"buyer-001".parse()?)?.expect("buyer exists");
    assert_eq!((buyer.open_escrow_sats, buyer.spent_sats), (400_000, 0));
    assert_eq!(
        h.model
            .agent(&agent("agent-1"))?
            .expect("agent")
            .active_tasks,
        1
    );

    // Story 2: the agent completes; the escrow is released.
    h.push(vec![completed("t1", "agent-1").into()])?;
    h.push(vec![released("t1", "agent-1", 400_000).into()])?;

    let view = h.model.task(&tid("t1"))?.expect("task exists");
    assert_eq!(view.task.status, TaskStatus::Completed);
    assert_eq!(view.payment, Some(EscrowState::Released));
    assert!(view.finished_at.is_some());
    let agent1 = h.model.agent(&agent("agent-1"))?.expect("agent");
    assert_eq!(agent1.balance_sats, 400_000);
    assert_eq!((agent1.active_tasks, agent1.tasks_completed), (0, 1));
    let buyer = h.model.buyer(&"buyer-001".parse()?)?.expect("buyer exists");
    assert_eq!((buyer.open_escrow_sats, buyer.spent_sats), (0, 400_000));
    assert_eq!(h.model.balance(&Account::Escrow)?, 0);
    assert_eq!(
        h.model.balance(&Account::Buyer("buyer-001".parse()?))?,
        -400_000
    );
    let total: i64 = h.model.balances()?.iter().map(|(_, b)| b).sum();
    assert_eq!(total, 0, "double entry: balances sum to zero");

    let entries = h
        .model
        .ledger(&Account::Agent(agent("agent-1")), &PageRequest::first(10))?;
    assert_eq!(entries.items.len(), 1);
    assert_eq!(entries.items[0].amount_sats, 400_000);
    assert_eq!(entries.items[0].counterparty, Account::Escrow);
    // An entry's account and sequence are its key's: read back as they were booked.
    let release_seq = h.sequence;
    assert_eq!(
        (&entries.items[0].account, entries.items[0].sequence),
        (&Account::Agent(agent("agent-1")), release_seq)
    );
    let escrow = h.model.ledger(&Account::Escrow, &PageRequest::first(10))?;
    let seen: Vec<(u64, i64, &Account, &Account)> = escrow
        .items
        .iter()
        .map(|e| (e.sequence, e.amount_sats, &e.account, &e.counterparty))
        .collect();
    assert_eq!(
        seen,
        vec![
            (
                release_seq,
                -400_000,
                &Account::Escrow,
                &Account::Agent(agent("agent-1"))
            ),
            (
                release_seq - 2,
                400_000,
                &Account::Escrow,
                &Account::Buyer("buyer-001".parse()?)
            ),
        ],
        "newest first: the release, then the hold"
    );
    let counters = h.model.counters()?;
    assert_eq!(
        (
            counters.submitted,
            counters.completed,
            counters.settled_sats
        ),
        (1, 1, 400_000)
    );
    let series = h.model.series(0)?;
    assert_eq!(series.iter().map(|m| m.completed).sum::<u64>(), 1);
    Ok(())
}

#[test]
fn a_message_applied_twice_changes_nothing() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    h.submit("t1", "b1", "agent-1", 2000)?;
    let (batch, _) = h.push(vec![completed("t1", "agent-1").into()])?;
    let before = h.model.digest()?;
    assert_eq!(h.model.apply(&batch)?, Applied::AlreadyApplied);
    assert_eq!(h.model.digest()?, before);
    Ok(())
}

#[test]
fn a_second_completion_or_settlement_is_rejected_and_pays_nobody_twice() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    h.submit("t1", "b1", "agent-1", 2000)?;
    h.push(vec![completed("t1", "agent-1").into()])?;
    h.push(vec![released("t1", "agent-1", 400_000).into()])?;
    let (_, again) = h.push(vec![completed("t1", "agent-1").into()])?;
    assert_eq!(again, REFUSED);
    let (_, twice) = h.push(vec![released("t1", "agent-1", 400_000).into()])?;
    assert_eq!(twice, REFUSED);
    let refund = EscrowRefunded {
        task_id: tid("t1"),
        buyer_id: "b1".parse()?,
        amount_sats: 400_000,
        reason: "late".into(),
    };
    let (_, refunded) = h.push(vec![refund.into()])?;
    assert_eq!(refunded, REFUSED);

    assert_eq!(
        h.model
            .agent(&agent("agent-1"))?
            .expect("agent")
            .balance_sats,
        400_000
    );
    assert_eq!(h.model.counters()?.events_rejected, 3);
    assert_eq!(
        h.model.last_sequence()?,
        h.sequence,
        "rejections still move the checkpoint"
    );
    Ok(())
}

#[test]
fn failure_refunds_the_buyer_and_reputation_follows_outcomes() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    h.submit("t1", "b1", "agent-1", 2000)?;
    h.push(vec![TaskFailed {
        task_id: tid("t1"),
        agent_id: agent("agent-1"),
        reason: "boom".into(),
    }
    .into()])?;
    h.push(vec![EscrowRefunded {
        task_id: tid("t1"),
        buyer_id: "b1".parse()?,
        amount_sats: 400_000,
        reason: "task failed".into(),
    }
    .into()])?;
    h.push(vec![AgentOutcomeRecorded {
        agent_id: agent("agent-1"),
        task_id: tid("t1"),
        success: false,
        successes: 0,
        failures: 1,
        rate_bp: 9047,
        multiplier: MultiplierMilli(1800),
    }
    .into()])?;

    let buyer = h.model.buyer(&"b1".parse()?)?.expect("buyer");
    assert_eq!(
        (
            buyer.open_escrow_sats,
            buyer.refunded_sats,
            buyer.spent_sats
        ),
        (0, 400_000, 0)
    );
    assert_eq!(h.model.balance(&Account::Buyer("b1".parse()?))?, 0);
    let agent1 = h.model.agent(&agent("agent-1"))?.expect("agent");
    assert_eq!(
        (agent1.rate_bp, agent1.multiplier),
        (9047, MultiplierMilli(1800))
    );
    assert_eq!(
        (
            agent1.tasks_failed,
            agent1.active_tasks,
            agent1.balance_sats
        ),
        (1, 0, 0)
    );
    assert_eq!(agent1.last_sequence, h.sequence);
    let view = h.model.task(&tid("t1"))?.expect("task");
    assert_eq!(view.payment, Some(EscrowState::Refunded));
    assert_eq!(
        view.payment_sequence,
        h.sequence - 1,
        "the refund's sequence"
    );
    assert!(view.outcome_recorded);
    // Payment and agent events leave the task's own sequence alone.
    assert_eq!(view.last_sequence, h.sequence - 2);
    Ok(())
}

#[test]
fn lists_page_newest_first_and_filter_by_buyer_agent_and_status() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    for n in 0..25 {
        let buyer = if n % 2 == 0 { "even" } else { "odd" };
        let agent_id = if n % 5 == 0 { "agent-3" } else { "agent-1" };
        let multiplier = if agent_id == "agent-3" { 1200 } else { 2000 };
        h.submit(&format!("t{n:02}"), buyer, agent_id, multiplier)?;
    }
    h.push(vec![completed("t24", "agent-1").into()])?;
    h.push(vec![completed("t03", "agent-1").into()])?;

    let ids =
        |page: &aicp_projections::views::Page<aicp_projections::views::TaskView>| -> Vec<String> {
            page.items
                .iter()
                .map(|v| v.task.task_id.to_string())
                .collect()
        };
    let all = TaskFilter::default();
    let first = h.model.tasks(&all, &PageRequest::first(10))?;
    assert_eq!(ids(&first)[..3], ["t24", "t23", "t22"]);
    let second = h.model.tasks(
        &all,
        &PageRequest {
            cursor: first.next_cursor.clone(),
            limit: 10,
        },
    )?;
    assert_eq!(ids(&second)[0], "t14");
    let third = h.model.tasks(
        &all,
        &PageRequest {
            cursor: second.next_cursor.clone(),
            limit: 10,
        },
    )?;
    assert_eq!(ids(&third).len(), 5);
    assert_eq!(third.next_cursor, None);

    let odd = TaskFilter {
        buyer: Some("odd".parse()?),
        ..Default::default()
    };
    assert_eq!(
        h.model.tasks(&odd, &PageRequest::first(100))?.items.len(),
        12
    );
    let agent3 = TaskFilter {
        agent: Some(agent("agent-3")),
        ..Default::default()
    };
    assert_eq!(
        ids(&h.model.tasks(&agent3, &PageRequest::first(100))?),
        ["t20", "t15", "t10", "t05", "t00"]
    );
    let done = TaskFilter {
        status: Some(TaskStatus::Completed),
        ..Default::default()
    };
    assert_eq!(
        ids(&h.model.tasks(&done, &PageRequest::first(100))?),
        ["t24", "t03"]
    );
    let odd_done = TaskFilter {
        status: Some(TaskStatus::Completed),
        ..odd
    };
    assert_eq!(
        ids(&h.model.tasks(&odd_done, &PageRequest::first(100))?),
        ["t03"]
    );
    let assigned = TaskFilter {
        status: Some(TaskStatus::Assigned),
        ..Default::default()
    };
    assert_eq!(
        h.model
            .tasks(&assigned, &PageRequest::first(100))?
            .items
            .len(),
        23
    );

    let bad = h.model.tasks(
        &all,
        &PageRequest {
            cursor: Some("nope".into()),
            limit: 10,
        },
    );
    assert!(matches!(bad, Err(aicp_projections::QueryError::Cursor(_))));

    let agents = h.model.agents(&PageRequest::first(2))?;
    assert_eq!(agents.items.len(), 2);
    let rest = h.model.agents(&PageRequest {
        cursor: agents.next_cursor,
        limit: 2,
    })?;
    assert_eq!(rest.items[0].agent_id, agent("agent-3"));
    assert_eq!(rest.next_cursor, None);
    Ok(())
}

#[test]
fn a_poison_message_is_kept_counted_and_passed() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    let poison = PoisonMessage {
        sequence: 4,
        subject: "aicp.evt.task.x".into(),
        error: aicp_events::codec::decode_batch(None, b"junk").expect_err("not a batch"),
        payload: bytes_of(b"junk"),
    };
    h.model.apply_poison(&poison)?;
    h.sequence = 4;
    h.submit("t1", "b1", "agent-1", 2000)?;
    assert_eq!(h.model.counters()?.poison, 1);
    let kept = h.model.poison(&PageRequest::first(10))?;
    assert_eq!(kept.items.len(), 1);
    assert_eq!(kept.items[0].sequence, 4);
    assert_eq!(kept.items[0].payload, b"junk");
    assert!(
        h.model.task(&tid("t1"))?.is_some(),
        "the projection went on"
    );
    Ok(())
}

fn bytes_of(b: &[u8]) -> bytes::Bytes {
    bytes::Bytes::copy_from_slice(b)
}

#[test]
fn unfinished_tasks_with_a_deadline_are_due_once_it_passes() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    let deadline = chrono::Utc::now() + chrono::Duration::minutes(5);
    for task in ["early", "late"] {
        let mut submit = submitted(task, "b1");
        submit.deadline = Some(if task == "early" {
            deadline
        } else {
            deadline + chrono::Duration::minutes(1)
        });
        h.push(vec![
            submit.into(),
            assigned(task, "agent-1", 2000, 400_000).into(),
        ])?;
    }
    let before = deadline - chrono::Duration::seconds(1);
    assert!(h.model.due(before)?.is_empty());
    assert_eq!(h.model.due(deadline)?, vec![tid("early")]);
    let much_later = deadline + chrono::Duration::hours(1);
    assert_eq!(h.model.due(much_later)?, vec![tid("early"), tid("late")]);

    h.push(vec![TaskExpired {
        task_id: tid("early"),
        deadline,
    }
    .into()])?;
    h.push(vec![completed("late", "agent-1").into()])?;
    assert!(
        h.model.due(much_later)?.is_empty(),
        "finished tasks are no longer due"
    );
    assert_eq!(
        h.model.task(&tid("early"))?.expect("task").task.status,
        TaskStatus::Expired
    );
    Ok(())
}

#[test]
fn refused_and_undecodable_messages_still_move_their_aggregates_sequence() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    h.submit("t1", "b1", "agent-1", 2000)?;
    // A completion by the wrong agent is refused, but it is on t1's subject: the next
    // append to t1 must expect it.
    let (_, refused) = h.push(vec![completed("t1", "agent-2").into()])?;
    assert_eq!(refused, REFUSED);
    assert_eq!(
        h.model.task(&tid("t1"))?.expect("task").last_sequence,
        h.sequence
    );

    h.sequence += 1;
    let poison = PoisonMessage {
        sequence: h.sequence,
        subject: "staging.aicp.evt.payment.t1".into(),
        error: aicp_events::codec::decode_batch(None, b"junk").expect_err("not a batch"),
        payload: bytes_of(b"junk"),
    };
    h.model.apply_poison(&poison)?;
    let view = h.model.task(&tid("t1"))?.expect("task");
    assert_eq!(
        view.payment_sequence, h.sequence,
        "the poison was on t1's payment subject"
    );
    assert_eq!(
        view.task.status,
        TaskStatus::Assigned,
        "nothing else changed"
    );
    Ok(())
}

#[test]
fn an_escrow_that_does_not_match_its_task_is_refused() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    h.push(vec![
        submitted("t1", "b1").into(),
        assigned("t1", "agent-1", 2000, 400_000).into(),
    ])?;
    for (amount, agent_id, buyer) in [
        (1, "agent-1", "b1"),
        (400_000, "agent-2", "b1"),
        (400_000, "agent-1", "b2"),
    ] {
        let (_, outcome) = h.push(vec![EscrowHeld {
            task_id: tid("t1"),
            buyer_id: buyer.parse()?,
            agent_id: agent(agent_id),
            amount_sats: amount,
        }
        .into()])?;
        assert_eq!(outcome, REFUSED, "{amount} {agent_id} {buyer}");
    }
    assert_eq!(h.model.task(&tid("t1"))?.expect("task").payment, None);
    assert_eq!(h.model.balance(&Account::Escrow)?, 0);
    Ok(())
}

#[test]
fn money_for_a_task_that_does_not_exist_is_refused_and_moves_nothing() -> Result<()> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    let (_, outcome) = h.push(vec![EscrowHeld {
        task_id: tid("ghost"),
        buyer_id: "b1".parse()?,
        agent_id: agent("agent-1"),
        amount_sats: 400_000,
    }
    .into()])?;
    assert_eq!(outcome, REFUSED);
    let (_, outcome) = h.push(vec![released("ghost", "agent-1", 400_000).into()])?;
    assert_eq!(outcome, REFUSED);
    assert_eq!(h.model.balance(&Account::Escrow)?, 0);
    assert_eq!(h.model.balance(&Account::Agent(agent("agent-1")))?, 0);
    assert_eq!(h.model.escrow(&tid("ghost"))?, None);
    let report = aicp_projections::invariants::check(&h.model)?;
    assert!(report.failed.is_empty(), "{report:?}");
    Ok(())
}

#[test]
fn a_read_model_of_another_layout_is_emptied_for_a_rebuild() -> Result<()> {
    let dir = tempfile::tempdir()?;
    {
        let model = ReadModel::open(dir.path())?;
        let mut h = Harness {
            dir: tempfile::tempdir()?,
            model,
            sequence: 0,
            history: Vec::new(),
        };
        h.seed_agents()?;
        assert_eq!(h.model.last_sequence()?, 3);
        // Pretend an older version wrote it.
        let mut older = Changes::default();
        older.put_bytes(
            aicp_projections::Table::Meta,
            b"layout_version".to_vec(),
            0u64.to_be_bytes().to_vec(),
        );
        let at = h.model.last_sequence()?;
        h.model.commit(older, at)?;
        h.model.flush()?;
    }
    let reopened = ReadModel::open(dir.path())?;
    assert_eq!(
        reopened.last_sequence()?,
        0,
        "emptied: the projector starts from sequence 1"
    );
    assert!(reopened.agent(&agent("agent-1"))?.is_none());
    drop(reopened);
    // The same layout is kept as it is.
    let model = ReadModel::open(dir.path())?;
    let mut h = Harness {
        dir: tempfile::tempdir()?,
        model,
        sequence: 0,
        history: Vec::new(),
    };
    h.seed_agents()?;
    drop(h);
    assert_eq!(ReadModel::open(dir.path())?.last_sequence()?, 3);
    Ok(())
}

#[test]
fn the_money_invariants_hold_as_tasks_settle_and_name_the_record_that_breaks_them() -> Result<()> {
    use aicp_projections::invariants::check;
    use aicp_projections::Table;

    let mut h = Harness::new()?;
    h.seed_agents()?;
    let price = h.submit("t1", "b1", "agent-1", 2000)?;
    let report = check(&h.model)?;
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report.pending.is_empty(),
        "an open task is not pending settlement"
    );

    // Completed but not settled yet: pending, not a violation.
    h.push(vec![completed("t1", "agent-1").into()])?;
    let report = check(&h.model)?;
    assert!(report.failed.is_empty(), "{report:?}");
    assert_eq!(report.pending.len(), 1, "{report:?}");
    h.push(vec![released("t1", "agent-1", price).into()])?;
    let report = check(&h.model)?;
    assert!(
        report.failed.is_empty() && report.pending.is_empty(),
        "{report:?}"
    );
    assert_eq!(report.passed.len(), 8, "{report:?}");

    // An agent balance booked out of nowhere: unbalanced, and the agent is named.
    let agent_key = Account::Agent(agent("agent-1")).to_string();
    let at = h.model.last_sequence()?;
    let mut broken = Changes::default();
    broken.put_bytes(
        Table::Balances,
        agent_key.as_bytes().to_vec(),
        rmp_serde::to_vec(&(price as i64 + 1))?,
    );
    h.model.commit(broken, at)?;
    let report = check(&h.model)?;
    let failed = report.failed.join("\n");
    assert!(failed.contains("balances sum to 1 sat"), "{failed}");
    assert!(failed.contains("agents/agent-1"), "{failed}");
    let mut repaired = Changes::default();
    repaired.put_bytes(
        Table::Balances,
        agent_key.as_bytes().to_vec(),
        rmp_serde::to_vec(&(price as i64))?,
    );
    h.model.commit(repaired, at)?;

    // A task that claims a refund its ledger does not show.
    let mut view = h.model.task(&tid("t1"))?.expect("task");
    view.payment = Some(EscrowState::Refunded);
    let mut broken = Changes::default();
    broken.put_bytes(Table::Tasks, b"t1".to_vec(), rmp_serde::to_vec(&view)?);
    h.model.commit(broken, at)?;
    let failed = check(&h.model)?.failed.join("\n");
    assert!(failed.contains("tasks/t1"), "{failed}");
    Ok(())
}

/// A model fed message by message: tasks submitted, one settled, one completed.
fn fed_one_by_one() -> Result<Harness> {
    let mut h = Harness::new()?;
    h.seed_agents()?;
    for (task, buyer) in [("t1", "b1"), ("t2", "b2"), ("t3", "b1")] {
        h.submit(task, buyer, "agent-1", 2000)?;
    }
    h.push(vec![completed("t1", "agent-1").into()])?;
    h.push(vec![released("t1", "agent-1", 400_000).into()])?;
    h.push(vec![completed("t2", "agent-1").into()])?;
    Ok(h)
}

#[test]
fn applying_messages_together_equals_applying_them_one_by_one() -> Result<()> {
    use aicp_projections::Message;

    let one_by_one = fed_one_by_one()?;
    let recorded = &one_by_one.history;

    // The same messages in two transactions, the second overlapping the first.
    let together = Harness::new()?;
    let messages = |range: std::ops::Range<usize>| -> Vec<Message> {
        recorded[range]
            .iter()
            .cloned()
            .map(Message::Batch)
            .collect()
    };
    let split = recorded.len() / 2;
    let first = together.model.apply_all(&messages(0..split))?;
    assert!(first.iter().all(|a| *a != Applied::AlreadyApplied));
    let second = together
        .model
        .apply_all(&messages(split - 1..recorded.len()))?;
    assert_eq!(second[0], Applied::AlreadyApplied, "the overlap is skipped");
    assert_eq!(
        together.model.last_sequence()?,
        one_by_one.model.last_sequence()?
    );
    assert_eq!(together.model.digest()?, one_by_one.model.digest()?);
    Ok(())
}

#[test]
fn applying_batches_pipelined_equals_applying_them_one_by_one() -> Result<()> {
    use aicp_projections::Message;

    let one_by_one = fed_one_by_one()?;
    let recorded = &one_by_one.history;

    // Every batch size: each batch reads what the one before it wrote, committed or not.
    for size in 1..=recorded.len() {
        let pipelined = Harness::new()?;
        let mut batches: Vec<Vec<Message>> = recorded
            .chunks(size)
            .map(|chunk| chunk.iter().cloned().map(Message::Batch).collect())
            .collect();
        // A batch applied before is skipped and keeps what is still committing readable.
        let again = recorded[..size]
            .iter()
            .cloned()
            .map(Message::Batch)
            .collect();
        batches.insert(1, again);
        let mut heard = Vec::new();
        let last = pipelined
            .model
            .apply_pipelined(batches, |last, messages| heard.push((last, messages)))?;
        assert_eq!(last, one_by_one.model.last_sequence()?, "batches of {size}");
        assert_eq!(heard.len(), recorded.len().div_ceil(size) + 1);
        assert_eq!(
            pipelined.model.digest()?,
            one_by_one.model.digest()?,
            "batches of {size}"
        );
    }
    Ok(())
}

#[test]
fn compacting_a_rebuilt_model_shrinks_its_file_and_keeps_every_record() -> Result<()> {
    // Many small commits in a row, as a rebuild makes: most of them are not durable, so
    // the pages they supersede stay allocated until the next durable one.
    let mut h = Harness::new()?;
    h.seed_agents()?;
    for n in 0..300 {
        let task = format!("t{n:04}");
        h.submit(&task, "b1", "agent-1", 1000)?;
        h.push(vec![completed(&task, "agent-1").into()])?;
        h.push(vec![released(&task, "agent-1", 200_000).into()])?;
    }
    h.model.flush()?;
    let (digest, last) = (h.model.digest()?, h.model.last_sequence()?);
    let file = h.dir.path().join(aicp_projections::FILE_NAME);
    let before = std::fs::metadata(&file)?.len();

    let Harness { dir, model, .. } = h;
    assert!(
        model.compact()?,
        "a file of many commits has pages to give back"
    );
    let after = std::fs::metadata(&file)?.len();
    assert!(
        after < before,
        "{after} bytes after compaction, {before} before"
    );

    let reopened = ReadModel::open_existing(dir.path())?;
    assert_eq!(reopened.digest()?, digest);
    assert_eq!(reopened.last_sequence()?, last);
    Ok(())
}

#[test]
fn a_keyed_write_keeps_its_key_with_the_task_as_it_left_it_and_the_first_use_wins() -> Result<()> {
    let assigned_to_agent_1 = |task: &str| -> Vec<Event> {
        vec![
            submitted(task, "buyer-001").into(),
            assigned(task, "agent-1", 2000, 400_000).into(),
        ]
    };
    let mut h = Harness::new()?;
    h.seed_agents()?;
    let buyer = Principal::Buyer("buyer-001".parse()?);
    let key = RequestKey::new("order-1", "POST", "/v1/tasks", b"{}")?;
    let first = h.push_keyed(assigned_to_agent_1("aaaa0001"), buyer.clone(), key.clone())?;
    h.push(vec![completed("aaaa0001", "agent-1").into()])?;
    let record = h
        .model
        .request(&buyer, "order-1")?
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    assert_eq!(record.fingerprint, key.fingerprint);
    assert_eq!(record.sequence, first.sequence);
    let task = record.task.ok_or_else(|| anyhow::anyhow!("no task"))?;
    // As the keyed message left it, not as it is now.
    assert_eq!(task.task.status, TaskStatus::Assigned);
    assert_eq!(
        h.model.task(&tid("aaaa0001"))?.map(|t| t.task.status),
        Some(TaskStatus::Completed)
    );
    let report = aicp_projections::invariants::check(&h.model)?;
    assert!(
        report
            .passed
            .iter()
            .any(|p| p == "each of the 1 idempotency keys wrote one message"),
        "{report:?}"
    );

    // The same key again (another request) does not replace the first record; another
    // principal's same key is its own.
    let other = RequestKey::new("order-1", "POST", "/v1/tasks", b"{\"x\":1}")?;
    h.push_keyed(
        assigned_to_agent_1("aaaa0002"),
        buyer.clone(),
        other.clone(),
    )?;
    let again = h
        .model
        .request(&buyer, "order-1")?
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    assert_eq!(again.sequence, first.sequence);
    // ... but is noted on it, and the invariants name it.
    assert_eq!(again.reused_by, vec![h.sequence]);
    let report = aicp_projections::invariants::check(&h.model)?;
    assert!(
        report
            .failed
            .iter()
            .any(|f| f.contains("\"order-1\" of buyer:buyer-001 was written by message")),
        "{report:?}"
    );
    let admin_first = h.push_keyed(assigned_to_agent_1("aaaa0003"), Principal::Admin, other)?;
    let admin = h
        .model
        .request(&Principal::Admin, "order-1")?
        .ok_or_else(|| anyhow::anyhow!("the admin's key has no record"))?;
    assert_eq!(admin.sequence, admin_first.sequence);
    assert!(admin.reused_by.is_empty());
    let buyers = h
        .model
        .request(&buyer, "order-1")?
        .ok_or_else(|| anyhow::anyhow!("no record"))?;
    assert_eq!(
        buyers.reused_by.len(),
        1,
        "another caller's key is not a reuse"
    );
    Ok(())
}

#[test]
fn a_prepaid_buyer_spends_its_deposits_and_refunds_and_releases_give_them_back() -> Result<()> {
    use aicp_events::domain::budget::Limits;
    use aicp_events::id::BuyerId;
    use aicp_projections::invariants::check;
    use aicp_projections::views::ReservationState;

    let mut h = Harness::new()?;
    h.seed_agents()?;
    let b1: BuyerId = "b1".parse()?;
    let day = chrono::NaiveDate::from_ymd_opt(2026, 12, 7).expect("a valid day");
    let reserve = |task: &str, amount_sats: u64| -> Result<Event> {
        Ok(FundsReserved {
            buyer_id: "b1".parse()?,
            task_id: tid(task),
            amount_sats,
            day,
        }
        .into())
    };
    h.push(vec![FundsDeposited {
        buyer_id: b1.clone(),
        amount_sats: 1_000_000,
        reference: "invoice 1".into(),
    }
    .into()])?;
    let (limits_set, _) = h.push(vec![SpendingLimitsSet {
        buyer_id: b1.clone(),
        daily_sats: Some(900_000),
        total_sats: None,
    }
    .into()])?;
    let buyer = h.model.buyer(&b1)?.expect("a buyer with a budget");
    assert_eq!(buyer.last_sequence, limits_set.sequence);

    // Reserved, not stored yet: pending, and the invariants say so without failing.
    h.push(vec![reserve("t1", 400_000)?])?;
    let buyer = h.model.buyer(&b1)?.expect("buyer");
    assert_eq!(buyer.pending_sats, 400_000);
    let report = check(&h.model)?;
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report.pending.iter().any(|p| p.contains("1 reservations")),
        "{report:?}"
    );

    // Stored: the escrow holds what was reserved.
    h.submit("t1", "b1", "agent-1", 2000)?;
    let buyer = h.model.buyer(&b1)?.expect("buyer");
    let budget = buyer.budget.clone().expect("budget");
    assert_eq!((buyer.pending_sats, budget.balance_sats()), (0, 600_000));
    assert_eq!(
        budget.limits,
        Limits {
            daily_sats: Some(900_000),
            total_sats: None
        }
    );
    let held = h.model.reservation(&tid("t1"))?.expect("reservation");
    assert_eq!(held.state, ReservationState::Held);

    // Reserved but never stored: released, the balance is back.
    h.push(vec![reserve("t2", 200_000)?])?;
    h.push(vec![FundsReleased {
        buyer_id: b1.clone(),
        task_id: tid("t2"),
        reason: "task id taken".into(),
    }
    .into()])?;
    let budget = h.model.buyer(&b1)?.and_then(|b| b.budget).expect("budget");
    assert_eq!(budget.balance_sats(), 600_000);
    // A held reservation is not released: its money is in escrow.
    let (_, applied) = h.push(vec![FundsReleased {
        buyer_id: b1.clone(),
        task_id: tid("t1"),
        reason: "wrong".into(),
    }
    .into()])?;
    assert_eq!(applied, REFUSED);

    // Refunded: back in the balance, and the day's spending with it.
    h.push(vec![TaskFailed {
        task_id: tid("t1"),
        agent_id: agent("agent-1"),
        reason: "boom".into(),
    }
    .into()])?;
    h.push(vec![EscrowRefunded {
        task_id: tid("t1"),
        buyer_id: b1.clone(),
        amount_sats: 400_000,
        reason: "task failed".into(),
    }
    .into()])?;
    let budget = h.model.buyer(&b1)?.and_then(|b| b.budget).expect("budget");
    assert_eq!(
        (budget.balance_sats(), budget.spent_on(day)),
        (1_000_000, 0)
    );
    let report = check(&h.model)?;
    assert!(report.failed.is_empty(), "{report:?}");
    assert!(
        report
            .passed
            .iter()
            .any(|p| p.contains("1 prepaid buyers' balance")),
        "{report:?}"
    );

    // A reservation past the balance (a writer that skipped the check) is booked, and
    // `aicp verify` names the buyer.
    h.push(vec![reserve("t3", 2_000_000)?])?;
    let report = check(&h.model)?;
    assert!(
        report
            .failed
            .iter()
            .any(|f| f.starts_with("buyers/b1") && f.contains("deposited only")),
        "{report:?}"
    );
    Ok(())
}
