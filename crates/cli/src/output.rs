//! Human and JSON output.

use std::fmt::Write;

use tine_api::InstanceInfo;

pub fn error_chain(e: &anyhow::Error) -> String {
    let mut out = e.to_string();
    for cause in e.chain().skip(1) {
        let s = cause.to_string();
        if !out.contains(&s) {
            let _ = write!(out, ": {s}");
        }
    }
    out
}

pub fn json<T: serde::Serialize>(v: &T) {
    println!("{}", serde_json::to_string_pretty(v).expect("json"));
}

pub fn table(instances: &[InstanceInfo]) -> String {
    let mut out = format!(
        "{:<14} {:<20} {:<9} {:>7} {:>5} {:<5} {:>8} {:<15} {}\n",
        "ID", "NAME", "STATE", "MEMORY", "VCPU", "ACCEL", "PID", "IP", "MAC"
    );
    for i in instances {
        let pid = i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let (ip, mac) = match &i.network {
            Some(n) => (n.ip.to_string(), n.mac.as_str()),
            None => ("-".into(), "-"),
        };
        let _ = writeln!(
            out,
            "{:<14} {:<20} {:<9} {:>6}M {:>5} {:<5} {:>8} {:<15} {}",
            i.id,
            i.name,
            i.state.as_str(),
            i.memory_mib,
            i.vcpus,
            i.accel.as_str(),
            pid,
            ip,
            mac
        );
    }
    out
}

pub fn detail(i: &InstanceInfo) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "id:         {}", i.id);
    let _ = writeln!(out, "name:       {}", i.name);
    let _ = writeln!(out, "state:      {}", i.state);
    let _ = writeln!(out, "image:      {}", i.image);
    let _ = writeln!(out, "memory:     {} MiB", i.memory_mib);
    let _ = writeln!(out, "vcpus:      {}", i.vcpus);
    let _ = writeln!(out, "accel:      {}", i.accel.as_str());
    let _ = writeln!(
        out,
        "pid:        {}",
        i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into())
    );
    if let Some(ms) = i.boot_ms {
        let _ = writeln!(out, "boot:       {ms:.0} ms");
    }
    match &i.network {
        Some(n) => {
            let _ = writeln!(
                out,
                "ip:         {}/{} (gateway {})",
                n.ip, n.prefix, n.gateway
            );
            let _ = writeln!(out, "mac:        {}", n.mac);
            let _ = writeln!(out, "tap:        {}", n.tap);
        }
        None => {
            let _ = writeln!(out, "network:    none");
        }
    }
    if let Some(e) = &i.error {
        let _ = writeln!(out, "error:      {e}");
    }
    let _ = writeln!(out, "directory:  {}", i.dir.display());
    out
}

pub fn cleanup(r: &tine_api::CleanupReport) -> String {
    let mut out = String::new();
    let taps = if r.taps_removed.is_empty() {
        "none".to_string()
    } else {
        r.taps_removed.join(" ")
    };
    let _ = writeln!(out, "stale TAPs removed: {taps}");
    let yes = |b: bool| if b { "removed" } else { "absent" };
    match &r.kept {
        Some(why) => {
            let _ = writeln!(out, "bridge and NAT rules kept: {why}");
        }
        None => {
            let _ = writeln!(
                out,
                "bridge: {}, NAT rules: {}",
                yes(r.bridge_removed),
                yes(r.nat_removed)
            );
            if r.forwarding_restored {
                let _ = writeln!(
                    out,
                    "IPv4 forwarding turned off again (tine had turned it on)"
                );
            }
        }
    }
    out
}

pub fn fork_table(r: &tine_api::ForkReport) -> String {
    let ms = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let mut out = format!(
        "{:<24} {:<14} {:>11} {:>9}  {}\n",
        "NAME", "ID", "RUNNING_MS", "READY_MS", "RESULT"
    );
    for f in &r.forks {
        let id = f.instance.as_ref().map(|i| i.id.as_str()).unwrap_or("-");
        let result = f.error.as_deref().unwrap_or("ok");
        let _ = writeln!(
            out,
            "{:<24} {:<14} {:>11} {:>9}  {}",
            f.name,
            id,
            ms(f.running_ms),
            ms(f.ready_ms),
            result
        );
    }
    let _ = writeln!(
        out,
        "{} ok, {} failed in {:.1} ms",
        r.ok, r.failed, r.wall_ms
    );
    if let Some(p) = r.source_pause_ms {
        let _ = writeln!(out, "source paused {p:.1} ms");
    }
    out
}

