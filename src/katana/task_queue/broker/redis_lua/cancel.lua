-- Cancel a task. ARGV: prefix, now_ms, id. A PENDING task (due or delayed) is CANCELLED at
-- once (returns 1); for a PROCESSING one the cancellation is requested and the processes
-- running tasks of this queue are told (returns 2); anything else is left alone (returns 0),
-- a PROCESSING task whose cancellation was requested already included: of any number of
-- concurrent cancels, only the one that took effect returns non-zero.
-- Returns {quarantined entry/reason pairs, that code}.
local now_ms = tonumber(ARGV[2])
check_queue(now_ms)
local id = ARGV[3]
local key = task_key(id)
if redis.call('TYPE', key).ok ~= 'hash' then
  return {quarantined_now, 0}
end
local status = redis.call('HGET', key, 'status')
if status == 'PENDING' then
  unplace(key, id)
  count_transition(key, status, 'CANCELLED')
  redis.call('HSET', key, 'status', 'CANCELLED',
    'finished_at', string.format('%.6f', now_ms / 1000))
  return {quarantined_now, 1}
end
if status == 'PROCESSING' then
  if redis.call('HEXISTS', key, 'cancel_requested') == 1 then
    return {quarantined_now, 0}
  end
  redis.call('HSET', key, 'cancel_requested', 1)
  redis.call('PUBLISH', cancel_channel, id)
  return {quarantined_now, 2}
end
return {quarantined_now, 0}
