#!/usr/bin/env python3
"""Extracts every PromQL expression of the dashboard and of the alert rules.

  exprs.py extract DASHBOARD.json ALERTS.yml OUT.json [--rules OUT_RULES.yml]

OUT.json is a list of {"id", "source", "expr", "query", "selectors"}:
  id         stable name used in reports and in live-allowlist.tsv:
             'panel "<panel title>" <refId>' or 'alert <alertname>'
  expr       the expression as written
  query      the expression with Grafana's template variables replaced by values a plain
             Prometheus query accepts ($__rate_interval -> 1m, $instance -> .*, ...)
  selectors  the series selectors inside it (metric{matchers}), for per-selector checks

--rules writes the panel queries as recording rules, so that `promtool check rules` checks
their syntax offline. The dashboard is also linted (unique titles, datasource uid, ...), and
every metric name is checked against metrics.txt (the catalogue of names the services export).
Exits 1 on any problem.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent

# Grafana variables -> values for a plain Prometheus query. Anything else is an error, so a new
# variable in the dashboard gets a deliberate value here.
GRAFANA_VARS = {
    "__rate_interval": "1m",
    "__interval": "10s",
    "__range": "5m",
    "instance": ".*",
}
DATASOURCE_UID = "prometheus"

AGGREGATIONS = {"sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
                "bottomk", "topk", "quantile", "limitk", "limit_ratio"}
KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}
LABEL_LIST_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right"}


def substitute(expr: str) -> str:
    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        if name not in GRAFANA_VARS:
            raise ValueError(f"unknown Grafana variable ${name} in {expr!r}: add it to GRAFANA_VARS")
        return GRAFANA_VARS[name]

    return re.sub(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]", repl, expr)


def selectors(expr: str) -> list[str]:
    """Series selectors of a PromQL expression (a small tokenizer, not a full parser)."""
    out: list[str] = []
    i, n = 0, len(expr)
    while i < n:
        c = expr[i]
        if c in "\"'`":
            j = i + 1
            while j < n and expr[j] != c:
                j += 2 if expr[j] == "\\" else 1
            i = j + 1
        elif c == "[":
            i = expr.index("]", i) + 1
        elif c == "{":  # selector without a metric name
            j = expr.index("}", i)
            out.append(expr[i:j + 1])
            i = j + 1
        elif c.isalpha() or c in "_:":
            m = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*").match(expr, i)
            word = m.group(0)
            j = m.end()
            k = j
            while k < n and expr[k].isspace():
                k += 1
            nxt = expr[k] if k < n else ""
            if word in LABEL_LIST_KEYWORDS and nxt == "(":
                i = expr.index(")", k) + 1
            elif word in AGGREGATIONS or word in KEYWORDS or word in LABEL_LIST_KEYWORDS or nxt == "(":
                i = j
            elif nxt == "{":
                end = k
                depth_quote = None
                while end < n:
                    ch = expr[end]
                    if depth_quote:
                        if ch == "\\":
                            end += 1
                        elif ch == depth_quote:
                            depth_quote = None
                    elif ch in "\"'`":
                        depth_quote = ch
                    elif ch == "}":
                        break
                    end += 1
                out.append(word + expr[k:end + 1])
                i = end + 1
            else:
                out.append(word)
                i = j
        elif c.isdigit() or c == ".":
            m = re.compile(r"[0-9.]+(e[+-]?\d+)?[a-zA-Z]*").match(expr, i)
            i = m.end()
        else:
            i += 1
    return out


def metric_name(selector: str) -> str:
    if selector.startswith("{"):
        m = re.search(r'__name__\s*=\s*"([^"]+)"', selector)
        return m.group(1) if m else ""
    return selector.split("{", 1)[0]


def panel_targets(panels: list[dict]):
    for p in panels:
        if p.get("type") == "row":
            yield from panel_targets(p.get("panels", []))
            continue
        yield p


def extract(dashboard_path: str, alerts_path: str) -> tuple[list[dict], list[str]]:
    problems: list[str] = []
    dash = json.loads(Path(dashboard_path).read_text())
    rules = yaml.safe_load(Path(alerts_path).read_text())
    out: list[dict] = []

    titles: dict[str, int] = {}
    ids: set = set()
    for p in panel_targets(dash.get("panels", [])):
        title = p.get("title", "")
        titles[title] = titles.get(title, 0) + 1
        if p.get("id") in ids:
            problems.append(f'panel "{title}": duplicate panel id {p.get("id")}')
        ids.add(p.get("id"))
        if "gridPos" not in p:
            problems.append(f'panel "{title}": no gridPos')
        targets = p.get("targets", [])
        if not targets:
            problems.append(f'panel "{title}": no queries')
        for t in targets:
            ds = t.get("datasource") or p.get("datasource") or {}
            if ds.get("uid") != DATASOURCE_UID:
                problems.append(f'panel "{title}" {t.get("refId")}: datasource uid must be "{DATASOURCE_UID}"')
            expr = t.get("expr", "")
            if not expr.strip():
                problems.append(f'panel "{title}" {t.get("refId")}: empty expr')
                continue
            out.append({"id": f'panel "{title}" {t.get("refId")}', "source": "dashboard", "expr": expr})
    for title, count in titles.items():
        if count > 1:
            problems.append(f'panel title "{title}" is used {count} times (titles name the expressions)')
    for var in dash.get("templating", {}).get("list", []):
        q = var.get("query")
        q = q.get("query") if isinstance(q, dict) else q
        if var.get("type") == "query" and q:
            m = re.fullmatch(r"label_values\((.*),\s*(\w+)\)", q.strip())
            if not m:
                problems.append(f"variable {var.get('name')}: only label_values(selector, label) is understood")
            else:
                out.append({"id": f"variable {var['name']}", "source": "dashboard", "expr": m.group(1)})

    for group in rules.get("groups", []):
        for rule in group.get("rules", []):
            name = rule.get("alert") or rule.get("record")
            out.append({"id": f"alert {name}" if "alert" in rule else f"record {name}",
                        "source": "alerts", "expr": rule["expr"].strip()})

    known = {line.split("#", 1)[0].strip() for line in (HERE / "metrics.txt").read_text().splitlines()}
    known.discard("")
    for e in out:
        try:
            e["query"] = substitute(e["expr"])
        except ValueError as err:
            problems.append(f"{e['id']}: {err}")
            e["query"] = e["expr"]
        e["selectors"] = selectors(e["query"])
        if not e["selectors"]:
            problems.append(f"{e['id']}: no series selector found in {e['expr']!r}")
        for s in e["selectors"]:
            name = metric_name(s)
            base = re.sub(r"_(bucket|sum|count)$", "", name)
            if name not in known and base not in known:
                problems.append(f"{e['id']}: metric {name!r} is not in scripts/deploy-check/metrics.txt")
    return out, problems


def main(argv: list[str]) -> int:
    if len(argv) < 5 or argv[1] != "extract":
        print(__doc__, file=sys.stderr)
        return 2
    exprs, problems = extract(argv[2], argv[3])
    Path(argv[4]).write_text(json.dumps(exprs, indent=1))
    if "--rules" in argv:
        rules_path = argv[argv.index("--rules") + 1]
        rules = [{"record": f"dashboard:check_{i}", "expr": e["query"]}
                 for i, e in enumerate(exprs) if e["source"] == "dashboard"]
        Path(rules_path).write_text(yaml.safe_dump({"groups": [{"name": "dashboard-syntax", "rules": rules}]}))
    n_dash = sum(e["source"] == "dashboard" for e in exprs)
    n_alert = sum(e["source"] == "alerts" for e in exprs)
    n_sel = sum(len(e["selectors"]) for e in exprs)
    print(f"  {n_dash} dashboard expressions, {n_alert} alert expressions, {n_sel} selectors -> {argv[4]}")
    for p in problems:
        print(f"  ERROR {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
