//! Stream names and subjects, under an optional namespace prefix.
//!
//! Every aggregate has its own subject (`aicp.evt.task.<task_id>`), so it can be read by
//! its exact subject and appended to with `Nats-Expected-Last-Subject-Sequence`. A prefix
//! (`t42` gives stream `t42_AICP_EVENTS` and subjects `t42.aicp.evt.>`) lets tests and
//! several deployments share one server: JetStream forbids two streams with overlapping
//! subjects, so the prefix must change both.

use std::fmt;

use crate::id::{AgentId, BuyerId, TaskId, TokenId};

/// The aggregate an event belongs to; each has its own subject.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Aggregate {
    /// A task's lifecycle: `aicp.evt.task.<task_id>`.
    Task(TaskId),
    /// An agent's profile and record: `aicp.evt.agent.<agent_id>`.
    Agent(AgentId),
    /// A task's money: `aicp.evt.payment.<task_id>`.
    Payment(TaskId),
    /// An API token: `aicp.evt.token.<token_id>`.
    Token(TokenId),
    /// A buyer's prepaid balance and limits: `aicp.evt.buyer.<buyer_id>`.
    Buyer(BuyerId),
}

impl Aggregate {
    /// The aggregate kind as written in subjects: `task`, `agent`, `payment`, `token` or
    /// `buyer`.
    pub fn kind(&self) -> &'static str {
        match self {
            Aggregate::Task(_) => "task",
            Aggregate::Agent(_) => "agent",
            Aggregate::Payment(_) => "payment",
            Aggregate::Token(_) => "token",
            Aggregate::Buyer(_) => "buyer",
        }
    }

    /// Whether a message on this aggregate's subject may carry an event of `event`'s
    /// aggregate: its own, and on a task's subject also the task's money, so that a task's
    /// outcome and its settlement are one message, guarded by one expected sequence.
    pub fn admits(&self, event: &Aggregate) -> bool {
        match (self, event) {
            (Aggregate::Task(task), Aggregate::Payment(paid)) => task == paid,
            (own, other) => own == other,
        }
    }

    /// The aggregate's id.
    pub fn id(&self) -> &str {
        match self {
            Aggregate::Task(id) | Aggregate::Payment(id) => id.as_str(),
            Aggregate::Agent(id) => id.as_str(),
            Aggregate::Token(id) => id.as_str(),
            Aggregate::Buyer(id) => id.as_str(),
        }
    }
}

impl fmt::Display for Aggregate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.kind(), self.id())
    }
}

/// A prefix that is not a valid stream name and subject token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("namespace prefix {0:?} may only contain ASCII letters, digits, '-' and '_' (at most 32)")]
pub struct InvalidPrefix(pub String);

/// Names of the streams and subjects of one AICP deployment.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Namespace {
    prefix: Option<String>,
}

impl Namespace {
    /// The events stream's base name.
    pub const EVENTS_STREAM: &'static str = "AICP_EVENTS";
    /// The work-queue stream's base name.
    pub const WORK_STREAM: &'static str = "AICP_WORK";

