//! Load: 20 concurrent API clients issue mixed operations for a bounded
//! time against three VMs — `a` (running: exec, pause/resume, snapshots),
//! `b` (running: exec, standby/restore, snapshots, forks while parked) and
//! `s` (standby: the fork source) — over the HTTP API on the Unix socket.
//!
//! Checked: every request returns (a hang fails at the socket's read
//! timeout); every error is a 4xx with a message; every success reports
//! the state its operation leads to and no instance is ever in error; no
//! update is lost (successful pauses minus resumes, standbys minus
//! restores, forks minus removals and snapshots minus deletions match what
//! the daemon reports at the end); afterwards every VM answers exec and no
//! VM process, instance directory or snapshot is left over.

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{inode, qemu_processes, Daemon};
use serde_json::{json, Value};

const CLIENTS: usize = 20;
const RUN_FOR: Duration = Duration::from_secs(60);
/// A request taking longer than this is a hang.
const HANG: Duration = Duration::from_secs(300);
/// Live forks at most (each is a QEMU under TCG on a small machine).
const MAX_FORKS: usize = 4;

/// One HTTP/1.1 request on the daemon's Unix socket: (status, JSON body).
fn call(sock: &Path, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut s = UnixStream::connect(sock).unwrap();
    s.set_read_timeout(Some(HANG)).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let head = format!(
        "{method} {path} HTTP/1.1\r\nHost: tine\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        panic!("{method} {path} did not return ({e}): a hang");
    }
    let text = String::from_utf8(raw).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    assert!(
        !head.to_ascii_lowercase().contains("chunked"),
        "{method} {path}: unexpected stream"
    );
    (status, serde_json::from_str(body).unwrap_or(Value::Null))
}

#[derive(Default)]
struct Tally {
    /// op → (ok, refused with a 4xx)
    ops: BTreeMap<&'static str, (u64, u64)>,
    /// "op status kind" → count
    errors: BTreeMap<String, u64>,
    /// What must not happen, with the request that did it.
    wrong: Vec<String>,
}

struct Shared {
    sock: PathBuf,
    tally: Mutex<Tally>,
    forks: Mutex<Vec<String>>,
    live_forks: AtomicUsize,
}

impl Shared {
    /// Record an answer: `want` is the state a success must report.
    fn check(&self, op: &'static str, (status, body): (u16, Value), want: Option<&str>) -> bool {
        let mut t = self.tally.lock().unwrap();
        let entry = t.ops.entry(op).or_default();
        if (200..300).contains(&status) {
            entry.0 += 1;
            if let Some(w) = want {
                if body["state"] != w {
                    t.wrong.push(format!("{op}: succeeded but reports {body}"));
                }
            }
            return true;
        }
        entry.1 += 1;
        let kind = body["kind"].as_str().unwrap_or("?").to_string();
        *t.errors.entry(format!("{op} {status} {kind}")).or_default() += 1;
        let message = body["error"].as_str().unwrap_or("");
        if !(400..500).contains(&status) || message.is_empty() {
            t.wrong.push(format!("{op}: {status} {body}"));
        }
        false
    }

    fn wrong(&self, what: String) {
        self.tally.lock().unwrap().wrong.push(what);
    }
}

/// xorshift64: each client's own reproducible sequence of operations.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

