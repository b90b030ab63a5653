//! `tine serve`: open the manager and serve the API until SIGINT/SIGTERM.
//! VMs are separate processes and keep running when the daemon stops.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tine_api::Listeners;
use tine_hypervisor::qemu::Qemu;
use tine_manager::{Config, Manager};
use tracing::warn;

use crate::args::{Global, ServeArgs};

pub async fn serve(g: &Global, a: ServeArgs, data_dir: &Path) -> Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_from_env("TINE_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let mut cfg = Config::new(data_dir.to_path_buf());
    cfg.limits = limits(&a)?;
    if let Some(d) = a.images_dir {
        cfg.images_dir = d;
    }
    cfg.accel = a
        .accel
        .as_deref()
        .map(str::parse)
        .transpose()
        .map_err(anyhow::Error::msg)?;
    cfg.boot_timeout = Duration::from_secs(a.boot_timeout);
    anyhow::ensure!(
        a.console_log_max_mib >= 1,
        "--console-log-max-mib must be at least 1"
    );
    cfg.console_log_max = u64::from(a.console_log_max_mib) << 20;
    cfg.fork_memory = a.fork_memory.parse().map_err(anyhow::Error::msg)?;
    let network: tine_manager::network::NetworkMode =
        a.network.parse().map_err(anyhow::Error::msg)?;
    cfg.network = tine_manager::network::NetworkOptions {
        enabled: network == tine_manager::network::NetworkMode::Default,
        subnet: a.subnet,
        bridge: a.bridge,
        dns: a.dns,
    };
    let hv = Arc::new(Qemu::new(a.qemu));
    let mgr = Manager::open(cfg, hv)
        .await
        .context("cannot open the data directory")?;
    let l = &mgr.config().limits;
    tracing::info!(
        max_vcpus = l.max_vcpus,
        max_memory_mib = l.max_memory_mib,
        memory_budget_mib = (l.memory_overcommit * l.host_memory_mib as f64) as u64,
        disk_reserve_mib = l.disk_reserve >> 20,
        "admission limits"
    );
    if let Some(w) = &mgr.accel().warning {
        warn!("{w}");
        eprintln!("warning: {w}");
    }
    let socket = g
        .socket
        .clone()
        .unwrap_or_else(|| data_dir.join("tine.sock"));
    let listeners = Listeners {
        unix: socket,
        tcp: a.listen_tcp,
        token: g.token.clone(),
    };
    tine_api::serve(mgr, listeners, shutdown_signal()).await?;
    Ok(())
}

fn limits(a: &ServeArgs) -> Result<tine_manager::admission::Limits> {
    let mut l = tine_manager::admission::Limits::detect();
    if let Some(v) = a.max_vcpus {
        anyhow::ensure!(v >= 1, "--max-vcpus must be at least 1");
        l.max_vcpus = v;
    }
    if let Some(m) = a.max_memory {
        anyhow::ensure!(
            m >= tine_manager::MIN_MEMORY_MIB,
            "--max-memory must be at least {} MiB",
            tine_manager::MIN_MEMORY_MIB
        );
        l.max_memory_mib = m;
    }
    let r = a.memory_overcommit;
    anyhow::ensure!(
        r.is_finite() && r > 0.0,
        "--memory-overcommit must be a ratio above 0, e.g. 1.5"
    );
    l.memory_overcommit = r;
    l.disk_reserve = u64::from(a.disk_reserve) << 20;
    Ok(l)
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
