//! The policyd binary end to end, against fake cgroup and proc trees.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use policyd::testing::{demo_layout, FakeCgroupfs};

fn policyd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_policyd"))
        .args(args)
        .env_remove("RUST_LOG")
        .output()
        .expect("run policyd")
}

/// Like [`policyd`], but a run still going after 30 s is killed and fails
/// the test: for inputs that could make policyd wait forever.
fn policyd_within_30s(args: &[&str]) -> Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_policyd"))
        .args(args)
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run policyd");
    let start = Instant::now();
    while child.try_wait().expect("wait for policyd").is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("policyd {} did not finish within 30 s", args.join(" "));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().expect("policyd's output")
}

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// `policyd load` arguments that can never attach anything: the cgroup
/// does not exist in the fake tree at `cg`.
fn load_nowhere<'a>(cg: &'a Path, config: &'a Path) -> Vec<&'a str> {
    vec![
        "load",
        "--config",
        config.to_str().unwrap(),
        "--cgroup-root",
        cg.to_str().unwrap(),
        "--cgroup",
        "/nope",
    ]
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Asserts that `o` exited with `code` and said each of `parts` on stderr.
fn assert_fails_saying(o: &Output, code: i32, parts: &[&str]) {
    let err = stderr(o);
    assert_eq!(o.status.code(), Some(code), "{err}");
    for part in parts {
        assert!(err.contains(part), "{part:?} not in:\n{err}");
    }
}

fn repo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("policies.toml")
}

/// The demo's config, whose rules `demo_layout` follows.
fn demo_config() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("vm-tests/demo.toml")
}

/// Every config the repository ships: the package's default, the demo's and
/// the Kubernetes preset, each valid with its number of rules.
#[test]
fn check_accepts_the_shipped_configs() {
    for (config, rules) in [
        (repo_config(), 13),
        (demo_config(), 4),
        (kubernetes_preset(), 11),
    ] {
        let o = policyd(&["check", config.to_str().unwrap()]);
        assert!(o.status.success(), "{}: {}", config.display(), stderr(&o));
        assert_eq!(stdout(&o), format!("ok: {rules} rules, policy priority\n"));
        assert_eq!(stderr(&o), "");
    }
}

#[test]
fn check_reports_every_error_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.toml");
    std::fs::write(
        &file,
        "policy = \"priority\"\n\n[[rule]]\ncgroup = \"/demo/web\"\n\n\npriority = 20000\n\n\
         [[rule]]\ncgroup = \"/demo/db\"\nprotect = true\nkill = \"task\"\n",
    )
    .unwrap();
    let o = policyd(&["check", file.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stdout(&o), "");
    let f = file.display();
    assert_eq!(
        stderr(&o),
        format!(
            "{f}:7:12: priority must be between 0 and 10000, got 20000\n\
             {f}:11:11: rule for \"/demo/db\" sets protect = true together with kill: a protected \
             cgroup is never chosen as a victim, so kill would never apply; remove protect = true \
             or remove kill\n\
             {f}: 2 errors\n"
        )
    );
}

