//! The settlement process manager: escrow, payment or refund, and the agent's reputation,
//! for every task — exactly once, whatever is retried, redelivered or crashed.
//!
//! Every replica pulls task events from one shared durable consumer (`aicp-settlement`,
//! see [`crate::task_consumer`]), so each event is handled by one replica at a time. Handling an event does not trust
//! the event alone: it waits until the local read model has applied it, then *reconciles*
//! the task — compares where the task is with where its money and its agent's record are,
//! and appends the next missing step ([`next_step`], a pure function). Each step appends
//! under the expected sequence of the aggregate it changes, with a deterministic msg id,
//! so a step taken twice is stored once. Only when nothing is missing is the event acked;
//! a crash before that means redelivery, and reconciling again finishes the job.

use aicp_events::domain::access::Principal;
use aicp_events::domain::ledger::EscrowState;
use aicp_events::domain::task::TaskStatus;
use aicp_events::event::{AgentOutcomeRecorded, EscrowHeld, EscrowRefunded, EscrowReleased, Event};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aicp_events::id::{AgentId, TaskId};
use aicp_events::store::AppendError;
use aicp_events::{Aggregate, Envelope, Expected};
use aicp_projections::views::{AgentView, TaskView};

use crate::state::AppState;

use crate::task_consumer::{self, Retry, CATCH_UP};

/// A step that is missing for a task.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The aggregate to append to.
    pub aggregate: Aggregate,
    /// The event to append.
    pub event: Event,
    /// The aggregate's last sequence as the read model knows it.
    pub expected: u64,
    /// De-duplicates a retried step.
    pub msg_id: String,
}

/// The next step a task needs, if any: hold escrow once an agent and price are fixed,
/// then release it on completion or refund it on failure, cancellation or expiry, and
/// record a completion or failure on the agent's reputation.
pub fn next_step(task: &TaskView, agent: Option<&AgentView>) -> Option<Step> {
    let t = &task.task;
    let id = &t.task_id;
    let payment = |event: Event, msg_id: String| Step {
        aggregate: Aggregate::Payment(id.clone()),
        event,
        expected: task.payment_sequence,
        msg_id,
    };
    if let (Some(agent_id), Some(price)) = (&t.agent_id, t.price_sats) {
        match task.payment {
            None => {
                return Some(payment(
                    EscrowHeld {
                        task_id: id.clone(),
                        buyer_id: t.buyer_id.clone(),
                        agent_id: agent_id.clone(),
                        amount_sats: price,
                    }
                    .into(),
                    format!("escrow:{id}"),
                ))
            }
            Some(EscrowState::Held) if t.status == TaskStatus::Completed => {
                return Some(payment(
                    EscrowReleased {
                        task_id: id.clone(),
                        agent_id: agent_id.clone(),
                        amount_sats: price,
                    }
                    .into(),
                    format!("settle:{id}"),
                ))
            }
            Some(EscrowState::Held) if t.status.is_terminal() => {
                return Some(payment(
                    EscrowRefunded {
                        task_id: id.clone(),
                        buyer_id: t.buyer_id.clone(),
                        amount_sats: price,
                        reason: format!("task {}", t.status),
                    }
                    .into(),
                    format!("settle:{id}"),
                ))
            }
            _ => {}
        }
    }
    let success = match t.status {
        TaskStatus::Completed => true,
        TaskStatus::Failed => false,
        _ => return None,
    };
    let agent = agent.filter(|a| Some(&a.agent_id) == t.agent_id.as_ref())?;
    if task.outcome_recorded {
        return None;
    }
    let reputation = agent.reputation.record(success);
    Some(Step {
        aggregate: Aggregate::Agent(agent.agent_id.clone()),
        event: AgentOutcomeRecorded {
            agent_id: agent.agent_id.clone(),
            task_id: id.clone(),
            success,
            successes: reputation.successes,
            failures: reputation.failures,
            rate_bp: reputation.rate_bp(),
            multiplier: reputation.multiplier(),
        }
        .into(),
        expected: agent.last_sequence,
        msg_id: format!("outcome:{id}"),
    })
}

/// Each agent's record as this replica last appended an outcome to it.
///
/// Outcomes of one agent append under its expected sequence, so they go one at a time
/// whatever runs concurrently; waiting for the read model between two of them held every
/// agent to a few hundred tasks/s. Under the agent's lock, the next outcome starts from
/// the newer of this record and the read model's, and its append's expected sequence
/// still guards against everything else (another replica, a stale record).
#[derive(Default)]
pub struct AgentRecords {
    agents: Mutex<HashMap<AgentId, Arc<tokio::sync::Mutex<Option<AgentView>>>>>,
}

impl AgentRecords {
    fn of(&self, agent: &AgentId) -> Arc<tokio::sync::Mutex<Option<AgentView>>> {
        // Poisoning cannot leave the map inconsistent: inserts are single calls.
        let mut agents = self.agents.lock().unwrap_or_else(|e| e.into_inner());
        agents.entry(agent.clone()).or_default().clone()
    }
}

