--- Bounded latency figures: a fixed histogram of logarithmic buckets, so that a client that
-- lives for a million calls (an nginx worker) keeps constant memory and `metrics()` costs the
-- same after one call as after a million.
--
-- Buckets: bucket k (1..BUCKETS) holds latencies in (FLOOR * 2^((k-1)/4), FLOOR * 2^(k/4)]
-- milliseconds, each about 19 % wider than the last, from 0.01 ms to over 90 minutes; bucket 1
-- also takes everything at or below FLOOR and the last one everything above. count, min, max
-- and avg are exact; p50/p95/p99 are the geometric middle of the bucket holding that rank,
-- clamped to [min, max], so within about 10 % of the exact percentile.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.metrics

local M = {}

local BUCKETS = 128
local FLOOR = 0.01 -- ms
local STEP = 2 ^ 0.25
local LOG_STEP = math.log(STEP)
M.BUCKETS, M.FLOOR = BUCKETS, FLOOR

local Histogram = {}
Histogram.__index = Histogram
Histogram.__name = "cxone.Histogram"

--- A new, empty histogram.
function M.new()
    local b = {}
    for k = 1, BUCKETS do b[k] = 0 end
    return setmetatable({ buckets = b, count = 0, sum = 0, min = nil, max = nil }, Histogram)
end

local function bucket_of(ms)
    if ms <= FLOOR then return 1 end
    local k = math.ceil(math.log(ms / FLOOR) / LOG_STEP - 1e-9)
    if k < 1 then return 1 end
    if k > BUCKETS then return BUCKETS end
    return k
end
M.bucket_of = bucket_of

--- The bounds (lower, upper] of bucket k in milliseconds.
function M.bounds(k)
    return FLOOR * STEP ^ (k - 1), FLOOR * STEP ^ k
end

--- Notes one latency in milliseconds (anything else is ignored).
function Histogram:note(ms)
    if type(ms) ~= "number" or ms ~= ms or ms < 0 then return end
    local k = bucket_of(ms)
    self.buckets[k] = self.buckets[k] + 1
    self.count = self.count + 1
    self.sum = self.sum + ms
    if self.min == nil or ms < self.min then self.min = ms end
    if self.max == nil or ms > self.max then self.max = ms end
end

--- Notes the latency of a call's metadata (`meta.latency_ms`), if it has one.
function Histogram:note_meta(meta)
    if type(meta) == "table" then self:note(meta.latency_ms) end
end

--- The estimated p-quantile (0 < p <= 1), nil when empty.
function Histogram:percentile(p)
    local n = self.count
    if n == 0 then return nil end
    local rank = math.floor(p * (n - 1) + 0.5) + 1
    local seen = 0
    for k = 1, BUCKETS do
        seen = seen + self.buckets[k]
        if seen >= rank then
            local lo, hi = M.bounds(k)
            local v = math.sqrt(lo * hi)
            if v < self.min then v = self.min end
            if v > self.max then v = self.max end
            return v
        end
    end
    return self.max
end

--- The summary `{count, min, max, avg, p50, p95, p99}` (nil fields when empty).
function Histogram:summary()
    local n = self.count
    return { count = n, min = self.min, max = self.max, avg = n > 0 and self.sum / n or nil,
             p50 = self:percentile(0.5), p95 = self:percentile(0.95), p99 = self:percentile(0.99) }
end

return M
