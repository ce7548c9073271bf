-- One page of tasks. ARGV: prefix, now_ms, status ('' for every task), scheduled ('' either,
-- '1' only not yet due, '0' only due; PENDING only), name ('' for any), text (lower case, ''
-- for any), offset, limit, scan_limit.
-- Returns {total, exact (1 or 0), record, record, ...}: each record is HGETALL followed by
-- 'id', id. The order is TaskQuery's: the index that holds the status, read in its order.
local now_ms = tonumber(ARGV[2])
local status, scheduled, name, text = ARGV[3], ARGV[4], ARGV[5], ARGV[6]
local offset, limit, scan_limit = tonumber(ARGV[7]), tonumber(ARGV[8]), tonumber(ARGV[9])

-- Each source is an index read in order: {key, how, min, max}.
local sources = {}
if status == '' then
  sources[1] = {all_key, 'rev'}
elseif status == 'PENDING' then
  if scheduled ~= '1' then
    sources[#sources + 1] = {ready_key, 'ready'}
    sources[#sources + 1] = {delayed_key, 'score', '-inf', now_ms}
  end
  if scheduled ~= '0' then
    sources[#sources + 1] = {delayed_key, 'score', '(' .. now_ms, '+inf'}
  end
elseif status == 'PROCESSING' then
  sources[1] = {processing_key, 'fwd'}
else
  sources[1] = {prefix .. ':finished:' .. status, 'rev'}
end

local function size(source)
  if redis.call('TYPE', source[1]).ok ~= 'zset' then
    return 0
  end
  if source[2] == 'score' then
    return redis.call('ZCOUNT', source[1], source[3], source[4])
  end
  return redis.call('ZCARD', source[1])
end

-- Up to `count` task ids of `source` from position `start` (0-based), and the index members
-- they were read from (a ready member carries a head before the id).
local function ids(source, start, count)
  if redis.call('TYPE', source[1]).ok ~= 'zset' then
    return {}, {}
  end
  local key, how = source[1], source[2]
  local members
  if how == 'rev' then
    members = redis.call('ZREVRANGE', key, start, start + count - 1)
  elseif how == 'score' then
    members = redis.call('ZRANGEBYSCORE', key, source[3], source[4], 'LIMIT', start, count)
  else
    members = redis.call('ZRANGE', key, start, start + count - 1)
  end
  if how ~= 'ready' then
    return members, members
  end
  local stripped = {}
  for i, member in ipairs(members) do
    stripped[i] = string.sub(member, MEMBER_HEAD + 1)
  end
  return stripped, members
end

local function record_of(id)
  local key = task_key(id)
  if redis.call('TYPE', key).ok ~= 'hash' then
    return nil
  end
  local record = redis.call('HGETALL', key)
  record[#record + 1] = 'id'
  record[#record + 1] = id
  return record
end

local function contains(haystack, needle)
  return haystack and string.find(string.lower(haystack), needle, 1, true) ~= nil
end

local function matches(id)
  local key = task_key(id)
  if redis.call('TYPE', key).ok ~= 'hash' then
    return false
  end
  local fields = redis.call('HMGET', key, 'name', 'payload', 'error')
  if name ~= '' and fields[1] ~= name then
    return false
  end
  if text == '' then
    return true
  end
  return contains(id, text) or contains(fields[1], text) or contains(fields[2], text)
    or contains(fields[3], text)
end

local result = {0, 1}
if name == '' and text == '' then
  -- No filter: the sizes give the total, and only the page's records are read.
  -- An entry whose record is gone (quarantined, or deleted by hand) is dropped from its index
  -- as the page meets it, and not counted, so the total and the page agree.
  local skip, wanted = offset, limit
  for _, source in ipairs(sources) do
    local n = size(source)
    local start = skip
    while wanted > 0 and start < n do
      local chunk, members = ids(source, start, wanted)
      if #chunk == 0 then
        break
      end
      for i, id in ipairs(chunk) do
        local record = record_of(id)
        if record then
          result[#result + 1] = record
          wanted = wanted - 1
          start = start + 1
        else
          redis.call('ZREM', source[1], members[i])
          n = n - 1
        end
      end
    end
    result[1] = result[1] + n
    skip = skip - math.min(skip, n)
  end
  return result
end

-- Filtered: read the index in chunks, and stop after scan_limit tasks.
local scanned, found = 0, 0
for _, source in ipairs(sources) do
  local start = 0
  while scanned < scan_limit do
    local chunk = ids(source, start, math.min(500, scan_limit - scanned))
    if #chunk == 0 then
      break
    end
    start = start + #chunk
    scanned = scanned + #chunk
    for _, id in ipairs(chunk) do
      if matches(id) then
        if found >= offset and found < offset + limit then
          result[#result + 1] = record_of(id)
        end
        found = found + 1
      end
    end
  end
  if scanned >= scan_limit then
    -- Stopped early: more may match, unless this was the end of the last index.
    result[2] = 0
    break
  end
end
result[1] = found
return result
