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
    /// `symroute run`: command(s) run on each gateway up/down change (string or list).
    pub on_change: Option<Sp<toml::Value>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawGateway {
    pub name: Sp<String>,
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
    pub route_via: Option<Sp<String>>,
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
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDivert {
    pub name: Sp<String>,
    pub protocol: Option<Sp<toml::Value>>,
}
