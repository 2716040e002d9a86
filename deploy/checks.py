"""Static checks of deploy/, driven by deploy/check.sh (run it, not this file).

Each subcommand checks one thing, exits non-zero with a message on failure, and prints its summary
as the last line of stdout. Run with the venv's Python from outside helm-python-sdk's source folder.

  checks.py yaml DEPLOY                     every YAML file parses (templates/ excluded)
  checks.py render CHART VALUES|- OUTDIR    render the chart (helm-python-sdk) into OUTDIR
  checks.py lint CHART [VALUES...]          helm lint, strict, for each values set
  checks.py servicemonitor FILE [--absent]  the rendered ServiceMonitor (a CRD) is well formed
  checks.py prometheusrule FILE RULES COPY [--absent]
                                            the rendered PrometheusRule carries RULES' groups,
                                            and the chart's COPY of RULES is identical to it
  checks.py schema CHART TESTDIR            values.schema.json rejects every TESTDIR/bad-*.yaml
                                            in render and lint, with the error it names
  checks.py policy [--external=KIND/NAME...] FILE...
                                            restricted PSS, probes, shutdown budget, wiring,
                                            a NetworkPolicy that keeps the admin port closed
  checks.py admin FILE off|revoke|revoke+issue
                                            which admin API endpoints the proxy's config turns on
  checks.py deterministic CHART VALUES|-... two renders of each values set are identical, and
                                            no template generates random values
  checks.py refusals CHART                  values the chart must refuse fail with a clear message
  checks.py compose DEPLOY                  compose.yaml's references and settings
  checks.py check-config BIN REPO [--stand-in=KIND/NAME...] FILE...
                                            run `refresh-proxy check-config` on every config the
                                            manifests, the chart, compose and the image carry
  checks.py dockerfile DOCKERFILE REPO      the image is built with CI's build command
"""

from __future__ import annotations

import base64
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import yaml

PROXY_ARG = "--config"
BUILD_COMMAND = "cargo build --release --locked"
WORKLOAD_KINDS = {"Deployment", "StatefulSet", "DaemonSet", "Job"}


class CheckError(Exception):
    pass


def fail(message: str) -> None:
    raise CheckError(message)


