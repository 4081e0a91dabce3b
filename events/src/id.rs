//! Identifiers of tasks, agents and buyers.
//!
//! Every id ends up as a token of a NATS subject (`aicp.evt.task.<task_id>`), so an id is
//! validated once, when it is made, and is then known to be a safe subject token: no dots,
//! wildcards or whitespace, which would silently widen or split a subject.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Longest id we accept, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is the empty string.
    #[error("{kind} id must not be empty")]
    Empty {
        /// Which kind of id.
        kind: &'static str,
    },
    /// The id is longer than [`MAX_ID_LEN`] bytes.
    #[error("{kind} id is {len} bytes long; at most {MAX_ID_LEN} are allowed")]
    TooLong {
        /// Which kind of id.
        kind: &'static str,
        /// Its length in bytes.
        len: usize,
    },
    /// The id holds a character other than ASCII letters, digits, `-` and `_`.
    #[error("{kind} id {id:?} may only contain ASCII letters, digits, '-' and '_'")]
    InvalidChar {
        /// Which kind of id.
        kind: &'static str,
        /// The offending id.
        id: String,
    },
}

fn validate(kind: &'static str, id: &str) -> Result<(), IdError> {
    if id.is_empty() {
        return Err(IdError::Empty { kind });
    }
    if id.len() > MAX_ID_LEN {
        return Err(IdError::TooLong {
            kind,
            len: id.len(),
        });
    }
    if !id
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(IdError::InvalidChar {
            kind,
            id: id.to_owned(),
        });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident, $kind:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates `id` and wraps it.
            pub fn new(id: impl Into<String>) -> Result<Self, IdError> {
                let id = id.into();
                validate($kind, &id)?;
                Ok(Self(id))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(id: String) -> Result<Self, IdError> {
                Self::new(id)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(id: &str) -> Result<Self, IdError> {
                Self::new(id)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

id_type!(
    /// A task's id; new tasks get 8 lowercase hex characters, like the prototype's.
    TaskId,
    "task"
);
id_type!(
    /// An agent's id, such as `agent-1`.
    AgentId,
    "agent"
);
id_type!(
    /// A buyer's id, such as `buyer-001`.
    BuyerId,
    "buyer"
);
id_type!(
    /// An API token's public id, such as `t-3fa9c1e0b2d4a6f8` (never the secret).
    TokenId,
    "token"
);

impl TaskId {
    /// A fresh random task id: the first 8 hex characters of a UUIDv4, as the prototype made them.
    ///
    /// 32 random bits collide with even odds around 77,000 tasks, so a new task must be
    /// appended with `Expected::NEW`: a collision is then a conflict, and the caller retries
    /// with another id instead of merging two histories.
    pub fn generate() -> Self {
        let hex = uuid::Uuid::new_v4().simple().to_string();
        Self(hex[..8].to_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_subject_safe_ids() {
        for id in ["agent-1", "buyer_001", "a1b2c3d4", "X"] {
            assert!(AgentId::new(id).is_ok(), "{id}");
        }
    }

    #[test]
    fn rejects_ids_that_would_break_a_subject() {
        for id in ["a.b", "a*", ">", "a b", "é", "a\n"] {
            assert!(
                matches!(TaskId::new(id), Err(IdError::InvalidChar { .. })),
                "{id}"
            );
        }
        assert_eq!(BuyerId::new(""), Err(IdError::Empty { kind: "buyer" }));
        assert!(matches!(
            BuyerId::new("x".repeat(MAX_ID_LEN + 1)),
            Err(IdError::TooLong { len: 65, .. })
        ));
        assert!(BuyerId::new("x".repeat(MAX_ID_LEN)).is_ok());
    }

    #[test]
    fn generated_task_ids_are_eight_hex_chars() {
        let id = TaskId::generate();
        assert_eq!(id.as_str().len(), 8);
        assert!(id.as_str().bytes().all(|b| b.is_ascii_hexdigit()));
    }

    #[test]
    fn deserializing_validates() {
        let err = serde_json::from_str::<AgentId>("\"a.b\"").expect_err("a dot is invalid");
        assert!(err.to_string().contains("may only contain"), "{err}");
    }
}
