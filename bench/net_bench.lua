-- Network benchmark for cxone.Client against its own cxone-sim: 500 PATCHes across the demo
-- actions, sequentially and through batch (concurrency 8). Prints medians over REPS runs of
-- requests/s, client CPU per request (os.clock), TCP connections the sim accepted for the run,
-- and token requests made.
--   LUA_PATH/LUA_CPATH/CXONE_SIM_BIN as ctest sets them; lua5.4 bench/net_bench.lua [N] [REPS]
local core = require "cxone.core"
local simlib = require "support.sim"
local D = simlib.DEMO

local N = tonumber(arg and arg[1]) or 500
local REPS = tonumber(arg and arg[2]) or 5
local ENVS = { "dev", "staging", "prod" }

local function wall()
    -- a monotonic-enough wall clock without extra modules: /proc/uptime has 10 ms resolution,
    -- so time a run as a whole (hundreds of ms), never a single request
    local f = io.open("/proc/uptime")
    local t = tonumber(f:read("*n"))
    f:close()
    return t
end

local function payload(i)
    return { actionId = D.actions[i % 3 + 1], environmentId = ENVS[math.floor(i / 3) % 3 + 1],
             variables = { { name = "BENCH_N", value = tostring(i), masked = false },
                           { name = "BENCH_KEY", value = "bench-secret-" .. i, masked = true } } }
end

local function median(t)
    table.sort(t)
    local n = #t
    return n % 2 == 1 and t[(n + 1) / 2] or (t[n / 2] + t[n / 2 + 1]) / 2
end

local function run(sim, mode)
    local c = assert(core.client{ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret })
    local s0 = sim:stats()
    local t0, c0 = wall(), os.clock()
    if mode == "sequential" then
        for i = 1, N do assert(c:patch(payload(i))) end
    else
        local reqs = {}
        for i = 1, N do reqs[i] = { op = "patch", payload = payload(i) } end
        local res = c:batch(reqs, { concurrency = 8 })
        for i = 1, N do assert(res[i].ok, res[i].error) end
    end
    local dt, cpu = wall() - t0, os.clock() - c0
    local s1 = sim:stats()
    local st = c:stats()
    c:close()
    return { rps = N / math.max(dt, 0.01), cpu_us = cpu / N * 1e6,
             -- minus the connection of the sim:stats() call itself
             conns = s1.connections - s0.connections - 1, tokens = st.token_requests }
end

local sim = simlib.start()
io.write(string.format("cxone.Client network bench: %d PATCHes per run, median of %d runs (%s, %s)\n",
    N, REPS, _VERSION, core._VERSION))
io.write(string.format("%-12s %12s %14s %10s %8s\n", "mode", "requests/s", "CPU us/req", "TCP conns", "tokens"))
for _, mode in ipairs{ "sequential", "batch(8)" } do
    local rps, cpu, conns, tokens = {}, {}, {}, {}
    run(sim, mode) -- warm-up
    for r = 1, REPS do
        local m = run(sim, mode)
        rps[r], cpu[r], conns[r], tokens[r] = m.rps, m.cpu_us, m.conns, m.tokens
    end
    io.write(string.format("%-12s %12.0f %14.1f %10d %8d\n", mode, median(rps), median(cpu),
        median(conns), median(tokens)))
end
sim:stop()
