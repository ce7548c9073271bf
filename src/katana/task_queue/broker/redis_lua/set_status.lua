-- The seed's update_task_status as one step. ARGV: prefix, now_ms, id, status, lease_ms.
-- Returns {quarantined entry/reason pairs, code}: code 1, -1 for an unknown task, or, when a
-- finished task would be queued again while another unfinished task holds its unique key,
-- the id of that task (and nothing changes).
local now_ms = tonumber(ARGV[2])
check_queue(now_ms)
local id, status = ARGV[3], ARGV[4]
local key = task_key(id)
if redis.call('TYPE', key).ok ~= 'hash' then
  return {quarantined_now, -1}
end
local old = redis.call('HGET', key, 'status')
local now_s = string.format('%.6f', now_ms / 1000)
-- The unfinished task other than this one that holds `unique`, if any.
local function other_holder(unique)
  local held = redis.call('HGET', unique_key, unique)
  if not held or held == id then
    return nil
  end
  local held_key = task_key(held)
  if redis.call('TYPE', held_key).ok ~= 'hash' then
    return nil
  end
  local held_status = redis.call('HGET', held_key, 'status')
  if held_status == 'PENDING' or held_status == 'PROCESSING' then
    return held
  end
  return nil
end

if status == 'PENDING' then
  if TERMINAL[old] then
    -- A redrive: it retakes its unique key, unless another unfinished task holds it, and
    -- gets its full retry budget again; its errors keep counting attempts over its life.
    local unique = redis.call('HGET', key, 'unique_key')
    if unique then
      local held = other_holder(unique)
      if held then
        return {quarantined_now, held}
      end
      redis.call('HSET', unique_key, unique, id)
    end
    local row = redis.call('HMGET', key, 'attempts', 'attempts_before')
    redis.call('HSET', key, 'attempts', 0,
      'attempts_before', (tonumber(row[1]) or 0) + (tonumber(row[2]) or 0))
  end
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
