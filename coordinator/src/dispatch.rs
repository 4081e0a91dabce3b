//! The dispatcher: every assignment of an agent in `worker` mode becomes one message on
//! that agent's work queue (`aicp.work.<agent_id>` in `AICP_WORK`), where workers pull it.
//!
//! It runs on the process managers' shared durable consumer of task events
//! (`aicp-process`, see [`crate::task_consumer`]), before settlement. It decides from the read model ([`work_for`], pure): a task
//! that is assigned and not yet started, to an agent in worker mode, gets a work message.
//! The msg id `work:<task_id>:<assignment>` makes a repeated dispatch a no-op, and a worker
//! that receives work for a task that has moved on acks it and does nothing. Agents in
//! `manual` mode are never dispatched: people complete their tasks through the API.

use aicp_events::domain::task::TaskStatus;
use aicp_events::event::AgentMode;
use aicp_events::id::TaskId;
use aicp_events::work::WorkItem;
use aicp_projections::views::{AgentView, TaskView};

use crate::state::AppState;
use crate::task_consumer::Retry;

/// The work message a task needs now, if any.
pub fn work_for(task: &TaskView, agent: &AgentView) -> Option<WorkItem> {
    let t = &task.task;
    let assigned_here = t.agent_id.as_ref() == Some(&agent.agent_id);
    if t.status != TaskStatus::Assigned || !assigned_here || agent.mode != AgentMode::Worker {
        return None;
    }
    Some(WorkItem {
        task_id: t.task_id.clone(),
        assignment: t.assignment,
        agent_id: agent.agent_id.clone(),
        description: t.description.clone(),
        complexity: t.complexity.get(),
        required_skills: t.required_skills.clone(),
        price_sats: t.price_sats.unwrap_or(0),
        deadline: t.deadline,
        success_rate_bp: agent.rate_bp,
        executor: agent.executor.clone(),
    })
}

/// Dispatches `task_id` if it needs it.
pub async fn dispatch(state: &AppState, task_id: &TaskId) -> Result<(), Retry> {
    let Some(task) = state
        .model
        .task(task_id)
        .map_err(|e| Retry(e.to_string()))?
    else {
        return Ok(());
    };
    let Some(agent_id) = &task.task.agent_id else {
        return Ok(());
    };
    let Some(agent) = state
        .model
        .agent(agent_id)
        .map_err(|e| Retry(e.to_string()))?
    else {
        tracing::warn!(task = %task_id, agent = %agent_id, "cannot dispatch: the agent is not in the read model");
        return Ok(());
    };
    let Some(item) = work_for(&task, &agent) else {
        return Ok(());
    };
    let dispatched = state
        .store
        .dispatch(&item)
        .await
        .map_err(|e| Retry(e.to_string()))?;
    if !dispatched.duplicate {
        state.metrics.dispatched.inc();
        tracing::debug!(task = %task_id, agent = %agent_id, "dispatched");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use aicp_events::domain::assign::Policy;
    use aicp_events::domain::pricing::{Complexity, MultiplierMilli};
    use aicp_events::domain::reputation::Reputation;
    use aicp_events::domain::task::Task;
    use aicp_events::event::{Event, TaskAssigned, TaskStarted, TaskSubmitted};
    use chrono::Utc;

    fn task(events: &[Event]) -> TaskView {
        TaskView {
            task: Task::replay(events).expect("legal").expect("a task"),
            submitted_seq: 1,
            created_at: Utc::now(),
            updated_at: Utc::now(),
            finished_at: None,
            payment: None,
            payment_sequence: 0,
            outcome_recorded: false,
            last_sequence: 1,
        }
    }

    fn agent(mode: AgentMode) -> AgentView {
        let reputation = Reputation::seeded(9000).expect("valid");
        AgentView {
            agent_id: "agent-2".parse().expect("id"),
            name: "agent-2".into(),
            skills: Default::default(),
            mode,
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
            last_sequence: 1,
        }
    }

    fn events() -> Vec<Event> {
        vec![
            TaskSubmitted {
                task_id: "t1".parse().expect("id"),
                buyer_id: "b1".parse().expect("id"),
                description: "x".into(),
                complexity: Complexity::new(3).expect("valid"),
                required_skills: Default::default(),
                max_price_sats: None,
                deadline: None,
                policy: Policy::BestReputation,
            }
            .into(),
            TaskAssigned {
                task_id: "t1".parse().expect("id"),
                agent_id: "agent-2".parse().expect("id"),
                multiplier: MultiplierMilli(1800),
                price_sats: 540_000,
                assignment: 1,
            }
            .into(),
        ]
    }

    #[test]
    fn an_assigned_task_of_a_worker_agent_gets_work() {
        let item = work_for(&task(&events()), &agent(AgentMode::Worker)).expect("work");
        assert_eq!(
            (item.assignment, item.price_sats, item.success_rate_bp),
            (1, 540_000, 9000)
        );
        assert_eq!(item.msg_id(), "work:t1:1");
    }

    #[test]
    fn manual_agents_and_started_tasks_get_none() {
        assert_eq!(work_for(&task(&events()), &agent(AgentMode::Manual)), None);
        let mut started = events();
        started.push(
            TaskStarted {
                task_id: "t1".parse().expect("id"),
                agent_id: "agent-2".parse().expect("id"),
                assignment: 1,
                worker_id: "w".into(),
            }
            .into(),
        );
        assert_eq!(work_for(&task(&started), &agent(AgentMode::Worker)), None);
    }
}
