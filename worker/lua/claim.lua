-- claim: take the queue's next job for a running chunk to work on too, recording who holds it.
--
-- The job leaves RQ's queue and enters the claims hash in one step, so it is never in neither: if
-- the claimer dies, the janitor finds its lease gone (or another's) and puts the job back. A claimer
-- that no longer owns its lease (cut off past it, taken over) claims nothing.
--
-- KEYS:
--   queue        LIST    RQ's queue (Queue.key)
--   claims       HASH    job id -> "{claimer's lease key} {unix s} {claimer's token}" (no token: unchecked)
-- ARGV:
--   lease        the claimer's lease key
--   owner        the claimer's token (the lease's value while it owns it); '' for an unchecked claim
--   now          unix seconds
-- Returns: the claimed job id, or nil when the queue is empty or the lease is not the claimer's.
local queue, claims = KEYS[1], KEYS[2]
local lease, owner, now = ARGV[1], ARGV[2], ARGV[3]

if owner ~= '' and redis.call('GET', lease) ~= owner then return false end
local id = redis.call('LINDEX', queue, 0)
if not id then return false end
if redis.call('LREM', queue, 1, id) == 0 then return false end
local holder = lease .. ' ' .. now
if owner ~= '' then holder = holder .. ' ' .. owner end
redis.call('HSET', claims, id, holder)
return id
