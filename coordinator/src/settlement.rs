//! Settlement: escrow, payment or refund, and the agent's reputation, for every task —
//! exactly once, whatever is retried, redelivered or crashed.
//!
//! A task's money and its outcome's count ride in the messages of the steps that cause
//! them ([`settles`]): its submission holds the escrow, and its terminal step releases or
//! refunds it and counts the outcome, all under the task's one expected sequence, so a
//! step and what follows from it are stored together or not at all.
//!
//! The process manager here is the repair for what is left over: tasks written before
//! that layout (escrow on the task's payment subject), and any step that did not carry its
//! consequences. Every replica pulls task events from one shared durable consumer
//! (`aicp-process`, see [`crate::task_consumer`]), so each event is handled by one
//! replica at a time. Handling an event does not trust the event alone: it waits until the
//! local read model has applied it, then *reconciles* the task — compares where the task
//! is with where its money and its agent's count are, and appends the next missing step
//! ([`next_step`], a pure function). Each step appends under the expected sequence of the
//! subject it goes to, with a deterministic msg id, so a step taken twice is stored once.
//! Only when nothing is missing is the event acked; a crash before that means
//! redelivery, and reconciling again finishes the job.

use aicp_events::domain::access::Principal;
use aicp_events::domain::ledger::EscrowState;
use aicp_events::domain::task::TaskStatus;
use aicp_events::event::{AgentOutcomeCounted, EscrowHeld, EscrowRefunded, EscrowReleased, Event};

use aicp_events::id::TaskId;
use aicp_events::store::AppendError;
use aicp_events::{Aggregate, Envelope, Expected};
use aicp_projections::views::{AgentView, TaskView};

use crate::state::AppState;

use crate::task_consumer::{Retry, CATCH_UP};

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

/// The escrow a task assigned in `view` must hold.
pub fn escrow(view: &TaskView) -> Option<Event> {
    let t = &view.task;
    match (&t.agent_id, t.price_sats, view.payment) {
        (Some(agent_id), Some(price), None) => Some(
            EscrowHeld {
                task_id: t.task_id.clone(),
                buyer_id: t.buyer_id.clone(),
                agent_id: agent_id.clone(),
                amount_sats: price,
            }
            .into(),
        ),
        _ => None,
    }
}

/// What follows from a task having reached `view`, in order: its held escrow released on
/// completion or refunded on failure, cancellation or expiry, and a completion or failure
/// counted on its agent's reputation. Empty while it is not terminal, or when all of it
/// is done.
pub fn settles(view: &TaskView) -> Vec<Event> {
    let t = &view.task;
    let id = &t.task_id;
    let mut events = Vec::new();
    if let (Some(agent_id), Some(price), Some(EscrowState::Held)) =
        (&t.agent_id, t.price_sats, view.payment)
    {
        match t.status {
            TaskStatus::Completed => events.push(
                EscrowReleased {
                    task_id: id.clone(),
                    agent_id: agent_id.clone(),
                    amount_sats: price,
                }
                .into(),
            ),
            status if status.is_terminal() => events.push(
                EscrowRefunded {
                    task_id: id.clone(),
                    buyer_id: t.buyer_id.clone(),
                    amount_sats: price,
                    reason: format!("task {status}"),
                }
                .into(),
            ),
            _ => {}
        }
    }
    let success = match t.status {
        TaskStatus::Completed => Some(true),
        TaskStatus::Failed => Some(false),
        _ => None,
    };
    if let (Some(success), Some(agent_id), false) = (success, &t.agent_id, view.outcome_recorded) {
        events.push(
            AgentOutcomeCounted {
                task_id: id.clone(),
                agent_id: agent_id.clone(),
                success,
            }
            .into(),
        );
    }
    events
}

/// The next step a task needs, if any: hold escrow once an agent and price are fixed,
/// then what [`settles`] says follows, one at a time. Money goes to the task's payment
/// subject, where an older task's escrow is; the count to the task's own. An outcome is
/// counted only for an agent the read model knows (`agent`).
pub fn next_step(task: &TaskView, agent: Option<&AgentView>) -> Option<Step> {
    let id = &task.task.task_id;
    let payment = |event: Event, msg_id: String| Step {
        aggregate: Aggregate::Payment(id.clone()),
        event,
        expected: task.payment_sequence,
        msg_id,
    };
    if let Some(held) = escrow(task) {
        return Some(payment(held, format!("escrow:{id}")));
    }
    let known = agent.is_some_and(|a| Some(&a.agent_id) == task.task.agent_id.as_ref());
    settles(task).into_iter().find_map(|event| match event {
        Event::AgentOutcomeCounted(_) if !known => None,
        Event::AgentOutcomeCounted(_) => Some(Step {
            aggregate: Aggregate::Task(id.clone()),
            event,
            expected: task.last_sequence,
            msg_id: format!("outcome:{id}"),
        }),
        money => Some(payment(money, format!("settle:{id}"))),
    })
}

/// Takes every missing step for `task_id`, until none is missing.
pub async fn reconcile(state: &AppState, task_id: &TaskId) -> Result<(), Retry> {
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
            tracing::warn!(task = %task_id, "the task's agent is not in the read model; its outcome cannot be counted");
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
        let wait_for = match append(state, &step).await {
            Ok(appended) => {
                state.metrics.settlement_steps.inc();
                conflicted = None;
                appended.sequence
            }
            // Someone appended to the aggregate since the read model saw it: catch up
            // with the stream as it is now, then decide again.
            Err(AppendError::Conflict { .. }) => {
                conflicted = Some(step);
                state
                    .store
                    .last_sequence()
                    .await
                    .map_err(|e| Retry(e.to_string()))?
            }
            Err(e) => return Err(Retry(e.to_string())),
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
        let step = next_step(&paid, Some(&agent())).expect("an outcome to count");
        assert_eq!(
            (&step.aggregate, step.expected, step.msg_id.as_str()),
            (&Aggregate::Task("t1".parse().expect("id")), 3, "outcome:t1")
        );
        let Event::AgentOutcomeCounted(outcome) = step.event else {
            panic!("not an outcome")
        };
        assert!(outcome.success);
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
            event: Event::AgentOutcomeCounted(o),
            ..
        }) = next_step(&refunded, Some(&agent()))
        else {
            panic!("expected an outcome")
        };
        assert!(!o.success);
        assert_eq!(
            next_step(&refunded, None),
            None,
            "an agent the read model does not know is not counted"
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

    #[test]
    fn a_terminal_step_carries_its_whole_settlement() {
        let done = view(
            &[submitted(), assigned(), completed()],
            Some(EscrowState::Held),
            false,
        );
        let kinds: Vec<_> = settles(&done).iter().map(Event::event_type).collect();
        assert_eq!(kinds, ["EscrowReleased", "AgentOutcomeCounted"]);
        let cancelled = view(
            &[submitted(), assigned(), cancelled()],
            Some(EscrowState::Held),
            false,
        );
        let kinds: Vec<_> = settles(&cancelled).iter().map(Event::event_type).collect();
        assert_eq!(kinds, ["EscrowRefunded"]);
        let running = view(&[submitted(), assigned()], Some(EscrowState::Held), false);
        assert!(settles(&running).is_empty());
        let settled = view(
            &[submitted(), assigned(), completed()],
            Some(EscrowState::Released),
            true,
        );
        assert!(settles(&settled).is_empty());
    }
}
