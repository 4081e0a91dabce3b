//! The task state machine.
//!
//! ```text
//! submitted ──assign──▶ assigned ──start──▶ running ──▶ completed | failed | expired
//!     │                    │  ▲                │ ▲
//!     │                    │  └── (none)       └─┘ start again (a redelivered work message)
//!     ├──cancel / expire───┤
//!     │                    └──complete / fail──▶ completed | failed   (manual agents skip start)
//! ```
//!
//! Besides the order, each event must agree with the task: an assignment is the next one,
//! priced by the rule and within the buyer's cap; start, complete and fail name the
//! assigned agent; only the task's buyer cancels; an expiry names the task's deadline.
//!
//! Completed, failed, cancelled and expired are terminal: nothing leaves them. Every illegal
//! transition is a [`TransitionError`], never a panic, so a command handler can answer 409
//! and a projection can count the event as rejected and go on.

use std::collections::BTreeSet;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::domain::assign::Policy;
use crate::domain::pricing::{price_sats, Complexity, MultiplierMilli};
use crate::event::{Event, TaskAssigned, TaskSubmitted};
use crate::id::{AgentId, BuyerId, TaskId};
use crate::subject::Aggregate;

/// Where a task is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskStatus {
    /// Accepted from the buyer, no agent yet.
    Submitted,
    /// An agent is chosen and the price is in escrow.
    Assigned,
    /// A worker is executing it.
    Running,
    /// Done; the agent was paid.
    Completed,
    /// Failed; the buyer was refunded.
    Failed,
    /// Cancelled by the buyer before it ran; refunded.
    Cancelled,
    /// Passed its deadline unfinished; refunded.
    Expired,
}

impl TaskStatus {
    /// Every status, in lifecycle order.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Submitted,
        TaskStatus::Assigned,
        TaskStatus::Running,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
        TaskStatus::Expired,
    ];

    /// True for the statuses nothing leaves.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed
                | TaskStatus::Failed
                | TaskStatus::Cancelled
                | TaskStatus::Expired
        )
    }

    /// The status as the API writes it (`"assigned"`).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Submitted => "submitted",
            TaskStatus::Assigned => "assigned",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Expired => "expired",
        }
    }
}

impl fmt::Display for TaskStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for TaskStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
            .ok_or_else(|| format!("unknown task status {s:?}"))
    }
}

/// An event that may not happen to a task in its current state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TransitionError {
    /// Only `TaskSubmitted` can start a task.
    #[error("a task starts with TaskSubmitted, not {event}")]
    NotSubmitted {
        /// The event type that came first.
        event: &'static str,
    },
    /// The task is finished; nothing changes it any more.
    #[error("task {task_id} is already {status}: {event} is not allowed")]
    Terminal {
        /// The task.
        task_id: TaskId,
        /// Its terminal status.
        status: TaskStatus,
        /// The event type refused.
        event: &'static str,
    },
    /// The event does not follow from the current status.
    #[error("task {task_id} is {status}: {event} is not allowed")]
    Illegal {
        /// The task.
        task_id: TaskId,
        /// Its current status.
        status: TaskStatus,
        /// The event type refused.
        event: &'static str,
    },
    /// The event names another agent than the one assigned.
    #[error("task {task_id} is assigned to {assigned}, not {got}")]
    WrongAgent {
        /// The task.
        task_id: TaskId,
        /// The agent it is assigned to.
        assigned: AgentId,
        /// The agent the event names.
        got: AgentId,
    },
    /// An assignment or start with another assignment number than the one expected.
    #[error("task {task_id} expects assignment {expected}, not {got}")]
    WrongAssignment {
        /// The task.
        task_id: TaskId,
        /// The assignment number expected.
        expected: u32,
        /// The assignment number the event names.
        got: u32,
    },
    /// An assignment whose price is not what the pricing rule gives.
    #[error("task {task_id} at {multiplier} costs {expected} sat, not {got}")]
    WrongPrice {
        /// The task.
        task_id: TaskId,
        /// The multiplier of the assignment.
        multiplier: MultiplierMilli,
        /// The price the rule gives.
        expected: u64,
        /// The price the event names.
        got: u64,
    },
    /// An assignment above the buyer's price cap.
    #[error("task {task_id}: {price_sats} sat is above the buyer's cap of {max_price_sats} sat")]
    OverPriceCap {
        /// The task.
        task_id: TaskId,
        /// The assignment's price.
        price_sats: u64,
        /// The buyer's cap.
        max_price_sats: u64,
    },
    /// A cancellation by someone other than the task's buyer.
    #[error("task {task_id} belongs to {owner}, not {got}")]
    WrongBuyer {
        /// The task.
        task_id: TaskId,
        /// The buyer who submitted it.
        owner: BuyerId,
        /// The buyer the event names.
        got: BuyerId,
    },
    /// An expiry that does not match the task's deadline (or a task without one).
    #[error("task {task_id} has deadline {deadline:?}; it cannot expire at {got}")]
    WrongDeadline {
        /// The task.
        task_id: TaskId,
        /// Its deadline, if it has one.
        deadline: Option<DateTime<Utc>>,
        /// The deadline the event names.
        got: DateTime<Utc>,
    },
    /// The event is about a different task, or not about a task at all.
    #[error("{event} does not belong to task {task_id}")]
    NotThisTask {
        /// The task.
        task_id: TaskId,
        /// The event type.
        event: &'static str,
    },
}

