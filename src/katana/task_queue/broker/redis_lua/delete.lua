-- Delete a finished task for good. ARGV: prefix, now_ms, id. Returns 1, 0 when the task is
-- not in a final status (it is left alone), -1 for an unknown task; first the quarantined
-- entry/reason pairs.
check_queue(tonumber(ARGV[2]))
local id = ARGV[3]
local key = task_key(id)
if redis.call('TYPE', key).ok ~= 'hash' then
  return {quarantined_now, -1}
end
local status = redis.call('HGET', key, 'status')
if not TERMINAL[status] then
  return {quarantined_now, 0}
end
redis.call('HINCRBY', counts_key, status, -1)
redis.call('ZREM', prefix .. ':finished:' .. status, id)
redis.call('ZREM', all_key, id)
redis.call('DEL', key)
return {quarantined_now, 1}
