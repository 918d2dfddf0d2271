//! The process table as `/proc` shows it: each process's parent and state, and the pure selections the reaper
//! makes from it (zombie children to reap, stray descendants to kill).

use std::collections::{BTreeSet, HashMap};

/// Why the process table could not be read.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// `/proc` could not be listed (not mounted, or a sandbox that hides it).
    #[error("could not list /proc")]
    ListProc(#[source] std::io::Error),
    /// A `/proc/<pid>/stat` line did not have the expected shape.
    #[error("malformed /proc/<pid>/stat line: {0:?}")]
    ParseStat(String),
}

/// One process, from `/proc/<pid>/stat`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its process id.
    pub pid: i32,
    /// Its state letter (`R`, `S`, `Z` for a zombie, …).
    pub state: char,
    /// Its parent's process id.
    pub ppid: i32,
}

impl ProcStat {
    /// Whether it has exited and waits to be reaped by its parent.
    pub fn is_zombie(&self) -> bool {
        self.state == 'Z'
    }
}

/// Parses a `/proc/<pid>/stat` line: `pid (comm) state ppid …`.
///
/// The command name may itself hold spaces and parentheses (user code picks it with `prctl(PR_SET_NAME)`), so the
/// fields after it are found after the *last* `)`.
///
/// # Errors
///
/// [`Error::ParseStat`] when the line does not have that shape.
pub fn parse_stat(line: &str) -> Result<ProcStat, Error> {
    let malformed = || Error::ParseStat(line.chars().take(120).collect());
    let (head, rest) = line.rsplit_once(')').ok_or_else(malformed)?;
    let pid = head
        .split_once(" (")
        .and_then(|(pid, _)| pid.trim().parse().ok())
        .ok_or_else(malformed)?;
    let mut fields = rest.split_whitespace();
    let state = fields
        .next()
        .and_then(|s| s.chars().next())
        .ok_or_else(malformed)?;
    let ppid = fields
        .next()
        .and_then(|p| p.parse().ok())
        .ok_or_else(malformed)?;
    Ok(ProcStat { pid, state, ppid })
}

/// Every process visible in `/proc`. Processes that exit while it is read are skipped.
///
/// # Errors
///
/// [`Error::ListProc`] when `/proc` cannot be listed.
pub fn scan() -> Result<Vec<ProcStat>, Error> {
    let entries = std::fs::read_dir("/proc").map_err(Error::ListProc)?;
    let mut procs = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        // Gone already (or unreadable): nothing to do for it.
        let Ok(line) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        match parse_stat(&line) {
            Ok(stat) => procs.push(stat),
            Err(error) => tracing::debug!(%error, "skipping a process"),
        }
    }
    Ok(procs)
}

/// The zombies among `parent`'s children, except `keep` (live workers, whose exit status belongs to
/// `tokio::process`).
pub fn zombie_children(procs: &[ProcStat], parent: i32, keep: &BTreeSet<i32>) -> Vec<i32> {
    procs
        .iter()
        .filter(|p| p.ppid == parent && p.is_zombie() && !keep.contains(&p.pid))
        .map(|p| p.pid)
        .collect()
}

/// Every descendant of `root` that is neither in `keep` (the live workers) nor a descendant of one: what user code
/// left behind when its worker died (orphans reparented to `root`, their children, sessions it detached).
pub fn strays(procs: &[ProcStat], root: i32, keep: &BTreeSet<i32>) -> Vec<i32> {
    let mut children: HashMap<i32, Vec<i32>> = HashMap::new();
    for proc in procs {
        // The kernel's idle task and the namespace's init report ppid 0; never walk into a cycle through them.
        if proc.pid != proc.ppid {
            children.entry(proc.ppid).or_default().push(proc.pid);
        }
    }
    let mut found = Vec::new();
    let mut seen = BTreeSet::from([root]);
    let mut todo = vec![root];
    while let Some(pid) = todo.pop() {
        for &child in children.get(&pid).into_iter().flatten() {
            if keep.contains(&child) || !seen.insert(child) {
                continue;
            }
            found.push(child);
            todo.push(child);
        }
    }
    found.sort_unstable();
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    fn proc(pid: i32, state: char, ppid: i32) -> ProcStat {
        ProcStat { pid, state, ppid }
    }

    #[test]
    fn stat_lines_are_parsed_even_with_odd_command_names() {
        let line = "4242 (python3) S 17 4242 4242 0 -1 4194560 1000 0 0 0 5 3 0 0 20 0 2 0";
        assert_eq!(parse_stat(line).unwrap(), proc(4242, 'S', 17));
        let odd = "77 (a) b) (c ) Z 1 77 77 0 -1";
        assert_eq!(parse_stat(odd).unwrap(), proc(77, 'Z', 1));
        assert_eq!(parse_stat("9 (x) R 0\n").unwrap(), proc(9, 'R', 0));
    }

    #[test]
    fn malformed_stat_lines_are_errors_not_panics() {
        for line in [
            "",
            "garbage",
            "12 (x)",
            "x (y) S 1",
            "12 (x) S notanumber",
            "()",
        ] {
            assert!(
                matches!(parse_stat(line), Err(Error::ParseStat(_))),
                "{line:?}"
            );
        }
    }

    #[test]
    fn only_zombie_children_that_are_not_live_workers_are_reaped() {
        let procs = [
            proc(10, 'Z', 1),
            proc(11, 'S', 1),
            proc(12, 'Z', 1),
            proc(13, 'Z', 5),
        ];
        assert_eq!(zombie_children(&procs, 1, &BTreeSet::from([12])), vec![10]);
    }

    #[test]
    fn strays_are_descendants_outside_every_live_worker() {
        // 1 = agent; 10 = live worker with a subprocess 11 and grandchild 12; 20 = orphan with child 21
        // and grandchild 22; 30 = a setsid'd orphan; 99 = someone else's.
        let procs = [
            proc(1, 'S', 0),
            proc(10, 'S', 1),
            proc(11, 'S', 10),
            proc(12, 'S', 11),
            proc(20, 'S', 1),
            proc(21, 'S', 20),
            proc(22, 'Z', 21),
            proc(30, 'S', 1),
            proc(99, 'S', 0),
            proc(98, 'S', 99),
        ];
        assert_eq!(
            strays(&procs, 1, &BTreeSet::from([10])),
            vec![20, 21, 22, 30]
        );
        assert_eq!(
            strays(&procs, 1, &BTreeSet::new()),
            vec![10, 11, 12, 20, 21, 22, 30]
        );
        assert!(strays(&procs, 12, &BTreeSet::new()).is_empty());
    }

    #[test]
    fn a_corrupt_table_with_a_cycle_does_not_loop() {
        let procs = [proc(2, 'S', 3), proc(3, 'S', 2), proc(4, 'S', 4)];
        assert_eq!(strays(&procs, 2, &BTreeSet::new()), vec![3]);
        assert!(strays(&procs, 4, &BTreeSet::new()).is_empty());
    }
}
