//! Choosing which agent gets a task.
//!
//! First the candidates are filtered down to the eligible ones (accepting work, with every
//! required skill, within the buyer's price cap), then a [`Policy`] picks one. The pick
//! depends only on the arguments, never on the order of the candidates, so replaying the same
//! events always assigns the same agent.

use std::cmp::Reverse;
use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::domain::pricing::{price_sats, Complexity, MultiplierMilli};
use crate::id::AgentId;

/// How to pick one agent among the eligible ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Policy {
    /// The agent with the best reputation (highest multiplier), as the prototype did.
    #[default]
    BestReputation,
    /// Each eligible agent in turn, in agent id order.
    RoundRobin,
    /// The agent with the fewest active tasks.
    LeastLoaded,
}

impl Policy {
    /// Every policy, in the order they are listed to users.
    pub const ALL: [Policy; 3] = [
        Policy::BestReputation,
        Policy::RoundRobin,
        Policy::LeastLoaded,
    ];

    /// The policy's name, as parsed by `FromStr` and used in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Policy::BestReputation => "best-reputation",
            Policy::RoundRobin => "round-robin",
            Policy::LeastLoaded => "least-loaded",
        }
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A policy name that is not one of [`Policy::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "unknown assignment policy {0:?}; expected one of: {valid}",
    valid = Policy::ALL.map(Policy::as_str).join(", ")
)]
pub struct UnknownPolicy(pub String);

impl FromStr for Policy {
    type Err = UnknownPolicy;

    fn from_str(name: &str) -> Result<Self, UnknownPolicy> {
        Policy::ALL
            .into_iter()
            .find(|policy| policy.as_str() == name)
            .ok_or_else(|| UnknownPolicy(name.to_owned()))
    }
}

/// An agent that might take the task, with what the policies need to know about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The agent.
    pub agent_id: AgentId,
    /// What it can do.
    pub skills: BTreeSet<String>,
    /// Its current price multiplier.
    pub multiplier: MultiplierMilli,
    /// Its current success rate in basis points.
    pub rate_bp: u32,
    /// How many tasks it is working on now.
    pub active_tasks: u32,
    /// False while the agent is paused.
    pub accepting: bool,
}

/// What the buyer asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// How hard the task is; sets the price with the agent's multiplier.
    pub complexity: Complexity,
    /// Skills the agent must have, all of them.
    pub required_skills: BTreeSet<String>,
    /// The most the buyer will pay, if it set a cap.
    pub max_price_sats: Option<u64>,
}

/// The agent picked for a task and the price the buyer pays.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Choice {
    /// The agent.
    pub agent_id: AgentId,
    /// Its multiplier when it was picked.
    pub multiplier: MultiplierMilli,
    /// `price_sats(complexity, multiplier)`.
    pub price_sats: u64,
}

/// Why no agent can take the task, named after the first filter that left nobody.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum NoEligibleAgent {
    /// There are no agents at all.
    #[error("no agents are registered")]
    NoAgents,
    /// Every agent is paused.
    #[error("no agent is accepting tasks right now")]
    NoneAccepting,
    /// No accepting agent has every required skill.
    #[error(
        "no agent accepting tasks has all of the skills [{skills}]",
        skills = .required.iter().map(String::as_str).collect::<Vec<_>>().join(", ")
    )]
    MissingSkills {
        /// The skills the request asked for.
        required: BTreeSet<String>,
    },
    /// Every accepting, skilled agent costs more than the buyer's cap.
    #[error("the cheapest eligible agent costs {cheapest_sats} sat, above your cap of {max_price_sats} sat")]
    OverPriceCap {
        /// The buyer's cap.
        max_price_sats: u64,
        /// The lowest price among the agents that passed the other filters.
        cheapest_sats: u64,
    },
}

/// The candidates that can take the task, in the order given.
pub fn eligible<'a>(
    request: &Request,
    candidates: &'a [Candidate],
) -> Result<Vec<&'a Candidate>, NoEligibleAgent> {
    if candidates.is_empty() {
        return Err(NoEligibleAgent::NoAgents);
    }

    let accepting: Vec<&Candidate> = candidates.iter().filter(|c| c.accepting).collect();
    if accepting.is_empty() {
        return Err(NoEligibleAgent::NoneAccepting);
    }

    let skilled: Vec<&Candidate> = accepting
        .into_iter()
        .filter(|c| request.required_skills.is_subset(&c.skills))
        .collect();
    if skilled.is_empty() {
        return Err(NoEligibleAgent::MissingSkills {
            required: request.required_skills.clone(),
        });
    }

    let Some(max_price_sats) = request.max_price_sats else {
        return Ok(skilled);
    };
    let price = |c: &Candidate| price_sats(request.complexity, c.multiplier);
    match skilled.iter().map(|c| price(c)).min() {
        Some(cheapest_sats) if cheapest_sats > max_price_sats => {
            Err(NoEligibleAgent::OverPriceCap {
                max_price_sats,
                cheapest_sats,
            })
        }
        _ => Ok(skilled
            .into_iter()
            .filter(|c| price(c) <= max_price_sats)
            .collect()),
    }
}

/// Picks an agent for the task under `policy`.
///
/// `round_robin_counter` is kept by the caller (for example, how many tasks have been
/// assigned so far) so that this stays a pure function; only `RoundRobin` uses it.
pub fn assign(
    policy: Policy,
    request: &Request,
    candidates: &[Candidate],
    round_robin_counter: u64,
) -> Result<Choice, NoEligibleAgent> {
    let eligible = eligible(request, candidates)?;
    let picked = match policy {
        Policy::BestReputation => eligible
            .into_iter()
            .min_by(|a, b| best_reputation_rank(a).cmp(&best_reputation_rank(b))),
        Policy::LeastLoaded => eligible
            .into_iter()
            .min_by(|a, b| least_loaded_rank(a).cmp(&least_loaded_rank(b))),
        Policy::RoundRobin => round_robin_pick(eligible, round_robin_counter),
    };
    // `eligible` returns an error rather than an empty list, so there is always a pick; this
    // fallback only keeps the function free of panics.
    let picked = picked.ok_or(NoEligibleAgent::NoAgents)?;
    Ok(Choice {
        agent_id: picked.agent_id.clone(),
        multiplier: picked.multiplier,
        price_sats: price_sats(request.complexity, picked.multiplier),
    })
}

/// Smallest is best: highest multiplier, then highest rate, then fewest active tasks, then
/// smallest agent id, so that the pick never depends on the order of the candidates.
fn best_reputation_rank(c: &Candidate) -> (Reverse<MultiplierMilli>, Reverse<u32>, u32, &AgentId) {
    (
        Reverse(c.multiplier),
        Reverse(c.rate_bp),
        c.active_tasks,
        &c.agent_id,
    )
}

/// Smallest is best: fewest active tasks, then highest multiplier, then smallest agent id.
fn least_loaded_rank(c: &Candidate) -> (u32, Reverse<MultiplierMilli>, &AgentId) {
    (c.active_tasks, Reverse(c.multiplier), &c.agent_id)
}

/// The eligible agent at `counter` in agent id order, wrapping around.
fn round_robin_pick(mut eligible: Vec<&Candidate>, counter: u64) -> Option<&Candidate> {
    // The multiplier only breaks ties between duplicate agent ids, so that even that caller
    // mistake cannot make the pick depend on the candidates' order.
    eligible.sort_by(|a, b| (&a.agent_id, a.multiplier).cmp(&(&b.agent_id, b.multiplier)));
    // usize to u64 is lossless on every supported target, and the remainder is below the
    // length, so it converts back losslessly too.
    let index = counter.checked_rem(eligible.len() as u64)? as usize;
    eligible.get(index).copied()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn agent(id: &str) -> AgentId {
        AgentId::new(id).expect("valid agent id")
    }

    fn complexity(value: i64) -> Complexity {
        Complexity::new(value).expect("valid complexity")
    }

    fn skills(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|name| (*name).to_owned()).collect()
    }

    fn candidate(id: &str, multiplier: u32, rate_bp: u32, active_tasks: u32) -> Candidate {
        Candidate {
            agent_id: agent(id),
            skills: BTreeSet::new(),
            multiplier: MultiplierMilli(multiplier),
            rate_bp,
            active_tasks,
            accepting: true,
        }
    }

    /// The prototype's three seed agents, as their seeded reputations price them.
    fn seed_agents() -> Vec<Candidate> {
        vec![
            candidate("agent-1", 2000, 9500, 0),
            candidate("agent-2", 1800, 9000, 0),
            candidate("agent-3", 1200, 7000, 0),
        ]
    }

    fn request(complexity_value: i64) -> Request {
        Request {
            complexity: complexity(complexity_value),
            required_skills: BTreeSet::new(),
            max_price_sats: None,
        }
    }

    #[test]
    fn policy_names_round_trip() {
        for policy in Policy::ALL {
            assert_eq!(policy.to_string().parse::<Policy>(), Ok(policy));
            let json = serde_json::to_string(&policy).expect("serializes");
            assert_eq!(json, format!("\"{policy}\""));
        }
        assert_eq!(Policy::default(), Policy::BestReputation);
        assert_eq!(Policy::LeastLoaded.to_string(), "least-loaded");
    }

    #[test]
    fn an_unknown_policy_lists_the_valid_ones() {
        let err = "fastest".parse::<Policy>().expect_err("not a policy");
        assert_eq!(err, UnknownPolicy("fastest".to_owned()));
        assert_eq!(
            err.to_string(),
            "unknown assignment policy \"fastest\"; expected one of: \
             best-reputation, round-robin, least-loaded"
        );
    }

    #[test]
    fn best_reputation_picks_agent_1_like_the_prototype() {
        let choice = assign(Policy::BestReputation, &request(2), &seed_agents(), 0);
        assert_eq!(
            choice,
            Ok(Choice {
                agent_id: agent("agent-1"),
                multiplier: MultiplierMilli(2000),
                price_sats: 400_000,
            })
        );
    }

    #[test]
    fn a_price_cap_picks_the_best_agent_the_buyer_can_afford() {
        let capped = Request {
            max_price_sats: Some(250_000),
            ..request(2)
        };
        let choice = assign(Policy::BestReputation, &capped, &seed_agents(), 0);
        assert_eq!(
            choice,
            Ok(Choice {
                agent_id: agent("agent-3"),
                multiplier: MultiplierMilli(1200),
                price_sats: 240_000,
            })
        );
    }

    #[test]
    fn best_reputation_breaks_ties_by_rate_then_load_then_id() {
        let agents = [
            candidate("agent-4", 2000, 9600, 3),
            candidate("agent-3", 2000, 9600, 3),
            candidate("agent-2", 2000, 9600, 1),
            candidate("agent-1", 2000, 9500, 0),
        ];
        let pick = |agents: &[Candidate]| {
            assign(Policy::BestReputation, &request(1), agents, 0).map(|c| c.agent_id)
        };
        assert_eq!(pick(&agents), Ok(agent("agent-2")));
        assert_eq!(pick(&agents[..2]), Ok(agent("agent-3")));
    }

    #[test]
    fn least_loaded_picks_the_fewest_active_tasks() {
        let agents = [
            candidate("agent-1", 2000, 9500, 2),
            candidate("agent-2", 1200, 7000, 1),
            candidate("agent-3", 1800, 9000, 1),
        ];
        let choice = assign(Policy::LeastLoaded, &request(1), &agents, 0);
        assert_eq!(choice.map(|c| c.agent_id), Ok(agent("agent-3")));
    }

    #[test]
    fn round_robin_cycles_in_agent_id_order() {
        let mut agents = seed_agents();
        agents.reverse();
        let picks: Vec<AgentId> = (0..4)
            .map(|counter| {
                assign(Policy::RoundRobin, &request(1), &agents, counter)
                    .expect("seed agents are eligible")
                    .agent_id
            })
            .collect();
        let expected = ["agent-1", "agent-2", "agent-3", "agent-1"].map(agent);
        assert_eq!(picks, expected);
    }

    #[test]
    fn no_agents_at_all() {
        let err = assign(Policy::BestReputation, &request(1), &[], 0);
        assert_eq!(err, Err(NoEligibleAgent::NoAgents));
    }

    #[test]
    fn every_agent_paused() {
        let mut agents = seed_agents();
        for agent in &mut agents {
            agent.accepting = false;
        }
        let err = assign(Policy::BestReputation, &request(1), &agents, 0);
        assert_eq!(err, Err(NoEligibleAgent::NoneAccepting));
    }

    #[test]
    fn no_accepting_agent_has_the_skills() {
        let mut agents = seed_agents();
        agents[0].skills = skills(&["x", "y"]);
        // The only agent with both skills is paused, so skills are what is missing.
        agents[0].accepting = false;
        agents[1].skills = skills(&["x"]);
        let wants = Request {
            required_skills: skills(&["y", "x"]),
            ..request(1)
        };
        let err = assign(Policy::BestReputation, &wants, &agents, 0).expect_err("no one fits");
        assert_eq!(
            err,
            NoEligibleAgent::MissingSkills {
                required: skills(&["x", "y"])
            }
        );
        assert_eq!(
            err.to_string(),
            "no agent accepting tasks has all of the skills [x, y]"
        );
    }

    #[test]
    fn every_skilled_agent_is_over_the_cap() {
        let capped = Request {
            max_price_sats: Some(200_000),
            ..request(2)
        };
        let err = assign(Policy::BestReputation, &capped, &seed_agents(), 0).expect_err("too dear");
        assert_eq!(
            err,
            NoEligibleAgent::OverPriceCap {
                max_price_sats: 200_000,
                cheapest_sats: 240_000,
            }
        );
        assert_eq!(
            err.to_string(),
            "the cheapest eligible agent costs 240000 sat, above your cap of 200000 sat"
        );
    }

    const SKILL_POOL: [&str; 4] = ["code", "math", "vision", "writing"];
    const TIER_MULTIPLIERS: [u32; 6] = [500, 1000, 1200, 1500, 1800, 2000];

    fn skill_set() -> impl Strategy<Value = BTreeSet<String>> {
        prop::collection::btree_set(prop::sample::select(SKILL_POOL.to_vec()), 0..=4)
            .prop_map(|set| set.into_iter().map(str::to_owned).collect())
    }

    fn candidates() -> impl Strategy<Value = Vec<Candidate>> {
        let one = (
            skill_set(),
            prop::sample::select(TIER_MULTIPLIERS.to_vec()),
            0u32..=10_000,
            0u32..5,
            any::<bool>(),
        );
        prop::collection::vec(one, 0..6).prop_map(|rows| {
            rows.into_iter()
                .enumerate()
                .map(
                    |(i, (skills, multiplier, rate_bp, active_tasks, accepting))| Candidate {
                        agent_id: agent(&format!("agent-{i}")),
                        skills,
                        multiplier: MultiplierMilli(multiplier),
                        rate_bp,
                        active_tasks,
                        accepting,
                    },
                )
                .collect()
        })
    }

    fn requests() -> impl Strategy<Value = Request> {
        (
            1i64..=10,
            // Mostly small skill sets, so that some requests can be met.
            prop::collection::btree_set(prop::sample::select(SKILL_POOL.to_vec()), 0..=2),
            prop::option::of(0u64..=2_000_000),
        )
            .prop_map(|(c, required, max_price_sats)| Request {
                complexity: complexity(c),
                required_skills: required.into_iter().map(str::to_owned).collect(),
                max_price_sats,
            })
    }

    fn price_of(request: &Request, c: &Candidate) -> u64 {
        price_sats(request.complexity, c.multiplier)
    }

    /// The eligibility rules restated as plainly as possible, to check `eligible` against.
    fn brute_force_eligible<'a>(
        request: &Request,
        candidates: &'a [Candidate],
    ) -> Vec<&'a Candidate> {
        candidates
            .iter()
            .filter(|c| {
                c.accepting
                    && request.required_skills.iter().all(|s| c.skills.contains(s))
                    && request
                        .max_price_sats
                        .is_none_or(|cap| price_of(request, c) <= cap)
            })
            .collect()
    }

    fn any_policy() -> impl Strategy<Value = Policy> {
        prop::sample::select(Policy::ALL.to_vec())
    }

    proptest! {
        #[test]
        fn a_choice_is_always_an_eligible_agent(
            policy in any_policy(),
            request in requests(),
            candidates in candidates(),
            counter in any::<u64>(),
        ) {
            let brute = brute_force_eligible(&request, &candidates);
            match assign(policy, &request, &candidates, counter) {
                Ok(choice) => {
                    let picked = brute.iter().find(|c| c.agent_id == choice.agent_id);
                    prop_assert!(picked.is_some(), "{:?} is not eligible", choice);
                    let picked = picked.expect("checked above");
                    prop_assert_eq!(choice.multiplier, picked.multiplier);
                    prop_assert_eq!(choice.price_sats, price_of(&request, picked));
                }
                Err(err) => {
                    prop_assert!(brute.is_empty(), "{} but {} are eligible", err, brute.len());
                    // The error names the first filter that left nobody.
                    let accepting: Vec<_> = candidates.iter().filter(|c| c.accepting).collect();
                    let skilled: Vec<_> = accepting
                        .iter()
                        .filter(|c| request.required_skills.is_subset(&c.skills))
                        .collect();
                    let expected = if candidates.is_empty() {
                        NoEligibleAgent::NoAgents
                    } else if accepting.is_empty() {
                        NoEligibleAgent::NoneAccepting
                    } else if skilled.is_empty() {
                        NoEligibleAgent::MissingSkills { required: request.required_skills.clone() }
                    } else {
                        NoEligibleAgent::OverPriceCap {
                            max_price_sats: request.max_price_sats.expect("only a cap can exclude a skilled agent"),
                            cheapest_sats: skilled.iter().map(|c| price_of(&request, c)).min().expect("non-empty"),
                        }
                    };
                    prop_assert_eq!(err, expected);
                }
            }
        }

        #[test]
        fn eligible_matches_the_brute_force_filter(
            request in requests(),
            candidates in candidates(),
        ) {
            let brute = brute_force_eligible(&request, &candidates);
            match eligible(&request, &candidates) {
                Ok(found) => prop_assert_eq!(found, brute),
                Err(_) => prop_assert!(brute.is_empty()),
            }
        }

        #[test]
        fn best_reputation_picks_a_highest_multiplier(
            request in requests(),
            candidates in candidates(),
        ) {
            if let Ok(choice) = assign(Policy::BestReputation, &request, &candidates, 0) {
                let best = brute_force_eligible(&request, &candidates)
                    .iter()
                    .map(|c| c.multiplier)
                    .max();
                prop_assert_eq!(Some(choice.multiplier), best);
            }
        }

        #[test]
        fn least_loaded_picks_a_least_loaded_agent(
            request in requests(),
            candidates in candidates(),
        ) {
            if let Ok(choice) = assign(Policy::LeastLoaded, &request, &candidates, 0) {
                let brute = brute_force_eligible(&request, &candidates);
                let load_of = |id: &AgentId| brute.iter().find(|c| &c.agent_id == id).map(|c| c.active_tasks);
                let least = brute.iter().map(|c| c.active_tasks).min();
                prop_assert_eq!(load_of(&choice.agent_id), least);
            }
        }

        #[test]
        fn round_robin_visits_each_eligible_agent_once_per_cycle(
            request in requests(),
            candidates in candidates(),
            // Kept clear of u64::MAX: counters that wrap around are not consecutive modulo n.
            start in 0..u64::MAX / 2,
        ) {
            let brute = brute_force_eligible(&request, &candidates);
            let n = brute.len() as u64;
            let mut picked: Vec<AgentId> = (0..n)
                .map(|i| {
                    assign(Policy::RoundRobin, &request, &candidates, start + i)
                        .expect("someone is eligible")
                        .agent_id
                })
                .collect();
            picked.sort();
            let mut expected: Vec<AgentId> = brute.iter().map(|c| c.agent_id.clone()).collect();
            expected.sort();
            prop_assert_eq!(picked, expected);
        }

        #[test]
        fn the_order_of_candidates_does_not_matter(
            policy in any_policy(),
            request in requests(),
            (candidates, shuffled) in candidates()
                .prop_flat_map(|c| (Just(c.clone()), Just(c).prop_shuffle())),
            counter in any::<u64>(),
        ) {
            prop_assert_eq!(
                assign(policy, &request, &candidates, counter),
                assign(policy, &request, &shuffled, counter)
            );
        }
    }
}
