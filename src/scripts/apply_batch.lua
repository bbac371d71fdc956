-- Applies one partition batch atomically: the users' new state, the awards
-- decided, and the partition's applied offset move together, or not at all.
--
-- KEYS[1]   meta hash of the partition shard (fields epoch:<topic>, offset:<topic>)
-- KEYS[2]   award outbox hash of the shard (award id -> encoded award)
-- KEYS[3..] user state strings, in the order of the user sections of ARGV
-- ARGV[1]   input topic
-- ARGV[2]   the caller's epoch for (topic, partition)
-- ARGV[3]   the applied offset the caller read ("-1" when none)
-- ARGV[4]   the new applied offset (last record of the batch)
-- ARGV[5]   number of user sections U
-- then U sections: ttl_seconds, value (an empty value deletes the key)
-- then pairs until the end: award_id, encoded award (added to the outbox)
--
-- Reply (a status string, never an error, so one pipeline can carry many):
--   "OK"                      applied
--   "STALE_EPOCH:<epoch>"     another consumer claimed the partition: nothing written
--   "OFFSET_MOVED:<offset>"   the applied offset is not the one read: nothing written
local meta = KEYS[1]
local topic = ARGV[1]
local epoch = redis.call('HGET', meta, 'epoch:' .. topic)
if epoch ~= ARGV[2] then
  return 'STALE_EPOCH:' .. tostring(epoch)
end
local applied = redis.call('HGET', meta, 'offset:' .. topic) or '-1'
if applied ~= ARGV[3] then
  return 'OFFSET_MOVED:' .. applied
end
local i = 6
for u = 1, tonumber(ARGV[5]) do
  local value = ARGV[i + 1]
  if value == '' then
    redis.call('DEL', KEYS[2 + u])
  else
    redis.call('SET', KEYS[2 + u], value, 'EX', ARGV[i])
  end
  i = i + 2
end
while i < #ARGV do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
  i = i + 2
end
redis.call('HSET', meta, 'offset:' .. topic, ARGV[4])
return 'OK'
