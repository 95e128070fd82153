-- claim: take the queue's next job for a running chunk to work on too, recording who holds it.
--
-- The job leaves RQ's queue and enters the claims hash in one step, so it is never in neither: if
-- the claimer dies, the janitor finds its lease gone and puts the job back.
--
-- KEYS:
--   queue        LIST    RQ's queue (Queue.key)
--   claims       HASH    job id -> "{claimer's lease key} {unix s}"
-- ARGV:
--   lease        the claimer's lease key
--   now          unix seconds
-- Returns: the claimed job id, or nil when the queue is empty.
local queue, claims = KEYS[1], KEYS[2]
local lease, now = ARGV[1], ARGV[2]

local id = redis.call('LINDEX', queue, 0)
if not id then return false end
if redis.call('LREM', queue, 1, id) == 0 then return false end
redis.call('HSET', claims, id, lease .. ' ' .. now)
return id
