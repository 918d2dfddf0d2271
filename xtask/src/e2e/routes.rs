//! Reaching the pods from the host: a route to each node's pod subnet via that node's container.

use std::{net::Ipv4Addr, time::Duration};

use anyhow::bail;
use duct::cmd;

use super::{CLUSTER, probe::answer};

/// One line per node: its name (which is also its container's name under kind), a tab, its pod subnet.
pub(super) const NODES_JSONPATH: &str =
    "jsonpath={range .items[*]}{.metadata.name}{\"\\t\"}{.spec.podCIDR}{\"\\n\"}{end}";
/// One line per network the node's container is on: the network's name, a tab, the container's IPv4 address.
pub(super) const NETWORKS_FORMAT: &str = "{{range $name, $network := .NetworkSettings.Networks}}{{$name}}\t{{$network.IPAddress}}\n{{end}}";

/// The kind network's name (kind's own override, else `kind`).
pub(super) fn kind_network() -> String {
    std::env::var("KIND_EXPERIMENTAL_DOCKER_NETWORK")
        .ok()
        .filter(|network| !network.is_empty())
        .unwrap_or_else(|| "kind".to_owned())
}

/// Reads the output of `kubectl get nodes -o NODES_JSONPATH`: each node and its IPv4 pod subnet.
///
/// IPv6 subnets are left out (the demo dials the pod's first, IPv4, address); no IPv4 subnet at all is an error.
pub(super) fn parse_node_pod_cidrs(output: &str) -> anyhow::Result<Vec<(String, String)>> {
    let mut nodes = Vec::new();
    for line in output.lines().filter(|line| !line.trim().is_empty()) {
        let (node, cidr) = line.split_once('\t').unwrap_or((line, ""));
        let (node, cidr) = (node.trim(), cidr.trim());
        if cidr.is_empty() {
            bail!("node {node} has no pod subnet (spec.podCIDR) yet");
        }
        if cidr.contains(':') {
            continue;
        }
        let valid = cidr.split_once('/').is_some_and(|(address, prefix)| {
            address.parse::<Ipv4Addr>().is_ok() && prefix.parse::<u8>().is_ok_and(|p| p <= 32)
        });
        if !valid {
            bail!("node {node} has a pod subnet that is not an IPv4 CIDR: {cidr:?}");
        }
        nodes.push((node.to_owned(), cidr.to_owned()));
    }
    if nodes.is_empty() {
        bail!(
            "the cluster's nodes have no IPv4 pod subnet (kubectl get nodes said {:?}); route the pods yourself and \
             pass --no-route",
            output.trim()
        );
    }
    Ok(nodes)
}

/// Reads the output of `<engine> inspect -f NETWORKS_FORMAT <node>`: the node's address on `network`, or its only
/// address when it is on one network.
pub(super) fn node_ip(output: &str, network: &str) -> anyhow::Result<Ipv4Addr> {
    let addresses: Vec<(&str, Ipv4Addr)> = output
        .lines()
        .filter_map(|line| {
            let (name, address) = line.split_once('\t')?;
            Some((name.trim(), address.trim().parse().ok()?))
        })
        .collect();
    if let Some((_, address)) = addresses.iter().find(|(name, _)| *name == network) {
        return Ok(*address);
    }
    match addresses.as_slice() {
        [(_, address)] => Ok(*address),
        [] => bail!("no IPv4 address in {:?}", output.trim()),
        _ => bail!(
            "not on the {network} network, and on several others: {:?}",
            output.trim()
        ),
    }
}

/// A route from this host to one node's pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodRoute {
    pub(super) cidr: String,
    pub(super) via: Ipv4Addr,
}

/// How this task changes the routing table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Privilege {
    Root,
    /// `sudo -n`: never asks for a password (and so fails without a cached or password-less sudo).
    Sudo,
}

/// `[sudo -n] ip route <verb> <cidr> via <node IP>`, as a program and its arguments.
pub(super) fn ip_route_argv(privilege: Privilege, verb: &str, route: &PodRoute) -> Vec<String> {
    let sudo = match privilege {
        Privilege::Root => &[][..],
        Privilege::Sudo => &["sudo", "-n"][..],
    };
    sudo.iter()
        .copied()
        .chain(["ip", "route", verb, &route.cidr, "via"])
        .map(str::to_owned)
        .chain([route.via.to_string()])
        .collect()
}

