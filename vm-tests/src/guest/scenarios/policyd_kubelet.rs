//! deploy/kubernetes/policies.toml on kubelet's cgroup tree: the BestEffort pod dies,
//! whole, where the kernel's own killer takes one process of the bigger Burstable pod.
//!
//! The tree is kubelet's (cgroup v2), with a pause container and kubelet's oom_score_adj
//! values in every pod: BestEffort 1000, Burstable 999 (a small memory request),
//! Guaranteed -997, pause -998; kubelet itself in /system.slice/kubelet.service, -999.
//!
//!   BestEffort pod   app 44 MiB + sidecar 16 MiB + pause
//!   Burstable pod    app 90 MiB + pause
//!   Guaranteed pod   app 30 MiB + pause
//!
//! Each OOM is one of the kubepods cgroup's memory.max (kubelet's node allocatable),
//! lowered under its usage (pdutil::squeeze).
//!
//! 1. systemd driver, no handler: the kernel scores by size plus oom_score_adj, where
//!    999 and 1000 are almost equal, and kills the Burstable app alone (its pause lives).
//! 2. policyd with the preset attached (after the tree exists: memory.oom.group is set on
//!    the three pods at start), a new Burstable app: the decision names the BestEffort
//!    app's container, and the kernel's group kill takes the whole BestEffort pod (app,
//!    sidecar, pause; memory.events oom_group_kill 1) while the other pods live.
//! 3. cgroupfs driver, the same pods created while policyd runs (memory.oom.group set as
//!    each pod cgroup appears): again the BestEffort pod, whole.

use std::time::Duration;

use anyhow::{ensure, Context, Result};

use crate::guest::pdutil::{self, expect_alive, Policyd};
use crate::guest::util::{self, Cgroup, Hog, HogSpec};
use crate::guest::Scenario;

pub fn scenario() -> Scenario {
    Scenario::new("policyd-kubelet", run)
        .needs_policyd()
        .timeout_s(240)
}

const PRESET: &str = include_str!("../../../../deploy/kubernetes/policies.toml");

/// kubelet's cgroup names for one driver.
struct Driver {
    name: &'static str,
    /// The kubepods cgroup (node allocatable): the OOM's scope.
    kubepods: &'static str,
    besteffort_pod: &'static str,
    burstable_pod: &'static str,
    guaranteed_pod: &'static str,
    /// A container's cgroup in a pod, by container name.
    container: fn(&str) -> String,
}

const SYSTEMD: Driver = Driver {
    name: "systemd",
    kubepods: "kubepods.slice",
    besteffort_pod: "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod5b1c.slice",
    burstable_pod: "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod7e20.slice",
    guaranteed_pod: "kubepods.slice/kubepods-pod9a41.slice",
    container: |c| format!("cri-containerd-{c}.scope"),
};

const CGROUPFS: Driver = Driver {
    name: "cgroupfs",
    kubepods: "kubepods",
    besteffort_pod: "kubepods/besteffort/pod5b1c",
    burstable_pod: "kubepods/burstable/pod7e20",
    guaranteed_pod: "kubepods/pod9a41",
    container: |c| c.to_owned(),
};

/// One container: its cgroup and its process.
struct Container {
    cg: Cgroup,
    hog: Hog,
}

fn container(pod: &Cgroup, driver: &Driver, name: &str, mib: u64, adj: i32) -> Result<Container> {
    let cg = pod.child(&(driver.container)(name))?;
    let hog = Hog::start(
        &cg,
        &HogSpec::fixed(mib).oom_score_adj(adj),
        pdutil::READY_TIMEOUT,
    )
    .with_context(|| format!("starting {name} in {}", pod.path()))?;
    Ok(Container { cg, hog })
}

struct Pods {
    kubepods: Cgroup,
    besteffort: Cgroup,
    burstable: Cgroup,
    guaranteed: Cgroup,
    be_app: Container,
    be_sidecar: Container,
    be_pause: Container,
    bu_app: Container,
    bu_pause: Container,
    gu_app: Container,
    gu_pause: Container,
}

impl Pods {
    /// The pod cgroups, and `before_containers` called on them before any container.
    fn create(
        driver: &Driver,
        before_containers: impl Fn(&[&Cgroup]) -> Result<()>,
    ) -> Result<Pods> {
        println!("kubelet's cgroup tree, cgroup driver {}", driver.name);
        let kubepods = Cgroup::create(driver.kubepods)?;
        let besteffort = Cgroup::create(driver.besteffort_pod)?;
        let burstable = Cgroup::create(driver.burstable_pod)?;
        let guaranteed = Cgroup::create(driver.guaranteed_pod)?;
        before_containers(&[&besteffort, &burstable, &guaranteed])?;
        let d = driver;
        Ok(Pods {
            be_pause: container(&besteffort, d, "pause", 1, -998)?,
            be_app: container(&besteffort, d, "app", 44, 1000)?,
            be_sidecar: container(&besteffort, d, "sidecar", 16, 1000)?,
            bu_pause: container(&burstable, d, "pause", 1, -998)?,
            bu_app: container(&burstable, d, "app", 90, 999)?,
            gu_pause: container(&guaranteed, d, "pause", 1, -998)?,
            gu_app: container(&guaranteed, d, "app", 30, -997)?,
            kubepods,
            besteffort,
            burstable,
            guaranteed,
        })
    }

