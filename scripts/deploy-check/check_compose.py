#!/usr/bin/env python3
"""Checks of compose.yaml and the Dockerfiles beyond what `docker compose config` validates.

  check_compose.py REPO COMPOSE_CONFIG.json [FORWARDING_CONFIG.json]

COMPOSE_CONFIG.json is `docker compose config --format json` (anchors, merges and defaults
resolved, schema already checked); FORWARDING_CONFIG.json the same with `--profile forwarding`.
This adds:
  compose     bind-mounted files exist (Docker would silently create a directory instead),
              proxy runs 2 replicas without a fixed host port, stop_grace_period exceeds
              DRAIN_TIMEOUT, services wait for a healthy Redis, Prometheus gets the shared
              monitoring files. Without the profile no service forwards (no ROUTES, no
              QUEUE). With it: every service that logs in to Redis passes the same checks as
              ingress and proxy, its ACL user has a line in k8s/app/redis-users.acl that
              grants the streams of its queues and a password secret given to Redis; each
              ROUTES queue has a proxy with that QUEUE and an UPSTREAM_URL naming a compose
              service with a healthcheck; Prometheus discovers every such service.
  Dockerfiles every Cargo workspace member's manifest is copied into the dependency stage
              (from `cargo metadata`, when cargo is available), the dependency stage is
              byte-identical in both files (shared layer cache), non-root numeric USER,
              exec-form ENTRYPOINT, HEALTHCHECK and EXPOSE on the LISTEN_ADDR port.
              Without a Docker engine, the file layout of the deps and build stages is
              replayed in a temporary directory (their COPY and non-cargo RUN instructions) and
              `cargo metadata --no-deps` must load the workspace after each: stubs and real
              sources add up to a valid workspace, and the real sources replace the stubs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import yaml


def seconds(value) -> float:
    if isinstance(value, (int, float)):
        return float(value) / 1e9 if value > 10_000 else float(value)  # compose json uses ns
    total = 0.0
    for num, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", str(value)):
        total += float(num) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]
    return total


def check_compose(repo: Path, cfg: dict, errors: list[str]) -> int:
    checked = 0

    def expect(cond, msg):
        nonlocal checked
        checked += 1
        if not cond:
            errors.append(f"compose.yaml: {msg}")

    services = cfg.get("services", {})
    for name in ("redis", "ingress", "proxy", "prometheus", "grafana"):
        expect(name in services, f"service {name} missing")
    for name, svc in services.items():
        for vol in svc.get("volumes", []):
            if vol.get("type") == "bind":
                src = Path(vol["source"])
                expect(src.exists(), f"{name}: bind-mount source {src} does not exist")
                expect(src.resolve().is_relative_to(repo.resolve()), f"{name}: bind mount {src} is outside the repository")
    proxy, ingress = services.get("proxy", {}), services.get("ingress", {})
    expect(proxy.get("deploy", {}).get("replicas") == 2, "proxy must run 2 replicas (deploy.replicas)")
    expect(all(not p.get("published") for p in proxy.get("ports", [])),
           "proxy must not publish a fixed host port (2 replicas cannot share it)")
    expect(any(str(p.get("published")) == "5009" and p.get("target") == 5009 for p in ingress.get("ports", [])),
           "ingress must publish 5009:5009")
    for name in ("ingress", "proxy"):
        check_service(name, services.get(name, {}), expect)
        env = services.get(name, {}).get("environment", {})
        expect(env.get("REDIS_URL", "").startswith(f"redis://{name}@redis:"),
               f"{name}: REDIS_URL should point at the redis service as ACL user {name} (redis://{name}@redis:6379)")
        expect(not {"ROUTES", "ROUTES_FILE", "QUEUE", "UPSTREAM_URL"} & set(env),
               f"{name}: the default stack serves the weather demo only (forwarding is the `forwarding` profile)")
    redis = services.get("redis", {})
    expect("--appendonly" in (redis.get("command") or []), "redis must run with --appendonly yes")
    expect("redis-start.sh" in " ".join(redis.get("entrypoint") or []),
           "redis must start through k8s/app/redis-start.sh (ACL users, default user off)")
    expect("healthcheck" in redis, "redis needs a healthcheck")
    prom = services.get("prometheus", {})
    targets = {v.get("target") for v in prom.get("volumes", [])}
    expect({"/etc/prometheus/prometheus.yml", "/etc/prometheus/alerts.yml"} <= targets,
           "prometheus must mount prometheus.yml and alerts.yml from k8s/monitoring")
    aliases = prom.get("networks", {}).get("default", {}) or {}
    expect("prometheus-service" in (aliases.get("aliases") or []),
           "prometheus needs the network alias prometheus-service (grafana/datasource.yml uses it)")
    sources = {v.get("source", "") for s in services.values() for v in s.get("volumes", [])}
    for f in ("k8s/monitoring/alerts.yml", "k8s/monitoring/dashboard.json", "k8s/monitoring/grafana/datasource.yml",
              "k8s/monitoring/grafana/dashboards.yml", "k8s/monitoring/prometheus-compose.yml"):
        expect(str((repo / f).resolve()) in sources, f"{f} is not mounted (single source of truth)")
    return checked


def check_service(name: str, svc: dict, expect) -> None:
    """What every broker service (one that logs in to Redis) must have."""
    env = svc.get("environment", {})
    drain = seconds(env.get("DRAIN_TIMEOUT", "25s"))
    grace = seconds(svc.get("stop_grace_period", "10s"))
    expect(grace > drain, f"{name}: stop_grace_period {grace}s must exceed DRAIN_TIMEOUT {drain}s")
    expect(svc.get("depends_on", {}).get("redis", {}).get("condition") == "service_healthy",
           f"{name}: must depend on redis with condition service_healthy")
    expect(svc.get("read_only") is True, f"{name}: read_only root filesystem expected")
    expect("ALL" in (svc.get("cap_drop") or []), f"{name}: cap_drop ALL expected")
    expect(env.get("REDIS_PASSWORD_FILE", "").startswith("/run/secrets/"),
           f"{name}: REDIS_PASSWORD_FILE should name a secret file (/run/secrets/...)")


def acl_users(repo: Path) -> dict[str, str]:
    """User name -> rules, from k8s/app/redis-users.acl."""
    users = {}
    for line in (repo / "k8s/app/redis-users.acl").read_text().splitlines():
        parts = line.split(None, 2)
        if len(parts) >= 2 and parts[0] == "user":
            users[parts[1]] = parts[2] if len(parts) > 2 else ""
    return users


def check_forwarding(repo: Path, cfg: dict, errors: list[str]) -> int:
    """The `forwarding` profile (cfg: `docker compose --profile forwarding config`)."""
    checked = 0

    def expect(cond, msg):
        nonlocal checked
        checked += 1
        if not cond:
            errors.append(f"compose.yaml (--profile forwarding): {msg}")

    services = cfg.get("services", {})
    users = acl_users(repo)
    redis_secrets = {s.get("target") for s in services.get("redis", {}).get("secrets", [])}
    prom_conf = yaml.safe_load((repo / "k8s/monitoring/prometheus-compose.yml").read_text())
    discovered = {n for job in prom_conf.get("scrape_configs", []) for sd in job.get("dns_sd_configs", [])
                  for n in sd.get("names", [])}
    queues_served = {}
    routed = set()
    for name, svc in services.items():
        env = svc.get("environment", {})
        url = env.get("REDIS_URL", "")
        if not url:
            continue
        check_service(name, svc, expect)
        m = re.match(r"redis://([^:@/]+)@redis:", url)
        expect(m is not None, f"{name}: REDIS_URL should be redis://<ACL user>@redis:6379")
        user = m.group(1) if m else ""
        expect(user in users, f"{name}: ACL user {user!r} has no line in k8s/app/redis-users.acl")
        expect(f"{user}-password" in redis_secrets,
               f"{name}: redis gets no secret {user}-password, so redis-start.sh cannot create user {user}")
        expect(name in discovered, f"{name}: k8s/monitoring/prometheus-compose.yml does not discover it")
        rules = users.get(user, "").split()
        queues = []
        if "QUEUE" in env:
            queue = env["QUEUE"]
            queues.append(queue)
            queues_served[queue] = name
            expect("REQUEST_STREAM" not in env, f"{name}: QUEUE and REQUEST_STREAM together are refused")
            upstream = re.match(r"https?://([^:/]+)", env.get("UPSTREAM_URL", ""))
            expect(upstream is not None, f"{name}: QUEUE without an http:// UPSTREAM_URL")
            host = upstream.group(1) if upstream else ""
            expect(host in services, f"{name}: UPSTREAM_URL host {host!r} is no compose service")
            expect("healthcheck" in services.get(host, {}),
                   f"{name}: the upstream service {host!r} needs a healthcheck")
            expect(svc.get("depends_on", {}).get(host, {}).get("condition") == "service_healthy",
                   f"{name}: must depend on its upstream {host!r} with condition service_healthy")
        for pair in filter(None, env.get("ROUTES", "").split(",")):
            queue = pair.partition("=")[2].strip()
            queues.append(queue)
            routed.add(queue)
        for queue in queues:
            expect(f"~{queue}-requests" in rules,
                   f"{name}: ACL user {user} is not granted ~{queue}-requests (print the rules with --print-redis-acl)")
    expect(bool(routed), "no service has ROUTES")
    for queue in sorted(routed):
        expect(queue in queues_served, f"ROUTES send queue {queue!r} to a stream no proxy (QUEUE={queue}) reads")
    ports = [str(p.get("published")) for s in services.values() for p in s.get("ports", []) if p.get("published")]
    expect(len(ports) == len(set(ports)), f"two services publish the same host port: {sorted(ports)}")
    return checked


def deps_stage(text: str) -> str:
    m = re.search(r"^FROM .* AS deps\n(.*?)^FROM ", text, re.S | re.M)
    return m.group(1) if m else ""


def instructions(text: str) -> list[str]:
    """Dockerfile instructions, comments dropped and continuation lines joined."""
    lines = [l for l in text.splitlines() if not l.lstrip().startswith("#")]
    joined = re.sub(r"\\\n", " ", "\n".join(lines))
    return [l.strip() for l in joined.splitlines() if l.strip()]


def replay_layout(repo: Path, dockerfile: str, service: str, errors: list[str]) -> int:
    """Replays the deps and build stages' file operations and loads the workspace after each."""
    import tempfile

    text = (repo / dockerfile).read_text()
    stages = re.split(r"^FROM ", text, flags=re.M)[1:]
    checked = 0
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for stage in stages:
            header = stage.splitlines()[0]
            if not re.search(r" AS (deps|build)$", header):
                continue
            copied: set[str] = set()
            for ins in instructions("FROM " + stage)[1:]:
                if ins.startswith("COPY ") and "--from" not in ins:
                    *sources, dest = ins.split()[1:]
                    copied.update(sources)
                    into_dir = dest.endswith("/") or dest in (".", "./") or len(sources) > 1
                    for src in sources:
                        # Docker copies a directory's contents; a file to DEST or DEST/<name>.
                        target = work / dest / (Path(src).name if into_dir and not (repo / src).is_dir() else "")
                        if (repo / src).is_dir():
                            shutil.copytree(repo / src, target, dirs_exist_ok=True,
                                            ignore=shutil.ignore_patterns("target"))
                        else:
                            target.parent.mkdir(parents=True, exist_ok=True)
                            shutil.copy2(repo / src, target)
                elif ins.startswith("RUN "):
                    script = ins[4:]
                    # Everything but the compilation: cargo and install(1) of its output.
                    script = re.sub(r"cargo build[^;&|]*", "true", script)
                    script = re.sub(r"install -D [^;&|]*", "true", script)
                    script = re.sub(r"find \S+( \S+)* -type f -exec touch \{\} \+", "true", script)
                    subprocess.run(["sh", "-c", script], cwd=work, check=True, capture_output=True)
            stage_name = header.split()[-1]
            res = subprocess.run(["cargo", "metadata", "--no-deps", "--offline", "--format-version", "1"],
                                 cwd=work, capture_output=True, text=True)
            checked += 1
            if res.returncode != 0:
                errors.append(f"{dockerfile}: after stage {stage_name} cargo cannot load the workspace: "
                              + res.stderr.strip().splitlines()[-1])
                return checked
            pkgs = {p["name"]: p for p in json.loads(res.stdout)["packages"]}
            checked += 1
            if service not in pkgs or not any("bin" in t["kind"] for t in pkgs[service]["targets"]):
                errors.append(f"{dockerfile}: after stage {stage_name} there is no `{service}` binary target")
            if stage_name == "build":
                # No stub may survive in a crate whose real sources this stage copied.
                for src in sorted(copied):
                    for stub in sorted((work / src).rglob("*.rs")) if (work / src).is_dir() else []:
                        if stub.read_text().strip() in ("", "fn main() {}") and not (repo / stub.relative_to(work)).exists():
                            checked += 1
                            errors.append(f"{dockerfile}: the stub {stub.relative_to(work)} survives into the build stage")
    return checked


