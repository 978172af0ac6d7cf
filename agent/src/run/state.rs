//! What survives agent restarts besides the spool and the identity: the report sequence, the
//! delta chain and the SEL cursor, in `STATE_DIR/state.json` (written atomically).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::AgentError;
use crate::config::AgentConfig;
use crate::identity::write_atomic;
use crate::report::Chain;

/// What survives agent restarts besides the spool: the sequence, the chain, the SEL cursor.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub(super) struct State {
    pub(super) seq: u64,
    pub(super) chain: Chain,
    pub(super) sel_cursor: Option<u16>,
}

fn state_path(cfg: &AgentConfig) -> PathBuf {
    cfg.state_dir.join("state.json")
}

pub(super) fn load_state(cfg: &AgentConfig) -> Result<State, AgentError> {
    let p = state_path(cfg);
    match std::fs::read(&p) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| AgentError::State {
            path: p,
            problem: e.to_string(),
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(e) => Err(AgentError::State {
            path: p,
            problem: e.to_string(),
        }),
    }
}

pub(super) fn save_state(cfg: &AgentConfig, s: &State) -> Result<(), AgentError> {
    let bytes = serde_json::to_vec(s).map_err(|e| AgentError::State {
        path: state_path(cfg),
        problem: e.to_string(),
    })?;
    write_atomic(&state_path(cfg), &bytes, 0o600)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(dir: &std::path::Path) -> AgentConfig {
        AgentConfig {
            state_dir: dir.to_path_buf(),
            ..AgentConfig::default()
        }
    }

    #[test]
    fn missing_state_is_a_fresh_start_and_saved_state_comes_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        let fresh = load_state(&cfg).unwrap();
        assert_eq!((fresh.seq, fresh.sel_cursor), (0, None));
        let mut s = State {
            seq: 42,
            sel_cursor: Some(7),
            ..State::default()
        };
        s.chain.facts_hash = "abc".into();
        save_state(&cfg, &s).unwrap();
        let back = load_state(&cfg).unwrap();
        assert_eq!((back.seq, back.sel_cursor), (42, Some(7)));
        assert_eq!(back.chain.facts_hash, "abc");
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = cfg(dir.path());
        std::fs::write(state_path(&cfg), b"{not json").unwrap();
        let err = load_state(&cfg)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(err.contains("state.json"), "{err}");
    }
}
