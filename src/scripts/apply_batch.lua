-- Applies one partition batch atomically: the users' new state, the awards
-- decided, and the partition's applied offset move together, or not at all.
-- The processor sends a batch's writes as a WATCHed transaction (state.rs);
-- this script is for writes that cannot rely on that watch (resent on a new
-- connection) and for a transaction that was aborted: it checks the epoch
-- and the offset itself and answers for its batch alone.
-- The users' states are written with one HSET per chunk of the batch, not one
-- command per user: per user, Redis only replaces a hash field.
--
-- KEYS[1]   meta hash of the partition shard (fields epoch:<topic>, offset:<topic>)
-- KEYS[2]   award outbox hash of the shard (award id -> encoded award)
-- KEYS[3]   the shard's state hash of the topic's event kind (user id -> stored state)
-- ARGV[1]   input topic
-- ARGV[2]   the caller's epoch for (topic, partition)
-- ARGV[3]   the applied offset the caller read ("-1" when none)
-- ARGV[4]   the new applied offset (last record of the batch)
-- ARGV[5]   S, users whose state is set
-- ARGV[6]   D, users whose state is deleted
-- then S pairs: user id, stored state ("<expires at, unix s>|<state>")
-- then D user ids
-- then pairs until the end: award id, encoded award (added to the outbox)
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
-- unpack() is bounded by Lua's C stack (8000 values): chunks of 1000.
local CHUNK = 1000
local function each_chunk(command, key, from, to)
  local i = from
  while i <= to do
    local j = math.min(i + CHUNK - 1, to)
    redis.call(command, key, unpack(ARGV, i, j))
    i = j + 1
  end
end
local sets_from = 7
local deletes_from = sets_from + 2 * tonumber(ARGV[5])
local awards_from = deletes_from + tonumber(ARGV[6])
each_chunk('HSET', KEYS[3], sets_from, deletes_from - 1)
each_chunk('HDEL', KEYS[3], deletes_from, awards_from - 1)
each_chunk('HSET', KEYS[2], awards_from, #ARGV)
redis.call('HSET', meta, 'offset:' .. topic, ARGV[4])
return 'OK'
