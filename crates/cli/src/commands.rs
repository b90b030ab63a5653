//! Client commands: call the API, print the answer.

use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Result};
use tine_api::{
    Client, Endpoint, ExecFrame, ExecRequest, ForkFrom, ForkRequest, ForkTarget, RunRequest,
    SnapshotKind, SnapshotRequest,
};

use crate::args::{
    Cli, Command, ExecArgs, ForkArgs, Global, PoolCmd, RunArgs, SnapshotCmd, SystemCmd, TemplateCmd,
};
use crate::lines::{self, Lines};
use crate::output;
use crate::prometheus;

pub fn default_data_dir() -> PathBuf {
    if rustix::process::geteuid().is_root() {
        return PathBuf::from("/var/lib/tine");
    }
    if let Some(x) = std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        return PathBuf::from(x).join("tine");
    }
    let home = std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into());
    PathBuf::from(home).join(".local/share/tine")
}

fn client(g: &Global, data_dir: &std::path::Path) -> Client {
    match &g.host {
        Some(addr) => Client::new(Endpoint::Tcp {
            addr: addr.clone(),
            token: g.token.clone().unwrap_or_default(),
        }),
        None => Client::new(Endpoint::Unix(
            g.socket
                .clone()
                .unwrap_or_else(|| data_dir.join("tine.sock")),
        )),
    }
}

