-- Record a consumer's pending outcomes, then claim up to `count` due tasks for it, in one
-- round trip. ARGV: prefix, now_ms, count, lease_ms, token_base, then five values per outcome
-- (see apply_outcomes). Returns {next_due_ms or '', outcome codes, quarantined entry/reason
-- pairs, record, record, ...}: each record is the task's HGETALL followed by 'id', id.
local now_ms = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local token_base = ARGV[5]
local now_s = string.format('%.6f', now_ms / 1000)
ensure_type(ready_key, 'zset', now_ms)
ensure_type(delayed_key, 'zset', now_ms)
ensure_type(processing_key, 'zset', now_ms)
local codes = apply_outcomes(6, #ARGV, now_ms)

-- Delayed tasks that came due join the ready set, ordered by their due time.
local due = redis.call('ZRANGEBYSCORE', delayed_key, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  local id = due[i]
  redis.call('ZREM', delayed_key, id)
  local key = task_record(id, id, now_ms)
  if key and redis.call('HGET', key, 'status') == 'PENDING' then
    local priority = tonumber(redis.call('HGET', key, 'priority'))
    if priority then
      place(key, id, priority, tonumber(due[i + 1]), now_ms)
    else
      quarantine(id, 'task record has no numeric priority', now_ms)
    end
  end
end

local claimed = {}
local n = 0
while n < count do
  local popped = redis.call('ZPOPMIN', ready_key, count - n)
  if #popped == 0 then
    break
  end
  for i = 1, #popped, 2 do
    local member = popped[i]
    local id = string.sub(member, MEMBER_HEAD + 1)
    if #member <= MEMBER_HEAD or not string.match(string.sub(member, 1, MEMBER_HEAD),
        '^%d+:%d+:$') then
      quarantine(member, 'malformed ready entry', now_ms)
    else
      local key = task_record(id, member, now_ms)
      local status = key and redis.call('HGET', key, 'status')
      if key and not STATUSES[status] then
        redis.call('RENAME', key, key .. ':quarantined')
        quarantine(id, 'task record has an unknown status: ' .. tostring(status), now_ms)
      elseif key and (status ~= 'PENDING' or redis.call('HGET', key, 'member') ~= member) then
        -- Every transition out of PENDING removes the ready entry, so this one is stray.
        quarantine(member, 'stray ready entry for a task in status ' .. status, now_ms)
      elseif key then
        n = n + 1
        local token = token_base .. ':' .. n
        redis.call('HINCRBY', key, 'attempts', 1)
        redis.call('HINCRBY', key, 'deliveries', 1)
        redis.call('HSET', key, 'status', 'PROCESSING', 'started_at', now_s,
          'claim_token', token)
        redis.call('HDEL', key, 'finished_at', 'member')
        redis.call('ZADD', processing_key, now_ms + lease_ms, id)
        local record = redis.call('HGETALL', key)
        record[#record + 1] = 'id'
        record[#record + 1] = id
        claimed[#claimed + 1] = record
      end
    end
  end
end

local next_due = redis.call('ZRANGE', delayed_key, 0, 0, 'WITHSCORES')
local result = {next_due[2] or '', codes, quarantined_now}
for i = 1, #claimed do
  result[i + 3] = claimed[i]
end
return result