def check_dockerfiles(repo: Path, cfg: dict, errors: list[str]) -> tuple[int, str]:
    checked = 0
    note = ""

    def expect(cond, msg):
        nonlocal checked
        checked += 1
        if not cond:
            errors.append(msg)

    members: list[str] = []
    if shutil.which("cargo"):
        try:
            meta = json.loads(subprocess.run(
                ["cargo", "metadata", "--no-deps", "--format-version", "1", "--offline"],
                cwd=repo, check=True, capture_output=True, text=True, timeout=120).stdout)
            ws = Path(meta["workspace_root"])
            members = [str(Path(p["manifest_path"]).parent.relative_to(ws)) for p in meta["packages"]]
        except (subprocess.SubprocessError, ValueError, KeyError) as e:
            note = f"cargo metadata failed ({e}); workspace-member check skipped"
    else:
        note = "cargo not found; workspace-member check skipped"

    stages = {}
    for service, port in (("ingress", 5009), ("proxy", 5010)):
        path = repo / service / "Dockerfile"
        who = f"{service}/Dockerfile"
        if not path.exists():
            errors.append(f"{who} missing")
            continue
        text = path.read_text()
        ins = instructions(text)
        stages[service] = instructions(deps_stage(text))
        expect(bool(stages[service]), f"{who}: no stage named deps")
        for member in members:
            expect(any(i.startswith("COPY") and f"{member}/Cargo.toml" in i for i in stages[service]),
                   f"{who}: the deps stage does not copy workspace member {member}/Cargo.toml")
        expect(any(re.fullmatch(rf"RUN .*cargo build --release --locked -p {service}\b.*", i) for i in ins),
               f"{who}: no `cargo build --release --locked -p {service}`")
        final = text[text.rfind("\nFROM "):]
        fins = instructions(final)
        expect(fins[0].startswith("FROM debian:bookworm-slim") or "distroless" in fins[0],
               f"{who}: final image should be debian:bookworm-slim or distroless")
        expect(not any("cargo" in i or "rustc" in i for i in fins), f"{who}: build tools in the final stage")
        user = next((i.split()[1] for i in fins if i.startswith("USER ")), "")
        expect(re.fullmatch(r"[1-9]\d*(:\d+)?", user) is not None and user.split(":")[0] == "10001",
               f"{who}: final stage must run as USER 10001 (numeric)")
        ep = next((i for i in fins if i.startswith("ENTRYPOINT")), "")
        expect(ep.startswith('ENTRYPOINT ["'), f"{who}: ENTRYPOINT must use the exec form")
        hc = next((i for i in fins if i.startswith("HEALTHCHECK")), "")
        expect(f"127.0.0.1:{port}/health/live" in hc, f"{who}: HEALTHCHECK must GET /health/live on {port}")
        expect(f"EXPOSE {port}" in fins, f"{who}: EXPOSE {port} missing")
        listen = cfg.get("services", {}).get(service, {}).get("environment", {}).get("LISTEN_ADDR", "")
        expect(listen.endswith(f":{port}"), f"compose.yaml: {service} LISTEN_ADDR {listen!r} does not match the image's port {port}")
        build = cfg.get("services", {}).get(service, {}).get("build", {})
        expect(Path(build.get("context", "")).resolve() == repo.resolve() and build.get("dockerfile") == f"{service}/Dockerfile",
               f"compose.yaml: {service} must build {service}/Dockerfile with the repository root as context")
    if members:  # cargo works
        for service in ("ingress", "proxy"):
            try:
                checked += replay_layout(repo, f"{service}/Dockerfile", service, errors)
            except (subprocess.SubprocessError, OSError, ValueError) as e:
                errors.append(f"{service}/Dockerfile: replaying the stage layout failed: {e}")
    if len(stages) == 2:
        expect(stages["ingress"] == stages["proxy"],
               "ingress/Dockerfile and proxy/Dockerfile: the deps stages differ (no shared layer cache)")
    return checked, note


def main() -> int:
    repo = Path(sys.argv[1]).resolve()
    cfg = json.loads(Path(sys.argv[2]).read_text())
    errors: list[str] = []
    n1 = check_compose(repo, cfg, errors)
    n2, note = check_dockerfiles(repo, cfg, errors)
    print(f"  compose: {len(cfg.get('services', {}))} services, {n1} checks; Dockerfiles: {n2} checks")
    if len(sys.argv) > 3:
        fwd = json.loads(Path(sys.argv[3]).read_text())
        n3 = check_forwarding(repo, fwd, errors)
        print(f"  compose --profile forwarding: {len(fwd.get('services', {}))} services, {n3} checks")
    if note:
        print(f"  NOTE {note}")
    for e in errors:
        print(f"  ERROR {e}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
