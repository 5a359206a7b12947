-- Counts, never timings: requests per action, TCP connections, token requests and ledger writes
-- per run, for `cxone plan`/`cxone apply --yes` over many actions and for cxone.Client's batch,
-- against cxone-sim on loopback. (Timings belong in bench/, see `make bench`.)
-- Lua 5.1-compatible (the spec also runs under LuaJIT and 5.3; the CLI is always lua5.4).
local json = require("cjson.safe").new()
local core = require("cxone.core")
local simlib = require("support.sim")
local D = simlib.DEMO
local shq = simlib.shquote

local N = 40          -- actions in the playbook (examples/promote-many.lua, concurrency 16)
local CONCURRENCY = 16

local action_id = simlib.many_action_id

local function load_actions(sim, n)
    local doc = simlib.many_actions_state(n, "count-")
    assert.equal(200, (sim:curl("PUT", "/_sim/state", assert(json.encode(doc)))))
end

-- The module path for the lua5.4 CLI: under Lua 5.4 the tree being tested; under 5.3 or LuaJIT
-- its sibling 5.4 tree (build/lua5.3 -> build/lua5.4) when built, else build/lua5.4 (as bin/cxone).
local function cli_cpath()
    local cpath = os.getenv("LUA_CPATH") or ""
    if _VERSION == "Lua 5.4" and not rawget(_G, "jit") and cpath ~= "" then return cpath end
    local first = cpath:match("^([^;]+)") or ""
    local sibling = first:gsub("/lua5%.3/%?%.so$", "/lua5.4/?.so"):gsub("/luajit/%?%.so$", "/lua5.4/?.so")
    if sibling ~= first and simlib.read_file((sibling:gsub("%?", "cxone/core"))) then return sibling .. ";;" end
    return simlib.ROOT .. "/build/lua5.4/?.so;;"
end

-- The CLI in a child lua5.4, with core.state_open wrapped so that every write to the ledger
-- (append or replace) is counted; the counts land in a JSON file.
local WRAPPER = [[
local core = require("cxone.core")
local counts = { append = 0, replace = 0 }
local open = core.state_open
core.state_open = function(...)
    local f, err, code = open(...)
    if not f then return f, err, code end
    return setmetatable({}, { __index = function(_, k)
        local v = f[k]
        if type(v) ~= "function" then return v end
        return function(_, ...)
            if counts[k] then counts[k] = counts[k] + 1 end
            return v(f, ...)
        end
    end })
end
local code = require("cxone.cli").main(arg)
local out = assert(io.open(os.getenv("COUNTS_OUT"), "w"))
out:write(("{\"append\":%d,\"replace\":%d}"):format(counts.append, counts.replace))
out:close()
os.exit(code)
]]

