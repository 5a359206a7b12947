-- The client against its floor, `cxone apply --yes` at 100/500/2000 actions, and cxone-sim's PATCH
-- cost, all against cxone-sim on loopback. Medians of REPS runs (BENCH_REPS, default 5).
--   lua5.4 bench/apply_bench.lua SRC BUILD   (LUA_PATH/LUA_CPATH/CXONE_SIM_BIN as bench/run.sh sets)
-- CPU is user + system time (the client's from getrusage via /usr/bin/time or os.clock, the sim's
-- from /proc/PID/stat); requests, connections and tokens are counted by the sim.
local core = require "cxone.core"
local simlib = require "support.sim"
local json = require("cjson.safe").new()
local D = simlib.DEMO
local shq = simlib.shquote

local SRC, BUILD = assert(arg[1], "SRC"), assert(arg[2], "BUILD")
local REPS = tonumber(os.getenv("BENCH_REPS") or "") or 5
local PARTS = os.getenv("BENCH_PARTS") or "floor,apply,sim" -- which sections to run
local SIZES = { 100, 500, 2000 }
local FLOOR_N = 2000
local FLOOR_BIN = BUILD .. "/bench/cxone-floor"

local function median(t)
    local s = {}
    for i, v in ipairs(t) do s[i] = v end
    table.sort(s)
    local n = #s
    return n % 2 == 1 and s[(n + 1) / 2] or (s[n / 2] + s[n / 2 + 1]) / 2
end

local function capture(cmd)
    local p = assert(io.popen(cmd, "r"))
    local out = p:read("*a")
    p:close()
    return out
end

local CLK_TCK = tonumber(capture("getconf CLK_TCK")) or 100

