-- mailbrake fleet mode: one sender key's shared window, changed atomically.
-- The data model and its costs are described in src/limits/fleet.rs.
--
-- KEYS[1]  sends         ZSET  member = send id, score = send time (unix s)
-- KEYS[2]  reservations  ZSET  member = reservation id, score = expiry (unix s)
-- KEYS[3]  lock          STRING "UNTIL|reason"    (UNTIL empty: until unlocked)
-- KEYS[4]  override      STRING "UNTIL|unlimited" or "UNTIL|N/Ws, N/Ws"
--
-- ARGV[1] names the operation; its other arguments are listed with it.
-- Times are the caller's `now` (never Redis's clock), so that every window
-- edge is decided exactly as the local engine (window.rs) decides it. Key
-- TTLs only collect what nothing can need any more.

local SENDS, RESERVED, LOCK, OVERRIDE = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
-- A `Time` is a u32: next_free saturates here, like window.rs.
local TIME_MAX = 4294967295
-- Seconds a key outlives the last thing that can matter in it (clock skew
-- between instances).
local TTL_MARGIN = 60

-- Rates as ARGV pairs (count, window seconds) from ARGV[from] on.
local function rates_from(from)
  local rates = {}
  for i = from, #ARGV - 1, 2 do
    rates[#rates + 1] = { tonumber(ARGV[i]), tonumber(ARGV[i + 1]) }
  end
  return rates
end

-- A lock or override value "UNTIL|rest" still in force at `now`: UNTIL
-- (empty when open-ended) and the rest; nil when absent or over.
local function in_force(key, now)
  local value = redis.call('GET', key)
  if not value then
    return nil
  end
  local until_text, rest = string.match(value, '^(%d*)|(.*)$')
  if until_text == nil or (until_text ~= '' and tonumber(until_text) <= now) then
    return nil
  end
  return until_text, rest
end

-- The override in force: 'unlimited', a list of rates, or nil.
local function override(now)
  local _, limit = in_force(OVERRIDE, now)
  if limit == nil or limit == 'unlimited' then
    return limit
  end
  local rates = {}
  for n, w in string.gmatch(limit, '(%d+)/(%d+)s') do
    rates[#rates + 1] = { tonumber(n), tonumber(w) }
  end
  if #rates == 0 then
    return nil
  end
  return rates
end

-- The longest window and the largest count over the given rate lists
-- (anything else, like 'unlimited' or nil, is skipped).
local function bounds(...)
  local longest, keep = 0, 0
  for _, list in ipairs({ ... }) do
    if type(list) == 'table' then
      for _, rate in ipairs(list) do
        keep = math.max(keep, rate[1])
        longest = math.max(longest, rate[2])
      end
    end
  end
  return longest, keep
end

-- Sets KEY's TTL to at least SECONDS, never shorter: a peer's
-- reservations in it may live longer than the caller's.
local function extend_ttl(key, seconds)
  if redis.call('TTL', key) < seconds then
    redis.call('EXPIRE', key, seconds)
  end
end

-- Sends in (now - w, now] (and any later: a peer's clock may run ahead).
local function sent_within(w, now)
  if now < w then
    return redis.call('ZCARD', SENDS)
  end
  return redis.call('ZCOUNT', SENDS, '(' .. (now - w), '+inf')
end

-- reserve NOW EXPIRY ID [COUNT WINDOW]...
-- -> {'reserved', HELD} | {'locked', UNTIL or -1, REASON} | {'full', RATE_INDEX, NEXT_FREE or -1}
-- HELD is 1 when the reservation is held in RESERVED (to be refreshed), 0
-- when nothing needs holding (no limit, or an unlimited override).
local function reserve()
  local now, expiry, id = tonumber(ARGV[2]), tonumber(ARGV[3]), ARGV[4]
  local rates = rates_from(5)
  redis.call('ZREMRANGEBYSCORE', RESERVED, '-inf', now)
  if redis.call('ZSCORE', RESERVED, id) then
    -- A retry of a reservation that was made (its reply was lost).
    return { 'reserved', 1 }
  end
  local until_text, reason = in_force(LOCK, now)
  if until_text then
    return { 'locked', until_text == '' and -1 or tonumber(until_text), reason }
  end
  local limit = override(now)
  -- Keep what either the override or the file's rates may need: only the
  -- newest max-N sends within the longest window can matter (window.rs).
  local longest, keep = bounds(rates, limit)
  if longest > 0 then
    redis.call('ZREMRANGEBYSCORE', SENDS, '-inf', now - longest)
    redis.call('ZREMRANGEBYRANK', SENDS, 0, -(keep + 1))
  end
  if limit == 'unlimited' then
    return { 'reserved', 0 }
  end
  limit = limit or rates
  if #limit == 0 then
    return { 'reserved', 0 }
  end
  local pending = redis.call('ZCARD', RESERVED)
  for i, rate in ipairs(limit) do
    local n, w = rate[1], rate[2]
    if sent_within(w, now) + pending >= n then
      -- Free once the (N - pending)-th newest send leaves the window.
      local k = n - pending
      local next_free = -1
      if k > 0 then
        local nth = redis.call('ZREVRANGE', SENDS, k - 1, k - 1, 'WITHSCORES')
        if nth[2] then
          next_free = math.min(tonumber(nth[2]) + w, TIME_MAX)
        end
      end
      return { 'full', i - 1, next_free }
    end
  end
  redis.call('ZADD', RESERVED, expiry, id)
  extend_ttl(RESERVED, math.max(expiry - now, 0) + TTL_MARGIN)
  return { 'reserved', 1 }
end

-- refresh NOW EXPIRY ID... -> the IDs no longer reserved
-- Each ID still reserved at NOW expires at EXPIRY instead (never sooner);
-- one that has expired stays expired: its place may already be taken.
local function refresh()
  local now, expiry = tonumber(ARGV[2]), tonumber(ARGV[3])
  local gone = {}
  for i = 4, #ARGV do
    local score = redis.call('ZSCORE', RESERVED, ARGV[i])
    if score and tonumber(score) > now then
      if tonumber(score) < expiry then
        redis.call('ZADD', RESERVED, expiry, ARGV[i])
      end
    else
      gone[#gone + 1] = ARGV[i]
    end
  end
  if #gone < #ARGV - 3 then
    extend_ttl(RESERVED, math.max(expiry - now, 0) + TTL_MARGIN)
  end
  return gone
end

-- commit NOW ID LONGEST -> 1
local function commit()
  local now, id, longest = tonumber(ARGV[2]), ARGV[3], tonumber(ARGV[4])
  redis.call('ZREM', RESERVED, id)
  local member = id
  local seen = redis.call('ZSCORE', SENDS, id)
  if seen and tonumber(seen) ~= now then
    -- The id was used before: keep both sends. (The same id at the same
    -- time is a retried commit: one send.)
    member = id .. '@' .. now
  end
  redis.call('ZADD', SENDS, now, member)
  longest = math.max(longest, (bounds(override(now))))
  if longest > 0 then
    redis.call('ZREMRANGEBYSCORE', SENDS, '-inf', now - longest)
  end
  redis.call('EXPIRE', SENDS, longest + TTL_MARGIN)
  return 1
end

-- counts NOW [COUNT WINDOW]... -> {sent in each window..., live reservations}
local function counts()
  local now = tonumber(ARGV[2])
  local out = {}
  for _, rate in ipairs(rates_from(3)) do
    out[#out + 1] = sent_within(rate[2], now)
  end
  out[#out + 1] = redis.call('ZCOUNT', RESERVED, '(' .. now, '+inf')
  return out
end

local op = ARGV[1]
if op == 'reserve' then
  return reserve()
elseif op == 'commit' then
  return commit()
elseif op == 'counts' then
  return counts()
elseif op == 'refresh' then
  return refresh()
end
return redis.error_reply('mailbrake fleet: unknown operation ' .. tostring(op))