describe("counts", function()
    local sim, dir, wrapper
    simlib.suite({ reset = false, files = { ["wrapper.lua"] = WRAPPER } }, function(s)
        sim, dir, wrapper = s.sim, s.dir, s.dir .. "/wrapper.lua"
    end)

    -- Runs `cxone ARGS` over the promote-many playbook; returns exit code, the sim's counts for
    -- the run, the ledger writes, and stderr.
    local function cli(args, release)
        local env = simlib.sim_env(sim, dir)
        env.CXONE_MANY_N, env.CXONE_MANY_RELEASE = tostring(N), release
        env.COUNTS_OUT = dir .. "/counts.json"
        env.LUA_CPATH = cli_cpath()
        env.LUA_PATH = simlib.ROOT .. "/lua/?.lua;" .. simlib.ROOT .. "/lua/?/init.lua;;"
        os.remove(env.COUNTS_OUT)
        local parts = {}
        for i, a in ipairs(args) do parts[i] = shq(a) end
        local s0 = sim:stats()
        local code = tonumber((simlib.capture(simlib.with_env(env) .. " lua5.4 " .. shq(wrapper) .. " "
            .. table.concat(parts, " ") .. " " .. shq(simlib.ROOT .. "/examples/promote-many.lua")
            .. " >" .. shq(dir .. "/out") .. " 2>" .. shq(dir .. "/err") .. " </dev/null; echo $?"):match("(%d+)")))
        local s1 = sim:stats()
        local function route(st, which)
            local n = 0
            for _, c in pairs(st.routes[which] or {}) do n = n + c end
            return n
        end
        local V = "/api/v2/integration/actions/{actionId}/environments/{envId}/variables"
        local counts = {
            get = route(s1, "GET " .. V) - route(s0, "GET " .. V),
            patch = route(s1, "PATCH " .. V) - route(s0, "PATCH " .. V),
            build = route(s1, "POST /api/v2/integration/actions/{actionId}/build")
                - route(s0, "POST /api/v2/integration/actions/{actionId}/build"),
            tokens = s1.tokens_issued - s0.tokens_issued,
            conns = s1.connections - s0.connections - 1, -- minus the /_sim/stats call reading s1
        }
        local ledger = json.decode(simlib.read_file(dir .. "/counts.json") or "null")
        return code, counts, ledger, simlib.read_file(dir .. "/err") or ""
    end

    it("apply --yes: each target and baseline read once, each step written once, one token", function()
        load_actions(sim, N)
        local code, c, ledger, err = cli({ "apply", "--yes" }, "count-1")
        assert.equal(0, code, err)
        assert.equal(2 * N, c.get)          -- per action: the production target and its staging baseline
        assert.equal(N, c.patch)            -- one write per step, no re-plan, no re-read
        assert.equal(0, c.build)            -- production builds nothing
        assert.equal(1, c.tokens)
        assert.is_true(c.conns >= 1 and c.conns <= CONCURRENCY, "connections: " .. c.conns)
        -- the ledger: nothing to record (no masked value, production queues no build), so no
        -- write at all (a run that records: one durable append per wave and one compaction)
        assert.is_table(ledger, "ledger counts")
        assert.equal(0, ledger.append)
        assert.equal(0, ledger.replace)
    end)

    it("a re-run finds nothing to change: reads only, no write, no ledger write", function()
        local code, c, ledger, err = cli({ "apply", "--yes" }, "count-1")
        assert.equal(0, code, err)
        assert.equal(2 * N, c.get)
        assert.equal(0, c.patch)
        assert.equal(1, c.tokens)
        assert.is_true(c.conns <= CONCURRENCY, "connections: " .. c.conns)
        assert.is_table(ledger)
        assert.equal(0, ledger.append)
        assert.equal(0, ledger.replace)
    end)

    it("plan reads each target and baseline once and writes nothing", function()
        local code, c, ledger, err = cli({ "plan" }, "count-2")
        assert.equal(2, code, err) -- changes pending
        assert.equal(2 * N, c.get)
        assert.equal(0, c.patch)
        assert.equal(1, c.tokens)
        assert.is_table(ledger)
        assert.equal(0, ledger.append)
        assert.equal(0, ledger.replace)
    end)

    describe("a server without ETags (issue 19: at most 3 requests per step)", function()
        before_each(function()
            load_actions(sim, N)
            assert.equal(200, (sim:post_json("/_sim/config", { etag = false })))
        end)
        after_each(function() assert.equal(200, (sim:post_json("/_sim/config", { etag = true }))) end)

        it("a fresh plan's own reads stand for the re-read: a target read, a baseline read, the write", function()
            local code, c, _, err = cli({ "apply", "--yes" }, "noetag-1")
            assert.equal(0, code, err)
            assert.equal(2 * N, c.get)   -- no 4th request per step
            assert.equal(N, c.patch)
            assert.matches("no ETag", err, 1, true)
            -- a re-run with nothing to change: reads only, at most 2 per step
            code, c, _, err = cli({ "apply", "--yes" }, "noetag-1")
            assert.equal(0, code, err)
            assert.is_true(c.get <= 2 * N, "gets: " .. c.get)
            assert.equal(0, c.patch)
        end)

        it("--max-read-age 0: every target is re-read just before its write", function()
            local code, c, _, err = cli({ "apply", "--yes", "--max-read-age", "0" }, "noetag-2")
            assert.equal(0, code, err)
            assert.equal(3 * N, c.get)
            assert.equal(N, c.patch)
        end)

        it("a saved plan is always re-read before writing", function()
            local env = simlib.sim_env(sim, dir)
            env.CXONE_MANY_N, env.CXONE_MANY_RELEASE = tostring(N), "noetag-3"
            local plan = dir .. "/noetag-plan.json"
            os.remove(plan)
            local code, _, err = simlib.cxone({ "plan", "--out", plan, simlib.ROOT .. "/examples/promote-many.lua" }, env)
            assert.equal(2, code, err)
            local gets, patches = sim:count("GET"), sim:count("PATCH")
            code, _, err = simlib.cxone({ "apply", plan }, env)
            assert.equal(0, code, err)
            assert.equal(N, sim:count("PATCH") - patches)
            assert.equal(N, sim:count("GET") - gets) -- the re-read of each target, nothing else
        end)
    end)

    it("batch: requests counted once each, connections bounded by the concurrency, one token", function()
        load_actions(sim, N)
        local c = assert(core.client{ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret })
        local reqs = {}
        for i = 1, 3 * N do
            reqs[i] = { op = "get", action = action_id((i - 1) % N + 1), env = "staging" }
        end
        local s0 = sim:stats()
        local res = c:batch(reqs, { concurrency = 4 })
        local s1 = sim:stats()
        for i = 1, #reqs do assert.is_true(res[i].ok, res[i].error) end
        local st = c:stats()
        assert.equal(3 * N + 1, s1.requests - s0.requests) -- and the token request (/_sim calls do not count)
        assert.equal(1, s1.tokens_issued - s0.tokens_issued)
        local conns = s1.connections - s0.connections - 1
        assert.is_true(conns >= 1 and conns <= 4, "connections: " .. conns)
        assert.equal(conns, st.connections)
        assert.equal(1, st.token_requests)
        c:close()
    end)
end)
