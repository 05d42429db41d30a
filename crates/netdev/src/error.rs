//! The crate's single error type, [`NetdevError`].
//!
//! Every variant carries the operation that failed and what it was applied to (an interface,
//! an index, a path), and, where the kernel gave one, the errno and the netlink extended-ack
//! message. Callers branch on the variant (or on [`NetdevError::is_not_found`],
//! [`NetdevError::is_exists`], [`NetdevError::errno`]) and never on the text.

use std::fmt;
use std::io;
use std::time::Duration;

/// Renders `errno` as "strerror (os error N)" plus the kernel's extended-ack text if any.
struct Cause<'a> {
    errno: Option<i32>,
    message: Option<&'a str>,
}

impl fmt::Display for Cause<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.errno {
            Some(e) => write!(f, "{}", io::Error::from_raw_os_error(e))?,
            None => f.write_str("no errno")?,
        }
        if let Some(m) = self.message.filter(|m| !m.is_empty()) {
            write!(f, ": {m}")?;
        }
        Ok(())
    }
}

fn cause(errno: Option<i32>, message: &Option<String>) -> Cause<'_> {
    Cause {
        errno,
        message: message.as_deref(),
    }
}

/// Errors from namespace, netlink, sysctl and probe operations.
///
/// `op` is a short verb phrase ("create macvlan", "open netns"), `target` names what it was
/// applied to (interface name, `index 7`, a path). `message` is the netlink extended ack
/// (`NLMSGERR_ATTR_MSG`) when the kernel sent one, e.g. "Invalid MTU".
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum NetdevError {
    /// A link, netns, address or path does not exist (ENODEV, ENOENT, ESRCH, ENXIO, EADDRNOTAVAIL
    /// on delete, or a lookup that found nothing).
    #[error("{op} {target}: not found ({})", cause(*.errno, .message))]
    NotFound {
        /// Operation.
        op: &'static str,
        /// What was looked for.
        target: String,
        /// Kernel errno, if the kernel reported it.
        errno: Option<i32>,
        /// Extended-ack message or extra detail.
        message: Option<String>,
    },
    /// The name or object is taken (EEXIST).
    #[error("{op} {target}: already exists ({})", cause(Some(*.errno), .message))]
    AlreadyExists {
        /// Operation.
        op: &'static str,
        /// The name or object.
        target: String,
        /// Kernel errno (EEXIST, or EBUSY for a name in use).
        errno: i32,
        /// Extended-ack message.
        message: Option<String>,
    },
    /// The kernel or this crate rejected an argument (EINVAL, ERANGE, EOPNOTSUPP on a bad
    /// combination, or a value rejected before any syscall: then `errno` is `None`).
    #[error("{op} {target}: invalid argument ({})", cause(*.errno, .message))]
    InvalidArgument {
        /// Operation.
        op: &'static str,
        /// What the argument was for.
        target: String,
        /// Kernel errno, `None` when rejected by this crate.
        errno: Option<i32>,
        /// Extended-ack message or the reason.
        message: Option<String>,
    },
    /// EPERM / EACCES: not root, or missing CAP_NET_ADMIN / CAP_SYS_ADMIN.
    #[error("{op} {target}: permission denied ({})", cause(Some(*.errno), .message))]
    PermissionDenied {
        /// Operation.
        op: &'static str,
        /// Target.
        target: String,
        /// EPERM or EACCES.
        errno: i32,
        /// Extended-ack message.
        message: Option<String>,
    },
    /// Any other netlink NACK.
    #[error("netlink {op} {target}: {}", cause(Some(*.errno), .message))]
    Netlink {
        /// Operation.
        op: &'static str,
        /// Target.
        target: String,
        /// Positive errno.
        errno: i32,
        /// Extended-ack message.
        message: Option<String>,
    },
    /// A netlink reply could not be decoded or violated the protocol (wrong sequence, truncated).
    #[error("netlink {op} {target}: bad reply: {message}")]
    Protocol {
        /// Operation.
        op: &'static str,
        /// Target.
        target: String,
        /// What was wrong.
        message: String,
    },
    /// A system call or file operation failed.
    #[error("{context}: {source}")]
    Io {
        /// What was being done, with the path or name.
        context: String,
        /// The underlying error (carries the errno).
        #[source]
        source: io::Error,
    },
    /// A probe (ping) got no matching reply in time.
    #[error("{op} {target}: timed out after {after:?}")]
    Timeout {
        /// Operation.
        op: &'static str,
        /// Target.
        target: String,
        /// How long we waited.
        after: Duration,
    },
    /// The closure given to [`crate::Netns::run`] could not be run (thread spawn failed).
    #[error("{context}: worker thread failed")]
    Thread {
        /// What the thread was for.
        context: String,
    },
}

