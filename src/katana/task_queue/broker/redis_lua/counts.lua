-- Sizes of the queue's structures and the terminal-status counters, after moving aside any
-- queue key that garbage turned into the wrong Redis type. ARGV: prefix, now_ms.
-- Returns {ready, delayed, processing, counts as a flat field/value list, quarantined pairs}.
ensure_queue_types(tonumber(ARGV[2]))
local now_ms = tonumber(ARGV[2])
ensure_type(ready_key, 'zset', now_ms)
ensure_type(delayed_key, 'zset', now_ms)
ensure_type(processing_key, 'zset', now_ms)
ensure_type(counts_key, 'hash', now_ms)
return {redis.call('ZCARD', ready_key), redis.call('ZCARD', delayed_key),
  redis.call('ZCARD', processing_key), redis.call('HGETALL', counts_key), quarantined_now}
