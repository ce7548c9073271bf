-- Record a consumer's pending outcomes, then claim up to `count` due tasks for it, in one
-- round trip. ARGV: prefix, now_ms, count, lease_ms, token_base, exclusive, owner, alive_ms,
-- then six values per outcome (see apply_outcomes). The claims are tagged with `owner`, whose
-- liveness mark this refreshes for `alive_ms` (heartbeat.lua says what the mark is for).
-- Returns {next_due_ms or '', outcome codes, quarantined entry/reason pairs, mode, record,
-- record, ...}: each record is the task's HGETALL followed by 'id', id, 'member', its ready
-- entry.
--
-- A suspect task (its worker died while it ran) may be what kills workers, so it never
-- shares a process with other tasks: it is claimed only by a consumer that holds nothing
-- (exclusive = '1'), alone (mode 'exclusive'). A busy consumer that meets one stops claiming
-- (mode 'suspect_waiting') so that it drains and can take it.
local now_ms = tonumber(ARGV[2])
local count = tonumber(ARGV[3])
local lease_ms = tonumber(ARGV[4])
local token_base = ARGV[5]
local exclusive = ARGV[6] == '1'
local owner = ARGV[7]
local alive_ms = tonumber(ARGV[8])
local mode = ''
local now_s = string.format('%.6f', now_ms / 1000)
check_values(now_ms)
local codes = apply_outcomes(9, #ARGV, now_ms)

-- Delayed tasks that came due join the ready set, ordered by their due time.
local due = queue_call('ZRANGEBYSCORE', delayed_key, '-inf', now_ms, 'WITHSCORES', 'LIMIT', 0, 1000)
for i = 1, #due, 2 do
  local id = due[i]
  queue_call('ZREM', delayed_key, id)
  local key = task_record(id, id, now_ms)
  local status = key and redis.call('HGET', key, 'status')
  if status == 'PENDING' then
    local priority = finite(redis.call('HGET', key, 'priority'))
    if priority then
      place(key, id, priority, tonumber(due[i + 1]), now_ms)
    else  -- not left PENDING with no entry
      quarantine_record(key, id, 'task record has no numeric priority', now_ms)
    end
  elseif key and not STATUSES[status] then
    quarantine_record(key, id, 'task record has an unknown status: ' .. tostring(status), now_ms)
  elseif key then
    -- Every transition out of PENDING removes the delayed entry, so this one is stray.
    quarantine(id, 'stray delayed entry for a task in status ' .. status, now_ms)
  end
end

local claimed = {}
local n = 0
-- A paused queue still takes outcomes but hands out nothing; resuming publishes a wake-up.
local paused = redis.call('EXISTS', prefix .. ':paused') == 1
-- Lease deadline, id pairs of the claimed tasks: one ZADD to the processing set at the end.
local leases = {}

-- Claim one popped ready entry, quarantine it, or give it back; updates n and mode.
local function take(member, score)
  local id = string.sub(member, MEMBER_HEAD + 1)
  if #member <= MEMBER_HEAD or not string.match(string.sub(member, 1, MEMBER_HEAD),
      '^%d+:%d+:$') then
    quarantine(member, 'malformed ready entry', now_ms)
    return
  end
  local key = task_key(id)
  -- One read for the fields every claim checks. A missing record, or garbage of another Redis
  -- type under its key, fails it before anything is written; task_record quarantines those.
  local row = redis.pcall('HMGET', key, 'status', 'member', 'suspect', 'attempts', 'deliveries')
  if row.err or not row[1] then
    if not task_record(id, member, now_ms) then
      return
    end
    row = {false}  -- a hash without a status: quarantined just below
  end
  local status = row[1]
  if not STATUSES[status] then
    quarantine_record(key, id, 'task record has an unknown status: ' .. tostring(status), now_ms)
    return
  end
  if status ~= 'PENDING' or row[2] ~= member then
    -- Every transition out of PENDING removes the ready entry, so this one is stray.
    quarantine(member, 'stray ready entry for a task in status ' .. status, now_ms)
    return
  end
  if row[3] then
    if not (exclusive and n == 0) then
      queue_call('ZADD', ready_key, score, member)
      mode = 'suspect_waiting'
      return
    end
    mode = 'exclusive'
  end
  local attempts = tonumber(row[4] or '0')
  local deliveries = tonumber(row[5] or '0')
  if not attempts or not deliveries then
    quarantine_record(key, id, 'task record has a non-numeric attempts or deliveries field',
      now_ms)
    return
  end
  n = n + 1
  redis.call('HSET', key, 'status', 'PROCESSING', 'started_at', now_s,
    'claim_token', token_base .. ':' .. n, 'attempts', attempts + 1,
    'deliveries', deliveries + 1, 'owner', owner)
  -- Each attempt reports its own progress: none yet.
  redis.call('HDEL', key, 'finished_at', 'member', 'progress', 'progress_message')
  leases[#leases + 1] = now_ms + lease_ms
  leases[#leases + 1] = id
  local record = redis.call('HGETALL', key)
  record[#record + 1] = 'id'
  record[#record + 1] = id
  record[#record + 1] = 'member'  -- its place in the queue, should the claim be undone
  record[#record + 1] = member
  claimed[#claimed + 1] = record
end

while not paused and n < count and mode == '' do
  local popped = queue_call('ZPOPMIN', ready_key, count - n)
  if #popped == 0 then
    break
  end
  for i = 1, #popped, 2 do
    if mode == '' then
      take(popped[i], popped[i + 1])
    else
      queue_call('ZADD', ready_key, popped[i + 1], popped[i])  -- stopped: give the rest back
    end
  end
end

for first = 1, #leases, 1000 do  -- in slices: unpack is bounded by Lua's stack
  queue_call('ZADD', processing_key, unpack(leases, first, math.min(first + 999, #leases)))
end
if n > 0 then
  -- The owner is alive (it asks): its mark lives from now on, even before its liveness thread
  -- first sets it, so no heartbeat elsewhere takes these claims back as orphans.
  redis.call('SET', alive_key(owner), '1', 'PX', alive_ms)
  queue_call('SADD', owners_key, owner)
  local owned, ids = owned_key(owner), {}
  ensure_type(owned, 'set', now_ms)
  for i = 2, #leases, 2 do
    ids[#ids + 1] = leases[i]
  end
  for first = 1, #ids, 1000 do
    redis.call('SADD', owned, unpack(ids, first, math.min(first + 999, #ids)))
  end
end

local next_due = paused and {} or queue_call('ZRANGE', delayed_key, 0, 0, 'WITHSCORES')
local result = {next_due[2] or '', codes, quarantined_now, mode}
for i = 1, #claimed do
  result[i + 4] = claimed[i]
end
return result
