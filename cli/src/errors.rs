//! Error kinds main() treats specially: gRPC statuses (printed as `CODE_NAME: message`),
//! failures already reported on stderr, and a closed stdout pipe.

use std::fmt;

use tonic::{Code, Status};

/// A gRPC status from the server, displayed as `NOT_FOUND: device "x" not found`.
#[derive(Debug)]
pub struct RpcError(pub Status);

impl fmt::Display for RpcError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = code_name(self.0.code());
        let message = self.0.message().trim();
        if message.is_empty() {
            f.write_str(name)?;
        } else {
            write!(f, "{name}: {message}")?;
        }
        // A status the client made from a broken connection carries the transport error.
        if std::error::Error::source(&self.0).is_some() {
            let cause = root_cause(&self.0);
            if !cause.is_empty() && !message.contains(&cause) {
                write!(f, ": {cause}")?;
            }
        }
        Ok(())
    }
}

impl std::error::Error for RpcError {}

impl RpcError {
    /// The status code, for callers that retry on some codes.
    pub fn code(&self) -> Code {
        self.0.code()
    }
}

pub use muster::status::code_name;

/// The command failed and has already said why on stderr: exit 1 without another line.
#[derive(Debug)]
pub struct Reported;

impl fmt::Display for Reported {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("failed")
    }
}

impl std::error::Error for Reported {}

/// Standard output was closed by the reader (`muster get devices | head`): stop quietly.
#[derive(Debug)]
pub struct PipeClosed;

impl fmt::Display for PipeClosed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("standard output closed")
    }
}

impl std::error::Error for PipeClosed {}

/// The deepest cause of an error chain, the part that is useful on one line
/// (e.g. `Connection refused (os error 111)` rather than `transport error`).
pub use muster::client::root_cause;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_display() {
        let e = RpcError(Status::not_found("device \"x\" not found"));
        assert_eq!(e.to_string(), "NOT_FOUND: device \"x\" not found");
        let e = RpcError(Status::new(Code::Unauthenticated, ""));
        assert_eq!(e.to_string(), "UNAUTHENTICATED");
    }
}
