//! One fixed example of every event type, for codec tests and schema fixtures.

use std::collections::BTreeSet;

use chrono::{DateTime, TimeZone, Utc};
use uuid::Uuid;

use crate::domain::access::Principal;
use crate::domain::assign::Policy;
use crate::domain::pricing::{Complexity, MultiplierMilli};
use crate::envelope::Envelope;
use crate::event::*;
use crate::id::{AgentId, BuyerId, TaskId};

fn at(minute: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(2026, 11, 24, 10, minute, 0)
        .single()
        .unwrap_or(DateTime::<Utc>::MIN_UTC)
}

fn id<T: std::str::FromStr>(s: &str) -> T
where
    T::Err: std::fmt::Debug,
{
    s.parse().expect("sample ids are valid")
}

/// `event` in an envelope with ids and time derived from `n`, so fixtures are stable.
pub fn sample_envelope(n: u128, event: impl Into<Event>) -> Envelope {
    Envelope {
        event_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000 + n),
        occurred_at: at(n as u32 % 60),
        correlation_id: Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000),
        causation_id: (n > 0)
            .then(|| Uuid::from_u128(0x0193_0000_0000_7000_8000_0000_0000_0000 + n - 1)),
        principal: None,
        request: None,
        event: event.into(),
    }
}

/// A plain submission for tests that need many tasks: complexity 2, no skills, price
/// limit or deadline, best reputation.
pub fn sample_submitted(task: &TaskId, buyer: &BuyerId, description: String) -> TaskSubmitted {
    TaskSubmitted {
        task_id: task.clone(),
        buyer_id: buyer.clone(),
        description,
        complexity: Complexity::new(2).expect("2 is a valid complexity"),
        required_skills: BTreeSet::new(),
        max_price_sats: None,
        deadline: None,
        policy: Policy::BestReputation,
    }
}

/// One envelope of every event type in the catalogue, in [`Event::TYPES`] order.
pub fn sample_events() -> Vec<Envelope> {
    let task: TaskId = id("a1b2c3d4");
    let buyer: BuyerId = id("buyer-001");
    let agent: AgentId = id("agent-1");
    let skills: BTreeSet<String> = ["nlp".to_owned()].into();
    let events: Vec<Event> = vec![
        TaskSubmitted {
            task_id: task.clone(),
            buyer_id: buyer.clone(),
            description: "Process payment".into(),
            complexity: Complexity::new(2).expect("valid"),
            required_skills: skills.clone(),
            max_price_sats: Some(500_000),
            deadline: Some(at(30)),
            policy: Policy::BestReputation,
        }
        .into(),
        TaskAssigned {
            task_id: task.clone(),
            agent_id: agent.clone(),
            multiplier: MultiplierMilli(2000),
            price_sats: 400_000,
            assignment: 1,
        }
        .into(),
        TaskStarted {
            task_id: task.clone(),
            agent_id: agent.clone(),
            assignment: 1,
            worker_id: "worker-7f9c".into(),
        }
        .into(),
        TaskCompleted {
            task_id: task.clone(),
            agent_id: agent.clone(),
            result: "payment processed".into(),
        }
        .into(),
        TaskFailed {
            task_id: task.clone(),
            agent_id: agent.clone(),
            reason: "max-deliveries".into(),
        }
        .into(),
        TaskCancelled {
            task_id: task.clone(),
            buyer_id: buyer.clone(),
            reason: "no longer needed".into(),
        }
        .into(),
        TaskExpired {
            task_id: task.clone(),
            deadline: at(30),
        }
        .into(),
        AgentRegistered {
            agent_id: agent.clone(),
            name: "Agent One".into(),
            skills: skills.clone(),
            mode: AgentMode::Worker,
            prior_rate_bp: 9500,
            prior_weight: 20,
            executor: Some(ExecutorSettings::Simulate {
                mean_duration_ms: 250,
            }),
        }
        .into(),
        AgentOutcomeRecorded {
            agent_id: agent.clone(),
            task_id: task.clone(),
            success: true,
            successes: 1,
            failures: 0,
            rate_bp: 9523,
            multiplier: MultiplierMilli(2000),
        }
        .into(),
        AgentOutcomeCounted {
            task_id: task.clone(),
            agent_id: agent.clone(),
            success: true,
        }
        .into(),
        AgentUpdated {
            agent_id: agent.clone(),
            name: None,
            skills: Some(skills),
            mode: Some(AgentMode::Manual),
            accepting: Some(false),
            executor: Some(ExecutorSettings::Http {
                url: "http://127.0.0.1:9000/run".into(),
                timeout_ms: 30_000,
            }),
        }
        .into(),
        EscrowHeld {
            task_id: task.clone(),
            buyer_id: buyer.clone(),
            agent_id: agent.clone(),
            amount_sats: 400_000,
        }
        .into(),
        EscrowReleased {
            task_id: task.clone(),
            agent_id: agent,
            amount_sats: 400_000,
        }
        .into(),
        EscrowRefunded {
            task_id: task.clone(),
            buyer_id: buyer.clone(),
            amount_sats: 400_000,
            reason: "task failed".into(),
        }
        .into(),
        TokenIssued {
            token_id: id("t-0123456789abcdef"),
            principal: id("buyer:buyer-001"),
            hash: crate::token::TokenSecret::from_text("aicp_sample").hash(),
            label: "buyer-001's laptop".into(),
        }
        .into(),
        TokenRevoked {
            token_id: id("t-0123456789abcdef"),
            reason: "laptop lost".into(),
        }
        .into(),
        FundsDeposited {
            buyer_id: buyer.clone(),
            amount_sats: 1_000_000,
            reference: "invoice 2026-117".into(),
        }
        .into(),
        SpendingLimitsSet {
            buyer_id: buyer.clone(),
            daily_sats: Some(500_000),
            total_sats: None,
        }
        .into(),
        FundsReserved {
            buyer_id: buyer.clone(),
            task_id: task.clone(),
            amount_sats: 400_000,
            day: at(0).date_naive(),
        }
        .into(),
        FundsReleased {
            buyer_id: buyer,
            task_id: task,
            reason: "task id taken".into(),
        }
        .into(),
    ];
    events
        .into_iter()
        .enumerate()
        .map(|(n, e)| {
            let envelope = sample_envelope(n as u128, e);
            // Token and deposit events show how an envelope records who caused it.
            match envelope.event {
                Event::TokenIssued(_) | Event::TokenRevoked(_) | Event::FundsDeposited(_) => {
                    envelope.by(Principal::Admin)
                }
                _ => envelope,
            }
        })
        .collect()
}

/// A message payload holding one envelope like `template`, but with `data` written as
/// `event_type` version `schema_version`: how old (or future) code wrote its events.
pub fn encode_as_version(
    template: &Envelope,
    event_type: &str,
    schema_version: u16,
    data: &impl serde::Serialize,
) -> Result<Vec<u8>, crate::codec::EncodeError> {
    let data = rmp_serde::to_vec_named(data)?;
    crate::codec::encode_raw(template, event_type, schema_version, data)
}
