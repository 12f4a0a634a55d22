-- Replays dead letters: moves entries of the dead-letter stream back onto the request stream.
-- Loaded by proxy/src/dead_letter.rs (include_str!) and called with EVALSHA.
--
-- Reading an entry, re-adding it and deleting it happen in one script, so they are atomic:
-- when several callers replay the same entry at once, exactly one of them finds it and the
-- request is re-injected exactly once; the others get nil.
--
-- KEYS[1]  the dead-letter stream         (weather-requests:dlq)
-- KEYS[2]  the request stream             (weather-requests)
-- ARGV[1]  first dead-letter id to replay, inclusive ("-" for the oldest)
-- ARGV[2]  last dead-letter id to replay, inclusive (an entry id, never "+": replay-all passes
--          the newest id it saw when the call started, so an entry that fails again and comes
--          back to the DLQ during the call has a larger id and is not replayed a second time)
-- ARGV[3]  most entries to replay in this call
-- ARGV[4]  name of the deadline field     (deadline_ms)
-- ARGV[5]  the new deadline, unix milliseconds
-- ARGV[6]  prefix of the fields dead-lettering added (dlq_); they are dropped on replay
--
-- For each entry from ARGV[1] to ARGV[2], oldest first, at most ARGV[3]:
--   XADD KEYS[2] * <its fields without the dlq_ ones, deadline set to ARGV[5]>
--   XDEL KEYS[1] <its id>
-- Returns nil when there was no entry in the range; otherwise a flat array
-- [dead-letter id 1, new request id 1, dead-letter id 2, new request id 2, ...].
-- An invalid id fails the whole call with "Invalid stream ID" before anything is written.
local entries = redis.call('XRANGE', KEYS[1], ARGV[1], ARGV[2], 'COUNT', ARGV[3])
if #entries == 0 then
  return false
end
local deadline_field, deadline, prefix = ARGV[4], ARGV[5], ARGV[6]
local replayed = {}
for _, entry in ipairs(entries) do
  local id, fields = entry[1], entry[2]
  local request, has_deadline = {}, false
  for i = 1, #fields, 2 do
    local name, value = fields[i], fields[i + 1]
    if string.sub(name, 1, #prefix) ~= prefix then
      if name == deadline_field then
        value = deadline
        has_deadline = true
      end
      request[#request + 1] = name
      request[#request + 1] = value
    end
  end
  if not has_deadline then
    request[#request + 1] = deadline_field
    request[#request + 1] = deadline
  end
  local new_id = redis.call('XADD', KEYS[2], '*', unpack(request))
  redis.call('XDEL', KEYS[1], id)
  replayed[#replayed + 1] = id
  replayed[#replayed + 1] = new_id
end
return replayed