    /// Every container but the BestEffort pod's still runs.
    fn expect_others_alive(&mut self) -> Result<()> {
        expect_alive(&mut self.bu_app.hog, "the Burstable app")?;
        expect_alive(&mut self.bu_pause.hog, "the Burstable pause")?;
        expect_alive(&mut self.gu_app.hog, "the Guaranteed app")?;
        expect_alive(&mut self.gu_pause.hog, "the Guaranteed pause")
    }

    /// Squeezes kubepods under policyd and checks that the BestEffort pod died whole.
    fn expect_besteffort_pod_killed(&mut self, pd: &mut Policyd) -> Result<()> {
        let group_kills = self.besteffort.events()?.oom_group_kill;
        pdutil::squeeze(&self.kubepods, 10)?;
        for (c, what) in [
            (&mut self.be_app, "the BestEffort app"),
            (&mut self.be_sidecar, "the BestEffort sidecar"),
            (&mut self.be_pause, "the BestEffort pause"),
        ] {
            c.hog
                .wait_killed(pdutil::OOM_TIMEOUT)
                .with_context(|| format!("{what} in the pod policyd chose"))?;
        }
        let d = pd.next_killing_decision(Duration::from_secs(10))?;
        let app = self.be_app.cg.path();
        d.expect(&[
            ("victim_cgroup", &app),
            ("outcome", "killed"),
            ("priority", "10"),
        ])?;
        println!("{d}");
        // The rest of the pod dies with its app (memory.oom.group): the handler's
        // decision names the app, and policyd logs a kill line for each of the others.
        let mut with_app = Vec::new();
        for _ in 0..2 {
            let k = pd.next_kill(Duration::from_secs(10))?;
            k.expect(&[("kind", "with-chosen"), ("decided_by", "policyd_priority")])?;
            with_app.push(k.pid as i32);
        }
        with_app.sort_unstable();
        let mut want = vec![self.be_sidecar.hog.pid(), self.be_pause.hog.pid()];
        want.sort_unstable();
        ensure!(
            with_app == want,
            "kill lines for {with_app:?}, expected the sidecar and pause {want:?}"
        );
        self.expect_others_alive()?;
        let now = self.besteffort.events()?.oom_group_kill;
        ensure!(
            now == group_kills + 1,
            "{}: oom_group_kill {now}, expected {}",
            self.besteffort.path(),
            group_kills + 1
        );
        self.kubepods.set("memory.max", "max")?;
        Ok(())
    }
}

fn oom_group(cg: &Cgroup) -> Result<bool> {
    Ok(cg.read("memory.oom.group")?.trim() == "1")
}

fn run() -> Result<()> {
    pdutil::quiet_oom_reports()?;
    let kubelet = Cgroup::create("system.slice/kubelet.service")?;
    let mut kubelet_hog = Hog::start(
        &kubelet,
        &HogSpec::fixed(8).oom_score_adj(-999),
        pdutil::READY_TIMEOUT,
    )?;

    // 1. The kernel alone.
    let mut pods = Pods::create(&SYSTEMD, |_| Ok(()))?;
    pdutil::squeeze(&pods.kubepods, 10)?;
    pods.bu_app
        .hog
        .wait_killed(pdutil::OOM_TIMEOUT)
        .context("the kernel's own choice, the biggest by oom_badness()")?;
    expect_alive(&mut pods.be_app.hog, "the BestEffort app (kernel default)")?;
    expect_alive(
        &mut pods.be_sidecar.hog,
        "the BestEffort sidecar (kernel default)",
    )?;
    expect_alive(
        &mut pods.bu_pause.hog,
        "the Burstable pause (kernel default)",
    )?;
    expect_alive(&mut pods.gu_app.hog, "the Guaranteed app (kernel default)")?;
    util::story("kernel default: the Burstable app (90 MiB, oom_score_adj 999) died, alone");
    pods.kubepods.set("memory.max", "max")?;
    pods.bu_app = container(&pods.burstable, &SYSTEMD, "app2", 90, 999)?;

    // 2. policyd with the preset, attached to the tree as it is.
    let config = pdutil::write_config("kubernetes", PRESET)?;
    let mut pd = Policyd::load(&["--config", &config])?;
    for pod in [&pods.besteffort, &pods.burstable, &pods.guaranteed] {
        ensure!(
            oom_group(pod)?,
            "{}: memory.oom.group not set at start",
            pod.path()
        );
    }
    pods.expect_besteffort_pod_killed(&mut pd)?;
    util::story("policyd, systemd driver: the BestEffort pod died whole");
    drop(pods);

    // 3. The cgroupfs driver's tree, made while policyd runs.
    let mut pods = Pods::create(&CGROUPFS, |new_pods| {
        for pod in new_pods {
            util::wait_until(
                Duration::from_secs(10),
                &format!(
                    "policyd to set memory.oom.group on the new pod {}",
                    pod.path()
                ),
                || oom_group(pod).unwrap_or(false),
            )?;
        }
        Ok(())
    })?;
    pods.expect_besteffort_pod_killed(&mut pd)?;
    util::story("policyd, cgroupfs driver: the BestEffort pod died whole");

    expect_alive(&mut kubelet_hog, "kubelet")?;
    pd.stop()?;
    Ok(())
}
