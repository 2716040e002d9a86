"""Static checks of deploy/grafana/ and deploy/prometheus/, driven by deploy/check.sh (run it, not
this file). The Kubernetes, Helm and image checks are in checks.py beside it.

Each subcommand checks one thing, exits non-zero with a message on failure, and prints its summary
as the last line of stdout.

  checks_monitoring.py dashboard FILE         the dashboard's JSON model: what Grafana needs to
                                              import it (uid, title, schemaVersion, the datasource
                                              variable; every panel's type, title, gridPos,
                                              datasource and targets), unique ids, no overlap,
                                              every query filtered by $job / $instance and every
                                              range [$__rate_interval]
  checks_monitoring.py dashboard-model FILE   the dashboard decoded by Grafana's own generated
                                              model (grafana-foundation-sdk) and encoded again
                                              loses nothing: no field the schema lacks, at any
                                              level (dashboard, panel, options, fieldConfig,
                                              Prometheus query, variable)
  checks_monitoring.py dashboard-promql FILE PROMTOOL
                                              every panel's query parses (`promtool check rules`
                                              on the queries written as recording rules)
  checks_monitoring.py rules RULES TESTS      every alert has `for`, a severity, a summary and a
                                              description; every recording rule is named
                                              level:metric:operations; every alert has a unit
                                              test where it fires (labels and annotations given)
                                              and one where it does not
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

from checks import fail, run  # the same failure and dispatch as checks.py beside it

MIN_SCHEMA_VERSION = 39  # Grafana 10.4; newer Grafanas migrate it on import
SEVERITIES = {"critical", "warning", "info"}
DATASOURCE = "${datasource}"
# Selectors of the proxy's metrics and of `up`: name{...}
SELECTOR = re.compile(r"\b(refresh_proxy_[a-z0-9_]+|up)\{([^}]*)\}")
RANGE = re.compile(r"\[([^\]]+)\]")


def load_dashboard(path: str) -> dict:
    try:
        with open(path, encoding="utf-8") as f:
            d = json.load(f)
    except json.JSONDecodeError as e:
        fail(f"{path}: not JSON: {e}")
    if not isinstance(d, dict):
        fail(f"{path}: the top level is not an object")
    return d


def all_panels(d: dict) -> list[dict]:
    """Every panel, rows' collapsed children included."""
    out = []
    for p in d.get("panels") or []:
        out.append(p)
        out.extend(p.get("panels") or [])
    return out


def queries(d: dict) -> list[tuple[str, str]]:
    """(panel title, expr) of every target."""
    return [(p.get("title", "?"), t.get("expr", "")) for p in all_panels(d) if p.get("type") != "row"
            for t in p.get("targets") or []]


# ---------------------------------------------------------------------------------------------
# dashboard


