#!/usr/bin/env python3
"""Offline checks of the eni-net chart (run through helm/check.sh, which installs the tools).

1. `helm lint --strict` of the chart with each CI values file (helm-python-sdk, no binary).
2. Render with each CI values file; validate every object against the Kubernetes schemas
   (kubernetes-validate, strict: unknown fields are errors) for the oldest Kubernetes the
   chart supports and the newest the validator knows. The ServiceMonitor is a CRD kind with
   no bundled schema: it is skipped, by name, with a note.
3. What the rendered objects must say for each values file (credentials wiring, mounts,
   probes, the conflist, the manager's configuration, the Service load balancing, policy and
   masquerade wiring or its absence); with an eni-manager binary at hand (ENI_MANAGER_BIN or
   target/debug/eni-manager), `eni-manager --check-config` on each rendered configuration,
   with the environment the downward API gives.
4. Rendering without the required values (and with values that cannot work) fails with a
   message naming each problem.
5. The cni-config program writes the conflist only once /readyz answers 200 (run against a
   local HTTP server standing in for the manager); mount-bpffs mounts a bpffs only where the
   mount table shows none (stand-in mount table and `mount`).
6. yamllint of the values files and of the rendered output; every value is in the README.

Prints `helm: N passed, M failed` and exits 1 if anything failed.
"""

from __future__ import annotations

import glob
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

import helm_python as helm
import kubernetes_validate
import yaml

HERE = Path(__file__).resolve().parent
CHART = HERE / "eni-net"
CI = HERE / "ci"
REPO = HERE.parent
NAMESPACE = "kube-system"
RELEASE = "eni-net"
# The chart's kubeVersion floor and the newest schemas the validator bundles.
KUBE_VERSIONS = ["1.26.0", kubernetes_validate.utils.latest_version()]
# Kinds without a bundled schema, skipped explicitly (anything else unknown is a failure).
SKIP_KINDS = {("monitoring.coreos.com/v1", "ServiceMonitor")}

passed = 0
failed = 0


def check(name: str, fn) -> None:
    """Runs one check; an exception or an AssertionError is a failure."""
    global passed, failed
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - every failure is reported, then counted
        failed += 1
        print(f"FAIL {name}: {e}")
        if not isinstance(e, AssertionError):
            traceback.print_exc(limit=2)
    else:
        passed += 1
        print(f"ok   {name}")


def load_values(path: Path) -> dict:
    return yaml.safe_load(path.read_text()) or {}


def render(values: dict) -> dict[str, str]:
    chart = helm.Chart.load(str(CHART))
    return chart.render(values, name=RELEASE, namespace=NAMESPACE, is_install=True)


def objects(manifests: dict[str, str]) -> list[dict]:
    out = []
    for path, text in sorted(manifests.items()):
        if path.endswith("NOTES.txt"):
            continue
        for doc in yaml.safe_load_all(text):
            if doc:
                out.append(doc)
    return out


