//! The config text.

use super::*;

impl<'h> Cx<'h> {
    pub(super) fn render(mut self) -> Imported {
        // Policies in the order the original's marks decide: rules that end their chain
        // win in file order, the others are overridden by later ones.
        let mut order: Vec<usize> = (0..self.policies.len()).collect();
        order.sort_by_key(|i| {
            let p = &self.policies[*i];
            if p.terminal {
                (0, p.seq as i64)
            } else {
                (1, -(p.seq as i64))
            }
        });
        let policies: Vec<PolicyOut> = order.iter().map(|i| self.policies[*i].clone()).collect();
        let policies = merge_adjacent(policies);

        // Notes about families: a one-family original on a two-family gateway.
        let mut policy_notes: Vec<Vec<String>> = policies.iter().map(|p| p.notes.clone()).collect();
        for (p, notes) in policies.iter().zip(policy_notes.iter_mut()) {
            let gw = &self.gateways[p.gateway];
            let fam_specific = p
                .sel
                .source
                .iter()
                .chain(&p.sel.destination)
                .next()
                .is_some();
            if !fam_specific && p.families.len() == 1 {
                let only = *p.families.iter().next().expect("one");
                let other_via = match only {
                    Family::Inet4 => gw.via6.is_some(),
                    Family::Inet6 => gw.via.is_some(),
                };
                if other_via {
                    notes.push(format!(
                        "the original applied to {} only; this policy covers both families, and the gateway has a next hop for both",
                        fam_word(only)
                    ));
                }
            }
            if p.action == ActionKind::Route
                && p.hooks.len() == 1
                && p.sel.in_interface.is_empty()
                && p.sel.source_mac.is_empty()
            {
                if p.hooks.contains(&Hook::Output) {
                    notes.push("the original applied to connections this host opens (OUTPUT); this policy also covers forwarded ones".into());
                } else {
                    notes.push("the original applied to forwarded connections (PREROUTING); this policy also covers the ones this host opens".into());
                }
            }
        }

        let names = policy_names(&policies, &self.gateways);
        let mut body = self.render_body(&policies, &policy_notes, &names, None);
        if symroute_core::config::parse_str(&body, "import").is_err() {
            // Gateways whose names give the same default id: number them instead.
            self.explicit_ids = true;
            body = self.render_body(&policies, &policy_notes, &names, None);
        }
        let mut settings = self.settings(&body);
        if self.mask != DEFAULT_MASK && !self.explicit_ids {
            self.explicit_ids = true;
            body = self.render_body(&policies, &policy_notes, &names, None);
            settings = self.settings(&body);
        }
        let body = if settings.is_empty() {
            body
        } else {
            self.render_body(&policies, &policy_notes, &names, Some(&settings))
        };

        if let Err(e) = symroute_core::config::parse_str(&body, "import") {
            // Never expected: the generator only writes what the config accepts.
            self.notes.push(format!(
                "the generated config does not validate, please report: {e}"
            ));
        }
        let unexpressed = self.unexpressed();
        let mut head = String::new();
        let _ = writeln!(
            head,
            "# symroute.toml made by `symroute import` from {}.",
            inert(&self.host.origin)
        );
        if !self.host.missing.is_empty() {
            let _ = writeln!(
                head,
                "# Missing from the state (their part was not examined): {}.",
                self.host.missing.join(", ")
            );
        }
        head += "#\n";
        if unexpressed.is_empty() {
            head += "# Everything that steers traffic by marks or ip rules is expressed below.\n";
        } else {
            let _ = writeln!(
                head,
                "# Not expressed ({}): left as they are; symroute neither reads nor changes them.",
                unexpressed.len()
            );
            for (u, prop) in &unexpressed {
                head += "#\n";
                let _ = writeln!(head, "# - {}", u.what);
                head += &wrap(&u.why, "#   ");
                if let Some(p) = prop {
                    head += "#   Proposed instead (uncomment to use):\n";
                    for l in p.lines() {
                        if l.starts_with('#') {
                            let _ = writeln!(head, "#   {}", l.trim_start_matches("# "));
                        } else {
                            let _ = writeln!(head, "#   {l}");
                        }
                    }
                }
            }
        }
        let replaced = self.replaced();
        if !replaced.is_empty() {
            head += "#\n# Replaces these hand-made objects: remove them before `symroute apply`.\n";
            for r in &replaced {
                let _ = writeln!(head, "#   {r}");
            }
        }
        for n in &self.notes {
            head += "#\n";
            head += &wrap(&format!("Note: {n}"), "# ");
        }
        if self.ours_seen {
            head += "#\n# symroute's own objects (table inet symroute, rules and routes with proto 157) were ignored.\n";
        }
        if self.gateways.is_empty() && self.policies.is_empty() && self.divert.is_none() {
            head += "#\n# Nothing here could be expressed: this file configures nothing.\n";
        }
        let toml = format!("{head}{body}");
        Imported {
            toml,
            unexpressed: unexpressed.into_iter().map(|(u, _)| u).collect(),
        }
    }

