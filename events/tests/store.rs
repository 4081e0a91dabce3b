//! The event store against a real `nats-server -js`, started per test on its own port.

use std::collections::BTreeMap;
use std::time::Duration;

use aicp_events::codec::{DecodeError, CONTENT_TYPE};
use aicp_events::domain::pricing::MultiplierMilli;
use aicp_events::event::{EscrowHeld, TaskAssigned};
use aicp_events::id::{AgentId, BuyerId, TaskId};
use aicp_events::store::{
    AppendError, EventSubscription, Provisioned, ReadError, StoreError, StoredBatch,
};
use aicp_events::testing::{encode_as_version, sample_submitted, NatsServer};
use aicp_events::{Aggregate, Envelope, EventStore, Expected, Namespace};
use anyhow::{bail, Context, Result};
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::HeaderMap;
use futures::StreamExt;

fn task_id(n: usize) -> TaskId {
    TaskId::new(format!("t{n}")).expect("valid task id")
}

fn submitted(task: &TaskId) -> Envelope {
    let buyer = BuyerId::new("buyer-001").expect("valid buyer id");
    Envelope::new(sample_submitted(task, &buyer, format!("task {task}")))
}

fn assigned(cause: &Envelope, task: &TaskId) -> Envelope {
    Envelope::caused_by(
        cause,
        TaskAssigned {
            task_id: task.clone(),
            agent_id: AgentId::new("agent-1").expect("valid agent id"),
            multiplier: MultiplierMilli(2000),
            price_sats: 400_000,
            assignment: 1,
        },
    )
}

fn held(task: &TaskId) -> Envelope {
    Envelope::new(EscrowHeld {
        task_id: task.clone(),
        buyer_id: BuyerId::new("buyer-001").expect("valid buyer id"),
        agent_id: AgentId::new("agent-1").expect("valid agent id"),
        amount_sats: 400_000,
    })
}

