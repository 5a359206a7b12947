-- cxone.client: plans (rendering, masked values), apply (audit, webhook, builds, conflicts),
-- promote (preflight, batch writes with stop_on_failure, idempotent re-runs), dry runs and
-- metrics. Runs against cxone-sim on loopback. Lua 5.1-compatible (LuaJIT, 5.3, 5.4).
local json = require("cjson.safe")
local core = require("cxone.core")
local cxone = require("cxone")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]

local read_file, env_vars = simlib.read_file, simlib.env_vars

local function new_client(sim, extra)
    return assert(cxone.client(simlib.client_opts(sim, extra)))
end

describe("cxone.client", function()
    local sim, dir
    simlib.suite({}, function(s) sim, dir = s.sim, s.dir end)

    it("reports a missing setting naming the option and variable, code config", function()
        local c, msg, code = require("cxone.client").new({ base_url = sim.url, client_id = "x",
            client_secret = "y", access_key_id = "k" })
        assert.is_nil(c)
        assert.equals("config", code)
        assert.matches("CXONE_ACCESS_KEY_SECRET", msg, 1, true)
    end)

    it("renders a plan like terraform: symbols, aligned names, old → new, masked as ***", function()
        local c = new_client(sim, { audit_log = dir .. "/render.jsonl" })
        local plan = assert(c:plan{ action = A1, tier = "production", baseline = "staging", variables = {
            TIMEOUT_MS = "3000", LOG_LEVEL = "info", NEW_FLAG = "on",
            CRM_API_KEY = { value = "prod-secret-value-1", masked = true },
            EXTRA_SECRET = { value = "another-secret-99", masked = true },
        } })
        local text = tostring(plan)
        assert.matches("  %* CRM_API_KEY   %*%*%*", text)
        assert.matches('  ~ TIMEOUT_MS    "2500" → "3000"', text, 1, true)
        assert.matches('  = LOG_LEVEL     "info"', text, 1, true)
        assert.matches('  + NEW_FLAG      "on"', text, 1, true)
        assert.matches("  + EXTRA_SECRET  ***", text, 1, true)
        assert.matches("Plan: 2 to add, 1 to change, 1 to set (masked), 1 unchanged.", text, 1, true)
        assert.falsy(text:find("prod-secret-value-1", 1, true))
        assert.falsy(text:find("another-secret-99", 1, true))
        assert.falsy(text:find("prd-crm-key", 1, true)) -- the sim's stored plaintext
        assert.equals(4, plan.changes)
        assert.matches('^".+"$', plan.etag)
        -- drift staging → prod is part of the plan
        assert.equals(4, plan.drift:count())
        assert.matches("drift staging → production", text, 1, true)
        assert.equals(0, sim:count("PATCH"))
    end)

    it("refuses invalid variables with every violation, merged against the target (50 limit)", function()
        local c = new_client(sim)
        local vars = {}
        for i = 1, 46 do vars[("V_%02d"):format(i)] = "x" end -- prod has 4: 50 after the merge
        assert.truthy(c:plan{ action = A1, tier = "prod", variables = vars })
        vars.V_47 = "x"
        local p, msg, code = c:plan{ action = A1, tier = "prod", variables = vars }
        assert.is_nil(p)
        assert.equals("invalid", code)
        assert.matches("50", msg, 1, true)
        p, msg, code = c:plan{ action = A1, tier = "prod", variables = { bad = "x", SECRET = { value = "s", masked = true } } }
        assert.is_nil(p)
        assert.equals("invalid", code)
        assert.matches("variables[2].name must match", msg, 1, true) -- bad-name (sorted after SECRET)
        assert.matches("(SECRET) value is masked and must be at least 8 bytes", msg, 1, true)
        p, msg, code = c:plan{ action = A1, tier = "qa", variables = {} }
        assert.is_nil(p)
        assert.equals("invalid", code)
        assert.matches("unknown tier", msg, 1, true)
    end)

    it("applies: writes, queues a build when the tier builds, audits names only, sends a webhook", function()
        local log = dir .. "/apply.jsonl"
        local c = new_client(sim, { audit_log = log, webhook_url = sim.url .. "/_sim/webhooks/apply",
            webhook_secret = "hook-secret-1" })
        local builds = sim:stats().builds_queued
        local plan = assert(c:plan{ action = A2, tier = "staging", variables = {
            RETRY_LIMIT = "4", PAY_TOKEN = { value = "super-secret-pay-token", masked = true } } })
        local r = assert(c:apply(plan))
        assert.equals("applied", r.status)
        assert.is_string(r.build_id)
        assert.equals(builds + 1, sim:stats().builds_queued)
        local vars = env_vars(sim:state(), A2, "staging")
        assert.equals("4", vars.RETRY_LIMIT.value)
        assert.equals("super-secret-pay-token", vars.PAY_TOKEN.value)
        assert.is_true(vars.PAY_TOKEN.masked)
        assert.equals("Retries on 5xx", vars.RETRY_LIMIT.description) -- kept
        c:close()
        -- audit: one success record with names, never values
        assert.is_true(assert(core.audit_verify(log)).ok)
        local text = read_file(log)
        assert.falsy(text:find("super-secret-pay-token", 1, true))
        assert.falsy(text:find('"4"', 1, true))
        local recs = {}
        for line in text:gmatch("[^\n]+") do recs[#recs + 1] = json.decode(line) end
        assert.equals("apply.started", recs[1].event) -- written before anything else
        assert.same({ "PAY_TOKEN", "RETRY_LIMIT" }, recs[1].variables)
        assert.equals("apply.intent", recs[2].event) -- durable before the write started
        local rec = recs[3]
        assert.equals("apply", rec.event)
        assert.equals("success", rec.status)
        assert.equals(A2, rec.action_id)
        assert.equals("staging", rec.environment)
        assert.same({ "PAY_TOKEN", "RETRY_LIMIT" }, rec.variables)
        assert.equals(r.build_id, rec.build_id)
        assert.equals("apply.finished", recs[4].event)
        assert.equals(recs[4].hash, r.head) -- the result carries the trail's head
        -- webhook: signed, names only
        local ev = sim:get_json("/_sim/webhooks/apply").events
        assert.equals(1, #ev)
        assert.equals("cxone.apply.succeeded", ev[1].body.event)
        assert.is_string(ev[1].headers["x-cxone-signature"])
        assert.falsy(json.encode(ev[1].body):find("super-secret", 1, true))
    end)

    it("re-plans a masked value that landed as unchanged, until someone else writes", function()
        local log = dir .. "/ledger.jsonl"
        local SECRET = "ledger-secret-value-1"
        local step = { action = A3, tier = "production", variables = {
            SYNC_TOKEN = { value = SECRET, masked = true }, SYNC_MODE = "full" } }
        local c = new_client(sim, { audit_log = log })
        assert.equals("applied", assert(c:apply(assert(c:plan(step)))).status)
        -- the ledger holds fingerprints, never the value
        local ledger = read_file(log .. ".masked.json")
        assert.is_string(ledger)
        assert.falsy(ledger:find(SECRET, 1, true))
        -- a fresh client (a re-run) sees nothing to change, the secret included
        local c2 = new_client(sim, { audit_log = log })
        local again = assert(c2:plan(step))
        assert.equals(0, again.changes)
        -- a different secret value is a change
        local other = { action = A3, tier = "production", variables = {
            SYNC_TOKEN = { value = SECRET .. "-rotated", masked = true }, SYNC_MODE = "full" } }
        assert.equals(1, assert(c2:plan(other)).counts.set)
        -- someone else writes to the environment: the secret can no longer be vouched for
        local w = assert(core.client({ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret }))
        assert(w:patch({ actionId = A3, environmentId = "prod",
            variables = { { name = "OTHER_FLAG", value = "1", masked = false } } }))
        w:close()
        local after = assert(c2:plan(step))
        assert.equals(1, after.counts.set)
        assert.equals(1, after.changes)
        c:close(); c2:close()
    end)

    it("a webhook failure is reported, not fatal", function()
        local c = new_client(sim, { audit_log = dir .. "/hookfail.jsonl", webhook_url = "http://127.0.0.1:1/hook" })
        local plan = assert(c:plan{ action = A3, tier = "prod", variables = { BATCH_SIZE = "250" } })
        local r = assert(c:apply(plan))
        assert.equals("applied", r.status)
        assert.matches("webhook failed", r.webhook_error, 1, true)
        assert.equals("250", env_vars(sim:state(), A3, "prod").BATCH_SIZE.value)
        assert.equals(1, c:metrics().webhook_failures)
    end)

    it("a plan with nothing to change writes nothing", function()
        local log = dir .. "/noop.jsonl"
        local c = new_client(sim, { audit_log = log })
        local plan = assert(c:plan{ action = A1, tier = "prod", variables = { LOG_LEVEL = "info" } })
        assert.equals(0, plan.changes)
        local before = sim:count("PATCH")
        local r = assert(c:apply(plan))
        assert.equals("unchanged", r.status)
        assert.equals(before, sim:count("PATCH"))
        assert.is_nil(read_file(log))
    end)

    it("a stale plan is a conflict and nothing is written", function()
        local c = new_client(sim, { audit_log = dir .. "/stale.jsonl" })
        local plan = assert(c:plan{ action = A1, tier = "prod", variables = { LOG_LEVEL = "warn" } })
        -- someone else changes prod after the plan
        assert(c.core:patch{ actionId = A1, environmentId = "prod",
            variables = { { name = "TIMEOUT_MS", value = "1234", masked = false } } })
        local before = sim:state()
        local r, msg, code = c:apply(plan)
        assert.is_nil(r)
        assert.equals("conflict", code)
        assert.matches("412", msg, 1, true)
        assert.same(before, sim:state())
        assert.equals("info", env_vars(sim:state(), A1, "prod").LOG_LEVEL.value)
        assert.equals(1, c:metrics().conflicts)
    end)

    it("dry run plans but never writes", function()
        local c = new_client(sim, { dry_run = true, audit_log = dir .. "/dry.jsonl" })
        local before = sim:state()
        local plan = assert(c:plan{ action = A3, tier = "dev", variables = { BATCH_SIZE = "7" } })
        assert.equals("dry_run", c:apply(plan).status)
        local rep = c:promote{ { action = A3, tier = "dev", variables = { BATCH_SIZE = "7" } } }
        assert.equals(1, rep.counts.planned)
        assert.equals(0, rep.counts.applied)
        assert.same(before, sim:state())
        assert.is_nil(read_file(dir .. "/dry.jsonl"))
    end)

    it("preflight failure: nothing is written and the report says why", function()
        local log = dir .. "/preflight.jsonl"
        local c = new_client(sim, { audit_log = log })
        local before = sim:state()
        local rep = c:promote{
            { action = A1, tier = "dev", variables = { LOG_LEVEL = "trace" } },
            { action = A2, tier = "prod", variables = { ["bad-name"] = "x" } },
            { action = "00000000-0000-4000-8000-000000000000", tier = "prod", variables = { A = "1" } },
        }
        assert.is_false(rep.ok)
        assert.is_true(rep.preflight_failed)
        assert.equals("not_attempted", rep.steps[1].status)
        assert.equals("preflight_failed", rep.steps[2].status)
        assert.equals("invalid", rep.steps[2].code)
        assert.equals("preflight_failed", rep.steps[3].status)
        assert.matches("step 2", rep.message, 1, true)
        assert.matches("step 3", rep.message, 1, true)
        assert.matches("nothing written", tostring(rep), 1, true)
        assert.same(before, sim:state())
        assert.is_nil(read_file(log))
    end)

    it("failure mid-way gives an exact report; re-running completes only the rest", function()
        local log = dir .. "/midway.jsonl"
        local c = new_client(sim, { audit_log = log, retries = 1 })
        local steps = {}
        for _, a in ipairs{ A1, A2, A3 } do
            steps[#steps + 1] = { action = a, tier = "development", variables = { PROMO_RELEASE = "r42" } }
            steps[#steps + 1] = { action = a, tier = "staging", baseline = "development", variables = { PROMO_RELEASE = "r42" } }
            steps[#steps + 1] = { action = a, tier = "production", baseline = "staging", variables = { PROMO_RELEASE = "r42" } }
        end
        sim:fault{ method = "PATCH", path = "/api/v2/integration/actions/" .. A2 .. "/environments/prod/variables",
                   kind = "status", status = 500, count = 10 }
        local rep = c:promote{ steps = steps, concurrency = 1 }
        assert.is_false(rep.ok)
        local got = {}
        for i, s in ipairs(rep.steps) do got[i] = s.status end
        assert.same({ "applied", "applied", "applied", "applied", "applied", "failed",
                      "applied", "applied", "not_attempted" }, got)
        assert.same({ applied = 7, failed = 1, not_attempted = 1, unchanged = 0, planned = 0 }, rep.counts)
        assert.is_string(rep.steps[6].code)
        assert.matches("500", rep.steps[6].error, 1, true)
        local st = sim:state()
        assert.is_nil(env_vars(st, A2, "prod").PROMO_RELEASE)
        assert.is_nil(env_vars(st, A3, "prod").PROMO_RELEASE)
        assert.equals("r42", env_vars(st, A1, "prod").PROMO_RELEASE.value)
        -- the failure is audited too
        local failures = 0
        for line in read_file(log):gmatch("[^\n]+") do
            local r = json.decode(line)
            if r.event == "apply" and r.status == "failure" then failures = failures + 1 end
        end
        assert.equals(1, failures)
        -- re-run after the fault clears: only the two missing steps are written
        assert(sim:curl("DELETE", "/_sim/faults"))
        local before = sim:count("PATCH")
        local rep2 = c:promote{ steps = steps, concurrency = 4 }
        assert.is_true(rep2.ok)
        assert.same({ applied = 2, failed = 0, not_attempted = 0, unchanged = 7, planned = 0 }, rep2.counts)
        assert.equals(before + 2, sim:count("PATCH"))
        assert.equals("r42", env_vars(sim:state(), A3, "prod").PROMO_RELEASE.value)
        local m = c:metrics()
        assert.is_true(m.successes > 0)
        assert.is_true(m.retries >= 1)
        assert.equals(9, m.applied)
        assert.is_number(m.latency_ms.p50)
        assert.is_true(m.latency_ms.max >= m.latency_ms.p50)
    end)
end)