/// The same, as a contributor would type it.
pub(super) fn route_command(privilege: Privilege, verb: &str, route: &PodRoute) -> String {
    let argv = ip_route_argv(Privilege::Root, verb, route).join(" ");
    match privilege {
        Privilege::Root => argv,
        Privilege::Sudo => format!("sudo {argv}"),
    }
}

/// Whether `ip route show exact <cidr>` printed a route via `via`.
pub(super) fn routed_via(shown: &str, via: Ipv4Addr) -> bool {
    let via = via.to_string();
    shown.lines().any(|line| {
        let words: Vec<&str> = line.split_whitespace().collect();
        words
            .windows(2)
            .any(|pair| pair[0] == "via" && pair[1] == via)
    })
}

/// What to do when this task could not add the routes itself.
pub(super) fn route_failure_message(
    privilege: Privilege,
    routes: &[PodRoute],
    said: &str,
    cluster: &str,
    created: bool,
) -> String {
    let why = match privilege {
        Privilege::Sudo => {
            "Changing routes needs root, and `sudo -n` did not get it without a password: run `sudo -v` first, or \
             run as root, or add the route yourself"
        }
        Privilege::Root => {
            "Adding it failed even as root: fix what `ip` said, or add the route yourself"
        }
    };
    let mut message = format!(
        "could not route the pod subnet from this host ({said}).\n\
         The demo runs here and connects to podIP:{port}, so the pod subnet must be routed via the kind node. \
         {why}:\n",
        port = axp_transport::DEFAULT_PORT
    );
    for route in routes {
        message.push_str(&format!(
            "    {}\n",
            route_command(Privilege::Sudo, "replace", route)
        ));
    }
    let name = if cluster == CLUSTER {
        String::new()
    } else {
        format!(" --cluster-name {cluster}")
    };
    message.push_str(&format!(
        "and then run: cargo xtask e2e --reuse --no-route{name}\n"
    ));
    if created {
        message.push_str(&format!(
            "The cluster {cluster} is kept so that these commands stay right. "
        ));
    }
    message.push_str("Afterwards, clean up with:\n");
    for route in routes {
        message.push_str(&format!(
            "    {}\n",
            route_command(Privilege::Sudo, "del", route)
        ));
    }
    message.push_str(&format!("    kind delete cluster --name {cluster}"));
    message
}

/// The routes this task added; dropping this removes them.
#[derive(Debug)]
pub(super) struct PodRoutes {
    pub(super) privilege: Privilege,
    pub(super) routes: Vec<PodRoute>,
}

