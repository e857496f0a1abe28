//! What a cgroup path means to an operator: the systemd unit, the
//! Kubernetes pod and container, or the docker/podman container it belongs
//! to. Kill lines, decision lines and `explain` name it next to the path.
//!
//! Layouts recognised (the path's components, outermost first):
//!
//! * systemd: the innermost `*.service` or `*.scope` (`foo.service`,
//!   `session-3.scope`, `user@1000.service/app.slice/bar.service` → `bar.service`);
//! * kubelet, systemd driver: `kubepods.slice/kubepods-burstable.slice/
//!   kubepods-burstable-pod<uid, _ for ->.slice/cri-containerd-<id>.scope`
//!   (`crio-<id>.scope` for CRI-O, `docker-<id>.scope` for cri-dockerd); a
//!   Guaranteed pod sits directly in `kubepods.slice` (`kubepods-pod<uid>.slice`);
//! * kubelet, cgroupfs driver: `kubepods/besteffort/pod<uid>/<id>` (`crio-<id>`
//!   under CRI-O), Guaranteed pods in `kubepods/pod<uid>`;
//! * docker: `docker-<id>.scope` (systemd) or `docker/<id>`; podman:
//!   `libpod-<id>.scope`; their `*-conmon-*` monitors are not containers.
//!
//! A container id is shown by its first 12 characters, as `docker ps` and
//! `crictl ps` show it; the JSON carries it whole.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A Kubernetes pod's quality-of-service class, which kubelet encodes in
/// the pod's cgroup path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Qos {
    Guaranteed,
    Burstable,
    BestEffort,
}

impl fmt::Display for Qos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Qos::Guaranteed => "guaranteed",
            Qos::Burstable => "burstable",
            Qos::BestEffort => "besteffort",
        })
    }
}

/// Who owns a cgroup, as far as its path tells.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    /// The innermost systemd unit that is not a container's scope.
    pub unit: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_qos: Option<Qos>,
    /// "containerd", "cri-o", "docker", "podman"; or "container" when only
    /// the id is known (kubelet's cgroupfs driver under containerd).
    pub container_runtime: Option<String>,
    pub container_id: Option<String>,
}

