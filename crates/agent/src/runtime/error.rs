//! The runtime's error: a message with its chain of causes, serializable so that a failure inside
//! a container's init travels back to the parent intact (see `sync`).

use std::fmt;

use serde::{Deserialize, Serialize};

/// A runtime failure: what we were doing, then why (outermost first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error {
    pub message: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub causes: Vec<String>,
    /// A problem in what the user asked for (exit 1), not in the host (exit 2).
    #[serde(default)]
    pub user: bool,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A host-side failure without an underlying cause.
    pub fn new(message: impl Into<String>) -> Self {
        Error {
            message: message.into(),
            causes: Vec::new(),
            user: false,
        }
    }

    /// A problem in the user's configuration (a bad capability name, a non-namespaced sysctl, ...).
    pub fn user(message: impl Into<String>) -> Self {
        Error {
            user: true,
            ..Error::new(message)
        }
    }

    /// Wraps this error in an outer context: `context` becomes the message.
    pub fn context(mut self, context: impl Into<String>) -> Self {
        let inner = std::mem::replace(&mut self.message, context.into());
        self.causes.insert(0, inner);
        self
    }

    /// Converts into the protocol's error, for replies to the CLI.
    pub fn to_agent_error(&self) -> crate::proto::AgentError {
        crate::proto::AgentError {
            kind: if self.user {
                crate::proto::ErrorKind::BadRequest
            } else {
                crate::proto::ErrorKind::Host
            },
            message: self.message.clone(),
            causes: self.causes.clone(),
        }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)?;
        for c in &self.causes {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Error {}

/// Adds context to any error that displays, turning it into an [`Error`].
pub trait Context<T> {
    fn context<C: Into<String>>(self, context: C) -> Result<T>;
    fn with_context<C: Into<String>, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context<C: Into<String>>(self, context: C) -> Result<T> {
        self.map_err(|e| Error {
            message: context.into(),
            causes: vec![e.to_string()],
            user: false,
        })
    }

    fn with_context<C: Into<String>, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| Error {
            message: f().into(),
            causes: vec![e.to_string()],
            user: false,
        })
    }
}

/// Keeps the inner error's chain when adding context to a runtime [`Error`].
pub trait ResultExt<T> {
    fn ctx<C: Into<String>, F: FnOnce() -> C>(self, f: F) -> Result<T>;
}

impl<T> ResultExt<T> for Result<T> {
    fn ctx<C: Into<String>, F: FnOnce() -> C>(self, f: F) -> Result<T> {
        self.map_err(|e| e.context(f()))
    }
}
