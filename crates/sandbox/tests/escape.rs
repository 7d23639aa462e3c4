//! The escape suite: what a hostile command would try, each attempt expected to fail. Every
//! attempt is checked from both sides where it can be (what the command saw, and that the host
//! is unchanged), and the suite prints how many it tried and how many were contained.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::TcpListener;
use std::os::unix::net::UnixListener;
use std::time::Duration;

use common::*;
use nightshift_sandbox::{ExitStatus, Limit, Limits, NamespacedSession, SandboxSession};

struct Suite {
    results: Vec<(&'static str, bool, String)>,
}

impl Suite {
    fn check(&mut self, name: &'static str, contained: bool, detail: impl Into<String>) {
        eprintln!(
            "escape attempt: {name}: {}",
            if contained { "contained" } else { "ESCAPED" }
        );
        self.results.push((name, contained, detail.into()));
    }

    fn finish(self) {
        let contained = self.results.iter().filter(|(_, ok, _)| *ok).count();
        for (name, ok, detail) in &self.results {
            let mark = if *ok { "contained" } else { "ESCAPED" };
            println!("{mark:>9}  {name}: {}", detail.trim());
        }
        println!(
            "escape suite: {} attempted, {} contained",
            self.results.len(),
            contained
        );
        let escaped: Vec<_> = self
            .results
            .iter()
            .filter(|(_, ok, _)| !ok)
            .map(|r| r.0)
            .collect();
        assert!(escaped.is_empty(), "escapes: {escaped:?}");
    }
}

fn descendants(init: i32) -> Vec<i32> {
    let mut found = Vec::new();
    let mut stack = vec![init];
    while let Some(pid) = stack.pop() {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            continue;
        };
        for task in tasks.flatten() {
            let children =
                std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
            for child in children.split_whitespace().filter_map(|c| c.parse().ok()) {
                found.push(child);
                stack.push(child);
            }
        }
    }
    found
}

async fn fails(session: &NamespacedSession, command: &str) -> (bool, String) {
    let out = run_for(session, command, Duration::from_secs(20)).await;
    (
        !out.status.success(),
        format!("{:?}: {}", out.status, out.output),
    )
}

