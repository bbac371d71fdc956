-- Claims an input partition for a consumer: raises its epoch, so that a
-- zombie still holding an older epoch can no longer write, and returns where
-- to resume.
--
-- KEYS[1]  meta hash of the partition shard
-- ARGV[1]  input topic
-- ARGV[2]  the lowest epoch the caller has seen for it ("0" when none): the
--          new epoch is above it even if Redis lost the last claims (a
--          restart that lost its last second of writes)
-- Reply: { new epoch (integer), applied offset (string, "-1" when none) }
local field = 'epoch:' .. ARGV[1]
local epoch = tonumber(redis.call('HGET', KEYS[1], field) or '0')
local floor = tonumber(ARGV[2] or '0')
if epoch < floor then
  epoch = floor
end
epoch = epoch + 1
redis.call('HSET', KEYS[1], field, epoch)
local applied = redis.call('HGET', KEYS[1], 'offset:' .. ARGV[1]) or '-1'
return { epoch, applied }
