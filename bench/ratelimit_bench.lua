-- The client under a rate limit: `cxone apply --yes` of 100 single-step promotions to production
-- (baseline staging, bench/ratelimit_playbook.lua) against `cxone-sim --rate-limit R/s`, with and
-- without ETags, REPS runs per mode (BENCH_RL_REPS, default 3; BENCH_RL_RATE, default 20;
-- BENCH_RL_STEPS, default 100; BENCH_RL_CONCURRENCY, default the client's own; BENCH_RL_HEADERS
-- and BENCH_RL_RESET, the sim's --rate-limit-headers and --rate-limit-reset, default all, delta). Prints medians of: wall seconds, API requests sent (reads and
-- writes; not the token request, not builds), how many of them got 429 and their share, API
-- requests per step, and wall / (requests / R), which is 1.0 for a client that sends exactly at
-- the limit. Every run's `cxone apply` exit status is printed; a failed run is marked.
--   lua5.4 bench/ratelimit_bench.lua SRC BUILD   (LUA_PATH/CXONE_SIM_BIN as bench/run.sh sets)
-- Figures are counted by the sim (/_sim/stats kinds), not by the client.
local simlib = require "support.sim"
local json = require("cjson.safe").new()
local shq = simlib.shquote

local SRC, BUILD = assert(arg[1], "SRC"), assert(arg[2], "BUILD")
local REPS = tonumber(os.getenv("BENCH_RL_REPS") or "") or 3
local RATE = tonumber(os.getenv("BENCH_RL_RATE") or "") or 20
local STEPS = tonumber(os.getenv("BENCH_RL_STEPS") or "") or 100
local CONCURRENCY = os.getenv("BENCH_RL_CONCURRENCY") or ""
local HEADERS = os.getenv("BENCH_RL_HEADERS") or "all"
local RESET = os.getenv("BENCH_RL_RESET") or "delta"
local TIMEOUT = tonumber(os.getenv("BENCH_RL_TIMEOUT") or "") or 60 -- seconds one apply may take (then: failed)

local function median(t)
    local s = {}
    for i, v in ipairs(t) do s[i] = v end
    table.sort(s)
    local n = #s
    if n == 0 then return 0 / 0 end
    return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end

-- STEPS actions whose staging holds what the playbook promotes and whose production is empty, so
-- that every step writes.
local function state_doc() return simlib.many_actions_state(STEPS, "rl-bench-") end
local STATE = assert(json.encode(state_doc()))

-- What the sim counted between two /_sim/stats answers.
local function delta(s0, s1)
    local function d(kind, field) return s1.kinds[kind][field] - s0.kinds[kind][field] end
    return { reads = d("read", "requests"), writes = d("write", "requests"), builds = d("build", "requests"),
             tokens = d("token", "requests"), limited = d("read", "rate_limited") + d("write", "rate_limited") }
end

local sim = simlib.start({ args = { "--rate-limit", RATE .. "/s", "--rate-limit-headers", HEADERS,
                                    "--rate-limit-reset", RESET } })

