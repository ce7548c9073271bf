-- Renew the leases this process holds, then hand expired leases (of any process) back.
-- ARGV: prefix, now_ms, lease_ms, max_deliveries, then pairs of id, claim_token.
-- Returns {lost ids..., '|', requeued count, quarantined entry/reason pairs, dead ids...}.
local now_ms = tonumber(ARGV[2])
local lease_ms = tonumber(ARGV[3])
local max_deliveries = tonumber(ARGV[4])
local now_s = string.format('%.6f', now_ms / 1000)
ensure_type(processing_key, 'zset', now_ms)
local result = {}
for base = 5, #ARGV, 2 do
  local id, token = ARGV[base], ARGV[base + 1]
  local key = task_key(id)
  if redis.call('TYPE', key).ok == 'hash' and redis.call('HGET', key, 'status') == 'PROCESSING'
      and redis.call('HGET', key, 'claim_token') == token then
    redis.call('ZADD', processing_key, 'XX', now_ms + lease_ms, id)
  else
    result[#result + 1] = id
  end
end
result[#result + 1] = '|'

-- Expired leases: the worker holding them died, froze or lost Redis.
local expired = redis.call('ZRANGEBYSCORE', processing_key, '-inf', now_ms, 'LIMIT', 0, 1000)
local requeued = 0
local dead = {}
for _, id in ipairs(expired) do
  redis.call('ZREM', processing_key, id)
  local key = task_record(id, id, now_ms)
  if key and redis.call('HGET', key, 'status') == 'PROCESSING' then
    redis.call('HDEL', key, 'claim_token')
    -- Only deliveries that lost their worker count: retries of failed attempts do not.
    local lost = (tonumber(redis.call('HGET', key, 'lost') or '0') or max_deliveries) + 1
    redis.call('HSET', key, 'lost', lost)
    if lost >= max_deliveries then
      count_transition('PROCESSING', 'DEAD')
      redis.call('HSET', key, 'status', 'DEAD', 'finished_at', now_s, 'error',
        'WorkerLost: delivered ' .. lost .. ' times and each time the worker stopped ' ..
        'renewing its lease before the task finished')
      dead[#dead + 1] = id
    else
      -- Suspect from now on: it may be what killed the worker, so it is claimed alone.
      redis.call('HSET', key, 'status', 'PENDING', 'suspect', 1)
      local scheduled = tonumber(redis.call('HGET', key, 'scheduled_at')) or (now_ms / 1000)
      -- Back at its original due time, so it runs before tasks that arrived after it.
      place(key, id, tonumber(redis.call('HGET', key, 'priority')) or 0,
        math.min(math.floor(scheduled * 1000), now_ms), now_ms)
      requeued = requeued + 1
    end
  end
end
if requeued > 0 then
  redis.call('PUBLISH', wake_channel, requeued)
end
result[#result + 1] = requeued
result[#result + 1] = quarantined_now
for i = 1, #dead do
  result[#result + 1] = dead[i]
end
return result
