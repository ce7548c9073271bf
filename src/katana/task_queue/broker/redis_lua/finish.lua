-- Record the outcomes of claimed tasks, several per call. ARGV: prefix, now_ms, then per
-- outcome five values: op, id, claim_token ('' = unchecked), a, b, where op is
--   'complete': a = result as JSON ('' for none)
--   'fail':     a = error, b = traceback
--   'requeue':  a = delay in ms before the task is due again
-- Returns one code per outcome: 1 applied, 0 the claim was lost, -1 unknown task.
local now_ms = tonumber(ARGV[2])
local now_s = string.format('%.6f', now_ms / 1000)
local codes = {}
local requeued = 0
for base = 3, #ARGV, 5 do
  local op, id, token = ARGV[base], ARGV[base + 1], ARGV[base + 2]
  local key = task_key(id)
  local code = 1
  if redis.call('TYPE', key).ok ~= 'hash' then
    code = -1
  else
    local status = redis.call('HGET', key, 'status')
    if token ~= '' and (status ~= 'PROCESSING' or
        redis.call('HGET', key, 'claim_token') ~= token) then
      code = 0
    else
      unplace(key, id)
      redis.call('HDEL', key, 'claim_token')
      if op == 'complete' then
        count_transition(status, 'COMPLETED')
        redis.call('HSET', key, 'status', 'COMPLETED', 'finished_at', now_s)
        redis.call('HDEL', key, 'error', 'traceback')
        if ARGV[base + 3] ~= '' then
          redis.call('HSET', key, 'result', ARGV[base + 3])
        else
          redis.call('HDEL', key, 'result')
        end
      elseif op == 'fail' then
        count_transition(status, 'FAILED')
        redis.call('HSET', key, 'status', 'FAILED', 'finished_at', now_s,
          'error', ARGV[base + 3], 'traceback', ARGV[base + 4])
      else
        count_transition(status, 'PENDING')
        local due_ms = now_ms + tonumber(ARGV[base + 3])
        redis.call('HSET', key, 'status', 'PENDING',
          'scheduled_at', string.format('%.6f', due_ms / 1000))
        redis.call('HDEL', key, 'finished_at')
        place(key, id, tonumber(redis.call('HGET', key, 'priority')) or 0, due_ms, now_ms)
        requeued = requeued + 1
      end
    end
  end
  codes[#codes + 1] = code
end
if requeued > 0 then
  redis.call('PUBLISH', wake_channel, requeued)
end
return codes
