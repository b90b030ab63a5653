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
        "{:<14} {:<20} {:<9} {:>7} {:>5} {:<5} {:>8}\n",
        "ID", "NAME", "STATE", "MEMORY", "VCPU", "ACCEL", "PID"
    );
    for i in instances {
        let pid = i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into());
        let _ = writeln!(
            out,
            "{:<14} {:<20} {:<9} {:>6}M {:>5} {:<5} {:>8}",
            i.id,
            i.name,
            i.state.as_str(),
            i.memory_mib,
            i.vcpus,
            i.accel.as_str(),
            pid
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
    let _ = writeln!(out, "pid:        {}", i.pid.map(|p| p.to_string()).unwrap_or_else(|| "-".into()));
    if let Some(ms) = i.boot_ms {
        let _ = writeln!(out, "boot:       {ms:.0} ms");
    }
    if let Some(e) = &i.error {
        let _ = writeln!(out, "error:      {e}");
    }
    let _ = writeln!(out, "directory:  {}", i.dir.display());
    out
}

pub fn fork_table(r: &tine_api::ForkReport) -> String {
    let ms = |v: Option<f64>| v.map(|x| format!("{x:.1}")).unwrap_or_else(|| "-".into());
    let mut out = format!("{:<24} {:<14} {:>11} {:>9}  {}\n", "NAME", "ID", "RUNNING_MS", "READY_MS", "RESULT");
    for f in &r.forks {
        let id = f.instance.as_ref().map(|i| i.id.as_str()).unwrap_or("-");
        let result = f.error.as_deref().unwrap_or("ok");
        let _ = writeln!(out, "{:<24} {:<14} {:>11} {:>9}  {}", f.name, id, ms(f.running_ms), ms(f.ready_ms), result);
    }
    let _ = writeln!(out, "{} ok, {} failed in {:.1} ms", r.ok, r.failed, r.wall_ms);
    if let Some(p) = r.source_pause_ms {
        let _ = writeln!(out, "source paused {p:.1} ms");
    }
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
    let n: u64 = num.parse().map_err(|_| format!("invalid memory size {s:?} (use e.g. 256M or 1G)"))?;
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