def by_kind(objs: list[dict], kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def one(objs: list[dict], kind: str) -> dict:
    found = by_kind(objs, kind)
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def container(ds: dict, name: str, init: bool = False) -> dict:
    spec = ds["spec"]["template"]["spec"]
    for c in spec["initContainers" if init else "containers"]:
        if c["name"] == name:
            return c
    raise AssertionError(f"no container {name}")


def env_names(c: dict) -> set[str]:
    return {e["name"] for e in c.get("env", [])}


CI_FILES = sorted(CI.glob("*.yaml"))


def lint(values_file: Path) -> None:
    report = helm.lint(
        str(CHART), load_values(values_file), strict=True, namespace=NAMESPACE
    )
    problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
    problems += [{"error": e} for e in report.get("errors", [])]
    assert report.get("total_charts_linted") == 1, f"linted {report.get('total_charts_linted')} charts"
    assert not problems, "; ".join(f"{m.get('path', '')}: {m['error']}" for m in problems)


def validate_schemas(values_file: Path) -> None:
    objs = objects(render(load_values(values_file)))
    assert objs, "nothing rendered"
    errors = []
    for obj in objs:
        key = (obj.get("apiVersion"), obj.get("kind"))
        name = f"{obj.get('kind')}/{obj.get('metadata', {}).get('name')}"
        if key in SKIP_KINDS:
            print(f"     note: {values_file.name}: {name} not schema-validated "
                  f"({key[0]} is a CRD with no bundled schema)")
            continue
        for version in KUBE_VERSIONS:
            try:
                kubernetes_validate.validate(obj, version, strict=True)
            except kubernetes_validate.ValidationError as e:
                path = ".".join(str(p) for p in e.path)
                errors.append(f"{name} (Kubernetes {version}): {path}: {e.message}")
            except kubernetes_validate.SchemaNotFoundError as e:
                errors.append(f"{name} (Kubernetes {version}): no schema: {e}")
    assert not errors, "\n  ".join(errors)


STALE_NOTE = ""


def manager_bin() -> str | None:
    """ENI_MANAGER_BIN, always; else target/debug/eni-manager unless it is older than the
    manager's configuration code (it would judge the rendered file by an old manager's rules;
    scripts/test.sh builds before running this, so there it is fresh)."""
    global STALE_NOTE
    explicit = os.environ.get("ENI_MANAGER_BIN")
    if explicit:
        return explicit if os.access(explicit, os.X_OK) else None
    cand = REPO / "target" / "debug" / "eni-manager"
    if not os.access(cand, os.X_OK):
        return None
    sources = list((REPO / "eni-manager" / "src").rglob("*.rs"))
    newest = max((f for f in sources), key=lambda f: f.stat().st_mtime, default=None)
    if newest and newest.stat().st_mtime > cand.stat().st_mtime:
        STALE_NOTE = (f"{cand.relative_to(REPO)} is older than {newest.relative_to(REPO)}; "
                      "rebuild it or set ENI_MANAGER_BIN")
        return None
    return str(cand)


def semantics(values_file: Path) -> None:
    values = load_values(values_file)
    objs = objects(render(values))
    provider = values["config"]["cloud"]["provider"]
    source = values.get("credentials", {}).get("source") or (
        "ramRole" if provider == "aliyun" else "instanceProfile")
    ds = one(objs, "DaemonSet")
    spec = ds["spec"]["template"]["spec"]
    assert spec["hostNetwork"] is True and spec["dnsPolicy"] == "Default"
    assert spec["priorityClassName"] == "system-node-critical"
    assert {"operator": "Exists"} in spec["tolerations"], "must tolerate every taint"
    mgr = container(ds, "eni-manager")
    assert mgr["args"] == ["--config", "/etc/eni-manager/config.yaml"]
    assert mgr["securityContext"]["privileged"] is True
    assert mgr["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert mgr["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert "requests" in mgr["resources"] and "limits" in mgr["resources"]
    mounts = {m["mountPath"]: m for m in mgr["volumeMounts"]}
    for p in ["/etc/eni-manager", "/run/eni-manager", "/var/lib/eni-manager", "/var/run/netns"]:
        assert p in mounts, f"manager lacks mount {p}"
    assert mounts["/var/run/netns"]["mountPropagation"] == "HostToContainer"
    vols = {v["name"]: v for v in spec["volumes"]}
    assert vols["state-dir"]["hostPath"]["type"] == "DirectoryOrCreate"
    install = container(ds, "install-cni", init=True)
    assert "/host/opt/cni/bin" in {m["mountPath"] for m in install["volumeMounts"]}
    container(ds, "cni-config")

    # Credentials wiring.
    names = env_names(mgr)
    key_env = {"aliyun": {"ALIBABA_CLOUD_ACCESS_KEY_ID", "ALIBABA_CLOUD_ACCESS_KEY_SECRET"},
               "aws": {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"}}[provider]
    secrets = by_kind(objs, "Secret")
    sa = one(objs, "ServiceAccount")
    annotations = sa["metadata"].get("annotations") or {}
    if source in ("existingSecret", "values"):
        assert key_env <= names, f"missing {key_env - names}"
        secret_name = (values["credentials"]["existingSecret"]["name"]
                       if source == "existingSecret" else secrets[0]["metadata"]["name"])
        refs = {e["valueFrom"]["secretKeyRef"]["name"] for e in mgr["env"] if "valueFrom" in e}
        assert refs == {secret_name}, f"env refers to {refs}, not {secret_name}"
    else:
        assert not (key_env & names), "no access keys expected"
    assert (len(secrets) == 1) == (source == "values"), f"{len(secrets)} Secret(s) for {source}"
    if source == "irsa":
        assert annotations.get("eks.amazonaws.com/role-arn") == values["credentials"]["irsa"]["roleArn"]
    else:
        assert "eks.amazonaws.com/role-arn" not in annotations

    # The manager's configuration file.
    cm = one(objs, "ConfigMap")
    cfg = yaml.safe_load(cm["data"]["config.yaml"])
    svc_on = bool(values.get("services", {}).get("enabled", False))
    pol_on = bool(values.get("policy", {}).get("enabled", False))
    masq_on = bool(values.get("masquerade", {}).get("enabled", False))
    sections = ({"cloud", "cluster", "network", "pool", "gc", "daemon"}
                | ({"services"} if svc_on else set()) | ({"policy"} if pol_on else set())
                | ({"masquerade"} if masq_on else set()))
    assert set(cfg) == sections, set(cfg)
    services_wiring(values, ds, cm, cfg)
    policy_wiring(values, ds, cm, cfg)
    masquerade_wiring(values, ds, cm, cfg)
    want_creds = {"aliyun": "ram_role" if source == "ramRole" else "env", "aws": "chain"}[provider]
    assert cfg["cloud"]["credentials"] == want_creds, cfg["cloud"]["credentials"]
    assert cfg["cluster"]["id"] == values["config"]["cluster"]["id"]
    assert cfg["network"]["subnets"] == values["config"]["network"]["subnets"]
    assert "" not in cfg["cloud"].values() and None not in cfg["pool"].values()
    assert cfg["daemon"]["socket"] == "/run/eni-manager/eni-manager.sock"
    port = values.get("metrics", {}).get("port", 9410)
    assert cfg["daemon"]["metrics_address"].endswith(f":{port}")

    # The conflist.
    name = values.get("cni", {}).get("conflistName", "10-eni-net.conflist")
    conflist = json.loads(cm["data"][name])
    first = conflist["plugins"][0]
    assert first["type"] == "eni-cni" and first["socket"] == cfg["daemon"]["socket"]
    # hostPort: eni-cni asks for the runtime's port mappings exactly when the manager
    # serves them (services.nodeport).
    np_on = svc_on and bool(values.get("services", {}).get("nodeport", {}).get("enabled"))
    caps = first.get("capabilities", {})
    assert caps.get("portMappings", False) == np_on, f"capabilities {caps}, nodeport {np_on}"
    assert conflist["cniVersion"] in ("0.4.0", "1.0.0", "1.1.0")
    cfg_env = next(e for e in container(ds, "cni-config")["env"] if e["name"] == "READYZ_URL")
    assert cfg_env["value"] == f"http://127.0.0.1:{port}/readyz"

    monitor = values.get("serviceMonitor", {}).get("enabled", False)
    assert len(by_kind(objs, "ServiceMonitor")) == int(monitor)
    assert len(by_kind(objs, "Service")) == int(monitor)

    binary = manager_bin()
    if binary:
        with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
            f.write(cm["data"]["config.yaml"])
            f.flush()
            env = {k: v for k, v in os.environ.items() if not k.startswith("ENI_MANAGER")}
            # What the DaemonSet's downward API gives the manager (spec.nodeName).
            env.update(downward_env(mgr, NODE_NAME))
            r = subprocess.run([binary, "--config", f.name, "--check-config"],
                               capture_output=True, text=True, env=env, timeout=60)
            assert r.returncode == 0, f"eni-manager --check-config: {r.stderr.strip()}"
            if svc_on:
                # The configuration the manager ends up with (it prints it): the chart's
                # paths and the node name from the environment.
                got = yaml.safe_load(r.stdout)["services"]
                want = dict(cfg["services"], node_name=NODE_NAME)
                diff = {k: (got.get(k), v) for k, v in want.items() if got.get(k) != v}
                assert not diff, f"eni-manager --check-config services (got, want): {diff}"
            if pol_on:
                got = yaml.safe_load(r.stdout)["policy"]
                diff = {k: (got.get(k), v) for k, v in cfg["policy"].items() if got.get(k) != v}
                assert not diff, f"eni-manager --check-config policy (got, want): {diff}"
            if masq_on:
                # Every rendered key as the manager reads it; a list left out is the
                # manager's default (ip-masq-agent's), and the pins go where the others' do.
                got = yaml.safe_load(r.stdout)["masquerade"]
                diff = {k: (got.get(k), v) for k, v in cfg["masquerade"].items()
                        if got.get(k) != v}
                assert not diff, f"eni-manager --check-config masquerade (got, want): {diff}"
                if "non_masquerade_cidrs" not in cfg["masquerade"]:
                    assert got["non_masquerade_cidrs"] == IP_MASQ_AGENT_DEFAULT, got
    else:
        why = STALE_NOTE or "no eni-manager binary (build it or set ENI_MANAGER_BIN)"
        print(f"     note: {values_file.name}: {why}; the rendered config was not checked "
              "by --check-config")


# The node name the downward API would give (spec.nodeName), for --check-config.
NODE_NAME = "cn-hangzhou.192.168.1.7"


def downward_env(c: dict, node_name: str) -> dict[str, str]:
    """The container's env entries that come from spec.nodeName, resolved to node_name."""
    out = {}
    for e in c.get("env", []):
        ref = e.get("valueFrom", {}).get("fieldRef", {})
        if ref.get("fieldPath") == "spec.nodeName":
            out[e["name"]] = node_name
    return out


def services_wiring(values: dict, ds: dict, cm: dict, cfg: dict) -> None:
    """services.enabled: the manager's `services` section points at the DaemonSet's mounts
    (bpffs Bidirectional, cgroup v2 root, the files ConfigMap), the node name comes from the
    downward API, an init container mounts a bpffs. Disabled: none of it exists."""
    svc = values.get("services", {})
    bpf = values.get("bpf", {})
    spec = ds["spec"]["template"]["spec"]
    mgr = container(ds, "eni-manager")
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in mgr["volumeMounts"]}
    inits = [c["name"] for c in spec["initContainers"]]
    env = {e["name"]: e for e in mgr.get("env", [])}
    if not svc.get("enabled", False):
        assert "services" not in cfg, "services section rendered while services.enabled is false"
        # policy.enabled brings the bpffs (and its init container) on its own; see
        # policy_wiring.
        # So does masquerade.enabled; see masquerade_wiring.
        pol = values.get("policy", {})
        masq = values.get("masquerade", {})
        pol_on = bool(pol.get("enabled", False))
        masq_on = bool(masq.get("enabled", False))
        bpf_vols = {"bpffs"} if (pol_on or masq_on) else set()
        if pol_on and pol.get("source", "kubernetes") == "files":
            bpf_vols.add("policy-files")
        if masq_on and masq.get("configMap"):
            bpf_vols.add("masquerade-config")
        host_paths = {v["hostPath"]["path"] for k, v in vols.items()
                      if "hostPath" in v and k not in bpf_vols}
        assert not {p for p in host_paths if p.startswith(("/sys", "/proc"))}, host_paths
        assert set(vols) == {"config", "cni-files", "run-dir", "state-dir", "netns-dir",
                             "cni-bin-dir", "cni-conf-dir"} | bpf_vols, set(vols)
        assert inits == ["install-cni"] + (["mount-bpffs"] if pol_on or masq_on else []), inits
        assert not [n for n in env if n.startswith("ENI_MANAGER__SERVICES__")
                    or n.startswith("KUBERNETES_SERVICE_")], sorted(env)
        assert pol_on or masq_on or "mount-bpffs.sh" not in cm["data"], \
            "mount-bpffs.sh rendered while services, policy and masquerade are off"
        return
    source = svc.get("source", "kubernetes")
    host_bpffs = bpf.get("hostBpffs", "/sys/fs/bpf")
    pin_dir = bpf.get("pinDir", "/sys/fs/bpf/eni-net")
    cgroup_root = svc.get("cgroupRoot", "/sys/fs/cgroup")
    sc = cfg["services"]
    assert sc["enabled"] is True and sc["source"] == source, sc
    assert "kubeconfig" not in sc, "in a pod the manager uses the in-cluster service account"
    assert "node_name" not in sc, "the node name is per node: from the downward API, not the file"

    # Pins on the node's bpffs, visible in the manager through a Bidirectional hostPath.
    assert sc["bpf_pin_dir"] == pin_dir, sc["bpf_pin_dir"]
    bpffs_mount = mounts.get(host_bpffs)
    assert bpffs_mount, f"manager lacks the bpffs mount {host_bpffs}"
    assert bpffs_mount.get("mountPropagation") == "Bidirectional", bpffs_mount
    assert pin_dir.startswith(bpffs_mount["mountPath"] + "/"), "pin dir not on the mounted bpffs"
    bpffs_vol = vols[bpffs_mount["name"]]["hostPath"]
    assert bpffs_vol == {"path": host_bpffs, "type": "DirectoryOrCreate"}, bpffs_vol

    # The init container that mounts a bpffs there, with the node seeing the mount.
    assert inits == ["install-cni", "mount-bpffs"], inits
    mb = container(ds, "mount-bpffs", init=True)
    assert mb["securityContext"] == {"privileged": True}, "mount(2) and Bidirectional need privileged"
    assert mb["command"] == ["/bin/sh", "/etc/eni-net/mount-bpffs.sh"]
    assert {e["name"]: e["value"] for e in mb["env"]} == {"BPFFS": host_bpffs}
    mb_mounts = {m["mountPath"]: m for m in mb["volumeMounts"]}
    assert mb_mounts[host_bpffs]["name"] == bpffs_mount["name"]
    assert mb_mounts[host_bpffs].get("mountPropagation") == "Bidirectional", mb_mounts[host_bpffs]
    items = {i["key"] for i in vols["cni-files"]["configMap"]["items"]}
    assert "mount-bpffs.sh" in items and "mount-bpffs.sh" in cm["data"], "mount-bpffs.sh not mounted"
    assert mb["image"] == container(ds, "install-cni", init=True)["image"], "not the chart's image"

    # The hooks attach to the node's cgroup v2 root, read-only.
    cg_mount = mounts.get(sc["cgroup"])
    assert cg_mount, f"services.cgroup {sc['cgroup']} is not a mount of the manager"
    assert cg_mount.get("readOnly") is True, "the cgroup root must be mounted read-only"
    cg_vol = vols[cg_mount["name"]]["hostPath"]
    assert cg_vol == {"path": cgroup_root, "type": "Directory"}, cg_vol

    # The source.
    if source == "files":
        assert sc["dir"] in mounts, f"services.dir {sc['dir']} is not mounted"
        files_vol = vols[mounts[sc["dir"]]["name"]]
        assert files_vol["configMap"]["name"] == svc["configMap"], files_vol
    else:
        assert "dir" not in sc, "services.dir is only for the files source"
    np = svc.get("nodeport", {})
    if np.get("enabled"):
        assert sc["nodeport"] == {"enabled": True, "links": np["links"],
                                  "addresses": np.get("addresses", [])}, sc["nodeport"]
    else:
        assert "nodeport" not in sc, "services.nodeport rendered while off"
    ref = env["ENI_MANAGER__SERVICES__NODE_NAME"]["valueFrom"]["fieldRef"]
    assert ref["fieldPath"] == "spec.nodeName", ref
    if svc.get("k8sServiceHost"):
        assert env["KUBERNETES_SERVICE_HOST"]["value"] == svc["k8sServiceHost"]
        assert env["KUBERNETES_SERVICE_PORT"]["value"] == str(svc.get("k8sServicePort", 443))
    else:
        assert "KUBERNETES_SERVICE_HOST" not in env, "the kubelet's in-cluster default applies"

    # No other container gets the node's bpffs or cgroups.
    for c in spec["containers"] + spec["initContainers"]:
        if c["name"] in ("eni-manager", "mount-bpffs"):
            continue
        names = {m["name"] for m in c["volumeMounts"]}
        assert not names & {bpffs_mount["name"], cg_mount["name"]}, f"{c['name']} mounts {names}"


def policy_wiring(values: dict, ds: dict, cm: dict, cfg: dict) -> None:
    """policy.enabled: the manager's `policy` section pins next to the services' maps on the
    node's bpffs (mounted Bidirectional, with the mount-bpffs init container), and for the
    files source reads the ConfigMap's mount. Disabled: no `policy` section at all (the chart
    used to drop config.policy; now it is refused, and the values own the section)."""
    pol = values.get("policy", {})
    bpf = values.get("bpf", {})
    spec = ds["spec"]["template"]["spec"]
    mgr = container(ds, "eni-manager")
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in mgr["volumeMounts"]}
    if not pol.get("enabled", False):
        assert "policy" not in cfg, "policy section rendered while policy.enabled is false"
        assert "policy-files" not in vols
        return
    source = pol.get("source", "kubernetes")
    host_bpffs = bpf.get("hostBpffs", "/sys/fs/bpf")
    pin_dir = bpf.get("pinDir", "/sys/fs/bpf/eni-net")
    pc = cfg["policy"]
    assert pc["enabled"] is True and pc["source"] == source, pc
    assert "kubeconfig" not in pc, "in a pod the manager uses the in-cluster service account"
    assert pc["bpf_pin_dir"] == pin_dir, pc
    bpffs_mount = mounts.get(host_bpffs)
    assert bpffs_mount, f"manager lacks the bpffs mount {host_bpffs}"
    assert bpffs_mount.get("mountPropagation") == "Bidirectional", bpffs_mount
    assert vols[bpffs_mount["name"]]["hostPath"] == {"path": host_bpffs, "type": "DirectoryOrCreate"}
    assert "mount-bpffs" in [c["name"] for c in spec["initContainers"]]
    items = {i["key"] for i in vols["cni-files"]["configMap"]["items"]}
    assert "mount-bpffs.sh" in items and "mount-bpffs.sh" in cm["data"], "mount-bpffs.sh not mounted"
    if source == "files":
        assert pc["dir"] in mounts, f"policy.dir {pc['dir']} is not mounted"
        assert mounts[pc["dir"]].get("readOnly") is True
        files_vol = vols[mounts[pc["dir"]]["name"]]
        assert files_vol["configMap"]["name"] == pol["configMap"], files_vol
    else:
        assert "dir" not in pc, "policy.dir is only for the files source"
        assert "policy-files" not in vols


# ip-masq-agent's documented nonMasqueradeCIDRs, the manager's default
# (eni_bpf::masq::IP_MASQ_AGENT_DEFAULT_CIDRS).
IP_MASQ_AGENT_DEFAULT = ["10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "100.64.0.0/10",
                         "192.0.0.0/24", "192.0.2.0/24", "192.88.99.0/24", "198.18.0.0/15",
                         "198.51.100.0/24", "203.0.113.0/24", "240.0.0.0/4"]


def masquerade_wiring(values: dict, ds: dict, cm: dict, cfg: dict) -> None:
    """masquerade.enabled: the manager's `masquerade` section has exactly the keys the values
    give (pins in bpf.pinDir, next to the services' and policy's), on the node's bpffs
    (mounted Bidirectional, with the mount-bpffs init container); with masquerade.configMap
    the ip-masq-agent ConfigMap is mounted read-only as a directory (not a subPath: updates
    reach it), optional, and config_file is in it. Disabled: none of it."""
    masq = values.get("masquerade", {})
    bpf = values.get("bpf", {})
    spec = ds["spec"]["template"]["spec"]
    mgr = container(ds, "eni-manager")
    vols = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: m for m in mgr["volumeMounts"]}
    if not masq.get("enabled", False):
        assert "masquerade" not in cfg, "masquerade section rendered while masquerade.enabled is false"
        assert "masquerade-config" not in vols
        return
    host_bpffs = bpf.get("hostBpffs", "/sys/fs/bpf")
    pin_dir = bpf.get("pinDir", "/sys/fs/bpf/eni-net")
    mc = cfg["masquerade"]
    want = {"enabled": True, "links": masq["links"], "vpc_cidrs": masq.get("vpcCidrs") or [],
            "masq_link_local": bool(masq.get("masqLinkLocal", False)), "bpf_pin_dir": pin_dir}
    if masq.get("nonMasqueradeCidrs"):
        want["non_masquerade_cidrs"] = masq["nonMasqueradeCidrs"]
    if masq.get("configMap"):
        want["config_file"] = mc.get("config_file")
        want["resync_interval_s"] = masq.get("resyncIntervalSeconds", 60)
    assert mc == want, f"masquerade section (got, want): {mc} != {want}"
    for section in ("services", "policy"):
        if section in cfg:
            assert cfg[section]["bpf_pin_dir"] == mc["bpf_pin_dir"], f"{section} pins elsewhere"
    bpffs_mount = mounts.get(host_bpffs)
    assert bpffs_mount, f"manager lacks the bpffs mount {host_bpffs}"
    assert bpffs_mount.get("mountPropagation") == "Bidirectional", bpffs_mount
    assert pin_dir.startswith(host_bpffs + "/"), "pin dir not on the mounted bpffs"
    assert vols[bpffs_mount["name"]]["hostPath"] == {"path": host_bpffs, "type": "DirectoryOrCreate"}
    assert "mount-bpffs" in [c["name"] for c in spec["initContainers"]]
    items = {i["key"] for i in vols["cni-files"]["configMap"]["items"]}
    assert "mount-bpffs.sh" in items and "mount-bpffs.sh" in cm["data"], "mount-bpffs.sh not mounted"
    if masq.get("configMap"):
        key = masq.get("configMapKey", "config")
        cfg_file = Path(mc["config_file"])
        assert cfg_file.name == key, f"config_file {cfg_file} does not name the key {key}"
        mount = mounts.get(str(cfg_file.parent))
        assert mount, f"masquerade.config_file's directory {cfg_file.parent} is not mounted"
        assert mount.get("readOnly") is True and "subPath" not in mount, mount
        vol = vols[mount["name"]]
        assert vol == {"name": mount["name"], "configMap": {"name": masq["configMap"],
                                                             "optional": True}}, vol
        for c in spec["containers"] + spec["initContainers"]:
            if c["name"] != "eni-manager":
                assert mount["name"] not in {m["name"] for m in c["volumeMounts"]}, c["name"]
    else:
        assert "masquerade-config" not in vols


def policy_rbac() -> None:
    """The ClusterRole lets the policy source list and watch what it watches."""
    objs = objects(render(load_values(CI / "aliyun-policy-values.yaml")))
    rules = one(objs, "ClusterRole")["rules"]

    def allowed(group: str, resource: str, verb: str) -> bool:
        return any(group in r.get("apiGroups", []) and resource in r.get("resources", [])
                   and verb in r.get("verbs", []) for r in rules)
    for group, resource in [("networking.k8s.io", "networkpolicies"), ("", "pods"),
                            ("", "namespaces")]:
        for verb in ("list", "watch"):
            assert allowed(group, resource, verb), f"ClusterRole lacks {verb} {group}/{resource}"


def render_fails(values: dict, *expected: str) -> None:
    try:
        render(values)
    except helm.HelmError as e:
        msg = str(e)
        missing = [x for x in expected if x not in msg]
        assert not missing, f"message lacks {missing}: {msg}"
        return
    raise AssertionError("rendered, but should have failed")


def required_values() -> None:
    render_fails({}, "4 problem(s)", "image.repository is required",
                 "config.cloud.provider is required", "config.cluster.id is required",
                 "config.network.subnets is required")


def bad_combinations() -> None:
    base = load_values(CI / "aliyun-values.yaml")

    def with_(patch: dict) -> dict:
        v = json.loads(json.dumps(base))
        for dotted, val in patch.items():
            cur = v
            *parents, leaf = dotted.split(".")
            for p in parents:
                cur = cur.setdefault(p, {})
            cur[leaf] = val
        return v

    render_fails(with_({"credentials.source": "irsa"}), "credentials.source irsa is for aws")
    render_fails(with_({"credentials.existingSecret.name": ""}),
                 "credentials.existingSecret.name is required")
    render_fails(with_({"credentials.source": "values"}),
                 "credentials.accessKeyId and credentials.accessKeySecret are required")
    render_fails(with_({"serviceMonitor.enabled": True}), "needs metrics.bindAddress 0.0.0.0")
    render_fails(with_({"config.network.subnets": {"cn-hangzhou-h": []}}),
                 "config.network.subnets is required")
    render_fails(with_({"config.cloud.credentials": "env"}), "config.cloud.credentials is set by the chart")
    render_fails(with_({"config.daemon": {"socket": "/tmp/x.sock"}}), "config.daemon is set by the chart")
    render_fails(with_({"config.pool.max_idle": 1}), "config.pool.max_idle (1) is below")
    render_fails(with_({"config.cluster.tags": {"eni-net.io/node": "x"}}), "prefix is reserved")
    render_fails(with_({"cni.mode": "fast"}), 'cni.mode "fast"')
    render_fails(with_({"config.cloud.provider": "gcp"}), "must be aliyun or aws")

    # Service load balancing: the chart owns the paths; each bad value is named with its fix.
    render_fails(with_({"config.services": {"enabled": True}}),
                 "config.services is set by the chart", "use services.enabled")
    render_fails(with_({"extraEnv": [{"name": "ENI_MANAGER__SERVICES__ENABLED", "value": "true"}]}),
                 "extraEnv ENI_MANAGER__SERVICES__ENABLED: the services section is set by the chart")
    render_fails(with_({"services.enabled": True, "services.source": "etcd"}),
                 'services.source "etcd": use kubernetes', "or files")
    render_fails(with_({"services.enabled": True, "services.source": "files"}),
                 "services.configMap is required when services.source is files")
    render_fails(with_({"services.enabled": True, "services.configMap": "svc"}),
                 'services.configMap "svc" is only read with services.source files')
    render_fails(with_({"services.enabled": True, "services.cgroupRoot": "sys/fs/cgroup"}),
                 'services.cgroupRoot "sys/fs/cgroup" must be', "absolute path", "like /sys/fs/cgroup")
    render_fails(with_({"services.enabled": True, "services.cgroupRoot": "/sys/fs/cgroup/"}),
                 'services.cgroupRoot "/sys/fs/cgroup/" must be')
    render_fails(with_({"services.enabled": True, "bpf.pinDir": "/run/eni-net/bpf"}),
                 'bpf.pinDir "/run/eni-net/bpf" must be a directory under bpf.hostBpffs "/sys/fs/bpf"',
                 "like /sys/fs/bpf/eni-net")
    render_fails(with_({"services.enabled": True, "bpf.pinDir": "/sys/fs/bpf"}),
                 'bpf.pinDir "/sys/fs/bpf" must be a directory under bpf.hostBpffs')
    render_fails(with_({"services.enabled": True, "bpf.pinDir": "/sys/fs/bpf/../eni-net"}),
                 'bpf.pinDir "/sys/fs/bpf/../eni-net" must be an absolute path')
    render_fails(with_({"services.enabled": True, "bpf.hostBpffs": "bpf"}),
                 'bpf.hostBpffs "bpf" must be an absolute path', "like /sys/fs/bpf")
    render_fails(with_({"services.enabled": True, "services.k8sServiceHost": "https://10.0.0.1:6443"}),
                 'services.k8sServiceHost "https://10.0.0.1:6443": give the API server\'s host name')
    render_fails(with_({"services.enabled": True, "services.k8sServiceHost": "10.0.0.1",
                        "services.k8sServicePort": 0}),
                 "services.k8sServicePort 0: use the API server's port")
    render_fails(with_({"services.enabled": True, "services.nodeport.enabled": True}),
                 "services.nodeport.links is required")
    render_fails(with_({"services.enabled": True, "services.nodeport.enabled": True,
                        "services.nodeport.links": ["eth0", "bad/name"],
                        "services.nodeport.addresses": ["10.0.0.256"]}),
                 "2 problem(s)", 'services.nodeport.links: "bad/name" is not an interface name',
                 'services.nodeport.addresses: "10.0.0.256" is not an IPv4 address')
    # NetworkPolicy: the chart owns the section; each bad value is named with its fix.
    render_fails(with_({"config.policy": {"enabled": True}}),
                 "config.policy is set by the chart", "use policy.enabled")
    render_fails(with_({"extraEnv": [{"name": "ENI_MANAGER__POLICY__SOURCE", "value": "files"}]}),
                 "extraEnv ENI_MANAGER__POLICY__SOURCE: the policy section is set by the chart")
    render_fails(with_({"policy.enabled": True, "policy.source": "etcd"}),
                 'policy.source "etcd": use kubernetes', "or files")
    render_fails(with_({"policy.enabled": True, "policy.source": "files"}),
                 "policy.configMap is required when policy.source is files")
    render_fails(with_({"policy.enabled": True, "policy.configMap": "pol"}),
                 'policy.configMap "pol" is only read with policy.source files')
    # Masquerade: the chart owns the section; each bad value is named with its fix.
    render_fails(with_({"config.masquerade": {"enabled": True}}),
                 "config.masquerade is set by the chart", "use masquerade.enabled")
    render_fails(with_({"extraEnv": [{"name": "ENI_MANAGER__MASQUERADE__VPC_CIDRS",
                                      "value": "[10.0.0.0/8]"}]}),
                 "extraEnv ENI_MANAGER__MASQUERADE__VPC_CIDRS: the masquerade section is set by "
                 "the chart", "use the masquerade.* and bpf.* values")
    masq = {"masquerade.enabled": True, "masquerade.links": ["eth0"],
            "masquerade.vpcCidrs": ["192.168.0.0/16"]}
    render_fails(with_({"masquerade.enabled": True}), "1 problem(s)",
                 "masquerade.links is required when masquerade.enabled", "like [eth0, eth1]")
    render_fails(with_(dict(masq, **{"masquerade.links": ["eth0", "bad/name", "eth0"]})),
                 "2 problem(s)", 'masquerade.links: "bad/name" is not an interface name',
                 'masquerade.links: "eth0" is listed twice')
    render_fails(with_(dict(masq, **{"masquerade.links": "eth0"})),
                 "masquerade.links must be a list of interface names")
    render_fails(with_(dict(masq, **{"masquerade.vpcCidrs": ["192.168.0.0/33"],
                                     "masquerade.nonMasqueradeCidrs": ["10.0.0.0/8", "nope"]})),
                 "2 problem(s)", 'masquerade.vpcCidrs: "192.168.0.0/33" is not an IPv4 CIDR',
                 'masquerade.nonMasqueradeCidrs: "nope" is not an IPv4 CIDR',
                 "write it as a.b.c.d/n")
    render_fails(with_(dict(masq, **{"masquerade.nonMasqueradeCidrs": "10.0.0.0/8"})),
                 "masquerade.nonMasqueradeCidrs must be a list of IPv4 CIDRs")
    render_fails(with_(dict(masq, **{"masquerade.nonMasqueradeCidrs":
                                     [f"10.{i // 256}.{i % 256}.0/24" for i in range(1024)]})),
                 "masquerade.nonMasqueradeCidrs: 1026 entries", "at most 1024 fit")
    render_fails(with_(dict(masq, **{"masquerade.masqLinkLocal": "yes"})),
                 "masquerade.masqLinkLocal yes: use true or false")
    render_fails(with_(dict(masq, **{"masquerade.configMap": "ip-masq-agent",
                                     "masquerade.configMapKey": "../config",
                                     "masquerade.resyncIntervalSeconds": 0})),
                 "2 problem(s)", 'masquerade.configMapKey "../config"', "like config",
                 "masquerade.resyncIntervalSeconds 0: give whole seconds, at least 1")
    # A masquerade that would pin off the node's bpffs is refused like the others.
    render_fails(with_(dict(masq, **{"bpf.pinDir": "/run/eni-net/bpf"})),
                 'bpf.pinDir "/run/eni-net/bpf" must be a directory under bpf.hostBpffs')
    # Off, nothing of it is checked (nor rendered: see masquerade_wiring).
    render(with_({"masquerade.enabled": False, "masquerade.links": "eth0"}))
    # Several at once, each named (like the other problems).
    render_fails(with_({"services.enabled": True, "services.source": "files",
                        "services.cgroupRoot": "", "bpf.pinDir": "/tmp/pins"}),
                 "3 problem(s)", "services.configMap is required", "services.cgroupRoot",
                 'bpf.pinDir "/tmp/pins"')


class _Readyz(http.server.BaseHTTPRequestHandler):
    ready = False

    def do_GET(self):  # noqa: N802 - the stdlib's name
        code = 200 if type(self).ready and self.path == "/readyz" else 503
        self.send_response(code)
        self.end_headers()
        self.wfile.write(b"ready\n" if code == 200 else b"not ready\n")

    def log_message(self, *args):
        pass


def cni_config_waits_for_ready() -> None:
    manifests = render(load_values(CI / "aliyun-values.yaml"))
    cm = one(objects(manifests), "ConfigMap")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Readyz)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "src").mkdir()
        (tmp / "net.d").mkdir()
        src = tmp / "src" / "10-eni-net.conflist"
        src.write_text(cm["data"]["10-eni-net.conflist"])
        script = tmp / "cni-config.sh"
        script.write_text(cm["data"]["cni-config.sh"])
        dest = tmp / "net.d" / "10-eni-net.conflist"
        env = dict(os.environ, READYZ_URL=f"http://127.0.0.1:{server.server_port}/readyz",
                   SOURCE=str(src), HOST_CONF_DIR=str(tmp / "net.d"),
                   CONFLIST_NAME="10-eni-net.conflist", RECHECK_SECONDS="1")
        _Readyz.ready = False
        proc = subprocess.Popen(["/bin/sh", str(script)], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        try:
            time.sleep(3)
            assert proc.poll() is None, f"exited early: {proc.stdout.read()}"
            assert not dest.exists(), "conflist written before /readyz answered 200"
            _Readyz.ready = True
            deadline = time.time() + 10
            while not dest.exists() and time.time() < deadline:
                time.sleep(0.2)
            assert dest.exists(), "conflist not written after /readyz answered 200"
            assert dest.read_text() == src.read_text()
            assert oct(dest.stat().st_mode & 0o777) == "0o644"
            dest.unlink()  # someone removes it: it comes back while the manager is ready
            deadline = time.time() + 10
            while not dest.exists() and time.time() < deadline:
                time.sleep(0.2)
            assert dest.exists(), "conflist not restored"
            leftovers = [p.name for p in (tmp / "net.d").iterdir() if p.name != dest.name]
            assert not leftovers, f"temporary files left: {leftovers}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
            server.shutdown()


def mount_bpffs_script() -> None:
    """mount-bpffs mounts a bpffs only when the mount table shows none at $BPFFS (the last
    mount there wins), and fails, naming the path, when the mount does not take. Run with a
    stand-in mount table and a stand-in `mount` that records its arguments and appends the
    new mount to the table, as the kernel would."""
    manifests = render(load_values(CI / "aliyun-services-values.yaml"))
    cm = one(objects(manifests), "ConfigMap")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = tmp / "mount-bpffs.sh"
        script.write_text(cm["data"]["mount-bpffs.sh"])
        (tmp / "bin").mkdir()
        calls = tmp / "calls"
        fake = tmp / "bin" / "mount"
        fake.write_text('#!/bin/sh\necho "$*" >> "$CALLS"\n'
                        '[ "${FAKE_MOUNT_FAILS:-}" = 1 ] && exit 32\n'
                        '[ "${FAKE_MOUNT_NOOP:-}" = 1 ] && exit 0\n'
                        'echo "bpf $4 bpf rw,relatime 0 0" >> "$PROC_MOUNTS"\n')
        fake.chmod(0o755)
        table = tmp / "mounts"

        def run(lines: list[str], **extra: str) -> subprocess.CompletedProcess:
            table.write_text("".join(line + "\n" for line in lines))
            calls.write_text("")
            env = dict(os.environ, BPFFS="/sys/fs/bpf", PROC_MOUNTS=str(table),
                       CALLS=str(calls), PATH=f"{tmp / 'bin'}:{os.environ['PATH']}", **extra)
            return subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True,
                                  text=True, timeout=30)

        base = ["sysfs /sys sysfs rw,nosuid 0 0", "cgroup2 /sys/fs/cgroup cgroup2 rw 0 0"]
        # Already a bpffs: nothing mounted.
        r = run(base + ["bpf /sys/fs/bpf bpf rw,nosuid,nodev,noexec,relatime,mode=700 0 0"])
        assert r.returncode == 0 and calls.read_text() == "", (r.stdout, r.stderr, calls.read_text())
        assert "already a bpf filesystem" in r.stdout
        # No mount of its own (a plain sysfs directory, or a prefix-named path): mounted.
        r = run(base + ["bpf /sys/fs/bpf2 bpf rw 0 0"])
        assert r.returncode == 0, r.stderr
        assert calls.read_text() == "-t bpf bpf /sys/fs/bpf\n", calls.read_text()
        assert "mounted a bpf filesystem at /sys/fs/bpf" in r.stdout
        # A bpffs hidden by a later mount on top: mounted again.
        r = run(base + ["bpf /sys/fs/bpf bpf rw 0 0", "tmpfs /sys/fs/bpf tmpfs rw 0 0"])
        assert r.returncode == 0 and calls.read_text() == "-t bpf bpf /sys/fs/bpf\n", r.stderr
        # mount fails: exit 1 with the reason to look at.
        r = run(base, FAKE_MOUNT_FAILS="1")
        assert r.returncode == 1 and "mount -t bpf bpf /sys/fs/bpf failed" in r.stderr, r.stderr
        assert "privileged" in r.stderr
        # mount "succeeds" but the table shows no bpffs: refused, not believed.
        r = run(base, FAKE_MOUNT_NOOP="1")
        assert r.returncode == 1 and "shows nothing at /sys/fs/bpf, not bpf" in r.stderr, r.stderr


