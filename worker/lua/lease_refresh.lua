-- lease_refresh: extend a chunk's lease, only while the caller still owns it.
--
-- A worker cut off (or frozen) past its lease comes back to find the key gone, or set by the worker
-- that took the chunk over: it must neither set it again nor extend the other's. PEXPIRE needs no
-- memory, so a full Redis (maxmemory, noeviction) still keeps a lease alive.
--
-- KEYS:
--   lease        STRING  the chunk's lease (its value: the owner's token)
-- ARGV:
--   owner        the caller's token
--   ttl_ms       the lease's new lifetime, ms
-- Returns: 1 extended, 0 lost (gone, or another's).
local lease = KEYS[1]
local owner, ttl_ms = ARGV[1], ARGV[2]

if redis.call('GET', lease) ~= owner then return 0 end
redis.call('PEXPIRE', lease, ttl_ms)
return 1
