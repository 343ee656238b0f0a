//! Bad configs: each gives its exact message, located as FILE:LINE:COL, and exit code 2.
//! No root needed (the "changes nothing on the host" half lives in e2e_lifecycle.rs).

use symroute::config::{parse_str, ConfigError};

const GW: &str = "[[gateway]]\nname = \"isp1\"\ninterface = \"eth2\"\nvia = \"203.0.113.1\"\n";
const GW2: &str = "[[gateway]]\nname = \"isp2\"\ninterface = \"eth1\"\nvia = \"198.51.100.1\"\n";

fn err(text: &str) -> String {
    match parse_str(text, "bad.toml") {
        Ok(_) => panic!("accepted a bad config:\n{text}"),
        Err(ConfigError::Invalid(d)) => d
            .iter()
            .map(|d| d.to_string())
            .collect::<Vec<_>>()
            .join("\n"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn table_of_bad_configs() {
    let cases: Vec<(String, &str)> = vec![
        ("[[gateway]\nname = \"x\"".into(), "bad.toml:1:10: invalid table header expected `.`, `]]`"),
        ("[settings]\nmark_mask = \"0x0f0f0000\"\n".into(), "bad.toml:2:13: settings.mark_mask: mark_mask 0x0f0f0000 is not one contiguous run of bits (e.g. 0xff000000)"),
        ("[settings]\nmark_mask = \"banana\"\n".into(), "bad.toml:2:13: settings.mark_mask: expected a 32-bit mask like \"0xff000000\""),
        ("[settings]\nmark_mask = 0\n".into(), "bad.toml:2:13: settings.mark_mask: mark_mask must have at least one bit set"),
        ("[settings]\nfirst_table = 254\n".into(), "bad.toml:2:15: settings.first_table: table 254 is reserved by the kernel (0 unspec, 253 default, 254 main, 255 local)"),
        ("[settings]\nfirst_table = 200\n".into(), "bad.toml:2:15: settings.first_table: the tables symroute allocates from here (200 to 327) would cross the kernel's tables 253-255; pick a number above 255 (default 42000)"),
        ("[settings]\nfirst_table = 100\n".into(), ""),
        ("[settings]\nmark_mask = \"0xffff0000\"\nfirst_table = 4294950000\n".into(), "bad.toml:3:15: settings.first_table: with mark_mask 0xffff0000, gateway ids run to 32767, so tables run to 4294950000 + 32767, past 2^32; pick a smaller first_table (default 42000)"),
        ("[settings]\nfirst_priority = 0\n".into(), "bad.toml:2:18: settings.first_priority: priority 0 is outside 1..32765 (0 is `lookup local`, 32766/32767 are main/default)"),
        ("[settings]\nfirst_priority = 32700\n".into(), "bad.toml:2:18: settings.first_priority: leave room for symroute's rules before main (32766); use at most 32000"),
        ("[settings]\nmark = 1\n".into(), "bad.toml:2:1: unknown field `mark`, expected one of `mark_mask`, `first_table`, `first_priority`, `fallback_priority`, `metrics`, `metrics_allow_remote`, `on_change`, `ha_pair` (see examples/ and the README for the keys symroute knows)"),
        ("[settings]\nmetrics = \"0.0.0.0:19469\"\n".into(), "bad.toml:2:11: settings.metrics: 0.0.0.0:19469 is not a loopback address, so anyone who can reach it could read the gateways, policies and traffic counts; use \"127.0.0.1:19469\", or add metrics_allow_remote = true to serve beyond this host on purpose"),
        ("[settings]\nmetrics = \"[2001:db8::1]:9100\"\nmetrics_allow_remote = false\n".into(), "bad.toml:2:11: settings.metrics: [2001:db8::1]:9100 is not a loopback address, so anyone who can reach it could read the gateways, policies and traffic counts; use \"127.0.0.1:9100\", or add metrics_allow_remote = true to serve beyond this host on purpose"),
        ("[settings]\nmetrics = \"localhost:19469\"\n".into(), "bad.toml:2:11: settings.metrics: \"localhost:19469\" is not an address (and port) to listen on (expected e.g. \"127.0.0.1\" for port 19469, \"127.0.0.1:19469\" or \"[::1]:19469\")"),
        ("[settings]\nmetrics = \"127.0.0.1\"\n".into(), ""),
        ("[settings]\nmetrics = \"[::1]\"\n".into(), ""),
        ("[settings]\nmetrics = \"0.0.0.0\"\n".into(), "bad.toml:2:11: settings.metrics: 0.0.0.0:19469 is not a loopback address, so anyone who can reach it could read the gateways, policies and traffic counts; use \"127.0.0.1:19469\", or add metrics_allow_remote = true to serve beyond this host on purpose"),
        ("[settings]\nmetrics = 19469\n".into(), "bad.toml:2:11: expected a string here, found an integer `19469`, expected a string"),
        ("[settings]\nmetrics = \"0.0.0.0:19469\"\nmetrics_allow_remote = true\n".into(), ""),
        ("[settings]\nmetrics = \"[::1]:19469\"\n".into(), ""),
        (format!("{GW}via = \"1.2.3.4\"\n"), "bad.toml:5:1: duplicate key `via` in table `gateway`"),
        ("[[gateway]]\nname = \"isp 1\"\ninterface = \"eth2\"\n".into(), "bad.toml:2:8: gateway.name: \"isp 1\" is not a valid name (1-64 of letters, digits, '-', '_', '.', starting with a letter or digit)"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"averyveryverylongname\"\n".into(), "bad.toml:3:13: gateway.interface: \"averyveryverylongname\" is not an interface name (1-15 of letters, digits, '-', '_' and '.')"),
        // Names the kernel allows but nft would read as a pattern, or that need quoting.
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"eth*\"\n".into(), "bad.toml:3:13: gateway.interface: \"eth*\" is not an interface name symroute accepts: nft would read '*' as a wildcard matching many interfaces (1-15 of letters, digits, '-', '_' and '.'; rename the interface, e.g. with `ip link set OLD name NEW`)"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"x;true>pwned\"\n".into(), "bad.toml:3:13: gateway.interface: \"x;true>pwned\" is not an interface name symroute accepts: ';' is not allowed (1-15 of letters, digits, '-', '_' and '.'; rename the interface, e.g. with `ip link set OLD name NEW`)"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"a\\nb\"\n".into(), "bad.toml:3:13: gateway.interface: \"a\\nb\" is not an interface name symroute accepts: '\\n' is not allowed (1-15 of letters, digits, '-', '_' and '.'; rename the interface, e.g. with `ip link set OLD name NEW`)"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"..\"\n".into(), "bad.toml:3:13: gateway.interface: \"..\" is not an interface name (1-15 of letters, digits, '-', '_' and '.', not \".\" or \"..\")"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"br-lan.100\"\n".into(), ""),
        (format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"isp1\"\n[policy.match]\nin_interface = [\"eth2\", \"ppp+\"]\n"), "bad.toml:9:16: match.in_interface: \"ppp+\" is not an interface name symroute accepts: '+' is not allowed (1-15 of letters, digits, '-', '_' and '.'; rename the interface, e.g. with `ip link set OLD name NEW`)"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"eth2\"\nvia = \"203.0.113\"\n".into(), "bad.toml:4:7: gateway.via: \"203.0.113\" is not an IPv4 address like 203.0.113.1, or \"auto\" to use the default route a DHCP client or router advertisement installs on the interface"),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"eth2\"\nvia = \"auto\"\nvia6 = \"auto\"\n".into(), ""),
        ("[[gateway]]\nname = \"isp1\"\ninterface = \"eth2\"\nvia6 = \"203.0.113.1\"\n".into(), "bad.toml:4:8: gateway.via6: \"203.0.113.1\" is not an IPv6 address like 2001:db8:1::1, or \"auto\" to use the default route a DHCP client or router advertisement installs on the interface"),
        ("[[gateway]]\nname = \"isp1\"\n".into(), "bad.toml:1:1: missing field `interface`"),
        (format!("{GW}{GW}"), "bad.toml:6:8: gateway.name: \"isp1\" is used by another gateway; names must be unique"),
        (format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"isp9\"\n[policy.match]\nin_interface = \"eth2\"\n"), "bad.toml:7:13: policy.reply_via: no gateway named \"isp9\" (defined gateways: isp1)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"isp1\"\nroute_via = \"isp1\"\n"), "bad.toml:8:13: a policy has exactly one of reply_via / route_via, this one has both"),
        (format!("{GW}[[policy]]\nname = \"p\"\n[policy.match]\nprotocol = \"tcp\"\n"), "bad.toml:5:1: a policy needs reply_via = \"GATEWAY\" (answer arriving connections) or route_via = \"GATEWAY\" (send new connections)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"isp1\"\n"), "bad.toml:5:1: a reply_via policy needs a [policy.match] that says which arriving connections it answers (e.g. in_interface = \"eth2\" or source_mac = [...])"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nsource_mac = [\"02:03:04:05:06\"]\n"), "bad.toml:9:14: match.source_mac: \"02:03:04:05:06\" is not a MAC address (expected six hex pairs like 02:03:04:05:06:07)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nsource = \"10.0.0.1/8\"\n"), "bad.toml:9:10: match.source: \"10.0.0.1/8\" has host bits set; did you mean 10.0.0.0/8?"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nnot_destination = [\"10.0.0/8\"]\n"), "bad.toml:9:19: match.not_destination: \"10.0.0/8\" is not an IPv4 or IPv6 address or prefix (expected e.g. 10.0.0.0/8 or 2001:db8::/32)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\ndestination_port = 25\n"), "bad.toml:9:20: match.destination_port: ports need a protocol; add protocol = \"tcp\" (or \"udp\", or [\"tcp\", \"udp\"])"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"icmp\"\ndestination_port = 25\n"), "bad.toml:10:20: match.destination_port: protocol icmp has no ports; list only tcp, udp, sctp, dccp or udplite with ports"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = [\"587-465\"]\n"), "bad.toml:10:20: match.destination_port: port range \"587-465\" runs backwards (write \"465-587\")"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"tcp\"\ndestination_port = [70000]\n"), "bad.toml:10:20: match.destination_port: \"70000\" is not a port or range (expected 25 or \"465-587\")"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nprotocol = \"gre\"\n"), "bad.toml:9:12: match.protocol: \"gre\" is not a protocol symroute knows (expected tcp, udp, sctp, dccp, udplite, icmp or icmpv6)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nin_interface = []\n"), "bad.toml:9:16: match.in_interface: the list is empty; remove the key or list at least one interface name"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nsource = \"10.0.0.0/8\"\ndestination = \"2001:db8::/32\"\n"), "bad.toml:10:15: match.destination: source and destination share no address family, so nothing can match"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nsrc = \"10.0.0.0/8\"\n"), "bad.toml:9:1: unknown field `src`, expected one of `in_interface`, `source_mac`, `source`, `not_source`, `destination`, `not_destination`, `protocol`, `source_port`, `destination_port`, `user`, `cgroup` (see examples/ and the README for the keys symroute knows)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = [1001, \"backup\"]\n"), "bad.toml:9:15: match.user: no user named \"backup\" on this host (expected a user name from the system's user database, as `id backup` would find it, or a numeric uid)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = -1\n"), "bad.toml:9:8: match.user: -1 is not a uid (expected 0 to 4294967294, or a user name)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = [\"4294967295\"]\n"), "bad.toml:9:9: match.user: \"4294967295\" is not a uid (expected 0 to 4294967294, or a user name)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = []\n"), "bad.toml:9:8: match.user: the list is empty; remove the key or list at least one user name or uid"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = [true]\n"), "bad.toml:9:9: match.user: expected a user name or a numeric uid, found boolean"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = [0, \"1001\"]\ncgroup = [\"system.slice/backup.service\", \"/user.slice/\"]\n"), ""),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = [\"system.slice\", \"a/../b\"]\n"), "bad.toml:9:27: match.cgroup: \"a/../b\" is not a cgroup path symroute accepts: the component \"..\" (expected a path below the cgroup2 root like \"system.slice/backup.service\": components of letters, digits and '-_.@:+,=', separated by '/')"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"a\\\"; flush ruleset\"\n"), "bad.toml:9:10: match.cgroup: \"a\\\"; flush ruleset\" is not a cgroup path symroute accepts: '\"' is not allowed (expected a path below the cgroup2 root like \"system.slice/backup.service\": components of letters, digits and '-_.@:+,=', separated by '/')"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"/\"\n"), "bad.toml:9:10: match.cgroup: \"/\" names the cgroup2 root, which holds every process; expected a path below the cgroup2 root like \"system.slice/backup.service\": components of letters, digits and '-_.@:+,=', separated by '/'"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = 3\n"), "bad.toml:9:10: match.cgroup: expected a cgroup path like \"system.slice/backup.service\", found integer"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nin_interface = \"eth2\"\nuser = 1001\n"), "bad.toml:10:8: match.user: selects connections this host opens, which have no in_interface (only arriving ones do), so this policy could never match; split it into two policies"),
        (format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\ncgroup = \"system.slice/x.service\"\nsource_mac = \"02:03:04:05:06:07\"\n"), "bad.toml:9:10: match.cgroup: selects connections this host opens, which have no source_mac (only arriving ones do), so this policy could never match; split it into two policies"),
        (format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"isp1\"\n[policy.match]\nuser = 1001\n"), "bad.toml:9:8: match.user: a reply_via policy answers connections that arrive, which have no sending user or cgroup; use route_via to send this host's own new connections via a gateway"),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\", \"tcp:198.51.100.80\"]\n"), "bad.toml:6:26: gateway.check.targets: \"tcp:198.51.100.80\" is not an address to ping (192.0.2.53, 2001:db8::53) or tcp:ADDR:PORT (tcp:198.51.100.80:443, tcp:[2001:db8::80]:443)"),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\"]\ninterval = \"fast\"\n"), "bad.toml:7:12: gateway.check.interval: \"fast\" is not a duration (expected e.g. \"250ms\" or \"2s\")"),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\"]\ninterval = \"10ms\"\n"), "bad.toml:7:12: gateway.check.interval: \"10ms\" is shorter than 50 ms; probes more often than that are load, not information"),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\"]\ninterval = \"50ms\"\n"), ""),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\"]\ninterval = \"100ms\"\ntimeout = \"1001ms\"\n"), "bad.toml:8:11: gateway.check.timeout: \"1001ms\" is more than 10 intervals (1000 ms); a probe is lost long before that (or make the interval longer)"),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\"]\ntimeout = \"1.5s\"\n"), ""),
        (format!("{GW}[gateway.check]\ntargets = [{}]\n", (1..=17).map(|i| format!("\"192.0.2.{i}\"")).collect::<Vec<_>>().join(", ")), "bad.toml:6:11: gateway.check.targets: 17 targets; at most 16 (each is probed every interval)"),
        (format!("{GW}[gateway.check]\ntargets = [{}]\n", (1..=16).map(|i| format!("\"192.0.2.{i}\"")).collect::<Vec<_>>().join(", ")), ""),
        (format!("{GW}[gateway.check]\ntargets = [\"2001:db8::53\"]\ndown = \"5/3\"\n"), "bad.toml:7:8: gateway.check.down: \"5/3\" is not LOST/WINDOW with 1 <= LOST <= WINDOW <= 64 (e.g. \"3/5\": down after 3 of the last 5 probes are lost)"),
        (format!("{GW}[gateway.check]\ninterval = \"1s\"\n"), "bad.toml:5:1: missing field `targets`"),
        (format!("{GW}[gateway.check]\ntargets = [\"192.0.2.53\", \"tcp:[2001:db8::80]:443\"]\ninterval = \"1.5s\"\ntimeout = \"500ms\"\ndown = \"2/4\"\nup = 3\n"), ""),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = []\n"), "bad.toml:11:13: policy.route_via: the list is empty; name at least one gateway (the first usable one is taken)"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = [\"isp1\", \"isp2\", \"isp1\"]\n"), "bad.toml:11:30: policy.route_via: gateway \"isp1\" is listed twice; name each gateway once"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = [\"isp1\", 2]\n"), "bad.toml:11:22: policy.route_via: expected a gateway name, found integer"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = [\"isp1\", \"isp3\"]\n"), "bad.toml:11:22: policy.route_via: no gateway named \"isp3\" (defined gateways: isp1, isp2)"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{}}\n"), "bad.toml:11:13: policy.route_via: the table is empty; give each gateway a weight, e.g. { isp1 = 3, isp2 = 1 }"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{ isp1 = 3, isp2 = 0 }}\n"), "bad.toml:11:32: policy.route_via: the weight of \"isp2\" must be a whole number from 1 to 1000"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{ isp1 = 1001, isp2 = \"1\" }}\n"), "bad.toml:11:22: policy.route_via: the weight of \"isp1\" must be a whole number from 1 to 1000\nbad.toml:11:35: policy.route_via: the weight of \"isp2\" must be a whole number from 1 to 1000"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{ isp1 = 3, isp9 = 1 }}\n"), "bad.toml:11:25: policy.route_via: no gateway named \"isp9\" (defined gateways: isp1, isp2)"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = 7\n"), "bad.toml:11:13: policy.route_via: expected a gateway name, a failover list like [\"isp1\", \"isp2\"] or weights like { isp1 = 3, isp2 = 1 }, found integer"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{ isp1 = 3, isp2 = 1 }}\nsticky = \"10 minutes\"\n"), "bad.toml:12:10: policy.sticky: \"10 minutes\" is not a duration up to 24h (expected e.g. \"30s\", \"10m\" or \"1h\")"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{ isp1 = 3, isp2 = 1 }}\nsticky = \"0s\"\n"), "bad.toml:12:10: policy.sticky: \"0s\" is not a duration up to 24h (expected e.g. \"30s\", \"10m\" or \"1h\")"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = [\"isp2\"]\nsticky = \"10m\"\n"), "bad.toml:12:10: policy.sticky: route_via names one gateway, so there is nothing to stick to; list several (a failover list or weights)"),
        (format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"isp1\"\nsticky = \"10m\"\n[policy.match]\nin_interface = \"eth2\"\n"), "bad.toml:8:10: policy.sticky: only route_via policies choose a gateway; reply_via always answers by the path a connection arrived on"),
        (format!("{GW}{GW2}[[policy]]\nname = \"p\"\nroute_via = {{ isp1 = 3, isp2 = 1 }}\nsticky = \"1.5h\"\n[[policy]]\nname = \"q\"\nroute_via = [\"isp2\", \"isp1\"]\n"), ""),
        ("[settings]\non_change = \"\"\n".into(), "bad.toml:2:13: settings.on_change: an empty command; expected a shell command like \"logger -t symroute $SYMROUTE_GATEWAY $SYMROUTE_NEW_STATE\" (or remove the key)"),
        ("[settings]\non_change = [\"logger x\", 3]\n".into(), "bad.toml:2:13: settings.on_change: expected a shell command (a string) or a list of them, found integer"),
        ("[settings]\non_change = [\"logger x\", \"/usr/local/bin/notify\"]\n".into(), ""),
        ("[[divert]]\nname = \"h\"\nprotocol = \"icmp\"\n".into(), "bad.toml:3:12: divert.protocol: transparent sockets exist only for tcp and udp, not icmp"),
        ("[settings]\nmark_mask = \"0x80000000\"\n[[divert]]\nname = \"h\"\n".into() , ""),
        (format!("[settings]\nmark_mask = \"0x03000000\"\n{GW}[[gateway]]\nname = \"isp2\"\ninterface = \"eth1\"\n"), "bad.toml:8:8: gateway.name: \"isp2\" and \"isp1\" (line 4) both take id 1 from their names; give one of them an id of its own, e.g. `id = 1` on \"isp2\" (ids not taken: none; widen the mask). A gateway keeps its marks and table when it is given the id it has now (`id = 1` on \"isp1\")"),
        // Gateway ids (stable marks): range, uniqueness, collisions of names.
        ("[settings]\nmark_mask = \"0x80000000\"\n[[gateway]]\nname = \"isp1\"\ninterface = \"eth2\"\n".into(), "bad.toml:4:8: gateway \"isp1\": mark_mask 0x80000000 holds no gateway (each needs two values, and the top one is the divert's); widen the mask"),
        (format!("{GW}id = 0\n"), "bad.toml:5:6: gateway.id: 0 is not a gateway id mark_mask 0xff000000 holds; expected 1 to 127"),
        (format!("{GW}id = 128\n"), "bad.toml:5:6: gateway.id: 128 is not a gateway id mark_mask 0xff000000 holds; expected 1 to 127"),
        (format!("[settings]\nmark_mask = \"0x00f00000\"\n{GW}id = 8\n"), "bad.toml:7:6: gateway.id: 8 is not a gateway id mark_mask 0x00f00000 holds; expected 1 to 7"),
        (format!("{GW}id = \"one\"\n"), "bad.toml:5:6: found a string \"one\", expected a whole number"),
        (format!("{GW}id = 5\n{GW2}id = 5\n"), "bad.toml:10:6: gateway.id: 5 is already the id of \"isp1\" (line 5); ids are unique, e.g. 6 is not taken (ids not taken: 6, 7, 8…)"),
        (format!("{GW}[[gateway]]\nname = \"lte44\"\ninterface = \"wwan0\"\n"), "bad.toml:6:8: gateway.name: \"lte44\" and \"isp1\" (line 2) both take id 26 from their names; give one of them an id of its own, e.g. `id = 27` on \"lte44\" (ids not taken: 27, 28, 29…). A gateway keeps its marks and table when it is given the id it has now (`id = 26` on \"isp1\")"),
        (format!("{GW}[[gateway]]\nname = \"lte44\"\ninterface = \"wwan0\"\nid = 27\n"), ""),
        (format!("{GW}{GW2}id = 26\n"), "bad.toml:9:6: gateway.id: 26 is the id \"isp1\" (line 2) takes from its name; pick another, e.g. 27 (ids not taken: 27, 28, 29…), or give \"isp1\" `id = 26` and this gateway another"),
        (format!("{GW2}id = 26\n{GW}"), "bad.toml:7:8: gateway.name: \"isp1\" takes id 26 from its name, but \"isp2\" (line 5) has `id = 26`; give \"isp1\" an id of its own, e.g. `id = 27` (ids not taken: 27, 28, 29…)"),
        (format!("[settings]\nmark_mask = \"0x00f00000\"\n{GW}id = 7\n{GW2}id = 1\n[[divert]]\nname = \"d\"\n"), ""),
    ];
    let mut failures = Vec::new();
    for (text, want) in &cases {
        if want.is_empty() {
            assert!(
                parse_str(text, "bad.toml").is_ok(),
                "should be accepted:\n{text}"
            );
            continue;
        }
        let got = err(text);
        if got != *want {
            failures.push(format!("config:\n{text}\n  want: {want}\n  got:  {got}\n"));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

/// Several problems in one file are all reported, in file order.
#[test]
fn all_errors_reported_at_once() {
    let text = "[[gateway]]\nname = \"a b\"\ninterface = \"eth0\"\nvia = \"x\"\n";
    let got = err(text);
    assert_eq!(got.lines().count(), 2, "{got}");
    assert!(got.starts_with("bad.toml:2:8: gateway.name"), "{got}");
    assert!(got.contains("bad.toml:4:7: gateway.via"), "{got}");
}

/// The binary: exit code 2 and the located message on stderr, nothing on stdout.
#[test]
fn check_exits_2_with_location() {
    let dir = std::env::temp_dir().join(format!("symroute-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("bad.toml");
    std::fs::write(&file, format!("{GW}[[policy]]\nname = \"p\"\nreply_via = \"nope\"\n[policy.match]\nin_interface = \"eth2\"\n")).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_symroute"))
        .args(["check", "-c"])
        .arg(&file)
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:7:13: policy.reply_via: no gateway named \"nope\"",
            file.display()
        )),
        "{stderr}"
    );
    assert!(out.stdout.is_empty());
}

#[test]
fn missing_file_is_exit_2_and_named() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_symroute"))
        .args(["check", "-c", "/nonexistent/symroute.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("/nonexistent/symroute.toml: cannot read config"));
}

/// Rule priorities are fixed slots (`plan::alloc::Slot`), not one per gateway: however many
/// gateways, a first_priority the config accepts (at most 32000) never runs past main's
/// 32766, and the plan never panics allocating them.
#[test]
fn many_gateways_after_a_late_first_priority_fit() {
    let mut s = "[settings]\nmark_mask = \"0xffff0000\"\nfirst_priority = 32000\n".to_string();
    for i in 0..1000 {
        s += &format!(
            "[[gateway]]\nname = \"g{i}\"\nid = {}\ninterface = \"e{i}\"\nvia = \"10.{}.{}.1\"\n\
             [[policy]]\nname = \"p{i}\"\nreply_via = \"g{i}\"\n[policy.match]\nin_interface = \"e{i}\"\n",
            i + 1,
            i / 256,
            i % 256
        );
    }
    s += "[[policy]]\nname = \"out\"\nroute_via = [\"g0\", \"g1\"]\n[[divert]]\nname = \"d\"\n";
    let model = parse_str(&s, "ok.toml").expect("1000 gateways fit");
    let plan = symroute::plan::build(&model, &symroute::plan::HostView::default());
    let prios: Vec<u32> = plan.priorities.iter().map(|p| p.get()).collect();
    assert_eq!(prios, [32000, 32002, 32003, 32004, 32005, 32008, 32800]);
    assert_eq!(
        plan.priorities.len(),
        symroute::plan::alloc::priorities_needed(&model)
    );
}

/// `symroute check` looks user names up in the system's user database: a known one
/// passes, an unknown one is exit 2 at its line and column.
#[test]
fn check_resolves_user_names() {
    let dir = std::env::temp_dir().join(format!("symroute-users-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let run = |users: &str| {
        let file = dir.join("users.toml");
        std::fs::write(&file, format!("{GW}[[policy]]\nname = \"p\"\nroute_via = \"isp1\"\n[policy.match]\nuser = {users}\n")).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_symroute"))
            .args(["check", "-c"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).replace(&file.display().to_string(), "FILE"),
        )
    };
    let ok = run("[\"root\", \"nobody\", 1001]");
    let unknown = run("[\"root\", \"symroute-no-such-user\"]");
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(ok.0, Some(0), "{}", ok.1);
    assert_eq!(unknown.0, Some(2));
    assert!(
        unknown.1.contains(
            "FILE:9:17: match.user: no user named \"symroute-no-such-user\" on this host"
        ),
        "{}",
        unknown.1
    );
}