/// Reads `count` items from a subscription, failing if they do not come in time.
async fn take(
    subscription: &mut EventSubscription,
    count: usize,
) -> Result<Vec<Result<StoredBatch, ReadError>>> {
    let mut items = Vec::with_capacity(count);
    while items.len() < count {
        match tokio::time::timeout(Duration::from_secs(10), subscription.next()).await {
            Ok(Some(item)) => items.push(item),
            Ok(None) => bail!("subscription ended after {} items", items.len()),
            Err(_) => bail!("only {} of {count} items arrived", items.len()),
        }
    }
    Ok(items)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_with_the_same_expected_sequence_let_exactly_one_win() -> Result<()> {
    const ROUNDS: usize = 1_000;
    let server = NatsServer::start()?;
    // Two connections, as two coordinator replicas would have.
    let a = server.event_store(Namespace::default()).await?;
    let b = EventStore::new(server.client().await?, Namespace::default());

    let mut winners = BTreeMap::new();
    for round in 0..ROUNDS {
        let task = task_id(round);
        let aggregate = Aggregate::Task(task.clone());
        let (ea, eb) = (submitted(&task), submitted(&task));
        let (ra, rb) = tokio::join!(
            tokio::spawn({
                let (a, agg, e) = (a.clone(), aggregate.clone(), ea.clone());
                async move { a.append(&agg, &[e], Expected::NEW, None).await }
            }),
            tokio::spawn({
                let (b, agg, e) = (b.clone(), aggregate.clone(), eb.clone());
                async move { b.append(&agg, &[e], Expected::NEW, None).await }
            }),
        );
        let winner = match (ra?, rb?) {
            (Ok(_), Err(AppendError::Conflict { expected: 0, .. })) => ea.event_id,
            (Err(AppendError::Conflict { expected: 0, .. }), Ok(_)) => eb.event_id,
            (ra, rb) => {
                bail!("round {round}: expected one winner and one conflict, got {ra:?} and {rb:?}")
            }
        };
        winners.insert(task, winner);
    }

    // Every aggregate holds exactly its winner's event: nothing lost, nothing twice.
    let mut all = a.subscribe(1).await?;
    let items = take(&mut all, ROUNDS).await?;
    assert_eq!(a.last_sequence().await?, ROUNDS as u64);
    let mut seen = BTreeMap::new();
    for item in items {
        let batch = item?;
        let [event] = batch.events.as_slice() else {
            bail!(
                "message {} holds {} events",
                batch.sequence,
                batch.events.len()
            );
        };
        let aicp_events::Event::TaskSubmitted(e) = &event.event else {
            bail!("unexpected event {}", event.event.event_type());
        };
        assert!(
            seen.insert(e.task_id.clone(), event.event_id).is_none(),
            "{} stored twice",
            e.task_id
        );
    }
    assert_eq!(seen, winners);
    Ok(())
}

#[tokio::test]
async fn an_append_retried_with_the_same_msg_id_is_stored_once() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let task = task_id(1);
    let aggregate = Aggregate::Payment(task.clone());
    let event = held(&task);

    // The same append, as a retry would repeat it.
    let settle = || {
        store.append(
            &aggregate,
            std::slice::from_ref(&event),
            Expected::NEW,
            Some("settle:t1"),
        )
    };
    let first = settle().await?;
    // The retry carries the same expected sequence, which is now stale. It is still
    // recognised as the same append and answered with the original sequence, not a
    // conflict (nats-server 2.9 checks the id first; newer servers check the sequence first
    // and the store then finds its own earlier message).
    let retry = settle().await?;
    assert!(!first.duplicate);
    assert!(retry.duplicate);
    assert_eq!(retry.sequence, first.sequence);

    let stored = store.read(&aggregate).await?;
    assert_eq!(stored.batches.len(), 1);
    assert_eq!(stored.last_sequence, first.sequence);
    assert_eq!(store.last_sequence().await?, 1);

    // Another id is another fact.
    let other = store
        .append(
            &aggregate,
            &[held(&task)],
            Expected::Any,
            Some("settle:t1:2"),
        )
        .await?;
    assert!(!other.duplicate);
    assert_eq!(other.sequence, 2);

    // Even after the aggregate moved on, a late retry is still the same append...
    let late = settle().await?;
    assert_eq!((late.sequence, late.duplicate), (first.sequence, true));
    // ...while a different append with the same stale expectation is a conflict.
    let stale = store
        .append(
            &aggregate,
            &[held(&task)],
            Expected::NEW,
            Some("settle:t1:3"),
        )
        .await;
    assert!(
        matches!(stale, Err(AppendError::Conflict { expected: 0, .. })),
        "{stale:?}"
    );
    assert_eq!(store.last_sequence().await?, 2);
    Ok(())
}

#[tokio::test]
async fn reads_return_one_aggregate_in_order_and_guard_the_next_append() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let (t1, t2) = (task_id(1), task_id(2));
    let (agg1, agg2) = (Aggregate::Task(t1.clone()), Aggregate::Task(t2.clone()));

    assert_eq!(store.read(&agg1).await?.last_sequence, 0);

    // A command's events on one aggregate go as one message, stored atomically.
    let s1 = submitted(&t1);
    let a1 = assigned(&s1, &t1);
    let first = store
        .append(&agg1, &[s1.clone(), a1.clone()], Expected::NEW, None)
        .await?;
    store
        .append(&agg2, &[submitted(&t2)], Expected::NEW, None)
        .await?;

    let read = store.read(&agg1).await?;
    assert_eq!(read.batches.len(), 1);
    assert_eq!(read.last_sequence, first.sequence);
    let events: Vec<&Envelope> = read.events().collect();
    assert_eq!(events, vec![&s1, &a1]);
    assert_eq!(events[1].causation_id, Some(s1.event_id));
    assert_eq!(events[1].correlation_id, s1.correlation_id);

    // The next append expects what was read; a writer with a stale read is refused.
    let s2 = store
        .append(
            &agg1,
            &[submitted(&t1)],
            Expected::Sequence(read.last_sequence),
            None,
        )
        .await?;
    let stale = store
        .append(
            &agg1,
            &[submitted(&t1)],
            Expected::Sequence(read.last_sequence),
            None,
        )
        .await;
    assert!(
        matches!(stale, Err(AppendError::Conflict { expected, .. }) if expected == read.last_sequence),
        "{stale:?}"
    );
    let read = store.read(&agg1).await?;
    assert_eq!(read.batches.len(), 2);
    assert_eq!(read.last_sequence, s2.sequence);

    // Reads clean up after themselves: no consumer per read lingers on the server.
    let mut stream = store.jetstream().get_stream("AICP_EVENTS").await?;
    assert_eq!(stream.info().await?.state.consumer_count, 0);
    Ok(())
}

