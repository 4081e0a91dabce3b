//! The worker: pulls work messages, starts, executes and reports each task, acks.
//!
//! Per task: execute with progress acks so long work is not redelivered. Work that ends
//! within `--report-start-after-ms` is reported in one call: the start (with the
//! assignment its work message names) and the outcome together. Longer work tells the
//! coordinator it starts when that time passes: if the task finished, was cancelled,
//! expired or was assigned again, the work is dropped and the message acked; if the
//! coordinator has not seen the assignment yet (a replica that lags), it asks again.
//! Either way the outcome is reported, and only then is the message acked: the outcome is
//! recorded before the message goes. A redelivered message after a crash starts the task
//! again; if another worker reported first, ours is refused as stale and the message is
//! simply acked. The last delivery a message is allowed fails
//! its task with `max-deliveries` instead of running it again, and the coordinator
//! refunds it.
//!
//! The worker writes no events: the coordinator checks that its token serves the task's
//! agent and records each event with the worker as its principal.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use aicp_events::consumers::{self, WorkerConsumerSettings};
use aicp_events::domain::access::{Principal, WorkerScope};
use aicp_events::event::ExecutorSettings;
use aicp_events::id::AgentId;
use aicp_events::store::StreamSettings;
use aicp_events::work::{Heartbeat, WorkItem, HEARTBEAT_EVERY};
use aicp_events::{EventStore, Namespace};
use async_nats::jetstream::consumer::{pull, Consumer};
use async_nats::jetstream::{self, AckKind};
use futures::StreamExt;
use tokio::sync::{watch, Semaphore};
use tokio::task::JoinSet;

use crate::config::Config;
use crate::executor::{self, Outcome};
use crate::report::{Coordinator, ReportError};

pub use aicp_events::work::MAX_DELIVERIES;

/// `--agents all`: serve every agent that has work.
pub const ALL_AGENTS: &str = "all";

/// How often `--agents all` looks for new agents' queues.
const DISCOVERY: Duration = Duration::from_secs(2);

/// How long one pull waits for a message before asking again.
const PULL_EXPIRES: Duration = Duration::from_secs(2);

/// How long a refused report (a token that does not serve the agent) waits before the
/// message is offered again, maybe to a worker with the right token.
const REFUSED_DELAY: Duration = Duration::from_secs(5);

/// How long a start is asked again while the coordinator is unavailable, before the
/// message goes back to the queue (costing one delivery).
const START_PATIENCE: Duration = Duration::from_secs(60);

/// How long a coordinator may answer "not yet" (it has not seen the task) before the
/// worker stops asking.
const NOT_YET_PATIENCE: Duration = Duration::from_secs(30);