def mount_bpffs_real() -> None:
    """As root: the script in a private mount namespace (nothing reaches this machine's
    mounts) against a temporary directory, with the real `mount` and /proc/mounts: the first
    run mounts a bpffs, the second finds it and mounts nothing."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        script = tmp / "mount-bpffs.sh"
        script.write_text((CHART / "files" / "mount-bpffs.sh").read_text())
        target = tmp / "bpffs"
        target.mkdir()
        inner = (f'sh {script} && sh {script} && '
                 f'while read -r d m t r; do [ "$m" = "{target}" ] && echo "TYPE $t"; done </proc/mounts; '
                 f'stat -f -c "MAGIC %t" {target}')
        r = subprocess.run(["unshare", "--mount", "--propagation", "private", "sh", "-c", inner],
                           env=dict(os.environ, BPFFS=str(target)), capture_output=True,
                           text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        out = r.stdout
        assert out.count("mounting one") == 1 and "mounted a bpf filesystem" in out, out
        assert "is already a bpf filesystem" in out, out
        assert out.count("TYPE bpf") == 1, out
        assert "MAGIC cafe4a11" in out, out  # BPF_FS_MAGIC
        leaked = [line for line in Path("/proc/mounts").read_text().splitlines() if str(target) in line]
        assert not leaked, f"the mount leaked out of the namespace: {leaked}"


def install_cni_script() -> None:
    manifests = render(load_values(CI / "aliyun-ramrole-values.yaml"))
    cm = one(objects(manifests), "ConfigMap")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        (tmp / "bin").mkdir()
        (tmp / "net.d").mkdir()
        fake = tmp / "eni-cni"
        fake.write_text("#!/bin/sh\necho fake\n")
        fake.chmod(0o700)
        (tmp / "net.d" / "10-eni-net.conflist").write_text("{}")
        (tmp / "net.d" / "05-other.conflist").write_text("{}")
        script = tmp / "install-cni.sh"
        script.write_text(cm["data"]["install-cni.sh"])
        env = dict(os.environ, CNI_BINARY=str(fake), HOST_BIN_DIR=str(tmp / "bin"),
                   HOST_CONF_DIR=str(tmp / "net.d"), CONFLIST_NAME="10-eni-net.conflist",
                   REMOVE_CONFIG_ON_START="true")
        r = subprocess.run(["/bin/sh", str(script)], env=env, capture_output=True, text=True)
        assert r.returncode == 0, r.stderr
        installed = tmp / "bin" / "eni-cni"
        assert installed.read_text() == fake.read_text()
        assert installed.stat().st_mode & 0o777 == 0o755
        assert not (tmp / "net.d" / "10-eni-net.conflist").exists(), "stale conflist kept"
        assert (tmp / "net.d" / "05-other.conflist").exists(), "another network's file removed"
        assert sorted(p.name for p in (tmp / "bin").iterdir()) == ["eni-cni"]


YAMLLINT_CONFIG = """
extends: default
rules:
  document-start: disable
  line-length: {max: 120}
  indentation: {spaces: consistent, indent-sequences: whatever}
  truthy: {allowed-values: ["true", "false"], check-keys: false}
  comments: {min-spaces-from-content: 1}
  comments-indentation: disable
