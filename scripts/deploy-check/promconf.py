#!/usr/bin/env python3
"""Variants of k8s/monitoring/prometheus.yml that a Prometheus outside Kubernetes can load.

Debian's prometheus/promtool are built without Kubernetes service discovery, so they reject
`kubernetes_sd_configs`. Both commands below replace every kubernetes_sd_configs block with a
file_sd_configs block and keep everything else (relabel rules included) as written; the
kubernetes_sd blocks themselves are checked here, structurally.

  promconf.py check K8S_CONFIG OUT_DIR
      OUT_DIR/prometheus.yml for `promtool check config` (rule_files made absolute; the
      file_sd targets file is empty).

  promconf.py live K8S_CONFIG OUT_DIR --target JOB[/APP]=PORT ... [--interval 1s] [--self-port N]
      OUT_DIR/prometheus.yml for the live check: the file_sd targets file holds one fake "pod"
      per JOB[/APP]=PORT (pod APP-live-0 with app label APP, default JOB, which the relabel
      rules must assign to job JOB; annotations prometheus.io/scrape=true and
      prometheus.io/port=PORT, container port named http, address 127.0.0.1:9) plus decoys
      that the relabel rules must drop. So the real relabel rules are exercised: a target is
      only scraped if they keep it and rewrite its address to 127.0.0.1:PORT. Also writes
      OUT_DIR/expected-targets.json (pod -> expected labels and job) for the live check.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import yaml

K8S_SD_KEYS = {"role", "namespaces", "selectors", "api_server", "kubeconfig_file", "attach_metadata",
               "basic_auth", "authorization", "oauth2", "tls_config", "proxy_url", "follow_redirects",
               "enable_http2", "bearer_token", "bearer_token_file"}
K8S_ROLES = {"pod", "node", "service", "endpoints", "endpointslice", "ingress"}
NAMESPACE = "redis-stream-demo"


def check_k8s_sd(config: dict) -> list[str]:
    problems = []
    for job in config.get("scrape_configs", []):
        for sd in job.get("kubernetes_sd_configs", []):
            name = job.get("job_name")
            unknown = set(sd) - K8S_SD_KEYS
            if unknown:
                problems.append(f"job {name}: unknown kubernetes_sd_configs keys {sorted(unknown)}")
            if sd.get("role") not in K8S_ROLES:
                problems.append(f"job {name}: kubernetes_sd_configs role {sd.get('role')!r} is not one of {sorted(K8S_ROLES)}")
            ns = sd.get("namespaces", {})
            if set(ns) - {"names", "own_namespace"} or not all(isinstance(x, str) for x in ns.get("names", [])):
                problems.append(f"job {name}: namespaces must be {{names: [str, ...]}}")
            for rc in job.get("relabel_configs", []):
                for label in rc.get("source_labels", []):
                    if label.startswith("__meta_kubernetes_") and sd.get("role") == "pod" \
                            and not (label.startswith("__meta_kubernetes_pod_") or label == "__meta_kubernetes_namespace"):
                        problems.append(f"job {name}: {label} is not a meta label of role pod")
    return problems


def to_file_sd(config: dict, base: Path, targets_file: Path, interval: str | None) -> dict:
    config = json.loads(json.dumps(config))  # deep copy
    config["rule_files"] = [str((base / r).resolve()) for r in config.get("rule_files", [])]
    if interval:
        config.setdefault("global", {})["scrape_interval"] = interval
        config["global"]["evaluation_interval"] = interval
    for job in config.get("scrape_configs", []):
        if "kubernetes_sd_configs" in job:
            del job["kubernetes_sd_configs"]
            job["file_sd_configs"] = [{"files": [str(targets_file)], "refresh_interval": "5m"}]
    return config


def fake_pod(app: str, name: str, port: str, **overrides: str) -> dict:
    labels = {
        "__meta_kubernetes_namespace": NAMESPACE,
        "__meta_kubernetes_pod_name": name,
        "__meta_kubernetes_pod_phase": "Running",
        "__meta_kubernetes_pod_label_app_kubernetes_io_name": app,
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape": "true",
        "__meta_kubernetes_pod_annotation_prometheus_io_port": port,
        "__meta_kubernetes_pod_annotation_prometheus_io_path": "/metrics",
        "__meta_kubernetes_pod_container_port_name": "http",
    }
    labels.update(overrides)
    # Port 9 (discard) is closed here: only the address rewrite makes the target reachable.
    return {"targets": ["127.0.0.1:9"], "labels": labels}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["check", "live"])
    ap.add_argument("config")
    ap.add_argument("out_dir")
    ap.add_argument("--target", action="append", default=[], help="JOB=PORT")
    ap.add_argument("--interval")
    ap.add_argument("--self-port", help="live: where this Prometheus listens (for its own job)")
    args = ap.parse_args()

    src = Path(args.config).resolve()
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = yaml.safe_load(src.read_text())
    problems = check_k8s_sd(config)
    targets_file = out / "k8s-pods.json"

    groups, expected = [], {}
    if args.mode == "live":
        for spec in args.target:
            names, port = spec.split("=", 1)
            job, _, app = names.partition("/")
            app = app or job
            pod = f"{app}-live-0"
            groups.append(fake_pod(app, pod, port))
            expected[pod] = {"instance": pod, "pod": pod, "namespace": NAMESPACE, "job": job,
                             "scrapeUrl": f"http://127.0.0.1:{port}/metrics"}
            # Decoys: each must be dropped by the relabel rules.
            groups.append(fake_pod(app, f"{app}-decoy-not-annotated", port,
                                   __meta_kubernetes_pod_annotation_prometheus_io_scrape="false"))
            groups.append(fake_pod(app, f"{app}-decoy-other-port", port,
                                   __meta_kubernetes_pod_container_port_name="debug"))
            groups.append(fake_pod(app, f"{app}-decoy-finished", port,
                                   __meta_kubernetes_pod_phase="Succeeded"))
        groups.append(fake_pod("redis", "redis-0", "6379"))
    targets_file.write_text(json.dumps(groups, indent=1))
    (out / "expected-targets.json").write_text(json.dumps(expected, indent=1))

    variant = to_file_sd(config, src.parent, targets_file, args.interval)
    if args.self_port:
        for job in variant.get("scrape_configs", []):
            for sc in job.get("static_configs", []):
                sc["targets"] = [t.replace("localhost:9090", f"127.0.0.1:{args.self_port}") for t in sc["targets"]]
    (out / "prometheus.yml").write_text(yaml.safe_dump(variant, sort_keys=False))
    for p in problems:
        print(f"  ERROR {src.name}: {p}")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