def cmd_dashboard(path: str) -> str:
    d = load_dashboard(path)
    for key in ("uid", "title"):
        if not isinstance(d.get(key), str) or not d[key].strip():
            fail(f"no {key}")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", d["uid"]):
        fail(f"uid {d['uid']!r}: up to 40 letters, digits, - and _")
    if "id" in d and d["id"] is not None:
        fail("a fixed numeric id: leave it out (Grafana assigns one per instance)")
    if not isinstance(d.get("schemaVersion"), int) or d["schemaVersion"] < MIN_SCHEMA_VERSION:
        fail(f"schemaVersion {d.get('schemaVersion')!r}: expected an integer >= {MIN_SCHEMA_VERSION}")
    variables = {v.get("name"): v for v in (d.get("templating") or {}).get("list") or []}
    ds = variables.get("datasource")
    if not ds or ds.get("type") != "datasource" or ds.get("query") != "prometheus":
        fail("no templating variable `datasource` of type datasource for prometheus")
    for name in ("job", "instance"):
        v = variables.get(name)
        if not v or v.get("type") != "query" or (v.get("datasource") or {}).get("uid") != DATASOURCE:
            fail(f"no query variable `{name}` on {DATASOURCE}")
    if "__inputs" in d:
        fail("__inputs present: the datasource variable replaces it (file provisioning cannot fill inputs)")

    panels = all_panels(d)
    if not panels:
        fail("no panels")
    ids, cells, rows, targets = set(), {}, 0, 0
    for p in panels:
        title = p.get("title")
        where = f"panel {p.get('id')} {title!r}"
        for key in ("id", "type", "title", "gridPos"):
            if key not in p:
                fail(f"{where}: no {key}")
        if not isinstance(p["id"], int) or p["id"] in ids:
            fail(f"{where}: id missing, not an integer, or used twice")
        ids.add(p["id"])
        g = p["gridPos"]
        if not all(isinstance(g.get(k), int) for k in ("h", "w", "x", "y")):
            fail(f"{where}: gridPos needs integer h, w, x, y: {g}")
        if g["w"] < 1 or g["h"] < 1 or g["x"] < 0 or g["y"] < 0 or g["x"] + g["w"] > 24:
            fail(f"{where}: gridPos outside the 24-column grid: {g}")
        for x in range(g["x"], g["x"] + g["w"]):
            for y in range(g["y"], g["y"] + g["h"]):
                if (x, y) in cells:
                    fail(f"{where} overlaps {cells[(x, y)]!r}")
                cells[(x, y)] = title
        if p["type"] == "row":
            rows += 1
            continue
        if p["type"] not in ("timeseries", "stat"):
            fail(f"{where}: type {p['type']!r}: this dashboard uses timeseries and stat panels")
        if (p.get("datasource") or {}).get("uid") != DATASOURCE:
            fail(f"{where}: datasource is not {DATASOURCE}")
        if not p.get("description"):
            fail(f"{where}: no description")
        ts = p.get("targets") or []
        if not ts:
            fail(f"{where}: no targets")
        refs = [t.get("refId") for t in ts]
        if any(not r for r in refs) or len(set(refs)) != len(refs):
            fail(f"{where}: every target needs its own refId: {refs}")
        for t in ts:
            if (t.get("datasource") or {}).get("uid") != DATASOURCE:
                fail(f"{where} {t.get('refId')}: datasource is not {DATASOURCE}")
            expr = t.get("expr")
            if not isinstance(expr, str) or not expr.strip():
                fail(f"{where} {t.get('refId')}: no expr")
            check_query(f"{where} {t['refId']}", expr)
            targets += 1
    return (f"uid {d['uid']}, schemaVersion {d['schemaVersion']}, {len(panels) - rows} panels in "
            f"{rows} rows, {targets} queries: structure, ids, layout, $job/$instance, $__rate_interval")


def check_query(where: str, expr: str) -> None:
    selectors = SELECTOR.findall(expr)
    if not selectors:
        fail(f"{where}: no selector of a refresh_proxy_* metric or up with labels: {expr}")
    for name, matchers in selectors:
        if 'job=~"$job"' not in matchers or 'instance=~"$instance"' not in matchers:
            fail(f"{where}: {name} is not filtered by job=~\"$job\" and instance=~\"$instance\"")
    for r in RANGE.findall(expr):
        if r != "$__rate_interval":
            fail(f"{where}: range [{r}]: use [$__rate_interval]")


# ---------------------------------------------------------------------------------------------
# dashboard-model: Grafana's generated dashboard model (grafana-foundation-sdk)


def lost(ours, theirs, path: str) -> list[str]:
    """Paths of what `ours` has and `theirs` (the model's encoding) does not, or has otherwise."""
    if isinstance(ours, dict):
        if not isinstance(theirs, dict):
            return [f"{path}: an object became {type(theirs).__name__}"]
        out = []
        for k, v in ours.items():
            if k not in theirs:
                out.append(f"{path}/{k}: not in the schema")
            else:
                out.extend(lost(v, theirs[k], f"{path}/{k}"))
        return out
    if isinstance(ours, list):
        if not isinstance(theirs, list) or len(ours) != len(theirs):
            return [f"{path}: the list changed"]
        return [m for i, (a, b) in enumerate(zip(ours, theirs)) for m in lost(a, b, f"{path}[{i}]")]
    return [] if ours == theirs else [f"{path}: {ours!r} became {theirs!r}"]


def cmd_dashboard_model(path: str) -> str:
    from importlib.metadata import version

    from grafana_foundation_sdk.cog import plugins
    from grafana_foundation_sdk.cog.encoder import JSONEncoder
    from grafana_foundation_sdk.models import dashboard

    d = load_dashboard(path)
    # Panel options and field config by panel type, queries by datasource type.
    plugins.register_default_plugins()
    try:
        model = dashboard.Dashboard.from_json(d)
        again = json.loads(json.dumps(model, cls=JSONEncoder))
    except Exception as e:  # the model's decoder: a wrong shape somewhere
        fail(f"the dashboard model could not decode it: {type(e).__name__}: {e}")
    problems = lost(d, again, "")
    if problems:
        fail("fields Grafana's dashboard schema does not have:\n  " + "\n  ".join(problems))
    sdk = version("grafana-foundation-sdk")
    return (f"decoded and encoded again by grafana-foundation-sdk {sdk}'s dashboard model: "
            f"nothing lost ({len(all_panels(d))} panels)")