"""
# Rendered output carries user values (image digests, ARNs) of any length.
YAMLLINT_RENDERED_CONFIG = YAMLLINT_CONFIG.replace("line-length: {max: 120}", "line-length: disable")


def yamllint_files() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        config = tmp / "yamllint.yaml"
        config.write_text(YAMLLINT_CONFIG)
        rendered_config = tmp / "yamllint-rendered.yaml"
        rendered_config.write_text(YAMLLINT_RENDERED_CONFIG)
        files = [str(CHART / "values.yaml"), str(CHART / "Chart.yaml")] + [str(f) for f in CI_FILES]
        rendered = []
        for values_file in CI_FILES:
            out = tmp / f"rendered-{values_file.stem}.yaml"
            manifests = render(load_values(values_file))
            out.write_text("".join(
                f"---\n# Source: {path}\n{text.strip()}\n"
                for path, text in sorted(manifests.items())
                if text.strip() and not path.endswith("NOTES.txt")))
            rendered.append(str(out))
        report = ""
        for cfg, batch in ((config, files), (rendered_config, rendered)):
            r = subprocess.run([sys.executable, "-m", "yamllint", "--strict", "-f", "parsable",
                                "-c", str(cfg), *batch], capture_output=True, text=True)
            if r.returncode != 0:
                report += r.stdout + r.stderr
        assert not report, "\n  " + report.strip().replace("\n", "\n  ")


# Values whose content is free-form (a map passed through): listed as one row.
FREE_FORM = {"nodeSelector", "resources", "cniResources", "updateStrategy", "affinity",
             "podLabels", "podAnnotations", "serviceAccount.annotations", "serviceMonitor.labels",
             "config.cluster.tags", "config.network.subnets"}


def leaf_keys(node, prefix=""):
    if isinstance(node, dict) and node and prefix not in FREE_FORM:
        for k, v in node.items():
            yield from leaf_keys(v, f"{prefix}.{k}" if prefix else k)
    else:
        yield prefix


def readme_lists_values() -> None:
    readme = (CHART / "README.md").read_text()
    values = load_values(CHART / "values.yaml")
    missing = [k for k in leaf_keys(values) if f"`{k}`" not in readme]
    assert not missing, f"README.md's values table lacks {missing}"


def scripts_parse() -> None:
    for script in glob.glob(str(CHART / "files" / "*.sh")):
        r = subprocess.run(["/bin/sh", "-n", script], capture_output=True, text=True)
        assert r.returncode == 0, f"{script}: {r.stderr}"


def main() -> int:
    assert CI_FILES, f"no values files in {CI}"
    print(f"helm: chart {CHART.relative_to(REPO)}, helm SDK {helm.helm_sdk_version()}, "
          f"kubernetes-validate {kubernetes_validate.__version__} "
          f"(schemas {', '.join(KUBE_VERSIONS)})")
    for f in CI_FILES:
        check(f"lint --strict with {f.name}", lambda f=f: lint(f))
        check(f"schemas with {f.name}", lambda f=f: validate_schemas(f))
        check(f"rendered objects with {f.name}", lambda f=f: semantics(f))
    check("render without required values fails naming each", required_values)
    check("render with values that cannot work fails naming the problem", bad_combinations)
    check("the ClusterRole lets the policy source list and watch", policy_rbac)
    check("scripts parse (sh -n)", scripts_parse)
    check("install-cni installs the binary atomically", install_cni_script)
    check("mount-bpffs mounts a bpffs only where there is none", mount_bpffs_script)
    if os.geteuid() == 0 and subprocess.run(["sh", "-c", "command -v unshare"],
                                            capture_output=True).returncode == 0:
        check("mount-bpffs mounts a real bpffs (root, private mount namespace)", mount_bpffs_real)
    else:
        print("     note: mount-bpffs against a real bpffs not run (needs root and unshare)")
    check("cni-config writes the conflist only once /readyz is 200", cni_config_waits_for_ready)
    check("yamllint values files and rendered output", yamllint_files)
    check("README lists every value", readme_lists_values)
    print(f"helm: {passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
