-- Finished tasks of one status, newest first. ARGV: prefix, now_ms, status, offset, limit.
-- Returns {total, record, record, ...}: each record is HGETALL followed by 'id', id.
ensure_queue_types(tonumber(ARGV[2]))
local set = prefix .. ':finished:' .. ARGV[3]
local offset, limit = tonumber(ARGV[4]), tonumber(ARGV[5])
local ids = redis.call('ZREVRANGE', set, offset, offset + limit - 1)
local result = {redis.call('ZCARD', set)}
for _, id in ipairs(ids) do
  local key = task_key(id)
  if redis.call('TYPE', key).ok == 'hash' then
    local record = redis.call('HGETALL', key)
    record[#record + 1] = 'id'
    record[#record + 1] = id
    result[#result + 1] = record
  else
    redis.call('ZREM', set, id)  -- its record is gone: drop the stale index entry
  end
end
return result
