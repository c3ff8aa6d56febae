--[[ archive_lock_refresh.lua — extend the archive lock, if this run still holds it.

KEYS[1]  idvcancel:audit:archive:lock  (string token, PX)
ARGV[1]  this run's token
ARGV[2]  the new time to live (ms)

Returns 1 when extended, 0 when the lock is another run's (or gone).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
