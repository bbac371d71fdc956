-- One step of a sweep of a state hash: deletes the users whose state expired
-- (Redis 7.0 has no per-field expiry, so each stored state starts with its
-- expiry: "<expires at, unix s>|<state>"). Only states whose expiry passed
-- are deleted, so any consumer may sweep any shard at any time: a state
-- written meanwhile carries a later expiry and stays.
--
-- KEYS[1]  a state hash (<prefix>:{p}:<kind>)
-- ARGV[1]  HSCAN cursor ("0" to start a pass)
-- ARGV[2]  now, unix seconds
-- ARGV[3]  HSCAN COUNT (fields looked at per step, about)
-- Reply: { next cursor ("0": the pass is complete), users deleted }
local scanned = redis.call('HSCAN', KEYS[1], ARGV[1], 'COUNT', ARGV[3])
local fields = scanned[2]
local now = tonumber(ARGV[2])
local expired = {}
for k = 1, #fields, 2 do
  local value = fields[k + 1]
  local bar = string.find(value, '|', 1, true)
  local expires_at = bar and tonumber(string.sub(value, 1, bar - 1))
  -- A state without a readable expiry is not ours to judge: kept.
  if expires_at and expires_at <= now then
    expired[#expired + 1] = fields[k]
  end
end
local i = 1
while i <= #expired do
  local j = math.min(i + 999, #expired)
  redis.call('HDEL', KEYS[1], unpack(expired, i, j))
  i = j + 1
end
return { scanned[1], #expired }
