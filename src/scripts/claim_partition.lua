-- Claims an input partition for a consumer: bumps its epoch, so that a
-- zombie still holding the old epoch can no longer write, and returns where
-- to resume.
--
-- KEYS[1]  meta hash of the partition shard
-- ARGV[1]  input topic
-- Reply: { new epoch (integer), applied offset (string, "-1" when none) }
local epoch = redis.call('HINCRBY', KEYS[1], 'epoch:' .. ARGV[1], 1)
local applied = redis.call('HGET', KEYS[1], 'offset:' .. ARGV[1]) or '-1'
return { epoch, applied }
