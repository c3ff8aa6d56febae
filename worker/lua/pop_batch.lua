--[[ pop_batch.lua — take more queue items at once, each recorded as un-acked as it leaves.

The worker's Redis transport (worker/broker/redis_transport.py) pops a message with
kombu's BRPOP; when more are waiting, it takes up to ARGV[1] of them here in one call
instead of one BRPOP and one MULTI/EXEC each. Every item that is a kombu envelope is
written to kombu's un-acked hash and index in the same script that pops it, so no crash
can take it from the queue without a record (kombu's own pop has that window): the
visibility-timeout restore brings back whatever a dead worker held.

Only the shape kombu's record needs is checked here (a delivery tag, an exchange and a
routing key); an item without it is returned unrecorded, and the transport wraps and
records it as it does any junk. The record is the item's own bytes inside kombu's
[payload, exchange, routing key] array: never re-encoded, so nothing in it changes.

Cost: O(k) for k items, one cjson decode, ZADD and HSET each.

KEYS[1]  the queue list     idvcancel (or a priority list of it)
KEYS[2]  un-acked messages  unacked        (hash delivery tag -> [payload, exchange, key])
KEYS[3]  un-acked index     unacked_index  (zset delivery tag, score = delivered, s)

ARGV[1]  the most items to take
ARGV[2]  now (epoch seconds, float): the index score

Returns {tag1, item1, tag2, item2, ...} in pop order (the order BRPOP would have given);
the tag is "" for an item left unrecorded.
]]
local items = redis.call('RPOP', KEYS[1], ARGV[1])
if not items then
  return {}
end
local out = {}
for _, item in ipairs(items) do
  local tag = ''
  local ok, envelope = pcall(cjson.decode, item)
  if ok and type(envelope) == 'table' and type(envelope.properties) == 'table' then
    local properties = envelope.properties
    local info = properties.delivery_info
    -- headers null: kombu's restore would write into it (the transport drops it first)
    if type(properties.delivery_tag) == 'string' and properties.delivery_tag ~= ''
        and type(info) == 'table' and type(info.exchange) == 'string'
        and type(info.routing_key) == 'string'
        and (envelope.headers == nil or type(envelope.headers) == 'table') then
      tag = properties.delivery_tag
      redis.call('ZADD', KEYS[3], ARGV[2], tag)
      redis.call('HSET', KEYS[2], tag, '[' .. item .. ',' .. cjson.encode(info.exchange)
        .. ',' .. cjson.encode(info.routing_key) .. ']')
    end
  end
  out[#out + 1] = tag
  out[#out + 1] = item
end
return out