#[test]
fn check_shows_the_pressure_triggers_and_places_their_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.toml");
    std::fs::write(
        &file,
        "[[pressure]]\ncgroup = \"/batch.slice\"\nstall = \"some\"\nlimit = \"40%\"\n\
         duration = \"10s\"\n\n[[pressure]]\ncgroup = \"/\"\nlimit = \"60%\"\n\
         duration = \"30s\"\n",
    )
    .unwrap();
    let o = policyd(&["check", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ok: 0 rules, policy priority\n\
         pressure: /batch.slice declares an OOM when memory.pressure some 40%/10s holds (PSI \
         trigger \"some 4000000 10000000\")\n\
         pressure: / declares an OOM when memory.pressure full 60%/30s holds (PSI trigger \
         \"full 6000000 10000000\", 3 windows in a row)\n"
    );

    std::fs::write(
        &file,
        "[[pressure]]\ncgroup = \"/a\"\nlimit = \"40%\"\nduration = \"1d\"\n",
    )
    .unwrap();
    let o = policyd(&["check", file.to_str().unwrap()]);
    let f = file.display();
    assert_fails_saying(
        &o,
        1,
        &[&format!(
            "{f}:4:12: duration must be between 500ms and 1h (a number and a unit: \"500ms\", \
             \"10s\", \"2min\"), got \"1d\"\n{f}: 1 error\n"
        )],
    );
}

#[test]
fn check_shows_the_swap_limit_and_places_its_errors() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("policies.toml");
    std::fs::write(&file, "[swap]\nlimit = \"85%\"\n").unwrap();
    let o = policyd(&["check", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        stdout(&o),
        "ok: 0 rules, policy priority\n\
         swap: declares an OOM of / when swap and memory used over 85% (checked at each PSI \
         event \"some 10000 1000000\" of the system)\n"
    );

    std::fs::write(&file, "policy = \"priority\"\n[swap]\ncgroup = \"/a/**\"\n").unwrap();
    let o = policyd(&["check", file.to_str().unwrap()]);
    let f = file.display();
    assert_fails_saying(
        &o,
        1,
        &[&format!(
            "{f}:3:10: the [swap] cgroup is the one cgroup whose OOM is declared, not a \
             pattern: write a path without \"*\", like \"/\" or \"/user.slice\", got \
             \"/a/**\"\n{f}: 1 error\n"
        )],
    );
}

#[test]
fn check_missing_file_fails() {
    let o = policyd(&["check", "/nonexistent/policies.toml"]);
    assert_fails_saying(
        &o,
        1,
        &["cannot read config file /nonexistent/policies.toml"],
    );
}

#[test]
fn list_names_every_policy() {
    let o = policyd(&["list"]);
    assert!(o.status.success());
    let names: Vec<String> = stdout(&o)
        .lines()
        .map(|l| l.split_whitespace().next().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["priority", "largest", "badness", "observe"]);
}

#[test]
fn explain_predicts_the_demo_victim() {
    let dir = tempfile::tempdir().unwrap();
    let (cg, procs) = demo_layout(&dir.path().join("cg"), &dir.path().join("proc"));
    let config = demo_config();
    let base = [
        "explain",
        "--config",
        config.to_str().unwrap(),
        "--cgroup-root",
        cg.root().to_str().unwrap(),
        "--proc-root",
        procs.root().to_str().unwrap(),
    ];

    let o = policyd(&[&base[..], &["--json"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["scope"]["kind"], "global");
    assert_eq!(j["victim"]["cgroup"], "/demo/batch/j2");
    assert_eq!(j["victim"]["kill"], "cgroup");
    assert_eq!(j["victim"]["tasks"][0]["pid"], 310);

    let o = policyd(&[&base[..], &["--cgroup", "/demo/web/"]].concat());
    assert!(o.status.success(), "{}", stderr(&o));
    let text = stdout(&o);
    assert!(
        text.contains("scope:  memcg OOM of /demo/web and its descendants"),
        "{text}"
    );
    assert!(
        text.contains("model:  the handler's ranking, in user space (vm-tests hold the two equal)"),
        "{text}"
    );
    assert!(
        text.contains(
            "new:    cgroups created below /demo/web are judged as priority 500 kill task from \
             their mkdir on (inherited from /demo/web)\n"
        ),
        "{text}"
    );
    assert!(text.contains("victim: /demo/web (cgroup id "), "{text}");
    let o = policyd(&[&base[..], &["--cgroup", "/demo"]].concat());
    assert!(
        stdout(&o).contains(
            "new:    cgroups created below /demo are judged by its own settings until policyd \
             resolves them (some ms): rule /demo/db (line 10) matches some of their paths only\n"
        ),
        "{}",
        stdout(&o)
    );
    assert!(
        text.contains("  kill  pid 201 (nginx), RSS 140 MiB\n"),
        "{text}"
    );
    assert!(
        text.ends_with("outcome: kill one task in /demo/web: pid 201\n"),
        "{text}"
    );

    let o = policyd(&[&base[..], &["--cgroup", "/demo/db", "--json"]].concat());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["victim"], serde_json::Value::Null);

    let o = policyd(&[&base[..], &["--policy", "largest", "--json"]].concat());
    let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(j["policy"], "largest");
    assert_eq!(j["victim"]["cgroup"], "/demo/batch/j2"); // db is larger but protected

    let o = policyd(&[&base[..], &["--cgroup", "/nope"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "policyd: error: no cgroup /nope under {}\n",
            cg.root().display()
        )
    );
}

#[test]
fn missing_config_suggests_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let cg = FakeCgroupfs::new(dir.path());
    let missing = dir.path().join("none.toml");
    let o = policyd(&[
        "explain",
        "--config",
        missing.to_str().unwrap(),
        "--cgroup-root",
        cg.root().to_str().unwrap(),
    ]);
    assert_fails_saying(
        &o,
        1,
        &[
            &format!("config file {} not found", missing.display()),
            "pass --config FILE",
        ],
    );
}

#[test]
fn load_validates_before_the_kernel_is_touched() {
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "policy = \"nope\"\n").unwrap();
    let o = policyd(&[
        "load",
        "--insecure-config",
        "--config",
        bad.to_str().unwrap(),
    ]);
    assert_fails_saying(&o, 1, &["bad.toml:1:10: unknown policy \"nope\""]);

    let o = policyd(&["load", "nope"]);
    // A usage error.
    assert_fails_saying(
        &o,
        2,
        &["valid policies: priority, largest, badness, observe"],
    );

    // The tables cannot grow past what the handler was built for.
    for n in ["15", "65537", "many"] {
        let o = policyd(&["load", "--max-cgroups", n]);
        // A usage error.
        assert_fails_saying(&o, 2, &["invalid value", "--max-cgroups"]);
    }
}

#[test]
fn help_teaches() {
    let o = policyd(&["--help"]);
    assert!(o.status.success());
    let text = stdout(&o);
    for cmd in ["load", "status", "list", "check", "explain"] {
        assert!(
            text.contains(&format!("\n  {cmd} ")),
            "{cmd} missing from:\n{text}"
        );
    }
    assert!(text.contains("Examples:"));
    let o = policyd(&["explain", "--help"]);
    assert!(stdout(&o).contains("policyd explain --cgroup /demo"));
}

#[test]
fn a_fifo_as_config_is_refused_without_waiting_for_a_writer() {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo.toml");
    nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
    let cg = FakeCgroupfs::new(dir.path().join("cg"));
    for args in [
        vec!["check", fifo.to_str().unwrap()],
        load_nowhere(cg.root(), &fifo),
    ] {
        let o = policyd_within_30s(&args);
        assert_eq!(o.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&o).contains(&format!(
                "config file {} is a FIFO (named pipe), not a regular file",
                fifo.display()
            )),
            "{args:?}: {}",
            stderr(&o)
        );
    }
}

