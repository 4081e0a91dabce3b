//! Notices of what the projector has just applied, for live views (the UI's SSE stream).
//!
//! A notice is sent only after its message is applied, so a view that reads the read model
//! on a notice sees the change. The last [`RETAINED`] notices are kept, so a client that
//! reconnects with the last sequence it saw gets exactly the ones it missed; one that was
//! away longer is told to start over.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use aicp_events::Aggregate;
use tokio::sync::broadcast;

/// Notices kept for clients that reconnect.
pub const RETAINED: usize = 10_000;

/// One stream message, applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Notice {
    /// Its stream sequence.
    pub sequence: u64,
    /// The aggregate it belongs to (`None` for a message on a subject that is not ours).
    pub aggregate: Option<Aggregate>,
    /// The types of its events; empty for an undecodable message.
    pub types: Vec<&'static str>,
}

/// Why a client cannot resume where it left off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("notices after {after} are no longer retained (the oldest is {oldest})")]
pub struct TooOld {
    /// The sequence the client saw last.
    pub after: u64,
    /// The oldest notice retained.
    pub oldest: u64,
}

/// What a subscriber gets: the retained notices after its sequence, then the live feed.
#[derive(Debug)]
pub struct Subscription {
    /// The last sequence published when it subscribed: the live feed starts after it.
    pub last: u64,
    /// Notices it missed, oldest first.
    pub backlog: Vec<Notice>,
    /// Every later notice, in order.
    pub live: broadcast::Receiver<Notice>,
}

/// The projector's notices; cheap to clone and share.
#[derive(Debug, Clone)]
pub struct Notices {
    inner: Arc<Mutex<Retained>>,
    sender: broadcast::Sender<Notice>,
}

#[derive(Debug)]
struct Retained {
    notices: VecDeque<Notice>,
    /// The last sequence published (0 before any).
    last: u64,
}

impl Notices {
    /// No notices yet; `last` is the sequence already applied when the process started.
    pub fn new(last: u64) -> Self {
        let (sender, _) = broadcast::channel(1024);
        Self {
            inner: Arc::new(Mutex::new(Retained {
                notices: VecDeque::new(),
                last,
            })),
            sender,
        }
    }

    /// Records and sends a notice.
    pub fn publish(&self, notice: Notice) {
        // Retaining and sending under one lock: a subscriber gets each notice exactly once,
        // either in its backlog or on its live feed.
        let mut inner = self.lock();
        inner.last = notice.sequence;
        if inner.notices.len() == RETAINED {
            inner.notices.pop_front();
        }
        inner.notices.push_back(notice.clone());
        let _ = self.sender.send(notice);
    }

    /// The last sequence published.
    pub fn last(&self) -> u64 {
        self.lock().last
    }

    /// Subscribes from just after `after` (`None`: from now on).
    pub fn subscribe(&self, after: Option<u64>) -> Result<Subscription, TooOld> {
        let inner = self.lock();
        let live = self.sender.subscribe();
        let Some(after) = after else {
            return Ok(Subscription {
                last: inner.last,
                backlog: Vec::new(),
                live,
            });
        };
        if after >= inner.last {
            return Ok(Subscription {
                last: inner.last,
                backlog: Vec::new(),
                live,
            });
        }
        // The retained notices must reach back to `after + 1`.
        let oldest = inner
            .notices
            .front()
            .map(|n| n.sequence)
            .unwrap_or(inner.last + 1);
        if oldest > after + 1 {
            return Err(TooOld { after, oldest });
        }
        let backlog = inner
            .notices
            .iter()
            .filter(|n| n.sequence > after)
            .cloned()
            .collect();
        Ok(Subscription {
            last: inner.last,
            backlog,
            live,
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Retained> {
        // The retained list stays consistent through a panic elsewhere: each change is one
        // push and one pop.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn notice(sequence: u64) -> Notice {
        Notice {
            sequence,
            aggregate: None,
            types: vec![],
        }
    }

    #[test]
    fn a_subscriber_gets_what_it_missed_then_the_rest_once_each() {
        let notices = Notices::new(0);
        for seq in 1..=5 {
            notices.publish(notice(seq));
        }
        let mut sub = notices.subscribe(Some(2)).expect("retained");
        assert_eq!(
            sub.backlog.iter().map(|n| n.sequence).collect::<Vec<_>>(),
            [3, 4, 5]
        );
        notices.publish(notice(6));
        assert_eq!(sub.live.try_recv().map(|n| n.sequence).ok(), Some(6));
        assert!(sub.live.try_recv().is_err(), "nothing repeated");
        let now = notices.subscribe(None).expect("live");
        assert!(now.backlog.is_empty());
        let caught_up = notices.subscribe(Some(6)).expect("nothing missed");
        assert!(caught_up.backlog.is_empty());
    }

    #[test]
    fn a_subscriber_away_too_long_is_told_so() {
        let notices = Notices::new(100);
        // Nothing retained from before the process started.
        assert_eq!(
            notices.subscribe(Some(50)).err(),
            Some(TooOld {
                after: 50,
                oldest: 101
            })
        );
        for seq in 101..=(100 + RETAINED as u64 + 10) {
            notices.publish(notice(seq));
        }
        assert!(notices.subscribe(Some(105)).is_err());
        let sub = notices
            .subscribe(Some(111))
            .expect("the oldest retained is 111");
        assert_eq!(sub.backlog.len(), RETAINED - 1);
    }
}
