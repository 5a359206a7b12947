-- Benchmarks of the offline half: validate throughput through the Lua API on 50-variable
-- payloads, and audit appends per second (sync on close vs every record). Medians of 5 runs.
local core = require("cxone.core")
local now = require("support.sim").now

local function median(t)
    table.sort(t)
    return t[math.ceil(#t / 2)]
end

local function payload()
    local vars = {}
    for i = 1, 50 do
        vars[i] = { name = ("VARIABLE_%02d"):format(i), value = ("value-%d-postgresql://db.internal:5432/main"):format(i),
            masked = i % 5 == 0, description = "Scoped override for prod" }
    end
    return { actionId = "a1b2c3d4-e5f6-4890-abcd-ef1234567890", environmentId = "prod", variables = vars }
end

local p = payload()
local existing = {}
for i = 1, 40 do existing[i] = ("VARIABLE_%02d"):format(i) end
local runs, runs_merge = {}, {}
local N = 20000
for _ = 1, 5 do
    local t0 = os.clock()
    for _ = 1, N do assert(core.validate(p)) end
    runs[#runs + 1] = N * 50 / (os.clock() - t0)
    t0 = os.clock()
    for _ = 1, N do assert(core.validate(p, { existing = existing })) end
    runs_merge[#runs_merge + 1] = N * 50 / (os.clock() - t0)
end
print(("validate: %.0f variables/s (median of 5, 50-variable payloads, CPU time)"):format(median(runs)))
print(("validate with 40 existing names (merge count): %.0f variables/s"):format(median(runs_merge)))

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