#[test]
fn a_config_over_one_mebibyte_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, "#".repeat(2 << 20)).unwrap();
    let o = policyd(&["check", big.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        format!(
            "error: config file {} is 2097152 bytes, over the limit of 1048576 bytes (1 MiB); a \
             policyd configuration is a few KiB: is this the right file?\n",
            big.display()
        )
    );
}

#[test]
fn load_refuses_a_config_that_others_can_write() {
    let dir = tempfile::tempdir().unwrap();
    let cg = FakeCgroupfs::new(dir.path().join("cg"));
    let file = dir.path().join("policies.toml");
    std::fs::write(&file, "[[rule]]\ncgroup = \"/a\"\npriority = 1\n").unwrap();
    std::fs::set_permissions(&file, std::fs::Permissions::from_mode(0o664)).unwrap();

    let o = policyd(&load_nowhere(cg.root(), &file));
    let f = file.display();
    assert_fails_saying(&o, 1, &[&format!("chown root:root {f} && chmod go-w {f}")]);
    let err = stderr(&o);
    if is_root() {
        assert!(
            err.contains(&format!("{f} is writable by its group (mode 0664)")),
            "{err}"
        );
    } else {
        assert!(err.contains("not root"), "{err}");
    }

    // check only reads the file: anyone may run it on anything readable.
    let o = policyd(&["check", file.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), "ok: 1 rule, policy priority\n");

    // --insecure-config skips the owner check, says so, and goes on (to
    // fail later, on the missing cgroup or a kernel without BPF OOM).
    let o = policyd(&[&load_nowhere(cg.root(), &file)[..], &["--insecure-config"]].concat());
    assert_eq!(o.status.code(), Some(1));
    assert!(
        stdout(&o).contains(&format!(
            "--insecure-config: not checking that only root can write {f}"
        )),
        "{}",
        stdout(&o)
    );
    assert!(!stderr(&o).contains("chown"), "{}", stderr(&o));
}

