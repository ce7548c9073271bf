-- Record the outcomes of claimed tasks, several per call (see apply_outcomes).
-- ARGV: prefix, now_ms, then six values per outcome.
-- Returns {quarantined entry/reason pairs, outcome codes}.
check_values(tonumber(ARGV[2]))
local codes = apply_outcomes(3, #ARGV, tonumber(ARGV[2]))
return {quarantined_now, codes}
