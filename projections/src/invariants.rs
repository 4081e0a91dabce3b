//! The money (and reputation) invariants a read model must satisfy, checked from its own records.
//!
//! Every check reads the trees directly (tasks with their escrow, balances, the escrow account's
//! ledger), so it also catches a record the projection wrote wrongly, not only a wrong
//! event. A finished task whose escrow is still held is not a violation: settlement runs
//! after the outcome, so it is reported as pending.

use std::collections::BTreeMap;

use crate::tables::{decode, index_prefix, ledger_key_sequence, ProjectionError, ReadModel, Table};
use crate::views::{
    AgentView, BuyerView, LedgerRecord, RequestRecord, ReservationState, ReservationView, TaskView,
};
use aicp_events::domain::ledger::{Account, Escrow, EscrowState};
use aicp_events::domain::task::TaskStatus;
use serde::de::DeserializeOwned;

/// The outcome of the checks.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Report {
    /// Checks that held, as one line each.
    pub passed: Vec<String>,
    /// Violations, each naming the record.
    pub failed: Vec<String>,
    /// Work not done yet that is not wrong (settlement still to run).
    pub pending: Vec<String>,
}

/// Each idempotency key wrote one message, and its record names what that message wrote.
fn check_requests(model: &ReadModel, report: &mut Report) -> Result<(), ProjectionError> {
    let requests: Vec<(String, RequestRecord)> =
        entries(model, Table::Requests)?.into_iter().collect();
    let mut bad = 0;
    for (key, record) in &requests {
        let (principal, key) = key.split_once('\n').unwrap_or(("?", key));
        if !record.reused_by.is_empty() {
            bad += 1;
            report.failed.push(format!(
                "idempotency key {key:?} of {principal} was written by message {} and again by {:?}",
                record.sequence, record.reused_by
            ));
        }
        let named = [
            record.task.is_some(),
            record.agent.is_some(),
            record.token.is_some(),
            record.buyer.is_some(),
        ];
        if named.iter().filter(|n| **n).count() != 1 {
            bad += 1;
            report.failed.push(format!(
                "idempotency key {key:?} of {principal} (message {}) does not name the one task, agent, token or buyer it wrote",
                record.sequence
            ));
        }
    }
    if bad == 0 {
        report.passed.push(format!(
            "each of the {} idempotency keys wrote one message",
            requests.len()
        ));
    }
    Ok(())
}

