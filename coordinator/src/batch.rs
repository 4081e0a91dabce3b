//! `POST /v1/tasks/batch`: up to [`MAX_BATCH`] tasks in one request, each accepted or
//! refused on its own.
//!
//! Every item is checked and assigned in order, as if submitted one after another: each
//! assignment counts towards the next (the round-robin turn, the agent's active tasks).
//! Each accepted task is then its own message, as a single submission is, so a task's
//! events stay on its subject and a refused item costs the others nothing; the messages
//! are published without waiting for one acknowledgement before the next publish.
//!
//! With an `Idempotency-Key` `K`, item `i` is written with a key derived from `K` (see
//! `aicp_events::request::item_key`) and the whole
//! batch's fingerprint: a retried batch answers its stored items from the read model and
//! submits only those that were not stored (a refusal is decided again).

use std::collections::{BTreeMap, BTreeSet};

use aicp_events::domain::access::Principal;
use aicp_events::id::{BuyerId, TaskId};
use aicp_projections::views::RequestRecord;
use axum::extract::rejection::JsonRejection;
use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::json;

use crate::auth::Caller;
use crate::commands::{Reserved, Submission, SubmitTask, Submitted};
use crate::error::ApiError;
use crate::idempotency::{self, Keyed};
use crate::routes::{SubmitBody, TaskJson};
use crate::state::AppState;

/// The batch route's path.
pub const PATH: &str = "/v1/tasks/batch";

/// Most tasks one batch may hold.
pub const MAX_BATCH: usize = 1000;

/// Publishes awaiting their acknowledgement at once: enough to keep the server busy,
/// few enough that a batch does not crowd out other requests' appends.
const IN_FLIGHT: usize = 64;

