//! Who may do what: the principals and the authorization rule, decided from arguments alone.
//!
//! A principal is who a request (or a process) acts as: `admin`, `buyer:<id>`,
//! `agent:<id>`, a `worker` serving all agents or `worker:<agent>,<agent>`, or the
//! `coordinator` itself (its process managers). [`authorize`] answers whether a
//! principal may take an [`Action`]; the HTTP layer asks before it decides anything, so
//! a refused call writes nothing.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::ledger::Account;
use crate::id::{AgentId, BuyerId};

/// Who acts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum Principal {
    /// Operates the marketplace: everything is allowed.
    Admin,
    /// A buyer: submits, reads and cancels its own tasks, sees its own money.
    Buyer(BuyerId),
    /// An agent: reads and finishes the tasks assigned to it, sees its own money.
    Agent(AgentId),
    /// A worker service: starts and finishes the tasks of the agents it serves.
    Worker(WorkerScope),
    /// The coordinator's own process managers (escrow, settlement, dispatch, expiry).
    Coordinator,
}

/// The agents a worker serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum WorkerScope {
    /// Every agent.
    All,
    /// Only these (never empty).
    Agents(BTreeSet<AgentId>),
}

impl WorkerScope {
    /// Whether this worker may act for `agent`.
    pub fn serves(&self, agent: &AgentId) -> bool {
        match self {
            WorkerScope::All => true,
            WorkerScope::Agents(agents) => agents.contains(agent),
        }
    }
}

impl Principal {
    /// The role's name: `admin`, `buyer`, `agent`, `worker` or `coordinator`.
    pub fn role(&self) -> &'static str {
        match self {
            Principal::Admin => "admin",
            Principal::Buyer(_) => "buyer",
            Principal::Agent(_) => "agent",
            Principal::Worker(_) => "worker",
            Principal::Coordinator => "coordinator",
        }
    }

    /// Whether this principal may act for `agent` (read its tasks, start and finish them).
    pub fn acts_for_agent(&self, agent: &AgentId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Agent(own) => own == agent,
            Principal::Worker(scope) => scope.serves(agent),
            Principal::Buyer(_) | Principal::Coordinator => false,
        }
    }

    /// Whether this principal may act for `buyer` (submit, read and cancel its tasks).
    pub fn acts_for_buyer(&self, buyer: &BuyerId) -> bool {
        match self {
            Principal::Admin => true,
            Principal::Buyer(own) => own == buyer,
            _ => false,
        }
    }
}

impl fmt::Display for Principal {
    /// `admin`, `buyer:<id>`, `agent:<id>`, `worker`, `worker:<id>,<id>` or `coordinator`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Principal::Admin => f.write_str("admin"),
            Principal::Buyer(id) => write!(f, "buyer:{id}"),
            Principal::Agent(id) => write!(f, "agent:{id}"),
            Principal::Worker(WorkerScope::All) => f.write_str("worker"),
            Principal::Worker(WorkerScope::Agents(agents)) => {
                let ids: Vec<&str> = agents.iter().map(AgentId::as_str).collect();
                write!(f, "worker:{}", ids.join(","))
            }
            Principal::Coordinator => f.write_str("coordinator"),
        }
    }
}

/// A string that is not a principal.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("principal {0:?} must be admin, buyer:<id>, agent:<id>, worker or worker:<agent>,<agent>")]
pub struct InvalidPrincipal(pub String);

impl FromStr for Principal {
    type Err = InvalidPrincipal;
    fn from_str(s: &str) -> Result<Self, InvalidPrincipal> {
        let invalid = || InvalidPrincipal(s.to_owned());
        match s.split_once(':') {
            None => match s {
                "admin" => Ok(Principal::Admin),
                "worker" => Ok(Principal::Worker(WorkerScope::All)),
                "coordinator" => Ok(Principal::Coordinator),
                _ => Err(invalid()),
            },
            Some(("buyer", id)) => id.parse().map(Principal::Buyer).map_err(|_| invalid()),
            Some(("agent", id)) => id.parse().map(Principal::Agent).map_err(|_| invalid()),
            Some(("worker", ids)) => {
                let agents = ids
                    .split(',')
                    .map(|id| id.trim().parse::<AgentId>())
                    .collect::<Result<BTreeSet<_>, _>>()
                    .map_err(|_| invalid())?;
                if agents.is_empty() {
                    return Err(invalid());
                }
                Ok(Principal::Worker(WorkerScope::Agents(agents)))
            }
            _ => Err(invalid()),
        }
    }
}