fn client(sh: Arc<Shared>, id: usize, until: Instant) {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ (id as u64 + 1));
    let sock = sh.sock.clone();
    let post = |path: &str, body: Value| call(&sock, "POST", path, Some(body));
    let mut n = 0;
    while Instant::now() < until {
        n += 1;
        let vm = ["a", "b"][rng.below(2) as usize];
        match rng.below(11) {
            0 => {
                let (status, list) = call(&sock, "GET", "/v1/instances", None);
                sh.check("ps", (status, Value::Null), None);
                for i in list.as_array().unwrap() {
                    let state = i["state"].as_str().unwrap();
                    if !["created", "running", "paused", "standby"].contains(&state) {
                        sh.wrong(format!("ps shows {} {state}: {i}", i["name"]));
                    }
                }
            }
            1 => {
                let r = call(&sock, "GET", &format!("/v1/instances/{vm}"), None);
                let state = r.1["state"].clone();
                sh.check("inspect", r, None);
                if state == "error" {
                    sh.wrong(format!("{vm} is in error"));
                }
            }
            2 => {
                let r = post(
                    &format!("/v1/instances/{vm}/exec"),
                    json!({ "argv": ["echo", "hi"] }),
                );
                let out = r.1["stdout"].clone();
                if sh.check("exec", r, None) && out != "aGkK" {
                    sh.wrong(format!("exec in {vm} printed {out}"));
                }
            }
            3 => {
                sh.check(
                    "pause",
                    call(&sock, "POST", "/v1/instances/a/pause", None),
                    Some("paused"),
                );
            }
            4 => {
                sh.check(
                    "resume",
                    call(&sock, "POST", "/v1/instances/a/resume", None),
                    Some("running"),
                );
            }
            5 => {
                sh.check(
                    "standby",
                    call(&sock, "POST", "/v1/instances/b/standby", None),
                    Some("standby"),
                );
            }
            6 => {
                sh.check(
                    "restore",
                    call(&sock, "POST", "/v1/instances/b/restore", None),
                    Some("running"),
                );
            }
            7 | 8 if sh.live_forks.fetch_add(1, Ordering::SeqCst) < MAX_FORKS => {
                let source = if rng.below(2) == 0 { "s" } else { "b" };
                let name = format!("f{id}-{n}");
                let r = post(
                    &format!("/v1/instances/{source}/fork"),
                    json!({ "source": source, "name": name }),
                );
                let made = r.1["ok"] == 1;
                let outcome = r.1["forks"][0].clone();
                if sh.check("fork", r, None) {
                    if made && outcome["instance"]["state"] == "running" {
                        sh.forks.lock().unwrap().push(name);
                        continue;
                    }
                    // Refused inside the report (e.g. the source was restored meanwhile).
                    sh.wrong(format!("fork from {source} reported {outcome}"));
                }
                sh.live_forks.fetch_sub(1, Ordering::SeqCst);
            }
            7 | 8 => {
                sh.live_forks.fetch_sub(1, Ordering::SeqCst);
                let victim = sh.forks.lock().unwrap().pop();
                if let Some(f) = victim {
                    let r = call(
                        &sock,
                        "DELETE",
                        &format!("/v1/instances/{f}?force=true"),
                        None,
                    );
                    sh.check("rm fork", r, None);
                    sh.live_forks.fetch_sub(1, Ordering::SeqCst);
                }
            }
            _ => {
                let name = format!("snap{id}-{n}");
                let r = call(
                    &sock,
                    "POST",
                    "/v1/snapshots",
                    Some(json!({ "instance": vm, "name": name })),
                );
                if sh.check("snapshot", r, None) {
                    let r = call(&sock, "DELETE", &format!("/v1/snapshots/{name}"), None);
                    sh.check("snapshot rm", r, None);
                }
            }
        }
    }
}