#[tokio::test]
async fn appended_events_are_all_there_in_order_after_a_kill_and_restart() -> Result<()> {
    let mut server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let mut appended = Vec::new();
    for n in 0..300 {
        let task = task_id(n % 10);
        let event = submitted(&task);
        let ack = store
            .append(
                &Aggregate::Task(task),
                std::slice::from_ref(&event),
                Expected::Any,
                None,
            )
            .await?;
        appended.push((ack.sequence, event.event_id));
    }

    server.kill()?;
    server.restart()?;

    let fresh = EventStore::new(server.client().await?, Namespace::default());
    let mut all = fresh.subscribe(1).await?;
    let stored: Vec<(u64, uuid::Uuid)> = take(&mut all, appended.len())
        .await?
        .into_iter()
        .map(|item| item.map(|b| (b.sequence, b.events[0].event_id)))
        .collect::<Result<_, _>>()?;
    assert_eq!(stored, appended);
    assert_eq!(fresh.last_sequence().await?, 300);

    // The first client reconnects on its own and can append again.
    let task = task_id(0);
    let mut attempts = 0;
    let ack = loop {
        attempts += 1;
        match store
            .append(
                &Aggregate::Task(task.clone()),
                &[submitted(&task)],
                Expected::Any,
                None,
            )
            .await
        {
            Ok(ack) => break ack,
            Err(e) if attempts < 50 => {
                tracing::debug!("not reconnected yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e).context("the old client did not reconnect"),
        }
    };
    assert_eq!(ack.sequence, 301);
    Ok(())
}

#[tokio::test]
async fn a_message_that_is_not_an_event_is_a_typed_error_and_reading_goes_on() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let js = async_nats::jetstream::new(server.client().await?);
    let task = task_id(1);
    let aggregate = Aggregate::Task(task.clone());
    let subject = Namespace::default().aggregate_subject(&aggregate);

    let good_1 = submitted(&task);
    store
        .append(
            &aggregate,
            std::slice::from_ref(&good_1),
            Expected::NEW,
            None,
        )
        .await?;
    // No content type at all.
    js.publish(subject.clone(), "not an event".into())
        .await?
        .await?;
    // The right content type over bytes that are not MessagePack.
    let mut headers = HeaderMap::new();
    headers.insert("Content-Type", CONTENT_TYPE);
    js.publish_with_headers(
        subject.clone(),
        headers.clone(),
        vec![0xc1, 0xff, 0x00].into(),
    )
    .await?
    .await?;
    // A well-formed envelope of a version no code knows.
    let future = encode_as_version(
        &submitted(&task),
        "TaskSubmitted",
        99,
        &BTreeMap::from([("task_id", "t1")]),
    )?;
    js.publish_with_headers(subject.clone(), headers, future.into())
        .await?
        .await?;
    let good_2 = submitted(&task);
    store
        .append(
            &aggregate,
            std::slice::from_ref(&good_2),
            Expected::Sequence(4),
            None,
        )
        .await?;

    let read = store.read(&aggregate).await?;
    let good: Vec<&Envelope> = read.events().collect();
    assert_eq!(good, vec![&good_1, &good_2]);
    assert_eq!(read.last_sequence, 5);
    let poison: Vec<u64> = read.poison.iter().map(|p| p.sequence).collect();
    assert_eq!(poison, vec![2, 3, 4]);
    assert!(matches!(
        read.poison[0].error,
        DecodeError::ContentType(None)
    ));
    assert!(matches!(read.poison[1].error, DecodeError::Malformed(_)));
    assert!(matches!(
        &read.poison[2].error,
        DecodeError::UnknownEvent { event_type, version: 99 } if event_type == "TaskSubmitted"
    ));
    assert_eq!(read.poison[0].payload.as_ref(), b"not an event");

    // A subscriber sees each poison message as a typed error, in place, and goes on.
    let mut all = store.subscribe(1).await?;
    let items = take(&mut all, 5).await?;
    let shape: Vec<Result<u64, u64>> = items
        .iter()
        .map(|item| match item {
            Ok(batch) => Ok(batch.sequence),
            Err(ReadError::Poison(p)) => Err(p.sequence),
            Err(other) => panic!("unexpected error {other}"),
        })
        .collect();
    assert_eq!(shape, vec![Ok(1), Err(2), Err(3), Err(4), Ok(5)]);
    Ok(())
}

#[tokio::test]
async fn subscribing_from_a_sequence_starts_there_and_follows_new_appends() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    for n in 0..5 {
        let task = task_id(n);
        store
            .append(
                &Aggregate::Task(task.clone()),
                &[submitted(&task)],
                Expected::NEW,
                None,
            )
            .await?;
    }
    let mut from_4 = store.subscribe(4).await?;
    let first = take(&mut from_4, 2).await?;
    let sequences: Vec<u64> = first
        .into_iter()
        .map(|i| i.map(|b| b.sequence))
        .collect::<Result<_, _>>()?;
    assert_eq!(sequences, vec![4, 5]);

    let task = task_id(9);
    store
        .append(
            &Aggregate::Task(task.clone()),
            &[submitted(&task)],
            Expected::NEW,
            None,
        )
        .await?;
    let live = take(&mut from_4, 1).await?.remove(0)?;
    assert_eq!(live.sequence, 6);
    assert_eq!(live.subject, "aicp.evt.task.t9");
    Ok(())
}

