//! The examples are what users copy: every `examples/*.toml` passes `symroute check`, and
//! `examples/full.toml` names every key the config knows. The key list is not written
//! here: it comes from the config's own serde structs (`config::raw`, all
//! `deny_unknown_fields`), which list their fields in the error for a key they do not
//! know. So a field added to the config without an entry in full.toml fails this test.
//! No root needed.

use crate::support;

use std::collections::BTreeSet;

use symroute::config::raw::RawConfig;
use toml::Value;

#[test]
fn every_example_passes_check() {
    let mut names = Vec::new();
    for entry in std::fs::read_dir("examples").expect("examples/") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            let p = path.to_str().expect("utf-8").to_string();
            let run = support::symroute(&["check", "-c", &p]);
            assert_eq!(run.code, 0, "{p}:\n{}{}", run.stdout, run.stderr);
            names.push(p);
        }
    }
    for new in [
        "home-router-dhcp.toml",
        "vps-two-uplinks.toml",
        "wireguard.toml",
        "full.toml",
    ] {
        assert!(names.iter().any(|n| n.ends_with(new)), "{new}: {names:?}");
    }
}

/// The fields the raw struct at `path` (table keys from the root; an array of tables is
/// entered at an item that has the next key) declares, read from serde's "unknown field" error for a
/// probe key put there (in an array of tables, the first item where the rest of the path
/// leads to a table). `None`: what is there is not a struct (a map, like `route_via`'s
/// weights, takes any key).
fn declared_fields(doc: &Value, path: &[String]) -> Option<Vec<String>> {
    const PROBE: &str = "zz_not_a_symroute_key";
    let mut probed = doc.clone();
    let mut at = &mut probed;
    for (i, key) in path.iter().enumerate() {
        at = match at.get_mut(key.as_str()).expect("a key full.toml has") {
            Value::Array(items) => items
                .iter_mut()
                .find(|item| values_at(item, &path[i + 1..]).iter().any(|v| v.is_table()))
                .expect("an item with the rest of the path"),
            v => v,
        };
    }
    if !at.is_table() {
        return None;
    }
    at.as_table_mut()
        .expect("a table")
        .insert(PROBE.into(), Value::Integer(1));
    let text = toml::to_string(&probed).expect("serialise");
    let err = match toml::from_str::<RawConfig>(&text) {
        Ok(_) => return None,
        Err(e) => e.message().to_string(),
    };
    assert!(
        err.starts_with(&format!("unknown field `{PROBE}`")),
        "{path:?}: {err}"
    );
    let expected = err.split_once("expected").map_or("", |(_, e)| e);
    Some(
        expected
            .split('`')
            .skip(1)
            .step_by(2)
            .map(str::to_string)
            .collect(),
    )
}

/// The values of `key` in the table at `path`, across all items of arrays of tables.
fn values_at<'a>(doc: &'a Value, path: &[String]) -> Vec<&'a Value> {
    let mut here = vec![doc];
    for key in path {
        here = here
            .into_iter()
            .filter_map(|v| v.get(key.as_str()))
            .flat_map(|v| match v {
                Value::Array(items) if items.iter().all(Value::is_table) => items.iter().collect(),
                v => vec![v],
            })
            .collect();
    }
    here
}

#[test]
fn full_toml_names_every_field_of_the_config() {
    let text = std::fs::read_to_string("examples/full.toml").expect("read full.toml");
    let doc: Value = toml::from_str(&text).expect("full.toml is TOML");
    toml::from_str::<RawConfig>(&text).expect("full.toml reads as the config");
    let mut missing = Vec::new();
    let mut seen = BTreeSet::new();
    let mut todo: Vec<Vec<String>> = vec![vec![]];
    while let Some(path) = todo.pop() {
        let Some(fields) = declared_fields(&doc, &path) else {
            continue;
        };
        assert!(!fields.is_empty(), "{path:?}: no fields read");
        for f in fields {
            let mut sub = path.clone();
            sub.push(f.clone());
            let values = values_at(&doc, &sub);
            if values.is_empty() {
                missing.push(sub.join("."));
                continue;
            }
            seen.insert(sub.join("."));
            if values.iter().any(|v| v.is_table()) {
                todo.push(sub);
            }
        }
    }
    assert!(
        missing.is_empty(),
        "examples/full.toml lacks {missing:?} (it should show every key)"
    );
    // The walk reached the nested structs, and the keys the issue found missing.
    for key in [
        "settings.metrics",
        "settings.on_change",
        "gateway.check.targets",
        "gateway.check.up",
        "policy.sticky",
        "policy.match.source_mac",
        "divert.protocol",
    ] {
        assert!(seen.contains(key), "{key} not walked: {seen:?}");
    }
    assert!(
        text.contains("via = \"auto\""),
        "full.toml shows via = \"auto\""
    );
}
