//! Replay: a stream of whole task lifecycles, generated straight into JetStream under a
//! namespace of its own, rebuilt by `aicp replay`; and the same stream read raw by an
//! ordered consumer, the limit the rebuild is compared with.

use std::collections::{BTreeSet, VecDeque};
use std::path::Path;
use std::time::Instant;

use aicp_events::codec::{encode_batch, CONTENT_TYPE};
use aicp_events::consumers;
use aicp_events::domain::assign::Policy;
use aicp_events::domain::pricing::{Complexity, MultiplierMilli};
use aicp_events::event::*;
use aicp_events::id::{AgentId, BuyerId, TaskId};
use aicp_events::store::CONTENT_TYPE_HEADER;
use aicp_events::{Aggregate, Envelope, EventStore, Namespace};
use anyhow::{bail, Context, Result};
use futures::StreamExt;

use crate::raw::WINDOW;

/// The namespace the generated stream lives in.
pub const PREFIX: &str = "replaybench";

/// What was generated.
#[derive(Debug, Clone, Copy)]
pub struct Generated {
    /// Stream messages.
    pub messages: u64,
    /// Events in them.
    pub events: u64,
}

/// How the generated lifecycles are laid out in messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Layout {
    /// Two messages per task, as coordinators write them now.
    Current,
    /// Six messages per task, as older coordinators wrote them.
    Older,
}