-- CPU seconds (user + system) a process has used so far.
local function proc_cpu(pid)
    local f = assert(io.open("/proc/" .. pid .. "/stat"))
    local s = f:read("*a")
    f:close()
    local rest = s:match("%) (.*)$") -- after the command name, which may hold spaces
    local fields = {}
    for w in rest:gmatch("%S+") do fields[#fields + 1] = w end
    -- fields[1] is field 3 (state): utime is field 14, stime field 15
    return (tonumber(fields[12]) + tonumber(fields[13])) / CLK_TCK
end

local action_id = simlib.many_action_id
local function state_doc(n) return simlib.many_actions_state(n, "bench-") end

local function put_state(sim, n)
    local status = sim:curl("PUT", "/_sim/state", assert(json.encode(state_doc(n))))
    assert(status == 200, "PUT /_sim/state -> " .. tostring(status))
end

local function token(sim)
    local out = capture("curl -s -u " .. shq(D.client_id .. ":" .. D.client_secret)
        .. " -d grant_type=client_credentials " .. shq(sim.url .. "/oauth/token"))
    return assert(json.decode(out)).access_token
end

-- Runs the floor program; returns {get = us, patch = us} (client CPU per request).
local function floor(sim, tok, n, action, phases, env)
    local out = capture(table.concat({ shq(FLOOR_BIN), shq(sim.url), shq(tok), tostring(n), shq(action),
        shq(phases or "get,patch"), shq(env or "dev") }, " "))
    local r = {}
    for what, us in out:gmatch("(%a+) ([%d.]+)") do r[what] = tonumber(us) end
    assert(r.get or r.patch, "cxone-floor failed: " .. out)
    return r
end

local function fmt_row(cols, widths)
    local out = {}
    for i, c in ipairs(cols) do out[i] = ("%" .. widths[i] .. "s"):format(c) end
    return table.concat(out, " ")
end

io.write(("client against cxone-sim (%s, %s): medians of %d runs\n"):format(_VERSION, core._VERSION, REPS))

---------------------------------------------------------------------------------------------
-- 1. The floor and the client's CPU per request on the GET and PATCH paths
---------------------------------------------------------------------------------------------
local sim = simlib.start()
local tok = token(sim)
local CRM = D.actions[1]
local FG, FP
if PARTS:find("floor", 1, true) then
local floor_get, floor_patch, cli_get, cli_patch = {}, {}, {}, {}
local c = assert(core.client{ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret })
assert(c:get(CRM, "dev")) -- token and connection
for r = 1, REPS do
    local f = floor(sim, tok, FLOOR_N, CRM)
    floor_get[r], floor_patch[r] = f.get, f.patch
    local t0 = os.clock()
    for _ = 1, FLOOR_N do assert(c:get(CRM, "dev")) end
    cli_get[r] = (os.clock() - t0) / FLOOR_N * 1e6
    t0 = os.clock()
    for i = 1, FLOOR_N do
        assert(c:patch({ actionId = CRM, environmentId = "dev", variables = {
            { name = "FLOOR_N", value = tostring(i), masked = false },
            { name = "FLOOR_KEY", value = "floor-secret-1", masked = true } } }))
    end
    cli_patch[r] = (os.clock() - t0) / FLOOR_N * 1e6
end
local cst = c:stats()
c:close()
FG, FP = median(floor_get), median(floor_patch)
io.write(("\nCPU per request, sequential keep-alive, %d requests per run\n"):format(FLOOR_N))
local W1 = { -24, 12, 12, 10 }
io.write(fmt_row({ "path", "floor us", "client us", "ratio" }, W1), "\n")
io.write(fmt_row({ "GET", ("%.1f"):format(FG), ("%.1f"):format(median(cli_get)),
    ("%.2fx"):format(median(cli_get) / FG) }, W1), "\n")
io.write(fmt_row({ "PATCH", ("%.1f"):format(FP), ("%.1f"):format(median(cli_patch)),
    ("%.2fx"):format(median(cli_patch) / FP) }, W1), "\n")
io.write(("(client: %d requests over %d connection(s), %d token request(s))\n"):format(
    cst.requests, cst.connections, cst.token_requests))
end

---------------------------------------------------------------------------------------------
-- 2. cxone apply --yes for 100, 500 and 2000 actions (promote-many: 2 GETs + 1 PATCH each)
---------------------------------------------------------------------------------------------
local function apply_run(n, release)
    local dir = simlib.tmpdir()
    local env = simlib.sim_env(sim, dir)
    env.CXONE_MANY_N, env.CXONE_MANY_RELEASE = tostring(n), release
    local timef = dir .. "/time"
    local s0, c0 = sim:stats(), proc_cpu(sim.pid)
    local code = capture(simlib.with_env(env) .. " /usr/bin/time -f '%e %U %S %M' -o " .. shq(timef)
        .. " lua5.4 " .. shq(SRC .. "/bench/cli.lua") .. " apply --yes " .. shq(SRC .. "/examples/promote-many.lua")
        .. " >" .. shq(dir .. "/out") .. " 2>" .. shq(dir .. "/err") .. "; echo $?")
    local c1, s1 = proc_cpu(sim.pid), sim:stats()
    local tf = simlib.read_file(timef) or ""
    local wall, user, sys, rss = tf:match("([%d.]+) ([%d.]+) ([%d.]+) (%d+)%s*$")
    if tonumber(code) ~= 0 or not wall then
        error(("apply of %d actions failed (exit %s): %s"):format(n, code, simlib.read_file(dir .. "/err") or ""))
    end
    os.execute("rm -rf " .. shq(dir))
    return { wall = tonumber(wall), cpu = tonumber(user) + tonumber(sys), server = c1 - c0,
             -- every request, the token's included (/_sim calls are not counted); every connection,
             -- minus the one of the /_sim/stats call that read s1
             requests = s1.requests - s0.requests, conns = s1.connections - s0.connections - 1,
             tokens = s1.tokens_issued - s0.tokens_issued, rss_mb = tonumber(rss) / 1024 }
end

io.write(("\ncxone apply --yes examples/promote-many.lua (concurrency 16), every step changing\n"))
local W2 = { 8, 9, 10, 10, 9, 11, 6, 7, 9, 9 }
io.write(fmt_row({ "actions", "wall s", "client s", "server s", "requests", "req/action", "conns", "tokens",
    "RSS MB", "KB/step" }, W2), "\n")
local results = {}
local base_rss
for _, n in ipairs(PARTS:find("apply", 1, true) and SIZES or {}) do
    put_state(sim, n)
    local runs = { wall = {}, cpu = {}, server = {}, requests = {}, conns = {}, tokens = {}, rss_mb = {} }
    for r = 1, REPS do
        local m = apply_run(n, ("bench-%d-%d"):format(n, r))
        for k, v in pairs(m) do runs[k][r] = v end
    end
    local m = {}
    for k, v in pairs(runs) do m[k] = median(v) end
    results[n] = m
    base_rss = base_rss or m.rss_mb
    io.write(fmt_row({ n, ("%.2f"):format(m.wall), ("%.2f"):format(m.cpu), ("%.2f"):format(m.server),
        ("%d"):format(m.requests), ("%.2f"):format((m.requests - m.tokens) / n), ("%d"):format(m.conns), ("%d"):format(m.tokens),
        ("%.1f"):format(m.rss_mb), n == SIZES[1] and "-" or ("%.1f"):format((m.rss_mb - base_rss) * 1024 / (n - SIZES[1])) },
        W2), "\n")
end
local r2000, r500 = results[2000], results[500]
if r2000 and r500 then io.write(("2000/500 actions: wall %.2fx, client CPU %.2fx (linear: 4x)\n"):format(r2000.wall / r500.wall,
    r2000.cpu / r500.cpu)) end
-- promote-many reads two environments and writes one per step: the floor for that mix
if r2000 and FG then
    local mix = (2 * FG + FP) / 3
    local per_req = r2000.cpu / (r2000.requests - r2000.tokens) * 1e6
    io.write(("apply path CPU per request at 2000 actions: %.1f us, %.2fx the floor for its mix (2 GET : 1 PATCH, %.1f us)\n")
        :format(per_req, per_req / mix, mix))
end
io.write("(requests: all HTTP requests, the token's included; req/action: API requests per action;\n"
    .. " KB/step: peak RSS above the 100-action run, per extra step)\n")
sim:stop()

---------------------------------------------------------------------------------------------
-- 3. cxone-sim: the cost of one PATCH at 100 and 2000 actions, without and with --state
---------------------------------------------------------------------------------------------
local K = 500
io.write(("\ncxone-sim: one PATCH (%d sequential PATCHes per run, each changing a value)\n"):format(K))
local W3 = { -22, 8, 14, 14 }
io.write(fmt_row({ "sim", "actions", "server CPU us", "wall us" }, W3), "\n")
local function patch_cost(with_state, n)
    local dir = simlib.tmpdir()
    local s = simlib.start({ args = with_state and { "--state", dir .. "/state.json" } or nil })
    put_state(s, n)
    local t = token(s)
    local cpu, wall = {}, {}
    for r = 1, REPS do
        local c0, w0 = proc_cpu(s.pid), simlib.now()
        floor(s, t, K, action_id(1), "patch", "staging")
        local w1, c1 = simlib.now(), proc_cpu(s.pid)
        cpu[r], wall[r] = (c1 - c0) / K * 1e6, (w1 - w0) / K * 1e6
    end
    s:stop()
    os.execute("rm -rf " .. shq(dir))
    return median(cpu), median(wall)
end
for _, with_state in ipairs(PARTS:find("sim", 1, true) and { false, true } or {}) do
    for _, n in ipairs({ 100, 2000 }) do
        local cpu, wall = patch_cost(with_state, n)
        io.write(fmt_row({ with_state and "--state (journal)" or "in memory", n, ("%.0f"):format(cpu),
            ("%.0f"):format(wall) }, W3), "\n")
    end
end
