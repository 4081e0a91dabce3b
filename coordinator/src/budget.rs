//! Prepaid balances and spending limits: deposits, limits, and the reservation each task
//! of a prepaid buyer makes from its balance before the task is stored.
//!
//! Every write to a buyer's budget is a message on the buyer's subject appended under the
//! buyer's last sequence, so two replicas racing to spend the same satoshis cannot both
//! win: the loser decides again on the newer balance. A reservation and its task are two
//! messages; a reservation whose task was never stored (its coordinator stopped between
//! them) goes back to the balance once it lapses.

use aicp_events::domain::access::{Action, Principal};
use aicp_events::domain::budget::Budget;
use aicp_events::event::{FundsDeposited, FundsReleased, FundsReserved, SpendingLimitsSet};
use aicp_events::id::{BuyerId, TaskId};
use aicp_events::store::AppendError;
use aicp_events::{Aggregate, Envelope, Expected};
use aicp_projections::views::{BuyerView, ReservationState};
use axum::extract::rejection::{JsonRejection, PathRejection};
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{post, put};
use axum::{Json, Router};
use chrono::{NaiveDate, Utc};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::auth::Caller;
use crate::commands::{parse_id, Written};
use crate::error::ApiError;
use crate::state::AppState;

/// The largest single deposit: every bitcoin there will ever be, in satoshis.
pub const MAX_DEPOSIT_SATS: u64 = 2_100_000_000_000_000;
/// Longest deposit reference, in characters.
const MAX_REFERENCE_CHARS: usize = 200;
/// How many times a budget write decides again after losing a race.
const ATTEMPTS: usize = 8;

/// The budget routes; reading a buyer (with its budget) is `GET /v1/buyers/{id}`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/buyers/{id}/deposits", post(deposit))
        .route("/v1/buyers/{id}/limits", put(set_limits))
}

/// A buyer's budget as JSON: what it has, what it may still spend, and its limits.
#[derive(Debug, Serialize)]
pub struct BudgetJson {
    deposited_satoshis: u64,
    balance_satoshis: u64,
    pending_satoshis: u64,
    spent_today_satoshis: u64,
    spent_total_satoshis: u64,
    daily_limit_satoshis: Option<u64>,
    total_limit_satoshis: Option<u64>,
    left_today_satoshis: u64,
}

