-- Renew the leases this process holds, then hand back expired leases (of any process) and
-- the claims of processes whose liveness mark expired (orphans, see sweep_orphans).
-- Finished tasks older than the result TTL are deleted too.
-- ARGV: prefix, now_ms, lease_ms, max_deliveries, ttl_ms ('' = keep), alive_ms (how long a
-- liveness mark lives), then pairs of id, claim_token.
-- Returns {lost ids, requeued count, quarantined entry/reason pairs, dead ids, ids of held
-- tasks whose cancellation was requested, how many of the requeued and dead were orphans}.
local now_ms = tonumber(ARGV[2])
check_queue(now_ms)
local lease_ms = tonumber(ARGV[3])
local max_deliveries = tonumber(ARGV[4])
local now_s = string.format('%.6f', now_ms / 1000)
local lost_ids = {}
local cancel_ids = {}
local alive_ms = tonumber(ARGV[6])
for base = 7, #ARGV, 2 do
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
      'renewing its lease (or its process its liveness mark) before the task finished')
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
    local owner = redis.call('HGET', key, 'owner')
    if owner then
      redis.pcall('SREM', owned_key(owner), id)  -- a stale id there would be harmless
    end
    redis.call('HDEL', key, 'claim_token', 'owner')
    recover(key, id)
  elseif key and not STATUSES[status] then
    quarantine_record(key, id, 'task record has an unknown status: ' .. tostring(status), now_ms)
  elseif key then
    -- Every transition out of PROCESSING removes the lease, so this one is stray.
    quarantine(id, 'stray processing entry for a task in status ' .. status, now_ms)
  end
end

-- Orphans: the claims of an owner whose liveness mark expired (its process was killed,
-- froze, or lost Redis for longer than the mark lives) go back now, not when their leases
-- expire; as with an expired lease the delivery counts as lost (suspect, DEAD after
-- max_deliveries), and clearing the claim token fences out the owner's late outcomes. Marks
-- expire by the Redis server's clock. When no sweep ran for longer than a mark lives, Redis
-- was down or restarted, or no consumer ran: live processes may not have refreshed their
-- marks since, so orphans are taken back only once one mark's lifetime has passed again.
local orphans = 0
local function sweep_orphans()
  local sweep_key = prefix .. ':sweep'
  ensure_type(sweep_key, 'hash', now_ms)
  ensure_type(owners_key, 'set', now_ms)
  local time = redis.call('TIME')
  local server_ms = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  local last = tonumber(redis.call('HGET', sweep_key, 'last_ms') or '')
  local grace = tonumber(redis.call('HGET', sweep_key, 'grace_ms') or '') or 0
  if not last or server_ms < last or server_ms - last > alive_ms then
    grace = server_ms + alive_ms
    redis.call('HSET', sweep_key, 'grace_ms', grace)
  end
  redis.call('HSET', sweep_key, 'last_ms', server_ms)
  if server_ms < grace then
    return
  end
  for _, owner in ipairs(redis.call('SMEMBERS', owners_key)) do
    if redis.call('EXISTS', alive_key(owner)) == 0 then
      local owned = owned_key(owner)
      ensure_type(owned, 'set', now_ms)
      -- At most 1000 per owner and call, so a call stays short; the next call goes on.
      for _, id in ipairs(redis.call('SPOP', owned, 1000)) do
        local key = task_key(id)
        -- The set may hold stale ids: only a claim still tagged with this owner is its own.
        if redis.call('TYPE', key).ok == 'hash'
            and redis.call('HGET', key, 'status') == 'PROCESSING'
            and redis.call('HGET', key, 'owner') == owner then
          redis.call('ZREM', processing_key, id)
          redis.call('HDEL', key, 'claim_token', 'owner')
          recover(key, id)
          orphans = orphans + 1
        end
      end
      if redis.call('SCARD', owned) == 0 then
        redis.call('SREM', owners_key, owner)
      end
    end
  end
end
if alive_ms then
  sweep_orphans()
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
return {lost_ids, requeued, quarantined_now, dead, cancel_ids, orphans}