/// Takes every missing step for `task_id`, until none is missing.
pub async fn reconcile(
    state: &AppState,
    records: &AgentRecords,
    task_id: &TaskId,
) -> Result<(), Retry> {
    // A task needs at most four steps (hold, settle, outcome, and a repeat after a race).
    let mut conflicted: Option<Step> = None;
    for _ in 0..8 {
        let task = state
            .model
            .task(task_id)
            .map_err(|e| Retry(e.to_string()))?;
        let Some(task) = task else {
            // The read model refused this task's events: nothing to settle.
            return Ok(());
        };
        let agent = match &task.task.agent_id {
            Some(id) => state.model.agent(id).map_err(|e| Retry(e.to_string()))?,
            None => None,
        };
        if agent.is_none() && task.task.agent_id.is_some() {
            tracing::warn!(task = %task_id, "the task's agent is not in the read model; its outcome cannot be recorded");
        }
        let Some(step) = next_step(&task, agent.as_ref()) else {
            return Ok(());
        };
        if conflicted.as_ref() == Some(&step) {
            // Caught up with the stream and still the same decision: not ours to force.
            return Err(Retry(format!(
                "{} keeps conflicting at sequence {}",
                step.msg_id, step.expected
            )));
        }
        let result = match (&step.aggregate, agent) {
            (Aggregate::Agent(agent_id), Some(agent)) => {
                let record = records.of(agent_id);
                let mut record = record.lock().await;
                // Ours is newer while the read model has not applied our last outcome.
                let agent = match record.as_ref() {
                    Some(ours) if ours.last_sequence > agent.last_sequence => ours.clone(),
                    _ => agent,
                };
                let Some(step) = next_step(&task, Some(&agent)) else {
                    return Ok(());
                };
                let appended = append(state, &step).await;
                // Only an outcome stored now is known to make the record this one.
                *record = match (&appended, &step.event) {
                    (Ok(appended), Event::AgentOutcomeRecorded(e)) if !appended.duplicate => {
                        let mut agent = agent;
                        agent.record_outcome(e, appended.sequence);
                        Some(agent)
                    }
                    _ => None,
                };
                appended.map_err(|e| (e, step))
            }
            _ => append(state, &step).await.map_err(|e| (e, step)),
        };
        let wait_for = match result {
            Ok(appended) => {
                state.metrics.settlement_steps.inc();
                conflicted = None;
                appended.sequence
            }
            // Someone appended to the aggregate since the read model saw it: catch up
            // with the stream as it is now, then decide again.
            Err((AppendError::Conflict { .. }, step)) => {
                conflicted = Some(step);
                state
                    .store
                    .last_sequence()
                    .await
                    .map_err(|e| Retry(e.to_string()))?
            }
            Err((e, _)) => return Err(Retry(e.to_string())),
        };
        if !state.progress.wait_for(wait_for, CATCH_UP).await {
            return Err(Retry(format!("read model has not reached {wait_for}")));
        }
    }
    Err(Retry(format!(
        "task {task_id} did not settle after 8 steps"
    )))
}

/// Appends one step.
async fn append(state: &AppState, step: &Step) -> Result<aicp_events::Appended, AppendError> {
    state
        .append(
            &step.aggregate,
            &[Envelope::new(step.event.clone()).by(Principal::Coordinator)],
            Expected::Sequence(step.expected),
            Some(&step.msg_id),
        )
        .await
}

/// The shared durable consumer of the settlement manager.
pub use aicp_events::consumers::SETTLEMENT;

