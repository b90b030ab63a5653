//! Command-line syntax.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(name = "tine", version, about = "Fork microVMs fast and safely")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Args, Debug, Clone)]
pub struct Global {
    /// Data directory (default: /var/lib/tine as root, $XDG_DATA_HOME/tine otherwise).
    #[arg(long, global = true, env = "TINE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// API socket (default: DATA_DIR/tine.sock).
    #[arg(long, global = true, env = "TINE_SOCKET")]
    pub socket: Option<PathBuf>,
    /// Talk to a daemon over TCP (host:port) instead of the Unix socket.
    #[arg(long, global = true, env = "TINE_HOST")]
    pub host: Option<String>,
    /// Bearer token for --host / the TCP listener.
    #[arg(long, global = true, env = "TINE_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon (HTTP/JSON API on a Unix socket, optional TCP).
    Serve(ServeArgs),
    /// Create and boot an instance; returns once its guest agent answers.
    Run(RunArgs),
    /// List instances.
    Ps,
    /// Show one instance.
    Inspect { name: String },
    /// Print an instance's serial console (--json: one {"line": …} object per line).
    Logs {
        name: String,
        /// Keep printing what the console writes.
        #[arg(short, long)]
        follow: bool,
    },
    /// Run a command in the guest; exits with its status.
    Exec(ExecArgs),
    /// Fork an instance in standby (or a running one with --from-running).
    Fork(ForkArgs),
    /// Named, immutable snapshots of an instance.
    #[command(subcommand)]
    Snapshot(SnapshotCmd),
    /// Templates: standby instances promoted to immutable fork sources.
    #[command(subcommand)]
    Template(TemplateCmd),
    /// Print the daemon's metrics: Prometheus text (--json: an array of
    /// {"name", "labels", "value"} samples).
    Metrics,
    /// Warm pools: forks prepared ahead of requests (QEMU started, state pending).
    #[command(subcommand)]
    Pool(PoolCmd),
    /// Stop an instance (the disk is kept).
    Stop { name: String },
    /// Start a stopped instance (or restore one in standby).
    Start { name: String },
    /// Pause an instance's vCPUs.
    Pause { name: String },
    /// Resume a paused instance.
    Resume { name: String },
    /// Park an instance on disk: device state saved, RAM in its memory file, no process.
    Standby { name: String },
    /// Bring an instance in standby back where it was.
    Restore { name: String },
    /// Remove an instance and its files.
    Rm {
        /// Stop it first if it is running.
        #[arg(short, long)]
        force: bool,
        names: Vec<String>,
    },
    /// Host-wide housekeeping.
    #[command(subcommand)]
    System(SystemCmd),
}

#[derive(Subcommand, Debug)]
pub enum SystemCmd {
    /// Remove TAP devices no instance owns and, when no instance holds an
    /// address, the bridge, NAT rules and the forwarding tine turned on.
    Cleanup,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    /// Guest images directory (default: DATA_DIR/images).
    #[arg(long, env = "TINE_IMAGES_DIR")]
    pub images_dir: Option<PathBuf>,
    /// Accelerator for new VMs: kvm or tcg (default: detect).
    #[arg(long, env = "TINE_ACCEL")]
    pub accel: Option<String>,
    /// Also listen on TCP at this address (requires --token).
    #[arg(long)]
    pub listen_tcp: Option<std::net::SocketAddr>,
    /// QEMU binary.
    #[arg(long, env = "TINE_QEMU", default_value = "qemu-system-x86_64")]
    pub qemu: PathBuf,
    /// How forks get their memory file: link (default), copy or full-copy (benchmark baselines).
    #[arg(long, default_value = "link", hide = true)]
    pub fork_memory: String,
    /// Seconds to wait for a booting guest's agent.
    #[arg(long, default_value_t = 180)]
    pub boot_timeout: u64,
    /// Instances' network: default (bridge + NAT) or none (no NICs at all).
    #[arg(long, env = "TINE_NETWORK", default_value = "default")]
    pub network: String,
    /// Guest subnet, a private IPv4 range (default: the saved one, else 10.209.0.0/16).
    #[arg(long, env = "TINE_SUBNET")]
    pub subnet: Option<String>,
    /// Bridge device (default: the saved one, else tine0).
    #[arg(long, env = "TINE_BRIDGE")]
    pub bridge: Option<String>,
    /// Name servers for guests, comma-separated (default: the host's).
    #[arg(long, env = "TINE_DNS", value_delimiter = ',')]
    pub dns: Option<Vec<String>>,
    /// Most vCPUs one instance may have (default: the host's CPU count).
    #[arg(long, env = "TINE_MAX_VCPUS")]
    pub max_vcpus: Option<u32>,
    /// Most memory one instance may have, e.g. 4G (default: host MemTotal).
    #[arg(long, env = "TINE_MAX_MEMORY", value_parser = crate::output::parse_mib)]
    pub max_memory: Option<u32>,
    /// Guest memory of all live VMs may add up to RATIO × host MemTotal
    /// (forks share their source's pages, so above 1 is sane).
    #[arg(long, env = "TINE_MEMORY_OVERCOMMIT", default_value_t = tine_manager::admission::DEFAULT_OVERCOMMIT)]
    pub memory_overcommit: f64,
    /// Free space standby, snapshot and fork must leave in the data directory, e.g. 256M.
    #[arg(long, env = "TINE_DISK_RESERVE", value_parser = crate::output::parse_mib, default_value = "256M")]
    pub disk_reserve: u32,
    /// Most MiB a live VM's console.log keeps on disk; past it the oldest
    /// output is dropped, keeping the newest half.
    #[arg(long, env = "TINE_CONSOLE_LOG_MAX_MIB", default_value_t = (tine_manager::console::DEFAULT_MAX >> 20) as u32)]
    pub console_log_max_mib: u32,
}

