# Renders results.jsonl (slurped) as the markdown tables of docs/benchmarks.md.
# Inputs: the array of result lines; $machine and $load, the text files of the run.

def r(n): if . == null then "–" else ((. * pow(10; n) | round) / pow(10; n) | tostring) end;
def int: if . == null then "–" else (round | tostring) end;
def mib: if . == null then "–" else (. / 1024 | r(1)) end;
def row(cells): "| " + (cells | map(tostring | gsub("\\|"; "\\|")) | join(" | ")) + " |";
def cpu: ([.cpuPer1k.ingress, .cpuPer1k.proxy, .cpuPer1k.redis, .cpuPer1k.client] | map(r(3))) + [(.otherCpuPct | int), (.stealPct | int)];
def mean: if length == 0 then null else add / length end;
def verdict(ok): if ok then "**met**" else "**missed**" end;
def verdict(x; ok): if x == null then "not run" else verdict(ok) end;

. as $all
| ($all | map(select(.phase == "redis-benchmark")) | map({key: .label, value: .opsPerSec}) | from_entries) as $rb
| ($all | map(select(.phase == "ramp" and .tool == "lt"))) as $ramp_lt
| ($ramp_lt | max_by(.rps)) as $sat
| ($all | map(select(.phase == "ramp" and .tool == "wrk-post")) | max_by(.rps)) as $sat_a
| ($all | map(select(.phase == "ramp" and .tool == "wrk-baseline")) | max_by(.rps)) as $sat_b
| ($all | map(select(.phase == "c1")) | map({key: .tool, value: .}) | from_entries) as $c1
| ($all | map(select(.phase == "rate")) | map({key: .label, value: .}) | from_entries) as $rate
| ($all | map(select(.phase == "rss" and .label == "after-ramp")) | .[0]) as $rss
| ($all | map(select(.phase == "rss" and .label == "after-rate")) | .[0]) as $rss_rate
| ($all | map(select(.phase == "soak-sample"))) as $samples
| ($all | map(select(.phase == "soak")) | .[0]) as $soak
# Redis commands per request at saturation, from INFO commandstats around that point.
| ($sat.redisCommands // {} | with_entries(.value = (.value.calls / $sat.total))) as $per_req
| (($per_req.xadd // 0)) as $n_xadd
# Calls made inside the proxy's EVALSHA (XADD reply, XACK, XDEL) are in the xadd/xack/xdel
# counts too; when the script itself was benchmarked, they are costed as the script instead.
| (if $rb.evalsha_reply_ack then ($per_req.evalsha // 0) else 0 end) as $n_eval
| def part(n; ops): if n > 0 and ops then n / ops else 0 end;
  ( part(if $n_xadd > 0 then 1 else 0 end; $rb.xadd)
    + part($n_xadd - 1 - $n_eval; $rb.xadd_nomkstream)
    + part($n_eval; $rb.evalsha_reply_ack)
    + part(($per_req.xreadgroup // 0); $rb.xreadgroup)
    + part(($per_req.xack // 0) - $n_eval; $rb.xack)
    + part(($per_req.xdel // 0) - $n_eval; $rb.xdel)
    + part(($per_req.xread // 0); $rb.xread)
    + part(($per_req.xtrim // 0); $rb.xtrim) ) as $cost_measured
| (if ([$rb.xadd, $rb.xreadgroup, $rb.xadd_nomkstream, $rb.xack, $rb.xdel, $rb.xread, $rb.xtrim] | all)
   then 1 / $rb.xadd + 1 / $rb.xreadgroup + 1 / $rb.xadd_nomkstream + 1 / $rb.xack + 1 / $rb.xdel
     + 1 / $rb.xread + 1 / $rb.xtrim else null end) as $cost_naive
| (if $cost_measured > 0 and ($rb | length) > 0 then 1 / $cost_measured else null end) as $ceiling
| (if $sat.cpuPer1k.redis > 0 then 1000 / $sat.cpuPer1k.redis else null end) as $ceiling_cpu
| ($samples | if length > 1 then .[1:] else . end) as $s
| ($s | length) as $n
| ($s[: ($n / 2 | floor)]) as $h1
| ($s[($n / 2 | floor):]) as $h2
| def flat(f): ($h2 | map(f) | max) <= ($h1 | map(f) | max) * 1.05 + 1024;
  (if $n >= 4 then flat(.ingressRssKiB) and flat(.proxyRssKiB) else null end) as $rss_flat
| (if $n >= 4 then ($s | map(.requestXlen) | max) <= 1000
      and ($h2 | map(.requestXlen) | max) <= ($h1 | map(.requestXlen) | max) + 100 else null end) as $xlen_flat
| ([$c1["wrk-post"].p50, $c1["wrk-baseline"].p50]) as $c1ab
| (if ($c1ab | all) then $c1ab[0] - $c1ab[1] else null end) as $legs
|
"## Machine",
"",
"```text",
($machine | rtrimstr("\n")),
($load | rtrimstr("\n")),
"```",
"",
"## (c) Redis's own ceiling: redis-benchmark, one command at a time",
"",
"50 connections, no pipelining (`-P 1`), entries shaped like the real ones.",
"",
row(["command", "as run", "ops/s"]),
row(["---", "---", "---:"]),
($all[] | select(.phase == "redis-benchmark") | row([.label, "`" + .args[0:70] + (if (.args | length) > 70 then "…" else "" end) + "`", (.opsPerSec | int)])),
"",
"Commands per request measured at saturation (INFO commandstats delta / requests, c=\($sat.concurrency)):",
"",
row(["command", "calls per request", "µs of Redis per call"]),
row(["---", "---:", "---:"]),
($sat.redisCommands // {} | to_entries | sort_by(-.value.calls)[]
  | row([.key, (.value.calls / $sat.total | r(4)), (.value.usec / .value.calls | r(2))])),
"",
"- estimated Redis ceiling with these counts (Σ calls/ops of the benchmarks above\(if $n_eval > 0 then "; the proxy's script costed as `evalsha_reply_ack`" else "" end)): **\($ceiling | int) req/s**",
"- with exactly one of each of the 7 commands per request: \(if $cost_naive then 1 / $cost_naive else null end | int) req/s",
"- from Redis's measured CPU per request at saturation (\($sat.cpuPer1k.redis | r(3)) CPU s / 1k): \($ceiling_cpu | int) req/s on one full core",
"",
"## Concurrency 1",
"",
row(["tool", "target", "req/s", "p50 ms", "p90 ms", "p99 ms", "ingress", "proxy", "redis", "client", "others %", "steal %"]),
row(["---", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
($all[] | select(.phase == "c1")
  | row([.tool, ({"lt": "(a) load-test sequential", "wrk-post": "(a) broker pair", "wrk-baseline": "(b) in-process baseline", "wrk-live": "GET /health/live"}[.tool]),
         (.rps | int), (.p50 | r(3)), (.p90 | r(3)), (.p99 | r(3))] + cpu)),
"",
"CPU columns: CPU seconds per 1,000 requests of each process; `others %`: CPU used meanwhile by every other process of the machine, `steal %`: CPU the hypervisor gave to other VMs, both in % of all cores. (a) − (b) at p50: \($legs | r(3)) ms.",
"",
"## Ramp (closed loop), PROCESSING_DELAY_MS=0, TERMINALS=\($sat.terminals)",
"",
row(["users", "load-test (a) req/s", "p50 ms", "p99 ms", "wrk (a) req/s", "p50", "p99", "wrk (b) req/s", "p50", "p99", "(a)/(b)", "ingress", "proxy", "redis", "load-test", "others %", "steal %"]),
row(["---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
($ramp_lt[] | . as $l
  | ($all | map(select(.phase == "ramp" and .label == $l.label and .tool == "wrk-post")) | .[0]) as $a
  | ($all | map(select(.phase == "ramp" and .label == $l.label and .tool == "wrk-baseline")) | .[0]) as $b
  | row([$l.concurrency, ($l.rps | int), ($l.p50 | r(3)), ($l.p99 | r(3)),
         ($a.rps | int), ($a.p50 | r(3)), ($a.p99 | r(3)),
         ($b.rps | int), ($b.p50 | r(3)), ($b.p99 | r(3)),
         (if $b.rps > 0 then $a.rps / $b.rps | r(3) else "–" end)] + ($l | cpu))),
"",
"CPU columns: CPU seconds per 1,000 requests (load-test run); `others %` as above. Errors in the ramp: \([$all[] | select(.phase == "ramp" and .tool != "wrk-baseline") | .errors] | add).",
"",
"- saturation (load-test): **\($sat.rps | int) req/s** at \($sat.concurrency) users",
"- saturation (wrk): (a) \($sat_a.rps | int) req/s at \($sat_a.concurrency) connections; (b) \($sat_b.rps | int) req/s at \($sat_b.concurrency)",
"- throughput ratio (a)/(b) at saturation: \(if $sat_b.rps > 0 then $sat_a.rps / $sat_b.rps else null end | r(3)); (a)/(c) load-test saturation / Redis ceiling: \(if $ceiling then $sat.rps / $ceiling | r(3) else "–" end)",
"- peak RSS after the ramp (VmHWM): ingress \($rss.ingressHwmKiB | mib) MiB, proxy \($rss.proxyHwmKiB | mib) MiB",
"",
"## Open loop at a share of saturation (load-test --mode rate)",
"",
row(["share", "target req/s", "achieved", "p50 ms", "p90", "p99", "p99.9", "from send p50", "p99", "late sends", "errors", "ingress", "proxy", "redis", "load-test", "others %", "steal %"]),
row(["---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
($all[] | select(.phase == "rate")
  | row(["\(.percent) %", .rate, (.rps | int), (.p50 | r(3)), (.p90 | r(3)), (.p99 | r(3)), (.p999 | r(3)),
         (.svcP50 | r(3)), (.svcP99 | r(3)), .lateSends, .errors] + cpu)),
"",
"Latency from the intended send time (no coordinated omission); `from send` is uncorrected.",
"Peak RSS after these runs (VmHWM): ingress \($rss_rate.ingressHwmKiB | mib) MiB (now \($rss_rate.ingressRssKiB | mib)), proxy \($rss_rate.proxyHwmKiB | mib) MiB (now \($rss_rate.proxyRssKiB | mib)).",
"",
"## Scaling: load-test c=\($all | map(select(.phase == "scaling")) | .[0].concurrency), one config at a time, proxy restarted between",
"",
row(["PROCESSING_DELAY_MS", "TERMINALS", "proxies", "req/s", "p50 ms", "p99 ms", "errors", "ingress", "proxy (all)", "redis", "load-test", "others %", "steal %"]),
row(["---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:"]),
($all[] | select(.phase == "scaling")
  | row([.delayMs, .terminals, .proxies, (.rps | int), (.p50 | r(3)), (.p99 | r(3)), .errors] + cpu)),
"",
"## Soak",
"",
(if $soak == null then "skipped (BENCH_SOAK=0)" else
  ("open loop at \($soak.rate) req/s for \($samples | last | .t) s: \($soak.requests) requests, \($soak.errors) errors, achieved \($soak.rps | int) req/s, p50 \($soak.p50 | r(3)) ms, p99 \($soak.p99 | r(3)) ms, p99.9 \($soak.p999 | r(3)) ms, max \($soak.max | r(1)) ms",
   "",
   row(["t s", "ingress RSS MiB", "proxy RSS MiB", "XLEN weather-requests", "XLEN reply stream", "Redis used_memory MiB"]),
   row(["---:", "---:", "---:", "---:", "---:", "---:"]),
   ($samples[] | row([.t, (.ingressRssKiB | mib), (.proxyRssKiB | mib), .requestXlen, .replyXlen, (.redisUsedMemory / 1048576 | r(2))])),
   "",
   "RSS flat (max of the second half ≤ max of the first half + 5 % + 1 MiB): \($rss_flat); stream length flat (≤ 1000 and no growth > 100): \($xlen_flat)")
 end),
"",
"## Targets",
"",
row(["target", "figure", "verdict"]),
row(["---", "---", "---"]),
row(["≥ 20,000 req/s end to end at saturation", "\($sat.rps | int) req/s", verdict($sat.rps; $sat.rps >= 20000)]),
row(["p50 ≤ 0.6 ms at concurrency 1", "\($c1.lt.p50 | r(3)) ms (load-test), \($c1["wrk-post"].p50 | r(3)) ms (wrk)", verdict($c1.lt.p50; $c1.lt.p50 <= 0.6)]),
row(["broker legs ≤ 0.4 ms over (b) at c=1", "\($legs | r(3)) ms (wrk p50 (a) − (b))", verdict($legs; $legs <= 0.4)]),
row(["p99 ≤ 5 ms at 50 % of saturation", "\($rate.p50.p99 | r(3)) ms at \($rate.p50.rate) req/s", verdict($rate.p50.p99; $rate.p50.p99 <= 5)]),
row(["each service ≤ 50 MiB RSS at saturation", "ingress \($rss.ingressHwmKiB | mib) MiB, proxy \($rss.proxyHwmKiB | mib) MiB", verdict($rss; ($rss.ingressHwmKiB <= 51200) and ($rss.proxyHwmKiB <= 51200))]),
row(["flat RSS and stream length over the soak", "RSS flat: \($rss_flat), XLEN flat: \($xlen_flat)", (if $rss_flat == null then "not run" else verdict($rss_flat and $xlen_flat) end)])