impl TryFrom<String> for Principal {
    type Error = InvalidPrincipal;
    fn try_from(s: String) -> Result<Self, InvalidPrincipal> {
        s.parse()
    }
}

impl From<Principal> for String {
    fn from(p: Principal) -> String {
        p.to_string()
    }
}

/// What a principal asks to do, with the facts the rule needs.
#[derive(Debug, Clone, Copy)]
pub enum Action<'a> {
    /// Submit a task paid by `buyer`.
    SubmitTask {
        /// Who would pay.
        buyer: &'a BuyerId,
    },
    /// List tasks, narrowed to these filters.
    ListTasks {
        /// Only this buyer's tasks.
        buyer: Option<&'a BuyerId>,
        /// Only this agent's tasks.
        agent: Option<&'a AgentId>,
    },
    /// Read one task.
    ReadTask {
        /// Its buyer.
        buyer: &'a BuyerId,
        /// Its agent, once assigned.
        agent: Option<&'a AgentId>,
    },
    /// Start, complete or fail a task assigned to `agent`.
    WorkOnTask {
        /// The task's agent, once assigned.
        agent: Option<&'a AgentId>,
    },
    /// Cancel or retry a task paid by `buyer`.
    ChangeOrder {
        /// Its buyer.
        buyer: &'a BuyerId,
    },
    /// See the agents and what a task would cost.
    BrowseAgents,
    /// Register an agent.
    RegisterAgent,
    /// Change an agent's profile; `operational` when mode or executor change.
    UpdateAgent {
        /// The agent.
        agent: &'a AgentId,
        /// Whether the change touches how its tasks are run (admin only).
        operational: bool,
    },
    /// Read a buyer's totals.
    ReadBuyer {
        /// The buyer.
        buyer: &'a BuyerId,
    },
    /// List every buyer.
    ListBuyers,
    /// Pay satoshis in to a buyer's balance (admin only: the money comes from outside).
    Deposit {
        /// The buyer.
        buyer: &'a BuyerId,
    },
    /// Set a buyer's spending limits.
    SetLimits {
        /// The buyer.
        buyer: &'a BuyerId,
    },
    /// Read an account's ledger.
    ReadLedger {
        /// The account.
        account: &'a Account,
    },
    /// Issue, list or revoke tokens.
    ManageTokens,
    /// Operate the marketplace: dead letters, read-model checks, the dashboard.
    Operate,
}

/// Why an action is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{principal} may not {what}")]
pub struct Denied {
    /// Who asked.
    pub principal: String,
    /// What was refused, in words.
    pub what: String,
}

/// Whether `principal` may take `action`.
pub fn authorize(principal: &Principal, action: Action<'_>) -> Result<(), Denied> {
    let deny = |what: String| Denied {
        principal: principal.to_string(),
        what,
    };
    if *principal == Principal::Admin {
        return Ok(());
    }
    let allowed = match action {
        Action::SubmitTask { buyer } => principal.acts_for_buyer(buyer),
        Action::ListTasks { buyer, agent } => match principal {
            Principal::Buyer(own) => buyer == Some(own),
            Principal::Agent(_) | Principal::Worker(_) => {
                buyer.is_none() && agent.is_some_and(|a| principal.acts_for_agent(a))
            }
            _ => false,
        },
        Action::ReadTask { buyer, agent } => {
            principal.acts_for_buyer(buyer) || agent.is_some_and(|a| principal.acts_for_agent(a))
        }
        Action::WorkOnTask { agent } => agent.is_some_and(|a| principal.acts_for_agent(a)),
        Action::ChangeOrder { buyer } => principal.acts_for_buyer(buyer),
        Action::BrowseAgents => !matches!(principal, Principal::Coordinator),
        Action::UpdateAgent { agent, operational } => {
            !operational && matches!(principal, Principal::Agent(own) if own == agent)
        }
        Action::ReadBuyer { buyer } | Action::SetLimits { buyer } => {
            principal.acts_for_buyer(buyer)
        }
        Action::Deposit { .. } => false,
        Action::ReadLedger { account } => match account {
            Account::Buyer(buyer) => principal.acts_for_buyer(buyer),
            Account::Agent(agent) => matches!(principal, Principal::Agent(own) if own == agent),
            Account::Escrow => false,
        },
        Action::RegisterAgent | Action::ListBuyers | Action::ManageTokens | Action::Operate => {
            false
        }
    };
    if allowed {
        Ok(())
    } else {
        Err(deny(describe(action)))
    }
}

