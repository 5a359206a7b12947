-- Benchmarks of the offline half: validate throughput through the Lua API on 1-, 10- and
-- 50-variable payloads, and audit appends per second (sync on close vs every record).
-- Medians of 5 runs.
local core = require("cxone.core")
local now = require("support.sim").now

local function median(t)
    table.sort(t)
    return t[math.ceil(#t / 2)]
end

local function payload(n)
    local vars = {}
    for i = 1, n do
        vars[i] = { name = ("VARIABLE_%02d"):format(i), value = ("value-%d-postgresql://db.internal:5432/main"):format(i),
            masked = i % 5 == 0, description = "Scoped override for prod" }
    end
    return { actionId = "a1b2c3d4-e5f6-4890-abcd-ef1234567890", environmentId = "prod", variables = vars }
end

-- CPU time of `calls` validations, each run starting from a collected heap (so one run's
-- garbage is not charged to the next)
local function rate(p, opts, calls, nvars)
    local runs = {}
    for r = 1, 5 do
        collectgarbage()
        local t0 = os.clock()
        for _ = 1, calls do assert(core.validate(p, opts)) end
        runs[r] = calls * nvars / (os.clock() - t0)
    end
    return median(runs)
end

local existing = {}
for i = 1, 40 do existing[i] = ("VARIABLE_%02d"):format(i) end
local VARS = 1000000 -- variables validated per run
print("validate (CPU time, median of 5 runs; target >= 4.5 M variables/s on 50-variable payloads)")
print(("%-36s %14s %14s"):format("payload", "variables/s", "payloads/s"))
for _, n in ipairs({ 1, 10, 50 }) do
    local r = rate(payload(n), nil, VARS // n, n)
    print(("%-36s %12.2f M %12.0f k"):format(n .. " variable" .. (n > 1 and "s" or ""), r / 1e6, r / n / 1e3))
end
local rm = rate(payload(50), { existing = existing }, VARS // 50, 50)
print(("%-36s %12.2f M %12.0f k"):format("50 variables, 40 existing (merge)", rm / 1e6, rm / 50 / 1e3))
local bad = payload(50)
for i = 1, 50, 5 do bad.variables[i].value = bad.variables[i].value .. ";" end
local rb = (function()
    local runs = {}
    for r = 1, 5 do
        collectgarbage()
        local t0 = os.clock()
        for _ = 1, 2000 do assert(not core.validate(bad)) end
        runs[r] = 2000 * 50 / (os.clock() - t0)
    end
    return median(runs)
end)()
print(("%-36s %12.2f M %12.0f k"):format("50 variables, 10 violations", rb / 1e6, rb / 50 / 1e3))

local dir = os.tmpname()
os.remove(dir)
assert(os.execute("mkdir -p " .. dir))
local function appends(sync, n)
    local rates = {}
    for r = 1, 3 do
        local path = ("%s/%s-%d.jsonl"):format(dir, sync, r)
        local a = assert(core.audit_open(path, { sync = sync }))
        local wall0 = now()
        for i = 1, n do
            assert(a:append({ event = "apply", action_id = "a1b2c3d4-e5f6-4890-abcd-ef1234567890", environment = "prod",
                variables = { "A", "B", "C" }, drift_count = i % 3, latency_ms = 3.2, status = "success" }))
        end
        assert(a:close())
        local wall1 = now()
        rates[#rates + 1] = n / (wall1 - wall0)
    end
    return median(rates)
end
print(("audit append, sync on close: %.0f records/s (wall clock, median of 3)"):format(appends("close", 20000)))
print(("audit append, sync every record: %.0f records/s (wall clock, median of 3)"):format(appends("always", 500)))
os.execute("rm -rf " .. dir)
