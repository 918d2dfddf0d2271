//! The worker's environment: an allowlist, not a denylist. The worker starts from an empty environment and gets
//! only what a process and the interpreter need, plus the names the operator adds with `--worker-env`; whatever
//! else the agent was given (its flags' variables, the bearer token, platform credentials) never reaches user code.
//!
//! Passed through when set in the agent's environment:
//!
//! - `PATH`, `HOME`, `USER`, `LOGNAME`, `SHELL`, `TMPDIR`, `TERM`, `TZ`, `LANG`, `LANGUAGE` and every `LC_*`:
//!   what ordinary programs (and `subprocess`) expect;
//! - `LD_LIBRARY_PATH`: the worker is this binary, linked against `libpython`, and must find it as the agent did;
//! - CPython's own variables, `PYTHON` followed by a letter (`PYTHONHOME`, `PYTHONPATH`, `PYTHONUTF8`,
//!   `PYTHONDONTWRITEBYTECODE`, …). `PYTHON_*` (with an underscore) is the agent's flags' namespace
//!   (`PYTHON_TIMEOUT_SECS`, …) and is not passed.
//!
//! [`SECRET_ENV`] is never passed, even when asked for.

use std::ffi::{OsStr, OsString};

/// Variables that hold the agent's credentials: never passed to the worker, whatever the allowlist says.
pub const SECRET_ENV: &[&str] = &["AXP_TOKEN", "AXP_TOKEN_FILE"];

/// Exact names passed through by default.
pub const DEFAULT_ENV: &[&str] = &[
    "PATH",
    "HOME",
    "USER",
    "LOGNAME",
    "SHELL",
    "TMPDIR",
    "TERM",
    "TZ",
    "LANG",
    "LANGUAGE",
    "LD_LIBRARY_PATH",
];

/// Whether `name` is passed by default (see the module docs).
pub fn allowed_by_default(name: &str) -> bool {
    if DEFAULT_ENV.contains(&name) || name.starts_with("LC_") {
        return true;
    }
    name.strip_prefix("PYTHON")
        .and_then(|rest| rest.chars().next())
        .is_some_and(|c| c.is_ascii_alphabetic())
}

/// The worker's environment, from the agent's `vars` and the operator's `extra` names.
pub fn worker_env(
    vars: impl IntoIterator<Item = (OsString, OsString)>,
    extra: &[String],
) -> Vec<(OsString, OsString)> {
    vars.into_iter()
        .filter(|(name, _)| allowed(name, extra))
        .collect()
}

fn allowed(name: &OsStr, extra: &[String]) -> bool {
    let Some(name) = name.to_str() else {
        // Not a name any allowlist entry can spell.
        return false;
    };
    !SECRET_ENV.contains(&name) && (allowed_by_default(name) || extra.iter().any(|e| e == name))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| (OsString::from(k), OsString::from(v)))
            .collect()
    }

    fn names(vars: &[(OsString, OsString)]) -> Vec<&str> {
        vars.iter().map(|(k, _)| k.to_str().unwrap()).collect()
    }

    #[test]
    fn only_allowlisted_variables_reach_the_worker() {
        let agent = env(&[
            ("PATH", "/bin"),
            ("HOME", "/home/u"),
            ("LC_ALL", "C.UTF-8"),
            ("PYTHONHOME", "/opt/python"),
            ("PYTHONUTF8", "1"),
            ("PYTHON_TIMEOUT_SECS", "5"),
            ("PYTHON", "x"),
            ("AXP_TOKEN", "s3cret"),
            ("AXP_TOKEN_FILE", "/var/run/token"),
            ("KUBERNETES_SERVICE_HOST", "10.0.0.1"),
            ("AWS_SECRET_ACCESS_KEY", "k"),
            ("HTTPS_PROXY", "http://proxy"),
        ]);
        assert_eq!(
            names(&worker_env(agent.clone(), &[])),
            ["PATH", "HOME", "LC_ALL", "PYTHONHOME", "PYTHONUTF8"]
        );
        let extra = ["HTTPS_PROXY".to_owned(), "AXP_TOKEN".to_owned()];
        assert_eq!(
            names(&worker_env(agent, &extra)),
            [
                "PATH",
                "HOME",
                "LC_ALL",
                "PYTHONHOME",
                "PYTHONUTF8",
                "HTTPS_PROXY"
            ]
        );
    }
}
