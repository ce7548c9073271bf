-- Renew the leases this process holds, then hand expired leases (of any process) back.
-- Finished tasks older than the result TTL are deleted too.
-- ARGV: prefix, now_ms, lease_ms, max_deliveries, ttl_ms ('' = keep), then pairs of id,
-- claim_token.
-- Returns {lost ids, requeued count, quarantined entry/reason pairs, dead ids, ids of held
-- tasks whose cancellation was requested}.
local now_ms = tonumber(ARGV[2])
check_queue(now_ms)
local lease_ms = tonumber(ARGV[3])
local max_deliveries = tonumber(ARGV[4])
local now_s = string.format('%.6f', now_ms / 1000)
local lost_ids = {}
local cancel_ids = {}
for base = 6, #ARGV, 2 do
  local id, token = ARGV[base], ARGV[base + 1]
  local key = task_key(id)
  if redis.call('TYPE', key).ok == 'hash' and redis.call('HGET', key, 'status') == 'PROCESSING'
      and redis.call('HGET', key, 'claim_token') == token then
    redis.call('ZADD', processing_key, 'XX', now_ms + lease_ms, id)
    if redis.call('HGET', key, 'cancel_requested') then
      cancel_ids[#cancel_ids + 1] = id  -- in case the notification was missed
    end
  else
    lost_ids[#lost_ids + 1] = id
  end
end

-- Expired leases: the worker holding them died, froze or lost Redis.
local expired = redis.call('ZRANGEBYSCORE', processing_key, '-inf', now_ms, 'LIMIT', 0, 1000)
local requeued = 0
local dead = {}
-- Give up on a task whose worker was lost once too often; else queue it again, as suspect.
local function recover(key, id)
  if redis.call('HGET', key, 'cancel_requested') then
    -- Its worker was lost while the task was being cancelled: it is cancelled now.
    count_transition(key, 'PROCESSING', 'CANCELLED')
    redis.call('HSET', key, 'status', 'CANCELLED', 'finished_at', now_s)
    redis.call('HDEL', key, 'cancel_requested')
    return
  end
  -- Only deliveries that lost their worker count: retries of failed attempts do not.
  local lost = (finite(redis.call('HGET', key, 'lost') or '0') or max_deliveries) + 1
  redis.call('HSET', key, 'lost', lost)
  if lost >= max_deliveries then
    count_transition(key, 'PROCESSING', 'DEAD')
    redis.call('HSET', key, 'status', 'DEAD', 'finished_at', now_s, 'error',
      'WorkerLost: delivered ' .. lost .. ' times and each time the worker stopped ' ..
      'renewing its lease before the task finished')
    dead[#dead + 1] = id
    return
  end
  -- Suspect from now on: it may be what killed the worker, so it is claimed alone.
  redis.call('HSET', key, 'status', 'PENDING', 'suspect', 1)
  local scheduled = finite(redis.call('HGET', key, 'scheduled_at')) or (now_ms / 1000)
  -- Back at its original due time, so it runs before tasks that arrived after it.
  place(key, id, finite(redis.call('HGET', key, 'priority')) or 0,
    math.min(math.floor(scheduled * 1000), now_ms), now_ms)
  requeued = requeued + 1
end

for _, id in ipairs(expired) do
  redis.call('ZREM', processing_key, id)
  local key = task_record(id, id, now_ms)
  local status = key and redis.call('HGET', key, 'status')
  if status == 'PROCESSING' then
    redis.call('HDEL', key, 'claim_token')
    recover(key, id)
  elseif key and not STATUSES[status] then
    quarantine_record(key, id, 'task record has an unknown status: ' .. tostring(status), now_ms)
  elseif key then
    -- Every transition out of PROCESSING removes the lease, so this one is stray.
    quarantine(id, 'stray processing entry for a task in status ' .. status, now_ms)
  end
end
if requeued > 0 then
  redis.call('PUBLISH', wake_channel, requeued)
end

-- Retention: at most 1000 expired tasks per status and call, so a call stays short.
if ARGV[5] ~= '' then
  local horizon = now_ms - tonumber(ARGV[5])
  for status in pairs(TERMINAL) do
    local set = prefix .. ':finished:' .. status
    local expired_ids = redis.call('ZRANGEBYSCORE', set, '-inf', horizon, 'LIMIT', 0, 1000)
    for _, id in ipairs(expired_ids) do
      local key = task_key(id)
      if redis.call('TYPE', key).ok == 'hash' and redis.call('HGET', key, 'status') == status then
        redis.call('DEL', key)
        redis.call('HINCRBY', counts_key, status, -1)
        redis.call('ZREM', all_key, id)
      end
      redis.call('ZREM', set, id)
    end
  end
end
return {lost_ids, requeued, quarantined_now, dead, cancel_ids}
