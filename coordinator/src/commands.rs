//! Command handlers: validate, decide from the read model with the domain rules, append.
//!
//! A command never writes anything but events. It decides from the read model and appends
//! with the aggregate's last sequence as the read model knows it; if someone got there
//! first, the append conflicts, and the command decides again from the stream itself.
//! Nothing is half-written: every command is one append of one batch.

use std::collections::BTreeSet;
use std::time::Duration;

use aicp_events::domain::access::{authorize, Action, Principal};
use aicp_events::domain::assign::{self, Candidate, Choice, Policy, Request};
use aicp_events::domain::pricing::Complexity;
use aicp_events::domain::reputation::{Reputation, PRIOR_WEIGHT};
use aicp_events::domain::task::{Task, TaskStatus};
use aicp_events::event::{
    AgentMode, AgentRegistered, AgentUpdated, Event, ExecutorSettings, TaskAssigned, TaskCancelled,
    TaskCompleted, TaskExpired, TaskFailed, TaskStarted, TaskSubmitted,
};
use aicp_events::id::{AgentId, BuyerId, TaskId};
use aicp_events::store::AppendError;
use aicp_events::{Aggregate, Envelope, Expected};
use aicp_projections::views::{AgentView, TaskView};
use aicp_projections::PageRequest;
use chrono::{DateTime, Utc};

use crate::error::ApiError;
use crate::idempotency;
use crate::settlement;
use crate::state::AppState;

/// Longest task description, in characters.
pub const MAX_DESCRIPTION_CHARS: usize = 4096;
/// Most skills a task may require or an agent may list.
pub const MAX_SKILLS: usize = 32;
/// Longest skill name.
pub const MAX_SKILL_LEN: usize = 64;

/// How many times a command re-decides after losing a race.
const ATTEMPTS: usize = 5;

/// A buyer's new task.
#[derive(Debug, Clone)]
pub struct SubmitTask {
    /// Who pays.
    pub buyer_id: String,
    /// What is to be done.
    pub description: String,
    /// 1..=10.
    pub complexity: i64,
    /// Skills the agent must have.
    pub required_skills: Vec<String>,
    /// The most the buyer will pay.
    pub max_price_sats: Option<u64>,
    /// When the task expires.
    pub deadline: Option<DateTime<Utc>>,
    /// How to choose the agent; the configured default if `None`.
    pub policy: Option<Policy>,
}

/// What became of one attempt to store a new task.
enum Stored {
    /// Stored under the id tried.
    New(Decided),
    /// A retry of a keyed request: its first request's task.
    Duplicate(Decided),
    /// Another task has the id.
    Taken,
}

/// What became of a submission whose price was reserved.
pub(crate) enum Reserved {
    /// Stored (or a retry's first answer), or refused; the reservation was given back
    /// unless the task may be stored.
    Done(Box<Result<Submitted, ApiError>>),
    /// Another task has the id; the reservation was given back.
    Taken,
}

/// A checked submission with its agent and price chosen: what its events will say.
#[derive(Debug, Clone)]
pub struct Submission {
    buyer_id: BuyerId,
    description: String,
    complexity: Complexity,
    required_skills: BTreeSet<String>,
    max_price_sats: Option<u64>,
    deadline: Option<DateTime<Utc>>,
    policy: Policy,
    /// The agent and price chosen.
    pub choice: Choice,
}

impl Submission {
    /// Who pays.
    pub fn buyer_id(&self) -> &BuyerId {
        &self.buyer_id
    }

    /// The task's events under `task_id`: submitted, assigned and its escrow, in one
    /// message, so a task never exists without its agent, its price and its money.
    pub fn events(&self, task_id: &TaskId, by: &Principal) -> Vec<Envelope> {
        let submitted = Envelope::new(TaskSubmitted {
            task_id: task_id.clone(),
            buyer_id: self.buyer_id.clone(),
            description: self.description.clone(),
            complexity: self.complexity,
            required_skills: self.required_skills.clone(),
            max_price_sats: self.max_price_sats,
            deadline: self.deadline,
            policy: self.policy,
        })
        .by(by.clone());
        let assigned = Envelope::caused_by(
            &submitted,
            TaskAssigned {
                task_id: task_id.clone(),
                agent_id: self.choice.agent_id.clone(),
                multiplier: self.choice.multiplier,
                price_sats: self.choice.price_sats,
                assignment: 1,
            },
        )
        .by(by.clone());
        let mut events = vec![submitted, assigned];
        if let Some(view) = TaskView::decided(None, &events, 0) {
            if let Some(held) = settlement::escrow(&view) {
                events.push(Envelope::caused_by(&events[0], held).by(Principal::Coordinator));
            }
        }
        events
    }
}

