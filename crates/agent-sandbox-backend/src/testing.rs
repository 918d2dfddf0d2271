//! Support for tests and demos that run "pods" on one machine (feature
//! `testing`): each pod gets its own loopback address, so the backend reaches
//! `podIP:port` with a fixed port exactly as in a cluster.

use std::{
    net::{IpAddr, Ipv4Addr},
    sync::atomic::{AtomicU32, Ordering},
};

/// Addresses one process hands out before it starts over.
pub const ADDRESSES_PER_PROCESS: u32 = 4096;

/// Usable host parts per /24: `.0` and `.255` are skipped.
const HOSTS: u32 = 254;
/// Second octets used: `127.1` to `127.254` (`127.0.x.x` is left to everything else).
const SECOND_OCTETS: u32 = 254;
/// How many per-process blocks fit in the range.
const BLOCKS: u32 = SECOND_OCTETS * 256 * HOSTS / ADDRESSES_PER_PROCESS;

/// The next loopback address for a pod: `127.a.b.c` with `a` in 1–254.
///
/// # Guarantees
///
/// - Within one process an address is not handed out again before
///   [`ADDRESSES_PER_PROCESS`] others, so a stale endpoint of one test cannot
///   reach the agent another test started at the same address.
/// - Each process starts in its own block (chosen by its process id), so test
///   binaries running side by side rarely meet.
///
/// # Caveats
///
/// Rarely is not never: a caller that binds the address must skip it when the
/// bind fails. Linux routes all of `127.0.0.0/8` to loopback; other systems may
/// only answer on `127.0.0.1`.
///
/// # Example
///
/// ```
/// let first = agent_sandbox_backend::testing::next_loopback_ip();
/// let second = agent_sandbox_backend::testing::next_loopback_ip();
/// assert!(first.is_loopback() && second.is_loopback());
/// assert_ne!(first, second);
/// ```
pub fn next_loopback_ip() -> IpAddr {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let offset = NEXT.fetch_add(1, Ordering::Relaxed) % ADDRESSES_PER_PROCESS;
    address(std::process::id() % BLOCKS, offset)
}

/// Address number `offset` of block `block`.
fn address(block: u32, offset: u32) -> IpAddr {
    let n = block * ADDRESSES_PER_PROCESS + offset;
    let host = n % HOSTS + 1;
    let subnet = n / HOSTS;
    IpAddr::V4(Ipv4Addr::new(
        127,
        u8::try_from(1 + subnet / 256).expect("BLOCKS keeps the second octet at most 254"),
        u8::try_from(subnet % 256).expect("a remainder of 256"),
        u8::try_from(host).expect("at most 254"),
    ))
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    #[test]
    fn a_process_gets_distinct_loopback_addresses_outside_127_0() {
        let ips: HashSet<IpAddr> = (0..ADDRESSES_PER_PROCESS)
            .map(|_| next_loopback_ip())
            .collect();
        assert_eq!(ips.len(), ADDRESSES_PER_PROCESS as usize);
        for ip in &ips {
            let IpAddr::V4(v4) = ip else {
                panic!("{ip} is not IPv4")
            };
            let [a, b, _, d] = v4.octets();
            assert_eq!(a, 127);
            assert!((1..=254).contains(&b), "{ip}");
            assert!((1..=254).contains(&d), "{ip}");
        }
    }

    #[test]
    fn the_first_and_last_blocks_stay_inside_the_range_and_apart() {
        let first = address(0, 0);
        let last = address(BLOCKS - 1, ADDRESSES_PER_PROCESS - 1);
        assert_eq!(first, IpAddr::V4(Ipv4Addr::new(127, 1, 0, 1)));
        let IpAddr::V4(last) = last else {
            unreachable!()
        };
        assert!(last.octets()[1] <= 254, "{last}");
        let block_a: HashSet<_> = (0..ADDRESSES_PER_PROCESS).map(|o| address(7, o)).collect();
        assert!((0..ADDRESSES_PER_PROCESS).all(|o| !block_a.contains(&address(8, o))));
    }
}