/// A container id: a long run of hex digits.
fn is_container_id(s: &str) -> bool {
    s.len() >= 12 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

/// `<prefix><id><suffix>` → the runtime's name and the id.
fn container_scope(component: &str) -> Option<(&'static str, &str)> {
    const SCOPES: &[(&str, &str, &str)] = &[
        ("cri-containerd-", ".scope", "containerd"),
        ("crio-", ".scope", "cri-o"),
        ("docker-", ".scope", "docker"),
        ("libpod-", ".scope", "podman"),
        // kubelet's cgroupfs driver under CRI-O.
        ("crio-", "", "cri-o"),
    ];
    SCOPES.iter().find_map(|(prefix, suffix, runtime)| {
        let id = component.strip_prefix(prefix)?.strip_suffix(suffix)?;
        is_container_id(id).then_some((*runtime, id))
    })
}

/// The pod of a kubelet pod cgroup component, with its QoS class when the
/// component says it (the systemd driver's do).
fn pod_component(component: &str) -> Option<(String, Option<Qos>)> {
    if let Some(rest) = component.strip_prefix("kubepods-") {
        let rest = rest.strip_suffix(".slice")?;
        let (qos, uid) = if let Some(uid) = rest.strip_prefix("pod") {
            (Qos::Guaranteed, uid)
        } else if let Some(uid) = rest.strip_prefix("burstable-pod") {
            (Qos::Burstable, uid)
        } else if let Some(uid) = rest.strip_prefix("besteffort-pod") {
            (Qos::BestEffort, uid)
        } else {
            return None;
        };
        return Some((uid.replace('_', "-"), Some(qos)));
    }
    let uid = component.strip_prefix("pod")?;
    (uid.len() >= 32 && uid.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-'))
        .then(|| (uid.to_owned(), None))
}

impl Owner {
    /// The owner of the cgroup at `path` ("/a/b"), from its components.
    pub fn of(path: &str) -> Owner {
        let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
        let mut owner = Owner::default();
        let mut in_kubepods = false;
        for (i, part) in parts.iter().enumerate() {
            if *part == "kubepods" || *part == "kubepods.slice" {
                in_kubepods = true;
                continue;
            }
            if in_kubepods {
                if let Some((uid, qos)) = pod_component(part) {
                    // cgroupfs driver: the class is the parent directory, or none
                    // (Guaranteed) when the pod sits right in kubepods.
                    let qos = qos.or_else(|| match parts.get(i.wrapping_sub(1)) {
                        Some(&"burstable") => Some(Qos::Burstable),
                        Some(&"besteffort") => Some(Qos::BestEffort),
                        Some(&"kubepods") => Some(Qos::Guaranteed),
                        _ => None,
                    });
                    owner.pod_uid = Some(uid);
                    owner.pod_qos = qos;
                    continue;
                }
                if owner.pod_uid.is_some() && is_container_id(part) {
                    owner.container_runtime = Some("container".to_owned());
                    owner.container_id = Some((*part).to_owned());
                    continue;
                }
            }
            if let Some((runtime, id)) = container_scope(part) {
                owner.container_runtime = Some(runtime.to_owned());
                owner.container_id = Some(id.to_owned());
                continue;
            }
            if *part == "docker" {
                if let Some(id) = parts.get(i + 1).filter(|p| is_container_id(p)) {
                    owner.container_runtime = Some("docker".to_owned());
                    owner.container_id = Some((*id).to_owned());
                }
                continue;
            }
            let conmon = part.contains("-conmon-");
            if (part.ends_with(".service") || part.ends_with(".scope")) && !conmon {
                owner.unit = Some((*part).to_owned());
            }
        }
        owner
    }

    pub fn is_empty(&self) -> bool {
        *self == Owner::default()
    }
}

impl fmt::Display for Owner {
    /// "pod 0d5f3bc4-... (besteffort) container containerd:3f2a9c1b7d4e",
    /// "container docker:3f2a9c1b7d4e", "foo.service"; empty when unknown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut words = Vec::new();
        if let Some(uid) = &self.pod_uid {
            match self.pod_qos {
                Some(qos) => words.push(format!("pod {uid} ({qos})")),
                None => words.push(format!("pod {uid}")),
            }
        }
        if let (Some(runtime), Some(id)) = (&self.container_runtime, &self.container_id) {
            words.push(format!("container {runtime}:{}", &id[..id.len().min(12)]));
        }
        if words.is_empty() {
            if let Some(unit) = &self.unit {
                words.push(unit.clone());
            }
        }
        f.write_str(&words.join(" "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: &str = "0d5f3bc4-1a2b-4c3d-8e9f-0123456789ab";
    const ID: &str = "3f2a9c1b7d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8";

    fn shown(path: &str) -> String {
        Owner::of(path).to_string()
    }

    #[test]
    fn systemd_units() {
        assert_eq!(shown("/system.slice/nginx.service"), "nginx.service");
        assert_eq!(
            shown("/user.slice/user-1000.slice/session-3.scope"),
            "session-3.scope"
        );
        assert_eq!(
            shown("/user.slice/user-1000.slice/user@1000.service/app.slice/foo.service"),
            "foo.service"
        );
        assert_eq!(shown("/system.slice"), "");
        assert_eq!(shown("/"), "");
        assert!(Owner::of("/demo/batch").is_empty());
    }

    #[test]
    fn kubelet_systemd_driver() {
        let uid_ = UID.replace('-', "_");
        let o = Owner::of(&format!(
            "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{uid_}.slice/\
             cri-containerd-{ID}.scope"
        ));
        assert_eq!(o.pod_uid.as_deref(), Some(UID));
        assert_eq!(o.pod_qos, Some(Qos::BestEffort));
        assert_eq!(o.container_runtime.as_deref(), Some("containerd"));
        assert_eq!(o.container_id.as_deref(), Some(ID));
        assert_eq!(o.unit, None);
        assert_eq!(
            o.to_string(),
            format!("pod {UID} (besteffort) container containerd:3f2a9c1b7d4e")
        );
        // The pod itself, without a container; Guaranteed; CRI-O.
        let o = Owner::of(&format!(
            "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice"
        ));
        assert_eq!(o.to_string(), format!("pod {UID} (burstable)"));
        let o = Owner::of(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/crio-{ID}.scope"
        ));
        assert_eq!(o.pod_qos, Some(Qos::Guaranteed));
        assert_eq!(o.container_runtime.as_deref(), Some("cri-o"));
        // CRI-O's conmon is not the container.
        let o = Owner::of(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/crio-conmon-{ID}.scope"
        ));
        assert_eq!(o.container_id, None);
        assert_eq!(o.unit, None);
    }

    #[test]
    fn kubelet_cgroupfs_driver() {
        let o = Owner::of(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        assert_eq!(o.pod_uid.as_deref(), Some(UID));
        assert_eq!(o.pod_qos, Some(Qos::BestEffort));
        assert_eq!(o.container_id.as_deref(), Some(ID));
        let o = Owner::of(&format!("/kubepods/pod{UID}/crio-{ID}"));
        assert_eq!(o.pod_qos, Some(Qos::Guaranteed));
        assert_eq!(o.container_runtime.as_deref(), Some("cri-o"));
        let o = Owner::of(&format!("/kubepods/burstable/pod{UID}"));
        assert_eq!(o.to_string(), format!("pod {UID} (burstable)"));
    }

    #[test]
    fn docker_and_podman() {
        assert_eq!(
            shown(&format!("/system.slice/docker-{ID}.scope")),
            "container docker:3f2a9c1b7d4e"
        );
        assert_eq!(
            shown(&format!("/docker/{ID}")),
            "container docker:3f2a9c1b7d4e"
        );
        assert_eq!(
            shown(&format!(
                "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
            )),
            "container podman:3f2a9c1b7d4e"
        );
        // Not ids: ordinary names that share a prefix.
        assert_eq!(
            shown("/system.slice/docker-compose.scope"),
            "docker-compose.scope"
        );
        assert_eq!(shown("/docker/web"), "");
    }

    #[test]
    fn json_field_names() {
        let o = Owner::of(&format!("/kubepods/besteffort/pod{UID}/{ID}"));
        let v = serde_json::to_value(&o).unwrap();
        assert_eq!(v["pod_qos"], "besteffort");
        assert_eq!(v["container_runtime"], "container");
        assert_eq!(serde_json::from_value::<Owner>(v).unwrap(), o);
    }
}
