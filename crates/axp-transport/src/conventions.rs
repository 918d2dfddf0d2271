//! What AXP agents and the programs that start or call them agree on beyond the
//! protos: the port, and how an agent binary says where it listens.
//!
//! # Guarantees
//!
//! [`listening_line`] and [`parse_listening_line`] are inverses: a launcher
//! that reads the line an agent printed with the first gets the address back.

use std::net::SocketAddr;

/// The TCP port AXP agents serve on, in a pod and in AX's Go backend.
pub const DEFAULT_PORT: u16 = 8494;

/// The start of the one stdout line an agent binary prints once it serves:
/// `listening on <addr>`. With `--listen …:0` it is the only way a launcher
/// learns the port the agent picked.
pub const LISTENING_PREFIX: &str = "listening on ";

/// The line an agent prints once it serves on `addr` (without the newline).
///
/// # Example
///
/// ```
/// use axp_transport::conventions::{listening_line, parse_listening_line};
///
/// let addr = "127.0.0.1:8494".parse().unwrap();
/// assert_eq!(listening_line(addr), "listening on 127.0.0.1:8494");
/// assert_eq!(parse_listening_line("listening on 127.0.0.1:8494\n"), Some(addr));
/// ```
pub fn listening_line(addr: SocketAddr) -> String {
    format!("{LISTENING_PREFIX}{addr}")
}

/// The address in a line printed by [`listening_line`]; `None` for any other line.
pub fn parse_listening_line(line: &str) -> Option<SocketAddr> {
    line.strip_prefix(LISTENING_PREFIX)?.trim().parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_printed_listening_line_reads_back_as_its_address() {
        for addr in ["0.0.0.0:8494", "127.3.4.5:1", "[::1]:40000"] {
            let addr: SocketAddr = addr.parse().unwrap();
            assert_eq!(parse_listening_line(&listening_line(addr)), Some(addr));
        }
    }

    #[test]
    fn other_lines_are_not_mistaken_for_a_listening_line() {
        for line in [
            "",
            "listening on",
            "listening on somewhere",
            "Listening on 127.0.0.1:1",
            "upper agent listening on 127.0.0.1:1",
        ] {
            assert_eq!(parse_listening_line(line), None, "{line:?}");
        }
    }
}
