-- reply_and_ack.lua: how a proxy answers requests (docs/protocol.md, "Replying and
-- acknowledging").
--
-- For each reply: XADD it with NOMKSTREAM to its reply stream; then XACK and XDEL, in one
-- go, the request entries whose reply was written or whose reply stream is gone (nobody waits
-- for them any more), and add their number to the stream's served counter. Atomic: an entry is
-- never acknowledged without its reply, and there is no moment at which a proxy could die
-- after replying but before acknowledging.
--
-- The served counter counts requests the proxies processed (not those dropped because their
-- deadline had passed, nor dead letters): sampled over time while there is a backlog, it is
-- how fast the proxies really work, which the ingress needs to refuse what would wait past
-- its deadline.
--
-- KEYS[1]          the request stream
-- KEYS[2]          the request stream's served counter (<request stream>:served)
-- KEYS[3..n+2]     the reply stream of each of the n replies
-- ARGV[1]          the consumer group
-- then per reply: the request entry's id, k, and k field/value arguments of the reply
--
-- Returns one element per reply: the reply's id; nil when its reply stream is gone (the entry
-- is acknowledged anyway); or 'error: <message>' when the XADD failed (e.g. WRONGTYPE), in
-- which case that entry is not acknowledged and stays pending.
local group = ARGV[1]
local results, acked = {}, {}
local pos = 2
for i = 3, #KEYS do
  local entry_id, k = ARGV[pos], tonumber(ARGV[pos + 1])
  local id = redis.pcall('XADD', KEYS[i], 'NOMKSTREAM', '*', unpack(ARGV, pos + 2, pos + 1 + k))
  if type(id) == 'table' and id.err then
    results[i - 2] = 'error: ' .. id.err
  else
    results[i - 2] = id
    acked[#acked + 1] = entry_id
  end
  pos = pos + 2 + k
end
if #acked > 0 then
  local served = redis.call('XACK', KEYS[1], group, unpack(acked))
  redis.call('XDEL', KEYS[1], unpack(acked))
  if served > 0 then
    redis.call('INCRBY', KEYS[2], served)
  end
end
return results