/// What a command stored, and whether the read model shows it yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Written {
    /// Stream sequence of the append.
    pub sequence: u64,
    /// True if the local read model applied it within the wait: reads now see it.
    pub visible: bool,
}

/// A worker's word that it runs a task's assignment, as its work message names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Started {
    /// The assignment the work message names.
    pub assignment: u32,
    /// The worker's name, recorded on the task.
    pub worker_id: String,
}

impl Started {
    /// The start of `task` it makes; 409 `not_running` if the task finished or was
    /// assigned again since (the work message is stale).
    fn event(&self, task: &Task) -> Result<Event, ApiError> {
        if task.status.is_terminal() || task.assignment != self.assignment {
            return Err(ApiError::conflict(
                "not_running",
                format!(
                    "task {} is {} at assignment {}: nothing to start",
                    task.task_id, task.status, task.assignment
                ),
            ));
        }
        Ok(Event::TaskStarted(TaskStarted {
            task_id: task.task_id.clone(),
            agent_id: assigned_agent(task)?,
            assignment: self.assignment,
            worker_id: self.worker_id.clone(),
        }))
    }
}

/// What a task command stored: the task as it decided it, answered at once (the read
/// model shows the same view once it has applied `sequence`).
#[derive(Debug, Clone)]
pub struct Decided {
    /// Stream sequence of the append.
    pub sequence: u64,
    /// The task after the append.
    pub view: TaskView,
}

/// The result of a submission.
#[derive(Debug, Clone)]
pub struct Submitted {
    /// The new task.
    pub task_id: TaskId,
    /// The agent and price chosen.
    pub choice: Choice,
    /// What was stored.
    pub decided: Decided,
}

/// The result of a retry.
#[derive(Debug, Clone)]
pub struct Retried {
    /// The new task.
    pub task_id: TaskId,
    /// What was stored; `None` if the retry existed already.
    pub created: Option<Decided>,
}

/// The id of the retry of `task_id`: `<id>-retry`, and for a retry `-retry2`, `-retry3`...
pub fn retry_id(task_id: &TaskId) -> Result<TaskId, ApiError> {
    let id = task_id.as_str();
    let next = match id.rsplit_once("-retry") {
        Some((base, "")) => format!("{base}-retry2"),
        Some((base, n)) if n.bytes().all(|b| b.is_ascii_digit()) => match n.parse::<u32>() {
            Ok(n) => format!("{base}-retry{}", n.saturating_add(1)),
            Err(_) => format!("{id}-retry"),
        },
        _ => format!("{id}-retry"),
    };
    next.parse().map_err(|e: aicp_events::id::IdError| {
        ApiError::bad_request("not_retryable", format!("cannot retry {task_id}: {e}"))
    })
}

/// Parses an id from a path or body, as a 400 if malformed.
pub fn parse_id<T: std::str::FromStr>(raw: &str) -> Result<T, ApiError>
where
    T::Err: std::fmt::Display,
{
    raw.parse()
        .map_err(|e: T::Err| ApiError::bad_request("invalid_id", e.to_string()))
}

/// Trims, lowercases and checks a list of skills.
pub fn parse_skills(raw: &[String]) -> Result<BTreeSet<String>, ApiError> {
    if raw.len() > MAX_SKILLS {
        return Err(ApiError::bad_request(
            "invalid_skills",
            format!("at most {MAX_SKILLS} skills are allowed, got {}", raw.len()),
        ));
    }
    raw.iter()
        .map(|s| {
            let skill = s.trim().to_lowercase();
            let valid = !skill.is_empty()
                && skill.len() <= MAX_SKILL_LEN
                && skill
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
            if valid {
                Ok(skill)
            } else {
                Err(ApiError::bad_request(
                    "invalid_skills",
                    format!("skill {s:?} must be 1 to {MAX_SKILL_LEN} letters, digits, '-' or '_'"),
                ))
            }
        })
        .collect()
}

/// 403 unless `by` may start, complete or fail `task` (its agent, a worker serving it, an admin).
fn may_work_on(by: &Principal, task: &Task) -> Result<(), ApiError> {
    Ok(authorize(
        by,
        Action::WorkOnTask {
            agent: task.agent_id.as_ref(),
        },
    )?)
}

/// The task's agent, or 409 if it has none yet.
fn assigned_agent(task: &Task) -> Result<AgentId, ApiError> {
    task.agent_id.clone().ok_or_else(|| {
        ApiError::conflict(
            "invalid_state",
            format!("task {} has no agent yet", task.task_id),
        )
    })
}

fn parse_complexity(raw: i64) -> Result<Complexity, ApiError> {
    Complexity::new(raw).map_err(|e| ApiError::bad_request("invalid_complexity", e.to_string()))
}

