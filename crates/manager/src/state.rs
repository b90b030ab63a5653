//! The instance state machine, enforced here and nowhere else.
//!
//! ```text
//!            run/start                 pause
//!  Created ───────────▶ Running ◀──────────────▶ Paused
//!     ▲                  │  ▲ │     resume          │
//!     │            stop  │  │ │ standby             │ stop / standby
//!     │                  ▼  │ ▼                     ▼
//!  (never returns)   Stopped │ Standby ◀────────────┘
//!                      │     │    │
//!                      └start┘    └── restore/start ──▶ Running
//!
//!  Error: the VM process died or an operation failed half-way; start or rm.
//! ```
//! Every request names an [`Op`]; [`check`] says whether it is legal in the
//! current state and which state it leads to. Illegal requests change nothing.

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum State {
    Created,
    Running,
    Paused,
    Standby,
    Stopped,
    Error,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Created => "created",
            State::Running => "running",
            State::Paused => "paused",
            State::Standby => "standby",
            State::Stopped => "stopped",
            State::Error => "error",
        }
    }

    /// States in which a VM process should exist.
    pub fn has_process(self) -> bool {
        matches!(self, State::Running | State::Paused)
    }
}

impl std::fmt::Display for State {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Op {
    Start,
    Stop,
    Pause,
    Resume,
    Standby,
    Restore,
    Exec,
    Remove,
    ForceRemove,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Start => "start",
            Op::Stop => "stop",
            Op::Pause => "pause",
            Op::Resume => "resume",
            Op::Standby => "standby",
            Op::Restore => "restore",
            Op::Exec => "exec",
            Op::Remove => "rm",
            Op::ForceRemove => "rm -f",
        }
    }
}

/// Why a request is refused in a state: the message a user sees.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {} an instance that is {state}{}", op.as_str(), hint(*op, *state))]
pub struct IllegalTransition {
    pub op: Op,
    pub state: State,
}

fn hint(op: Op, state: State) -> &'static str {
    match (op, state) {
        (Op::Remove, s) if s.has_process() => " (stop it first, or use rm -f)",
        (Op::Exec, State::Stopped | State::Created | State::Error) => " (start it first)",
        (Op::Exec, State::Standby) => " (restore it first)",
        (Op::Exec, State::Paused) => " (resume it first)",
        _ => "",
    }
}

/// The state an op leads to, or why it is refused. `None` target means the
/// instance ceases to exist.
pub fn check(state: State, op: Op) -> Result<Option<State>, IllegalTransition> {
    use State::*;
    let next = match (op, state) {
        (Op::Start, Created | Stopped | Error) => Some(Running),
        (Op::Start | Op::Restore, Standby) => Some(Running),
        (Op::Stop, Running | Paused) => Some(Stopped),
        (Op::Pause, Running) => Some(Paused),
        (Op::Resume, Paused) => Some(Running),
        (Op::Standby, Running | Paused) => Some(Standby),
        (Op::Exec, Running) => Some(Running),
        (Op::Remove, Created | Stopped | Standby | Error) => None,
        (Op::ForceRemove, _) => None,
        _ => return Err(IllegalTransition { op, state }),
    };
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ALL_STATES: [State; 6] = [
        State::Created,
        State::Running,
        State::Paused,
        State::Standby,
        State::Stopped,
        State::Error,
    ];
    const ALL_OPS: [Op; 9] = [
        Op::Start,
        Op::Stop,
        Op::Pause,
        Op::Resume,
        Op::Standby,
        Op::Restore,
        Op::Exec,
        Op::Remove,
        Op::ForceRemove,
    ];

    #[test]
    fn no_op_ever_leads_to_created_or_error() {
        for s in ALL_STATES {
            for op in ALL_OPS {
                if let Ok(Some(next)) = check(s, op) {
                    assert!(next != State::Created && next != State::Error, "{s} {op:?}");
                }
            }
        }
    }

    #[test]
    fn exec_is_legal_only_while_running() {
        let legal: Vec<State> = ALL_STATES
            .into_iter()
            .filter(|s| check(*s, Op::Exec).is_ok())
            .collect();
        assert_eq!(legal, vec![State::Running]);
    }

    #[test]
    fn plain_remove_of_a_live_vm_is_refused_with_a_hint() {
        let err = check(State::Running, Op::Remove).unwrap_err();
        assert_eq!(
            err.to_string(),
            "cannot rm an instance that is running (stop it first, or use rm -f)"
        );
    }

    #[test]
    fn force_remove_is_legal_everywhere() {
        assert!(ALL_STATES
            .into_iter()
            .all(|s| check(s, Op::ForceRemove) == Ok(None)));
    }

    #[test]
    fn stopping_a_stopped_instance_is_refused() {
        assert!(check(State::Stopped, Op::Stop).is_err());
    }

    #[test]
    fn a_standby_instance_starts_by_restoring() {
        assert_eq!(check(State::Standby, Op::Start), Ok(Some(State::Running)));
    }
}
