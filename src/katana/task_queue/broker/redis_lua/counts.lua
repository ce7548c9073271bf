-- Sizes of the queue's structures and the terminal-status counters, after moving aside any
-- queue key that garbage turned into the wrong Redis type and repairing the counters (see
-- check_queue). ARGV: prefix, now_ms.
-- Returns {ready, delayed, processing, counts as a flat field/value list, quarantined pairs}.
check_queue(tonumber(ARGV[2]))
return {redis.call('ZCARD', ready_key), redis.call('ZCARD', delayed_key),
  redis.call('ZCARD', processing_key), redis.call('HGETALL', counts_key), quarantined_now}
