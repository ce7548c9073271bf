-- Store tasks as PENDING and queue them. ARGV: prefix, now_ms, slot key ('' for none), slot
-- ttl in ms, then per task eleven values
-- (ENQUEUE_VALUES_PER_TASK in _redis_codec.py): id, name, payload (JSON), priority, created_at,
-- scheduled_at (epoch seconds), due_ms, max_retries, timeout_seconds ('' for none),
-- unique_key ('' for none), trace_context (JSON object of trace headers, '' for none).
-- Returns {quarantined entry/reason pairs, one value per task: '' when stored, else the id of
-- the task that kept it out (then nothing was stored): its own id when a task with that id is
-- stored already (whatever its name, payload or status: a producer retrying its own write
-- gets the first one back), or the PENDING or PROCESSING task that holds its unique key;
-- then 1 or 0}.
-- With a slot key (a periodic slot, see claim_slot), the tasks are stored only if this call
-- takes the key (SET NX PX); else nothing is and the last value is 0.
local now_ms = tonumber(ARGV[2])
if ARGV[3] ~= '' then
  check_slot(prefix .. ':slot:' .. ARGV[3], now_ms)
end
if ARGV[3] ~= '' and not redis.call('SET', prefix .. ':slot:' .. ARGV[3], '1', 'NX', 'PX',
    tonumber(ARGV[4])) then
  return {quarantined_now, {}, 0}
end
check_queue(now_ms)

-- The id of the unfinished task holding `unique`, if any.
local function holder(unique)
  local id = redis.call('HGET', unique_key, unique)
  if not id then
    return nil
  end
  local key = task_key(id)
  if redis.call('TYPE', key).ok == 'hash' then
    local status = redis.call('HGET', key, 'status')
    if status == 'PENDING' or status == 'PROCESSING' then
      return id
    end
  end
  return nil
end

local due_now = 0
local held_by = {}
for base = 5, #ARGV, 11 do
  local id = ARGV[base]
  local unique = ARGV[base + 9]
  local key = task_key(id)
  local kind = redis.call('TYPE', key).ok
  local existing = (kind == 'hash' and id) or (unique ~= '' and holder(unique))
  held_by[#held_by + 1] = existing or ''
  if not existing then
    if kind ~= 'none' then
      redis.call('DEL', key)
    end
    local priority = tonumber(ARGV[base + 3])
    local due_ms = tonumber(ARGV[base + 6])
    redis.call('HSET', key, 'name', ARGV[base + 1], 'payload', ARGV[base + 2],
      'priority', ARGV[base + 3], 'created_at', ARGV[base + 4], 'scheduled_at', ARGV[base + 5],
      'status', 'PENDING', 'attempts', 0, 'deliveries', 0, 'max_retries', ARGV[base + 7])
    if ARGV[base + 8] ~= '' then
      redis.call('HSET', key, 'timeout_seconds', ARGV[base + 8])
    end
    if ARGV[base + 10] ~= '' then
      redis.call('HSET', key, 'trace_context', ARGV[base + 10])
    end
    if unique ~= '' then
      redis.call('HSET', key, 'unique_key', unique)
      redis.call('HSET', unique_key, unique, id)
    end
    place(key, id, priority, due_ms, now_ms)
    -- Listing every task, newest first, reads this index (score: creation time, seconds).
    redis.call('ZADD', all_key, tonumber(ARGV[base + 4]) or now_ms / 1000, id)
    if due_ms <= now_ms then
      due_now = due_now + 1
    end
  end
end
-- Every enqueue wakes the consumers: a delayed task may now be the next one due.
redis.call('PUBLISH', wake_channel, due_now)
return {quarantined_now, held_by, 1}