impl BudgetJson {
    /// The budget as it stands on `today` (UTC).
    pub fn of(budget: &Budget, pending_sats: u64, today: NaiveDate) -> Self {
        Self {
            deposited_satoshis: budget.deposited_sats,
            balance_satoshis: budget.balance_sats(),
            pending_satoshis: pending_sats,
            spent_today_satoshis: budget.spent_on(today),
            spent_total_satoshis: budget.committed_sats,
            daily_limit_satoshis: budget.limits.daily_sats,
            total_limit_satoshis: budget.limits.total_sats,
            left_today_satoshis: budget.available_sats(today),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct DepositBody {
    amount_satoshis: u64,
    #[serde(default)]
    reference: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct LimitsBody {
    #[serde(default)]
    daily_limit_satoshis: Option<u64>,
    #[serde(default)]
    total_limit_satoshis: Option<u64>,
}

/// `POST /v1/buyers/{id}/deposits`: pays satoshis in to a buyer's balance (admin only).
async fn deposit(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<DepositBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path?;
    let buyer: BuyerId = parse_id(&id)?;
    caller.may(Action::Deposit { buyer: &buyer })?;
    let Json(body) = body?;
    let written = state
        .deposit(
            &buyer,
            body.amount_satoshis,
            body.reference,
            &caller.principal,
        )
        .await?;
    answer(&state, &buyer, written, StatusCode::CREATED)
}

/// `PUT /v1/buyers/{id}/limits`: sets (or, with null, removes) a buyer's spending limits.
async fn set_limits(
    State(state): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<LimitsBody>, JsonRejection>,
) -> Result<Response, ApiError> {
    let Path(id) = path?;
    let buyer: BuyerId = parse_id(&id)?;
    caller.may(Action::SetLimits { buyer: &buyer })?;
    let Json(body) = body?;
    let limits = SpendingLimitsSet {
        buyer_id: buyer.clone(),
        daily_sats: body.daily_limit_satoshis,
        total_sats: body.total_limit_satoshis,
    };
    let written = state.set_limits(limits, &caller.principal).await?;
    answer(&state, &buyer, written, StatusCode::OK)
}

/// The buyer as the write left it once this replica shows it; else 202 with its sequence.
fn answer(
    state: &AppState,
    buyer: &BuyerId,
    written: Written,
    status: StatusCode,
) -> Result<Response, ApiError> {
    if !written.visible {
        return Ok((
            StatusCode::ACCEPTED,
            Json(json!({"sequence": written.sequence, "buyer_id": buyer})),
        )
            .into_response());
    }
    let view = state
        .model
        .buyer(buyer)?
        .unwrap_or_else(|| BuyerView::new(buyer.clone()));
    Ok((status, Json(crate::routes::BuyerJson::from(view))).into_response())
}

impl AppState {
    /// Pays `amount_sats` in to `buyer`'s balance.
    pub async fn deposit(
        &self,
        buyer: &BuyerId,
        amount_sats: u64,
        reference: String,
        by: &Principal,
    ) -> Result<Written, ApiError> {
        if let Some(first) = self.replayed() {
            return Ok(self.written(first.sequence).await);
        }
        if amount_sats == 0 || amount_sats > MAX_DEPOSIT_SATS {
            return Err(ApiError::bad_request(
                "invalid_amount",
                format!("amount_satoshis must be 1 to {MAX_DEPOSIT_SATS}, not {amount_sats}"),
            ));
        }
        let reference = reference.trim().to_owned();
        if reference.chars().count() > MAX_REFERENCE_CHARS {
            return Err(ApiError::bad_request(
                "invalid_reference",
                format!("reference is longer than {MAX_REFERENCE_CHARS} characters"),
            ));
        }
        let event = FundsDeposited {
            buyer_id: buyer.clone(),
            amount_sats,
            reference,
        };
        let (sequence, ()) = self
            .write_budget(buyer, true, |view| {
                let room = view
                    .budget
                    .as_ref()
                    .map_or(u64::MAX, |b| u64::MAX - b.deposited_sats);
                if amount_sats > room {
                    return Err(ApiError::bad_request(
                        "invalid_amount",
                        format!("buyer {buyer}'s deposits would pass what a balance can hold"),
                    ));
                }
                Ok((vec![Envelope::new(event.clone()).by(by.clone())], ()))
            })
            .await?;
        Ok(self.written(sequence).await)
    }

    /// Sets a buyer's spending limits.
    pub async fn set_limits(
        &self,
        limits: SpendingLimitsSet,
        by: &Principal,
    ) -> Result<Written, ApiError> {
        if let Some(first) = self.replayed() {
            return Ok(self.written(first.sequence).await);
        }
        let buyer = limits.buyer_id.clone();
        let (sequence, ()) = self
            .write_budget(&buyer, true, |_| {
                Ok((vec![Envelope::new(limits.clone()).by(by.clone())], ()))
            })
            .await?;
        Ok(self.written(sequence).await)
    }

    /// The buyer's view if its tasks are paid from a prepaid balance: it has a budget, or
    /// every buyer must have one.
    pub fn prepaid(&self, buyer: &BuyerId) -> Result<Option<BuyerView>, ApiError> {
        let view = self.model.buyer(buyer)?;
        Ok(match view {
            Some(view) if view.budget.is_some() => Some(view),
            view if self.require_deposit => {
                let mut view = view.unwrap_or_else(|| BuyerView::new(buyer.clone()));
                view.budget = Some(Budget::default());
                Some(view)
            }
            _ => None,
        })
    }

    /// Reserves each task's price from `buyer`'s balance, in order, in one message: one
    /// answer per task, a 402 naming the limit for each the budget cannot cover.
    pub async fn reserve(
        &self,
        buyer: &BuyerId,
        tasks: &[(TaskId, u64)],
        by: &Principal,
    ) -> Result<Vec<Result<(), ApiError>>, ApiError> {
        let today = Utc::now().date_naive();
        let (_, answers) = self
            .write_budget(buyer, false, |view| {
                let mut budget = view.budget.clone().unwrap_or_default();
                let mut events = Vec::new();
                let mut decided = Vec::with_capacity(tasks.len());
                for (task_id, amount_sats) in tasks {
                    match budget.commit(*amount_sats, today) {
                        Ok(()) => {
                            decided.push(Ok(()));
                            let reserved = FundsReserved {
                                buyer_id: buyer.clone(),
                                task_id: task_id.clone(),
                                amount_sats: *amount_sats,
                                day: today,
                            };
                            events.push(Envelope::new(reserved).by(by.clone()));
                        }
                        Err(short) => decided.push(Err(ApiError::payment_required(short, buyer))),
                    }
                }
                Ok((events, decided))
            })
            .await?;
        Ok(answers)
    }

    /// Gives a reservation whose task was not stored back to the balance. A failure is
    /// logged, not returned: the reservation lapses and the sweep releases it later.
    pub async fn release(&self, buyer: &BuyerId, task_id: &TaskId, reason: &str) {
        let event = FundsReleased {
            buyer_id: buyer.clone(),
            task_id: task_id.clone(),
            reason: reason.to_owned(),
        };
        // The reservation was just appended: the read model must show it to release it.
        if let Ok(last) = self.store.last_sequence().await {
            self.progress.wait_for(last, self.write_wait).await;
        }
        let written = self
            .write_budget(buyer, false, |_| {
                // Another replica's sweep may have released it first.
                let pending = self
                    .model
                    .reservation(task_id)?
                    .is_some_and(|r| r.state == ReservationState::Pending);
                let events = if pending {
                    vec![Envelope::new(event.clone()).by(Principal::Coordinator)]
                } else {
                    Vec::new()
                };
                Ok((events, ()))
            })
            .await;
        if let Err(e) = written {
            tracing::warn!(buyer = %buyer, task = %task_id, "reservation not released: {}", e.message);
        }
    }

    /// Releases every reservation that has waited longer than the lapse for a task that
    /// is not stored.
    pub async fn release_lapsed(&self) {
        let pending = match self.model.pending_reservations() {
            Ok(pending) => pending,
            Err(e) => {
                tracing::warn!("cannot list pending reservations: {e}");
                return;
            }
        };
        let lapse =
            chrono::Duration::from_std(self.reservation_lapse).unwrap_or(chrono::Duration::MAX);
        let now = Utc::now();
        for r in pending {
            if now - r.reserved_at < lapse {
                continue;
            }
            match self.model.task(&r.task_id) {
                Ok(None) => {
                    tracing::warn!(buyer = %r.buyer_id, task = %r.task_id, "releasing a reservation whose task was never stored");
                    self.release(&r.buyer_id, &r.task_id, "its task was never stored")
                        .await;
                }
                // Stored: its escrow settles the reservation as the read model applies it.
                Ok(Some(_)) => {}
                Err(e) => tracing::warn!("cannot read task {}: {e}", r.task_id),
            }
        }
    }

    /// Appends the events `decide` makes of the buyer's view under the buyer's last
    /// sequence, and answers the sequence with what else `decide` said; after a lost race,
    /// waits for the read model to show the winner and decides again. Nothing is appended
    /// if `decide` gives no events. `keyed` writes carry the
    /// request's Idempotency-Key (a deposit), others never do (a submission's reservation).
    async fn write_budget<T>(
        &self,
        buyer: &BuyerId,
        keyed: bool,
        decide: impl Fn(&BuyerView) -> Result<(Vec<Envelope>, T), ApiError>,
    ) -> Result<(u64, T), ApiError> {
        let aggregate = Aggregate::Buyer(buyer.clone());
        for _ in 0..ATTEMPTS {
            let view = self
                .model
                .buyer(buyer)?
                .unwrap_or_else(|| BuyerView::new(buyer.clone()));
            let (events, decided) = decide(&view)?;
            let Some(first) = events.first() else {
                return Ok((view.last_sequence, decided));
            };
            let expected = Expected::Sequence(view.last_sequence);
            // A publish retried after a lost acknowledgement is recognised as this one.
            let msg_id = format!("budget:{}", first.event_id);
            let appended = if keyed {
                self.append(&aggregate, &events, expected, Some(&msg_id))
                    .await
            } else {
                self.append_unkeyed(&aggregate, &events, expected, Some(&msg_id))
                    .await
            };
            match appended {
                Ok(appended) => {
                    if keyed {
                        if let Some(first) = self.duplicate_of(&events, &appended).await? {
                            return Ok((first.sequence, decided));
                        }
                    }
                    return Ok((appended.sequence, decided));
                }
                Err(AppendError::Conflict { .. }) => {
                    // Someone wrote the budget since this replica's view: decide again
                    // once the read model shows what the stream holds now.
                    let last = self.store.last_sequence().await?;
                    self.progress.wait_for(last, self.write_wait).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(ApiError::unavailable(format!(
            "buyer {buyer}'s budget keeps changing, or this replica's read model is behind; retry"
        )))
    }
}
