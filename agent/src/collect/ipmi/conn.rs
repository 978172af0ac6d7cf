//! The transport: a kernel IPMI device or an activated RMCP+ session (from `ipmi-rs`), one
//! request and its matched response at a time, with every library error mapped to an
//! [`IpmiError`] that names the BMC. Only `collector` uses this.

use std::time::Duration;

use ipmi_rs::connection::{
    IpmiConnection, LogicalUnit, Message, Request, RequestTargetAddress, Response,
};
use ipmi_rs::rmcp::{
    ActivationError, Rmcp, RmcpIpmiError, RmcpIpmiReceiveError, RmcpIpmiSendError,
    V2_0ActivationError,
};

use super::{BmcEndpoint, IpmiError};

/// An open connection: a kernel device or an activated RMCP+ session.
pub(super) enum Conn {
    Local(ipmi_rs::File),
    // Boxed: the session holds a 1 KiB receive buffer.
    Lan(Box<Rmcp>),
}

impl Conn {
    pub(super) fn open(endpoint: &BmcEndpoint, timeout: Duration) -> Result<Self, IpmiError> {
        match endpoint {
            BmcEndpoint::Local(path) => {
                ipmi_rs::File::new(path, timeout)
                    .map(Conn::Local)
                    .map_err(|source| IpmiError::Device {
                        path: path.display().to_string(),
                        source,
                    })
            }
            BmcEndpoint::Rmcp {
                host,
                port,
                user,
                password,
            } => {
                let bmc = endpoint.to_string();
                let mut rmcp = Rmcp::new((host.as_str(), *port), timeout).map_err(|source| {
                    IpmiError::Resolve {
                        bmc: bmc.clone(),
                        source,
                    }
                })?;
                rmcp.activate(true, Some(user), Some(password.as_bytes()))
                    .map_err(|e| activation_error(e, &bmc, user, timeout))?;
                Ok(Conn::Lan(Box::new(rmcp)))
            }
        }
    }

    /// Sends a request and returns the raw response (completion code first). Responses to an
    /// earlier, timed-out request are skipped (a few at most), so they cannot be mistaken for
    /// this one's.
    pub(super) fn request(
        &mut self,
        netfn: u8,
        cmd: u8,
        data: &[u8],
        endpoint: &BmcEndpoint,
        timeout: Duration,
        what: &'static str,
    ) -> Result<Vec<u8>, IpmiError> {
        let bmc = || endpoint.to_string();
        let mut req = Request::new(
            Message::new_raw(netfn, cmd, data.to_vec()),
            RequestTargetAddress::Bmc(LogicalUnit::Zero),
        );
        let matches = |r: &Response| r.netfn_raw() == (netfn | 1) && r.cmd() == cmd;
        match self {
            Conn::Local(f) => {
                let map = |source: std::io::Error| match source.kind() {
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                        IpmiError::Timeout {
                            bmc: bmc(),
                            timeout,
                        }
                    }
                    _ => IpmiError::Io { bmc: bmc(), source },
                };
                f.send(&mut req).map_err(map)?;
                for _ in 0..4 {
                    let r = f.recv().map_err(map)?;
                    if matches(&r) {
                        return Ok(with_cc(&r));
                    }
                }
            }
            Conn::Lan(rmcp) => {
                rmcp.send(&mut req)
                    .map_err(|e| link_error(e, &bmc(), timeout))?;
                for _ in 0..4 {
                    let r = rmcp.recv().map_err(|e| link_error(e, &bmc(), timeout))?;
                    if matches(&r) {
                        return Ok(with_cc(&r));
                    }
                }
            }
        }
        Err(IpmiError::Protocol {
            bmc: bmc(),
            what,
            detail: "responses did not match the request".into(),
        })
    }
}

fn with_cc(r: &Response) -> Vec<u8> {
    let mut v = Vec::with_capacity(r.data().len() + 1);
    v.push(r.cc());
    v.extend_from_slice(r.data());
    v
}

fn io_error(e: std::io::Error, bmc: &str, timeout: Duration) -> IpmiError {
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => IpmiError::Timeout {
            bmc: bmc.to_string(),
            timeout,
        },
        std::io::ErrorKind::ConnectionRefused => IpmiError::Refused {
            bmc: bmc.to_string(),
        },
        _ => IpmiError::Io {
            bmc: bmc.to_string(),
            source: e,
        },
    }
}

fn receive_error(e: RmcpIpmiReceiveError, bmc: &str, timeout: Duration) -> IpmiError {
    match e {
        RmcpIpmiReceiveError::Io(io) => io_error(io, bmc, timeout),
        other => IpmiError::Protocol {
            bmc: bmc.to_string(),
            what: "RMCP+ receive",
            detail: format!("{other:?}"),
        },
    }
}