#[test]
fn twenty_clients_of_mixed_operations_lose_nothing_and_leave_healthy_vms() {
    let d = Daemon::start();
    for vm in ["a", "b", "s"] {
        d.ok(&["run", "--name", vm]);
    }
    d.ok(&["standby", "s"]);
    let sh = Arc::new(Shared {
        sock: d.data_dir.join("tine.sock"),
        tally: Mutex::default(),
        forks: Mutex::default(),
        live_forks: AtomicUsize::new(0),
    });

    let until = Instant::now() + RUN_FOR;
    let clients: Vec<_> = (0..CLIENTS)
        .map(|id| {
            let sh = sh.clone();
            std::thread::spawn(move || client(sh, id, until))
        })
        .collect();
    std::thread::sleep(until.saturating_duration_since(Instant::now()));
    // An exec accepted just before a pause waits for the resume: resume
    // until the last requests are answered.
    while !clients.iter().all(|c| c.is_finished()) {
        let r = call(&sh.sock, "POST", "/v1/instances/a/resume", None);
        sh.check("resume", r, Some("running"));
        std::thread::sleep(Duration::from_millis(200));
    }
    let panicked = clients
        .into_iter()
        .map(|c| c.join())
        .filter(Result::is_err)
        .count();
    assert_eq!(panicked, 0, "clients failed; daemon log:\n{}", d.log());

    let t = sh.tally.lock().unwrap();
    println!(
        "operations (ok, refused): {:#?}\nerrors: {:#?}",
        t.ops, t.errors
    );
    assert!(
        t.wrong.is_empty(),
        "{} wrong answers:\n{}",
        t.wrong.len(),
        t.wrong.join("\n")
    );
    let count = |op: &str| t.ops.get(op).map_or(0, |c| c.0 as i64);
    let state = |name: &str| d.state(name);
    assert_eq!(
        count("pause") - count("resume"),
        i64::from(state("a") == "paused"),
        "pauses vs resumes"
    );
    assert_eq!(
        count("standby") - count("restore"),
        i64::from(state("b") == "standby"),
        "standbys vs restores"
    );
    let mut forks = sh.forks.lock().unwrap().clone();
    forks.sort();
    let listed: Vec<String> = common::names(&d)
        .into_iter()
        .filter(|n| n.starts_with('f'))
        .collect();
    assert_eq!(listed, forks, "forks listed vs forks made and not removed");
    assert_eq!(count("fork") - count("rm fork"), forks.len() as i64);
    assert_eq!(count("snapshot"), count("snapshot rm"));
    assert_eq!(
        d.json(&["snapshot", "ls"]),
        json!([]),
        "snapshots made minus deleted"
    );
    for op in [
        "ps", "exec", "pause", "resume", "standby", "restore", "fork", "snapshot",
    ] {
        assert!(
            count(op) > 0,
            "no {op} succeeded: the mix did not exercise it"
        );
    }

    for f in &forks {
        assert_eq!(d.sh(f, "echo ok"), "ok\n");
        d.ok(&["rm", "-f", f]);
    }
    if state("a") == "paused" {
        d.ok(&["resume", "a"]);
    }
    if state("b") == "standby" {
        d.ok(&["restore", "b"]);
    }
    assert_eq!(
        inode(&common::dir_of(&d, "s").join("memory")).1,
        1,
        "s's memory file has no other links"
    );
    d.ok(&["restore", "s"]);
    for vm in ["a", "b", "s"] {
        assert_eq!(d.sh(vm, "echo ok"), "ok\n");
    }
    assert_eq!(common::names(&d), vec!["a", "b", "s"]);
    assert_eq!(qemu_processes(&d), 3);
    assert_eq!(common::instance_dirs(&d), 3);
    assert_eq!(
        std::fs::read_dir(d.data_dir.join("snapshots"))
            .unwrap()
            .count(),
        0
    );
}

// Races the load test found, made deterministic.

#[test]
fn a_paused_vm_can_be_captured_twice_and_then_parked() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "p"]);
    d.ok(&["pause", "p"]);

    d.ok(&["snapshot", "create", "p", "--name", "one"]);
    d.ok(&["snapshot", "create", "p", "--name", "two"]);
    d.ok(&["standby", "p"]);

    d.ok(&["restore", "p"]);
    assert_eq!(d.sh("p", "echo ok"), "ok\n");
}

#[test]
fn an_exec_cut_off_by_a_standby_is_refused_with_409_not_502() {
    let d = Daemon::start();
    d.ok(&["run", "--name", "e"]);
    let sock = d.data_dir.join("tine.sock");
    let exec = std::thread::spawn(move || {
        let argv = json!(["sh", "-c", "touch /run/started; sleep 600"]);
        call(
            &sock,
            "POST",
            "/v1/instances/e/exec",
            Some(json!({ "argv": argv })),
        )
    });
    let deadline = Instant::now() + HANG;
    while d
        .sh("e", "test -e /run/started && echo y || true")
        .is_empty()
    {
        assert!(Instant::now() < deadline, "the exec never started");
        std::thread::sleep(Duration::from_millis(50));
    }

    d.ok(&["standby", "e"]);
    let (status, body) = exec.join().unwrap();

    assert_eq!(status, 409, "{body}");
    assert!(
        body["error"]
            .as_str()
            .unwrap()
            .contains("became standby while the command ran"),
        "{body}"
    );
}