    /// Hand-made objects the config replaces, quoted.
    pub(super) fn replaced(&self) -> Vec<String> {
        let mut out = Vec::new();
        for c in &self.host.firewall.chains {
            if is_symroute_chain(c) {
                continue;
            }
            for r in &c.rules {
                if self.fw_done.contains(&rid(r)) {
                    out.push(fw_what_in(r, c));
                }
            }
        }
        for i in &self.rules_done {
            out.push(rule_what(&self.host.routing.rules[*i]));
        }
        for i in &self.routes_done {
            out.push(route_what(&self.host.routing.routes[*i]));
        }
        out
    }

    fn render_body(
        &self,
        policies: &[PolicyOut],
        notes: &[Vec<String>],
        names: &[String],
        settings: Option<&str>,
    ) -> String {
        let mut s = String::new();
        if let Some(set) = settings {
            s += "\n";
            s += set;
        }
        for (n, g) in self.gateways.iter().enumerate() {
            s += "\n";
            // (table, fwmark) → families, in rule order.
            let mut from: Vec<(String, String, Vec<&str>)> = Vec::new();
            for i in &g.rules {
                let r = &self.host.routing.rules[*i];
                let (v, m) = r.fwmark.unwrap_or((0, u32::MAX));
                let t = match r.action {
                    RuleAction::Lookup(t) => t,
                    _ => 0,
                };
                let name = self
                    .table_word(r, t)
                    .map(|w| format!("{w} ({t})"))
                    .unwrap_or_else(|| t.to_string());
                let mark = fwmark_str(v, m);
                match from.iter_mut().find(|(n, k, _)| *n == name && *k == mark) {
                    Some((_, _, f)) => f.push(fam_word(r.family)),
                    None => from.push((name, mark, vec![fam_word(r.family)])),
                }
            }
            let from: Vec<String> = from
                .into_iter()
                .map(|(n, k, f)| format!("table {n}, looked up by `{k}` ({})", f.join(" and ")))
                .collect();
            s += &wrap(&format!("From {}.", from.join("; ")), "# ");
            for n in &g.notes {
                s += &wrap(&sentence(n), "# ");
            }
            s += "[[gateway]]\n";
            let _ = writeln!(s, "name = {}", q(&g.name));
            if self.explicit_ids {
                let _ = writeln!(s, "id = {}", n + 1);
            }
            let _ = writeln!(s, "interface = {}", q(&g.interface));
            if let Some(v) = g.via {
                let _ = writeln!(s, "via = {}", q(&v.to_string()));
            }
            if let Some(v) = g.via6 {
                let _ = writeln!(s, "via6 = {}", q(&v.to_string()));
            }
        }
        for ((p, n), name) in policies.iter().zip(notes).zip(names) {
            s += "\n";
            for line in n {
                s += &wrap(&sentence(line), "# ");
            }
            s += "[[policy]]\n";
            let _ = writeln!(s, "name = {}", q(name));
            let key = match p.action {
                ActionKind::Reply => "reply_via",
                ActionKind::Route => "route_via",
            };
            let _ = writeln!(s, "{key} = {}", q(&self.gateways[p.gateway].name));
            s += &render_match(&p.sel);
        }
        let mut taken: Vec<String> = names.to_vec();
        for sh in &self.shares {
            let mut name = sh.base_name.clone();
            let mut n = 2;
            while taken.contains(&name) {
                name = format!("{}-{n}", sh.base_name);
                n += 1;
            }
            taken.push(name.clone());
            s += "\n";
            for line in &sh.notes {
                s += &wrap(&sentence(line), "# ");
            }
            s += "[[policy]]\n";
            let _ = writeln!(s, "name = {}", q(&name));
            let weights: Vec<String> = sh
                .weights
                .iter()
                .map(|(g, w)| format!("{} = {w}", q(&self.gateways[*g].name)))
                .collect();
            let _ = writeln!(s, "route_via = {{ {} }}", weights.join(", "));
            s += &render_match(&sh.sel);
        }
        if let Some(d) = &self.divert {
            s += "\n";
            for n in &d.notes {
                s += &wrap(&sentence(n), "# ");
            }
            s += "[[divert]]\n";
            s += "name = \"divert\"\n";
            if !d.any_protocol {
                let v: Vec<&String> = d.protocols.iter().collect();
                if let [one] = v.as_slice() {
                    let _ = writeln!(s, "protocol = {}", q(one));
                } else {
                    let _ = writeln!(
                        s,
                        "protocol = [{}]",
                        v.iter().map(|x| q(x)).collect::<Vec<_>>().join(", ")
                    );
                }
            }
        }
        s
    }
}