fn link_error(e: RmcpIpmiError, bmc: &str, timeout: Duration) -> IpmiError {
    match e {
        RmcpIpmiError::Receive(r) => receive_error(r, bmc, timeout),
        RmcpIpmiError::Send(RmcpIpmiSendError::V2_0(ipmi_rs::rmcp::V2_0WriteError::Io(io))) => {
            io_error(io, bmc, timeout)
        }
        other => IpmiError::Protocol {
            bmc: bmc.to_string(),
            what: "RMCP+ send",
            detail: format!("{other:?}"),
        },
    }
}

fn activation_error(e: ActivationError, bmc: &str, user: &str, timeout: Duration) -> IpmiError {
    let auth = |detail: &str| IpmiError::AuthFailed {
        bmc: bmc.to_string(),
        user: user.to_string(),
        detail: detail.to_string(),
    };
    let session = |detail: String| IpmiError::Session {
        bmc: bmc.to_string(),
        detail,
    };
    match e {
        ActivationError::PingSend(io)
        | ActivationError::PongReceive(io)
        | ActivationError::BindSocket(io) => io_error(io, bmc, timeout),
        ActivationError::GetChannelAuthenticationCapabilities(ipmi_rs::IpmiError::Connection(
            c,
        )) => link_error(c, bmc, timeout),
        ActivationError::V2_0(v2) => match v2 {
            V2_0ActivationError::Io(io) => io_error(io, bmc, timeout),
            V2_0ActivationError::OpenSessionResponseReceive(r)
            | V2_0ActivationError::RakpMessage2Receive(r)
            | V2_0ActivationError::RakpMessage4Receive(r) => receive_error(r, bmc, timeout),
            V2_0ActivationError::ServerAuthenticationFailed
            | V2_0ActivationError::RakpMessage4InvalidIntegrityCheckValue => {
                auth("wrong password?")
            }
            V2_0ActivationError::RakpMessage2Parse(p) => {
                auth(&format!("BMC refused the user: {p:?}"))
            }
            V2_0ActivationError::RakpMessage4Parse(p) => {
                auth(&format!("BMC refused the login: {p:?}"))
            }
            other => session(format!("{other:?}")),
        },
        ActivationError::IpmiNotSupported => session("the host does not speak IPMI".into()),
        ActivationError::NoSupportedIpmiLANVersions => {
            session("the BMC offers neither IPMI 2.0 (RMCP+) nor 1.5 sessions".into())
        }
        ActivationError::V1_5(v) => session(format!(
            "the BMC offers only IPMI 1.5 sessions, which failed: {v:?}"
        )),
        other => session(format!("{other:?}")),
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Error, ErrorKind};

    use super::*;

    #[test]
    fn io_errors_say_timeout_refused_or_io() {
        let t = Duration::from_secs(3);
        let timeout = io_error(Error::from(ErrorKind::WouldBlock), "bmc1:623", t);
        assert!(
            matches!(timeout, IpmiError::Timeout { ref bmc, timeout } if bmc == "bmc1:623" && timeout == t)
        );
        let refused = io_error(Error::from(ErrorKind::ConnectionRefused), "bmc1:623", t);
        assert!(matches!(refused, IpmiError::Refused { .. }), "{refused}");
        let other = io_error(Error::from(ErrorKind::PermissionDenied), "bmc1:623", t);
        assert!(matches!(other, IpmiError::Io { .. }), "{other}");
    }

    #[test]
    fn a_wrong_password_is_an_authentication_error_naming_the_user() {
        let e = activation_error(
            ActivationError::V2_0(V2_0ActivationError::ServerAuthenticationFailed),
            "bmc1:623",
            "admin",
            Duration::from_secs(1),
        );
        assert_eq!(
            e.to_string(),
            "authentication failed for user admin at BMC bmc1:623 (wrong password?)"
        );
        let v15 = activation_error(
            ActivationError::NoSupportedIpmiLANVersions,
            "bmc1:623",
            "admin",
            Duration::from_secs(1),
        );
        assert!(matches!(v15, IpmiError::Session { .. }), "{v15}");
    }

    #[test]
    fn a_missing_device_names_the_path_and_the_kernel_module() {
        let ep = BmcEndpoint::Local("/nonexistent/ipmi7".into());
        let err = Conn::open(&ep, Duration::from_millis(100))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(
            err.contains("/nonexistent/ipmi7") && err.contains("ipmi_devintf"),
            "{err}"
        );
    }
}