#[tokio::test]
async fn provisioning_is_idempotent_and_namespaces_share_a_server() -> Result<()> {
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let js = async_nats::jetstream::new(client.clone());
    let blue = EventStore::new(client.clone(), Namespace::new("blue")?);
    let green = EventStore::new(client.clone(), Namespace::new("green")?);

    // Before provisioning, appends and reads say what is missing.
    let task = task_id(1);
    let agg = Aggregate::Task(task.clone());
    let err = blue
        .append(&agg, &[submitted(&task)], Expected::NEW, None)
        .await;
    assert!(
        matches!(err, Err(AppendError::StreamNotFound { .. })),
        "{err:?}"
    );
    let err = blue.read(&agg).await;
    assert!(
        matches!(&err, Err(StoreError::StreamNotFound { stream }) if stream == "blue_AICP_EVENTS"),
        "{err:?}"
    );

    let created = blue.provision().await?;
    assert_eq!(
        created,
        vec![
            ("blue_AICP_EVENTS".to_owned(), Provisioned::Created),
            ("blue_AICP_WORK".to_owned(), Provisioned::Created)
        ]
    );
    let config = |name: &'static str| {
        let js = js.clone();
        async move { anyhow::Ok(js.get_stream(name).await?.cached_info().config.clone()) }
    };
    let events = config("blue_AICP_EVENTS").await?;
    assert_eq!(events.subjects, vec!["blue.aicp.evt.>".to_owned()]);
    assert_eq!(events.storage, StorageType::File);
    assert_eq!(events.retention, RetentionPolicy::Limits);
    assert!(events.deny_delete && events.deny_purge);
    assert_eq!(events.duplicate_window, Duration::from_secs(120));
    let work = config("blue_AICP_WORK").await?;
    assert_eq!(work.subjects, vec!["blue.aicp.work.>".to_owned()]);
    assert_eq!(work.storage, StorageType::File);
    assert_eq!(work.retention, RetentionPolicy::WorkQueue);

    // An operator's limit on a setting we do not manage survives provisioning.
    js.update_stream(stream::Config {
        max_bytes: 1 << 30,
        ..events
    })
    .await?;
    let again = blue.provision().await?;
    assert!(
        again.iter().all(|(_, o)| *o == Provisioned::Unchanged),
        "{again:?}"
    );
    let changed = blue
        .clone()
        .with_settings(aicp_events::store::StreamSettings {
            duplicate_window: Duration::from_secs(300),
            replicas: Some(1),
        })
        .provision()
        .await?;
    assert!(
        changed.iter().all(|(_, o)| *o == Provisioned::Updated),
        "{changed:?}"
    );
    let events = config("blue_AICP_EVENTS").await?;
    assert_eq!(events.duplicate_window, Duration::from_secs(300));
    assert_eq!(events.max_bytes, 1 << 30);
    green.provision().await?;

    // The events stream refuses deletes: facts are immutable.
    blue.append(&agg, &[submitted(&task)], Expected::NEW, None)
        .await?;
    let stream = js.get_stream("blue_AICP_EVENTS").await?;
    assert!(
        stream.delete_message(1).await.is_err(),
        "a delete was allowed"
    );
    assert!(stream.purge().await.is_err(), "a purge was allowed");

    // The same aggregate in two namespaces is two independent histories.
    green
        .append(&agg, &[submitted(&task)], Expected::NEW, None)
        .await?;
    assert_eq!(blue.read(&agg).await?.batches.len(), 1);
    assert_eq!(green.read(&agg).await?.batches.len(), 1);
    Ok(())
}

