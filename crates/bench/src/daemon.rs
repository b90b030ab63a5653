//! A real `tine serve` on a data directory of ours, and the few calls the
//! benchmark makes through its API (the same client the CLI uses).

use std::path::{Path, PathBuf};

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tine_api::{Client, Endpoint, ExecRequest, InstanceInfo, RunRequest};

use crate::cleanup;

pub struct Daemon {
    child: Child,
    pub client: Client,
    pub log: PathBuf,
}

pub struct DaemonOpts<'a> {
    pub tine: &'a Path,
    pub images_dir: &'a Path,
    pub qemu: &'a Path,
    pub network: &'a str,
}

impl Daemon {
    /// Start `tine serve --data-dir DIR --fork-memory MODE` and wait for its API.
    pub async fn start(o: &DaemonOpts<'_>, data_dir: &Path, fork_memory: &str) -> Result<Daemon> {
        std::fs::create_dir_all(data_dir)?;
        let log = data_dir.join("daemon-tine.log");
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let mut cmd = Command::new(o.tine);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--images-dir")
            .arg(o.images_dir)
            .arg("--qemu")
            .arg(o.qemu)
            .arg("--fork-memory")
            .arg(fork_memory)
            .arg("--network")
            .arg(o.network)
            // Bursts of 50 × 1 GiB forks of one source: measure density, not
            // the default admission budget (2 × MemTotal).
            .arg("--memory-overcommit")
            .arg("16")
            .env("TINE_LOG", "info")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out);
        // If the benchmark dies, so does its daemon (VMs are swept by pid later).
        // SAFETY: prctl is async-signal-safe; nothing else runs in the child.
        unsafe {
            use std::os::unix::process::CommandExt;
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("start {}", o.tine.display()))?;
        cleanup::add_daemon(child.id());
        let client = Client::new(Endpoint::Unix(data_dir.join("tine.sock")));
        let mut d = Daemon { child, client, log };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if d.client.health().await.is_ok() {
                return Ok(d);
            }
            if let Ok(Some(st)) = d.child.try_wait() {
                bail!("tine serve exited ({st}):\n{}", d.log_tail(20));
            }
            if Instant::now() > deadline {
                d.stop().await;
                bail!("tine serve did not answer within 30 s:\n{}", d.log_tail(20));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let v: Vec<&str> = text.lines().collect();
        v[v.len().saturating_sub(lines)..].join("\n")
    }

    /// SIGTERM (VMs keep running: remove them first) and reap.
    pub async fn stop(&mut self) {
        let pid = self.child.id();
        tokio::task::block_in_place(|| cleanup::terminate(pid as i32, Duration::from_secs(10)));
        let _ = self.child.wait();
        cleanup::remove_daemon(pid);
    }

    pub async fn run_vm(&self, name: &str, memory_mib: u32) -> Result<(InstanceInfo, f64)> {
        let req = RunRequest {
            name: Some(name.into()),
            memory_mib: Some(memory_mib),
            ..Default::default()
        };
        let t = Instant::now();
        let info = self
            .client
            .run(&req)
            .await
            .with_context(|| format!("tine run {name}"))?;
        Ok((info, ms(t)))
    }

    /// `sh -c SCRIPT` in the guest; fails unless it exits 0.
    pub async fn sh(&self, name: &str, script: &str) -> Result<String> {
        let mut req = ExecRequest::new(["sh", "-c", script]);
        req.timeout_ms = Some(600_000);
        let r = self
            .client
            .exec(name, &req)
            .await
            .with_context(|| format!("exec in {name}"))?;
        if r.exit_code != Some(0) {
            bail!(
                "`{script}` in {name} failed ({:?}/{:?}): {}",
                r.exit_code,
                r.signal,
                String::from_utf8_lossy(&r.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&r.stdout).into_owned())
    }

    /// Make the guest hold `mib` MiB of fresh data in memory (a tmpfs file:
    /// guest page cache that is never written back, i.e. guest RAM).
    pub async fn touch_memory(&self, name: &str, mib: u32) -> Result<()> {
        let script = if mib == 0 {
            "sync".to_string()
        } else {
            format!(
                "mount -o remount,size=90% /run && dd if=/dev/urandom of=/run/fill bs=1M count={mib} 2>/dev/null && \
                 test $(stat -c %s /run/fill) -eq $(({mib}*1048576)) && sync"
            )
        };
        self.sh(name, &script).await.map(drop)
    }

    pub async fn action(&self, name: &str, action: &str) -> Result<f64> {
        let t = Instant::now();
        self.client
            .action(name, action)
            .await
            .with_context(|| format!("tine {action} {name}"))?;
        Ok(ms(t))
    }

    /// Set a warm pool of `size` for `source` and wait until it is full.
    pub async fn pool_fill(
        &self,
        source: &str,
        size: u32,
        timeout: Duration,
    ) -> Result<tine_api::PoolInfo> {
        let spec = tine_api::PoolSpec {
            from: tine_api::ForkFrom::Instance,
            source: source.into(),
            size,
        };
        self.client
            .pool_set(&spec)
            .await
            .with_context(|| format!("pool for {source}"))?;
        let deadline = Instant::now() + timeout;
        loop {
            let pools = self.client.pools().await?;
            if let Some(p) = pools
                .into_iter()
                .find(|p| p.spec.source == source && p.ready >= size as usize)
            {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!(
                    "pool for {source} did not fill to {size} within {timeout:?}:\n{}",
                    self.log_tail(10)
                );
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn pool_remove(&self, source: &str) -> Result<()> {
        self.client
            .pool_remove(tine_api::ForkFrom::Instance, source)
            .await
            .with_context(|| format!("remove pool of {source}"))?;
        Ok(())
    }

    /// Remove instances (force), a few at a time.
    pub async fn remove(&self, names: &[String]) -> Result<()> {
        let mut errors = Vec::new();
        for chunk in names.chunks(8) {
            let calls = chunk.iter().map(|n| self.client.remove(n, true));
            for (n, r) in chunk.iter().zip(futures_join_all(calls).await) {
                if let Err(e) = r {
                    errors.push(format!("{n}: {e}"));
                }
            }
        }
        if !errors.is_empty() {
            bail!("rm failed: {}", errors.join("; "));
        }
        Ok(())
    }

    /// Remove every instance except `keep`.
    pub async fn remove_all_except(&self, keep: &[&str]) -> Result<()> {
        let list = self.client.list().await?;
        let names: Vec<String> = list
            .into_iter()
            .map(|i| i.name)
            .filter(|n| !keep.contains(&n.as_str()))
            .collect();
        self.remove(&names).await
    }
}

/// Await all futures concurrently, results in order.
pub async fn futures_join_all<F: std::future::Future>(
    futs: impl IntoIterator<Item = F>,
) -> Vec<F::Output> {
    let futs: Vec<_> = futs.into_iter().map(Box::pin).collect();
    let mut out: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    let mut pending: Vec<(usize, std::pin::Pin<Box<F>>)> = futs.into_iter().enumerate().collect();
    std::future::poll_fn(|cx| {
        pending.retain_mut(|(i, f)| match f.as_mut().poll(cx) {
            std::task::Poll::Ready(v) => {
                out[*i] = Some(v);
                false
            }
            std::task::Poll::Pending => true,
        });
        if pending.is_empty() {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(|o| o.expect("all done")).collect()
}

pub fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}
