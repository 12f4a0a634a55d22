#!/usr/bin/env python3
"""Prometheus side of the live check (scripts/deploy-check/live-promql).

  live_query.py wait   PROM_URL SECONDS QUERY...       until every QUERY returns a series
  live_query.py targets PROM_URL EXPECTED.json          relabelled targets are as expected
  live_query.py rules  PROM_URL                         alert rules loaded and evaluated
  live_query.py check  PROM_URL EXPRS.json ALLOWLIST    query every expression, print a table

`check`: each dashboard expression must parse and return at least one series. Alert
expressions only return series while the alert fires, so for them every series selector
inside must return at least one series (and the expression itself must parse). Entries of
ALLOWLIST (tab-separated: id, reason) are reported as SKIPPED instead; an allowlisted entry
that does return data, or that names no expression, is an error (the list stays exact).
"""

from __future__ import annotations

import json
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path


def query(prom: str, q: str) -> dict:
    url = f"{prom}/api/v1/query?" + urllib.parse.urlencode({"query": q})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as e:  # 400 for parse errors, with a JSON body
        return json.load(e)


def series_count(result: dict) -> int:
    data = result.get("data", {})
    if data.get("resultType") in ("vector", "matrix"):
        return len(data.get("result", []))
    return 1 if data.get("result") else 0


def cmd_wait(prom: str, seconds: str, queries: list[str]) -> int:
    deadline = time.monotonic() + float(seconds)
    pending = list(queries)
    while pending and time.monotonic() < deadline:
        pending = [q for q in pending if not (query(prom, q).get("status") == "success"
                                              and series_count(query(prom, q)) > 0)]
        if pending:
            time.sleep(0.5)
    for q in pending:
        print(f"  ERROR still no result after {seconds}s: {q}")
    return 1 if pending else 0


def cmd_targets(prom: str, expected_path: str) -> int:
    expected = json.loads(Path(expected_path).read_text())
    with urllib.request.urlopen(f"{prom}/api/v1/targets", timeout=10) as r:
        data = json.load(r)["data"]
    problems = []
    for job in sorted({want["job"] for want in expected.values()}):
        active = [t for t in data["activeTargets"] if t["labels"].get("job") == job]
        wanted = sorted(p for p, want in expected.items() if want["job"] == job)
        if len(active) != len(wanted):
            problems.append(f"job {job}: {len(active)} active targets, expected exactly {len(wanted)}"
                            f" ({', '.join(wanted)}; the decoys must be dropped)")
    for pod, want in expected.items():
        job = want["job"]
        active = [t for t in data["activeTargets"] if t["labels"].get("job") == job and t["labels"].get("pod") == pod]
        if len(active) != 1:
            problems.append(f"job {job}: no active target for pod {pod}")
            continue
        t = active[0]
        for k in ("instance", "pod", "namespace"):
            if t["labels"].get(k) != want[k]:
                problems.append(f"job {job}: label {k}={t['labels'].get(k)!r}, expected {want[k]!r}")
        if t["scrapeUrl"] != want["scrapeUrl"]:
            problems.append(f"job {job}: scrapes {t['scrapeUrl']}, expected {want['scrapeUrl']}")
        if t["health"] != "up":
            problems.append(f"job {job}: target health {t['health']} ({t.get('lastError')})")
        print(f"  target {job}: {t['scrapeUrl']} {t['health']} labels {t['labels']}")
    print(f"  dropped by the relabel rules: {len(data['droppedTargets'])} discovered targets (decoys, redis, other jobs' pods)")
    for p in problems:
        print(f"  ERROR {p}")
    return 1 if problems else 0


def cmd_rules(prom: str) -> int:
    with urllib.request.urlopen(f"{prom}/api/v1/rules", timeout=10) as r:
        groups = json.load(r)["data"]["groups"]
    rules = [rule for g in groups for rule in g["rules"]]
    bad = [r for r in rules if r.get("health") != "ok"]
    for r in bad:
        print(f"  ERROR rule {r.get('name')}: health {r.get('health')} {r.get('lastError', '')}")
    firing = [r["name"] for r in rules if r.get("state") == "firing"]
    pending = [r["name"] for r in rules if r.get("state") == "pending"]
    print(f"  {len(rules)} alert rules loaded, {len(rules) - len(bad)} evaluated without error;"
          f" firing: {', '.join(firing) or 'none'}; pending: {', '.join(pending) or 'none'}")
    return 1 if bad or not rules else 0


def cmd_check(prom: str, exprs_path: str, allowlist_path: str) -> int:
    exprs = json.loads(Path(exprs_path).read_text())
    allow: dict[str, str] = {}
    for line in Path(allowlist_path).read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            ident, _, reason = line.partition("\t")
            allow[ident.strip()] = reason.strip()
    ids = {e["id"] for e in exprs}
    problems = [f"allowlist entry {i!r} names no expression" for i in allow if i not in ids]

    rows = []
    for e in exprs:
        res = query(prom, e["query"])
        parsed = res.get("status") == "success"
        n = series_count(res) if parsed else 0
        detail = "" if parsed else res.get("error", "query failed")
        empty_selectors = []
        if parsed and e["source"] == "alerts":
            for s in e["selectors"]:
                if series_count(query(prom, s)) == 0:
                    empty_selectors.append(s)
            has_data = not empty_selectors
            shown = f"{n} firing" if n else "not firing"
            if empty_selectors:
                detail = "no series for " + ", ".join(empty_selectors)
        else:
            has_data = n > 0
            shown = str(n)
            if parsed and not has_data:
                detail = "no series"
        if e["id"] in allow:
            if not parsed:
                status = "FAIL"
            elif has_data:
                status = "FAIL"
                detail = "allowlisted but has data now: remove it from live-allowlist.tsv"
            else:
                status = "SKIPPED"
                detail = allow[e["id"]]
        else:
            status = "ok" if parsed and has_data else "FAIL"
        rows.append((status, e["id"], shown, detail))
        if status == "FAIL":
            problems.append(f"{e['id']}: {detail}  [{e['query']}]")

    w = max(len(r[1]) for r in rows)
    print(f"  {'result':<8} {'expression':<{w}} {'series':>10}  note")
    for status, ident, shown, detail in rows:
        print(f"  {status:<8} {ident:<{w}} {shown:>10}  {detail}")
    counts = {s: sum(r[0] == s for r in rows) for s in ("ok", "SKIPPED", "FAIL")}
    print(f"  {len(rows)} expressions: {counts['ok']} ok, {counts['SKIPPED']} skipped (allowlisted), {counts['FAIL']} failed")
    for p in problems:
        print(f"  ERROR {p}")
    return 1 if problems else 0


def main(argv: list[str]) -> int:
    if len(argv) < 3:
        print(__doc__, file=sys.stderr)
        return 2
    cmd, prom, rest = argv[1], argv[2].rstrip("/"), argv[3:]
    if cmd == "wait":
        return cmd_wait(prom, rest[0], rest[1:])
    if cmd == "targets":
        return cmd_targets(prom, rest[0])
    if cmd == "rules":
        return cmd_rules(prom)
    if cmd == "check":
        return cmd_check(prom, rest[0], rest[1])
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