fn describe(action: Action<'_>) -> String {
    match action {
        Action::SubmitTask { buyer } => format!("submit tasks paid by buyer {buyer}"),
        Action::ListTasks { buyer, agent } => match (buyer, agent) {
            (Some(b), _) => format!("list the tasks of buyer {b}"),
            (None, Some(a)) => format!("list the tasks of agent {a}"),
            (None, None) => "list every task (filter by your own id)".to_owned(),
        },
        Action::ReadTask { .. } => "read this task".to_owned(),
        // Not naming the task's owner: that would tell anyone whose task an id is.
        Action::WorkOnTask { .. } => "work on this task".to_owned(),
        Action::ChangeOrder { .. } => "change this task".to_owned(),
        Action::BrowseAgents => "browse agents".to_owned(),
        Action::RegisterAgent => "register agents".to_owned(),
        Action::UpdateAgent { agent, operational } => {
            if operational {
                format!("change how agent {agent}'s tasks run (mode, executor)")
            } else {
                format!("change agent {agent}")
            }
        }
        Action::ReadBuyer { buyer } => format!("read buyer {buyer}"),
        Action::ListBuyers => "list buyers".to_owned(),
        Action::Deposit { buyer } => format!("deposit to buyer {buyer}'s balance"),
        Action::SetLimits { buyer } => format!("set buyer {buyer}'s spending limits"),
        Action::ReadLedger { account } => format!("read the ledger of {account}"),
        Action::ManageTokens => "manage tokens".to_owned(),
        Action::Operate => "operate the marketplace".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn p(s: &str) -> Principal {
        s.parse().expect("valid principal")
    }
    fn agent(s: &str) -> AgentId {
        s.parse().expect("valid agent id")
    }
    fn buyer(s: &str) -> BuyerId {
        s.parse().expect("valid buyer id")
    }

    #[test]
    fn principals_round_trip_through_text() {
        for s in [
            "admin",
            "buyer:b-1",
            "agent:agent-1",
            "worker",
            "worker:agent-1,agent-2",
            "coordinator",
        ] {
            assert_eq!(p(s).to_string(), s);
        }
        // Worker lists are sets: order and repeats do not matter.
        assert_eq!(
            p("worker:agent-2,agent-1,agent-2").to_string(),
            "worker:agent-1,agent-2"
        );
        for bad in [
            "",
            "root",
            "buyer:",
            "buyer:a.b",
            "agent:*",
            "worker:",
            "worker:a,",
            "x:y",
        ] {
            assert!(bad.parse::<Principal>().is_err(), "{bad:?} parsed");
        }
    }

    #[test]
    fn buyers_act_only_for_themselves() {
        let (b1, b2) = (buyer("b1"), buyer("b2"));
        let me = p("buyer:b1");
        assert!(authorize(&me, Action::SubmitTask { buyer: &b1 }).is_ok());
        assert!(authorize(&me, Action::SubmitTask { buyer: &b2 }).is_err());
        assert!(authorize(&me, Action::ChangeOrder { buyer: &b2 }).is_err());
        // A buyer sets its own limits but cannot pay itself in: deposits are the admin's.
        assert!(authorize(&me, Action::SetLimits { buyer: &b1 }).is_ok());
        assert!(authorize(&me, Action::SetLimits { buyer: &b2 }).is_err());
        assert!(authorize(&me, Action::Deposit { buyer: &b1 }).is_err());
        assert!(authorize(&Principal::Admin, Action::Deposit { buyer: &b1 }).is_ok());
        assert!(authorize(
            &me,
            Action::ReadTask {
                buyer: &b2,
                agent: None
            }
        )
        .is_err());
        assert!(authorize(
            &me,
            Action::ReadTask {
                buyer: &b1,
                agent: None
            }
        )
        .is_ok());
        assert!(authorize(
            &me,
            Action::ListTasks {
                buyer: None,
                agent: None
            }
        )
        .is_err());
        assert!(authorize(
            &me,
            Action::ListTasks {
                buyer: Some(&b1),
                agent: None
            }
        )
        .is_ok());
        assert!(authorize(
            &me,
            Action::WorkOnTask {
                agent: Some(&agent("agent-1"))
            }
        )
        .is_err());
        assert!(authorize(
            &me,
            Action::ReadLedger {
                account: &Account::Buyer(b1)
            }
        )
        .is_ok());
        assert!(authorize(
            &me,
            Action::ReadLedger {
                account: &Account::Buyer(b2)
            }
        )
        .is_err());
        assert!(authorize(
            &me,
            Action::ReadLedger {
                account: &Account::Escrow
            }
        )
        .is_err());
        assert!(authorize(&me, Action::BrowseAgents).is_ok());
    }

    #[test]
    fn workers_act_only_for_the_agents_they_serve() {
        let (a1, a2) = (agent("agent-1"), agent("agent-2"));
        let w = p("worker:agent-1");
        assert!(authorize(&w, Action::WorkOnTask { agent: Some(&a1) }).is_ok());
        assert!(authorize(&w, Action::WorkOnTask { agent: Some(&a2) }).is_err());
        assert!(authorize(&w, Action::WorkOnTask { agent: None }).is_err());
        assert!(authorize(&p("worker"), Action::WorkOnTask { agent: Some(&a2) }).is_ok());
        // A worker is no agent: it cannot read the agent's money.
        assert!(authorize(
            &w,
            Action::ReadLedger {
                account: &Account::Agent(a1)
            }
        )
        .is_err());
    }

    #[test]
    fn agents_change_their_profile_but_not_how_it_runs() {
        let a1 = agent("agent-1");
        let me = p("agent:agent-1");
        assert!(authorize(
            &me,
            Action::UpdateAgent {
                agent: &a1,
                operational: false
            }
        )
        .is_ok());
        assert!(authorize(
            &me,
            Action::UpdateAgent {
                agent: &a1,
                operational: true
            }
        )
        .is_err());
        let other = agent("agent-2");
        assert!(authorize(
            &me,
            Action::UpdateAgent {
                agent: &other,
                operational: false
            }
        )
        .is_err());
        assert!(authorize(&me, Action::RegisterAgent).is_err());
    }

    fn any_principal() -> impl Strategy<Value = Principal> {
        prop_oneof![
            Just(Principal::Admin),
            "[ab][0-9]".prop_map(|id| Principal::Buyer(buyer(&id))),
            "agent-[1-3]".prop_map(|id| Principal::Agent(agent(&id))),
            Just(Principal::Worker(WorkerScope::All)),
            prop::collection::btree_set("agent-[1-3]", 1..3).prop_map(|ids| {
                Principal::Worker(WorkerScope::Agents(ids.iter().map(|i| agent(i)).collect()))
            }),
            Just(Principal::Coordinator),
        ]
    }

    proptest! {
        /// Nobody but an admin reaches another buyer's or agent's things, and the admin-only
        /// actions are admin-only.
        #[test]
        fn only_the_owner_or_an_admin_is_allowed(who in any_principal(), b in "[ab][0-9]", a in "agent-[1-3]") {
            let (b, a) = (buyer(&b), agent(&a));
            let admin = who == Principal::Admin;
            let as_buyer = who == Principal::Buyer(b.clone());
            let for_agent = who == Principal::Agent(a.clone())
                || matches!(&who, Principal::Worker(scope) if scope.serves(&a));
            prop_assert_eq!(authorize(&who, Action::SubmitTask { buyer: &b }).is_ok(), admin || as_buyer);
            prop_assert_eq!(authorize(&who, Action::ChangeOrder { buyer: &b }).is_ok(), admin || as_buyer);
            prop_assert_eq!(authorize(&who, Action::WorkOnTask { agent: Some(&a) }).is_ok(), admin || for_agent);
            prop_assert_eq!(
                authorize(&who, Action::ReadTask { buyer: &b, agent: Some(&a) }).is_ok(),
                admin || as_buyer || for_agent
            );
            for action in [Action::RegisterAgent, Action::ListBuyers, Action::ManageTokens, Action::Operate] {
                prop_assert_eq!(authorize(&who, action).is_ok(), admin);
            }
            prop_assert_eq!(authorize(&who, Action::ReadLedger { account: &Account::Escrow }).is_ok(), admin);
        }
    }
}
