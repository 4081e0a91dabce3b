//! The event store on a real 3-node JetStream cluster: R3 streams provisioned through the
//! comma-separated seed list, and every acknowledged append kept when the events stream's
//! leader is killed -9 and comes back.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use aicp_events::id::{BuyerId, TaskId};
use aicp_events::store::StreamSettings;
use aicp_events::testing::{sample_submitted, NatsCluster};
use aicp_events::{Aggregate, Envelope, EventStore, Expected, Namespace};
use anyhow::{bail, Context, Result};

const PATIENCE: Duration = Duration::from_secs(30);

fn submitted(n: usize) -> Result<(Aggregate, Envelope)> {
    let task = TaskId::new(format!("c{n}"))?;
    let buyer = BuyerId::new("buyer-001")?;
    let event = Envelope::new(sample_submitted(&task, &buyer, format!("task {n}")));
    Ok((Aggregate::Task(task), event))
}

/// Appends task `n`'s submission, retrying with the same message id until it is
/// acknowledged: what a client does while the stream elects a new leader.
async fn append_until_acknowledged(store: &EventStore, n: usize) -> Result<u64> {
    let (aggregate, event) = submitted(n)?;
    let msg_id = format!("cluster-test-{n}");
    let deadline = Instant::now() + PATIENCE;
    loop {
        match store
            .append(
                &aggregate,
                std::slice::from_ref(&event),
                Expected::NEW,
                Some(&msg_id),
            )
            .await
        {
            Ok(appended) => return Ok(appended.sequence),
            Err(e) if Instant::now() >= deadline => bail!("append {n} never acknowledged: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}

#[tokio::test]
async fn an_r3_events_stream_keeps_every_acknowledged_append_when_its_leader_is_killed(
) -> Result<()> {
    let mut cluster = NatsCluster::start().await?;
    let namespace = Namespace::new("cl")?;
    // The seed list, as a user's NATS_URL would give it.
    let store = EventStore::connect(&cluster.urls(), namespace.clone())
        .await?
        .with_settings(StreamSettings::with_replicas(Some(3)));
    store.provision().await?;
    let stream = namespace.events_stream();
    let leader = cluster.wait_for_stream(&stream, PATIENCE).await?;

    let mut sequences = Vec::new();
    for n in 0..20 {
        sequences.push(append_until_acknowledged(&store, n).await?);
    }

    cluster.kill(leader)?;
    let killed = Instant::now();
    sequences.push(append_until_acknowledged(&store, 20).await?);
    let first_write = killed.elapsed();
    for n in 21..40 {
        sequences.push(append_until_acknowledged(&store, n).await?);
    }
    let new_leader = cluster
        .stream_leader(&stream)
        .await?
        .context("the stream has no leader with one node down")?;
    assert_ne!(new_leader, leader, "the killed node cannot lead");
    println!("leader {leader} killed: first acknowledged write {first_write:?} after, new leader {new_leader}");

    cluster.restart(leader)?;
    cluster.wait_for_stream(&stream, PATIENCE).await?;

    // Every acknowledged append is stored once, at the sequence its ack gave, as the
    // leader says: an ordered consumer may be placed on a replica that still lags.
    let unique: BTreeSet<u64> = sequences.iter().copied().collect();
    assert_eq!(
        unique.len(),
        40,
        "two appends were acknowledged at one sequence"
    );
    let js = async_nats::jetstream::new(cluster.client().await?);
    let mut events = js.get_stream(&stream).await?;
    for (n, sequence) in sequences.iter().enumerate() {
        let stored = events.get_raw_message(*sequence).await?;
        let (aggregate, _) = submitted(n)?;
        assert_eq!(
            stored.subject.as_str(),
            namespace.aggregate_subject(&aggregate),
            "sequence {sequence}"
        );
    }
    // An aggregate read goes to the leader too: it sees every acknowledged append.
    for (n, sequence) in sequences.iter().enumerate() {
        let (aggregate, _) = submitted(n)?;
        let read = store.read(&aggregate).await?;
        assert_eq!(read.last_sequence, *sequence, "task {n}'s read");
    }
    let state = events.info().await?.state.clone();
    assert_eq!((state.messages, state.last_sequence), (40, 40));
    Ok(())
}