/// The batch route, with its own body limit (a thousand tasks do not fit the default).
pub(crate) fn router(max_body: usize) -> Router<AppState> {
    Router::new().route(
        PATH,
        post(submit_batch).layer(DefaultBodyLimit::max(max_body)),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BatchBody {
    /// Each item is parsed on its own, so a malformed one refuses only itself.
    tasks: Vec<serde_json::Value>,
}

/// `POST /v1/tasks/batch`: 200 with one answer per item, in order.
async fn submit_batch(
    State(state): State<AppState>,
    caller: Caller,
    body: Result<Json<BatchBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Json(body) = body?;
    if body.tasks.is_empty() {
        return Err(ApiError::bad_request(
            "empty_batch",
            "tasks must hold at least one task",
        ));
    }
    if body.tasks.len() > MAX_BATCH {
        return Err(ApiError::bad_request(
            "batch_too_large",
            format!(
                "a batch holds at most {MAX_BATCH} tasks, got {}",
                body.tasks.len()
            ),
        ));
    }
    let commands = body
        .tasks
        .into_iter()
        .map(|item| {
            serde_json::from_value::<SubmitBody>(item)
                .map_err(|e| ApiError::bad_request("invalid_json", e.to_string()))
                .and_then(|b| b.authorized(&caller))
        })
        .collect();
    let outcomes = state.submit_batch(commands, &caller.principal).await?;
    let accepted = outcomes.iter().filter(|o| o.is_ok()).count();
    let items: Vec<serde_json::Value> = outcomes
        .into_iter()
        .enumerate()
        .map(|(index, outcome)| match outcome {
            Ok(done) => json!({
                "index": index,
                "status": 201,
                "task": TaskJson::from(done.decided.view),
            }),
            Err(e) => json!({
                "index": index,
                "status": e.status.as_u16(),
                "error": e.error_json(),
            }),
        })
        .collect();
    Ok(Json(json!({
        "accepted": accepted,
        "refused": items.len() - accepted,
        "items": items,
    }))
    .into_response())
}

/// What became of one item before anything is stored.
enum Step {
    /// Refused, or answered from an earlier request with the batch's key.
    Done(Box<Result<Submitted, ApiError>>),
    /// To be stored, under the item's key if the batch has one.
    Store(Box<(Submission, Option<Keyed>)>),
    /// To be stored under the id its price is reserved for.
    Reserved(Box<(Submission, Option<Keyed>, TaskId)>),
}

impl AppState {
    /// Submits each of `commands` (an item refused before it got here stays refused), in
    /// order; one answer per item. Fails as a whole only if the read model cannot be read,
    /// or the batch's key was used for another request.
    pub async fn submit_batch(
        &self,
        commands: Vec<Result<SubmitTask, ApiError>>,
        by: &Principal,
    ) -> Result<Vec<Result<Submitted, ApiError>>, ApiError> {
        let batch_key = idempotency::current();
        let firsts = match &batch_key {
            Some(keyed) => self.items_stored_before(keyed, commands.len())?,
            None => vec![None; commands.len()],
        };
        let mut candidates = self.candidates()?;
        let mut counter = self.model.counters()?.submitted;
        let mut steps = Vec::with_capacity(commands.len());
        for (index, (command, first)) in commands.into_iter().zip(firsts).enumerate() {
            if let Some(first) = first {
                let done = idempotency::task_of(first).and_then(crate::commands::submitted_of);
                steps.push(Step::Done(Box::new(done)));
                continue;
            }
            let decided = command.and_then(|c| self.decide_submission(c, &candidates, counter));
            match decided {
                Ok(submission) => {
                    // The next item sees this one's assignment, as a later request would.
                    counter += 1;
                    if let Some(agent) = candidates
                        .iter_mut()
                        .find(|c| c.agent_id == submission.choice.agent_id)
                    {
                        agent.active_tasks = agent.active_tasks.saturating_add(1);
                    }
                    let item_key = batch_key.as_ref().map(|k| k.item(index));
                    steps.push(Step::Store(Box::new((submission, item_key))));
                }
                Err(e) => steps.push(Step::Done(Box::new(Err(e)))),
            }
        }
        let steps = self.reserve_prepaid(steps, by).await?;
        let outcomes = futures::stream::iter(steps)
            .map(|step| async move {
                match step {
                    Step::Done(done) => *done,
                    Step::Store(item) => {
                        let (submission, key) = *item;
                        let ids = std::iter::repeat_with(TaskId::generate);
                        idempotency::scoped(key, self.store_decided(&submission, ids, by)).await
                    }
                    Step::Reserved(item) => {
                        let (submission, key, task_id) = *item;
                        idempotency::scoped(key, async {
                            match self.store_reserved(&submission, &task_id, by).await {
                                Reserved::Done(done) => *done,
                                // The rare taken id: reserved and stored again on its own.
                                Reserved::Taken => {
                                    let ids = std::iter::repeat_with(TaskId::generate);
                                    self.store_decided(&submission, ids, by).await
                                }
                            }
                        })
                        .await
                    }
                }
            })
            .buffered(IN_FLIGHT)
            .collect()
            .await;
        Ok(outcomes)
    }

    /// Reserves the prices of prepaid buyers' items, one message per buyer, in item order:
    /// an item its buyer's budget cannot cover is refused with 402, the rest are stored
    /// under the ids reserved for them.
    async fn reserve_prepaid(
        &self,
        steps: Vec<Step>,
        by: &Principal,
    ) -> Result<Vec<Step>, ApiError> {
        let mut prepaid: BTreeMap<BuyerId, Vec<usize>> = BTreeMap::new();
        let mut unpaid: BTreeSet<BuyerId> = BTreeSet::new();
        for (index, step) in steps.iter().enumerate() {
            let Step::Store(item) = step else { continue };
            let buyer = item.0.buyer_id();
            if unpaid.contains(buyer) {
                continue;
            }
            if prepaid.contains_key(buyer) || self.prepaid(buyer)?.is_some() {
                prepaid.entry(buyer.clone()).or_default().push(index);
            } else {
                unpaid.insert(buyer.clone());
            }
        }
        if prepaid.is_empty() {
            return Ok(steps);
        }
        let mut steps: Vec<Option<Step>> = steps.into_iter().map(Some).collect();
        for (buyer, indices) in prepaid {
            let mut items = Vec::with_capacity(indices.len());
            for &index in &indices {
                if let Some(Step::Store(item)) = &steps[index] {
                    items.push((TaskId::generate(), item.0.choice.price_sats));
                }
            }
            let answers = self.reserve(&buyer, &items, by).await?;
            for ((index, (task_id, _)), answer) in indices.into_iter().zip(items).zip(answers) {
                let Some(Step::Store(item)) = steps[index].take() else {
                    continue;
                };
                let (submission, key) = *item;
                steps[index] = Some(match answer {
                    Ok(()) => Step::Reserved(Box::new((submission, key, task_id))),
                    Err(refused) => Step::Done(Box::new(Err(refused))),
                });
            }
        }
        Ok(steps.into_iter().flatten().collect())
    }

    /// What an earlier request with the batch's key stored for each item; 409 if any was
    /// stored by another request.
    fn items_stored_before(
        &self,
        keyed: &Keyed,
        len: usize,
    ) -> Result<Vec<Option<RequestRecord>>, ApiError> {
        (0..len)
            .map(|index| {
                let item = keyed.item(index);
                self.key_record(&item.principal, &item.key)
            })
            .collect()
    }
}