#[tokio::test]
async fn an_event_appended_to_another_aggregate_is_refused() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let (t1, t2) = (task_id(1), task_id(2));
    for (aggregate, batch) in [
        (Aggregate::Task(t1.clone()), vec![submitted(&t2)]),
        (Aggregate::Payment(t1.clone()), vec![submitted(&t1)]),
        // A task's subject carries its own money, never another task's.
        (Aggregate::Task(t1.clone()), vec![submitted(&t1), held(&t2)]),
    ] {
        let err = store.append(&aggregate, &batch, Expected::Any, None).await;
        assert!(
            matches!(err, Err(AppendError::WrongAggregate { .. })),
            "{err:?}"
        );
    }
    assert_eq!(
        store.last_sequence().await?,
        0,
        "a refused batch was stored"
    );
    let own = store
        .append(
            &Aggregate::Task(t1.clone()),
            &[submitted(&t1), held(&t1)],
            Expected::NEW,
            None,
        )
        .await?;
    assert_eq!(own.sequence, 1, "a task's own money rides in its message");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_of_a_long_busy_aggregate_returns_a_complete_prefix() -> Result<()> {
    const BEFORE: usize = 1_500;
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    let task = task_id(1);
    let aggregate = Aggregate::Task(task.clone());
    let mut ids = Vec::new();
    for _ in 0..BEFORE {
        let event = submitted(&task);
        ids.push(event.event_id);
        store
            .append(&aggregate, &[event], Expected::Any, None)
            .await?;
    }
    // Another writer keeps appending while we read.
    let writer = tokio::spawn({
        let (store, aggregate, task) = (store.clone(), aggregate.clone(), task.clone());
        async move {
            let mut ids = Vec::new();
            for _ in 0..300 {
                let event = submitted(&task);
                ids.push(event.event_id);
                store
                    .append(&aggregate, &[event], Expected::Any, None)
                    .await?;
            }
            anyhow::Ok(ids)
        }
    });
    let read = store.read(&aggregate).await?;
    ids.extend(writer.await??);

    // Everything up to the read's snapshot, in order, nothing skipped or repeated.
    let got: Vec<uuid::Uuid> = read.events().map(|e| e.event_id).collect();
    assert!(
        got.len() >= BEFORE,
        "only {} of {BEFORE} events read",
        got.len()
    );
    assert_eq!(got, ids[..got.len()]);
    assert_eq!(read.last_sequence, got.len() as u64);
    assert!(read.poison.is_empty());
    Ok(())
}

