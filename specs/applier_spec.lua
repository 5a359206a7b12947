-- cxone.applier through the library (cxone.client): against a server without ETags, a plan's own
-- read stands for the re-read before writing only while it is younger than max_read_age; the
-- option is checked; intents precede every write. Against cxone-sim.
-- Lua 5.1-compatible (LuaJIT, 5.3, 5.4).
local json = require("cjson.safe")
local cxone = require("cxone")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1, A2 = D.actions[1], D.actions[2]

describe("cxone.applier", function()
    local sim, dir
    simlib.suite({ clean = "files" }, function(s) sim, dir = s.sim, s.dir end)
    before_each(function()
        assert.equals(200, (sim:post_json("/_sim/config", { etag = false })))
    end)

    local function client(opts)
        return assert(cxone.client(simlib.client_opts(sim,
            { audit_log = dir .. "/audit.jsonl", state_file = dir .. "/ledger.json" }, opts)))
    end
    local function steps(flag)
        return { { action = A1, tier = "production", variables = { [flag] = "1" } },
                 { action = A2, tier = "production", variables = { [flag] = "1" } } }
    end

    it("max_read_age must be a number of seconds, 0 or more", function()
        local base = { base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret, audit_log = false }
        for _, bad in ipairs({ -1, "60" }) do
            base.max_read_age = bad
            local c, err, code = cxone.client(base)
            assert.is_nil(c)
            assert.equals("config", code)
            assert.matches("max_read_age", err, 1, true)
        end
    end)

    it("a plan younger than max_read_age is written without a re-read; an older one is re-read", function()
        local c = client()
        local rep = c:plan_all({ steps = steps("FRESH") })
        assert.is_true(rep.ok, rep.message)
        local gets = sim:count("GET")
        c:apply_all(rep)
        assert.is_true(rep.ok, rep.message)
        assert.equals(gets, sim:count("GET")) -- the plan's own reads stood for the re-read
        -- a plan whose reads are older than the age: each target is read again
        rep = c:plan_all({ steps = steps("AGED") })
        for _, p in pairs(rep.plans) do p.read_at = p.read_at - 61 end
        gets = sim:count("GET")
        c:apply_all(rep)
        assert.is_true(rep.ok, rep.message)
        assert.equals(gets + 2, sim:count("GET"))
        -- a per-call age of 0: always re-read
        rep = c:plan_all({ steps = steps("ZERO") })
        gets = sim:count("GET")
        c:apply_all(rep, { max_read_age = 0 })
        assert.equals(gets + 2, sim:count("GET"))
        c:close()
    end)

    it("a stale plan's re-read catches a foreign write; a fresh one's intent precedes its write", function()
        local c = client({ max_read_age = 0 })
        local rep = c:plan_all({ steps = { { action = A1, tier = "production", variables = { LOG_LEVEL = "warn" } } } })
        -- someone else writes the same variable after the plan
        local other = client({ audit_log = false, state_file = false })
        local r2 = other:plan_all({ steps = { { action = A1, tier = "production", variables = { LOG_LEVEL = "error" } } } })
        other:apply_all(r2)
        assert.is_true(r2.ok, r2.message)
        other:close()
        c:apply_all(rep)
        assert.is_false(rep.ok)
        assert.equals("conflict", rep.steps[1].code)
        -- the trail: no intent for the write that was not made
        local intents = 0
        for line in (simlib.read_file(dir .. "/audit.jsonl") or ""):gmatch("[^\n]+") do
            if json.decode(line).event == "apply.intent" then intents = intents + 1 end
        end
        assert.equals(0, intents)
        c:close()
    end)
end)