impl NetdevError {
    /// Classify a positive errno from the kernel into the matching variant.
    pub fn from_errno(
        op: &'static str,
        target: impl Into<String>,
        errno: i32,
        message: Option<String>,
    ) -> Self {
        let target = target.into();
        match errno {
            libc::ENODEV | libc::ENOENT | libc::ESRCH | libc::ENXIO => NetdevError::NotFound {
                op,
                target,
                errno: Some(errno),
                message,
            },
            libc::EEXIST => NetdevError::AlreadyExists {
                op,
                target,
                errno,
                message,
            },
            libc::EINVAL | libc::ERANGE => NetdevError::InvalidArgument {
                op,
                target,
                errno: Some(errno),
                message,
            },
            libc::EPERM | libc::EACCES => NetdevError::PermissionDenied {
                op,
                target,
                errno,
                message,
            },
            _ => NetdevError::Netlink {
                op,
                target,
                errno,
                message,
            },
        }
    }

    /// Classify an `io::Error` from a syscall: well-known errnos become the specific variants,
    /// anything else is [`NetdevError::Io`].
    pub fn from_io(op: &'static str, target: impl Into<String>, source: io::Error) -> Self {
        let target = target.into();
        match source.raw_os_error() {
            Some(e @ (libc::ENOENT | libc::ENODEV | libc::EEXIST | libc::EPERM | libc::EACCES)) => {
                Self::from_errno(op, target, e, None)
            }
            _ => NetdevError::Io {
                context: format!("{op} {target}"),
                source,
            },
        }
    }

    /// A value rejected before any syscall.
    pub(crate) fn invalid(op: &'static str, target: impl Into<String>, why: impl Into<String>) -> Self {
        NetdevError::InvalidArgument {
            op,
            target: target.into(),
            errno: None,
            message: Some(why.into()),
        }
    }

    /// The positive errno behind this error, if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NetdevError::NotFound { errno, .. } | NetdevError::InvalidArgument { errno, .. } => *errno,
            NetdevError::AlreadyExists { errno, .. }
            | NetdevError::PermissionDenied { errno, .. }
            | NetdevError::Netlink { errno, .. } => Some(*errno),
            NetdevError::Io { source, .. } => source.raw_os_error(),
            NetdevError::Timeout { .. } => Some(libc::ETIMEDOUT),
            NetdevError::Protocol { .. } | NetdevError::Thread { .. } => None,
        }
    }

    /// True when the link / netns / path does not exist.
    pub fn is_not_found(&self) -> bool {
        match self {
            NetdevError::NotFound { .. } => true,
            NetdevError::Io { source, .. } => source.kind() == io::ErrorKind::NotFound,
            _ => false,
        }
    }

    /// True when the name or object already exists (EEXIST).
    pub fn is_exists(&self) -> bool {
        matches!(self, NetdevError::AlreadyExists { .. })
            || matches!(self, NetdevError::Io { source, .. } if source.kind() == io::ErrorKind::AlreadyExists)
    }

    /// True for EPERM / EACCES.
    pub fn is_permission_denied(&self) -> bool {
        matches!(self, NetdevError::PermissionDenied { .. })
            || matches!(self, NetdevError::Io { source, .. } if source.kind() == io::ErrorKind::PermissionDenied)
    }

    /// True for an invalid argument (EINVAL / ERANGE or rejected locally).
    pub fn is_invalid_argument(&self) -> bool {
        matches!(self, NetdevError::InvalidArgument { .. })
    }

    /// The kernel's extended-ack message, if one was sent.
    pub fn extack(&self) -> Option<&str> {
        match self {
            NetdevError::NotFound { message, .. }
            | NetdevError::AlreadyExists { message, .. }
            | NetdevError::InvalidArgument { message, .. }
            | NetdevError::PermissionDenied { message, .. }
            | NetdevError::Netlink { message, .. } => message.as_deref(),
            _ => None,
        }
    }
}

/// Shorthand used throughout the crate.
pub type Result<T, E = NetdevError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_classification_maps_kernel_errors_to_variants() {
        assert!(NetdevError::from_errno("x", "y", libc::ENODEV, None).is_not_found());
        assert!(NetdevError::from_errno("x", "y", libc::EEXIST, None).is_exists());
        assert!(NetdevError::from_errno("x", "y", libc::EINVAL, None).is_invalid_argument());
        assert!(NetdevError::from_errno("x", "y", libc::EPERM, None).is_permission_denied());
        let e = NetdevError::from_errno("x", "y", libc::EBUSY, Some("busy".into()));
        assert!(matches!(e, NetdevError::Netlink { errno, .. } if errno == libc::EBUSY));
        assert_eq!(e.errno(), Some(libc::EBUSY));
        assert_eq!(e.extack(), Some("busy"));
    }

    #[test]
    fn display_names_op_target_errno_and_extack() {
        let e = NetdevError::from_errno("create macvlan", "net1", libc::EINVAL, Some("Invalid MTU".into()));
        let s = e.to_string();
        assert!(s.contains("create macvlan net1"), "{s}");
        assert!(s.contains("os error 22"), "{s}");
        assert!(s.contains("Invalid MTU"), "{s}");
    }
}
