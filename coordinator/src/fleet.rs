//! What the coordinator observes of the fleet, for the dashboard: the workers heard from
//! recently (their heartbeats) and the total queue depth over the last minutes.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aicp_events::work::{Heartbeat, HEARTBEAT_EVERY};
use aicp_events::EventStore;
use futures::StreamExt;

/// A worker silent for this long is no longer counted online.
pub const ONLINE_FOR: Duration = Duration::from_secs(15);

/// How often the queue depth is sampled for the dashboard's chart.
pub const SAMPLE_EVERY: Duration = Duration::from_secs(10);

/// Queue-depth samples kept: an hour.
const SAMPLES: usize = 360;

/// A worker heard from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OnlineWorker {
    /// Its id.
    pub worker_id: String,
    /// The agents it serves.
    pub agents: Vec<String>,
}

/// The fleet as last observed; cheap to clone and share.
#[derive(Debug, Clone, Default)]
pub struct Fleet {
    inner: Arc<Mutex<Observed>>,
}

#[derive(Debug, Default)]
struct Observed {
    workers: BTreeMap<String, (Instant, Vec<String>)>,
    /// (seconds since the epoch, total messages queued or in flight).
    depth: VecDeque<(i64, u64)>,
}

impl Fleet {
    /// Workers whose heartbeat arrived within [`ONLINE_FOR`].
    pub fn online(&self) -> Vec<OnlineWorker> {
        let inner = self.lock();
        inner
            .workers
            .iter()
            .filter(|(_, (at, _))| at.elapsed() < ONLINE_FOR)
            .map(|(id, (_, agents))| OnlineWorker {
                worker_id: id.clone(),
                agents: agents.clone(),
            })
            .collect()
    }

    /// The queue-depth samples, oldest first.
    pub fn depth_history(&self) -> Vec<(i64, u64)> {
        self.lock().depth.iter().copied().collect()
    }

    /// Notes a heartbeat.
    pub fn heard(&self, beat: Heartbeat) {
        let mut inner = self.lock();
        inner
            .workers
            .retain(|_, (at, _)| at.elapsed() < ONLINE_FOR * 4);
        inner
            .workers
            .insert(beat.worker_id, (Instant::now(), beat.agents));
    }

    /// Notes a queue-depth sample.
    pub fn sampled(&self, at: i64, depth: u64) {
        let mut inner = self.lock();
        if inner.depth.len() == SAMPLES {
            inner.depth.pop_front();
        }
        inner.depth.push_back((at, depth));
    }

    /// Listens to heartbeats and samples the queue depth until `shutdown`.
    pub async fn observe(self, store: EventStore, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let client = store.jetstream().client();
        let subject = store.namespace().worker_heartbeat_subject();
        let mut sample = tokio::time::interval(SAMPLE_EVERY);
        loop {
            // A core subscription survives reconnects; re-subscribe only if it ends.
            let mut beats = match client.subscribe(subject.clone()).await {
                Ok(beats) => Some(beats),
                Err(e) => {
                    tracing::warn!("cannot hear worker heartbeats: {e}");
                    None
                }
            };
            loop {
                tokio::select! {
                    () = &mut shutdown => return,
                    _ = sample.tick() => {
                        if let Ok(depths) = store.work_queue_depths().await {
                            self.sampled(chrono::Utc::now().timestamp(), depths.values().sum());
                        }
                    }
                    beat = async {
                        match beats.as_mut() {
                            Some(b) => b.next().await,
                            None => {
                                tokio::time::sleep(HEARTBEAT_EVERY).await;
                                None
                            }
                        }
                    } => {
                        match beat {
                            Some(message) => {
                                if let Ok(beat) = serde_json::from_slice::<Heartbeat>(&message.payload) {
                                    self.heard(beat);
                                }
                            }
                            None => break,
                        }
                    }
                }
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Observed> {
        // Plain maps and a ring: consistent after any panic elsewhere.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}
