-- When the longest-waiting due PENDING task became due (ms), or '' when none is due.
-- ARGV: prefix, now_ms.
-- The ready set is ordered by priority first, so the oldest due entry is the first entry of
-- one of its priorities: visit each distinct priority's first entry (one ZRANGEBYSCORE
-- each), then delayed tasks that came due but were not moved to the ready set yet.
local now_ms = tonumber(ARGV[2])
local oldest = nil
local function consider(due_ms)
  if due_ms and (oldest == nil or due_ms < oldest) then
    oldest = due_ms
  end
end
if redis.call('TYPE', ready_key).ok == 'zset' then
  local low = '-inf'
  for _ = 1, 10000 do
    local head = redis.call('ZRANGEBYSCORE', ready_key, low, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
    if #head == 0 then
      break
    end
    consider(tonumber(string.sub(head[1], 1, 15)))
    low = '(' .. head[2]
  end
end
if redis.call('TYPE', delayed_key).ok == 'zset' then
  local first = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, 1)
  consider(tonumber(first[2]))
end
return oldest and tostring(oldest) or ''