/// A task folded from its events.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Task {
    /// The task.
    pub task_id: TaskId,
    /// Who pays for it.
    pub buyer_id: BuyerId,
    /// What is to be done.
    pub description: String,
    /// 1..=10.
    pub complexity: Complexity,
    /// Skills the agent must have.
    pub required_skills: BTreeSet<String>,
    /// The buyer's price cap.
    pub max_price_sats: Option<u64>,
    /// When it expires.
    pub deadline: Option<DateTime<Utc>>,
    /// How its agent is chosen.
    pub policy: Policy,
    /// Where it is in its life.
    pub status: TaskStatus,
    /// The agent it is assigned to, once assigned.
    pub agent_id: Option<AgentId>,
    /// The multiplier at assignment.
    pub multiplier: Option<MultiplierMilli>,
    /// The price at assignment.
    pub price_sats: Option<u64>,
    /// The current assignment number; 0 before the first.
    pub assignment: u32,
    /// The worker executing it, once started.
    pub worker_id: Option<String>,
    /// What the agent produced, once completed.
    pub result: Option<String>,
    /// Why it failed, was cancelled or expired.
    pub reason: Option<String>,
}

impl Task {
    /// A task as it is right after it was submitted.
    pub fn submitted(e: &TaskSubmitted) -> Task {
        Task {
            task_id: e.task_id.clone(),
            buyer_id: e.buyer_id.clone(),
            description: e.description.clone(),
            complexity: e.complexity,
            required_skills: e.required_skills.clone(),
            max_price_sats: e.max_price_sats,
            deadline: e.deadline,
            policy: e.policy,
            status: TaskStatus::Submitted,
            agent_id: None,
            multiplier: None,
            price_sats: None,
            assignment: 0,
            worker_id: None,
            result: None,
            reason: None,
        }
    }

    /// Folds a task's events, oldest first; `Ok(None)` if there are none. Events that
    /// share the task's subject without being its steps (its money) are passed over.
    pub fn replay<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> Result<Option<Task>, TransitionError> {
        let mut task: Option<Task> = None;
        for event in events.into_iter().filter(|e| e.is_task_step()) {
            task = Some(match task {
                None => Task::start(event)?,
                Some(mut t) => {
                    t.apply(event)?;
                    t
                }
            });
        }
        Ok(task)
    }