-- One apply from a fresh data set and a full bucket; returns the run's figures.
local function run(etag, rep)
    local status = sim:curl("PUT", "/_sim/state", STATE)
    assert(status == 200, "PUT /_sim/state -> " .. tostring(status))
    -- setting the rate starts every client's bucket afresh (full), as a new run would find it
    status = sim:post_json("/_sim/config", { etag = etag, rate_limit = RATE })
    assert(status == 200, "POST /_sim/config -> " .. tostring(status))
    local dir = simlib.tmpdir()
    local env = simlib.sim_env(sim, dir)
    env.BENCH_RL_STEPS, env.BENCH_RL_CONCURRENCY, env.CXONE_BUILD = tostring(STEPS), CONCURRENCY, BUILD
    local s0 = sim:stats()
    local cmd = simlib.with_env(env) .. " /usr/bin/time -f '%e' -o " .. shq(dir .. "/time")
        .. " timeout " .. TIMEOUT .. " " .. simlib.cxone_cmd({ "apply", "--yes", SRC .. "/bench/ratelimit_playbook.lua" })
        .. " </dev/null >" .. shq(dir .. "/out") .. " 2>" .. shq(dir .. "/err") .. "; echo $?"
    local code = tonumber((simlib.capture(cmd):match("(%d+)")))
    local s1 = sim:stats()
    local m = delta(s0, s1)
    local tf = simlib.read_file(dir .. "/time") or ""
    m.wall = tonumber(tf:match("([%d.]+)%s*$"))
    m.code = code
    if code == 124 then
        m.err = ("stopped after %d s"):format(TIMEOUT)
    elseif code ~= 0 then
        local err = (simlib.read_file(dir .. "/err") or ""):gsub("%s+$", "")
        m.err = err:match("([^\n]*)$")
    end
    os.execute("rm -rf " .. shq(dir))
    m.api = m.reads + m.writes
    m.share = m.api > 0 and 100 * m.limited / m.api or 0
    m.per_step = m.api / STEPS
    m.ok_step = (m.api - m.limited) / STEPS
    m.ratio = m.wall and m.api > 0 and m.wall / (m.api / RATE) or 0 / 0
    io.write(("  %-10s run %d: exit %d%s  wall %.2f s  reads %d  writes %d  429 %d  builds %d  tokens %d\n"):format(
        etag and "ETags" or "no ETags", rep, code or -1, code == 0 and "" or " FAILED", m.wall or -1, m.reads,
        m.writes, m.limited, m.builds, m.tokens))
    if m.err then io.write("    stderr: ", m.err, "\n") end
    return m
end

io.write(("cxone apply --yes: %d single-step promotions to production (baseline staging), concurrency %s,\n"
    .. "against cxone-sim --rate-limit %s/s (headers: %s, reset: %s); medians of %d runs per mode\n"):format(STEPS,
    CONCURRENCY ~= "" and CONCURRENCY or "the client's default", RATE, HEADERS, RESET, REPS))
local rows = {}
for _, etag in ipairs({ true, false }) do
    local runs = {}
    for r = 1, REPS do runs[r] = run(etag, r) end
    local med, failed = {}, 0
    for _, k in ipairs({ "wall", "api", "limited", "share", "per_step", "ok_step", "ratio" }) do
        local v = {}
        for i, m in ipairs(runs) do v[i] = m[k] or 0 / 0 end
        med[k] = median(v)
    end
    for _, m in ipairs(runs) do if m.code ~= 0 then failed = failed + 1 end end
    rows[#rows + 1] = { name = etag and "ETags" or "no ETags", m = med, failed = failed }
end
sim:stop()

io.write("\n")
local W = "%-10s %7s %9s %6s %7s %9s %12s %13s  %s\n"
io.write(W:format("server", "wall s", "requests", "429", "429 %", "req/step", "non-429/step", "wall/(req/R)",
    "exit"))
for _, row in ipairs(rows) do
    local m = row.m
    io.write(W:format(row.name, ("%.2f"):format(m.wall), ("%.0f"):format(m.api), ("%.0f"):format(m.limited),
        ("%.1f"):format(m.share), ("%.2f"):format(m.per_step), ("%.2f"):format(m.ok_step), ("%.2f"):format(m.ratio),
        row.failed == 0 and "all 0" or ("%d of %d runs FAILED"):format(row.failed, REPS)))
end
io.write("(requests: API reads + writes the sim received, 429s included; not the token request, not builds;\n"
    .. " req/step: requests / steps; non-429/step: the same without the 429s (the reads and writes a step\n"
    .. " needs); wall/(req/R): 1.00 = sending exactly at the limit. Targets: <= 1.15, <= 2 % 429s, <= 3 req/step)\n")