fn parse_description(raw: &str) -> Result<String, ApiError> {
    let description = raw.trim();
    if description.is_empty() {
        return Err(ApiError::bad_request(
            "invalid_description",
            "description must not be empty",
        ));
    }
    let chars = description.chars().count();
    if chars > MAX_DESCRIPTION_CHARS {
        return Err(ApiError::bad_request(
            "invalid_description",
            format!("description is {chars} characters long; at most {MAX_DESCRIPTION_CHARS} are allowed"),
        ));
    }
    Ok(description.to_owned())
}

impl AppState {
    /// Every agent, as assignment candidates.
    pub fn candidates(&self) -> Result<Vec<Candidate>, ApiError> {
        Ok(self
            .all_agents()?
            .into_iter()
            .map(|a| Candidate {
                agent_id: a.agent_id,
                skills: a.skills,
                multiplier: a.multiplier,
                rate_bp: a.rate_bp,
                active_tasks: a.active_tasks,
                accepting: a.accepting,
            })
            .collect())
    }

    /// Every agent in the read model.
    pub fn all_agents(&self) -> Result<Vec<AgentView>, ApiError> {
        let mut agents = Vec::new();
        let mut page = PageRequest::first(1000);
        loop {
            let got = self.model.agents(&page)?;
            agents.extend(got.items);
            match got.next_cursor {
                Some(cursor) => page.cursor = Some(cursor),
                None => return Ok(agents),
            }
        }
    }

    /// The agent and price a task would get now.
    pub fn quote(
        &self,
        complexity: i64,
        skills: &[String],
        max_price_sats: Option<u64>,
        policy: Option<Policy>,
    ) -> Result<Choice, ApiError> {
        let request = Request {
            complexity: parse_complexity(complexity)?,
            required_skills: parse_skills(skills)?,
            max_price_sats,
        };
        let counter = self.model.counters()?.submitted;
        Ok(assign::assign(
            policy.unwrap_or(self.policy),
            &request,
            &self.candidates()?,
            counter,
        )?)
    }

    /// Submits and assigns a task: both events in one message, so a task never exists
    /// without its agent and price.
    pub async fn submit(&self, cmd: SubmitTask, by: &Principal) -> Result<Submitted, ApiError> {
        self.submit_as(cmd, std::iter::repeat_with(TaskId::generate), by)
            .await
    }

    /// [`AppState::submit`] under the first free id of `ids`.
    async fn submit_as(
        &self,
        cmd: SubmitTask,
        ids: impl IntoIterator<Item = TaskId>,
        by: &Principal,
    ) -> Result<Submitted, ApiError> {
        // A retry of a keyed submission is answered before anything is checked again: a
        // deadline may have passed, an agent may have stopped accepting, since.
        if let Some(first) = self.replayed() {
            return submitted_of(idempotency::task_of(first)?);
        }
        let counter = self.model.counters()?.submitted;
        let submission = self.decide_submission(cmd, &self.candidates()?, counter)?;
        self.store_decided(&submission, ids, by).await
    }

    /// Stores a decided submission under the first free id of `ids`; a prepaid buyer's
    /// price is reserved from its balance first (402 if the budget cannot cover it).
    pub async fn store_decided(
        &self,
        submission: &Submission,
        ids: impl IntoIterator<Item = TaskId>,
        by: &Principal,
    ) -> Result<Submitted, ApiError> {
        if self.prepaid(&submission.buyer_id)?.is_some() {
            return self.store_prepaid(submission, ids, by).await;
        }
        self.store_submission(ids, |task_id| submission.events(task_id, by))
            .await
            // The choice as stored: a keyed duplicate's is its first request's.
            .and_then(|(_, decided)| submitted_of(decided))
    }

    /// Reserves a prepaid buyer's price under an id of `ids`, then stores the task there.
    async fn store_prepaid(
        &self,
        submission: &Submission,
        ids: impl IntoIterator<Item = TaskId>,
        by: &Principal,
    ) -> Result<Submitted, ApiError> {
        let buyer = &submission.buyer_id;
        let price = submission.choice.price_sats;
        for task_id in ids.into_iter().take(ATTEMPTS) {
            let reserved = self.reserve(buyer, &[(task_id.clone(), price)], by).await?;
            match reserved.into_iter().next() {
                Some(Ok(())) => {}
                Some(Err(refused)) => return Err(refused),
                None => return Err(ApiError::internal("a reservation without an answer")),
            }
            match self.store_reserved(submission, &task_id, by).await {
                Reserved::Done(done) => return *done,
                Reserved::Taken => continue,
            }
        }
        Err(ApiError::internal("could not find a free task id"))
    }

