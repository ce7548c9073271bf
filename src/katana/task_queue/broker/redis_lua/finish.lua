-- Record the outcomes of claimed tasks, several per call (see apply_outcomes).
-- ARGV: prefix, now_ms, then six values per outcome.
return apply_outcomes(3, #ARGV, tonumber(ARGV[2]))