/// A TOML basic string.
pub(super) fn q(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

pub(super) fn render_match(sel: &Sel) -> String {
    if sel.is_empty() {
        return String::new();
    }
    let mut s = String::from("[policy.match]\n");
    let net = |n: &IpNet| q(&n.to_string());
    let port = |(a, b): &(u16, u16)| {
        if a == b {
            a.to_string()
        } else {
            q(&format!("{a}-{b}"))
        }
    };
    let text = |x: &String| q(x);
    one_or_list(&mut s, "in_interface", &sel.in_interface, text);
    list(&mut s, "source_mac", &sel.source_mac, text);
    list(&mut s, "source", &sel.source, net);
    list(&mut s, "not_source", &sel.not_source, net);
    list(&mut s, "destination", &sel.destination, net);
    list(&mut s, "not_destination", &sel.not_destination, net);
    one_or_list(&mut s, "protocol", &sel.protocol, text);
    list(&mut s, "source_port", &sel.source_port, port);
    list(&mut s, "destination_port", &sel.destination_port, port);
    s
}

/// `key = [a, b]`; nothing for no items, which the config reads as "any".
fn list<T>(s: &mut String, key: &str, items: &[T], show: impl Fn(&T) -> String) {
    if !items.is_empty() {
        let all: Vec<String> = items.iter().map(show).collect();
        let _ = writeln!(s, "{key} = [{}]", all.join(", "));
    }
}

/// [`list`], but a single item bare (`key = a`): these keys also take one string.
fn one_or_list(s: &mut String, key: &str, items: &[String], show: impl Fn(&String) -> String) {
    match items {
        [one] => {
            let _ = writeln!(s, "{key} = {}", show(one));
        }
        _ => list(s, key, items, show),
    }
}

/// Words wrapped at 90 columns, each line starting with `prefix`; notes quote host names,
/// so their control characters are spelled out (`inert`).
pub(super) fn wrap(text: &str, prefix: &str) -> String {
    let mut out = String::new();
    let mut line = String::new();
    for w in text.split_whitespace().map(inert) {
        if !line.is_empty() && prefix.len() + line.len() + 1 + w.len() > 90 {
            let _ = writeln!(out, "{prefix}{line}");
            line.clear();
        }
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&w);
    }
    if !line.is_empty() {
        let _ = writeln!(out, "{prefix}{line}");
    }
    out
}
