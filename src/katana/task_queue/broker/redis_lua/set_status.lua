-- The seed's update_task_status as one step. ARGV: prefix, now_ms, id, status, lease_ms.
-- Returns {quarantined entry/reason pairs, 1, or -1 for an unknown task}.
local now_ms = tonumber(ARGV[2])
check_queue(now_ms)
local id, status = ARGV[3], ARGV[4]
local key = task_key(id)
if redis.call('TYPE', key).ok ~= 'hash' then
  return {quarantined_now, -1}
end
local old = redis.call('HGET', key, 'status')
local now_s = string.format('%.6f', now_ms / 1000)
if status == 'PENDING' then
  if old ~= 'PENDING' then
    unplace(key, id)
    count_transition(key, old, status)
    redis.call('HSET', key, 'status', 'PENDING')
    -- A fresh start: no longer suspect, its lost workers forgotten.
    redis.call('HDEL', key, 'claim_token', 'finished_at', 'suspect', 'lost', 'cancel_requested')
    local scheduled = finite(redis.call('HGET', key, 'scheduled_at')) or (now_ms / 1000)
    place(key, id, finite(redis.call('HGET', key, 'priority')) or 0,
      math.floor(scheduled * 1000), now_ms)
    redis.call('PUBLISH', wake_channel, 1)
  end
  return {quarantined_now, 1}
end
unplace(key, id)
count_transition(key, old, status)
redis.call('HSET', key, 'status', status)
if status == 'PROCESSING' then
  -- Set by hand, not claimed: nobody holds a token, so the lease will expire unrenewed.
  redis.call('HSET', key, 'started_at', now_s)
  redis.call('ZADD', processing_key, now_ms + tonumber(ARGV[5]), id)
else
  redis.call('HDEL', key, 'claim_token')
  if TERMINAL[status] then
    redis.call('HSET', key, 'finished_at', now_s)
  end
end
return {quarantined_now, 1}