    /// Folds a task's events as a projection does: an event the rules refuse is skipped
    /// (and counted), not fatal, so one bad event in the stream cannot make a task
    /// unreadable forever. Returns the task, if any, and how many events were skipped.
    pub fn replay_skipping_refused<'a>(
        events: impl IntoIterator<Item = &'a Event>,
    ) -> (Option<Task>, usize) {
        let mut task: Option<Task> = None;
        let mut skipped = 0;
        for event in events.into_iter().filter(|e| e.is_task_step()) {
            let result = match &mut task {
                None => Task::start(event).map(|t| task = Some(t)),
                Some(t) => t.apply(event),
            };
            if result.is_err() {
                skipped += 1;
            }
        }
        (task, skipped)
    }

    /// The task a first event creates; only `TaskSubmitted` can.
    pub fn start(event: &Event) -> Result<Task, TransitionError> {
        match event {
            Event::TaskSubmitted(e) => Ok(Task::submitted(e)),
            other => Err(TransitionError::NotSubmitted {
                event: other.event_type(),
            }),
        }
    }

    /// Applies one event; on error the task is unchanged.
    pub fn apply(&mut self, event: &Event) -> Result<(), TransitionError> {
        if event.aggregate() != Aggregate::Task(self.task_id.clone()) {
            return Err(TransitionError::NotThisTask {
                task_id: self.task_id.clone(),
                event: event.event_type(),
            });
        }
        if self.status.is_terminal() {
            return Err(TransitionError::Terminal {
                task_id: self.task_id.clone(),
                status: self.status,
                event: event.event_type(),
            });
        }
        use TaskStatus::*;
        match (self.status, event) {
            (Submitted, Event::TaskAssigned(e)) => {
                self.check_assignment(e)?;
                self.status = Assigned;
                self.agent_id = Some(e.agent_id.clone());
                self.multiplier = Some(e.multiplier);
                self.price_sats = Some(e.price_sats);
                self.assignment = e.assignment;
            }
            // Running -> running: a work message redelivered after a worker died restarts it.
            (Assigned | Running, Event::TaskStarted(e)) => {
                self.check_agent(&e.agent_id)?;
                if e.assignment != self.assignment {
                    return Err(TransitionError::WrongAssignment {
                        task_id: self.task_id.clone(),
                        expected: self.assignment,
                        got: e.assignment,
                    });
                }
                self.status = Running;
                self.worker_id = Some(e.worker_id.clone());
            }
            (Assigned | Running, Event::TaskCompleted(e)) => {
                self.check_agent(&e.agent_id)?;
                self.status = Completed;
                self.result = Some(e.result.clone());
            }
            (Assigned | Running, Event::TaskFailed(e)) => {
                self.check_agent(&e.agent_id)?;
                self.status = Failed;
                self.reason = Some(e.reason.clone());
            }
            (Submitted | Assigned, Event::TaskCancelled(e)) => {
                if e.buyer_id != self.buyer_id {
                    return Err(TransitionError::WrongBuyer {
                        task_id: self.task_id.clone(),
                        owner: self.buyer_id.clone(),
                        got: e.buyer_id.clone(),
                    });
                }
                self.status = Cancelled;
                self.reason = Some(e.reason.clone());
            }
            (Submitted | Assigned | Running, Event::TaskExpired(e)) => {
                if self.deadline != Some(e.deadline) {
                    return Err(TransitionError::WrongDeadline {
                        task_id: self.task_id.clone(),
                        deadline: self.deadline,
                        got: e.deadline,
                    });
                }
                self.status = Expired;
                self.reason = Some("deadline passed".to_owned());
            }
            (status, other) => {
                return Err(TransitionError::Illegal {
                    task_id: self.task_id.clone(),
                    status,
                    event: other.event_type(),
                })
            }
        }
        Ok(())
    }

    /// Whether `event` could be applied now, without applying it.
    pub fn check(&self, event: &Event) -> Result<TaskStatus, TransitionError> {
        let mut next = self.clone();
        next.apply(event)?;
        Ok(next.status)
    }

    /// An assignment is the next one, priced by the rule, within the buyer's cap.
    fn check_assignment(&self, e: &TaskAssigned) -> Result<(), TransitionError> {
        let task_id = || self.task_id.clone();
        if e.assignment != self.assignment + 1 {
            return Err(TransitionError::WrongAssignment {
                task_id: task_id(),
                expected: self.assignment + 1,
                got: e.assignment,
            });
        }
        let expected = price_sats(self.complexity, e.multiplier);
        if e.price_sats != expected {
            return Err(TransitionError::WrongPrice {
                task_id: task_id(),
                multiplier: e.multiplier,
                expected,
                got: e.price_sats,
            });
        }
        match self.max_price_sats {
            Some(max_price_sats) if e.price_sats > max_price_sats => {
                Err(TransitionError::OverPriceCap {
                    task_id: task_id(),
                    price_sats: e.price_sats,
                    max_price_sats,
                })
            }
            _ => Ok(()),
        }
    }

    fn check_agent(&self, got: &AgentId) -> Result<(), TransitionError> {
        match &self.agent_id {
            Some(assigned) if assigned != got => Err(TransitionError::WrongAgent {
                task_id: self.task_id.clone(),
                assigned: assigned.clone(),
                got: got.clone(),
            }),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{
        TaskAssigned, TaskCancelled, TaskCompleted, TaskExpired, TaskFailed, TaskStarted,
    };
    use proptest::prelude::*;

    fn tid() -> TaskId {
        TaskId::new("t1").expect("valid id")
    }

    fn agent(n: u8) -> AgentId {
        AgentId::new(format!("agent-{n}")).expect("valid id")
    }

    fn submitted() -> Event {
        Event::TaskSubmitted(TaskSubmitted {
            task_id: tid(),
            buyer_id: BuyerId::new("buyer-001").expect("valid id"),
            description: "Process payment".into(),
            complexity: Complexity::new(2).expect("valid complexity"),
            required_skills: BTreeSet::new(),
            max_price_sats: Some(500_000),
            deadline: Some(deadline()),
            policy: Policy::BestReputation,
        })
    }

    fn deadline() -> DateTime<Utc> {
        DateTime::<Utc>::UNIX_EPOCH + chrono::Duration::days(20_000)
    }

    fn assigned_at(n: u8, assignment: u32, multiplier: u32, price_sats: u64) -> Event {
        Event::TaskAssigned(TaskAssigned {
            task_id: tid(),
            agent_id: agent(n),
            multiplier: MultiplierMilli(multiplier),
            price_sats,
            assignment,
        })
    }

    fn assigned(n: u8, assignment: u32) -> Event {
        Event::TaskAssigned(TaskAssigned {
            task_id: tid(),
            agent_id: agent(n),
            multiplier: MultiplierMilli(2000),
            price_sats: 400_000,
            assignment,
        })
    }

    fn started(n: u8, assignment: u32) -> Event {
        Event::TaskStarted(TaskStarted {
            task_id: tid(),
            agent_id: agent(n),
            assignment,
            worker_id: "w1".into(),
        })
    }

    fn completed(n: u8) -> Event {
        Event::TaskCompleted(TaskCompleted {
            task_id: tid(),
            agent_id: agent(n),
            result: "done".into(),
        })
    }

    fn failed(n: u8) -> Event {
        Event::TaskFailed(TaskFailed {
            task_id: tid(),
            agent_id: agent(n),
            reason: "boom".into(),
        })
    }

    fn cancelled() -> Event {
        Event::TaskCancelled(TaskCancelled {
            task_id: tid(),
            buyer_id: BuyerId::new("buyer-001").expect("valid id"),
            reason: "changed my mind".into(),
        })
    }

    fn expired() -> Event {
        expired_at(deadline())
    }

    fn expired_at(deadline: DateTime<Utc>) -> Event {
        Event::TaskExpired(TaskExpired {
            task_id: tid(),
            deadline,
        })
    }

    fn status_after(events: &[Event]) -> Result<Option<TaskStatus>, TransitionError> {
        Task::replay(events).map(|t| t.map(|t| t.status))
    }

    #[test]
    fn worker_path_runs_to_completion() {
        let task = Task::replay(&[submitted(), assigned(1, 1), started(1, 1), completed(1)])
            .expect("legal")
            .expect("has events");
        assert_eq!(task.status, TaskStatus::Completed);
        assert_eq!(task.agent_id, Some(agent(1)));
        assert_eq!(task.price_sats, Some(400_000));
        assert_eq!(task.result.as_deref(), Some("done"));
        assert_eq!(task.worker_id.as_deref(), Some("w1"));
    }

    #[test]
    fn manual_agents_complete_or_fail_without_starting() {
        let ok = [submitted(), assigned(1, 1), completed(1)];
        assert_eq!(status_after(&ok), Ok(Some(TaskStatus::Completed)));
        let ko = [submitted(), assigned(1, 1), failed(1)];
        assert_eq!(status_after(&ko), Ok(Some(TaskStatus::Failed)));
    }

    #[test]
    fn a_redelivered_start_restarts_a_running_task() {
        let events = [submitted(), assigned(1, 1), started(1, 1), started(1, 1)];
        assert_eq!(status_after(&events), Ok(Some(TaskStatus::Running)));
    }

    #[test]
    fn cancel_is_allowed_only_before_running() {
        assert_eq!(
            status_after(&[submitted(), cancelled()]),
            Ok(Some(TaskStatus::Cancelled))
        );
        assert_eq!(
            status_after(&[submitted(), assigned(1, 1), cancelled()]),
            Ok(Some(TaskStatus::Cancelled))
        );
        assert_eq!(
            status_after(&[submitted(), assigned(1, 1), started(1, 1), cancelled()]),
            Err(TransitionError::Illegal {
                task_id: tid(),
                status: TaskStatus::Running,
                event: "TaskCancelled"
            })
        );
    }

    #[test]
    fn expiry_is_allowed_until_the_task_finishes() {
        for prefix in [
            vec![submitted()],
            vec![submitted(), assigned(1, 1)],
            vec![submitted(), assigned(1, 1), started(1, 1)],
        ] {
            let mut events = prefix;
            events.push(expired());
            assert_eq!(status_after(&events), Ok(Some(TaskStatus::Expired)));
        }
    }

    #[test]
    fn completing_twice_is_refused() {
        // The prototype paid an agent twice for this; here the second is a typed error.
        let events = [submitted(), assigned(1, 1), completed(1), completed(1)];
        assert_eq!(
            status_after(&events),
            Err(TransitionError::Terminal {
                task_id: tid(),
                status: TaskStatus::Completed,
                event: "TaskCompleted"
            })
        );
    }

    #[test]
    fn illegal_orders_and_wrong_parties_are_typed_errors() {
        assert_eq!(
            status_after(&[assigned(1, 1)]),
            Err(TransitionError::NotSubmitted {
                event: "TaskAssigned"
            })
        );
        assert!(matches!(
            status_after(&[submitted(), submitted()]),
            Err(TransitionError::Illegal { .. })
        ));
        assert!(matches!(
            status_after(&[submitted(), started(1, 1)]),
            Err(TransitionError::Illegal { .. })
        ));
        assert!(matches!(
            status_after(&[submitted(), completed(1)]),
            Err(TransitionError::Illegal { .. })
        ));
        assert_eq!(
            status_after(&[submitted(), assigned(1, 1), completed(2)]),
            Err(TransitionError::WrongAgent {
                task_id: tid(),
                assigned: agent(1),
                got: agent(2)
            })
        );
        assert_eq!(
            status_after(&[submitted(), assigned(1, 1), started(1, 2)]),
            Err(TransitionError::WrongAssignment {
                task_id: tid(),
                expected: 1,
                got: 2
            })
        );
        let mut task = Task::start(&submitted()).expect("legal");
        let other = Event::TaskCompleted(TaskCompleted {
            task_id: TaskId::new("t2").expect("valid id"),
            agent_id: agent(1),
            result: String::new(),
        });
        assert!(matches!(
            task.apply(&other),
            Err(TransitionError::NotThisTask { .. })
        ));
    }

    #[test]
    fn a_lenient_replay_skips_what_the_rules_refuse() {
        let events = [
            submitted(),
            assigned(1, 1),
            completed(2),
            completed(1),
            completed(1),
        ];
        let (task, skipped) = Task::replay_skipping_refused(&events);
        assert_eq!(task.map(|t| t.status), Some(TaskStatus::Completed));
        assert_eq!(
            skipped, 2,
            "the wrong agent's completion and the second completion"
        );
        assert!(
            Task::replay(&events).is_err(),
            "the strict replay refuses the same history"
        );
        assert_eq!(Task::replay_skipping_refused(&[assigned(1, 1)]), (None, 1));
    }

    #[test]
    fn no_events_is_no_task() {
        assert_eq!(Task::replay(&[]), Ok(None));
    }

    #[test]
    fn statuses_round_trip_through_their_names() {
        for status in TaskStatus::ALL {
            assert_eq!(status.as_str().parse::<TaskStatus>(), Ok(status));
            assert_eq!(
                serde_json::to_string(&status).expect("serializes"),
                format!("\"{status}\"")
            );
        }
        assert!("done".parse::<TaskStatus>().is_err());
    }

    #[test]
    fn every_status_and_event_gives_the_documented_outcome() {
        use TaskStatus::*;
        let reach: [(TaskStatus, Vec<Event>); 7] = [
            (Submitted, vec![submitted()]),
            (Assigned, vec![submitted(), assigned(1, 1)]),
            (Running, vec![submitted(), assigned(1, 1), started(1, 1)]),
            (Completed, vec![submitted(), assigned(1, 1), completed(1)]),
            (Failed, vec![submitted(), assigned(1, 1), failed(1)]),
            (Cancelled, vec![submitted(), cancelled()]),
            (Expired, vec![submitted(), expired()]),
        ];
        let events = [
            submitted(),
            assigned(1, 1),
            started(1, 1),
            completed(1),
            failed(1),
            cancelled(),
            expired(),
        ];
        // Rows: from-status; columns: the events above; None = refused.
        #[rustfmt::skip]
        let table: [[Option<TaskStatus>; 7]; 3] = [
            [None, Some(Assigned), None,          None,            None,         Some(Cancelled), Some(Expired)],
            [None, None,           Some(Running), Some(Completed), Some(Failed), Some(Cancelled), Some(Expired)],
            [None, None,           Some(Running), Some(Completed), Some(Failed), None,            Some(Expired)],
        ];
        for (from, prefix) in reach {
            let task = Task::replay(&prefix)
                .expect("legal prefix")
                .expect("has events");
            assert_eq!(task.status, from);
            for (column, event) in events.iter().enumerate() {
                let expected = match from {
                    Submitted => table[0][column],
                    Assigned => table[1][column],
                    Running => table[2][column],
                    _ => None,
                };
                let mut after = task.clone();
                let got = after.apply(event).map(|()| after.status).ok();
                assert_eq!(got, expected, "{from} + {}", event.event_type());
                if from.is_terminal() {
                    assert!(matches!(
                        task.check(event),
                        Err(TransitionError::Terminal { .. })
                    ));
                }
            }
        }
    }

    #[test]
    fn an_assignment_must_be_the_next_one_priced_by_the_rule_within_the_cap() {
        let assign =
            |event: Event| Task::replay(&[submitted(), event]).map(|t| t.map(|t| t.status));
        assert_eq!(
            assign(assigned_at(1, 1, 2000, 400_000)),
            Ok(Some(TaskStatus::Assigned))
        );
        assert_eq!(
            assign(assigned_at(1, 2, 2000, 400_000)),
            Err(TransitionError::WrongAssignment {
                task_id: tid(),
                expected: 1,
                got: 2
            })
        );
        assert_eq!(
            assign(assigned_at(1, 1, 2000, 7)),
            Err(TransitionError::WrongPrice {
                task_id: tid(),
                multiplier: MultiplierMilli(2000),
                expected: 400_000,
                got: 7
            })
        );
        // 100_000 * 2 * 3.0 = 600_000, above the 500_000 cap.
        assert_eq!(
            assign(assigned_at(1, 1, 3000, 600_000)),
            Err(TransitionError::OverPriceCap {
                task_id: tid(),
                price_sats: 600_000,
                max_price_sats: 500_000
            })
        );
    }

    #[test]
    fn only_the_tasks_buyer_cancels_and_only_its_deadline_expires_it() {
        let mallory = Event::TaskCancelled(TaskCancelled {
            task_id: tid(),
            buyer_id: BuyerId::new("mallory").expect("valid id"),
            reason: String::new(),
        });
        assert!(matches!(
            status_after(&[submitted(), mallory]),
            Err(TransitionError::WrongBuyer { .. })
        ));
        let early = expired_at(deadline() - chrono::Duration::hours(1));
        assert!(matches!(
            status_after(&[submitted(), early]),
            Err(TransitionError::WrongDeadline { .. })
        ));
        let mut no_deadline = Task::start(&submitted()).expect("legal");
        no_deadline.deadline = None;
        assert!(matches!(
            no_deadline.apply(&expired()),
            Err(TransitionError::WrongDeadline { deadline: None, .. })
        ));
    }

    fn any_task_event() -> impl Strategy<Value = Event> {
        prop_oneof![
            Just(submitted()),
            (1u8..=2, 1u32..=2).prop_map(|(n, a)| assigned(n, a)),
            (1u8..=2, 1u32..=2).prop_map(|(n, a)| started(n, a)),
            (1u8..=2).prop_map(completed),
            (1u8..=2).prop_map(failed),
            Just(cancelled()),
            Just(expired()),
        ]
    }

    proptest! {
        #[test]
        fn no_event_leaves_a_terminal_state(events in prop::collection::vec(any_task_event(), 0..40)) {
            let mut task = Task::start(&submitted()).expect("legal");
            for event in &events {
                let before = task.clone();
                match task.apply(event) {
                    Ok(()) => prop_assert!(!before.status.is_terminal()),
                    Err(_) => prop_assert_eq!(&task, &before, "a refused event changed the task"),
                }
                if before.status.is_terminal() {
                    prop_assert_eq!(task.status, before.status);
                }
            }
        }
    }
}
