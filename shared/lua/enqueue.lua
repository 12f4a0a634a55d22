-- enqueue.lua: how an ingress writes requests (docs/protocol.md, "Writing requests").
--
-- Makes sure the caller's reply stream exists, then appends each request to its request
-- stream unless that stream already holds max_backlog entries. Atomic: a request is never
-- written while its reply stream is missing, so a proxy never has to drop a reply because
-- Redis lost the stream (restart without persistence, FLUSHALL) and the ingress has not
-- noticed yet. Called with no request, it only checks and refreshes the reply stream.
--
-- KEYS[1]          the caller's reply stream
-- KEYS[2..n+1]     the request stream of each of the n requests
-- ARGV[1]          the caller's instance id, written in the marker entry of a new reply stream
-- ARGV[2]          the reply stream's expiry in milliseconds
-- ARGV[3]          '1' to refresh that expiry now, '0' otherwise
-- then per request: max_backlog (0 = no limit), k, and k field/value arguments
--
-- Returns { created, result 1, ..., result n }:
--   created   the id of the marker entry if the reply stream had to be created, else 0
--   result i  the new entry's id; 'full <length>' when the request stream already holds
--             max_backlog entries (nothing written); or 'error: <message>' when the XADD
--             failed (nothing written)
local reply_stream = KEYS[1]
local created = 0
if redis.call('EXISTS', reply_stream) == 0 then
  created = redis.call('XADD', reply_stream, '*', 'created_by', ARGV[1])
  redis.call('PEXPIRE', reply_stream, ARGV[2])
elseif ARGV[3] == '1' then
  redis.call('PEXPIRE', reply_stream, ARGV[2])
end
local results = { created }
local pos = 4
for i = 2, #KEYS do
  local max_backlog, k = tonumber(ARGV[pos]), tonumber(ARGV[pos + 1])
  local length = redis.call('XLEN', KEYS[i])
  if max_backlog > 0 and length >= max_backlog then
    results[i] = 'full ' .. length
  else
    local id = redis.pcall('XADD', KEYS[i], '*', unpack(ARGV, pos + 2, pos + 1 + k))
    if type(id) == 'table' and id.err then
      results[i] = 'error: ' .. id.err
    else
      results[i] = id
    end
  end
  pos = pos + 2 + k
end
return results
