-- Record a running task's progress. ARGV: prefix, now_ms, id, claim_token ('' = unchecked),
-- fraction, message. Returns 1, 0 when the claim was lost or it is not running, -1 unknown.
ensure_queue_types(tonumber(ARGV[2]))
local id, token = ARGV[3], ARGV[4]
local key = task_key(id)
if redis.call('TYPE', key).ok ~= 'hash' then
  return -1
end
if redis.call('HGET', key, 'status') ~= 'PROCESSING'
    or (token ~= '' and redis.call('HGET', key, 'claim_token') ~= token) then
  return 0
end
redis.call('HSET', key, 'progress', ARGV[5], 'progress_message', ARGV[6])
return 1
