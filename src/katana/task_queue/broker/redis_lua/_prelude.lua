-- Shared by every Katana script; RedisBroker prepends this file to each script before
-- register_script. ARGV[1] is the queue's key prefix ("katana:{queue}"): every key a script
-- touches starts with it, so they all hash to one Redis Cluster slot. KEYS[1] is the ready key
-- (the same prefix) so a cluster client routes the call to that slot.
local prefix = ARGV[1]
local ready_key = prefix .. ':ready'
local delayed_key = prefix .. ':delayed'
local processing_key = prefix .. ':processing'
local all_key = prefix .. ':all'
local counts_key = prefix .. ':counts'
local unique_key = prefix .. ':unique'
local quarantine_key = prefix .. ':quarantine'
-- The arrival counter that orders ready entries of equal due time (see ready_member).
local seq_key = prefix .. ':seq'
local wake_channel = prefix .. ':wake'
local cancel_channel = prefix .. ':cancel'
-- Ids of tasks that reached a final status (space-separated): wakes wait_finished callers.
local finished_channel = prefix .. ':finished'
local QUARANTINE_KEEP = 10000
-- Claim owners: every claim is tagged with the consumer process (broker) that made it, in the
-- task's 'owner' field and in the set '<prefix>:owned:<owner>' (which may keep stale ids: a
-- reader checks the record). The owner's liveness mark '<prefix>:alive:<owner>' lives while
-- the process does (_redis_liveness.py); heartbeat.lua takes back the claims of owners whose
-- mark expired. '<prefix>:owners' is the set of owners that may hold claims.
local owners_key = prefix .. ':owners'
local function owned_key(owner)
  return prefix .. ':owned:' .. owner
end
local function alive_key(owner)
  return prefix .. ':alive:' .. owner
end

local function task_key(id)
  return prefix .. ':task:' .. id
end

-- A ready member sorts by due time, then by arrival among tasks of equal score (priority):
-- members of equal score are ordered byte by byte, so both numbers are zero-padded.
local function ready_member(due_ms, seq, id)
  return string.format('%015d:%016d:%s', due_ms, seq, id)
end
local MEMBER_HEAD = 33 -- length of '<due>:<seq>:'
-- The highest arrival number the counter may hold: 15 digits keep INCR far below 16 digits
-- and below 2^53, where Lua's numbers stop being exact.
local SEQ_MAX_DIGITS = 15

-- What this call quarantined, as entry, reason pairs: scripts return it so the client logs it.
local quarantined_now = {}

-- redis.call on one of the queue's own keys (its second argument); defined below.
local queue_call