/// Runs the process manager until `shutdown`.
pub async fn run(state: AppState, shutdown: impl std::future::Future<Output = ()>) {
    let records = Arc::new(AgentRecords::default());
    task_consumer::run(
        state,
        SETTLEMENT,
        move |state, task_id| {
            let records = records.clone();
            async move { reconcile(&state, &records, &task_id).await }
        },
        shutdown,
    )
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicp_events::domain::assign::Policy;
    use aicp_events::domain::pricing::{Complexity, MultiplierMilli};
    use aicp_events::domain::reputation::Reputation;
    use aicp_events::domain::task::Task;
    use aicp_events::event::{
        AgentMode, TaskAssigned, TaskCancelled, TaskCompleted, TaskFailed, TaskSubmitted,
    };
    use chrono::Utc;

    fn view(events: &[Event], payment: Option<EscrowState>, outcome_recorded: bool) -> TaskView {
        let task = Task::replay(events).expect("legal events").expect("a task");
        TaskView {
            task,
            submitted_seq: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
            payment,
            payment_sequence: if payment.is_some() { 7 } else { 0 },
            outcome_recorded,
            last_sequence: 3,
        }
    }

    fn submitted() -> Event {
        TaskSubmitted {
            task_id: "t1".parse().expect("id"),
            buyer_id: "b1".parse().expect("id"),
            description: "x".into(),
            complexity: Complexity::new(2).expect("valid"),
            required_skills: Default::default(),
            max_price_sats: None,
            deadline: None,
            policy: Policy::BestReputation,
        }
        .into()
    }

    fn assigned() -> Event {
        TaskAssigned {
            task_id: "t1".parse().expect("id"),
            agent_id: "agent-1".parse().expect("id"),
            multiplier: MultiplierMilli(2000),
            price_sats: 400_000,
            assignment: 1,
        }
        .into()
    }

    fn completed() -> Event {
        TaskCompleted {
            task_id: "t1".parse().expect("id"),
            agent_id: "agent-1".parse().expect("id"),
            result: "ok".into(),
        }
        .into()
    }

    fn failed() -> Event {
        TaskFailed {
            task_id: "t1".parse().expect("id"),
            agent_id: "agent-1".parse().expect("id"),
            reason: "no".into(),
        }
        .into()
    }

    fn cancelled() -> Event {
        TaskCancelled {
            task_id: "t1".parse().expect("id"),
            buyer_id: "b1".parse().expect("id"),
            reason: String::new(),
        }
        .into()
    }

    fn agent() -> AgentView {
        let reputation = Reputation::seeded(9500).expect("valid");
        AgentView {
            agent_id: "agent-1".parse().expect("id"),
            name: "agent-1".into(),
            skills: Default::default(),
            mode: AgentMode::Worker,
            accepting: true,
            executor: None,
            reputation,
            rate_bp: reputation.rate_bp(),
            multiplier: reputation.multiplier(),
            balance_sats: 0,
            active_tasks: 1,
            tasks_completed: 0,
            tasks_failed: 0,
            tasks_assigned: 1,
            registered_at: Utc::now(),
            last_sequence: 11,
        }
    }

    fn kind(step: Option<Step>) -> Option<(&'static str, u64, String)> {
        step.map(|s| (s.event.event_type(), s.expected, s.msg_id))
    }

    #[test]
    fn an_assigned_task_gets_its_escrow_held_once() {
        let task = view(&[submitted(), assigned()], None, false);
        assert_eq!(
            kind(next_step(&task, Some(&agent()))),
            Some(("EscrowHeld", 0, "escrow:t1".into()))
        );
        let held = view(&[submitted(), assigned()], Some(EscrowState::Held), false);
        assert_eq!(
            next_step(&held, Some(&agent())),
            None,
            "nothing to do while it runs"
        );
    }

    #[test]
    fn completion_releases_then_records_a_success() {
        let done = view(
            &[submitted(), assigned(), completed()],
            Some(EscrowState::Held),
            false,
        );
        assert_eq!(
            kind(next_step(&done, Some(&agent()))),
            Some(("EscrowReleased", 7, "settle:t1".into()))
        );
        let paid = view(
            &[submitted(), assigned(), completed()],
            Some(EscrowState::Released),
            false,
        );
        let step = next_step(&paid, Some(&agent())).expect("an outcome to record");
        assert_eq!((step.expected, step.msg_id.as_str()), (11, "outcome:t1"));
        let Event::AgentOutcomeRecorded(outcome) = step.event else {
            panic!("not an outcome")
        };
        assert_eq!(
            (outcome.success, outcome.successes, outcome.rate_bp),
            (true, 1, 9523)
        );
        let recorded = view(
            &[submitted(), assigned(), completed()],
            Some(EscrowState::Released),
            true,
        );
        assert_eq!(next_step(&recorded, Some(&agent())), None);
    }

    #[test]
    fn failure_refunds_then_records_a_failure() {
        let failed = view(
            &[submitted(), assigned(), failed()],
            Some(EscrowState::Held),
            false,
        );
        assert_eq!(
            kind(next_step(&failed, Some(&agent()))).map(|k| k.0),
            Some("EscrowRefunded")
        );
        let refunded = view(
            &[submitted(), assigned(), self::failed()],
            Some(EscrowState::Refunded),
            false,
        );
        let Some(Step {
            event: Event::AgentOutcomeRecorded(o),
            ..
        }) = next_step(&refunded, Some(&agent()))
        else {
            panic!("expected an outcome")
        };
        assert_eq!(
            (o.success, o.failures, o.multiplier),
            (false, 1, MultiplierMilli(1800))
        );
    }

    #[test]
    fn a_cancellation_is_refunded_and_is_nobodys_outcome() {
        let cancelled = view(
            &[submitted(), assigned(), cancelled()],
            Some(EscrowState::Held),
            false,
        );
        assert_eq!(
            kind(next_step(&cancelled, Some(&agent()))).map(|k| k.0),
            Some("EscrowRefunded")
        );
        let refunded = view(
            &[submitted(), assigned(), self::cancelled()],
            Some(EscrowState::Refunded),
            false,
        );
        assert_eq!(next_step(&refunded, Some(&agent())), None);
    }

    #[test]
    fn a_crash_before_escrow_is_repaired_in_order() {
        // Completed, but the escrow was never held (the coordinator died in between):
        // hold first; the release follows on the next step.
        let done = view(&[submitted(), assigned(), completed()], None, false);
        assert_eq!(
            kind(next_step(&done, Some(&agent()))).map(|k| k.0),
            Some("EscrowHeld")
        );
    }
}