#[derive(Args, Debug)]
pub struct RunArgs {
    #[arg(long)]
    pub name: Option<String>,
    /// Guest memory, e.g. 256M or 1G (a bare number is MiB).
    #[arg(long, default_value = "256M")]
    pub memory: String,
    #[arg(long, default_value_t = 1)]
    pub vcpus: u32,
    #[arg(long, default_value = "default")]
    pub image: String,
    /// Accelerator for this VM: kvm or tcg (default: the daemon's choice).
    #[arg(long)]
    pub accel: Option<String>,
    /// default (a TAP on the tine bridge, an address, NAT) or none
    /// (default: the daemon's choice).
    #[arg(long)]
    pub network: Option<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    pub name: String,
    /// Environment variable for the command (repeatable).
    #[arg(short, long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Working directory in the guest.
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Send this process's stdin to the command.
    #[arg(short, long)]
    pub interactive: bool,
    /// Kill the command after this many seconds.
    #[arg(long)]
    pub timeout: Option<u64>,
    /// The command and its arguments (after --).
    #[arg(last = true, required = true)]
    pub argv: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum SnapshotCmd {
    /// Snapshot an instance (a running one pauses briefly).
    Create {
        instance: String,
        #[arg(long)]
        name: String,
        /// standby (memory + devices + disk) or stopped (disk only).
        #[arg(long, default_value = "standby")]
        kind: String,
        /// Compress the memory file afterwards: zstd or zstd:LEVEL.
        #[arg(long)]
        compress: Option<String>,
    },
    /// List snapshots.
    Ls,
    /// Show a snapshot.
    Inspect {
        name: String,
        /// Wait for a running compression to finish first.
        #[arg(long)]
        wait: bool,
    },
    /// Delete a snapshot (forks made from it keep working).
    Rm { name: String },
    /// Put a snapshot's state into an instance (created if missing).
    Restore {
        name: String,
        #[arg(long)]
        into: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum PoolCmd {
    /// Keep SIZE forks of SOURCE ready (standby instance, --snapshot or --template).
    Set {
        source: String,
        #[arg(long)]
        size: u32,
        #[arg(long, conflicts_with = "template")]
        snapshot: bool,
        #[arg(long)]
        template: bool,
    },
    /// List pools: ready entries, hits, misses, memory held.
    Ls,
    /// Remove a pool and its waiting VMs.
    Rm {
        source: String,
        #[arg(long, conflicts_with = "template")]
        snapshot: bool,
        #[arg(long)]
        template: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum TemplateCmd {
    /// Turn a standby instance into a template (the instance is removed).
    Promote { instance: String },
    /// List templates with their live fork counts.
    Ls,
    /// Show a template.
    Inspect { name: String },
    /// Delete a template (refused while forks of it exist).
    Rm { name: String },
}

#[derive(Args, Debug)]
pub struct ForkArgs {
    /// The source instance (or snapshot/template name with --snapshot/--template).
    pub source: String,
    /// The source is a snapshot.
    #[arg(long, conflicts_with = "template")]
    pub snapshot: bool,
    /// The source is a template.
    #[arg(long)]
    pub template: bool,
    /// Name of the fork (with --count: NAME-1 … NAME-N; a name containing
    /// {i} is a template, e.g. --name 'web-{i}-a').
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub count: u32,
    /// Fork a running instance: it pauses while its state is captured.
    #[arg(long)]
    pub from_running: bool,
    /// State of the new forks: running, standby or stopped.
    #[arg(long, default_value = "running")]
    pub target: String,
    /// Forks made at once: each holds its slot until it is ready (its agent
    /// answered and its identity is applied), warm-pool claims included.
    #[arg(long, default_value_t = 4)]
    pub parallel: u32,
}
