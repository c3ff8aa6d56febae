--[[ archive_lock_release.lua — give the archive lock back, if this run still holds it.

KEYS[1]  idvcancel:audit:archive:lock  (string token, PX)
ARGV[1]  this run's token

Returns 1 when released, 0 when the lock is another run's (or gone).
]]
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