/// Writes `tasks` whole lifecycles (7 events each) in `layout`: tasks `t0000000`,
/// `t0000001`... of 1,000 buyers, all done by agent-1.
pub async fn generate(
    client: &async_nats::Client,
    tasks: u64,
    layout: Layout,
) -> Result<Generated> {
    let store = EventStore::new(client.clone(), Namespace::new(PREFIX)?);
    store.provision().await?;
    let js = store.jetstream().clone();
    let ns = store.namespace().clone();
    let agent: AgentId = "agent-1".parse()?;
    let mut acks = VecDeque::with_capacity(WINDOW);
    let mut counts = Generated {
        messages: 0,
        events: 0,
    };
    // Encodes one message (subject, payload) and counts it.
    let mut encode = |aggregate: Aggregate, batch: Vec<Event>| -> Result<(String, Vec<u8>)> {
        counts.messages += 1;
        counts.events += batch.len() as u64;
        let envelopes: Vec<Envelope> = batch.into_iter().map(Envelope::new).collect();
        Ok((ns.aggregate_subject(&aggregate), encode_batch(&envelopes)?))
    };
    let mut messages = vec![encode(
        Aggregate::Agent(agent.clone()),
        vec![AgentRegistered {
            agent_id: agent.clone(),
            name: "agent-1".into(),
            skills: BTreeSet::new(),
            mode: AgentMode::Worker,
            prior_rate_bp: 9500,
            prior_weight: 20,
            executor: None,
        }
        .into()],
    )?];
    let mut sent = 0u64;
    for n in 0..tasks {
        let task: TaskId = task_id(n).parse()?;
        let buyer: BuyerId = format!("buyer-{}", n % 1000).parse()?;
        let complexity = Complexity::new((n % 10 + 1) as i64)?;
        let price = 100_000 * u64::from(complexity.get()) * 2;
        let t = || Aggregate::Task(task.clone());
        let p = || Aggregate::Payment(task.clone());
        let submitted: Event = TaskSubmitted {
            task_id: task.clone(),
            buyer_id: buyer.clone(),
            description: "benchmark task".into(),
            complexity,
            required_skills: BTreeSet::new(),
            max_price_sats: None,
            deadline: None,
            policy: Policy::BestReputation,
        }
        .into();
        let assigned: Event = TaskAssigned {
            task_id: task.clone(),
            agent_id: agent.clone(),
            multiplier: MultiplierMilli(2000),
            price_sats: price,
            assignment: 1,
        }
        .into();
        let held: Event = EscrowHeld {
            task_id: task.clone(),
            buyer_id: buyer.clone(),
            agent_id: agent.clone(),
            amount_sats: price,
        }
        .into();
        let started: Event = TaskStarted {
            task_id: task.clone(),
            agent_id: agent.clone(),
            assignment: 1,
            worker_id: "bench".into(),
        }
        .into();
        let completed: Event = TaskCompleted {
            task_id: task.clone(),
            agent_id: agent.clone(),
            result: "done".into(),
        }
        .into();
        let released: Event = EscrowReleased {
            task_id: task.clone(),
            agent_id: agent.clone(),
            amount_sats: price,
        }
        .into();
        match layout {
            // What a coordinator writes today: two messages, the consequences riding in
            // the steps that cause them.
            Layout::Current => {
                let counted = AgentOutcomeCounted {
                    task_id: task.clone(),
                    agent_id: agent.clone(),
                    success: true,
                };
                messages.push(encode(t(), vec![submitted, assigned, held])?);
                messages.push(encode(
                    t(),
                    vec![started, completed, released, counted.into()],
                )?);
            }
            // Streams written before: six messages, money on the payment subject and the
            // outcome on the agent's.
            Layout::Older => {
                let recorded = AgentOutcomeRecorded {
                    agent_id: agent.clone(),
                    task_id: task.clone(),
                    success: true,
                    successes: n + 1,
                    failures: 0,
                    rate_bp: 9900,
                    multiplier: MultiplierMilli(2000),
                };
                messages.push(encode(t(), vec![submitted, assigned])?);
                messages.push(encode(p(), vec![held])?);
                messages.push(encode(t(), vec![started])?);
                messages.push(encode(t(), vec![completed])?);
                messages.push(encode(p(), vec![released])?);
                messages.push(encode(
                    Aggregate::Agent(agent.clone()),
                    vec![recorded.into()],
                )?);
            }
        }
        for (subject, payload) in messages.drain(..) {
            let mut headers = async_nats::HeaderMap::new();
            headers.insert(CONTENT_TYPE_HEADER, CONTENT_TYPE);
            acks.push_back(
                js.publish_with_headers(subject, headers, payload.into())
                    .await?,
            );
            sent += 1;
            if acks.len() >= WINDOW {
                if let Some(ack) = acks.pop_front() {
                    ack.await?;
                }
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    if sent != counts.messages {
        bail!("sent {sent} of {} messages", counts.messages);
    }
    Ok(counts)
}

/// Binds the coordinator's durable consumers to the generated stream and acks all they
/// would deliver, as a coordinator that handled these tasks live would have left them: a
/// coordinator started on the stream then serves reads instead of re-checking every task.
pub async fn catch_up_coordinator_consumers(client: &async_nats::Client) -> Result<()> {
    let store = EventStore::new(client.clone(), Namespace::new(PREFIX)?);
    let stream = store.events_stream().await?;
    for consumer in consumers::COORDINATOR_CONSUMERS {
        let durable = consumers::bind(&stream, store.namespace(), consumer).await?;
        let mut left = durable.cached_info().num_pending;
        while left > 0 {
            let mut batch = durable
                .fetch()
                .max_messages(FETCH.min(left as usize))
                .messages()
                .await?;
            while let Some(message) = batch.next().await {
                message
                    .map_err(|e| anyhow::anyhow!("fetching from {}: {e}", consumer.name))?
                    .ack()
                    .await
                    .map_err(|e| anyhow::anyhow!("acking on {}: {e}", consumer.name))?;
                left -= 1;
            }
        }
    }
    client.flush().await?;
    Ok(())
}

/// Messages fetched per request when acking the generated stream; below the consumers'
/// `max_ack_pending`.
const FETCH: usize = 1000;

/// The id of the `n`th generated task.
pub fn task_id(n: u64) -> String {
    format!("t{n:07}")
}

/// Reads the generated stream raw with an ordered consumer: messages per second.
pub async fn raw_read(client: &async_nats::Client, messages: u64) -> Result<f64> {
    let store = EventStore::new(client.clone(), Namespace::new(PREFIX)?);
    let stream = store.events_stream().await?;
    Ok(crate::raw::read_all(&stream, messages).await?.1)
}

/// A read model `aicp replay` built.
pub struct Rebuilt {
    /// Seconds taken: the whole command, start-up included.
    pub seconds: f64,
    /// Messages applied.
    pub messages: u64,
    /// Seconds of those spent compacting the file, after applying.
    pub compact_seconds: f64,
    /// The read model, in `_temp`.
    pub dir: std::path::PathBuf,
    _temp: tempfile::TempDir,
}

/// Runs `aicp replay` on the generated stream into a fresh directory.
pub fn rebuild(bin_dir: &Path, nats_url: &str) -> Result<Rebuilt> {
    let temp = tempfile::tempdir()?;
    let dir = temp.path().join("rebuilt");
    let started = Instant::now();
    let output = std::process::Command::new(bin_dir.join("aicp"))
        .args([
            "--nats-url",
            nats_url,
            "--prefix",
            PREFIX,
            "--json",
            "replay",
            "--out",
        ])
        .arg(&dir)
        .output()
        .context("running aicp replay")?;
    let seconds = started.elapsed().as_secs_f64();
    if !output.status.success() {
        bail!(
            "aicp replay failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let report: serde_json::Value = serde_json::from_slice(&output.stdout)?;
    Ok(Rebuilt {
        seconds,
        messages: report["messages"].as_u64().unwrap_or(0),
        compact_seconds: report["compact_seconds"].as_f64().unwrap_or(0.0),
        dir,
        _temp: temp,
    })
}
