//! The agent in a real QEMU TCG guest, driven through the host client. Run as root.

mod common;

use std::time::{Duration, Instant};

use common::{image, Vm};
use tine_agent_proto::{
    AgentClient, AgentError, ErrorCode, ExecEvent, ExecRequest, PROTOCOL_VERSION,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;

fn sh(script: &str) -> ExecRequest {
    ExecRequest::new(["sh", "-c", script])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exec_reports_output_and_exit_status() {
    let vm = Vm::start(image());
    let (agent, pong) = vm.ready().await;

    let hi = agent.exec(ExecRequest::new(["echo", "hi"])).await.unwrap();
    let failing = agent.exec(sh("echo err >&2; exit 3")).await.unwrap();
    let mut cat = sh("cat; pwd; echo $FOO");
    cat.stdin = Some(b"in\n".to_vec());
    cat.cwd = Some("/tmp".into());
    cat.env.insert("FOO".into(), "bar".into());
    let piped = agent.exec(cat).await.unwrap();
    let mut sleeper = ExecRequest::new(["sleep", "30"]);
    sleeper.timeout_ms = Some(300);
    let killed = agent.exec(sleeper).await.unwrap();
    let missing = agent
        .exec(ExecRequest::new(["/no/such/program"]))
        .await
        .unwrap_err();

    assert_eq!(pong.protocol_version, PROTOCOL_VERSION);
    assert_eq!(pong.boot_id.len(), 36, "boot id {:?}", pong.boot_id);
    assert_eq!(
        (hi.stdout.as_slice(), hi.stderr.as_slice()),
        (&b"hi\n"[..], &b""[..])
    );
    assert_eq!(hi.status.code, Some(0));
    assert_eq!(
        (failing.stdout.as_slice(), failing.stderr.as_slice()),
        (&b""[..], &b"err\n"[..])
    );
    assert_eq!(failing.status.code, Some(3));
    assert_eq!(piped.stdout, b"in\n/tmp\nbar\n");
    assert_eq!(
        (killed.status.signal, killed.status.timed_out),
        (Some(9), true)
    );
    assert!(
        matches!(
            missing,
            AgentError::Remote {
                code: ErrorCode::SpawnFailed,
                ..
            }
        ),
        "{missing:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_execs_run_in_parallel_and_stream() {
    let vm = Vm::start(image());
    let (agent, _) = vm.ready().await;
    let start = Instant::now();

    // Each waits for the other's marker file, so they only finish if both run at once.
    let a = agent.exec(sh(
        "touch /tmp/a; while [ ! -e /tmp/b ]; do sleep 0.05; done; echo a",
    ));
    let b = agent.exec(sh(
        "touch /tmp/b; while [ ! -e /tmp/a ]; do sleep 0.05; done; echo b",
    ));
    let (a, b) = tokio::time::timeout(Duration::from_secs(60), async { tokio::join!(a, b) })
        .await
        .expect("concurrent execs deadlocked");
    let mut stream = agent
        .exec_stream(sh("echo one; sleep 0.2; echo two >&2"))
        .await
        .unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    let big = agent.exec(sh("head -c 300000 /dev/zero")).await.unwrap();

    assert_eq!(a.unwrap().stdout, b"a\n");
    assert_eq!(b.unwrap().stdout, b"b\n");
    assert!(start.elapsed() < Duration::from_secs(60));
    assert_eq!(
        events,
        vec![
            ExecEvent::Stdout(b"one\n".to_vec()),
            ExecEvent::Stderr(b"two\n".to_vec()),
            ExecEvent::Exit(tine_agent_proto::ExitStatus {
                code: Some(0),
                signal: None,
                timed_out: false
            }),
        ]
    );
    assert_eq!(big.stdout.len(), 300_000);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_survives_disconnects_and_bad_input() {
    let vm = Vm::start(image());
    let (agent, first) = vm.ready().await;
    // Leave a command running and a half-written line behind, then hang up.
    let _orphan = agent.exec_stream(sh("sleep 1; echo stale")).await.unwrap();
    drop(agent);
    let mut raw = UnixStream::connect(vm.agent_sock()).await.unwrap();
    raw.write_all(b"{\"id\":1,\"op\":\"pi").await.unwrap();
    drop(raw);

    // A raw session: garbage, an unknown op and an oversized line each get an error.
    let raw = UnixStream::connect(vm.agent_sock()).await.unwrap();
    let (read, mut write) = raw.into_split();
    let mut lines = BufReader::new(read).lines();
    write
        .write_all(b"\nnot json\n{\"id\":7,\"op\":\"fly\"}\n")
        .await
        .unwrap();
    write
        .write_all(&vec![b'x'; tine_agent_proto::MAX_LINE + 10])
        .await
        .unwrap();
    write
        .write_all(b"\n{\"id\":8,\"op\":\"ping\"}\n")
        .await
        .unwrap();
    // Collect until the ping's answer, which comes last.
    let mut replies = Vec::new();
    loop {
        let line = tokio::time::timeout(Duration::from_secs(30), lines.next_line()).await;
        let line = line
            .expect("agent went quiet")
            .unwrap()
            .expect("agent hung up");
        let Ok(frame) = serde_json::from_str::<serde_json::Value>(&line) else {
            continue;
        };
        let reply = (
            frame["id"].as_u64(),
            frame["type"].as_str().map(str::to_owned),
            frame["code"].as_str().map(str::to_owned),
        );
        let last = reply.0 == Some(8);
        replies.push(reply);
        if last {
            break;
        }
    }
    drop((lines, write));

    let (again, second) = vm.ready().await;
    let after = again.exec(sh("sleep 1.5; echo fresh")).await.unwrap();

    // Frames of the earlier session (other ids, or an error about the half-written line,
    // if the agent saw both sessions as one) may be interleaved; clients ignore those.
    let expect = |id: Option<u64>, kind: &str, code: Option<&str>| {
        let want = (id, Some(kind.to_owned()), code.map(str::to_owned));
        assert!(replies.contains(&want), "no {want:?} in {replies:?}");
    };
    expect(None, "error", Some("bad_request"));
    expect(Some(7), "error", Some("bad_request"));
    expect(None, "error", Some("too_large"));
    expect(Some(8), "pong", None);
    assert_eq!(
        first.boot_id, second.boot_id,
        "agent must not reboot the guest"
    );
    assert_eq!(
        after.stdout, b"fresh\n",
        "late output of an earlier session must not leak"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_clock_entropy_and_files_are_applied() {
    let vm = Vm::start(image());
    let (agent, _) = vm.ready().await;
    let machine_id = "0123456789abcdef0123456789abcdef";
    let first_boot = agent
        .exec(sh("cat /etc/machine-id; hostname; ip -o link show lo"))
        .await
        .unwrap();

    agent
        .set_identity(Some("fork-7"), Some(machine_id))
        .await
        .unwrap();
    agent.set_time(2_000_000_000_000_000_000).await.unwrap();
    let date = agent
        .exec(ExecRequest::new(["date", "-u", "+%Y"]))
        .await
        .unwrap();
    agent.sync_clock().await.unwrap();
    let entropy = [0x5a_u8; 64];
    agent.add_entropy(&entropy).await.unwrap();
    let hostname = agent.exec(ExecRequest::new(["hostname"])).await.unwrap();
    let ids = agent
        .exec(sh("cat /etc/machine-id /etc/hostname"))
        .await
        .unwrap();
    let random = agent
        .exec(sh("head -c 16 /dev/urandom | od -An -tx1"))
        .await
        .unwrap();
    agent
        .write_file("/root/note", b"\x00bin\xff", Some(0o600))
        .await
        .unwrap();
    let note = agent.read_file("/root/note").await.unwrap();
    let mode = agent
        .exec(ExecRequest::new(["stat", "-c", "%a", "/root/note"]))
        .await
        .unwrap();
    let bad_id = agent.set_identity(None, Some("nope")).await.unwrap_err();
    let bad_entropy = agent.add_entropy(&[]).await.unwrap_err();
    agent.sync().await.unwrap();

    let first_boot = String::from_utf8(first_boot.stdout).unwrap();
    let mut first_boot = first_boot.lines();
    let generated_id = first_boot.next().unwrap();
    assert!(
        generated_id.len() == 32 && generated_id.bytes().all(|b| b.is_ascii_hexdigit()),
        "{generated_id:?}"
    );
    assert_eq!(first_boot.next(), Some("tine"));
    assert!(
        first_boot.next().unwrap().contains("UP"),
        "loopback is down"
    );
    assert_eq!(date.stdout, b"2033\n");
    assert_eq!(hostname.stdout, b"fork-7\n");
    assert_eq!(ids.stdout, format!("{machine_id}\nfork-7\n").as_bytes());
    assert_eq!(random.status.code, Some(0));
    assert_eq!(note, b"\x00bin\xff");
    assert_eq!(mode.stdout, b"600\n");
    assert!(matches!(
        bad_id,
        AgentError::Remote {
            code: ErrorCode::InvalidArgument,
            ..
        }
    ));
    assert!(matches!(
        bad_entropy,
        AgentError::Remote {
            code: ErrorCode::InvalidArgument,
            ..
        }
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_powers_the_guest_off() {
    let mut vm = Vm::start(image());
    let (agent, _) = vm.ready().await;

    agent.shutdown().await.unwrap();
    let exited = vm.wait_exit(Duration::from_secs(60));
    let after = agent.ping().await;

    assert!(exited, "QEMU still running after shutdown");
    assert!(
        matches!(after, Err(AgentError::Disconnected | AgentError::Io(_))),
        "{after:?}"
    );
}

#[tokio::test]
async fn connect_to_missing_socket_fails_fast() {
    let dir = tempfile::tempdir().unwrap();

    let err = AgentClient::wait_ready(&dir.path().join("none.sock"), Duration::from_millis(200))
        .await
        .err()
        .unwrap();

    assert!(matches!(err, AgentError::NotReady { .. }), "{err:?}");
}
