//! The pieces of `cargo xtask bench` (the `bench` binary): the peers it starts, what it
//! measures against them, and the report it prints and writes.
//!
//! - [`floor`]: the transport floor, a bare tonic AgentService and HarnessService.
//! - [`python`]: the grpcio peer (`tests/bench/grpcio_peer.py`) in a venv under `target/`,
//!   and the `python3 -c` baseline.
//! - [`rpc`]: round trips, time to first output and memory against any AXP endpoint.
//! - [`claims`]: readiness and scale of the claim lifecycle on the fake cluster.
//! - [`report`]: latency series, the table and the JSON.

pub mod claims;
pub mod floor;
pub mod python;
pub mod report;
pub mod rpc;

/// `CLOCK_MONOTONIC` in nanoseconds: the same clock in every process of this machine (and
/// Python's `time.monotonic_ns()`), so times taken in two processes can be subtracted.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Resident memory of a process and its children, in MiB (Linux /proc): `VmRSS`, or the
/// peak `VmHWM` when `peak`.
pub fn rss_tree(pid: u32, peak: bool) -> f64 {
    let field = if peak { "VmHWM:" } else { "VmRSS:" };
    sum_tree(pid, |pid| kib_field(&format!("/proc/{pid}/status"), field))
}

/// Proportional set size of a process and its children, in MiB (`Pss` of
/// `/proc/PID/smaps_rollup`): a page shared by N processes counts 1/N in each, so pages the
/// agent and its worker share (the binary, libpython) count once, where RSS counts them twice.
pub fn pss_tree(pid: u32) -> f64 {
    sum_tree(pid, |pid| {
        kib_field(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
    })
}

/// `measure(pid)` of `pid` plus that of each of its children.
fn sum_tree(pid: u32, measure: impl Fn(&str) -> f64) -> f64 {
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    measure(&pid.to_string()) + children.split_whitespace().map(&measure).sum::<f64>()
}

/// A `Name:  N kB` line of a /proc file, in MiB; 0 when the process or line is gone.
fn kib_field(path: &str, field: &str) -> f64 {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|text| {
            text.lines()
                .find(|l| l.starts_with(field))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .unwrap_or(0.0)
        / 1024.0
}