local function quarantine(entry, reason, now_ms)
  queue_call('LPUSH', quarantine_key,
    cjson.encode({entry = entry, reason = reason, at_ms = now_ms}))
  queue_call('LTRIM', quarantine_key, 0, QUARANTINE_KEEP - 1)
  quarantined_now[#quarantined_now + 1] = entry
  quarantined_now[#quarantined_now + 1] = reason
end

local STATUSES = {PENDING = true, PROCESSING = true, COMPLETED = true, FAILED = true,
  CANCELLED = true, DEAD = true}

local TERMINAL = {COMPLETED = true, FAILED = true, CANCELLED = true, DEAD = true}
-- In a fixed order: scripts must not depend on the order of a Lua table's keys.
local TERMINAL_LIST = {'COMPLETED', 'FAILED', 'CANCELLED', 'DEAD'}

-- A value shown in a quarantine note: quoted, and cut short.
local function shown(value)
  return "'" .. string.sub(value, 1, 100) .. "'"
end

-- The size of a terminal status's finished set (0 while garbage of another type holds it).
local function finished_size(status)
  local set = prefix .. ':finished:' .. status
  if redis.call('TYPE', set).ok ~= 'zset' then
    return 0
  end
  return redis.call('ZCARD', set)
end

-- Garbage written over one of the queue's own keys must not wedge every worker: move the key
-- aside (recorded in the quarantine list) so the queue starts over with an empty structure.
-- Returns true when it moved the key. The counters start over from the finished sets, which
-- hold the same tasks.
local function ensure_type(key, wanted, now_ms)
  local kind = redis.call('TYPE', key).ok
  if kind == wanted or kind == 'none' then
    return false
  end
  local aside = key .. ':quarantined:' .. now_ms
  redis.call('RENAME', key, aside)
  quarantine(key, 'key had Redis type ' .. kind .. ', expected ' .. wanted ..
    '; moved to ' .. aside, now_ms)
  if key == counts_key then
    for _, status in ipairs(TERMINAL_LIST) do
      redis.call('HSET', counts_key, status, finished_size(status))
    end
  end
  return true
end

local QUEUE_KEY_TYPES = {[ready_key] = 'zset', [delayed_key] = 'zset', [processing_key] = 'zset',
  [counts_key] = 'hash', [unique_key] = 'hash', [quarantine_key] = 'list', [all_key] = 'zset',
  [owners_key] = 'set',
  [prefix .. ':finished:COMPLETED'] = 'zset', [prefix .. ':finished:FAILED'] = 'zset',
  [prefix .. ':finished:CANCELLED'] = 'zset', [prefix .. ':finished:DEAD'] = 'zset'}

-- A command on one of the queue's own keys that repairs the key if garbage gave it the wrong
-- Redis type: Redis refuses such a command before it writes anything, so the key is moved
-- aside (ensure_type) and the command run again, and the script goes on as if the key had
-- been checked up front. claim.lua and finish.lua rely on this instead of a TYPE per key per
-- call, so the hot path pays nothing for keys that are fine.
queue_call = function(command, key, ...)
  local reply = redis.pcall(command, key, ...)
  if type(reply) == 'table' and reply.err then
    local wanted = QUEUE_KEY_TYPES[key]
    if wanted and string.find(reply.err, 'WRONGTYPE', 1, true) then
      ensure_type(key, wanted, tonumber(ARGV[2]))
      return redis.call(command, key, ...)
    end
    error(reply)
  end
  return reply
end

-- The other scripts write the quarantine list and may write the counters and unique keys
-- with plain redis.call: they repair those keys first, so that garbage there cannot abort
-- them halfway through their writes.
local function ensure_queue_types(now_ms)
  ensure_type(quarantine_key, 'list', now_ms)
  ensure_type(counts_key, 'hash', now_ms)
  ensure_type(unique_key, 'hash', now_ms)
end

-- Whether a value read from Redis is a whole number INCR and HINCRBY take: Redis refuses
-- leading zeros and '-0' too. At most 18 digits, so that adding to it cannot overflow.
local function whole(value)
  return value == '0' or (#value <= 19 and string.match(value, '^%-?[1-9]%d*$') ~= nil)
end

-- A number read from a task record, or nil when it is not one: tonumber() also takes 'nan'
-- and 'inf', which Redis refuses as a score.
local function finite(value)
  local number = tonumber(value)
  if number and number == number and number > -math.huge and number < math.huge then
    return number
  end
  return nil
end

-- The highest arrival number in the ready set (0 for none): read only to repair the counter.
local function highest_ready_seq()
  local highest = 0
  for start = 0, redis.call('ZCARD', ready_key) - 1, 1000 do
    for _, member in ipairs(redis.call('ZRANGE', ready_key, start, start + 999)) do
      local digits = string.match(member, '^%d+:(%d+):')
      local seq = digits and #digits <= SEQ_MAX_DIGITS and tonumber(digits)
      if seq and seq > highest then
        highest = seq
      end
    end
  end
  return highest
end

-- The arrival counter must hold a small whole number: INCR fails on anything else, and a
-- failed INCR in place() would end a script after it wrote part of its changes (a task taken
-- out of the delayed set and never put in the ready set). A bad counter is replaced by one
-- past the highest number in the ready set, so tasks queued from now on still come after the
-- tasks of equal due time that wait there.
local function check_seq(now_ms)
  local value = redis.pcall('GET', seq_key)
  local held
  if type(value) == 'table' then  -- WRONGTYPE: garbage of another Redis type
    local kind = redis.call('TYPE', seq_key).ok
    local aside = seq_key .. ':quarantined:' .. now_ms
    redis.call('RENAME', seq_key, aside)
    held = 'had Redis type ' .. kind .. ' (moved to ' .. aside .. ')'
  elseif value and not (whole(value) and #value <= SEQ_MAX_DIGITS
      and string.sub(value, 1, 1) ~= '-') then
    held = 'held ' .. shown(value)
  else
    return
  end
  ensure_type(ready_key, 'zset', now_ms)
  local restart = highest_ready_seq()
  redis.call('SET', seq_key, restart)
  quarantine(seq_key, 'arrival counter ' .. held .. ', not a whole number of at most ' ..
    SEQ_MAX_DIGITS .. ' digits; reset to ' .. restart, now_ms)
end

-- The terminal-status counters must hold whole numbers: HINCRBY fails on anything else. A bad
-- one is reset to the size of its finished set, which holds the same tasks.
local function check_counts(now_ms)
  local values = queue_call('HMGET', counts_key, unpack(TERMINAL_LIST))
  for i, status in ipairs(TERMINAL_LIST) do
    local value = values[i]
    if value and not whole(value) then
      local size = finished_size(status)
      redis.call('HSET', counts_key, status, size)
      quarantine(counts_key, 'counter ' .. status .. ' held ' .. shown(value) ..
        ', not a whole number; reset to ' .. size .. ', the size of its finished set', now_ms)
    end
  end
end

-- The values scripts compute with: claim.lua and finish.lua call this first (the Redis types
-- of their keys are checked by queue_call as they go).
local function check_values(now_ms)
  check_seq(now_ms)
  check_counts(now_ms)
end

-- The validation phase of every other script that writes: each of the queue's keys gets the
-- Redis type it should have and the counters valid values before the script's first write,
-- so that garbage found later cannot end it halfway through its changes.
local QUEUE_KEYS = {quarantine_key, counts_key, unique_key, ready_key, delayed_key,
  processing_key, all_key}
local function check_queue(now_ms)
  for _, key in ipairs(QUEUE_KEYS) do
    ensure_type(key, QUEUE_KEY_TYPES[key], now_ms)
  end
  for _, status in ipairs(TERMINAL_LIST) do
    ensure_type(prefix .. ':finished:' .. status, 'zset', now_ms)
  end
  check_values(now_ms)
end

-- A periodic slot key holds '1' until it expires (enqueue.lua and claim_slot set it so):
-- anything else there is garbage that would skip that firing of the periodic task for good.
-- It is moved aside, so that the slot can be taken.
local function check_slot(key, now_ms)
  local kind = redis.call('TYPE', key).ok
  local held
  if kind == 'none' then
    return
  elseif kind ~= 'string' then
    held = 'had Redis type ' .. kind
  else
    local value = redis.call('GET', key)
    if value == '1' and redis.call('PTTL', key) > 0 then
      return
    end
    held = 'held ' .. shown(value) .. (value == '1' and ' with no expiry' or '')
  end
  local aside = key .. ':quarantined:' .. now_ms
  redis.call('RENAME', key, aside)
  quarantine(key, 'periodic slot key ' .. held .. '; moved to ' .. aside, now_ms)
end

-- Move a task record that fails a check aside, with a note; the caller has taken it out of
-- the queue's structures.
local function quarantine_record(key, id, reason, now_ms)
  redis.call('RENAME', key, key .. ':quarantined')
  quarantine(id, reason, now_ms)
end

-- The task's record, or nil (and the entry quarantined) when it is missing or not a hash.
local function task_record(id, entry, now_ms)
  local key = task_key(id)
  local kind = redis.call('TYPE', key).ok
  if kind == 'hash' then
    return key
  end
  if kind == 'none' then
    quarantine(entry, 'queue entry for task ' .. id .. ' has no task record', now_ms)
  else
    local aside = key .. ':quarantined'
    redis.call('RENAME', key, aside)
    quarantine(entry, 'task record had Redis type ' .. kind .. '; moved to ' .. aside, now_ms)
  end
  return nil
end

-- Put a PENDING task where dequeue finds it: the ready set when due, else the delayed set.
local function place(key, id, priority, due_ms, now_ms)
  if due_ms <= now_ms then
    local seq = redis.call('INCR', seq_key)
    -- A due time before 1970 (garbage in a delayed score) would not fit the entry's digits.
    local member = ready_member(math.max(due_ms, 0), seq, id)
    redis.call('HSET', key, 'member', member)
    queue_call('ZADD', ready_key, priority, member)
  else
    redis.call('HDEL', key, 'member')
    queue_call('ZADD', delayed_key, due_ms, id)
  end
end

-- Take a task out of whichever queue structure holds it. `member` is its ready entry (false
-- for none) when the caller has read it already.
local function unplace(key, id, member)
  if member == nil then
    member = redis.call('HGET', key, 'member')
  end
  if member then
    queue_call('ZREM', ready_key, member)
    redis.call('HDEL', key, 'member')
  end
  queue_call('ZREM', delayed_key, id)
  queue_call('ZREM', processing_key, id)
end

-- The number of the task's current attempt over its whole life: a redrive starts 'attempts'
-- (the retry budget) again at 0 and adds what it had to 'attempts_before'.
local function attempt_number(key)
  local row = redis.call('HMGET', key, 'attempts', 'attempts_before')
  return (tonumber(row[1]) or 0) + (tonumber(row[2]) or 0)
end

-- Keep the per-status counters of terminal states in step with a status change of the task
-- stored at `key`; a task that finishes gives up its unique key (`unique`: the record's
-- unique_key, false for none, when the caller has read it already).
local function count_transition(key, old_status, new_status, unique)
  local id = string.sub(key, #prefix + 7)
  if old_status and TERMINAL[old_status] then
    queue_call('HINCRBY', counts_key, old_status, -1)
    queue_call('ZREM', prefix .. ':finished:' .. old_status, id)
  end
  if TERMINAL[new_status] then
    queue_call('HINCRBY', counts_key, new_status, 1)
    -- Listing finished tasks by status, newest first, reads these sets.
    queue_call('ZADD', prefix .. ':finished:' .. new_status, tonumber(ARGV[2]), id)
    redis.call('PUBLISH', finished_channel, id)
    if unique == nil then
      unique = redis.call('HGET', key, 'unique_key')
    end
    if unique and queue_call('HGET', unique_key, unique) == id then
      queue_call('HDEL', unique_key, unique)
    end
  end
end

-- Record the outcomes of claimed tasks: ARGV[first .. last] holds six values per outcome:
-- op, id, claim_token ('' = unchecked), a, b, c, where op is
--   'complete': a = result as JSON ('' for none)
--   'cancel':   the running task stopped because its cancellation was requested
--   'fail':     a = error, b = traceback, c = the attempt's error entry as JSON
--   'requeue':  a = delay in ms before the task is due again; for a retry b = error and
--               c = the attempt's error entry as JSON ('' for a plain hand-back)
--   'release':  a task claimed ahead that never started: the claim is undone (attempts and
--               deliveries as before it) and it takes its old place in the ready set again,
--               a = its ready entry from the claim
-- Error entries are kept as fields 'err:<attempt>', counting the attempts made before the
-- task was last redriven ('attempts_before', see set_status.lua) so that none is overwritten.
-- Returns one code per outcome: 1 applied, 0 the claim was lost, -1 unknown task.
local function apply_outcomes(first, last, now_ms)
  local now_s = string.format('%.6f', now_ms / 1000)
  local codes = {}
  local requeued = 0
  -- A checked outcome ends a PROCESSING task: its ZREM from the processing set and, when it
  -- finishes, its counter and finished-set entry are written once per call, not per task.
  local released, finished, finished_n = {}, {}, 0
  -- Owner -> ids of its claims that ended here: they leave its owned set once per call.
  local disowned = {}
  local function write_batched()
    for owner, ids in pairs(disowned) do
      for first_id = 1, #ids, 1000 do
        -- pcall: garbage under an owned set must not abort the outcomes; a stale id left
        -- there is harmless (the orphan sweep checks the record before it touches a task).
        redis.pcall('SREM', owned_key(owner),
          unpack(ids, first_id, math.min(first_id + 999, #ids)))
      end
    end
    disowned = {}
    for first_id = 1, #released, 1000 do  -- in slices: unpack is bounded by Lua's stack
      queue_call('ZREM', processing_key,
        unpack(released, first_id, math.min(first_id + 999, #released)))
    end
    released = {}
    local ids = {}
    for new_status, entries in pairs(finished) do
      for i = 2, #entries, 2 do
        ids[#ids + 1] = entries[i]
      end
      queue_call('HINCRBY', counts_key, new_status, #entries / 2)
      for first_entry = 1, #entries, 1000 do
        queue_call('ZADD', prefix .. ':finished:' .. new_status,
          unpack(entries, first_entry, math.min(first_entry + 999, #entries)))
      end
    end
    if #ids > 0 then
      redis.call('PUBLISH', finished_channel, table.concat(ids, ' '))
    end
    finished, finished_n = {}, 0
  end
  -- count_transition, batched for a checked outcome (old status PROCESSING, never terminal).
  local function transition(checked, key, id, old_status, new_status, unique)
    if not checked then
      count_transition(key, old_status, new_status, unique)
      return
    end
    if not TERMINAL[new_status] then
      return
    end
    local entries = finished[new_status]
    if not entries then
      entries = {}
      finished[new_status] = entries
    end
    entries[#entries + 1] = tonumber(ARGV[2])
    entries[#entries + 1] = id
    finished_n = finished_n + 1
    if unique and queue_call('HGET', unique_key, unique) == id then
      queue_call('HDEL', unique_key, unique)
    end
  end
  for base = first, last, 6 do
    local op, id, token = ARGV[base], ARGV[base + 1], ARGV[base + 2]
    local key = task_key(id)
    local code = 1
    if token == '' and (#released > 0 or finished_n > 0) then
      write_batched()  -- an unchecked outcome may touch what the batch holds: settle it first
    end
    -- One read for what every outcome needs (this runs once per finished task). A key of
    -- another Redis type (garbage) fails this read, before anything is written: unknown.
    local row = redis.pcall('HMGET', key, 'status', 'claim_token', 'member', 'cancel_requested',
      'unique_key', 'owner', 'attempts', 'deliveries')
    local status = row[1]
    if row.err or (not status and redis.call('EXISTS', key) == 0) then
      code = -1
    else
      if token ~= '' and (status ~= 'PROCESSING' or row[2] ~= token) then
        code = 0
      elseif op == 'release' and not row[4]
          and not (whole(row[7] or '0') and whole(row[8] or '0')) then
        -- The counters a release winds back are garbage, and HINCRBY would fail on them
        -- after this call wrote other outcomes: the record goes, before anything is written,
        -- and the claim with it.
        unplace(key, id, row[3])
        quarantine_record(key, id, 'task record has a non-numeric attempts or deliveries field',
          now_ms)
        code = 0
      else
        local checked = token ~= ''
        if row[6] then
          local ids = disowned[row[6]]
          if not ids then
            ids = {}
            disowned[row[6]] = ids
          end
          ids[#ids + 1] = id
        end
        if checked then
          -- Claimed, so in no queue structure but the processing set: it leaves that with
          -- the others of this call. (A ready entry would be garbage: removed all the same.)
          if row[3] then
            queue_call('ZREM', ready_key, row[3])
            redis.call('HDEL', key, 'member')
          end
          released[#released + 1] = id
        else
          unplace(key, id, row[3])
        end
        if (op == 'requeue' or op == 'release') and row[4] then
          op = 'cancel'  -- cancelled while it ran: it does not run again
        end
        if op == 'complete' then
          transition(checked, key, id, status, 'COMPLETED', row[5])
          if ARGV[base + 3] ~= '' then
            redis.call('HSET', key, 'status', 'COMPLETED', 'finished_at', now_s,
              'result', ARGV[base + 3])
            redis.call('HDEL', key, 'claim_token', 'owner', 'cancel_requested', 'error',
              'traceback')
          else
            redis.call('HSET', key, 'status', 'COMPLETED', 'finished_at', now_s)
            redis.call('HDEL', key, 'claim_token', 'owner', 'cancel_requested', 'error',
              'traceback', 'result')
          end
        elseif op == 'cancel' then
          transition(checked, key, id, status, 'CANCELLED', row[5])
          redis.call('HSET', key, 'status', 'CANCELLED', 'finished_at', now_s)
          redis.call('HDEL', key, 'claim_token', 'owner', 'cancel_requested')
        elseif op == 'fail' then
          transition(checked, key, id, status, 'FAILED', row[5])
          redis.call('HSET', key, 'status', 'FAILED', 'finished_at', now_s,
            'error', ARGV[base + 3], 'traceback', ARGV[base + 4],
            'err:' .. attempt_number(key), ARGV[base + 5])
          redis.call('HDEL', key, 'claim_token', 'owner', 'cancel_requested')
        elseif op == 'release' then
          transition(checked, key, id, status, 'PENDING', row[5])
          redis.call('HSET', key, 'status', 'PENDING')
          redis.call('HDEL', key, 'claim_token', 'owner', 'started_at')
          redis.call('HINCRBY', key, 'attempts', -1)
          redis.call('HINCRBY', key, 'deliveries', -1)
          local priority = finite(redis.call('HGET', key, 'priority')) or 0
          local member = ARGV[base + 3]
          if string.sub(member, MEMBER_HEAD + 1) == id then
            redis.call('HSET', key, 'member', member)
            queue_call('ZADD', ready_key, priority, member)
          else
            place(key, id, priority, now_ms, now_ms)
          end
          requeued = requeued + 1
        else
          transition(checked, key, id, status, 'PENDING', row[5])
          local due_ms = now_ms + tonumber(ARGV[base + 3])
          redis.call('HSET', key, 'status', 'PENDING',
            'scheduled_at', string.format('%.6f', due_ms / 1000))
          redis.call('HDEL', key, 'claim_token', 'owner', 'finished_at')
          if ARGV[base + 5] ~= '' then
            redis.call('HSET', key, 'error', ARGV[base + 4],
              'err:' .. attempt_number(key), ARGV[base + 5])
          end
          place(key, id, finite(redis.call('HGET', key, 'priority')) or 0, due_ms, now_ms)
          requeued = requeued + 1
        end
      end
    end
    codes[#codes + 1] = code
  end
  write_batched()
  if requeued > 0 then
    redis.call('PUBLISH', wake_channel, requeued)
  end
  return codes
end
