//! What the test run checks with other people's tools, from the private Python venv
//! vm-tests/deps.sh fills (target/vm-tests/pyvenv): the Prometheus text that scenarios
//! send as `metrics` records, read by prometheus-client's parser
//! (vm-tests/validate/metrics.py).

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::top;
use crate::records::Record;

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
