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
//! Requests that read an instance without moving it (snapshot, fork) are ops
//! too: they leave it in the state it is in, but only some states have what
//! they take (a stopped VM has no memory to snapshot or fork).

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
    /// Snapshot memory, device state and disk (`--kind standby`).
    Snapshot,
    /// Snapshot the disk only (`--kind stopped`).
    SnapshotDisk,
    /// Fork a parked instance.
    Fork,
    /// Fork, pausing a running source briefly (`--from-running`).
    ForkFromRunning,
    /// Become a template; the instance is removed.
    Promote,
    /// Take a standby snapshot's state in place of its own.
    RestoreSnapshot,
    /// Take a stopped (disk-only) snapshot's disk in place of its own.
    RestoreDiskSnapshot,
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
            Op::Snapshot => "snapshot",
            Op::SnapshotDisk => "snapshot the disk of",
            Op::Fork | Op::ForkFromRunning => "fork",
            Op::Promote => "make a template of",
            Op::RestoreSnapshot | Op::RestoreDiskSnapshot => "restore a snapshot into",
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
        (Op::Snapshot, State::Stopped | State::Error) => {
            " (it has no memory: use --kind stopped to snapshot its disk)"
        }
        (Op::Fork, State::Running | State::Paused) => {
            " (pass --from-running to pause it briefly and fork it, or put it in standby first)"
        }
        (Op::Fork | Op::ForkFromRunning, _) => {
            " (fork a standby or running instance, a snapshot or a template)"
        }
        (Op::Promote, _) => " (only a standby instance can become a template)",
        (Op::RestoreSnapshot | Op::RestoreDiskSnapshot, s) if s.has_process() => " (stop it first)",
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
        (Op::Snapshot, Running | Paused | Standby) => Some(state),
        (Op::SnapshotDisk, Running | Paused | Standby | Stopped | Error) => Some(state),
        (Op::Fork, Standby) => Some(Standby),
        (Op::ForkFromRunning, Running | Paused | Standby) => Some(state),
        (Op::Promote, Standby) => None,
        (Op::RestoreSnapshot, Stopped | Standby | Error) => Some(Standby),
        (Op::RestoreDiskSnapshot, Stopped | Standby | Error) => Some(Stopped),
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
    const ALL_OPS: [Op; 16] = [
        Op::Start,
        Op::Stop,
        Op::Pause,
        Op::Resume,
        Op::Standby,
        Op::Restore,
        Op::Exec,
        Op::Remove,
        Op::ForceRemove,
        Op::Snapshot,
        Op::SnapshotDisk,
        Op::Fork,
        Op::ForkFromRunning,
        Op::Promote,
        Op::RestoreSnapshot,
        Op::RestoreDiskSnapshot,
    ];

    #[test]
    fn no_op_ever_moves_an_instance_into_created_or_error() {
        for s in ALL_STATES {
            for op in ALL_OPS {
                if let Ok(Some(next)) = check(s, op) {
                    let into_bad = next != s && matches!(next, State::Created | State::Error);
                    assert!(!into_bad, "{s} {op:?}");
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
    fn reading_ops_leave_the_state_as_it_is() {
        for s in ALL_STATES {
            for op in [
                Op::Snapshot,
                Op::SnapshotDisk,
                Op::Fork,
                Op::ForkFromRunning,
            ] {
                if let Ok(next) = check(s, op) {
                    assert_eq!(next, Some(s), "{s} {op:?}");
                }
            }
        }
    }

    #[test]
    fn nothing_is_snapshotted_or_forked_while_it_is_being_created() {
        for op in [
            Op::Snapshot,
            Op::SnapshotDisk,
            Op::Fork,
            Op::ForkFromRunning,
        ] {
            assert!(check(State::Created, op).is_err(), "{op:?}");
        }
    }

    #[test]
    fn forking_a_running_instance_needs_from_running_and_says_so() {
        let err = check(State::Running, Op::Fork).unwrap_err();

        assert!(err.to_string().contains("pass --from-running"), "{err}");
        assert_eq!(
            check(State::Running, Op::ForkFromRunning),
            Ok(Some(State::Running))
        );
    }

    #[test]
    fn a_stopped_instance_has_only_its_disk_to_snapshot() {
        let err = check(State::Stopped, Op::Snapshot).unwrap_err();

        assert!(err.to_string().contains("--kind stopped"), "{err}");
        assert_eq!(
            check(State::Stopped, Op::SnapshotDisk),
            Ok(Some(State::Stopped))
        );
    }

    #[test]
    fn only_a_standby_instance_becomes_a_template() {
        let legal: Vec<State> = ALL_STATES
            .into_iter()
            .filter(|s| check(*s, Op::Promote).is_ok())
            .collect();
        assert_eq!(legal, vec![State::Standby]);
    }

    #[test]
    fn a_snapshot_is_restored_only_into_an_instance_without_a_vm() {
        for op in [Op::RestoreSnapshot, Op::RestoreDiskSnapshot] {
            let legal: Vec<State> = ALL_STATES
                .into_iter()
                .filter(|s| check(*s, op).is_ok())
                .collect();
            assert_eq!(legal, vec![State::Standby, State::Stopped, State::Error]);
        }
    }

    #[test]
    fn a_standby_instance_starts_by_restoring() {
        assert_eq!(check(State::Standby, Op::Start), Ok(Some(State::Running)));
    }
}