/// Runs [`load_nowhere`] with the repo's config (owner unchecked), as the
/// process that the fake proc tree at `proc_root` describes.
fn load_nowhere_as_in(cg: &Path, proc_root: &Path) -> Output {
    let config = repo_config();
    let mut args = load_nowhere(cg, &config);
    args.extend([
        "--insecure-config",
        "--proc-root",
        proc_root.to_str().unwrap(),
    ]);
    policyd(&args)
}

/// A fake proc tree whose self/ns/cgroup names the namespace `ns`.
fn proc_in_cgroupns(dir: &Path, ns: &str) -> PathBuf {
    let proc_root = dir.join("proc");
    std::fs::create_dir_all(proc_root.join("self/ns")).unwrap();
    std::os::unix::fs::symlink(ns, proc_root.join("self/ns/cgroup")).unwrap();
    proc_root
}

#[test]
fn load_refuses_a_private_cgroup_namespace_and_status_notes_it() {
    let dir = tempfile::tempdir().unwrap();
    let cg = FakeCgroupfs::new(dir.path().join("cg"));
    let proc_root = proc_in_cgroupns(dir.path(), "cgroup:[4026532510]");
    let o = load_nowhere_as_in(cg.root(), &proc_root);
    assert_fails_saying(&o, 1, &["run policyd in the host's cgroup namespace"]);
    let err = stderr(&o);
    assert!(
        err.starts_with("policyd: error: policyd runs in a private cgroup namespace"),
        "{err}"
    );

    let o = policyd(&["status", "--proc-root", proc_root.to_str().unwrap()]);
    assert!(
        stderr(&o).contains("note: policyd runs in a private cgroup namespace"),
        "{}",
        stderr(&o)
    );
}

/// A fake proc tree for `policyd load`: the host's cgroup namespace, an
/// oom_score_adj of 0.
fn proc_for_load(dir: &Path) -> PathBuf {
    let proc_root = proc_in_cgroupns(dir, "cgroup:[4026531835]");
    std::fs::write(proc_root.join("self/oom_score_adj"), "0\n").unwrap();
    proc_root
}

#[test]
fn load_protects_itself_before_attaching() {
    let dir = tempfile::tempdir().unwrap();
    let cg = FakeCgroupfs::new(dir.path().join("cg"));
    let proc_root = proc_for_load(dir.path());
    cg.cgroup("/system.slice/policyd.service", 0, &[]);
    std::fs::write(
        proc_root.join("self/cgroup"),
        "0::/system.slice/policyd.service\n",
    )
    .unwrap();
    let o = load_nowhere_as_in(cg.root(), &proc_root);
    // It goes on to fail on the cgroup that does not exist (or on a kernel
    // without BPF OOM), after protecting itself.
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        std::fs::read_to_string(proc_root.join("self/oom_score_adj")).unwrap(),
        "-1000"
    );
    let out = stdout(&o);
    assert!(
        out.contains("oom_score_adj -1000: the OOM killer never picks policyd"),
        "{out}"
    );
    assert!(
        out.contains("protecting policyd's own cgroup /system.slice/policyd.service"),
        "{out}"
    );
    // Locked, or a warning saying why not: never silence.
    assert!(
        out.contains("memory locked (mlockall") || out.contains("cannot lock policyd's memory"),
        "{out}"
    );
}

fn kubernetes_preset() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/policies.toml")
}

