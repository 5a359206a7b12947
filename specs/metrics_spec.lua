-- cxone.metrics: bounded latency figures (fixed histogram buckets), and Client:metrics() built
-- on them: constant memory after a million calls, exact count/min/max/avg, percentiles within
-- the buckets' resolution, the same shape of output as before.
-- Lua 5.1-compatible (runs under LuaJIT, 5.3 and 5.4).
local metrics = require("cxone.metrics")

local function exact_pct(sorted, p)
    local n = #sorted
    return sorted[math.floor(p * (n - 1) + 0.5) + 1]
end

describe("cxone.metrics", function()
    it("an empty histogram has a count of 0 and no figures", function()
        local s = metrics.new():summary()
        assert.equal(0, s.count)
        assert.is_nil(s.min)
        assert.is_nil(s.p50)
        assert.is_nil(s.avg)
    end)

    it("count, min, max and avg are exact; percentiles within the bucket resolution", function()
        local h = metrics.new()
        local seen, sum = {}, 0
        -- a skewed spread from 0.2 ms to ~3 s (deterministic)
        local x = 12345
        for i = 1, 5000 do
            x = (x * 1103515245 + 12345) % 2147483648
            local ms = 0.2 * math.exp((x / 2147483648) * 9.6)
            h:note(ms)
            seen[i] = ms
            sum = sum + ms
        end
        table.sort(seen)
        local s = h:summary()
        assert.equal(5000, s.count)
        assert.equal(seen[1], s.min)
        assert.equal(seen[#seen], s.max)
        assert.is_true(math.abs(s.avg - sum / 5000) < 1e-9 * sum)
        for _, p in ipairs({ { "p50", 0.5 }, { "p95", 0.95 }, { "p99", 0.99 } }) do
            local want = exact_pct(seen, p[2])
            local rel = math.abs(s[p[1]] - want) / want
            assert.is_true(rel <= 0.11, ("%s: %g vs exact %g (%.1f %%)"):format(p[1], s[p[1]], want, rel * 100))
        end
    end)

    it("every latency lands in the bucket whose bounds hold it; extremes in the end buckets", function()
        for _, ms in ipairs({ 0.011, 0.5, 1, 1.19, 42, 999.9, 60000 }) do
            local k = metrics.bucket_of(ms)
            local lo, hi = metrics.bounds(k)
            assert.is_true(ms > lo * (1 - 1e-9) and ms <= hi * (1 + 1e-9), ("%g in (%g, %g]"):format(ms, lo, hi))
        end
        assert.equal(1, metrics.bucket_of(0))
        assert.equal(metrics.BUCKETS, metrics.bucket_of(1e12))
    end)

    it("ignores what is not a latency", function()
        local h = metrics.new()
        h:note(nil); h:note("3"); h:note(-1); h:note(0 / 0)
        h:note_meta(nil); h:note_meta({ status = 200 })
        assert.equal(0, h.count)
        h:note_meta({ latency_ms = 2.5 })
        assert.equal(1, h.count)
    end)

    it("constant memory and a constant-size summary after a million calls", function()
        local h = metrics.new()
        for i = 1, 1000 do h:note(i % 97 + 0.5) end
        collectgarbage(); collectgarbage()
        local before = collectgarbage("count")
        for i = 1, 1000000 do h:note((i % 9973) * 0.37 + 0.01) end
        collectgarbage(); collectgarbage()
        local grown = collectgarbage("count") - before
        assert.is_true(grown < 16, ("heap grew %.1f KiB"):format(grown)) -- not ~8 MB of latencies
        local n = 0
        for _ in pairs(h.buckets) do n = n + 1 end
        assert.equal(metrics.BUCKETS, n)
        assert.equal(1001000, h:summary().count)
    end)
end)

describe("Client:metrics()", function()
    it("keeps its fields: core stats, the client's counts and latency_ms", function()
        local fake = { stats = function() return { requests = 7, attempts = 8, connections = 1 } end,
                       close = function() end }
        local c = assert(require("cxone.client").new({ core = fake, audit_log = false }))
        for _, ms in ipairs({ 1, 2, 3, 4, 100 }) do c.histogram:note(ms) end
        local m = c:metrics()
        assert.equal(7, m.requests)
        assert.equal(0, m.applied)
        assert.equal(5, m.latency_ms.count)
        assert.equal(1, m.latency_ms.min)
        assert.equal(100, m.latency_ms.max)
        assert.equal(22, m.latency_ms.avg)
        assert.is_true(math.abs(m.latency_ms.p50 - 3) / 3 <= 0.11)
        assert.is_number(m.latency_ms.p95)
        assert.is_nil(rawget(c, "latencies")) -- nothing grows with the number of calls
    end)
end)