/// Every prepaid buyer's balance is its deposits less its reserved tasks, never below
/// zero, and no reservation broke a limit; every reservation agrees with its task.
fn check_budgets(
    model: &ReadModel,
    tasks: &[TaskView],
    buyers: &[BuyerView],
    report: &mut Report,
) -> Result<(), ProjectionError> {
    let reservations: Vec<ReservationView> = values(model, Table::Reservations)?;
    let by_id: BTreeMap<&str, &TaskView> =
        tasks.iter().map(|t| (t.task.task_id.as_str(), t)).collect();
    // Per buyer: (committed, pending) as its reservations add up.
    let mut sums: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    let mut ok = true;
    let mut waiting = 0usize;
    for r in &reservations {
        let sum = sums.entry(r.buyer_id.to_string()).or_default();
        let task = by_id.get(r.task_id.as_str());
        let agrees = match (r.state, task) {
            (ReservationState::Pending, None) => {
                waiting += 1;
                true
            }
            (ReservationState::Released, None) => true,
            (ReservationState::Pending | ReservationState::Released, Some(_)) => false,
            (_, None) => false,
            (ReservationState::Held | ReservationState::Refunded, Some(t)) => {
                let paid = match r.state {
                    ReservationState::Held => {
                        matches!(t.payment, Some(EscrowState::Held | EscrowState::Released))
                    }
                    _ => t.payment == Some(EscrowState::Refunded),
                };
                paid && t.task.buyer_id == r.buyer_id && t.task.price_sats == Some(r.amount_sats)
            }
        };
        if !agrees {
            ok = false;
            report.failed.push(format!(
                "reservations/{}: {:?} for {} sat of {}, but its task is {}",
                r.task_id,
                r.state,
                r.amount_sats,
                r.buyer_id,
                task.map(|t| format!(
                    "{} for {:?} sat of {} with payment {:?}",
                    t.task.status, t.task.price_sats, t.task.buyer_id, t.payment
                ))
                .unwrap_or_else(|| "not stored".into())
            ));
        }
        match r.state {
            ReservationState::Pending => {
                sum.0 += r.amount_sats;
                sum.1 += r.amount_sats;
            }
            ReservationState::Held => sum.0 += r.amount_sats,
            ReservationState::Refunded | ReservationState::Released => {}
        }
    }
    let mut prepaid = 0usize;
    for buyer in buyers {
        let id = buyer.buyer_id.to_string();
        let (committed, pending) = sums.remove(&id).unwrap_or_default();
        let Some(budget) = &buyer.budget else {
            if committed > 0 {
                ok = false;
                report.failed.push(format!(
                    "buyers/{id}: has {committed} sat reserved but no budget"
                ));
            }
            continue;
        };
        prepaid += 1;
        let mut fail = |what: String| {
            ok = false;
            report.failed.push(format!("buyers/{id}: {what}"));
        };
        if budget.committed_sats != committed || buyer.pending_sats != pending {
            fail(format!(
                "shows {} sat committed ({} pending), its reservations add up to {committed} ({pending})",
                budget.committed_sats, buyer.pending_sats
            ));
        }
        if budget.committed_sats > budget.deposited_sats {
            fail(format!(
                "committed {} sat but deposited only {}",
                budget.committed_sats, budget.deposited_sats
            ));
        }
        if buyer.overdrawn > 0 {
            fail(format!(
                "{} reservations broke its balance or a limit when they were made",
                buyer.overdrawn
            ));
        }
    }
    for (buyer, (committed, _)) in sums.into_iter().filter(|(_, (c, _))| *c > 0) {
        ok = false;
        report.failed.push(format!(
            "reservations: {committed} sat reserved for buyer {buyer}, which is not in the read model"
        ));
    }
    if ok {
        report.passed.push(format!(
            "each of the {prepaid} prepaid buyers' balance is its deposits less its {} reservations, never below zero nor past a limit",
            reservations.len()
        ));
    }
    if waiting > 0 {
        report.pending.push(format!(
            "{waiting} reservations wait for their task (a submission in flight, or one whose coordinator stopped: released after the sweep interval)"
        ));
    }
    Ok(())
}

/// How the escrow account's ledger moved money for one task.
#[derive(Debug, Default)]
struct Moves {
    held: Vec<i64>,
    released: Vec<i64>,
    refunded: Vec<i64>,
}

