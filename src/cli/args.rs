//! Flags several subcommands share: the config file, the network namespace, and the
//! host state `explain`, `doctor` and `import` read.

use std::path::PathBuf;

use symroute::config;
use symroute::explain::host::HostState;
use symroute::kernel;
use symroute::model::Model;

// No doc comment on these structs: clap would take it as the about text of every
// subcommand that flattens them.
#[derive(clap::Args, Debug, Clone)]
pub struct ConfigArg {
    /// Config file [default: /etc/symroute/symroute.toml]
    #[arg(
        short = 'c',
        long = "config",
        env = "SYMROUTE_CONFIG",
        value_name = "FILE"
    )]
    pub config: Option<PathBuf>,
}

impl ConfigArg {
    /// The file named, or the default.
    pub fn path(&self) -> PathBuf {
        self.config
            .clone()
            .unwrap_or_else(|| PathBuf::from(config::DEFAULT_PATH))
    }

    pub fn load(&self) -> anyhow::Result<Model> {
        Ok(symroute::config_file::load(&self.path())?)
    }

    /// `load`, refusing `on_change` hooks others could rewrite (`run`, `check`).
    pub fn load_trusted(&self) -> anyhow::Result<Model> {
        Ok(symroute::config_file::load_trusted(&self.path())?)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct NetnsArg {
    /// Act inside this network namespace (a name from `ip netns list`)
    #[arg(long, value_name = "NAME")]
    pub netns: Option<String>,
}

impl NetnsArg {
    pub fn enter(&self) -> anyhow::Result<()> {
        if let Some(ns) = &self.netns {
            kernel::netns::enter(ns)?;
        }
        Ok(())
    }

    /// [`Self::enter`] for the commands that read the host's state: table names come
    /// from the namespace's own `/etc/netns/NAME/iproute2` when it has one, as under
    /// `ip netns exec NAME`.
    pub fn enter_reading(&self) -> anyhow::Result<()> {
        if let Some(ns) = &self.netns {
            if let Some(note) = kernel::netns::enter_with_etc(ns)? {
                eprintln!("symroute: note: {note}");
            }
        }
        Ok(())
    }
}

// What plan, apply, run and status act on: a config file, in a network namespace.
#[derive(clap::Args, Debug, Clone)]
pub struct Scope {
    #[command(flatten)]
    pub config: ConfigArg,
    #[command(flatten)]
    pub netns: NetnsArg,
}

impl Scope {
    /// The config, read where the command started (a relative path means from there),
    /// then the namespace entered.
    pub fn load_and_enter(&self) -> anyhow::Result<Model> {
        let m = self.config.load()?;
        self.netns.enter()?;
        Ok(m)
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct HostArgs {
    /// Read the state from a snapshot directory (see `symroute snapshot`)
    #[arg(long, value_name = "DIR", conflicts_with = "netns")]
    from: Option<PathBuf>,
    #[command(flatten)]
    netns: NetnsArg,
}

impl HostArgs {
    /// Whether the state is this host's live kernel (no `--from`).
    pub fn live(&self) -> bool {
        self.from.is_none()
    }

    /// The state: a snapshot (`--from DIR`), else the live kernel of the namespace.
    pub fn load(&self) -> anyhow::Result<HostState> {
        Ok(match &self.from {
            Some(dir) => {
                let loaded = kernel::snapshot::load(dir)?;
                for m in &loaded.missing {
                    eprintln!(
                        "symroute: note: {}/{m} is missing; that part of the state is empty",
                        dir.display()
                    );
                }
                HostState::from_files(&loaded.files, loaded.missing, &dir.display().to_string())?
            }
            None => {
                self.netns.enter_reading()?;
                let c = kernel::snapshot::capture();
                for (m, why) in &c.missing {
                    eprintln!("symroute: note: could not read {m}: {why}");
                }
                HostState::from_files(&c.files, c.missing.keys().cloned().collect(), "live")?
            }
        })
    }
}