pub fn pool_table(list: &[tine_api::PoolInfo]) -> String {
    let mut out = format!(
        "{:<10} {:<20} {:>5} {:>6} {:>6} {:>7} {:>9}\n",
        "KIND", "SOURCE", "SIZE", "READY", "HITS", "MISSES", "RSS_MIB"
    );
    for p in list {
        let _ = writeln!(
            out,
            "{:<10} {:<20} {:>5} {:>6} {:>6} {:>7} {:>9.1}",
            format!("{:?}", p.spec.from).to_lowercase(),
            p.spec.source,
            p.spec.size,
            p.ready,
            p.hits,
            p.misses,
            p.rss_bytes as f64 / 1048576.0
        );
    }
    out
}

pub fn snapshot_table(list: &[tine_api::SnapshotInfo]) -> String {
    let mut out = format!(
        "{:<14} {:<20} {:<8} {:<16} {:>7} {:<12} {:>9} {:>5}\n",
        "ID", "NAME", "KIND", "SOURCE", "MEMORY", "COMPRESSION", "DISK_MIB", "FORKS"
    );
    for s in list {
        let r = &s.record;
        let _ = writeln!(
            out,
            "{:<14} {:<20} {:<8} {:<16} {:>6}M {:<12} {:>9.1} {:>5}",
            r.id,
            r.name,
            format!("{:?}", r.kind).to_lowercase(),
            r.source,
            r.memory_mib,
            format!("{:?}", r.compression.state).to_lowercase(),
            s.disk_bytes as f64 / (1 << 20) as f64,
            s.forks
        );
    }
    out
}

pub fn snapshot_detail(s: &tine_api::SnapshotInfo) -> String {
    let r = &s.record;
    let mut out = String::new();
    let _ = writeln!(out, "id:          {}", r.id);
    let _ = writeln!(out, "name:        {}", r.name);
    let _ = writeln!(
        out,
        "kind:        {}{}",
        format!("{:?}", r.kind).to_lowercase(),
        if r.template { " (template)" } else { "" }
    );
    let _ = writeln!(out, "source:      {}", r.source);
    let _ = writeln!(
        out,
        "memory:      {} MiB, {} vcpus, image {}",
        r.memory_mib, r.vcpus, r.image
    );
    let c = &r.compression;
    let _ = writeln!(
        out,
        "compression: {}{}",
        format!("{:?}", c.state).to_lowercase(),
        match (c.raw_bytes, c.compressed_bytes) {
            (Some(a), Some(b)) => format!(
                " ({:.1} MiB -> {:.1} MiB)",
                a as f64 / 1048576.0,
                b as f64 / 1048576.0
            ),
            _ => String::new(),
        }
    );
    if let Some(e) = &c.error {
        let _ = writeln!(out, "  error:     {e}");
    }
    if r.template {
        let _ = writeln!(out, "forks:       {}", s.forks);
    }
    let _ = writeln!(
        out,
        "disk:        {:.1} MiB allocated",
        s.disk_bytes as f64 / 1048576.0
    );
    let _ = writeln!(out, "directory:   {}", s.dir.display());
    out
}

/// "256M", "1G", "512" (MiB) → MiB.
pub fn parse_mib(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'M' | 'm')) => (&t[..i], 1u64),
        Some((i, 'G' | 'g')) => (&t[..i], 1024),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("invalid memory size {s:?} (use e.g. 256M or 1G)"))?;
    u32::try_from(n * mult).map_err(|_| format!("memory size {s:?} is too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse_with_and_without_units() {
        assert_eq!(parse_mib("256M"), Ok(256));
        assert_eq!(parse_mib("1G"), Ok(1024));
        assert_eq!(parse_mib("512"), Ok(512));
        assert!(parse_mib("lots").is_err());
        assert!(parse_mib("-1M").is_err());
    }
}