/// kubelet's cgroup tree for either driver, pods named by QoS class, with the
/// BestEffort pod the smallest: the preset picks its biggest container, and
/// the Burstable pod goes next, the Guaranteed one last; kubelet's and
/// containerd's services never.
#[test]
fn explain_ranks_kubelet_pods_by_qos_class_under_the_preset() {
    use policyd::testing::{FakeProcfs, FakeTask};
    const MIB: u64 = 1 << 20;
    let layouts = [
        (
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-poda.slice",
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-podb.slice",
            "/kubepods.slice/kubepods-podc.slice",
            ".scope",
        ),
        (
            "/kubepods/besteffort/poda",
            "/kubepods/burstable/podb",
            "/kubepods/podc",
            "",
        ),
    ];
    for (besteffort, burstable, guaranteed, suffix) in layouts {
        let dir = tempfile::tempdir().unwrap();
        let cg = FakeCgroupfs::new(dir.path().join("cg"));
        let procs = FakeProcfs::new(dir.path().join("proc"));
        let mut pid = 100;
        let mut add = |cgroup: String, mib: u64, adj: i32| {
            pid += 1;
            cg.cgroup(&cgroup, mib * MIB, &[pid]);
            let mut t = FakeTask::new(pid, "p", mib * MIB);
            t.oom_score_adj = adj;
            procs.task(t);
            cgroup
        };
        add(format!("{besteffort}/pause{suffix}"), 1, -998);
        let be_app = add(format!("{besteffort}/app{suffix}"), 20, 1000);
        add(format!("{besteffort}/sidecar{suffix}"), 10, 1000);
        add(format!("{burstable}/pause{suffix}"), 1, -998);
        let bu_app = add(format!("{burstable}/app{suffix}"), 200, 999);
        add(format!("{guaranteed}/pause{suffix}"), 1, -998);
        let gu_app = add(format!("{guaranteed}/app{suffix}"), 400, -997);
        add("/system.slice/kubelet.service".into(), 600, -999);
        add("/system.slice/containerd.service".into(), 300, -999);

        let config = kubernetes_preset();
        let o = policyd(&[
            "explain",
            "--json",
            "--config",
            config.to_str().unwrap(),
            "--cgroup-root",
            cg.root().to_str().unwrap(),
            "--proc-root",
            procs.root().to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", stderr(&o));
        let j: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        assert_eq!(j["victim"]["cgroup"], be_app.as_str(), "{j:#}");
        let eligible: Vec<&serde_json::Value> = j["candidates"]
            .as_array()
            .unwrap_or_else(|| panic!("no candidates in {j:#}"))
            .iter()
            .filter(|c| c["eligible"] == true)
            .collect();
        assert_eq!(eligible[0]["priority"], 10, "{j:#}");
        let ranked: Vec<&str> = eligible
            .iter()
            .map(|c| c["path"].as_str().unwrap())
            .collect();
        let pos = |p: &str| ranked.iter().position(|c| *c == p);
        assert!(
            pos(&be_app) < pos(&bu_app) && pos(&bu_app) < pos(&gu_app),
            "{ranked:?}"
        );
        assert!(
            ranked.iter().all(|c| !c.starts_with("/system.slice")),
            "{ranked:?}"
        );
    }
}

/// What a service manager listening on a `NOTIFY_SOCKET` received while
/// `policyd load` ran with `env`; and the run's output.
fn load_notifying(env: &[(&str, &str)]) -> (Output, Vec<String>) {
    use std::os::unix::net::UnixDatagram;
    let dir = tempfile::tempdir().unwrap();
    let cg = FakeCgroupfs::new(dir.path().join("cg"));
    let proc_root = proc_for_load(dir.path());
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_nonblocking(true).unwrap();
    let config = repo_config();
    let mut args = load_nowhere(cg.root(), &config);
    args.extend([
        "--insecure-config",
        "--proc-root",
        proc_root.to_str().unwrap(),
    ]);
    let o = Command::new(env!("CARGO_BIN_EXE_policyd"))
        .args(&args)
        .env_remove("RUST_LOG")
        .env("NOTIFY_SOCKET", &socket_path)
        .envs(env.iter().copied())
        .output()
        .expect("run policyd");
    let mut received = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.recv(&mut buf) {
        received.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    (o, received)
}

#[test]
fn load_that_cannot_attach_never_tells_systemd_it_is_ready() {
    // A JOURNAL_STREAM that is not policyd's stderr (inherited from a shell
    // started by a service): the log stays text, on stdout.
    let (o, received) = load_notifying(&[("JOURNAL_STREAM", "1:1")]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(
        received.iter().all(|m| !m.lines().any(|l| l == "READY=1")),
        "READY=1 sent by a policyd that attached nothing: {received:?}"
    );
    assert!(
        stdout(&o).contains("oom_score_adj -1000: the OOM killer never picks policyd"),
        "{}",
        stdout(&o)
    );
}