#[tokio::test]
async fn escape_suite() {
    let mut suite = Suite {
        results: Vec::new(),
    };
    let fixture = Fixture::with_limits(Limits {
        memory_bytes: Some(256 << 20),
        pids: Some(128),
        workspace_bytes: Some(64 << 20),
        tmp_bytes: 32 << 20,
        ..Limits::default()
    });
    let session = fixture.start().await;

    // Writing outside the workspace.
    let marker = format!("nightshift-escape-{}", std::process::id());
    let (failed, detail) = fails(
        &session,
        &format!("echo x > /etc/{marker} || echo x > /usr/{marker} || echo x > /{marker} || echo x > /proc/{marker}; echo x > /etc/{marker}"),
    )
    .await;
    let host_untouched = ["/etc", "/usr", "/"]
        .iter()
        .all(|d| !std::path::Path::new(d).join(&marker).exists());
    suite.check(
        "write outside the workspace",
        failed && host_untouched,
        detail,
    );

    // Reading the host's home, /root and secrets.
    let home = std::env::var("HOME").unwrap_or_else(|_| "/root".into());
    let secret_path = std::path::Path::new(&home).join(format!(".{marker}"));
    std::fs::write(&secret_path, "host-secret-value").unwrap();
    let out = run(
        &session,
        &format!(
            "cat {} /root/.bashrc /etc/shadow 2>&1; ls /home /root 2>&1",
            secret_path.display()
        ),
    )
    .await;
    let _ = std::fs::remove_file(&secret_path);
    let leaked = out.output.contains("host-secret-value") || out.output.contains("root:");
    suite.check(
        "read the host's home, /root and /etc/shadow",
        !leaked,
        out.output.clone(),
    );

    // Another session's workspace.
    let other = Fixture::new();
    let other_session = other.start().await;
    run(&other_session, "echo other-session-secret > secret.txt").await;
    let out = run(
        &session,
        &format!(
            "cat /proc/*/root/workspace/secret.txt {0}/*/upper/secret.txt {1}/secret.txt 2>&1; ls /proc | grep -c '^[0-9]'",
            other.state.path().display(),
            other.workspace.path().display()
        ),
    )
    .await;
    suite.check(
        "read another session's workspace",
        !out.output.contains("other-session-secret"),
        out.output.clone(),
    );
    other_session.close().await.unwrap();

    // A host loopback port.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let port = listener.local_addr().unwrap().port();
    let (failed, detail) = fails(
        &session,
        &format!("exec 3<>/dev/tcp/127.0.0.1/{port} && echo connected"),
    )
    .await;
    let accepted = listener.accept().is_ok();
    suite.check(
        "connect to a host loopback port",
        failed && !accepted,
        detail,
    );

    // DNS and the outside world.
    let (failed, detail) = fails(&session, "getent hosts example.com || getent hosts localhost.localdomain.invalid || (exec 3<>/dev/tcp/1.1.1.1/53)").await;
    suite.check("DNS and direct connections out", failed, detail);

    // A host that is not allowlisted, through the proxy of an allowlisting session.
    let proxied = fixture
        .start_with(nightshift_sandbox::SessionOptions {
            network: Some(nightshift_sandbox::NetworkPolicy::Allow(vec![
                "allowed.invalid".into(),
            ])),
            ..Default::default()
        })
        .await;
    let out = run(&proxied, &format!("exec 3<>/dev/tcp/127.0.0.1/3128; printf 'CONNECT 127.0.0.1:{port} HTTP/1.1\\r\\n\\r\\n' >&3; cat <&3; (exec 4<>/dev/tcp/127.0.0.1/{port}) 2>&1")).await;
    let accepted = listener.accept().is_ok();
    suite.check(
        "reach a non-allowlisted host through the proxy",
        out.output.contains("403 Forbidden") && !accepted,
        out.output.clone(),
    );
    proxied.close().await.unwrap();

    // A host loopback port that the (repository's) allowlist names, under several spellings:
    // the host's configuration does not allow it.
    let named = fixture
        .start_with(nightshift_sandbox::SessionOptions {
            network: Some(nightshift_sandbox::NetworkPolicy::Allow(vec![
                format!("127.0.0.1:{port}"),
                format!("localhost:{port}"),
                format!("[::ffff:127.0.0.1]:{port}"),
                format!("0.0.0.0:{port}"),
            ])),
            ..Default::default()
        })
        .await;
    let out = run(&named, &format!("for t in 127.0.0.1:{port} localhost:{port} '[::ffff:127.0.0.1]:{port}' 0.0.0.0:{port}; do exec 3<>/dev/tcp/127.0.0.1/3128; printf \"CONNECT $t HTTP/1.1\\r\\n\\r\\n\" >&3; head -c 12 <&3; echo; exec 3<&-; done; exec 3<>/dev/tcp/127.0.0.1/3128; printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\\r\\n\\r\\n' >&3; head -c 12 <&3")).await;
    let accepted = listener.accept().is_ok();
    suite.check(
        "reach a host loopback port the allowlist names",
        out.output.matches("HTTP/1.1 403").count() == 5 && !accepted,
        out.output.clone(),
    );
    named.close().await.unwrap();

    // A secret the proxy adds for a host: nowhere inside (environment, files, processes, the
    // CA bundle), and not sent over plain HTTP to a server the sandbox controls.
    let canary = "escape-canary-5f1e7c";
    // The host allows its loopback port here, so that the request does reach the server.
    let allowing = Fixture::with_config(|config| {
        config.allow_private = vec![format!("127.0.0.1:{port}")];
    });
    let holding = allowing
        .start_with(nightshift_sandbox::SessionOptions {
            network: Some(nightshift_sandbox::NetworkPolicy::Allow(vec![format!(
                "127.0.0.1:{port}"
            )])),
            credentials: vec![nightshift_sandbox::Credential {
                name: "CANARY".into(),
                hosts: vec![format!("127.0.0.1:{port}")],
                header: "Authorization".into(),
                value: format!("Bearer {canary}"),
            }],
            ..Default::default()
        })
        .await;
    let out = run(
        &holding,
        &format!(
            // The command line names the canary only in two halves, so that reading the
            // processes' command lines does not find this command itself.
            "env; cat /proc/*/environ /proc/*/cmdline 2>/dev/null | tr '\\0' '\\n'; half=escape-canary; grep -rsl \"$half-5f1e7c\" /run /tmp /workspace /etc/ssl /dev/shm; exec 3<>/dev/tcp/127.0.0.1/3128; printf 'GET http://127.0.0.1:{port}/ HTTP/1.1\\r\\nHost: 127.0.0.1\\r\\n\\r\\n' >&3; echo sent"
        ),
    )
    .await;
    // What the proxy forwarded to the host's server, waited for a few seconds at most, off
    // the runtime: the proxy runs on this test's runtime, and a blocking wait here would
    // starve it (the server would then see nothing, and the check would prove nothing).
    let waiting = listener.try_clone().unwrap();
    let seen = tokio::task::spawn_blocking(move || {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok((mut stream, _)) = waiting.accept() {
                use std::io::Read;
                stream.set_nonblocking(false).unwrap();
                stream
                    .set_read_timeout(Some(std::time::Duration::from_secs(2)))
                    .unwrap();
                let mut buf = [0u8; 4096];
                let n = stream.read(&mut buf).unwrap_or(0);
                return String::from_utf8_lossy(&buf[..n]).into_owned();
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        String::new()
    })
    .await
    .unwrap();
    suite.check(
        "read a secret the egress proxy adds",
        !out.output.contains(canary)
            && !seen.contains(canary)
            && seen.starts_with("GET / HTTP/1.1")
            && out.output.contains("sent"),
        format!("{}\nthe host's server got: {seen}", out.output),
    );
    holding.close().await.unwrap();

    // Other socket families (netlink: audit, routing; packet) do not exist inside: the answer
    // is the one a kernel without them gives, which programs that probe for them handle.
    let out = run(
        &session,
        "/usr/bin/python3 -c \"import socket\nfor f, p in [(socket.AF_NETLINK, 9), (socket.AF_NETLINK, 0), (socket.AF_PACKET, 0)]:\n    try:\n        socket.socket(f, socket.SOCK_RAW, p); print('opened', f)\n    except OSError as e:\n        print('refused', e.errno)\n\"",
    )
    .await;
    suite.check(
        "open a netlink or packet socket",
        out.output == "refused 97\nrefused 97\nrefused 97\n",
        out.output.clone(),
    );

    // A unix socket of the host, by path and abstract.
    let dir = tempfile::tempdir().unwrap();
    let socket_path = dir.path().join("host.sock");
    let unix = UnixListener::bind(&socket_path).unwrap();
    unix.set_nonblocking(true).unwrap();
    let abstract_name = format!("nightshift-escape-{}", std::process::id());
    let abstract_listener = {
        use std::os::linux::net::SocketAddrExt;
        let addr =
            std::os::unix::net::SocketAddr::from_abstract_name(abstract_name.as_bytes()).unwrap();
        let l = UnixListener::bind_addr(&addr).unwrap();
        l.set_nonblocking(true).unwrap();
        l
    };
    let script = format!(
        "import socket\nfor a in ['{}', '\\0{}', '/run/systemd/private', '/var/run/docker.sock']:\n    s = socket.socket(socket.AF_UNIX)\n    try:\n        s.connect(a); print('connected', a)\n    except OSError as e:\n        print('refused', a, e)\n",
        socket_path.display(),
        abstract_name
    );
    let out = run(
        &session,
        &format!("/usr/bin/python3 -c \"$(cat <<'EOF'\n{script}EOF\n)\""),
    )
    .await;
    let host_saw = unix.accept().is_ok() || abstract_listener.accept().is_ok();
    suite.check(
        "connect to a unix socket of the host",
        !out.output.contains("connected") && !host_saw && out.output.contains("refused"),
        out.output.clone(),
    );

    // Kernel interfaces the filter denies.
    let py = |body: &str| {
        format!(
            "/usr/bin/python3 -c 'import ctypes, os; libc = ctypes.CDLL(None, use_errno=True); {body}'"
        )
    };
    let out = run(
        &session,
        &py("r = libc.ptrace(16, 1, 0, 0); print(r, ctypes.get_errno())"),
    )
    .await;
    suite.check(
        "ptrace pid 1",
        out.output.trim() == format!("-1 {}", libc::EPERM),
        out.output.clone(),
    );
    let out = run(&session, "strace -f true 2>&1; echo rc=$?").await;
    suite.check(
        "strace a child",
        !out.output.contains("rc=0"),
        out.output.clone(),
    );

    let (failed, detail) = fails(&session, "mount -t tmpfs none /tmp 2>&1 || unshare -rm true 2>&1 || mount --bind /workspace /tmp 2>&1").await;
    suite.check("mount or unshare", failed, detail);

    let out = run(
        &session,
        &py(&format!(
            "print(libc.syscall({}, -1, 0, 0), ctypes.get_errno())",
            libc::SYS_finit_module
        )),
    )
    .await;
    suite.check(
        "load a kernel module",
        out.output.trim() == format!("-1 {}", libc::EPERM),
        out.output.clone(),
    );

    let before = std::time::SystemTime::now();
    let (failed, detail) = fails(&session, "date -s '2001-01-01 00:00:00' 2>&1").await;
    let clock_ok = std::time::SystemTime::now().duration_since(before).is_ok();
    suite.check("set the clock", failed && clock_ok, detail);

    let out = run(&session, "su -c 'id -u' root </dev/null 2>&1; echo rc=$?; grep NoNewPrivs /proc/self/status; stat -c %A /usr/bin/su").await;
    let contained = out.output.contains("NoNewPrivs:\t1")
        && !out.output.contains("\n0\n")
        && !out.output.contains("rc=0");
    suite.check(
        "gain privilege through a setuid binary",
        contained,
        out.output.clone(),
    );

    // The init's descriptors and memory: it holds the control socket and, as root, host mounts.
    let out = run(&session, "for f in /proc/1/fd/*; do readlink $f || cat $f; done 2>&1; cat /proc/1/environ 2>&1; head -c1 /proc/1/mem 2>&1; ls /proc/1/root/ 2>&1").await;
    let reached = out
        .output
        .lines()
        .filter(|l| !l.contains("Permission denied"))
        .count();
    suite.check(
        "reach the init's descriptors, memory or environment",
        reached == 0,
        out.output.clone(),
    );

    // The host's environment: the test process has CARGO_* variables.
    let out = run(
        &session,
        "env; cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n'",
    )
    .await;
    suite.check(
        "read the host's environment through /proc",
        !out.output.contains("CARGO"),
        "no host variable seen",
    );

    // Links out of the workspace: inside they resolve inside; hard links cannot cross mounts.
    let out = run(
        &session,
        &format!("ln -s {} leak; cat leak 2>&1; ln /etc/hostname hard 2>&1; echo; ln -s / rootlink; ls rootlink/root 2>&1", fixture.state.path().display()),
    )
    .await;
    let contained =
        !out.output.contains("upper") && out.output.contains("Invalid cross-device link");
    suite.check(
        "escape by symlink or hardlink",
        contained,
        out.output.clone(),
    );

    // Signalling a host process.
    let mut victim = std::process::Command::new("sleep")
        .arg("60")
        .spawn()
        .unwrap();
    let (failed, detail) = fails(&session, &format!("kill -9 {} 2>&1", victim.id())).await;
    let alive_after = victim.try_wait().unwrap().is_none();
    let _ = victim.kill();
    let _ = victim.wait();
    suite.check("signal a host process", failed && alive_after, detail);

    // A fork bomb.
    let out = run_for(&session, ":(){ :|:& };:", Duration::from_secs(30)).await;
    let recovered = run(&session, "echo still-alive").await;
    suite.check(
        "fork bomb",
        out.status == ExitStatus::LimitExceeded(Limit::Processes)
            && recovered.output == "still-alive\n",
        format!("{:?} in {:?}", out.status, out.duration),
    );

    // A memory bomb.
    let out = run_for(
        &session,
        "/usr/bin/python3 -c 'a = bytearray(1 << 30); print(len(a))'",
        Duration::from_secs(30),
    )
    .await;
    suite.check(
        "memory bomb",
        out.status == ExitStatus::LimitExceeded(Limit::Memory),
        format!("{:?}", out.status),
    );

    // Disk fillers: one big file, many files, /tmp.
    let out = run_for(
        &session,
        "dd if=/dev/zero of=big bs=1M count=1000 2>&1",
        Duration::from_secs(30),
    )
    .await;
    suite.check(
        "disk filler (one file)",
        out.status == ExitStatus::LimitExceeded(Limit::Disk),
        format!("{:?}", out.status),
    );
    run(&session, "rm -f big").await;
    let out = run_for(
        &session,
        "for i in $(seq 200); do head -c 8M /dev/zero > fill$i || exit 1; sleep 0.05; done",
        Duration::from_secs(60),
    )
    .await;
    suite.check(
        "disk filler (many files)",
        out.status == ExitStatus::LimitExceeded(Limit::Disk),
        format!("{:?} {}", out.status, out.output.trim()),
    );
    run(&session, "rm -f fill*").await;
    let out = run_for(
        &session,
        "cat /dev/zero > /tmp/fill",
        Duration::from_secs(30),
    )
    .await;
    suite.check(
        "disk filler (/tmp)",
        out.status == ExitStatus::LimitExceeded(Limit::Disk),
        format!("{:?}", out.status),
    );
    run(&session, "rm -f /tmp/fill").await;

    // A background process that outlives its session.
    let out = run(&session, "nohup sleep 600 >/dev/null 2>&1 & setsid sleep 601 >/dev/null 2>&1 < /dev/null & sleep 0.1; pgrep -c sleep").await;
    let init = session.init_pid();
    let pids = descendants(init);
    eprintln!("background: {:?} {} {pids:?}", out.status, out.output);
    session.close().await.unwrap();
    let survivors: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
    suite.check(
        "a background process that outlives its session",
        pids.len() >= 2 && survivors.is_empty() && !alive(init) && fixture.state_is_empty(),
        format!(
            "{} processes before close, survivors {survivors:?}",
            pids.len()
        ),
    );

    suite.finish();
}