#[tokio::test]
async fn work_queue_depth_counts_pending_and_in_flight_work_per_agent() -> Result<()> {
    let server = NatsServer::start()?;
    let store = server.event_store(Namespace::default()).await?;
    assert!(store.work_queue_depths().await?.is_empty());
    let js = async_nats::jetstream::new(server.client().await?);
    for (agent, n) in [("agent-1", 3), ("agent-2", 1)] {
        for _ in 0..n {
            js.publish(format!("aicp.work.{agent}"), "work".into())
                .await?
                .await?;
        }
    }
    let depths = store.work_queue_depths().await?;
    assert_eq!(
        depths,
        BTreeMap::from([("agent-1".to_owned(), 3), ("agent-2".to_owned(), 1)])
    );
    Ok(())
}

/// The events stream of `namespace`, provisioned, holding `n` task submissions.
async fn stream_of_submissions(
    client: &async_nats::Client,
    namespace: &Namespace,
    n: usize,
) -> Result<stream::Stream> {
    let store = EventStore::new(client.clone(), namespace.clone());
    store.provision().await?;
    for n in 1..=n {
        let task = task_id(n);
        let aggregate = Aggregate::Task(task.clone());
        store
            .append(&aggregate, &[submitted(&task)], Expected::NEW, None)
            .await?;
    }
    Ok(store.events_stream().await?)
}

/// Acks the first `n` task messages `consumer` delivers, as an older coordinator would
/// have left its consumer.
async fn ack_first(
    stream: &stream::Stream,
    namespace: &Namespace,
    name: &'static str,
    n: usize,
) -> Result<()> {
    use aicp_events::consumers::{task_consumer_config, TaskConsumer};
    let old = TaskConsumer {
        name,
        description: "an older coordinator's consumer",
    };
    let consumer = stream
        .create_consumer(task_consumer_config(namespace, old))
        .await?;
    let mut messages = consumer.fetch().max_messages(n).messages().await?;
    let mut acked = 0;
    while let Some(message) = messages.next().await {
        message
            .map_err(anyhow::Error::msg)?
            .double_ack()
            .await
            .map_err(anyhow::Error::msg)?;
        acked += 1;
    }
    if acked != n {
        bail!("{name}: acked {acked} of {n}");
    }
    Ok(())
}

#[tokio::test]
async fn the_process_consumer_takes_over_where_both_older_consumers_had_acked() -> Result<()> {
    use aicp_events::consumers::{bind, PROCESS, REPLACED};
    let server = NatsServer::start()?;
    let client = server.client().await?;
    let namespace = Namespace::new("upgrade")?;
    let stream = stream_of_submissions(&client, &namespace, 10).await?;
    // Settlement had handled 7 messages, dispatch only 4: the new consumer starts at 5.
    ack_first(&stream, &namespace, REPLACED[0], 7).await?;
    ack_first(&stream, &namespace, REPLACED[1], 4).await?;

    let mut process = bind(&stream, &namespace, PROCESS).await?;
    let info = process.info().await?;
    assert_eq!(info.num_pending, 6, "messages 5..=10 are left to handle");
    for name in REPLACED {
        let gone = stream.consumer_info(name).await;
        assert!(gone.is_err(), "{name} should be deleted: {gone:?}");
    }
    let first = process
        .fetch()
        .max_messages(1)
        .messages()
        .await?
        .next()
        .await;
    let first = first.context("a message")?.map_err(anyhow::Error::msg)?;
    assert_eq!(first.info().map_err(anyhow::Error::msg)?.stream_sequence, 5);

    // Bound again (another replica, a restart): the same consumer, its place kept.
    first.double_ack().await.map_err(anyhow::Error::msg)?;
    let mut again = bind(&stream, &namespace, PROCESS).await?;
    assert_eq!(again.info().await?.num_pending, 5);

    // On a stream no older coordinator served, it starts at the first message.
    let fresh = Namespace::new("fresh")?;
    let fresh_stream = stream_of_submissions(&client, &fresh, 1).await?;
    let mut bound = bind(&fresh_stream, &fresh, PROCESS).await?;
    assert_eq!(bound.info().await?.num_pending, 1);
    Ok(())
}
