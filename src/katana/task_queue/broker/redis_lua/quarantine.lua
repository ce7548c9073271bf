-- Move a task whose record cannot be decoded out of the queue. ARGV: prefix, now_ms, id,
-- reason. The record is renamed aside and a note goes to the quarantine list. Returns
-- {quarantined entry/reason pairs, 1}.
local now_ms = tonumber(ARGV[2])
check_queue(now_ms)
local id, reason = ARGV[3], ARGV[4]
local key = task_key(id)
redis.call('ZREM', processing_key, id)
redis.call('ZREM', delayed_key, id)
local kind = redis.call('TYPE', key).ok
if kind == 'hash' then
  local member = redis.call('HGET', key, 'member')
  if member then
    redis.call('ZREM', ready_key, member)
  end
end
if kind ~= 'none' then
  redis.call('RENAME', key, key .. ':quarantined')
end
quarantine(id, reason, now_ms)
return {quarantined_now, 1}