/// Checks the read model's books.
pub fn check(model: &ReadModel) -> Result<Report, ProjectionError> {
    let mut report = Report::default();
    let tasks: Vec<TaskView> = values(model, Table::Tasks)?;
    let balances: BTreeMap<String, i64> = entries(model, Table::Balances)?;
    let agents: Vec<AgentView> = values(model, Table::Agents)?;
    let buyers: Vec<BuyerView> = values(model, Table::Buyers)?;

    check_requests(model, &mut report)?;
    check_budgets(model, &tasks, &buyers, &mut report)?;

    // 1. Double entry: every transfer is booked on two accounts, so balances sum to zero.
    let total: i128 = balances.values().map(|b| i128::from(*b)).sum();
    if total == 0 {
        report
            .passed
            .push(format!("the {} balances sum to 0", balances.len()));
    } else {
        report
            .failed
            .push(format!("balances sum to {total} sat instead of 0"));
    }

    // 2. Escrow holds exactly the prices of the tasks whose money is held.
    let escrow_balance = balances
        .get(&Account::Escrow.to_string())
        .copied()
        .unwrap_or(0);
    let held_views: Vec<&TaskView> = tasks
        .iter()
        .filter(|t| t.payment == Some(EscrowState::Held))
        .collect();
    let held_tasks = held_views.len();
    let held: Vec<Escrow> = held_views.iter().filter_map(|t| t.escrow()).collect();
    let held_sum: i128 = held.iter().map(|e| i128::from(e.amount_sats)).sum();
    if i128::from(escrow_balance) == held_sum && held.len() == held_tasks {
        report.passed.push(format!(
            "escrow holds {escrow_balance} sat, the prices of the {} tasks whose money is held",
            held.len()
        ));
    } else {
        report.failed.push(format!(
            "escrow balance is {escrow_balance} sat, the prices of the {} tasks whose money is held add up to {held_sum} sat ({} held tasks lack an agent or a price)",
            held.len(),
            held_tasks - held.len()
        ));
    }

    // 3. Every task's money moved once each way it should, for its price.
    let mut moves: BTreeMap<String, Moves> = BTreeMap::new();
    let escrow_prefix = index_prefix(&Account::Escrow.to_string());
    let mut escrow_end = escrow_prefix.clone();
    // The first key after every key that starts with the prefix (which ends in a 0 byte).
    if let Some(last) = escrow_end.last_mut() {
        *last = 1;
    }
    for row in model.rows(Table::Ledger, escrow_prefix..escrow_end)? {
        let (key, bytes) = row?;
        let record: LedgerRecord = decode(Table::Ledger, &key, &bytes)?;
        let Some(sequence) = ledger_key_sequence(&key) else {
            report.failed.push(format!(
                "ledger/escrow: key {:?} holds no sequence",
                String::from_utf8_lossy(&key)
            ));
            continue;
        };
        let entry = record.entry(Account::Escrow, sequence);
        let m = moves.entry(entry.task_id.to_string()).or_default();
        match (&entry.counterparty, entry.amount_sats > 0) {
            (Account::Buyer(_), true) => m.held.push(entry.amount_sats),
            (Account::Buyer(_), false) => m.refunded.push(-entry.amount_sats),
            (Account::Agent(_), false) => m.released.push(-entry.amount_sats),
            _ => report.failed.push(format!(
                "ledger/escrow seq {}: unexpected transfer of {} sat with {}",
                entry.sequence, entry.amount_sats, entry.counterparty
            )),
        }
    }
    let (mut finished, mut settled_ok) = (0usize, true);
    let mut unsettled = 0usize;
    for view in &tasks {
        let t = &view.task;
        let id = t.task_id.to_string();
        let price = t.price_sats.map(|p| p as i64);
        let m = moves.remove(&id).unwrap_or_default();
        let mut fail = |what: String| {
            settled_ok = false;
            report.failed.push(format!("tasks/{id}: {what}"));
        };
        if m.held.len() > 1 || m.released.len() > 1 || m.refunded.len() > 1 {
            fail(format!(
                "money moved more than once: held {:?}, released {:?}, refunded {:?}",
                m.held, m.released, m.refunded
            ));
            continue;
        }
        if m.released.len() + m.refunded.len() > m.held.len() {
            fail("paid out without being held".into());
            continue;
        }
        if !m.released.is_empty() && !m.refunded.is_empty() {
            fail("both released and refunded".into());
            continue;
        }
        for amount in m.held.iter().chain(&m.released).chain(&m.refunded) {
            if Some(*amount) != price {
                fail(format!("moved {amount} sat but its price is {price:?}"));
            }
        }
        // What the ledger says the payment is: (held, released, refunded) moves.
        let ledger_says = match (m.held.len(), m.released.len(), m.refunded.len()) {
            (0, 0, 0) => None,
            (1, 0, 0) => Some(EscrowState::Held),
            (1, 1, 0) => Some(EscrowState::Released),
            (1, 0, 1) => Some(EscrowState::Refunded),
            _ => Some(EscrowState::Held), // impossible after the checks above
        };
        let payment_matches = view.payment == ledger_says;
        if !payment_matches {
            fail(format!(
                "shows payment {:?}, which its ledger does not",
                view.payment
            ));
        }
        if !t.status.is_terminal() {
            if !m.released.is_empty() || !m.refunded.is_empty() {
                fail(format!(
                    "is {} but its money was already paid out",
                    t.status
                ));
            }
            continue;
        }
        finished += 1;
        match (t.status, &view.payment) {
            (TaskStatus::Completed, Some(EscrowState::Released))
            | (
                TaskStatus::Failed | TaskStatus::Cancelled | TaskStatus::Expired,
                Some(EscrowState::Refunded),
            ) => {}
            (_, None | Some(EscrowState::Held)) => unsettled += 1,
            (status, Some(payment)) => fail(format!("is {status} but its money was {payment}")),
        }
    }
    for (task, m) in &moves {
        report.failed.push(format!(
            "ledger/escrow: money moved for task {task}, which does not exist ({} entries)",
            m.held.len() + m.released.len() + m.refunded.len()
        ));
    }
    if settled_ok {
        report.passed.push(format!(
            "each of the {} tasks had its money held, released or refunded at most once, for its price ({finished} finished)",
            tasks.len()
        ));
    }
    if unsettled > 0 {
        report.pending.push(format!(
            "{unsettled} finished tasks are not settled yet (settlement runs while a coordinator is up)"
        ));
    }

    // 4. Every agent's balance is the prices of its completed, released tasks.
    let mut earned: BTreeMap<String, i64> = BTreeMap::new();
    for view in &tasks {
        if let (Some(agent), Some(price), Some(EscrowState::Released)) =
            (&view.task.agent_id, view.task.price_sats, view.payment)
        {
            *earned.entry(agent.to_string()).or_default() += price as i64;
        }
    }
    let mut agents_ok = true;
    for agent in &agents {
        let id = agent.agent_id.to_string();
        let booked = balances
            .get(&Account::Agent(agent.agent_id.clone()).to_string())
            .copied()
            .unwrap_or(0);
        let expected = earned.remove(&id).unwrap_or(0);
        if booked != expected || agent.balance_sats != expected {
            agents_ok = false;
            report.failed.push(format!(
                "agents/{id}: balance {booked} sat (shown as {}), but its paid tasks' prices add up to {expected} sat",
                agent.balance_sats
            ));
        }
    }
    for (agent, sats) in earned {
        agents_ok = false;
        report.failed.push(format!(
            "agents/{agent}: was paid {sats} sat but is not registered"
        ));
    }
    if agents_ok {
        report.passed.push(format!(
            "each of the {} agents' balance equals its paid tasks' prices",
            agents.len()
        ));
    }

    // 5. Every buyer's figures agree with its tasks' money.
    let mut buyers_ok = true;
    for buyer in &buyers {
        let id = &buyer.buyer_id;
        let mine = tasks.iter().filter(|t| &t.task.buyer_id == id);
        let (mut spent, mut open, mut refunded) = (0u64, 0u64, 0u64);
        for t in mine {
            let price = t.task.price_sats.unwrap_or(0);
            match t.payment {
                Some(EscrowState::Released) => spent += price,
                Some(EscrowState::Held) => open += price,
                Some(EscrowState::Refunded) => refunded += price,
                None => {}
            }
        }
        let booked = balances
            .get(&Account::Buyer(id.clone()).to_string())
            .copied()
            .unwrap_or(0);
        let figures = (
            buyer.spent_sats,
            buyer.open_escrow_sats,
            buyer.refunded_sats,
        );
        if figures != (spent, open, refunded) || booked != -((spent + open) as i64) {
            buyers_ok = false;
            report.failed.push(format!(
                "buyers/{id}: shows spent/open/refunded {figures:?} and balance {booked}, its tasks say ({spent}, {open}, {refunded}) and {}",
                -((spent + open) as i64)
            ));
        }
    }
    if buyers_ok {
        report.passed.push(format!(
            "each of the {} buyers' spend, open escrow and balance agree with its tasks",
            buyers.len()
        ));
    }

    // 6. Every agent's reputation counts each of its recorded outcomes once.
    let mut outcomes: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for view in tasks.iter().filter(|t| t.outcome_recorded) {
        if let Some(agent) = &view.task.agent_id {
            let counts = outcomes.entry(agent.to_string()).or_default();
            match view.task.status {
                TaskStatus::Completed => counts.0 += 1,
                _ => counts.1 += 1,
            }
        }
    }
    let mut reputations_ok = true;
    for agent in &agents {
        let r = &agent.reputation;
        let (successes, failures) = outcomes
            .get(agent.agent_id.as_str())
            .copied()
            .unwrap_or_default();
        if (r.successes, r.failures) != (successes, failures) {
            reputations_ok = false;
            report.failed.push(format!(
                "agents/{}: reputation counts {} successes and {} failures, but its tasks recorded {successes} and {failures}",
                agent.agent_id, r.successes, r.failures
            ));
        }
    }
    if reputations_ok {
        report.passed.push(format!(
            "each of the {} agents' reputation counts its recorded outcomes once",
            agents.len()
        ));
    }
    Ok(report)
}

fn values<T: DeserializeOwned>(model: &ReadModel, table: Table) -> Result<Vec<T>, ProjectionError> {
    let mut out = Vec::new();
    for row in model.rows(table, ..)? {
        let (key, bytes) = row?;
        out.push(decode(table, &key, &bytes)?);
    }
    Ok(out)
}

fn entries<T: DeserializeOwned>(
    model: &ReadModel,
    table: Table,
) -> Result<BTreeMap<String, T>, ProjectionError> {
    let mut out = BTreeMap::new();
    for row in model.rows(table, ..)? {
        let (key, bytes) = row?;
        out.insert(
            String::from_utf8_lossy(&key).into_owned(),
            decode(table, &key, &bytes)?,
        );
    }
    Ok(out)
}
