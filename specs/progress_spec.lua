-- Output a person can follow during `cxone apply`: without a terminal, one line per step as it
-- finishes (not when its whole wave ends) and a summary; on a terminal, a live line with steps
-- done/total, requests, rate-limit waits and an ETA; with --json, stdout holds only the JSON
-- document. Against cxone-sim through the real CLI; synchronised on the CLI's own output.
-- Lua 5.1-compatible (the spec also runs under LuaJIT and 5.3; the CLI is always lua5.4).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]
local write_file, read_file, wait_for = simlib.write_file, simlib.read_file, simlib.wait_for

local function book(flag, concurrency)
    local steps = {
        ("{ action = %q, tier = 'production', variables = { %s = '1' } }"):format(A1, flag),
        ("{ action = %q, tier = 'production', variables = { %s = '1' } }"):format(A2, flag),
        ("{ action = %q, tier = 'production', variables = { %s = '1' } }"):format(A3, flag),
        ("{ action = %q, tier = 'development', variables = { %s = '1' } }"):format(A2, flag),
    }
    return "return { concurrency = " .. concurrency .. ", steps = {\n  " .. table.concat(steps, ",\n  ") .. "\n} }\n"
end

describe("apply progress", function()
    local sim, dir, env
    simlib.suite({ clean = "files", env = "each" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)

    it("--json without a terminal: stdout is one JSON document, stderr a line per step and a summary", function()
        local pb = dir .. "/p.lua"
        write_file(pb, book("JSON_FLAG", 2))
        local code, out, err = simlib.cxone({ "apply", "--yes", "--json", pb }, env)
        assert.equals(0, code, err)
        local doc = assert(json.decode(out), "stdout is not one JSON document: " .. out)
        assert.equals(4, doc.counts.applied)
        for k = 1, 4 do
            assert.matches(("[%d/4] "):format(k), err, 1, true)
        end
        assert.matches("production: applied (1 change)", err, 1, true)
        assert.is_nil(err:find("\r", 1, true)) -- no terminal: nothing rewritten in place
    end)

    it("no masked value in the progress, the report, the trail's intents or the ledger (canary)", function()
        local CANARY = "progress-canary-5e1d7a0b"
        local pb = dir .. "/canary.lua"
        write_file(pb, "return { concurrency = 1, steps = {\n"
            .. ("  { action = %q, tier = 'staging', variables = { C_KEY = { value = %q, masked = true } } },\n"):format(A1, CANARY)
            .. ("  { action = %q, tier = 'staging', variables = { C_KEY = { value = %q, masked = true } } },\n"):format(A2, CANARY)
            .. "} }\n")
        env.CXONE_STATE_FILE = dir .. "/ledger.json"
        local code, out, err = simlib.cxone({ "apply", "--yes", pb }, env)
        assert.equals(0, code, err)
        assert.matches("[2/2]", err, 1, true)
        assert.matches("apply.intent", read_file(dir .. "/audit.jsonl"), 1, true)
        for what, text in pairs({ stdout = out, stderr = err, trail = read_file(dir .. "/audit.jsonl"),
                                  ledger = read_file(dir .. "/ledger.json") }) do
            assert.is_nil(text:find(CANARY, 1, true), "the masked value is in the " .. what)
        end
    end)

    it("without a terminal, a step's line comes as it finishes, before the rest of its wave", function()
        local pb = dir .. "/p.lua"
        write_file(pb, book("LIVE_FLAG", 1))
        -- the second write of the (single) wave is slowed
        sim:fault{ method = "PATCH", path = "/api/v2/integration/actions/" .. A2 .. "/environments/prod/variables",
                   kind = "delay", delay_ms = 4000, count = 1 }
        local p = simlib.spawn({ "apply", "--yes", pb }, env, dir)
        wait_for(function() return p.err():find("[1/4]", 1, true) end, "the first step's line")
        -- the wave is still being written: no outcome for the slowed step yet, the run goes on
        assert.is_nil(p.done())
        assert.is_nil(p.err():find("[2/4]", 1, true))
        local rc = wait_for(p.done, "the run's end")
        assert.equals(0, tonumber(rc))
        assert.matches("[4/4]", p.err(), 1, true)
    end)

    it("on a terminal: a live line with steps, requests, rate-limit waits and an ETA", function()
        local pb = dir .. "/p.lua"
        write_file(pb, book("TTY_FLAG", 1))
        local code, out = simlib.cxone_pty({ "apply", "--yes", pb }, env)
        assert.equals(0, code, out)
        assert.matches("\rapplying 1/4", out, 1, true)
        assert.matches("applying 4/4", out, 1, true)
        assert.matches("rate-limit waits 0.0s (0 x 429)", out, 1, true)
        assert.matches("ETA", out, 1, true)
        assert.matches("requests", out, 1, true)
    end)
end)
