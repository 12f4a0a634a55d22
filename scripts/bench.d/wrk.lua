-- wrk script used by scripts/bench. BENCH_WRK_KIND picks the request:
--   post      POST /WeatherForecast/city, valid body: the broker pair end to end (a)
--   baseline  the same POST with `Request-Timeout: 0s`: the ingress parses and validates the
--             body exactly as for (a), then refuses the header with 400 before admission and
--             before any Redis command: the in-process baseline (b)
--   live      GET /health/live (tiny JSON, no Redis): the HTTP stack alone
--   get       GET of the URL as given (scripts/bench-forward: the upstream directly, or a
--             forwarded route; the weather sample GET /WeatherForecast)
--   upload    POST of BENCH_WRK_BODY_BYTES bytes (default 1 MiB) of binary data to the URL
-- BENCH_WRK_PACE_MS=N makes each connection wait a random 0..2N ms (mean N) before each
-- request: an open-ish load of about connections / (N ms + latency) requests per second, the
-- same for paths of different speed (scripts/bench-forward's equal-load CPU point).
-- At the end one line `WRK_JSON {...}` carries the figures (latencies in ms).

local kind = os.getenv("BENCH_WRK_KIND") or "post"

if kind == "post" or kind == "baseline" then
  wrk.method = "POST"
  wrk.body = '{"city":"New York","location":"Downtown"}'
  wrk.headers["Content-Type"] = "application/json"
  if kind == "baseline" then
    wrk.headers["Request-Timeout"] = "0s"
  end
end

if kind == "upload" then
  local n = tonumber(os.getenv("BENCH_WRK_BODY_BYTES") or "1048576")
  local chunk = {}
  for i = 0, 255 do chunk[#chunk + 1] = string.char(i) end
  chunk = table.concat(chunk)
  wrk.method = "POST"
  wrk.body = string.rep(chunk, math.floor(n / 256)) .. string.sub(chunk, 1, n % 256)
  wrk.headers["Content-Type"] = "application/octet-stream"
end

local pace = tonumber(os.getenv("BENCH_WRK_PACE_MS") or "0") or 0
if pace > 0 then
  -- Each thread its own sequence (the address of a fresh table differs per Lua state).
  function init(args)
    math.randomseed(os.time() + (tonumber(tostring({}):match("0x(%x+)") or "0", 16) % 1000003))
  end
  function delay()
    return math.random(0, 2 * pace)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  local ms = function(us) return us / 1000.0 end
  io.write(string.format(
    'WRK_JSON {"kind":"%s","requests":%d,"durationSecs":%.6f,"non2xx":%d,"socketErrors":%d,' ..
    '"p50":%.3f,"p90":%.3f,"p99":%.3f,"p999":%.3f,"max":%.3f,"mean":%.3f}\n',
    kind, summary.requests, summary.duration / 1e6, e.status,
    e.connect + e.read + e.write + e.timeout,
    ms(latency:percentile(50)), ms(latency:percentile(90)), ms(latency:percentile(99)),
    ms(latency:percentile(99.9)), ms(latency.max), ms(latency.mean)))
end