    /// Stores a submission whose price is reserved under `task_id`; gives the reservation
    /// back if the task is not stored there.
    pub(crate) async fn store_reserved(
        &self,
        submission: &Submission,
        task_id: &TaskId,
        by: &Principal,
    ) -> Reserved {
        let buyer = &submission.buyer_id;
        let stored = self
            .store_one(task_id, &submission.events(task_id, by))
            .await;
        let (done, reason) = match stored {
            Ok(Stored::New(decided)) => return Reserved::Done(Box::new(submitted_of(decided))),
            Ok(Stored::Duplicate(first)) => (
                submitted_of(first),
                "a retry answered with its first request's task",
            ),
            Ok(Stored::Taken) => {
                self.release(buyer, task_id, "the task id was taken").await;
                return Reserved::Taken;
            }
            // Maybe stored: if it was not, the reservation lapses and is released then.
            Err(e) if e.status == axum::http::StatusCode::SERVICE_UNAVAILABLE => {
                return Reserved::Done(Box::new(Err(e)))
            }
            Err(e) => (Err(e), "the task could not be stored"),
        };
        self.release(buyer, task_id, reason).await;
        Reserved::Done(Box::new(done))
    }

    /// Checks a submission and chooses its agent and price among `candidates`.
    pub fn decide_submission(
        &self,
        cmd: SubmitTask,
        candidates: &[Candidate],
        counter: u64,
    ) -> Result<Submission, ApiError> {
        let buyer_id: BuyerId = parse_id(&cmd.buyer_id)?;
        let description = parse_description(&cmd.description)?;
        let complexity = parse_complexity(cmd.complexity)?;
        let required_skills = parse_skills(&cmd.required_skills)?;
        if let Some(deadline) = cmd.deadline {
            if deadline <= Utc::now() {
                return Err(ApiError::bad_request(
                    "invalid_deadline",
                    format!("deadline {deadline} has already passed"),
                ));
            }
        }
        let policy = cmd.policy.unwrap_or(self.policy);
        let request = Request {
            complexity,
            required_skills: required_skills.clone(),
            max_price_sats: cmd.max_price_sats,
        };
        let choice = assign::assign(policy, &request, candidates, counter)?;
        Ok(Submission {
            buyer_id,
            description,
            complexity,
            required_skills,
            max_price_sats: cmd.max_price_sats,
            deadline: cmd.deadline,
            policy,
            choice,
        })
    }

    /// Stores a new task's events under the first free id `ids` yields: an id that is
    /// taken is a conflict (the append expects no task there), and the next id is tried.
    pub async fn store_submission(
        &self,
        ids: impl IntoIterator<Item = TaskId>,
        events_for: impl Fn(&TaskId) -> Vec<Envelope>,
    ) -> Result<(TaskId, Decided), ApiError> {
        for task_id in ids.into_iter().take(ATTEMPTS) {
            match self.store_one(&task_id, &events_for(&task_id)).await? {
                Stored::New(decided) => return Ok((task_id, decided)),
                Stored::Duplicate(first) => return Ok((first.view.task.task_id.clone(), first)),
                // Eight hex characters of randomness collide now and then: another id.
                Stored::Taken => continue,
            }
        }
        Err(ApiError::internal("could not find a free task id"))
    }