def load_docs(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    for d in docs:
        if not isinstance(d, dict):
            fail(f"{path}: a document is not a mapping")
    return docs


def label_of(file: str) -> str:
    """kubernetes/x.yaml, or "chart (values)" for a render written to <tmp>/helm-<values>/."""
    path = Path(file)
    if path.parent.name.startswith("helm-"):
        return f"chart ({path.parent.name[len('helm-'):]})"
    return f"{path.parent.name}/{path.name}"


def name_of(doc: dict) -> str:
    return f"{doc.get('kind')}/{doc.get('metadata', {}).get('name')}"


# ---------------------------------------------------------------------------------------------
# yaml


def cmd_yaml(deploy: str) -> str:
    root = Path(deploy)
    files = docs = 0
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.suffix not in (".yaml", ".yml") or not path.is_file():
            continue
        if rel.parts[0] == ".venv" or "templates" in rel.parts[:-1]:
            continue
        try:
            with open(path, encoding="utf-8") as f:
                docs += sum(1 for _ in yaml.safe_load_all(f))
        except yaml.YAMLError as e:
            fail(f"{rel}: {e}")
        files += 1
    if files == 0:
        fail("no YAML files found")
    return f"{files} files, {docs} documents (Helm templates excluded: not YAML before rendering)"


# ---------------------------------------------------------------------------------------------
# helm


def cmd_render(chart: str, values_file: str, outdir: str) -> str:
    import helm_python

    values = None
    if values_file != "-":
        values = helm_python.values_from_yaml(Path(values_file).read_text(encoding="utf-8"))
    c = helm_python.Chart.load(chart)
    try:
        out = c.render(values, name="refresh-proxy", namespace="refresh-proxy", is_install=True)
    finally:
        c.close()
    out_dir = Path(outdir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifests, crds, kinds = [], [], []
    for template, text in sorted(out.items()):
        if not template.endswith((".yaml", ".yml")):
            continue  # NOTES.txt
        for doc in yaml.safe_load_all(text):
            if doc is None:
                continue
            if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
                fail(f"{template}: rendered a document without kind/apiVersion")
            kinds.append(doc["kind"])
            # kubernetes-validate has no schema for CRDs such as ServiceMonitor: kept apart.
            (crds if doc["apiVersion"].startswith("monitoring.coreos.com/") else manifests).append(doc)
    notes = next((t for k, t in out.items() if k.endswith("/NOTES.txt")), "")
    for name, docs in (("manifests.yaml", manifests), ("crds.yaml", crds)):
        with open(out_dir / name, "w", encoding="utf-8") as f:
            yaml.safe_dump_all(docs, f, sort_keys=False)
    (out_dir / "NOTES.txt").write_text(notes, encoding="utf-8")
    if not manifests:
        fail("the chart rendered nothing")
    return f"{len(kinds)} objects: {', '.join(sorted(kinds))}"


def cmd_lint(chart: str, *values_files: str) -> str:
    import helm_python

    sets = [("default values", None)] + [
        (Path(v).name, helm_python.values_from_yaml(Path(v).read_text(encoding="utf-8")))
        for v in values_files
    ]
    infos = 0
    for label, values in sets:
        report = helm_python.lint(chart, values, strict=True, kube_version="v1.33.0", quiet=False)
        problems = [m for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        if report.get("errors") or problems:
            lines = [f"  [{m.get('severity')}] {m.get('path')}: {m.get('error')}" for m in problems]
            lines += [f"  {e}" for e in report.get("errors") or []]
            fail(f"helm lint ({label}) found problems:\n" + "\n".join(lines))
        infos += sum(1 for m in report.get("messages", []) if m.get("severity", 0) < 2)
    return f"{len(sets)} values sets, strict, kube 1.33: no warnings or errors ({infos} info messages)"


def one_of_kind(path: str, kind: str, absent: bool) -> dict | None:
    """The one object of this kind in the file; None, and none may be there, when absent."""
    docs = [d for d in load_docs(Path(path)) if d.get("kind") == kind]
    if absent and docs:
        fail(f"expected no {kind}, found {len(docs)}")
    if not absent and len(docs) != 1:
        fail(f"expected one {kind}, found {len(docs)}")
    return None if absent else docs[0]


def cmd_servicemonitor(path: str, *flags: str) -> str:
    sm = one_of_kind(path, "ServiceMonitor", "--absent" in flags)
    if sm is None:
        return "absent with default values (serviceMonitor.enabled=false)"
    if sm.get("apiVersion") != "monitoring.coreos.com/v1" or sm.get("kind") != "ServiceMonitor":
        fail(f"unexpected {sm.get('apiVersion')} {sm.get('kind')}")
    spec = sm.get("spec") or {}
    if not (spec.get("selector") or {}).get("matchLabels"):
        fail("ServiceMonitor has no spec.selector.matchLabels")
    eps = spec.get("endpoints") or []
    if len(eps) != 1 or eps[0].get("port") != "admin" or eps[0].get("path") != "/metrics":
        fail(f"ServiceMonitor endpoints should be port admin, path /metrics: {eps}")
    if not sm.get("metadata", {}).get("labels", {}).get("release"):
        fail("serviceMonitor.labels were not applied")
    return "monitoring.coreos.com/v1 ServiceMonitor, port admin, path /metrics, labels applied"


# The fields the Prometheus Operator's PrometheusRule CRD (monitoring.coreos.com/v1) allows in a
# rule group and in a rule; its OpenAPI schema is in no PyPI or npm package check.sh installs, so
# the structure is checked against these lists (deploy/README.md, "Static checks").
RULE_GROUP_FIELDS = {"name", "interval", "rules", "partial_response_strategy", "limit",
                     "query_offset", "labels"}
RULE_FIELDS = {"record", "alert", "expr", "for", "keep_firing_for", "labels", "annotations"}


def cmd_prometheusrule(path: str, rules_file: str, chart_copy: str, *flags: str) -> str:
    source, copy = Path(rules_file).read_bytes(), Path(chart_copy).read_bytes()
    if source != copy:
        fail(f"{chart_copy} differs from {rules_file}: copy the rules file into the chart again")
    pr = one_of_kind(path, "PrometheusRule", "--absent" in flags)
    if pr is None:
        return "absent (prometheusRule.enabled=false); the chart's rules file is identical to the source"
    if pr.get("apiVersion") != "monitoring.coreos.com/v1":
        fail(f"unexpected apiVersion {pr.get('apiVersion')}")
    meta = pr.get("metadata") or {}
    if not meta.get("name") or not (meta.get("labels") or {}).get("release"):
        fail("PrometheusRule has no name, or prometheusRule.labels were not applied")
    if set(pr) - {"apiVersion", "kind", "metadata", "spec"} or set(pr.get("spec") or {}) != {"groups"}:
        fail(f"unexpected fields: {sorted(set(pr))}, spec {sorted(pr.get('spec') or {})}")
    groups = pr["spec"]["groups"]
    expected = yaml.safe_load(source)["groups"]
    if groups != expected:
        fail(f"the PrometheusRule's groups differ from {rules_file}'s")
    alerts = records = 0
    for g in groups:
        if not isinstance(g.get("name"), str) or set(g) - RULE_GROUP_FIELDS or not g.get("rules"):
            fail(f"group {g.get('name')!r}: needs a name and rules, only {sorted(RULE_GROUP_FIELDS)}")
        for r in g["rules"]:
            if set(r) - RULE_FIELDS or ("alert" in r) == ("record" in r) or not isinstance(r.get("expr"), str):
                fail(f"group {g['name']}: rule {r.get('alert') or r.get('record')!r} is not a "
                     f"record or an alert with an expr and only {sorted(RULE_FIELDS)}")
            for key in ("labels", "annotations"):
                if any(not isinstance(v, str) for v in (r.get(key) or {}).values()):
                    fail(f"rule {r.get('alert') or r.get('record')}: {key} values must be strings")
            alerts += "alert" in r
            records += "record" in r
    return (f"monitoring.coreos.com/v1 PrometheusRule: {len(groups)} groups, {alerts} alerts, "
            f"{records} recording rules, equal to {Path(rules_file).name} (chart copy identical)")


# ---------------------------------------------------------------------------------------------
# policy: what kubernetes-validate's schemas cannot tell


def pod_spec(doc: dict) -> dict | None:
    if doc.get("kind") in WORKLOAD_KINDS:
        return doc.get("spec", {}).get("template", {}).get("spec")
    return None


def pod_labels(doc: dict) -> dict:
    return doc.get("spec", {}).get("template", {}).get("metadata", {}).get("labels") or {}


def is_proxy(container: dict) -> bool:
    return PROXY_ARG in (container.get("args") or []) or "refresh-proxy" in container.get("image", "")


def http_path(probe: dict | None) -> str | None:
    return ((probe or {}).get("httpGet") or {}).get("path")


def config_for(container: dict, spec: dict, objects: dict) -> tuple[dict, str] | None:
    """The config.toml the container reads, as a table, with its env overrides applied."""
    args = container.get("args") or []
    path = args[args.index(PROXY_ARG) + 1] if PROXY_ARG in args else "/etc/refresh-proxy/config.toml"
    mount_dir, file_name = os.path.split(path)
    for vm in container.get("volumeMounts") or []:
        if vm.get("mountPath") != mount_dir:
            continue
        volume = next(v for v in spec.get("volumes") or [] if v["name"] == vm["name"])
        sources = (volume.get("projected") or {}).get("sources") or [volume]
        for src in sources:
            cm = src.get("configMap")
            if not cm:
                continue
            obj = objects.get(("ConfigMap", cm["name"]))
            if obj and file_name in (obj.get("data") or {}):
                text = obj["data"][file_name]
                table = tomllib.loads(text)
                for env in container.get("env") or []:
                    m = re.fullmatch(r"REFRESH_PROXY_([A-Z0-9_]+)__([A-Z0-9_]+)", env["name"])
                    if m and "value" in env:
                        table.setdefault(m[1].lower(), {})[m[2].lower()] = env["value"]
                return table, f"{name_of(obj)}:{file_name}"
    return None


def seconds(value, default: float) -> float:
    return float(default if value is None else value)


def check_pod_security(where: str, spec: dict, proxy_names: set[str]) -> None:
    psc = spec.get("securityContext") or {}
    for field in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(field):
            fail(f"{where}: {field} is not allowed (restricted)")
    for v in spec.get("volumes") or []:
        if "hostPath" in v:
            fail(f"{where}: hostPath volume {v['name']} is not allowed (restricted)")
    for c in (spec.get("initContainers") or []) + (spec.get("containers") or []):
        cw = f"{where} container {c['name']}"
        sc = c.get("securityContext") or {}
        if sc.get("privileged"):
            fail(f"{cw}: privileged")
        if sc.get("allowPrivilegeEscalation") is not False:
            fail(f"{cw}: allowPrivilegeEscalation must be false")
        caps = sc.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            fail(f"{cw}: capabilities.drop must contain ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            fail(f"{cw}: only NET_BIND_SERVICE may be added")
        if not (sc.get("runAsNonRoot", psc.get("runAsNonRoot"))):
            fail(f"{cw}: runAsNonRoot must be true")
        if sc.get("runAsUser", psc.get("runAsUser")) == 0:
            fail(f"{cw}: runAsUser 0")
        seccomp = (sc.get("seccompProfile") or psc.get("seccompProfile") or {}).get("type")
        if seccomp not in ("RuntimeDefault", "Localhost"):
            fail(f"{cw}: seccompProfile must be RuntimeDefault or Localhost")
        for p in c.get("ports") or []:
            if p.get("hostPort"):
                fail(f"{cw}: hostPort")
        if c["name"] in proxy_names:
            if sc.get("readOnlyRootFilesystem") is not True:
                fail(f"{cw}: readOnlyRootFilesystem must be true")
            if sc.get("runAsUser", psc.get("runAsUser")) != 65532:
                fail(f"{cw}: runAsUser must be 65532 (the image's nonroot user)")


def check_proxy_container(where: str, c: dict, spec: dict, objects: dict, replicas: int,
                          sidecar: bool) -> tuple[float, float]:
    """Returns (preStop seconds, shutdown_timeout)."""
    cw = f"{where} container {c['name']}"
    if http_path(c.get("livenessProbe")) != "/healthz":
        fail(f"{cw}: livenessProbe must GET /healthz")
    if http_path(c.get("readinessProbe")) != "/readyz":
        fail(f"{cw}: readinessProbe must GET /readyz")
    if not c.get("startupProbe"):
        fail(f"{cw}: no startupProbe")
    if sidecar and http_path(c.get("startupProbe")) == "/readyz":
        fail(f"{cw}: a native sidecar's startupProbe must not need the IdP (use /healthz)")
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        if (c[probe].get("httpGet") or {}).get("port") not in ("admin", 9901):
            fail(f"{cw}: {probe} must target the admin port")
    ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
    if set(ports) < {"proxy", "admin"}:
        fail(f"{cw}: needs ports named proxy and admin, has {sorted(ports)}")
    res = c.get("resources") or {}
    if not res.get("requests") or not (res.get("limits") or {}).get("memory"):
        fail(f"{cw}: resources.requests and limits.memory must be set")
    pre = ((c.get("lifecycle") or {}).get("preStop")) or {}
    if "exec" in pre:
        fail(f"{cw}: preStop exec cannot work in a distroless image; use the sleep action")
    pre_stop = float((pre.get("sleep") or {}).get("seconds", 0))
    found = config_for(c, spec, objects)
    if not found:
        fail(f"{cw}: cannot find its config.toml in a ConfigMap it mounts")
    cfg, cfg_name = found
    server = cfg.get("server", {})
    for key, port_name in (("listen", "proxy"), ("admin_listen", "admin")):
        addr = str(server.get(key, ""))
        if addr != f"0.0.0.0:{ports[port_name]}":
            fail(f"{cw}: {cfg_name} server.{key} = {addr!r}, want 0.0.0.0:{ports[port_name]}")
    drain = seconds(server.get("drain_delay"), 5)
    shutdown = seconds(server.get("shutdown_timeout"), 30)
    if drain >= shutdown:
        fail(f"{cw}: drain_delay must be shorter than shutdown_timeout")
    if sidecar:  # the IdP is in the same pod: reached on its loopback, never over the network
        host = re.sub(r"^[a-z]+://([^/]*?)(:[0-9]+)?(/.*)?$", r"\1", str(cfg.get("upstream", {}).get("url", "")))
        if host not in ("127.0.0.1", "localhost", "[::1]"):
            fail(f"{cw}: a sidecar's upstream.url must be the pod's loopback, not {host!r}")
    store = str(cfg.get("store", {}).get("url", "memory://"))
    tokens = cfg.get("tokens", {})
    if store.startswith("memory:") and replicas > 1:
        fail(f"{cw}: {replicas} replicas with a memory:// store (not shared between pods)")
    if store.startswith("redis"):
        if not (tokens.get("refresh_token_key") or tokens.get("refresh_token_key_file")):
            fail(f"{cw}: a redis store needs tokens.refresh_token_key(_file)")
        if not tokens.get("signing_key_file"):
            fail(f"{cw}: with several replicas set tokens.signing_key_file (JWKS consistency)")
    return pre_stop, shutdown


def selects(selector: dict, labels: dict) -> bool:
    """Whether a NetworkPolicy's podSelector selects a pod with these labels (matchLabels only:
    the checked files use nothing else)."""
    if selector.get("matchExpressions"):
        fail(f"podSelector {selector}: use matchLabels (matchExpressions are not checked)")
    return all(labels.get(k) == v for k, v in (selector.get("matchLabels") or {}).items())


def covers(rule_ports: list | None, name: str, number: int) -> bool:
    """Whether an ingress rule's ports admit a container port (no ports = every port)."""
    if not rule_ports:
        return True
    return any(p.get("port") in (name, number) or
               (isinstance(p.get("port"), int) and p.get("endPort") and
                p["port"] <= number <= p["endPort"]) for p in rule_ports)


def broad(peer: dict) -> bool:
    """A peer that admits every pod or every address: no restriction at all."""
    block = (peer.get("ipBlock") or {}).get("cidr")
    if block:
        return block in ("0.0.0.0/0", "::/0")
    sels = [peer.get(k) for k in ("namespaceSelector", "podSelector") if k in peer]
    return not sels or all(not (s or {}).get("matchLabels") and not (s or {}).get("matchExpressions")
                           for s in sels)


def check_network_policy(where: str, workload: dict, docs: list[dict], proxies: list[dict]) -> None:
    """The proxy port open to every source, the admin port only to named peers."""
    labels = pod_labels(workload)
    policies = [d for d in docs if d.get("kind") == "NetworkPolicy"
                and selects(d["spec"].get("podSelector") or {}, labels)
                and "Ingress" in (d["spec"].get("policyTypes") or ["Ingress"])]
    if not policies:
        fail(f"{where}: no NetworkPolicy (Ingress) selects the pod: its admin port is open to "
             "every pod in the cluster")
    rules = [r for np in policies for r in np["spec"].get("ingress") or []]
    for c in proxies:
        ports = {p.get("name"): p.get("containerPort") for p in c.get("ports") or []}
        admin, proxy = ports["admin"], ports["proxy"]
        for r in rules:
            if not covers(r.get("ports"), "admin", admin):
                continue
            peers = r.get("from") or []
            if not peers:
                fail(f"{where}: a NetworkPolicy rule admits every source to the admin port "
                     f"({admin}); name the peers that need it (e.g. Prometheus)")
            for peer in peers:
                if broad(peer):
                    fail(f"{where}: a NetworkPolicy peer admits everyone to the admin port: {peer}")
        if not any(covers(r.get("ports"), "proxy", proxy) and not r.get("from") for r in rules):
            fail(f"{where}: no NetworkPolicy rule admits every source to the proxy port ({proxy}); "
                 "it is the IdP's public address")


def cmd_policy(*args: str) -> str:
    # --external=Kind/Name: an object created out of band (existingSecret, extraVolumes), so
    # not in the files.
    external = {tuple(a.split("=", 1)[1].split("/", 1)) for a in args if a.startswith("--external=")}
    files = [a for a in args if not a.startswith("--")]
    objects_checked = pods = network_policies = 0
    for file in files:
        docs = load_docs(Path(file))
        label = label_of(file)
        objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
        workloads = [d for d in docs if pod_spec(d) is not None]
        for d in docs:
            if "namespace" in d.get("metadata", {}):
                fail(f"{label}: {name_of(d)} names a namespace (manifests are namespace-agnostic)")
        for d in workloads:
            spec = pod_spec(d)
            where = f"{label}: {name_of(d)}"
            pods += 1
            inits = spec.get("initContainers") or []
            mains = spec.get("containers") or []
            proxies = [c for c in inits + mains if is_proxy(c)]
            check_pod_security(where, spec, {c["name"] for c in proxies})
            selector = d["spec"].get("selector", {}).get("matchLabels") or {}
            if not selector or any(pod_labels(d).get(k) != v for k, v in selector.items()):
                fail(f"{where}: selector does not match the pod template's labels")
            for vol in spec.get("volumes") or []:
                for src in ((vol.get("projected") or {}).get("sources") or [vol]):
                    for kind, key, ref in (("ConfigMap", "configMap", "name"),
                                           ("Secret", "secret", "name"),
                                           ("Secret", "secret", "secretName")):
                        name = (src.get(key) or {}).get(ref)
                        if name and (kind, name) not in objects:
                            if (kind, name) in external:
                                continue
                            fail(f"{where}: volume {vol['name']} needs {kind} {name}, not in the file")
            if d["kind"] == "StatefulSet":
                svc = objects.get(("Service", d["spec"].get("serviceName")))
                if not svc or svc["spec"].get("clusterIP") != "None":
                    fail(f"{where}: serviceName must name a headless Service in the file")
                for c in mains:
                    if "redis" in c.get("image", ""):
                        args = " ".join(c.get("command", []) + c.get("args", []))
                        if "--appendonly yes" not in args or "--appendfsync everysec" not in args:
                            fail(f"{where}: Redis must run with --appendonly yes --appendfsync everysec")
                if not d["spec"].get("volumeClaimTemplates"):
                    fail(f"{where}: no volumeClaimTemplates")
            if not proxies:
                continue
            check_network_policy(where, d, docs, proxies)
            network_policies += 1
            replicas = int(d["spec"].get("replicas", 1))
            grace = float(spec.get("terminationGracePeriodSeconds", 30))
            for c in proxies:
                sidecar = c in inits
                if sidecar and c.get("restartPolicy") != "Always":
                    fail(f"{where}: refresh-proxy in initContainers must be a native sidecar "
                         "(restartPolicy: Always)")
                pre_stop, shutdown = check_proxy_container(where, c, spec, objects, replicas, sidecar)
                budget = pre_stop + shutdown
                if sidecar:  # stopped only after the main containers have exited
                    budget += max((float((((m.get("lifecycle") or {}).get("preStop") or {})
                                           .get("sleep") or {}).get("seconds", 0)) for m in mains),
                                  default=0)
                if grace <= budget:
                    fail(f"{where}: terminationGracePeriodSeconds {grace:g} must exceed "
                         f"preStop + shutdown_timeout ({budget:g})")
        for d in docs:
            objects_checked += 1
            sel = None
            if d["kind"] == "Service":
                sel = d["spec"].get("selector") or {}
            elif d["kind"] == "PodDisruptionBudget":
                sel = d["spec"].get("selector", {}).get("matchLabels") or {}
            if sel is None:
                continue
            matched = [w for w in workloads if sel and all(pod_labels(w).get(k) == v for k, v in sel.items())]
            if not matched:
                fail(f"{label}: {name_of(d)} selects no pod template in the file")
            if d["kind"] == "Service":
                for w in matched:
                    spec = pod_spec(w)
                    names = {p.get("name") for c in (spec.get("initContainers") or []) + spec["containers"]
                             for p in c.get("ports") or []}
                    for p in d["spec"]["ports"]:
                        tp = p.get("targetPort", p["port"])
                        if isinstance(tp, str) and tp not in names:
                            fail(f"{label}: {name_of(d)} targetPort {tp} is not a port of {name_of(w)}")
    return (f"{len(files)} files, {pods} pod templates, {objects_checked} objects: restricted PSS, "
            "probes, preStop sleep, grace period, config/ports/store wiring, selectors; "
            f"{network_policies} proxy pods behind a NetworkPolicy (proxy port open, admin port "
            "only to named peers)")


# ---------------------------------------------------------------------------------------------
# admin: which admin API endpoints the shipped configs turn on

ADMIN_KEYS = {"revoke": ("token", "token_file"), "issue": ("issue_token", "issue_token_file")}


def cmd_admin(file: str, expect: str) -> str:
    want = set() if expect == "off" else set(expect.split("+"))
    if not want <= set(ADMIN_KEYS):
        fail(f"unknown expectation {expect!r}: off, revoke, issue or revoke+issue")
    docs = load_docs(Path(file))
    objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    checked = 0
    for d in docs:
        spec = pod_spec(d)
        if spec is None:
            continue
        for c in (spec.get("initContainers") or []) + spec["containers"]:
            if not is_proxy(c):
                continue
            found = config_for(c, spec, objects)
            if not found:
                fail(f"{label_of(file)}: {name_of(d)} {c['name']}: no config.toml found")
            admin = found[0].get("admin") or {}
            on = {e for e, keys in ADMIN_KEYS.items() if any(k in admin for k in keys)}
            if on != want:
                fail(f"{label_of(file)}: {name_of(d)} {c['name']}: admin API endpoints on: "
                     f"{sorted(on) or 'none'}, expected {sorted(want) or 'none'} "
                     f"({found[1]} and the container's env)")
            checked += 1
    if not checked:
        fail(f"{label_of(file)}: no proxy container")
    return f"{label_of(file)}: admin API {expect} ({checked} proxy containers)"


# ---------------------------------------------------------------------------------------------
# deterministic: nothing random per render (a render without a cluster must not mint new keys)

GENERATORS = re.compile(r"\b(randAlphaNum|randAlpha|randNumeric|randAscii|randBytes|randInt|uuidv4|"
                        r"genPrivateKey|genCA|genCAWithKey|genSelfSignedCert|genSelfSignedCertWithKey|"
                        r"genSignedCert|genSignedCertWithKey|now|htpasswd)\b")


def cmd_deterministic(chart: str, *values_files: str) -> str:
    import helm_python

    for template in sorted((Path(chart) / "templates").rglob("*")):
        if template.is_file():
            for n, line in enumerate(template.read_text(encoding="utf-8").splitlines(), 1):
                m = GENERATORS.search(line)
                if m and "{{" in line:
                    fail(f"{template.name}:{n}: `{m[1]}` makes every render different")
    secrets = []
    for values_file in values_files:
        values = None
        if values_file != "-":
            values = helm_python.values_from_yaml(Path(values_file).read_text(encoding="utf-8"))
        renders = []
        for _ in range(2):
            c = helm_python.Chart.load(chart)
            try:
                renders.append(c.render(values, name="refresh-proxy", namespace="refresh-proxy",
                                        is_install=True))
            finally:
                c.close()
        if renders[0] != renders[1]:
            differ = sorted(k for k in set(renders[0]) | set(renders[1])
                            if renders[0].get(k) != renders[1].get(k))
            fail(f"{values_file}: two renders differ in {differ}")
        count = sum(1 for template, text in renders[0].items() if template.endswith((".yaml", ".yml"))
                    for doc in yaml.safe_load_all(text) if isinstance(doc, dict) and doc.get("kind") == "Secret")
        secrets.append(f"{'default' if values_file == '-' else Path(values_file).name}: {count}")
    return (f"{len(values_files)} values sets rendered twice, identical; no generator in templates; "
            f"Secrets rendered: {', '.join(secrets)}")


# Values the chart must refuse, and what its message must say.
REFUSED_VALUES = [
    ("secret:\n  create: true\n", "secret.refreshTokenKey is required"),
    ("secret:\n  create: true\n  refreshTokenKey: too-short\n", "at least 32 bytes"),
    ("secret:\n  create: true\n  refreshTokenKey: " + "k" * 40 + "\n", "secret.signingKey is required"),
    ("secret:\n  create: true\n  refreshTokenKey: " + "k" * 40 + "\n  signingKey: pem\n"
     "admin:\n  enabled: true\n", "secret.adminToken is required"),
    ("secret:\n  create: true\n  refreshTokenKey: " + "k" * 40 + "\n  signingKey: pem\n"
     "  adminToken: same-token-0123456789\n  adminIssueToken: same-token-0123456789\n"
     "admin:\n  enabled: true\n  issue: true\n", "must differ from secret.adminToken"),
    ("secret:\n  create: true\nexistingSecret: mine\n", "exclude each other"),
    ("admin:\n  issue: true\n", "admin.issue needs admin.enabled"),
    ("sidecar:\n  enabled: true\n  idpContainer:\n    name: refresh-proxy\n    image: idp\n",
     "sidecar.idpContainer.name must not be refresh-proxy"),
]


def cmd_refusals(chart: str) -> str:
    import helm_python

    for values_text, expected in REFUSED_VALUES:
        c = helm_python.Chart.load(chart)
        try:
            c.render(helm_python.values_from_yaml(values_text), name="refresh-proxy",
                     namespace="refresh-proxy", is_install=True)
        except Exception as e:  # helm_python's render error
            if expected not in str(e):
                fail(f"values {values_text!r}: refused, but the message does not say {expected!r}: {e}")
            continue
        finally:
            c.close()
        fail(f"values {values_text!r}: rendered, expected a failure saying {expected!r}")
    return f"{len(REFUSED_VALUES)} bad values sets refused with a message naming the value"


def cmd_schema(chart: str, testdir: str) -> str:
    """Each TESTDIR/bad-*.yaml starts with `# expect: TEXT`: render and lint must both refuse it
    for values.schema.json, with TEXT in the message."""
    import helm_python

    if not (Path(chart) / "values.schema.json").is_file():
        fail(f"{chart} has no values.schema.json")
    files = sorted(Path(testdir).glob("bad-*.yaml"))
    if not files:
        fail(f"no bad-*.yaml in {testdir}")
    for f in files:
        text = f.read_text(encoding="utf-8")
        m = re.match(r"# expect: (.+)\n", text)
        if not m:
            fail(f"{f.name}: first line must be `# expect: <text of the schema error>`")
        expected = m[1]
        values = helm_python.values_from_yaml(text)
        c = helm_python.Chart.load(chart)
        try:
            c.render(values, name="refresh-proxy", namespace="refresh-proxy", is_install=True)
        except Exception as e:  # helm_python's HelmValuesError
            if "schema" not in str(e) or expected not in str(e):
                fail(f"{f.name}: render refused, but not by the schema with {expected!r}: {e}")
        else:
            fail(f"{f.name}: rendered; the schema should have refused it ({expected})")
        finally:
            c.close()
        report = helm_python.lint(chart, values, strict=True, kube_version="v1.33.0", quiet=False)
        messages = [str(m.get("error")) for m in report.get("messages", []) if m.get("severity", 0) >= 2]
        messages += [str(e) for e in report.get("errors") or []]
        if not any(expected in m for m in messages):
            fail(f"{f.name}: helm lint did not report {expected!r}: {messages}")
    return f"{len(files)} bad values files refused by values.schema.json in render and lint"


# ---------------------------------------------------------------------------------------------
# compose


def cmd_compose(deploy: str) -> str:
    root = Path(deploy)
    doc = load_docs(root / "compose.yaml")[0]
    services = doc.get("services") or {}
    for required in ("redis", "idp", "proxy"):
        if required not in services:
            fail(f"compose.yaml: no service {required}")
    named_volumes = set((doc.get("volumes") or {}).keys())
    for name, svc in services.items():
        for vol in svc.get("volumes") or []:
            source = vol.split(":")[0] if isinstance(vol, str) else vol.get("source")
            if source.startswith((".", "/")):
                if not (root / source).exists():
                    fail(f"compose.yaml: {name} mounts {source}, which does not exist")
            elif source not in named_volumes:
                fail(f"compose.yaml: {name} uses volume {source}, not declared")
        for dep in svc.get("depends_on") or {}:
            if dep not in services:
                fail(f"compose.yaml: {name} depends on unknown service {dep}")
        mode = svc.get("network_mode", "")
        if mode.startswith("service:") and mode[len("service:"):] not in services:
            fail(f"compose.yaml: {name} network_mode names unknown service")
        build = svc.get("build")
        if build:
            ctx = root / build.get("context", ".")
            if not (ctx / build.get("dockerfile", "Dockerfile")).is_file():
                fail(f"compose.yaml: {name}'s Dockerfile not found")
        for key in svc.get("environment") or {}:
            if key.startswith("REFRESH_PROXY_") and not re.fullmatch(r"REFRESH_PROXY_[A-Z0-9_]+__[A-Z0-9_]+", key):
                fail(f"compose.yaml: {key} is not REFRESH_PROXY_<SECTION>__<KEY>")
    redis_cmd = " ".join(map(str, services["redis"].get("command") or []))
    if "--appendonly yes" not in redis_cmd or "--appendfsync everysec" not in redis_cmd:
        fail("compose.yaml: redis must run with --appendonly yes --appendfsync everysec")
    proxy = services["proxy"]
    if not proxy.get("read_only") or str(proxy.get("user", "")).split(":")[0] != "65532":
        fail("compose.yaml: proxy must run read-only as 65532")
    idp_env = services["idp"].get("environment") or {}
    if idp_env.get("ISSUER") != "http://localhost:8080" or str(idp_env.get("PORT")) != "9090":
        fail("compose.yaml: idp must have ISSUER=http://localhost:8080 and PORT=9090")
    return f"{len(services)} services: mounts, build, depends_on, network_mode, env names, AOF"


# ---------------------------------------------------------------------------------------------
# check-config with the real binary


def write_volume(dest: Path, volume: dict, objects: dict, placeholders: dict[str, str]) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    sources = (volume.get("projected") or {}).get("sources") or [volume]
    for src in sources:
        for kind, key in (("ConfigMap", "configMap"), ("Secret", "secret")):
            ref = src.get(key)
            if ref is None:
                continue
            name = ref.get("name") or ref.get("secretName")
            obj = objects.get((kind, name))
            if obj is None:
                fail(f"volume {volume['name']}: {kind} {name} is not among the checked objects")
            data = dict(obj.get("data") or {})
            if kind == "Secret":
                data = {k: base64.b64decode(v).decode() for k, v in data.items()}
                data.update(obj.get("stringData") or {})
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                content = data[item["key"]]
                if "CHANGE-ME" in content and "-----BEGIN CERTIFICATE" in content:
                    content = placeholders["cert"]
                elif "CHANGE-ME" in content and "-----BEGIN" in content:
                    content = placeholders["pem"]
                target = dest / item["path"]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content, encoding="utf-8")


def run_check_config(binary: str, config: Path, env: dict[str, str], label: str) -> str:
    base_env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": os.environ.get("HOME", "/")}
    run = lambda extra: subprocess.run(  # noqa: E731
        [binary, "check-config", "--config", str(config)],
        env={**base_env, **env, **extra}, capture_output=True, text=True, timeout=60)
    r = run({})
    if r.returncode != 0:
        fail(f"{label}: check-config failed:\n{r.stdout}{r.stderr}")
    return label


# What an out-of-band Secret holds for the chart and the manifests (deploy/README.md): stand-in
# values, so the config that names them can be checked. The PEM placeholder is replaced by a
# generated key, as the manifests' own placeholder is.
STAND_IN_SECRET = {
    "refresh-token-key": "stand-in-refresh-token-key-0123456789abcdef-0123",
    "signing-key.pem": "-----BEGIN PRIVATE KEY-----\nCHANGE-ME\n-----END PRIVATE KEY-----\n",
    "admin-token": "stand-in-admin-token-0123456789",
    "admin-issue-token": "stand-in-admin-issue-token-0123456789",
}


def cmd_check_config(binary: str, repo: str, *args: str) -> str:
    # --stand-in=Kind/Name: an object created out of band (existingSecret, extraVolumes): a
    # Secret with STAND_IN_SECRET's keys, or an empty ConfigMap.
    stand_ins = [tuple(a.split("=", 1)[1].split("/", 1)) for a in args if a.startswith("--stand-in=")]
    files = [a for a in args if not a.startswith("--")]
    deploy = Path(repo) / "deploy"
    checked = []
    with tempfile.TemporaryDirectory(prefix="deploy-check-config-") as tmp:
        pem = Path(tmp) / "placeholder.pem"
        subprocess.run(["openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-out", str(pem)],
                       check=True, capture_output=True)
        # A self-signed certificate for that key, for placeholder CA and client certificates.
        cert = Path(tmp) / "placeholder-cert.pem"
        subprocess.run(["openssl", "req", "-x509", "-new", "-key", str(pem), "-subj", "/CN=stand-in",
                        "-days", "2", "-out", str(cert)], check=True, capture_output=True)
        placeholders = {"pem": pem.read_text(), "cert": cert.read_text()}
        for n, file in enumerate(files):
            docs = load_docs(Path(file))
            objects = {(d["kind"], d["metadata"]["name"]): d for d in docs}
            for kind, name in stand_ins:
                if (kind, name) not in objects:
                    data = dict(STAND_IN_SECRET) if kind == "Secret" else {}
                    objects[(kind, name)] = {"kind": kind, "metadata": {"name": name},
                                             "stringData" if kind == "Secret" else "data": data}
            label = label_of(file)
            for d in docs:
                spec = pod_spec(d)
                if spec is None:
                    continue
                for c in (spec.get("initContainers") or []) + spec["containers"]:
                    if not is_proxy(c):
                        continue
                    root = Path(tmp) / f"{n}-{d['metadata']['name']}-{c['name']}"
                    mounts = c.get("volumeMounts") or []
                    volumes = {v["name"]: v for v in spec.get("volumes") or []}
                    for vm in mounts:
                        write_volume(root / vm["mountPath"].lstrip("/"), volumes[vm["name"]],
                                     objects, placeholders)
                    args = c.get("args") or []
                    cfg = args[args.index(PROXY_ARG) + 1]
                    cfg_path = root / cfg.lstrip("/")
                    text = cfg_path.read_text()
                    for vm in mounts:  # absolute paths into the mounts, if any
                        text = text.replace(f'"{vm["mountPath"]}', f'"{root}{vm["mountPath"]}')
                    cfg_path.write_text(text)
                    env = {e["name"]: e["value"] for e in c.get("env") or [] if "value" in e}
                    checked.append(run_check_config(binary, cfg_path, env, f"{label} {c['name']}"))
        compose = load_docs(deploy / "compose.yaml")[0]["services"]["proxy"]
        env = {k: str(v) for k, v in (compose.get("environment") or {}).items()}
        checked.append(run_check_config(binary, deploy / "compose" / "config.toml", env, "compose"))
        checked.append(run_check_config(binary, deploy / "image" / "config.toml", {}, "image default"))
    return f"{len(checked)} configs valid: " + "; ".join(checked)


# ---------------------------------------------------------------------------------------------
# Dockerfile


def cmd_dockerfile(dockerfile: str, repo: str) -> str:
    text = Path(dockerfile).read_text(encoding="utf-8")
    # Instructions with their continuation lines joined, comments dropped.
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#") and not current:
            continue
        current += line.rstrip("\\").strip() + " "
        if not line.rstrip().endswith("\\"):
            logical.append(current.strip())
            current = ""
    runs = [l for l in logical if l.upper().startswith("RUN ")]
    if not any(BUILD_COMMAND in r for r in runs):
        fail(f"no RUN instruction runs `{BUILD_COMMAND}`")
    other = [m for r in runs for m in re.findall(r"cargo build[^&;|]*", r) if m.strip() != BUILD_COMMAND]
    if other:
        fail(f"other cargo build commands in the Dockerfile: {other}")
    final = [l for l in logical if l.upper().startswith("FROM ")][-1]
    if "distroless" not in final and "RUNTIME_IMAGE" not in final:
        fail("the final stage is not distroless")
    for required in ("USER 65532", 'ENTRYPOINT ["', "EXPOSE 8080 9901"):
        if not any(l.startswith(required) for l in logical):
            fail(f"missing `{required}…`")
    if any(l.upper().startswith("HEALTHCHECK") for l in logical):
        fail("HEALTHCHECK present (Kubernetes probes are used instead)")
    # CI's own build command, wherever CI's scripts (.ci/run and the test command it runs)
    # spell one out; other scripts (the demo) build what they need.
    ci_files = [Path(repo) / ".ci" / "run", Path(repo) / "scripts" / "test"]
    ci_builds = {m.strip() for f in ci_files if f.is_file()
                 for m in re.findall(r"cargo build[^\n&;|#]*", f.read_text(errors="replace"))}
    if ci_builds - {BUILD_COMMAND}:
        fail(f"CI builds with {sorted(ci_builds)}, the Dockerfile with `{BUILD_COMMAND}`")
    where = "also in CI scripts" if ci_builds else "CI scripts spell out no other cargo build"
    return f"`{BUILD_COMMAND}` in a RUN instruction ({where}); distroless, USER 65532, exec form"


def run(argv: list[str], commands: dict, usage: str) -> int:
    """Runs the subcommand argv[1] of `commands`: its summary on stdout, or its failure on stderr."""
    if len(argv) < 2 or argv[1] not in commands:
        print(usage, file=sys.stderr)
        return 2
    try:
        print(commands[argv[1]](*argv[2:]))
    except CheckError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str]) -> int:
    commands = {
        "yaml": cmd_yaml, "render": cmd_render, "lint": cmd_lint,
        "servicemonitor": cmd_servicemonitor, "policy": cmd_policy, "compose": cmd_compose,
        "check-config": cmd_check_config, "dockerfile": cmd_dockerfile, "admin": cmd_admin,
        "deterministic": cmd_deterministic, "refusals": cmd_refusals,
        "prometheusrule": cmd_prometheusrule, "schema": cmd_schema,
    }
    return run(argv, commands, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