impl Drop for PodRoutes {
    fn drop(&mut self) {
        for route in self.routes.drain(..) {
            let argv = ip_route_argv(self.privilege, "del", &route);
            println!("==> {}", argv.join(" "));
            match answer(cmd(&argv[0], &argv[1..]), Duration::from_secs(30)) {
                Some(Ok(_)) => println!("<== {}: ok", argv.join(" ")),
                failed => eprintln!(
                    "<== {}: FAILED ({}); remove it yourself: {}",
                    argv.join(" "),
                    match failed {
                        Some(Err(said)) => said,
                        _ => format!("{}: not found", argv[0]),
                    },
                    route_command(Privilege::Sudo, "del", &route)
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(cidr: &str, via: [u8; 4]) -> PodRoute {
        PodRoute {
            cidr: cidr.to_owned(),
            via: Ipv4Addr::from(via),
        }
    }

    /// What `kubectl get nodes -o NODES_JSONPATH` printed for a two-node list served to kubectl v1.32.
    #[test]
    fn each_node_and_its_ipv4_pod_subnet_are_read() {
        let output =
            "ax-sandbox-e2e-control-plane\t10.244.0.0/24\nax-sandbox-e2e-worker\t10.244.1.0/24\n";
        assert_eq!(
            parse_node_pod_cidrs(output).unwrap(),
            [
                (
                    "ax-sandbox-e2e-control-plane".to_owned(),
                    "10.244.0.0/24".to_owned()
                ),
                (
                    "ax-sandbox-e2e-worker".to_owned(),
                    "10.244.1.0/24".to_owned()
                ),
            ]
        );
    }

    #[test]
    fn ipv6_subnets_are_skipped_but_no_ipv4_subnet_is_an_error() {
        let mixed = "a\tfd00:10:244::/64\nb\t10.244.1.0/24\n";
        assert_eq!(
            parse_node_pod_cidrs(mixed).unwrap(),
            [("b".to_owned(), "10.244.1.0/24".to_owned())]
        );
        let error = parse_node_pod_cidrs("a\tfd00:10:244::/64\n").unwrap_err();
        assert!(error.to_string().contains("--no-route"), "{error}");
        assert!(parse_node_pod_cidrs("").is_err());
    }

    #[test]
    fn a_missing_or_malformed_pod_subnet_is_an_error() {
        let missing = parse_node_pod_cidrs("ax-sandbox-e2e-control-plane\t\n").unwrap_err();
        assert_eq!(
            missing.to_string(),
            "node ax-sandbox-e2e-control-plane has no pod subnet (spec.podCIDR) yet"
        );
        for bad in [
            "n\t10.244.0.0",
            "n\t10.244.0.0/33",
            "n\t10.244.0/24",
            "n\tnonsense/8",
        ] {
            assert!(parse_node_pod_cidrs(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_node_address_on_the_kind_network_wins() {
        let inspect = "bridge\t172.17.0.5\nkind\t172.18.0.2\n";
        assert_eq!(
            node_ip(inspect, "kind").unwrap(),
            Ipv4Addr::new(172, 18, 0, 2)
        );
        assert_eq!(
            node_ip(inspect, "my-net").unwrap_err().to_string(),
            "not on the my-net network, and on several others: \"bridge\\t172.17.0.5\\nkind\\t172.18.0.2\""
        );
        // On one network only, whatever its name: that one.
        assert_eq!(
            node_ip("podman-kind\t10.89.0.3\n", "kind").unwrap(),
            Ipv4Addr::new(10, 89, 0, 3)
        );
        // A stopped container has no address.
        assert!(node_ip("kind\t\n", "kind").is_err());
        assert!(node_ip("", "kind").is_err());
    }

    #[test]
    fn route_commands_with_and_without_sudo() {
        let route = route("10.244.0.0/24", [172, 18, 0, 2]);
        assert_eq!(
            ip_route_argv(Privilege::Root, "replace", &route),
            [
                "ip",
                "route",
                "replace",
                "10.244.0.0/24",
                "via",
                "172.18.0.2"
            ]
        );
        assert_eq!(
            ip_route_argv(Privilege::Sudo, "del", &route),
            [
                "sudo",
                "-n",
                "ip",
                "route",
                "del",
                "10.244.0.0/24",
                "via",
                "172.18.0.2"
            ]
        );
        assert_eq!(
            route_command(Privilege::Sudo, "replace", &route),
            "sudo ip route replace 10.244.0.0/24 via 172.18.0.2"
        );
        assert_eq!(
            route_command(Privilege::Root, "del", &route),
            "ip route del 10.244.0.0/24 via 172.18.0.2"
        );
    }

    #[test]
    fn an_existing_route_is_recognised_only_via_the_same_node() {
        let via = Ipv4Addr::new(172, 18, 0, 2);
        assert!(routed_via(
            "10.244.0.0/24 via 172.18.0.2 dev br-0d2a8c1e3f4b \n",
            via
        ));
        assert!(!routed_via(
            "10.244.0.0/24 via 172.18.0.3 dev br-0d2a8c1e3f4b \n",
            via
        ));
        assert!(!routed_via(
            "10.244.0.0/24 via 172.18.0.22 dev br-0d2a8c1e3f4b \n",
            via
        ));
        assert!(!routed_via("", via));
    }

    #[test]
    fn without_root_the_message_gives_the_exact_commands() {
        let routes = [route("10.244.0.0/24", [172, 18, 0, 2])];
        assert_eq!(
            route_failure_message(
                Privilege::Sudo,
                &routes,
                "sudo: a password is required",
                CLUSTER,
                true
            ),
            "could not route the pod subnet from this host (sudo: a password is required).\n\
             The demo runs here and connects to podIP:8494, so the pod subnet must be routed via the kind node. \
             Changing routes needs root, and `sudo -n` did not get it without a password: run `sudo -v` first, or \
             run as root, or add the route yourself:\n    \
             sudo ip route replace 10.244.0.0/24 via 172.18.0.2\n\
             and then run: cargo xtask e2e --reuse --no-route\n\
             The cluster ax-sandbox-e2e is kept so that these commands stay right. Afterwards, clean up with:\n    \
             sudo ip route del 10.244.0.0/24 via 172.18.0.2\n    \
             kind delete cluster --name ax-sandbox-e2e"
        );
        let reused = route_failure_message(Privilege::Root, &routes, "x", "mine", false);
        assert!(reused.contains("Adding it failed even as root"));
        assert!(reused.contains("cargo xtask e2e --reuse --no-route --cluster-name mine\n"));
        assert!(!reused.contains("is kept"));
    }
}
