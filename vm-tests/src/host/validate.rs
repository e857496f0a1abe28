//! What the test run checks with other people's tools, from the private Python venv
//! vm-tests/deps.sh fills (target/vm-tests/pyvenv): the Prometheus text that scenarios
//! send as `metrics` records, read by prometheus-client's parser
//! (vm-tests/validate/metrics.py), and the Kubernetes manifests in deploy/kubernetes/,
//! checked by kubernetes-validate against the API schemas it ships (the ConfigMap is
//! kustomize's work from policies.toml; `policyd check` of that file is a host test).

use std::fs;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::top;
use crate::records::Record;

/// Kubernetes releases the manifests must be valid for: the oldest one whose DaemonSet
/// fields we use and kubelet still supports cgroup v2 well, and the newest the
/// validator knows.
const KUBERNETES_VERSIONS: &[&str] = &["1.30.0", "1.37.0"];

fn venv_bin(name: &str) -> Result<PathBuf> {
    let path = top().join("target/vm-tests/pyvenv/bin").join(name);
    if !path.is_file() {
        bail!(
            "{} is missing: vm-tests/deps.sh installs it (run ./vm-tests/run, which calls it)",
            path.display()
        );
    }
    Ok(path)
}

/// Reads `text` with prometheus-client's parser and the checks of
/// vm-tests/validate/metrics.py; returns the parser's summary.
pub fn prometheus_text(text: &str) -> Result<String> {
    let python = venv_bin("python3")?;
    let script = top().join("vm-tests/validate/metrics.py");
    let mut child = Command::new(&python)
        .arg(&script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {} {}", python.display(), script.display()))?;
    child
        .stdin
        .take()
        .expect("piped stdin")
        .write_all(text.as_bytes())
        .context("feeding the metrics to the parser")?;
    let out = child.wait_with_output().context("waiting for the parser")?;
    if !out.status.success() {
        bail!(
            "prometheus-client rejects the metrics ({}):\n{}\n--- the text:\n{text}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// Validates every `metrics` record of a scenario's JSON lines.
pub fn scenario_records(json: &[String]) -> Result<()> {
    for line in json {
        let record: Record = serde_json::from_str(line)
            .with_context(|| format!("the guest sent a record the host cannot read: {line}"))?;
        if let Record::Metrics(m) = record {
            let summary = prometheus_text(&m.text).with_context(|| m.what.clone())?;
            println!("  {}: {summary}", m.what);
        }
    }
    Ok(())
}

/// kubernetes-validate, strict (unknown fields are errors), on every manifest of
/// deploy/kubernetes/ for each of KUBERNETES_VERSIONS.
pub fn kubernetes_manifests() -> Result<()> {
    let tool = venv_bin("kubernetes-validate")?;
    let dir = top().join("deploy/kubernetes");
    let mut files: Vec<PathBuf> = fs::read_dir(&dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        // kustomize's own file: no Kubernetes resource, no schema.
        .filter(|p| !p.ends_with("kustomization.yaml"))
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no *.yaml in {}", dir.display());
    }
    for version in KUBERNETES_VERSIONS {
        let out = Command::new(&tool)
            .args(["--strict", "--no-warn", "-k", version])
            .args(&files)
            .output()
            .with_context(|| format!("running {}", tool.display()))?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        if !out.status.success() {
            bail!(
                "kubernetes-validate -k {version} rejects {}:\n{}{}",
                dir.display(),
                stdout.trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        print!("{stdout}");
    }
    Ok(())
}