pub async fn dispatch(cli: Cli) -> Result<ExitCode> {
    let g = cli.global;
    let data_dir = g.data_dir.clone().unwrap_or_else(default_data_dir);
    let c = client(&g, &data_dir);
    let show = |i: &tine_api::InstanceInfo| {
        if g.json {
            output::json(i)
        } else {
            print!("{}", output::detail(i))
        }
    };
    match cli.command {
        Command::Serve(a) => crate::serve::serve(&g, a, &data_dir).await?,
        Command::Run(a) => {
            let info = c.run(&run_request(a)?).await?;
            if g.json {
                output::json(&info)
            } else {
                println!("{} {}", info.id, info.name);
            }
        }
        Command::Ps => {
            let list = c.list().await?;
            if g.json {
                output::json(&list)
            } else {
                print!("{}", output::table(&list));
            }
        }
        Command::Inspect { name } => show(&c.get(&name).await?),
        Command::Logs { name, follow } => logs(&c, g.json, &name, follow).await?,
        Command::Exec(a) => return exec(&c, g.json, a).await,
        Command::Fork(a) => return fork(&c, g.json, a).await,
        Command::Snapshot(cmd) => snapshot(&c, g.json, cmd).await?,
        Command::Template(cmd) => template(&c, g.json, cmd).await?,
        Command::Pool(cmd) => pool(&c, g.json, cmd).await?,
        Command::Metrics => {
            let text = c.metrics().await?;
            if g.json {
                output::json(&prometheus::parse(&text).map_err(anyhow::Error::msg)?)
            } else {
                print!("{text}")
            }
        }
        Command::Stop { name } => show(&c.action(&name, "stop").await?),
        Command::Start { name } => show(&c.action(&name, "start").await?),
        Command::Pause { name } => show(&c.action(&name, "pause").await?),
        Command::Resume { name } => show(&c.action(&name, "resume").await?),
        Command::Standby { name } => show(&c.action(&name, "standby").await?),
        Command::Restore { name } => show(&c.action(&name, "restore").await?),
        Command::System(SystemCmd::Cleanup) => {
            let report = c.system_cleanup().await?;
            if g.json {
                output::json(&report)
            } else {
                print!("{}", output::cleanup(&report))
            }
        }
        Command::Rm { force, names } => {
            if names.is_empty() {
                bail!("rm needs at least one instance name");
            }
            let mut removed = Vec::new();
            for n in &names {
                let info = c.remove(n, force).await?;
                if !g.json {
                    println!("{}", info.name);
                }
                removed.push(info);
            }
            if g.json {
                output::json(&removed);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The serial console: raw bytes, or with `--json` one `{"line": …}` per line.
async fn logs(c: &Client, json: bool, name: &str, follow: bool) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut splitter = json.then(Lines::default);
    c.logs(name, follow, |b| {
        match &mut splitter {
            Some(l) => l.push(b).iter().for_each(|s| {
                let _ = writeln!(stdout, "{}", lines::json(s));
            }),
            None => {
                let _ = stdout.write_all(b);
            }
        }
        let _ = stdout.flush();
    })
    .await?;
    if let Some(rest) = splitter.and_then(Lines::finish) {
        println!("{}", lines::json(&rest));
    }
    Ok(())
}

fn run_request(a: RunArgs) -> Result<RunRequest> {
    Ok(RunRequest {
        name: a.name,
        memory_mib: Some(output::parse_mib(&a.memory).map_err(anyhow::Error::msg)?),
        vcpus: Some(a.vcpus),
        image: Some(a.image),
        accel: a
            .accel
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
        network: a
            .network
            .as_deref()
            .map(str::parse)
            .transpose()
            .map_err(anyhow::Error::msg)?,
    })
}

async fn exec(c: &Client, json: bool, a: ExecArgs) -> Result<ExitCode> {
    let mut req = ExecRequest::new(a.argv);
    for kv in a.env {
        let Some((k, v)) = kv.split_once('=') else {
            bail!("--env wants KEY=VALUE, got {kv:?}")
        };
        req.env.insert(k.into(), v.into());
    }
    req.cwd = a.workdir;
    req.timeout_ms = a.timeout.map(|s| s * 1000);
    if a.interactive {
        let mut buf = Vec::new();
        std::io::stdin().read_to_end(&mut buf)?;
        req.stdin = Some(buf);
    }
    if json {
        let res = c.exec(&a.name, &req).await?;
        output::json(&res);
        return Ok(exit_code_of(res.exit_code, res.signal));
    }
    let mut code = ExitCode::from(1);
    let mut failure = None;
    c.exec_stream(&a.name, &req, |f| match f {
        ExecFrame::Stdout { data } => {
            let mut o = std::io::stdout();
            let _ = o.write_all(&data);
            let _ = o.flush();
        }
        ExecFrame::Stderr { data } => {
            let _ = std::io::stderr().write_all(&data);
        }
        ExecFrame::Exit {
            exit_code,
            signal,
            timed_out,
        } => {
            if timed_out {
                eprintln!("tine: command timed out");
            }
            code = exit_code_of(exit_code, signal);
        }
        ExecFrame::Error { error } => failure = Some(error),
    })
    .await?;
    if let Some(e) = failure {
        bail!("exec failed: {e}");
    }
    Ok(code)
}

fn exit_code_of(code: Option<i32>, signal: Option<i32>) -> ExitCode {
    match (code, signal) {
        (Some(c), _) => ExitCode::from(c.clamp(0, 255) as u8),
        (None, Some(s)) => ExitCode::from((128 + s).clamp(0, 255) as u8),
        _ => ExitCode::from(1),
    }
}

async fn fork(c: &Client, json: bool, a: ForkArgs) -> Result<ExitCode> {
    let target = match a.target.as_str() {
        "running" => ForkTarget::Running,
        "standby" => ForkTarget::Standby,
        "stopped" => ForkTarget::Stopped,
        other => bail!("unknown fork target {other:?} (running, standby or stopped)"),
    };
    let from = match (a.snapshot, a.template) {
        (true, _) => ForkFrom::Snapshot,
        (_, true) => ForkFrom::Template,
        _ => ForkFrom::Instance,
    };
    let req = ForkRequest {
        source: a.source,
        from,
        name: a.name,
        count: Some(a.count),
        from_running: a.from_running,
        target,
        parallel: Some(a.parallel),
    };
    let report = if json {
        c.fork(&req).await?
    } else {
        let total = a.count;
        let mut done = 0;
        eprintln!("forking {} x{total} ...", req.source);
        c.fork_stream(&req, |f| {
            done += 1;
            let what = f.error.as_deref().unwrap_or("ok");
            let ms = f
                .ready_ms
                .map(|v| format!(" ready {v:.0} ms"))
                .unwrap_or_default();
            eprintln!("  [{done}/{total}] {}{ms}: {what}", f.name);
        })
        .await?
    };
    if json {
        output::json(&report);
    } else {
        print!("{}", output::fork_table(&report));
    }
    Ok(if report.failed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

async fn snapshot(c: &Client, json: bool, cmd: SnapshotCmd) -> Result<()> {
    let show = |s: &tine_api::SnapshotInfo| {
        if json {
            output::json(s)
        } else {
            print!("{}", output::snapshot_detail(s))
        }
    };
    match cmd {
        SnapshotCmd::Create {
            instance,
            name,
            kind,
            compress,
        } => {
            let kind = match kind.as_str() {
                "standby" => SnapshotKind::Standby,
                "stopped" => SnapshotKind::Stopped,
                other => bail!("unknown snapshot kind {other:?} (standby or stopped)"),
            };
            let compress = compress.as_deref().map(parse_compress).transpose()?;
            show(
                &c.snapshot_create(&SnapshotRequest {
                    instance,
                    name,
                    kind,
                    compress,
                })
                .await?,
            );
        }
        SnapshotCmd::Ls => {
            let list = c.snapshot_list("snapshots").await?;
            if json {
                output::json(&list)
            } else {
                print!("{}", output::snapshot_table(&list))
            }
        }
        SnapshotCmd::Inspect { name, wait } => {
            show(&c.snapshot_get("snapshots", &name, wait).await?)
        }
        SnapshotCmd::Rm { name } => {
            let s = c.snapshot_remove("snapshots", &name).await?;
            if json {
                output::json(&s)
            } else {
                println!("{}", s.record.name)
            }
        }
        SnapshotCmd::Restore { name, into } => {
            let i = c.snapshot_restore(&name, &into).await?;
            if json {
                output::json(&i)
            } else {
                print!("{}", output::detail(&i))
            }
        }
    }
    Ok(())
}

/// "zstd" or "zstd:LEVEL" → level (default 3).
fn parse_compress(s: &str) -> Result<i32> {
    match s.split_once(':') {
        None if s == "zstd" => Ok(3),
        Some(("zstd", level)) => level
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid zstd level {level:?}")),
        _ => bail!("unknown compression {s:?} (zstd or zstd:LEVEL)"),
    }
}

async fn template(c: &Client, json: bool, cmd: TemplateCmd) -> Result<()> {
    let show = |s: &tine_api::SnapshotInfo| {
        if json {
            output::json(s)
        } else {
            print!("{}", output::snapshot_detail(s))
        }
    };
    match cmd {
        TemplateCmd::Promote { instance } => show(&c.template_promote(&instance).await?),
        TemplateCmd::Ls => {
            let list = c.snapshot_list("templates").await?;
            if json {
                output::json(&list)
            } else {
                print!("{}", output::snapshot_table(&list))
            }
        }
        TemplateCmd::Inspect { name } => show(&c.snapshot_get("templates", &name, false).await?),
        TemplateCmd::Rm { name } => {
            let s = c.snapshot_remove("templates", &name).await?;
            if json {
                output::json(&s)
            } else {
                println!("{}", s.record.name)
            }
        }
    }
    Ok(())
}

fn from_flags(snapshot: bool, template: bool) -> ForkFrom {
    match (snapshot, template) {
        (true, _) => ForkFrom::Snapshot,
        (_, true) => ForkFrom::Template,
        _ => ForkFrom::Instance,
    }
}

async fn pool(c: &Client, json: bool, cmd: PoolCmd) -> Result<()> {
    match cmd {
        PoolCmd::Set {
            source,
            size,
            snapshot,
            template,
        } => {
            let spec = tine_api::PoolSpec {
                from: from_flags(snapshot, template),
                source,
                size,
            };
            let p = c.pool_set(&spec).await?;
            if json {
                output::json(&p)
            } else {
                print!("{}", output::pool_table(&[p]))
            }
        }
        PoolCmd::Ls => {
            let list = c.pools().await?;
            if json {
                output::json(&list)
            } else {
                print!("{}", output::pool_table(&list))
            }
        }
        PoolCmd::Rm {
            source,
            snapshot,
            template,
        } => {
            let p = c
                .pool_remove(from_flags(snapshot, template), &source)
                .await?;
            if json {
                output::json(&p)
            } else {
                println!("{}", p.spec.source)
            }
        }
    }
    Ok(())
}
