//! The file as written: serde structs that keep byte spans so every error can name its
//! line and column. No meaning is checked here; `config::validate` does that.

use serde::Deserialize;
use toml::Spanned;

pub type Sp<T> = Spanned<T>;

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawConfig {
    #[serde(default)]
    pub settings: Option<Sp<RawSettings>>,
    #[serde(default)]
    pub gateway: Vec<Sp<RawGateway>>,
    #[serde(default)]
    pub policy: Vec<Sp<RawPolicy>>,
    #[serde(default)]
    pub divert: Vec<Sp<RawDivert>>,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawSettings {
    pub mark_mask: Option<Sp<toml::Value>>,
    pub first_table: Option<Sp<i64>>,
    pub first_priority: Option<Sp<i64>>,
    pub fallback_priority: Option<Sp<i64>>,
    pub metrics: Option<Sp<String>>,
    pub metrics_allow_remote: Option<Sp<bool>>,
    /// `symroute run`: command(s) run on each gateway up/down change (string or list).
    pub on_change: Option<Sp<toml::Value>>,
    /// `symroute run`: this box is one of an HA pair (keepalived + conntrackd).
    pub ha_pair: Option<Sp<bool>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub name: Sp<String>,
    /// Fixes the gateway's mark values and table (`plan::alloc`); derived from the name
    /// when absent.
    pub id: Option<Sp<i64>>,
    pub interface: Sp<String>,
    pub via: Option<Sp<String>>,
    pub via6: Option<Sp<String>>,
    pub check: Option<Sp<RawCheck>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCheck {
    pub targets: Sp<Vec<Sp<String>>>,
    pub interval: Option<Sp<String>>,
    pub timeout: Option<Sp<String>>,
    pub down: Option<Sp<String>>,
    pub up: Option<Sp<i64>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawPolicy {
    pub name: Sp<String>,
    pub reply_via: Option<Sp<String>>,
    pub route_via: Option<Sp<RawRouteVia>>,
    pub sticky: Option<Sp<String>>,
    #[serde(rename = "match")]
    pub matches: Option<Sp<RawMatch>>,
}

/// Every key takes one value or a list of them, so these stay `toml::Value` until validated.
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct RawMatch {
    pub in_interface: Option<Sp<toml::Value>>,
    pub source_mac: Option<Sp<toml::Value>>,
    pub source: Option<Sp<toml::Value>>,
    pub not_source: Option<Sp<toml::Value>>,
    pub destination: Option<Sp<toml::Value>>,
    pub not_destination: Option<Sp<toml::Value>>,
    pub protocol: Option<Sp<toml::Value>>,
    pub source_port: Option<Sp<toml::Value>>,
    pub destination_port: Option<Sp<toml::Value>>,
    pub user: Option<Sp<RawItems>>,
    pub cgroup: Option<Sp<RawItems>>,
}

/// One value or a list of them, each list item with its own span, so an error names the
/// item it is about (a user name that does not exist, a cgroup path nft cannot take).
#[derive(Debug)]
pub enum RawItems {
    One(toml::Value),
    Many(Vec<Sp<toml::Value>>),
}

impl<'de> Deserialize<'de> for RawItems {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawItems;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a value or a list of values")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawItems, E> {
                Ok(RawItems::One(toml::Value::String(v.to_string())))
            }
            fn visit_i64<E>(self, v: i64) -> Result<RawItems, E> {
                Ok(RawItems::One(toml::Value::Integer(v)))
            }
            fn visit_u64<E>(self, v: u64) -> Result<RawItems, E> {
                // Beyond i64: out of any range symroute accepts; keep it saturated.
                Ok(RawItems::One(toml::Value::Integer(
                    i64::try_from(v).unwrap_or(i64::MAX),
                )))
            }
            fn visit_f64<E>(self, v: f64) -> Result<RawItems, E> {
                Ok(RawItems::One(toml::Value::Float(v)))
            }
            fn visit_bool<E>(self, v: bool) -> Result<RawItems, E> {
                Ok(RawItems::One(toml::Value::Boolean(v)))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawItems, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawItems::Many(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawItems, A::Error> {
                // Drained for the message only ("found table").
                while map
                    .next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?
                    .is_some()
                {}
                Ok(RawItems::One(toml::Value::Table(Default::default())))
            }
        }
        d.deserialize_any(V)
    }
}

impl RawItems {
    /// Each item with its span (a single value takes the key's, `whole`).
    pub fn items(
        &self,
        whole: std::ops::Range<usize>,
    ) -> Vec<(&toml::Value, std::ops::Range<usize>)> {
        match self {
            RawItems::One(v) => vec![(v, whole)],
            RawItems::Many(items) => items.iter().map(|i| (i.get_ref(), i.span())).collect(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDivert {
    pub name: Sp<String>,
    pub protocol: Option<Sp<toml::Value>>,
}

/// `route_via`: one gateway, an ordered failover list, or a table of share weights. Read
/// by hand (not an untagged enum, which would lose the items' spans); item types are
/// checked by `config::validate`, so its messages, not serde's, explain them.
#[derive(Debug)]
pub enum RawRouteVia {
    One(String),
    List(Vec<Sp<toml::Value>>),
    Weights(Vec<(Sp<String>, Sp<toml::Value>)>),
    /// Any other type, named as TOML names it.
    Other(&'static str),
}

impl<'de> Deserialize<'de> for RawRouteVia {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = RawRouteVia;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a gateway name, a list of names, or a table of weights")
            }
            fn visit_str<E>(self, v: &str) -> Result<RawRouteVia, E> {
                Ok(RawRouteVia::One(v.to_string()))
            }
            fn visit_i64<E>(self, _: i64) -> Result<RawRouteVia, E> {
                Ok(RawRouteVia::Other("integer"))
            }
            fn visit_u64<E>(self, _: u64) -> Result<RawRouteVia, E> {
                Ok(RawRouteVia::Other("integer"))
            }
            fn visit_f64<E>(self, _: f64) -> Result<RawRouteVia, E> {
                Ok(RawRouteVia::Other("float"))
            }
            fn visit_bool<E>(self, _: bool) -> Result<RawRouteVia, E> {
                Ok(RawRouteVia::Other("boolean"))
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<RawRouteVia, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(RawRouteVia::List(items))
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<RawRouteVia, A::Error> {
                let mut items = Vec::new();
                while let Some(key) = map.next_key()? {
                    items.push((key, map.next_value()?));
                }
                Ok(RawRouteVia::Weights(items))
            }
        }
        d.deserialize_any(V)
    }
}
