//! Build and test jobs: their states, what an attempt's end means, and what a job may carry.

use std::collections::BTreeMap;

use super::Problem;
use super::validation::FieldErrors;

text_enum! {
    /// Where a job is.
    pub enum JobState {
        /// Waiting for a machine (again, after a lost attempt).
        Queued => "queued",
        /// On a machine: its agent runs the command.
        Running => "running",
        /// The command exited with status 0.
        Succeeded => "succeeded",
        /// The command failed, or the job could not be run (see `end_reason`).
        Failed => "failed",
        /// The command ran past its timeout and was killed, with everything it started.
        TimedOut => "timed_out",
        /// Withdrawn by its holder or ops.
        Cancelled => "cancelled",
    }
}

impl JobState {
    pub fn is_open(self) -> bool {
        matches!(self, JobState::Queued | JobState::Running)
    }
}

/// How an attempt ended, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Exit {
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
}

/// The job's state and reason after its command ended.
pub fn outcome(exit: Exit, timeout_secs: i32) -> (JobState, Option<String>) {
    match exit {
        Exit { timed_out: true, .. } => (
            JobState::TimedOut,
            Some(format!("killed after its timeout of {timeout_secs} s, with every process it started")),
        ),
        Exit { code: Some(0), .. } => (JobState::Succeeded, None),
        Exit { code: Some(code), .. } => (JobState::Failed, Some(format!("the command exited with status {code}"))),
        Exit { signal: Some(signal), .. } => {
            (JobState::Failed, Some(format!("the command was killed by signal {signal}")))
        }
        Exit { .. } => (JobState::Failed, Some("the command ended without a status".into())),
    }
}

/// What to do when an attempt lost its machine: try again, or fail the job saying why.
pub fn after_lost_attempt(attempts: i32, max_attempts: i32, why: &str) -> Result<String, String> {
    if attempts < max_attempts {
        Ok(format!("attempt {attempts} of {max_attempts} lost ({why}); queued again"))
    } else {
        Err(format!("attempt {attempts} of {max_attempts} lost ({why}); no attempts left"))
    }
}

/// Environment variables a job may set: POSIX names, at most 64, values up to 4 KiB.
pub fn validate_env(field: &str, env: &BTreeMap<String, String>, errors: &mut FieldErrors) {
    if env.len() > 64 {
        errors.add(field, Problem::TooMany { max: 64 });
    }
    for (name, value) in env {
        let posix = name.bytes().next().is_some_and(|b| b.is_ascii_uppercase() || b == b'_')
            && name.bytes().all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
            && name.len() <= 128;
        if !posix {
            errors.add(format!("{field}.{name}"), Problem::NotAnEnvName);
        }
        if value.len() > 4096 || value.contains('\0') {
            errors.add(format!("{field}.{name}"), Problem::NotAnEnvValue);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exit_becomes_a_state_with_a_reason() {
        let exit = |code, signal, timed_out| Exit { code, signal, timed_out };
        assert_eq!(outcome(exit(Some(0), None, false), 60).0, JobState::Succeeded);
        assert_eq!(
            outcome(exit(Some(2), None, false), 60),
            (JobState::Failed, Some("the command exited with status 2".into()))
        );
        assert_eq!(outcome(exit(None, Some(9), false), 60).0, JobState::Failed);
        assert_eq!(outcome(exit(None, Some(15), true), 60).0, JobState::TimedOut);
    }

    #[test]
    fn a_lost_attempt_is_retried_while_attempts_remain() {
        assert!(after_lost_attempt(1, 3, "unreachable").is_ok());
        assert_eq!(
            after_lost_attempt(3, 3, "its machine became unreachable"),
            Err("attempt 3 of 3 lost (its machine became unreachable); no attempts left".into())
        );
    }

    #[test]
    fn environment_names_and_values_are_checked() {
        let mut errors = FieldErrors::new();
        let env = BTreeMap::from([
            ("GOOD_1".to_string(), "x".to_string()),
            ("1BAD".to_string(), "x".to_string()),
            ("lower".to_string(), "x".to_string()),
        ]);
        validate_env("env", &env, &mut errors);
        let fields: Vec<&str> = errors.as_slice().iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["env.1BAD", "env.lower"]);
    }
}
