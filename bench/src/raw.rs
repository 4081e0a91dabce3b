//! The physical limit: raw JetStream with async-nats on the same server, 256-byte
//! messages on a file-backed stream, as the design brief measured it.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::Result;
use async_nats::jetstream::{self, consumer, stream};
use futures::StreamExt;

use crate::report::Figure;

/// Acknowledgements in flight for the pipelined publish.
pub const WINDOW: usize = 256;

const PAYLOAD: [u8; 256] = [b'x'; 256];

/// The three raw figures: publish-and-wait, publish with [`WINDOW`] acks in flight, and an
/// ordered consumer replaying what was published.
pub async fn measure(client: &async_nats::Client, messages: u64) -> Result<Vec<Figure>> {
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream("BENCH_RAW").await;
    js.create_stream(stream::Config {
        name: "BENCH_RAW".into(),
        subjects: vec!["bench.raw.>".into()],
        storage: stream::StorageType::File,
        ..Default::default()
    })
    .await?;

    // Publish and wait for each ack: what one synchronous append costs.
    let sync_count = (messages / 5).max(100);
    let started = Instant::now();
    for i in 0..sync_count {
        js.publish(format!("bench.raw.{}", i % 64), PAYLOAD.as_slice().into())
            .await?
            .await?;
    }
    let sync = Figure::rate(
        "raw: publish and wait",
        sync_count as f64 / started.elapsed().as_secs_f64(),
        sync_count,
    );

    // Publish with WINDOW acks in flight.
    let started = Instant::now();
    let mut acks = VecDeque::with_capacity(WINDOW);
    for i in 0..messages {
        let ack = js
            .publish(format!("bench.raw.{}", i % 64), PAYLOAD.as_slice().into())
            .await?;
        acks.push_back(ack);
        if acks.len() >= WINDOW {
            if let Some(ack) = acks.pop_front() {
                ack.await?;
            }
        }
    }
    for ack in acks {
        ack.await?;
    }
    let pipelined = Figure::rate(
        "raw: publish, 256 acks in flight",
        messages as f64 / started.elapsed().as_secs_f64(),
        messages,
    );

    // Replay everything with an ordered consumer.
    let total = sync_count + messages;
    let stream = js.get_stream("BENCH_RAW").await?;
    let (seen, rate) = read_all(&stream, total).await?;
    let replay = Figure::rate("raw: ordered consumer replay", rate, seen);
    js.delete_stream("BENCH_RAW").await?;
    Ok(vec![sync, pipelined, replay])
}

/// Reads the first `count` messages of `stream` with an ordered consumer: how many were
/// read, and how many per second.
pub async fn read_all(stream: &stream::Stream, count: u64) -> Result<(u64, f64)> {
    let started = Instant::now();
    let mut feed = stream
        .create_consumer(consumer::pull::OrderedConfig::default())
        .await?
        .messages()
        .await?;
    let mut seen = 0u64;
    while seen < count {
        match feed.next().await {
            Some(message) => {
                message?;
                seen += 1;
            }
            None => break,
        }
    }
    Ok((seen, seen as f64 / started.elapsed().as_secs_f64()))
}