# ---------------------------------------------------------------------------------------------
# dashboard-promql: every query through Prometheus's own parser


def cmd_dashboard_promql(path: str, promtool: str) -> str:
    d = load_dashboard(path)
    rules, qs = [], queries(d)
    for i, (title, expr) in enumerate(qs):
        # Grafana's variables, as it would substitute them.
        e = expr.replace("$__rate_interval", "1m").replace("$job", ".+").replace("$instance", ".+")
        if "$" in e:
            fail(f"{title!r}: a variable this check does not know: {expr}")
        rules.append({"record": f"dashboard:query_{i}:check", "expr": e})
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", prefix="dashboard-queries-") as f:
        yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}, f)
        f.flush()
        r = subprocess.run([promtool, "check", "rules", f.name], capture_output=True, text=True)
    if r.returncode != 0:
        named = sorted({int(n) for n in re.findall(r"dashboard:query_(\d+):check", r.stdout + r.stderr)})
        which = "".join(f"\n  query_{n}: panel {qs[n][0]!r}: {qs[n][1]}" for n in named)
        fail(f"promtool check rules on the dashboard's queries:\n{r.stdout}{r.stderr}{which}")
    return f"{len(rules)} queries parse ($__rate_interval as 1m, $job and $instance as .+)"


# ---------------------------------------------------------------------------------------------
# rules: what promtool does not require


def cmd_rules(rules_file: str, tests_file: str) -> str:
    with open(rules_file, encoding="utf-8") as f:
        groups = yaml.safe_load(f)["groups"]
    alerts, records = {}, []
    for g in groups:
        for r in g["rules"]:
            if "record" in r:
                if not re.fullmatch(r"[a-z_]+:[a-z0-9_]+:[a-z0-9_]+", r["record"]):
                    fail(f"recording rule {r['record']}: name it level:metric:operations")
                records.append(r["record"])
                continue
            name = r["alert"]
            if name in alerts:
                fail(f"alert {name} defined twice")
            if "for" not in r:
                fail(f"alert {name}: no `for` (one bad scrape would page)")
            severity = (r.get("labels") or {}).get("severity")
            if severity not in SEVERITIES:
                fail(f"alert {name}: severity {severity!r}, expected one of {sorted(SEVERITIES)}")
            annotations = r.get("annotations") or {}
            for key in ("summary", "description"):
                if not str(annotations.get(key, "")).strip():
                    fail(f"alert {name}: no {key} annotation")
            alerts[name] = r
    with open(tests_file, encoding="utf-8") as f:
        tests = yaml.safe_load(f)
    if Path(rules_file).name not in [Path(p).name for p in tests.get("rule_files") or []]:
        fail(f"{tests_file} does not load {Path(rules_file).name}")
    fires, quiet = set(), set()
    for group in tests.get("tests") or []:
        for t in group.get("alert_rule_test") or []:
            name = t["alertname"]
            if name not in alerts:
                fail(f"a test names alert {name}, which the rules do not define")
            expected = t.get("exp_alerts") or []
            if not expected:
                quiet.add(name)
                continue
            for e in expected:
                if "severity" not in (e.get("exp_labels") or {}) or not e.get("exp_annotations"):
                    fail(f"a test of {name} does not give its labels and annotations")
            fires.add(name)
    for name in alerts:
        if name not in fires:
            fail(f"alert {name}: no test where it fires")
        if name not in quiet:
            fail(f"alert {name}: no test where it does not fire (exp_alerts: [])")
    return (f"{len(alerts)} alerts (for, severity, summary, description), {len(records)} recording "
            f"rules; each alert tested firing and not firing")


def main(argv: list[str]) -> int:
    commands = {
        "dashboard": cmd_dashboard, "dashboard-model": cmd_dashboard_model,
        "dashboard-promql": cmd_dashboard_promql, "rules": cmd_rules,
    }
    return run(argv, commands, __doc__)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