/// Why a task could not be reported now; its message is redelivered.
#[derive(Debug, thiserror::Error)]
enum NotReported {
    /// The coordinator did not take the report.
    #[error(transparent)]
    Report(#[from] ReportError),
}

/// What became of one work message.
enum Handled {
    /// Reported (or nothing to do): ack.
    Done,
    /// Shutting down before it finished: hand it back at once.
    Abandoned,
}

/// One worker process.
#[derive(Clone)]
pub struct Worker {
    store: EventStore,
    coordinator: Coordinator,
    /// Set when the coordinator stops accepting this worker's token: the worker stops.
    fatal: Arc<watch::Sender<Option<String>>>,
    default_executor: ExecutorSettings,
    worker_id: String,
    seed: u64,
    ack_wait: Duration,
    max_deliver: i64,
    /// Work that takes longer reports its start on its own (zero: always).
    report_start_after: Duration,
}

impl Worker {
    /// Runs a worker with `config` until `shutdown`, then finishes in-flight tasks within
    /// the grace period and hands back the rest.
    pub async fn run(config: Config, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let namespace = Namespace::new(&config.prefix)?;
        let store = EventStore::connect_with(&config.nats_url, namespace, &config.nats_credentials)
            .await?
            .with_settings(StreamSettings::with_replicas(config.stream_replicas));
        // Workers may start before any coordinator: make sure the streams exist.
        store.provision().await?;
        let all = config.agents.iter().any(|a| a.trim() == ALL_AGENTS);
        let agents = config
            .agents
            .iter()
            .filter(|a| a.trim() != ALL_AGENTS)
            .map(|a| a.trim().parse::<AgentId>())
            .collect::<Result<Vec<_>, _>>()?;
        let coordinator = Coordinator::new(&config.api, config.token.as_deref())?;
        tokio::pin!(shutdown);
        tokio::select! {
            checked = check_token(&coordinator, all, &agents) => checked?,
            () = &mut shutdown => return Ok(()),
        }
        let (fatal, mut fatal_rx) = watch::channel(None);
        let worker = Worker {
            store,
            coordinator,
            fatal: Arc::new(fatal),
            default_executor: config.default_executor()?,
            worker_id: config.worker_id(),
            seed: config.seed,
            ack_wait: config.ack_wait(),
            max_deliver: config.max_deliver,
            report_start_after: config.report_start_after(),
        };
        tracing::info!(worker = %worker.worker_id, agents = ?config.agents, "worker started");

        let slots = Arc::new(Semaphore::new(config.concurrency.max(1)));
        let (stop_tx, stop_rx) = watch::channel(false);
        let (abandon_tx, abandon_rx) = watch::channel(false);
        let mut pullers = JoinSet::new();
        let in_flight = Arc::new(tokio::sync::Mutex::new(JoinSet::new()));
        let mut serving = std::collections::BTreeSet::new();
        let mut bind = |consumer: Consumer<pull::Config>| {
            let (worker, slots, in_flight) = (worker.clone(), slots.clone(), in_flight.clone());
            let (stop, abandon) = (stop_rx.clone(), abandon_rx.clone());
            pullers
                .spawn(async move { worker.pull(consumer, slots, in_flight, stop, abandon).await });
        };
        for agent in agents {
            bind(worker.consumer(&agent, &config).await?);
            serving.insert(agent);
        }

        // With `--agents all`, serve every agent that has work, as its queue appears.
        let mut discover = tokio::time::interval(DISCOVERY);
        let mut heartbeat = tokio::time::interval(HEARTBEAT_EVERY);
        let beat = serde_json::to_vec(&Heartbeat {
            worker_id: worker.worker_id.clone(),
            agents: config.agents.clone(),
        })?;
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                _ = fatal_rx.changed() => break,
                _ = heartbeat.tick() => {
                    let client = worker.store.jetstream().client();
                    let subject = worker.store.namespace().worker_heartbeat_subject();
                    if let Err(e) = client.publish(subject, beat.clone().into()).await {
                        tracing::debug!("heartbeat not sent: {e}");
                    }
                }
                _ = discover.tick(), if all => {
                    let depths = match worker.store.work_queue_depths().await {
                        Ok(depths) => depths,
                        Err(e) => {
                            tracing::warn!("cannot list work queues: {e}");
                            continue;
                        }
                    };
                    for name in depths.keys() {
                        let Ok(agent) = name.parse::<AgentId>() else { continue };
                        if serving.contains(&agent) {
                            continue;
                        }
                        match worker.consumer(&agent, &config).await {
                            Ok(consumer) => {
                                tracing::info!(agent = %agent, "serving a new agent");
                                bind(consumer);
                                serving.insert(agent);
                            }
                            Err(e) => tracing::warn!(agent = %agent, "cannot bind: {e}"),
                        }
                    }
                }
            }
        }
        tracing::info!("stopping: no new work; finishing what is in flight");
        let _ = stop_tx.send(true);
        while pullers.join_next().await.is_some() {}
        let mut in_flight = std::mem::take(&mut *in_flight.lock().await);
        let finished = tokio::time::timeout(config.grace(), async {
            while in_flight.join_next().await.is_some() {}
        })
        .await;
        if finished.is_err() {
            tracing::warn!(
                left = in_flight.len(),
                "grace period over: handing back unfinished tasks"
            );
            let _ = abandon_tx.send(true);
            while in_flight.join_next().await.is_some() {}
        }
        // Acks and naks are only queued in the client: send them before the process goes.
        if let Err(e) = worker.store.jetstream().client().flush().await {
            tracing::warn!("could not flush the last acks: {e}");
        }
        tracing::info!("worker stopped");
        if let Some(why) = worker.fatal.borrow().clone() {
            anyhow::bail!("the coordinator refused this worker's token: {why}");
        }
        Ok(())
    }

    /// Creates (or updates) and binds the agent's shared durable consumer.
    async fn consumer(
        &self,
        agent: &AgentId,
        config: &Config,
    ) -> anyhow::Result<Consumer<pull::Config>> {
        let namespace = self.store.namespace();
        let stream = self
            .store
            .jetstream()
            .get_stream(namespace.work_stream())
            .await?;
        let settings = WorkerConsumerSettings {
            ack_wait: config.ack_wait(),
            max_deliver: config.max_deliver,
            max_ack_pending: config.max_ack_pending,
        };
        Ok(stream
            .create_consumer(consumers::worker_consumer_config(
                namespace, agent, settings,
            ))
            .await?)
    }

    /// Pulls one message at a time, whenever a slot is free, until told to stop.
    async fn pull(
        self,
        consumer: Consumer<pull::Config>,
        slots: Arc<Semaphore>,
        in_flight: Arc<tokio::sync::Mutex<JoinSet<()>>>,
        mut stop: watch::Receiver<bool>,
        abandon: watch::Receiver<bool>,
    ) {
        loop {
            let permit = tokio::select! {
                permit = slots.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => return,
                },
                _ = stop.wait_for(|s| *s) => return,
            };
            // One message per slot: nothing waits in this process that another worker
            // could be doing.
            let batch = consumer
                .batch()
                .max_messages(1)
                .expires(PULL_EXPIRES)
                .messages();
            let next = tokio::select! {
                batch = batch => batch,
                _ = stop.wait_for(|s| *s) => return,
            };
            let message = match next {
                Ok(mut batch) => {
                    let next = tokio::select! {
                        next = batch.next() => next,
                        _ = stop.wait_for(|s| *s) => return,
                    };
                    match next {
                        Some(Ok(message)) => message,
                        Some(Err(e)) => {
                            // An error status (consumer gone, too many waiting pulls, a
                            // server restarting): back off rather than spin.
                            tracing::debug!("pull failed: {e}");
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                        None => continue,
                    }
                }
                Err(e) => {
                    tracing::warn!("cannot pull work: {e}; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            };
            let worker = self.clone();
            let abandon = abandon.clone();
            let mut in_flight = in_flight.lock().await;
            // Forget the tasks that are done, so the set holds only what is in flight.
            while in_flight.try_join_next().is_some() {}
            in_flight.spawn(async move {
                worker.handle(message, abandon).await;
                drop(permit);
            });
        }
    }

    /// Handles one work message, then acks it, hands it back, or retries it later.
    async fn handle(&self, message: jetstream::Message, abandon: watch::Receiver<bool>) {
        let delivered = message.info().map(|i| i.delivered).unwrap_or(1);
        let item: WorkItem = match serde_json::from_slice(&message.payload) {
            Ok(item) => item,
            Err(e) => {
                tracing::error!("work message is not a work item ({e}); dropping it");
                let _ = message.ack_with(AckKind::Term).await;
                return;
            }
        };
        let result = self.process(&message, &item, delivered, abandon).await;
        let acked = match result {
            Ok(Handled::Done) => message.ack().await,
            Ok(Handled::Abandoned) => message.ack_with(AckKind::Nak(None)).await,
            Err(NotReported::Report(ReportError::Refused {
                status: 401,
                message: why,
            })) => {
                // Revoked (or never valid here): this worker can do nothing more. Hand the
                // task back at once and stop, rather than take every message and drop it.
                tracing::error!(task = %item.task_id, "the coordinator no longer accepts this worker's token ({why}); stopping");
                let _ = self.fatal.send(Some(why));
                message.ack_with(AckKind::Nak(None)).await
            }
            Err(NotReported::Report(
                e @ (ReportError::Refused { .. } | ReportError::Rejected(_)),
            )) => {
                tracing::error!(task = %item.task_id, agent = %item.agent_id, "the coordinator refused this worker's report: {e}; handing the task back");
                message.ack_with(AckKind::Nak(Some(REFUSED_DELAY))).await
            }
            Err(e) => {
                tracing::warn!(task = %item.task_id, "task not reported: {e}; it will be redelivered");
                message
                    .ack_with(AckKind::Nak(Some(Duration::from_secs(1))))
                    .await
            }
        };
        if let Err(e) = acked {
            // Unacked, it is redelivered after the ack wait; the stream knows the outcome.
            tracing::warn!(task = %item.task_id, "ack failed: {e}");
        }
    }

    async fn process(
        &self,
        message: &jetstream::Message,
        item: &WorkItem,
        delivered: i64,
        mut abandon: watch::Receiver<bool>,
    ) -> Result<Handled, NotReported> {
        if delivered >= self.max_deliver {
            // The last delivery: a nak would never come back, so keep trying here, however
            // long the coordinator is away (until this worker shuts down).
            let gave_up = Outcome::Failed(MAX_DELIVERIES.to_owned());
            let reported = self
                .persist(message, item, &mut abandon, None, || {
                    self.coordinator.finish(item, &gave_up, None)
                })
                .await;
            return match reported {
                // Finished meanwhile, or unknown where we asked: nothing to do.
                Ok(()) | Err(ReportError::Stale(_) | ReportError::NotYet(_)) => Ok(Handled::Done),
                Err(e) => Err(e.into()),
            };
        }
        let execution = self.execute_with_progress(message, item);
        tokio::pin!(execution);
        // Quick work is reported in one call, its start with its outcome.
        let quick = if self.report_start_after.is_zero() {
            None
        } else {
            tokio::select! {
                outcome = &mut execution => Some(outcome),
                () = tokio::time::sleep(self.report_start_after) => None,
                _ = abandon.wait_for(|a| *a) => return Ok(Handled::Abandoned),
            }
        };
        let (outcome, started) = match quick {
            Some(outcome) => (outcome, Some(self.worker_id.as_str())),
            None => {
                // A coordinator restarting, or over its rate, costs this message no
                // delivery: ask again here for a while rather than nak. The work goes on
                // meanwhile.
                let mut early = None;
                let started = {
                    let start =
                        self.persist(message, item, &mut abandon, Some(START_PATIENCE), || {
                            self.coordinator.start(item, &self.worker_id)
                        });
                    tokio::pin!(start);
                    loop {
                        tokio::select! {
                            answered = &mut start => break answered,
                            outcome = &mut execution, if early.is_none() => early = Some(outcome),
                        }
                    }
                };
                match started {
                    Ok(()) => {}
                    // Finished, cancelled, expired or assigned again since: drop the work.
                    Err(ReportError::Stale(_)) => return Ok(Handled::Done),
                    Err(_) if *abandon.borrow() => return Ok(Handled::Abandoned),
                    Err(e) => return Err(e.into()),
                }
                let outcome = match early {
                    Some(outcome) => outcome,
                    None => tokio::select! {
                        outcome = &mut execution => outcome,
                        _ = abandon.wait_for(|a| *a) => return Ok(Handled::Abandoned),
                    },
                };
                (outcome, None)
            }
        };
        // The work is done: a redelivery would do it again, so keep trying to report it.
        let reported = self
            .persist(message, item, &mut abandon, None, || {
                self.coordinator.finish(item, &outcome, started)
            })
            .await;
        match reported {
            // Another worker reported first (a redelivery raced ours).
            Ok(()) | Err(ReportError::Stale(_)) => Ok(Handled::Done),
            Err(ReportError::Rejected(reason)) => {
                // The coordinator will not take this outcome (too large, malformed): report
                // the task failed with why, rather than run it again.
                let failed =
                    Outcome::Failed(format!("the coordinator rejected the outcome: {reason}"));
                match self.coordinator.finish(item, &failed, started).await {
                    Ok(()) | Err(ReportError::Stale(_)) => Ok(Handled::Done),
                    Err(e) => Err(e.into()),
                }
            }
            Err(_) if *abandon.borrow() => Ok(Handled::Abandoned),
            Err(e) => Err(e.into()),
        }
    }

    /// Calls `attempt` until the coordinator answers it (anything but unavailable or "not
    /// yet"), backing off and telling JetStream the work goes on meanwhile; stops when the
    /// worker shuts down, or after `patience` if given. The last error, if it never did.
    async fn persist<F, Fut>(
        &self,
        message: &jetstream::Message,
        item: &WorkItem,
        abandon: &mut watch::Receiver<bool>,
        patience: Option<Duration>,
        attempt: F,
    ) -> Result<(), ReportError>
    where
        F: Fn() -> Fut,
        Fut: Future<Output = Result<(), ReportError>>,
    {
        let begun = tokio::time::Instant::now();
        let mut delay = Duration::from_millis(100);
        loop {
            let error = match attempt().await {
                Err(e @ (ReportError::Unavailable(_) | ReportError::NotYet(_))) => e,
                answered => return answered,
            };
            let waited = begun.elapsed();
            // "Not yet" for long means this coordinator will not know the task: give up.
            let hopeless = matches!(error, ReportError::NotYet(_)) && waited > NOT_YET_PATIENCE;
            if hopeless || patience.is_some_and(|p| waited > p) || *abandon.borrow() {
                return Err(error);
            }
            tracing::debug!(task = %item.task_id, "coordinator did not take it yet: {error}");
            if let Err(e) = message.ack_with(AckKind::Progress).await {
                tracing::debug!(task = %item.task_id, "progress ack failed: {e}");
            }
            tokio::select! {
                () = tokio::time::sleep(delay) => {}
                _ = abandon.wait_for(|a| *a) => return Err(error),
            }
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Executes, telling JetStream every third of the ack wait that the work goes on.
    async fn execute_with_progress(
        &self,
        message: &jetstream::Message,
        item: &WorkItem,
    ) -> Outcome {
        let execution = executor::execute(item, &self.default_executor, self.seed);
        tokio::pin!(execution);
        let mut progress =
            tokio::time::interval((self.ack_wait / 3).max(Duration::from_millis(100)));
        progress.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        progress.tick().await;
        loop {
            tokio::select! {
                outcome = &mut execution => return outcome,
                _ = progress.tick() => {
                    if let Err(e) = message.ack_with(AckKind::Progress).await {
                        tracing::debug!(task = %item.task_id, "progress ack failed: {e}");
                    }
                }
            }
        }
    }
}

/// Waits until the coordinator answers, then checks that the token serves every agent of
/// `--agents` (all of them for `all`): a token for other agents would only ever be refused.
async fn check_token(
    coordinator: &Coordinator,
    all: bool,
    agents: &[AgentId],
) -> anyhow::Result<()> {
    let identity = loop {
        match coordinator.whoami().await {
            Ok(identity) => break identity,
            Err(ReportError::Refused { message, .. }) => {
                anyhow::bail!(
                    "the coordinator at {} refuses this worker's token: {message}",
                    coordinator.base()
                )
            }
            Err(e) => {
                tracing::warn!("waiting for the coordinator at {}: {e}", coordinator.base());
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    match &identity.principal {
        Principal::Worker(scope) => {
            if all && *scope != WorkerScope::All {
                anyhow::bail!("--agents all needs a token for every agent (principal `worker`), not {}", identity.principal);
            }
            if let Some(other) = agents.iter().find(|a| !scope.serves(a)) {
                anyhow::bail!("this worker's token ({}) does not serve {other}: issue one that does (aicp tokens issue worker:{other})", identity.principal);
            }
        }
        Principal::Admin if !identity.authenticated => {
            tracing::warn!("the coordinator checks no tokens (--auth none)");
        }
        Principal::Admin => {
            tracing::warn!("this worker uses an admin token: give it a worker token (aicp tokens issue worker:<agents>)");
        }
        other => anyhow::bail!("this worker's token is {other}'s: a worker needs a worker token (aicp tokens issue worker:<agents>)"),
    }
    tracing::info!(principal = %identity.principal, "the coordinator accepts this worker's token");
    Ok(())
}