    /// A namespace with `prefix`; the empty string gives the default, unprefixed names.
    pub fn new(prefix: &str) -> Result<Self, InvalidPrefix> {
        if prefix.is_empty() {
            return Ok(Self::default());
        }
        let valid = prefix.len() <= 32
            && prefix
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return Err(InvalidPrefix(prefix.to_owned()));
        }
        Ok(Self {
            prefix: Some(prefix.to_owned()),
        })
    }

    /// The prefix, if any.
    pub fn prefix(&self) -> Option<&str> {
        self.prefix.as_deref()
    }

    fn stream(&self, base: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}_{base}"),
            None => base.to_owned(),
        }
    }

    fn subject(&self, rest: &str) -> String {
        match &self.prefix {
            Some(p) => format!("{p}.{rest}"),
            None => rest.to_owned(),
        }
    }

    /// Name of the events stream, `AICP_EVENTS`.
    pub fn events_stream(&self) -> String {
        self.stream(Self::EVENTS_STREAM)
    }

    /// Name of the work-queue stream, `AICP_WORK`.
    pub fn work_stream(&self) -> String {
        self.stream(Self::WORK_STREAM)
    }

    /// The wildcard the events stream captures, `aicp.evt.>`.
    pub fn events_wildcard(&self) -> String {
        self.subject("aicp.evt.>")
    }

    /// The wildcard the work stream captures, `aicp.work.>`.
    pub fn work_wildcard(&self) -> String {
        self.subject("aicp.work.>")
    }

    /// Where workers announce themselves every few seconds (core NATS, not a stream):
    /// `aicp.workers.heartbeat`.
    pub fn worker_heartbeat_subject(&self) -> String {
        self.subject("aicp.workers.heartbeat")
    }

    /// The subject of one aggregate's events, `aicp.evt.<kind>.<id>`.
    pub fn aggregate_subject(&self, aggregate: &Aggregate) -> String {
        self.subject(&format!("aicp.evt.{aggregate}"))
    }

    /// The wildcard of every aggregate of a kind, `aicp.evt.<kind>.*`.
    pub fn kind_wildcard(&self, kind: &str) -> String {
        self.subject(&format!("aicp.evt.{kind}.*"))
    }

    /// The subject of an agent's work queue, `aicp.work.<agent_id>`.
    pub fn work_subject(&self, agent: &AgentId) -> String {
        self.subject(&format!("aicp.work.{agent}"))
    }

    /// The aggregate an events subject names, or `None` if it is not one of ours.
    pub fn parse_aggregate(&self, subject: &str) -> Option<Aggregate> {
        let rest = match &self.prefix {
            Some(p) => subject.strip_prefix(p.as_str())?.strip_prefix('.')?,
            None => subject,
        };
        let rest = rest.strip_prefix("aicp.evt.")?;
        let (kind, id) = rest.split_once('.')?;
        match kind {
            "task" => TaskId::new(id).ok().map(Aggregate::Task),
            "agent" => AgentId::new(id).ok().map(Aggregate::Agent),
            "payment" => TaskId::new(id).ok().map(Aggregate::Payment),
            "token" => TokenId::new(id).ok().map(Aggregate::Token),
            "buyer" => BuyerId::new(id).ok().map(Aggregate::Buyer),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(id: &str) -> Aggregate {
        Aggregate::Task(TaskId::new(id).expect("valid id"))
    }

    #[test]
    fn default_names_match_the_design() {
        let ns = Namespace::default();
        assert_eq!(ns.events_stream(), "AICP_EVENTS");
        assert_eq!(ns.work_stream(), "AICP_WORK");
        assert_eq!(ns.events_wildcard(), "aicp.evt.>");
        assert_eq!(
            ns.aggregate_subject(&task("a1b2c3d4")),
            "aicp.evt.task.a1b2c3d4"
        );
        let agent = AgentId::new("agent-1").expect("valid id");
        assert_eq!(ns.work_subject(&agent), "aicp.work.agent-1");
    }

    #[test]
    fn a_prefix_changes_streams_and_subjects() {
        let ns = Namespace::new("t42").expect("valid prefix");
        assert_eq!(ns.events_stream(), "t42_AICP_EVENTS");
        assert_eq!(ns.work_wildcard(), "t42.aicp.work.>");
        assert_eq!(ns.aggregate_subject(&task("x")), "t42.aicp.evt.task.x");
        assert_eq!(ns.kind_wildcard("payment"), "t42.aicp.evt.payment.*");
    }

    #[test]
    fn subjects_parse_back_to_their_aggregate() {
        for ns in [Namespace::default(), Namespace::new("p").expect("valid")] {
            for agg in [
                task("abc"),
                Aggregate::Agent(AgentId::new("agent-2").expect("valid")),
                Aggregate::Payment(TaskId::new("abc").expect("valid")),
                Aggregate::Token(TokenId::new("t-1").expect("valid")),
                Aggregate::Buyer(BuyerId::new("buyer-1").expect("valid")),
            ] {
                assert_eq!(ns.parse_aggregate(&ns.aggregate_subject(&agg)), Some(agg));
            }
        }
        let ns = Namespace::default();
        assert_eq!(ns.parse_aggregate("aicp.evt.nope.x"), None);
        assert_eq!(ns.parse_aggregate("other.subject"), None);
        assert_eq!(
            Namespace::new("p")
                .expect("valid")
                .parse_aggregate("aicp.evt.task.x"),
            None
        );
    }

    #[test]
    fn bad_prefixes_are_refused() {
        for p in ["a.b", "a b", "*", ">", &"x".repeat(33)] {
            assert!(Namespace::new(p).is_err(), "{p}");
        }
    }
}
