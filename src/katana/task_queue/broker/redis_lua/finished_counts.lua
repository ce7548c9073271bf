-- How many tasks finished in each window [edge i, edge i+1) (ms), over every final status.
-- ARGV: prefix, now_ms, edge, edge, ... Returns one count per window.
local sets = {}
for status in pairs(TERMINAL) do
  local set = prefix .. ':finished:' .. status
  if redis.call('TYPE', set).ok == 'zset' then -- garbage there counts as nothing
    sets[#sets + 1] = set
  end
end
local counts = {}
for i = 3, #ARGV - 1 do
  local total = 0
  for _, set in ipairs(sets) do
    total = total + redis.call('ZCOUNT', set, ARGV[i], '(' .. ARGV[i + 1])
  end
  counts[#counts + 1] = total
end
return counts