    /// Stores a new task's events under `task_id`.
    ///
    /// The msg id is the attempt's own first event id, so a retry after a lost
    /// acknowledgement is recognised as this attempt, while another task that drew the
    /// same id is not mistaken for it.
    async fn store_one(&self, task_id: &TaskId, events: &[Envelope]) -> Result<Stored, ApiError> {
        let msg_id = match events.first() {
            Some(first) => format!("submit:{}", first.event_id),
            None => return Err(ApiError::internal("a submission without events")),
        };
        let aggregate = Aggregate::Task(task_id.clone());
        // A publish whose acknowledgement was lost may or may not be stored: retrying
        // the very same message is safe, and tells.
        let mut lost = None;
        for _ in 0..3 {
            match self
                .append(&aggregate, events, Expected::NEW, Some(&msg_id))
                .await
            {
                Ok(appended) => {
                    if let Some(first) = self.duplicate_of(events, &appended).await? {
                        return Ok(Stored::Duplicate(idempotency::task_of(first)?));
                    }
                    let view = TaskView::decided(None, events, appended.sequence)
                        .ok_or_else(|| ApiError::internal("a submission that makes no task"))?;
                    return Ok(Stored::New(Decided {
                        sequence: appended.sequence,
                        view,
                    }));
                }
                Err(AppendError::Conflict { .. }) => return Ok(Stored::Taken),
                Err(e @ AppendError::Publish { .. }) => {
                    lost = Some(e);
                    // Without a connection a retry would only wait out another timeout.
                    let client = self.store.jetstream().client();
                    if client.connection_state() != async_nats::connection::State::Connected {
                        break;
                    }
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::unavailable(format!(
            "task {task_id} may or may not have been stored ({}); check GET /tasks/{task_id} before submitting again",
            lost.map(|e| e.to_string()).unwrap_or_default()
        )))
    }

    /// Records an agent's outcome for a task: completed with a result, or failed with a
    /// reason; only the task's agent, a worker serving it, or an admin may.
    ///
    /// With `started`, a worker reports in one call that it ran the assignment its work
    /// message names: a task not started yet is started and finished in one message (the
    /// start refused, as [`AppState::start`] would, if that assignment is stale or not
    /// visible here yet).
    pub async fn finish(
        &self,
        task_id: &str,
        success: bool,
        text: String,
        started: Option<Started>,
        by: &Principal,
    ) -> Result<Decided, ApiError> {
        let task_id: TaskId = parse_id(task_id)?;
        let started = match started {
            Some(s) => Some(self.startable(&task_id, s, by).await?),
            None => None,
        };
        self.change_task(&task_id, by, |task| {
            may_work_on(by, task)?;
            let agent_id = assigned_agent(task)?;
            let mut steps = Vec::with_capacity(2);
            if let Some(started) = &started {
                let start = started.event(task)?;
                // Started already (by an earlier call, or a redelivery): only the outcome.
                if task.status != TaskStatus::Running {
                    steps.push(start);
                }
            }
            steps.push(if success {
                Event::TaskCompleted(TaskCompleted {
                    task_id: task.task_id.clone(),
                    agent_id,
                    result: text.clone(),
                })
            } else {
                let reason = if text.trim().is_empty() {
                    "reported failed by the agent".to_owned()
                } else {
                    text.clone()
                };
                Event::TaskFailed(TaskFailed {
                    task_id: task.task_id.clone(),
                    agent_id,
                    reason,
                })
            });
            Ok(steps)
        })
        .await
    }

    /// A worker starts assignment `assignment` of a task (again, after a redelivery).
    ///
    /// 409 `not_yet` if this replica has not seen that assignment (it lags the dispatch:
    /// ask again shortly); 409 `not_running` if the task finished or was assigned again
    /// since (the work message is stale: drop it).
    pub async fn start(
        &self,
        task_id: &str,
        assignment: u32,
        worker_id: String,
        by: &Principal,
    ) -> Result<Decided, ApiError> {
        let task_id: TaskId = parse_id(task_id)?;
        let started = Started {
            assignment,
            worker_id,
        };
        let started = self.startable(&task_id, started, by).await?;
        self.change_task(&task_id, by, |task| {
            may_work_on(by, task)?;
            Ok(vec![started.event(task)?])
        })
        .await
    }

    /// Checks a worker's start before deciding anything: the worker's id, and that this
    /// replica has seen the assignment (409 `not_yet` if not).
    async fn startable(
        &self,
        task_id: &TaskId,
        started: Started,
        by: &Principal,
    ) -> Result<Started, ApiError> {
        self.see_own_writes(task_id).await;
        let seen = self.model.task(task_id)?;
        if let Some(view) = &seen {
            // Before saying anything about the task's state.
            may_work_on(by, &view.task)?;
        }
        let assignment = started.assignment;
        if seen.is_none_or(|v| v.task.assignment < assignment) {
            return Err(ApiError::conflict(
                "not_yet",
                format!(
                    "task {task_id} assignment {assignment} is not visible here yet; retry shortly"
                ),
            ));
        }
        let worker_id = started.worker_id.trim().to_owned();
        if worker_id.is_empty() || worker_id.chars().count() > 200 {
            return Err(ApiError::bad_request(
                "invalid_worker_id",
                "worker_id must be 1 to 200 characters",
            ));
        }
        Ok(Started {
            assignment,
            worker_id,
        })
    }

    /// A buyer cancels its task before it runs (`buyer_id`, if given, must be the task's).
    pub async fn cancel(
        &self,
        task_id: &str,
        buyer_id: Option<&str>,
        reason: String,
        by: &Principal,
    ) -> Result<Decided, ApiError> {
        let task_id: TaskId = parse_id(task_id)?;
        let buyer_id: Option<BuyerId> = buyer_id.map(parse_id).transpose()?;
        self.change_task(&task_id, by, |task| {
            authorize(
                by,
                Action::ChangeOrder {
                    buyer: &task.buyer_id,
                },
            )?;
            Ok(vec![Event::TaskCancelled(TaskCancelled {
                task_id: task.task_id.clone(),
                // A wrong buyer is refused by the task's rules (403 not_your_task).
                buyer_id: buyer_id.clone().unwrap_or_else(|| task.buyer_id.clone()),
                reason: if reason.trim().is_empty() {
                    "cancelled by the buyer".to_owned()
                } else {
                    reason.clone()
                },
            })])
        })
        .await
    }

    /// Expires a task whose deadline has passed unfinished.
    pub async fn expire(&self, task_id: &TaskId) -> Result<Decided, ApiError> {
        self.change_task(task_id, &Principal::Coordinator, |task| {
            let deadline = task.deadline.ok_or_else(|| {
                ApiError::conflict(
                    "invalid_state",
                    format!("task {} has no deadline", task.task_id),
                )
            })?;
            Ok(vec![Event::TaskExpired(TaskExpired {
                task_id: task.task_id.clone(),
                deadline,
            })])
        })
        .await
    }

    /// Decides the task's next steps (one, or a start and an outcome) from its state and
    /// appends them, with what they settle, in one message under the task's sequence;
    /// after a lost race, decides again from the stream.
    async fn change_task(
        &self,
        task_id: &TaskId,
        by: &Principal,
        decide: impl Fn(&Task) -> Result<Vec<Event>, ApiError>,
    ) -> Result<Decided, ApiError> {
        if let Some(first) = self.replayed() {
            return idempotency::task_of(first);
        }
        let mut view = self.fresh_task(task_id).await?;
        let mut expected = view.last_sequence;
        let aggregate = Aggregate::Task(task_id.clone());
        for _ in 0..ATTEMPTS {
            // The task after the steps, refused by its rules with their own error.
            let mut after = view.clone();
            let mut events = Vec::with_capacity(4);
            for event in decide(&view.task)? {
                after.change(&event, expected, Utc::now())?;
                events.push(Envelope::new(event).by(by.clone()));
            }
            let Some(step) = events.last() else {
                return Err(ApiError::internal("a task change without events"));
            };
            // What the steps settle (money, the agent's count) goes in their message.
            let settled: Vec<Envelope> = settlement::settles(&after)
                .into_iter()
                .map(|e| Envelope::caused_by(step, e).by(Principal::Coordinator))
                .collect();
            events.extend(settled);
            match self
                .append(&aggregate, &events, Expected::Sequence(expected), None)
                .await
            {
                Ok(appended) => {
                    if let Some(first) = self.duplicate_of(&events, &appended).await? {
                        return idempotency::task_of(first);
                    }
                    let sequence = appended.sequence;
                    let view = TaskView::decided(Some(view), &events, sequence)
                        .ok_or_else(|| ApiError::internal("a checked event was refused"))?;
                    return Ok(Decided { sequence, view });
                }
                Err(AppendError::Conflict { .. }) => {
                    let stored = self.store.read(&aggregate).await?;
                    let (folded, skipped) =
                        Task::replay_skipping_refused(stored.events().map(|e| &e.event));
                    if skipped > 0 {
                        tracing::warn!(task = %task_id, skipped, "task history holds refused events");
                    }
                    let task = folded.ok_or_else(|| {
                        ApiError::not_found(
                            "unknown_task",
                            format!("task {task_id} does not exist"),
                        )
                    })?;
                    expected = stored.last_sequence;
                    // Lost a race: the read model shows the winner shortly; until then
                    // the stream's task on the view we had.
                    self.progress.wait_for(expected, self.write_wait).await;
                    view = match self.model.task(task_id)? {
                        Some(newer) if newer.last_sequence == expected => newer,
                        _ => TaskView {
                            task,
                            last_sequence: expected,
                            ..view
                        },
                    };
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            "busy",
            format!("task {task_id} keeps changing; retry"),
        ))
    }

    /// Submits a failed or expired task again, as a new task for the same buyer with the
    /// same description, complexity, skills and cap: assigned and priced now, paid for anew
    /// (the first task was refunded). The new id is the old one with `-retry` (then
    /// `-retry2`, ...), so retrying the same task twice gives the one retry, not two.
    pub async fn retry(&self, task_id: &str, by: &Principal) -> Result<Retried, ApiError> {
        let task_id: TaskId = parse_id(task_id)?;
        if let Some(first) = self.replayed() {
            let decided = idempotency::task_of(first)?;
            return Ok(Retried {
                task_id: decided.view.task.task_id.clone(),
                created: Some(decided),
            });
        }
        let old = self.fresh_task(&task_id).await?.task;
        authorize(
            by,
            Action::ChangeOrder {
                buyer: &old.buyer_id,
            },
        )?;
        if !matches!(old.status, TaskStatus::Failed | TaskStatus::Expired) {
            return Err(ApiError::conflict(
                "not_retryable",
                format!(
                    "task {task_id} is {}: only failed and expired tasks can be retried",
                    old.status
                ),
            ));
        }
        let retry_id = retry_id(&task_id)?;
        if self.model.task(&retry_id)?.is_some() {
            return Ok(Retried {
                task_id: retry_id,
                created: None,
            });
        }
        let cmd = SubmitTask {
            buyer_id: old.buyer_id.to_string(),
            description: old.description.clone(),
            complexity: i64::from(old.complexity.get()),
            required_skills: old.required_skills.iter().cloned().collect(),
            max_price_sats: old.max_price_sats,
            // A deadline that has passed would expire the retry at once.
            deadline: old.deadline.filter(|d| *d > Utc::now()),
            policy: Some(old.policy),
        };
        match self.submit_as(cmd, [retry_id.clone()], by).await {
            Ok(submitted) => Ok(Retried {
                task_id: submitted.task_id,
                created: Some(submitted.decided),
            }),
            // Another request stored the same retry first: that one is the answer.
            Err(e)
                if !self
                    .store
                    .read(&Aggregate::Task(retry_id.clone()))
                    .await?
                    .batches
                    .is_empty() =>
            {
                tracing::debug!(task = %retry_id, error = ?e, "retry already stored");
                Ok(Retried {
                    task_id: retry_id,
                    created: None,
                })
            }
            Err(e) => Err(e),
        }
    }

    /// One task from the read model, or 404.
    pub fn task(&self, task_id: &TaskId) -> Result<TaskView, ApiError> {
        self.model.task(task_id)?.ok_or_else(|| {
            ApiError::not_found("unknown_task", format!("task {task_id} does not exist"))
        })
    }

    /// One agent from the read model, or 404.
    pub fn agent(&self, agent_id: &AgentId) -> Result<AgentView, ApiError> {
        self.model.agent(agent_id)?.ok_or_else(|| {
            ApiError::not_found("unknown_agent", format!("agent {agent_id} does not exist"))
        })
    }

    /// Registers a new agent; 409 if the id is taken.
    pub async fn register_agent(
        &self,
        agent_id: &str,
        name: Option<String>,
        skills: &[String],
        mode: AgentMode,
        executor: Option<ExecutorSettings>,
        by: &Principal,
    ) -> Result<Written, ApiError> {
        if let Some(first) = self.replayed() {
            return Ok(self.written(first.sequence).await);
        }
        let agent_id: AgentId = parse_id(agent_id)?;
        let skills = parse_skills(skills)?;
        let executor = executor.map(parse_executor).transpose()?;
        let name = parse_name(name.unwrap_or_else(|| agent_id.to_string()))?;
        let prior = Reputation::newcomer();
        let event = AgentRegistered {
            agent_id: agent_id.clone(),
            name,
            skills,
            mode,
            prior_rate_bp: prior.prior_rate_bp,
            prior_weight: prior.prior_weight,
            executor,
        };
        let aggregate = Aggregate::Agent(agent_id.clone());
        let events = [Envelope::new(event).by(by.clone())];
        match self.append(&aggregate, &events, Expected::NEW, None).await {
            Ok(appended) => {
                let first = self.duplicate_of(&events, &appended).await?;
                Ok(self
                    .written(first.map_or(appended.sequence, |f| f.sequence))
                    .await)
            }
            Err(AppendError::Conflict { .. }) => Err(ApiError::conflict(
                "agent_exists",
                format!("agent {agent_id} is already registered"),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Changes an agent's profile.
    pub async fn update_agent(
        &self,
        agent_id: &str,
        mut update: AgentUpdated,
        by: &Principal,
    ) -> Result<Written, ApiError> {
        if let Some(first) = self.replayed() {
            return Ok(self.written(first.sequence).await);
        }
        let agent_id: AgentId = parse_id(agent_id)?;
        let mut expected = self.agent(&agent_id)?.last_sequence;
        update.agent_id = agent_id.clone();
        if let Some(name) = update.name.take() {
            update.name = Some(parse_name(name)?);
        }
        update.executor = update.executor.take().map(parse_executor).transpose()?;
        let aggregate = Aggregate::Agent(agent_id);
        for _ in 0..ATTEMPTS {
            let events = [Envelope::new(update.clone()).by(by.clone())];
            match self
                .append(&aggregate, &events, Expected::Sequence(expected), None)
                .await
            {
                Ok(appended) => {
                    let first = self.duplicate_of(&events, &appended).await?;
                    let sequence = first.map_or(appended.sequence, |f| f.sequence);
                    return Ok(self.written(sequence).await);
                }
                // Profile changes do not depend on each other: re-apply on the newest state.
                Err(AppendError::Conflict { .. }) => {
                    expected = self.store.read(&aggregate).await?.last_sequence
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::conflict(
            "busy",
            "the agent keeps changing; retry",
        ))
    }

    /// Registers agent-1..3 with their seed rates, once per stream, whatever the replicas.
    pub async fn register_seed_agents(&self) -> Result<(), ApiError> {
        for (id, rate) in aicp_events::domain::reputation::SEED_AGENTS {
            let agent_id: AgentId = parse_id(id)?;
            let event = AgentRegistered {
                agent_id: agent_id.clone(),
                name: id.to_owned(),
                skills: BTreeSet::new(),
                mode: AgentMode::Worker,
                prior_rate_bp: rate,
                prior_weight: PRIOR_WEIGHT,
                executor: None,
            };
            let aggregate = Aggregate::Agent(agent_id);
            match self
                .append(
                    &aggregate,
                    &[Envelope::new(event).by(Principal::Coordinator)],
                    Expected::NEW,
                    Some(&format!("register:{id}")),
                )
                .await
            {
                Ok(_) | Err(AppendError::Conflict { .. }) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    /// Waits (bounded) until the read model has applied `sequence`.
    pub async fn written(&self, sequence: u64) -> Written {
        Written {
            sequence,
            visible: self.progress.wait_for(sequence, self.write_wait).await,
        }
    }

    /// Waits (bounded) until `check` holds on the read model, re-checking as it moves.
    pub async fn wait_until(&self, timeout: Duration, check: impl Fn() -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Read the position before checking, so an apply in between is not waited for.
            let next = self.progress.applied() + 1;
            if check() {
                return true;
            }
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() || !self.progress.wait_for(next, left).await {
                return check();
            }
        }
    }
}

/// What a stored submission answers: its task, with the agent and price its events chose
/// (a keyed retry's are its first request's).
pub(crate) fn submitted_of(decided: Decided) -> Result<Submitted, ApiError> {
    let task = &decided.view.task;
    let (Some(agent_id), Some(multiplier), Some(price_sats)) =
        (task.agent_id.clone(), task.multiplier, task.price_sats)
    else {
        return Err(ApiError::internal(
            "a submission stored without its assignment",
        ));
    };
    Ok(Submitted {
        task_id: task.task_id.clone(),
        choice: Choice {
            agent_id,
            multiplier,
            price_sats,
        },
        decided,
    })
}

/// Longest executor timeout: an hour.
pub const MAX_TIMEOUT_MS: u64 = 3_600_000;

/// Checks executor settings: a command to run, an http(s) URL, timeouts of at most an hour.
pub fn parse_executor(executor: ExecutorSettings) -> Result<ExecutorSettings, ApiError> {
    let bad = |message: String| Err(ApiError::bad_request("invalid_executor", message));
    let timeout_ok = |t: u64| (1..=MAX_TIMEOUT_MS).contains(&t);
    match &executor {
        ExecutorSettings::Simulate { mean_duration_ms } if *mean_duration_ms > MAX_TIMEOUT_MS => {
            bad(format!("mean_duration_ms must be at most {MAX_TIMEOUT_MS}"))
        }
        ExecutorSettings::Exec { command, .. }
            if command.is_empty() || command[0].trim().is_empty() =>
        {
            bad("exec needs a command: [program, args...]".to_owned())
        }
        ExecutorSettings::Http { url, .. }
            if !(url.starts_with("http://") || url.starts_with("https://")) =>
        {
            bad(format!("url {url:?} must start with http:// or https://"))
        }
        ExecutorSettings::Exec { timeout_ms, .. } | ExecutorSettings::Http { timeout_ms, .. }
            if !timeout_ok(*timeout_ms) =>
        {
            bad(format!("timeout_ms must be 1 to {MAX_TIMEOUT_MS}"))
        }
        _ => Ok(executor),
    }
}

fn parse_name(raw: String) -> Result<String, ApiError> {
    let name = raw.trim();
    if name.is_empty() || name.chars().count() > 128 {
        return Err(ApiError::bad_request(
            "invalid_name",
            "name must be 1 to 128 characters",
        ));
    }
    Ok(name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: &str) -> TaskId {
        raw.parse().expect("a valid id")
    }

    #[test]
    fn a_retry_id_counts_up_from_the_original() {
        assert_eq!(retry_id(&id("8fb44756")).ok(), Some(id("8fb44756-retry")));
        assert_eq!(
            retry_id(&id("8fb44756-retry")).ok(),
            Some(id("8fb44756-retry2"))
        );
        assert_eq!(
            retry_id(&id("8fb44756-retry9")).ok(),
            Some(id("8fb44756-retry10"))
        );
        assert_eq!(retry_id(&id("a-retryx")).ok(), Some(id("a-retryx-retry")));
        assert!(retry_id(&id(&"a".repeat(64))).is_err(), "too long to retry");
    }
}
