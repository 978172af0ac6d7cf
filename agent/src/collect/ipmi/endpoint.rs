//! Where the BMC is, parsed from the agent's config ("local", "local:/dev/ipmiN",
//! "rmcp://user@host:port"), with the password kept out of every log line.

use std::path::PathBuf;

use super::IpmiError;

/// Where the BMC is.
#[derive(Clone, PartialEq, Eq)]
pub enum BmcEndpoint {
    /// The host's own BMC through the kernel's IPMI device (e.g. `/dev/ipmi0`).
    Local(PathBuf),
    /// A BMC on the network, reached over RMCP+ (UDP).
    Rmcp {
        host: String,
        port: u16,
        user: String,
        password: String,
    },
}

impl std::fmt::Debug for BmcEndpoint {
    // Hand-written so that the password never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => f.debug_tuple("Local").field(p).finish(),
            Self::Rmcp {
                host, port, user, ..
            } => f
                .debug_struct("Rmcp")
                .field("host", host)
                .field("port", port)
                .field("user", user)
                .finish_non_exhaustive(),
        }
    }
}

impl std::fmt::Display for BmcEndpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Local(p) => write!(f, "{}", p.display()),
            Self::Rmcp { host, port, .. } if host.contains(':') => write!(f, "[{host}]:{port}"),
            Self::Rmcp { host, port, .. } => write!(f, "{host}:{port}"),
        }
    }
}

/// The IPMI-over-LAN port when a spec names none.
pub const DEFAULT_RMCP_PORT: u16 = 623;

impl BmcEndpoint {
    /// "local" (= /dev/ipmi0), "local:/dev/ipmiN", or "rmcp://user@host:port" (port default
    /// 623; IPv6 as [::1]); the password comes separately (from a file in the agent's config),
    /// so it never sits in a command line or a spec that gets logged.
    pub fn parse(spec: &str, password: Option<String>) -> Result<Self, IpmiError> {
        let bad = |why: &str| IpmiError::InvalidEndpoint {
            spec: spec.to_string(),
            why: why.to_string(),
        };
        let spec_t = spec.trim();
        if spec_t == "local" {
            return Ok(Self::Local(PathBuf::from("/dev/ipmi0")));
        }
        if let Some(path) = spec_t.strip_prefix("local:") {
            if path.is_empty() {
                return Err(bad("no device path after \"local:\""));
            }
            return Ok(Self::Local(PathBuf::from(path)));
        }
        let Some(rest) = spec_t.strip_prefix("rmcp://") else {
            return Err(bad(
                "expected \"local\", \"local:/dev/ipmiN\" or \"rmcp://user@host[:port]\"",
            ));
        };
        let rest = rest.strip_suffix('/').unwrap_or(rest);
        let Some((user, hostport)) = rest.rsplit_once('@') else {
            return Err(bad("no user: write rmcp://USER@HOST[:PORT]"));
        };
        if user.is_empty() {
            return Err(bad("empty user name"));
        }
        if user.contains(':') {
            return Err(bad(
                "the password does not belong in the spec; give it separately (password file)",
            ));
        }
        if user.len() > 16 {
            return Err(bad("IPMI user names are at most 16 bytes"));
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let Some((h, after)) = v6.split_once(']') else {
                return Err(bad("unclosed '[' in IPv6 address"));
            };
            let port = match after {
                "" => None,
                p => Some(
                    p.strip_prefix(':')
                        .ok_or_else(|| bad("expected ':PORT' after ']'"))?,
                ),
            };
            (h, port)
        } else {
            match hostport.split_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port = match port {
            None => DEFAULT_RMCP_PORT,
            Some(p) => match p.parse::<u16>() {
                Ok(n) if n != 0 => n,
                _ => return Err(bad("port must be a number from 1 to 65535")),
            },
        };
        let Some(password) = password else {
            return Err(bad("no password given for the RMCP+ user"));
        };
        Ok(Self::Rmcp {
            host: host.to_string(),
            port,
            user: user.to_string(),
            password,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_endpoints() {
        assert_eq!(
            BmcEndpoint::parse("local", None).ok(),
            Some(BmcEndpoint::Local("/dev/ipmi0".into()))
        );
        assert_eq!(
            BmcEndpoint::parse("local:/dev/ipmi1", None).ok(),
            Some(BmcEndpoint::Local("/dev/ipmi1".into()))
        );
        let e = BmcEndpoint::parse("rmcp://admin@10.0.0.5", Some("pw".into())).ok();
        assert_eq!(
            e,
            Some(BmcEndpoint::Rmcp {
                host: "10.0.0.5".into(),
                port: 623,
                user: "admin".into(),
                password: "pw".into()
            })
        );
        let e = BmcEndpoint::parse("rmcp://root@[::1]:6230", Some("pw".into())).ok();
        assert!(matches!(&e, Some(BmcEndpoint::Rmcp { host, port: 6230, .. }) if host == "::1"));
        assert_eq!(e.map(|e| e.to_string()).as_deref(), Some("[::1]:6230"));
        for bad in [
            "rmcp://host",
            "rmcp://a:b@host",
            "rmcp://a@host:0",
            "rmcp://a@host:x",
            "rmcp://a@[::1",
            "ipmi://a@h",
            "local:",
        ] {
            assert!(BmcEndpoint::parse(bad, Some("p".into())).is_err(), "{bad}");
        }
        assert!(BmcEndpoint::parse("rmcp://a@h", None).is_err());
        let dbg = format!(
            "{:?}",
            BmcEndpoint::parse("rmcp://a@h", Some("hunter2".into()))
        );
        assert!(!dbg.contains("hunter2"), "{dbg}");
    }
}
