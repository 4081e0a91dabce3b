//! The projector against a real `nats-server`: catching up, resuming from its checkpoint,
//! surviving a server restart, and rebuilding to the same state from sequence 1.

use std::collections::BTreeSet;
use std::path::Path;
use std::time::Duration;

use aicp_events::domain::pricing::MultiplierMilli;
use aicp_events::event::*;
use aicp_events::id::{AgentId, TaskId};
use aicp_events::testing::{sample_submitted, NatsServer};
use aicp_events::{Envelope, EventStore, Expected, Namespace};
use aicp_projections::projector::{Progress, Projector};
use aicp_projections::ReadModel;
use anyhow::{ensure, Result};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

const WAIT: Duration = Duration::from_secs(10);

/// A running projector and the means to stop it.
struct Running {
    progress: Progress,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), aicp_projections::ProjectionError>>,
}

impl Running {
    fn start(dir: &Path, store: &EventStore) -> Result<Self> {
        let model = ReadModel::open(dir)?;
        let (projector, progress) = Projector::new(model, store.clone())?;
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(projector.run(async move {
            let _ = stopped.await;
        }));
        Ok(Self {
            progress,
            stop,
            task,
        })
    }

    async fn stop(self) -> Result<()> {
        let _ = self.stop.send(());
        self.task.await??;
        Ok(())
    }
}

fn task_id(n: usize) -> TaskId {
    format!("t{n}").parse().expect("valid task id")
}

fn agent() -> AgentId {
    "agent-1".parse().expect("valid agent id")
}

/// Registers agent-1 and submits, assigns, escrows and completes `tasks` tasks.
async fn write_history(store: &EventStore, tasks: std::ops::Range<usize>) -> Result<u64> {
    let mut last = 0;
    let registered = AgentRegistered {
        agent_id: agent(),
        name: "agent-1".into(),
        skills: BTreeSet::new(),
        mode: AgentMode::Worker,
        prior_rate_bp: 9500,
        prior_weight: 20,
        executor: None,
    };
    // Registration is idempotent by msg id, like the coordinator's seeding.
    let agg = aicp_events::Aggregate::Agent(agent());
    last = last.max(
        store
            .append(
                &agg,
                &[Envelope::new(registered)],
                Expected::Any,
                Some("register:agent-1"),
            )
            .await?
            .sequence,
    );
    for n in tasks {
        let task = task_id(n);
        let submit = Envelope::new(sample_submitted(
            &task,
            &"buyer-001".parse()?,
            format!("task {n}"),
        ));
        let assign = Envelope::caused_by(
            &submit,
            TaskAssigned {
                task_id: task.clone(),
                agent_id: agent(),
                multiplier: MultiplierMilli(2000),
                price_sats: 400_000,
                assignment: 1,
            },
        );
        let task_agg = aicp_events::Aggregate::Task(task.clone());
        let pay_agg = aicp_events::Aggregate::Payment(task.clone());
        let s = store
            .append(&task_agg, &[submit, assign], Expected::NEW, None)
            .await?
            .sequence;
        let held = EscrowHeld {
            task_id: task.clone(),
            buyer_id: "buyer-001".parse()?,
            agent_id: agent(),
            amount_sats: 400_000,
        };
        let h = store
            .append(&pay_agg, &[Envelope::new(held)], Expected::NEW, None)
            .await?
            .sequence;
        let done = TaskCompleted {
            task_id: task.clone(),
            agent_id: agent(),
            result: "ok".into(),
        };
        store
            .append(
                &task_agg,
                &[Envelope::new(done)],
                Expected::Sequence(s),
                None,
            )
            .await?;
        let paid = EscrowReleased {
            task_id: task.clone(),
            agent_id: agent(),
            amount_sats: 400_000,
        };
        last = store
            .append(
                &pay_agg,
                &[Envelope::new(paid)],
                Expected::Sequence(h),
                None,
            )
            .await?
            .sequence;
    }
    Ok(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_catches_up_resumes_from_its_checkpoint_and_equals_a_rebuild() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let live_dir = tempfile::tempdir()?;

    let last = write_history(&store, 0..20).await?;
    let running = Running::start(live_dir.path(), &store)?;
    ensure!(
        running.progress.wait_for(last, WAIT).await,
        "did not catch up to {last}"
    );
    running.stop().await?;

    // More history while it is stopped; on restart it resumes from its checkpoint.
    let stopped_at = last;
    let last = write_history(&store, 20..30).await?;
    let running = Running::start(live_dir.path(), &store)?;
    ensure!(
        running.progress.applied() == stopped_at,
        "did not start from its checkpoint {stopped_at}"
    );
    ensure!(
        running.progress.wait_for(last, WAIT).await,
        "did not resume to {last}"
    );
    running.stop().await?;

    let live = ReadModel::open(live_dir.path())?;
    let counters = live.counters()?;
    // 1 registration + 30 tasks x 5 events: each applied exactly once across the restart
    // (the duplicate registration was swallowed by its msg id).
    assert_eq!(counters.events_applied, 1 + 30 * 5);
    assert_eq!(
        (counters.completed, counters.settled_sats),
        (30, 30 * 400_000)
    );
    let agent = live.agent(&agent())?.expect("agent");
    assert_eq!(
        (agent.balance_sats, agent.tasks_completed),
        (30 * 400_000, 30)
    );

    // A rebuild from sequence 1 into a fresh directory is the same, tree for tree.
    let rebuilt_dir = tempfile::tempdir()?;
    let running = Running::start(rebuilt_dir.path(), &store)?;
    ensure!(
        running.progress.wait_for(last, WAIT).await,
        "rebuild did not finish"
    );
    running.stop().await?;
    let rebuilt = ReadModel::open(rebuilt_dir.path())?;
    assert_eq!(rebuilt.digest()?, live.digest()?);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_projector_survives_a_server_restart_and_skips_poison() -> Result<()> {
    let mut server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let dir = tempfile::tempdir()?;
    let running = Running::start(dir.path(), &store)?;
    let last = write_history(&store, 0..3).await?;
    ensure!(
        running.progress.wait_for(last, WAIT).await,
        "did not catch up"
    );

    server.kill()?;
    server.restart()?;

    // A message that is not an event, then more history: the projection goes on past it.
    let js = async_nats::jetstream::new(server.client().await?);
    let poison_seq = js
        .publish("aicp.evt.task.junk", "junk".into())
        .await?
        .await?
        .sequence;
    let fresh = EventStore::new(server.client().await?, Namespace::default());
    let last = write_history(&fresh, 3..5).await?;
    ensure!(
        running
            .progress
            .wait_for(last, Duration::from_secs(30))
            .await,
        "did not recover after the restart"
    );
    running.stop().await?;

    let model = ReadModel::open(dir.path())?;
    assert_eq!(model.counters()?.completed, 5);
    assert_eq!(model.counters()?.poison, 1);
    let poison = model.poison(&aicp_projections::PageRequest::first(10))?;
    assert_eq!(poison.items[0].sequence, poison_seq);
    Ok(())
}
