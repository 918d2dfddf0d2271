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
    let rss = |pid: &str| -> f64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|status| {
                status
                    .lines()
                    .find(|l| l.starts_with(field))
                    .and_then(|l| l.split_whitespace().nth(1))
                    .and_then(|kb| kb.parse::<f64>().ok())
            })
            .unwrap_or(0.0)
            / 1024.0
    };
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    rss(&pid.to_string()) + children.split_whitespace().map(rss).sum::<f64>()
}
