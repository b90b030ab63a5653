//! The console log's cap end to end: a guest floods its serial console,
//! the daemon keeps console.log small and `tine logs` shows the newest lines.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::fs::MetadataExt;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::{dir_of, Daemon};

const CAP: u64 = 1 << 20;

#[test]
fn a_flooded_console_log_stays_near_its_cap_and_logs_show_the_newest_lines() {
    let d = Daemon::start_with_args(None, &["--console-log-max-mib", "1"]);
    d.ok(&["run", "--name", "spam"]);
    let log = dir_of(&d, "spam").join("console.log");
    let mut follower = d
        .command(&["logs", "-f", "spam"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let out = follower.stdout.take().unwrap();
    let followed = std::thread::spawn(move || {
        BufReader::new(out)
            .lines()
            .map_while(Result::ok)
            .filter_map(|l| l.strip_prefix("n ")?.get(..5)?.parse::<u32>().ok())
            .collect::<Vec<u32>>()
    });

    // 60000 lines of 100 bytes: 6 MB, six times the cap.
    let pad = "x".repeat(92);
    d.sh(
        "spam",
        &format!("seq -w 1 60000 | sed 's/^/n /; s/$/ {pad}/' > /dev/ttyS0"),
    );
    d.sh("spam", "echo console-marker-$((6*7)) > /dev/ttyS0");
    let disk = wait_trimmed(&log);
    let logs = d.ok(&["logs", "spam"]);
    let trims = d.ok(&["metrics"]);
    let answers = d.sh("spam", "echo ok");
    d.ok(&["rm", "-f", "spam"]);
    let seen = followed.join().unwrap();
    let status = follower.wait().unwrap();

    assert!(disk < 2 * CAP, "console.log holds {disk} bytes on disk");
    let last = logs.lines().last().unwrap_or_default();
    assert_eq!(last.trim_end(), "console-marker-42");
    let first = logs.lines().next().unwrap_or_default();
    assert!(first.starts_with("n "), "partial first line: {first:?}");
    // Up to the cap plus what the guest wrote since the last sweep.
    assert!((logs.len() as u64) < 2 * CAP, "{} bytes shown", logs.len());
    assert!(
        !trims.contains("tine_console_trims_total 0"),
        "no trim counted"
    );
    assert_eq!(answers, "ok\n");
    // A trim moves offsets: a follower must neither repeat nor reorder.
    assert!(
        seen.windows(2).all(|w| w[0] < w[1]),
        "follower repeated lines"
    );
    assert_eq!(seen.last(), Some(&60000));
    assert!(status.success(), "logs -f ended with {status}");
}

/// Allocated bytes of `log` once a sweep (every 2 s) has trimmed it.
fn wait_trimmed(log: &std::path::Path) -> u64 {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let disk = std::fs::metadata(log).unwrap().blocks() * 512;
        if disk < 2 * CAP || Instant::now() > deadline {
            return disk;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}
