-- lease_release: drop a chunk's lease as its run ends, only if the caller still owns it.
--
-- KEYS:
--   lease        STRING  the chunk's lease (its value: the owner's token)
-- ARGV:
--   owner        the caller's token
-- Returns: 1 dropped, 0 not the caller's (gone, or taken over: left to its owner).
local lease = KEYS[1]
local owner = ARGV[1]

if redis.call('GET', lease) ~= owner then return 0 end
redis.call('DEL', lease)
return 1
