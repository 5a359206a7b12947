-- cxone.Client:batch: concurrent requests over one multi handle, results in order, retries
-- scheduled without blocking other transfers, stop_on_failure, token handling.
local core = require "cxone.core"
local simlib = require "support.sim"
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]
local VARS = "/api/v2/integration/actions/*/environments/*/variables"

local now = simlib.now

describe("cxone.Client:batch", function()
    local sim
    local function client(extra)
        return assert(core.client(simlib.client_opts(sim, { backoff_base = 0.01, backoff_cap = 0.05 }, extra)))
    end

    simlib.suite({ dir = false, reset = "faults" }, function(s) sim = s.sim end)

    it("returns results in request order, with one token and at most `concurrency` connections", function()
        local c = client()
        local reqs = {}
        local envs = { "dev", "staging", "prod" }
        for i = 1, 60 do
            local a, e = D.actions[i % 3 + 1], envs[math.floor(i / 3) % 3 + 1]
            if i % 4 == 0 then
                reqs[i] = { op = "patch", payload = { actionId = a, environmentId = e,
                    variables = { { name = "BATCH_N", value = tostring(i), masked = false } } } }
            else
                reqs[i] = { op = "get", action = a, env = e }
            end
        end
        reqs[61] = { op = "build", action = A1 }
        local res = c:batch(reqs, { concurrency = 4 })
        assert.equals(61, #res)
        for i = 1, 60 do
            local r = res[i]
            assert.is_true(r.ok, tostring(r.error))
            assert.equals(reqs[i].action or reqs[i].payload.actionId, r.result.actionId)
            assert.equals(reqs[i].env or reqs[i].payload.environmentId, r.result.environmentId)
            assert.equals(200, r.meta.status)
            assert.is_string(r.meta.etag)
        end
        assert.is_string(res[61].result.buildId)
        assert.is_string(res[61].meta.idempotency_key)
        local st = c:stats()
        assert.equals(1, st.token_requests)
        assert.is_true(st.connections >= 1 and st.connections <= 4, "connections " .. st.connections)
        -- a second batch reuses the pooled connections
        local before = st.connections
        res = c:batch(reqs, { concurrency = 4 })
        assert.equals(before, c:stats().connections)
    end)

    it("an empty batch is an empty list", function()
        local res = client():batch({})
        assert.same({}, res)
    end)

    it("a 429's Retry-After holds every transfer of the client (the tenant's budget is shared)", function()
        local c = client()
        assert(c:authenticate())
        -- the first GET of action 1 gets 429 Retry-After 1: no request of this client goes out
        -- until the wait is over (each would spend the same exhausted budget), then all succeed
        sim:fault{ method = "GET", path = "/api/v2/integration/actions/" .. A1 .. "/environments/dev/variables",
                   kind = "status", status = 429, retry_after = 1, count = 1 }
        local reqs = { { op = "get", action = A1, env = "dev" } }
        for i = 2, 20 do reqs[i] = { op = "get", action = A2, env = "dev" } end
        local t0 = now()
        local res = c:batch(reqs, { concurrency = 2 })
        local dt = now() - t0
        assert.is_true(res[1].ok)
        assert.equals(2, res[1].meta.attempts)
        local late = 0
        for i = 2, 20 do
            assert.is_true(res[i].ok)
            assert.equals(1, res[i].meta.attempts)
            if res[i].meta.latency_ms >= 900 then late = late + 1 end
        end
        assert.is_true(late >= 17, late .. " transfers waited") -- all but those already out
        assert.equals(1, c:stats().rate_limited)
        assert.is_true(c:stats().paced_s >= 0.9, "paced " .. c:stats().paced_s)
        assert.is_true(dt >= 0.95 and dt < 3, "took " .. dt)
    end)

    it("reports failures per entry and keeps going by default", function()
        local c = client()
        local res = c:batch({
            { op = "get", action = A1, env = "dev" },
            { op = "get", action = "../etc", env = "dev" },
            { op = "get", action = A1, env = "nope" },
            { op = "patch", payload = { actionId = A2, environmentId = "dev", variables = {} }, if_match = '"stale"' },
            { op = "patch", payload = { actionId = A2, environmentId = "dev", variables = {} }, action = A3 },
            { op = "get", action = A3, env = "prod" },
        })
        assert.is_true(res[1].ok)
        assert.same({ false, "invalid" }, { res[2].ok, res[2].code })
        assert.matches("action id", res[2].error, 1, true)
        assert.same({ false, "not_found" }, { res[3].ok, res[3].code })
        assert.same({ false, "conflict" }, { res[4].ok, res[4].code })
        assert.equals(412, res[4].meta.status)
        assert.same({ false, "invalid" }, { res[5].ok, res[5].code })
        assert.is_true(res[6].ok)
    end)

    it("a build's idempotency key is reported whole, and a bad one fails only its entry", function()
        local c = client()
        local key = "cxone-" .. ("k"):rep(150) -- as long as the keys apply_all makes, and more
        local before = sim:stats().builds_queued
        local res = c:batch({ { op = "build", action = A1, idempotency_key = key },
                              { op = "build", action = A1, idempotency_key = key },
                              { op = "build", action = A1, idempotency_key = "" },
                              { op = "build", action = A1, idempotency_key = ("k"):rep(201) },
                              { op = "build", action = A1 } }, { concurrency = 1 })
        assert.is_true(res[1].ok, res[1].error)
        assert.equals(key, res[1].meta.idempotency_key)
        assert.equals(res[1].result.buildId, res[2].result.buildId) -- the same key: queued once
        assert.same({ false, "invalid" }, { res[3].ok, res[3].code })
        assert.same({ false, "invalid" }, { res[4].ok, res[4].code })
        assert.is_true(res[5].ok, res[5].error)
        assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", res[5].meta.idempotency_key)
        assert.equals(before + 2, sim:stats().builds_queued)
    end)

    it("stop_on_failure starts nothing new after a failure and marks the rest skipped", function()
        local c = client()
        local before = sim:stats().requests
        local reqs = { { op = "get", action = A1, env = "dev" }, { op = "get", action = A1, env = "missing" } }
        for i = 3, 12 do reqs[i] = { op = "get", action = A2, env = "dev" } end
        local res = c:batch(reqs, { concurrency = 1, stop_on_failure = true })
        assert.is_true(res[1].ok)
        assert.equals("not_found", res[2].code)
        for i = 3, 12 do
            assert.same({ ok = false, skipped = true, code = "not_attempted" }, res[i])
        end
        -- one token request and two API requests reached the sim
        assert.equals(before + 3, sim:stats().requests)
    end)

    it("stop_on_failure lets in-flight transfers finish", function()
        local c = client()
        assert(c:authenticate())
        sim:fault{ method = "GET", path = "/api/v2/integration/actions/" .. A2 .. "/environments/dev/variables",
                   kind = "delay", delay_ms = 300, count = 1 }
        local reqs = { { op = "get", action = A2, env = "dev" }, { op = "get", action = A1, env = "missing" } }
        for i = 3, 8 do reqs[i] = { op = "get", action = A3, env = "dev" } end
        local res = c:batch(reqs, { concurrency = 2, stop_on_failure = true })
        assert.is_true(res[1].ok) -- was in flight when #2 failed
        assert.equals("not_found", res[2].code)
        local skipped = 0
        for i = 3, 8 do if res[i].skipped then skipped = skipped + 1 end end
        assert.is_true(skipped >= 5, "skipped " .. skipped)
    end)

    it("a revoked token mid-batch is refreshed once for all transfers", function()
        local c = client()
        assert(c:authenticate())
        sim:fault{ method = "GET", path = VARS, kind = "expire_tokens", count = 1 }
        local reqs = {}
        for i = 1, 16 do reqs[i] = { op = "get", action = D.actions[i % 3 + 1], env = "staging" } end
        local res = c:batch(reqs, { concurrency = 8 })
        for i = 1, 16 do assert.is_true(res[i].ok, tostring(res[i].error)) end
        assert.equals(2, c:stats().token_requests)
    end)

    it("token failures fail every entry with one token request", function()
        local c = client{ client_secret = "wrong-secret-for-batch" }
        local reqs = {}
        for i = 1, 10 do reqs[i] = { op = "get", action = A1, env = "dev" } end
        local res = c:batch(reqs, { concurrency = 3 })
        for i = 1, 10 do
            assert.is_false(res[i].ok)
            assert.equals("auth", res[i].code)
        end
        assert.equals(1, c:stats().token_requests)
    end)

    it("a 503 storm ends as server per entry after the retries", function()
        local c = client()
        assert(c:authenticate())
        sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 503, count = 100 }
        local before = sim:state()
        local reqs = {}
        for i = 1, 4 do
            reqs[i] = { op = "patch", payload = { actionId = D.actions[i % 3 + 1], environmentId = "prod",
                variables = { { name = "STORM", value = "x", masked = false } } } }
        end
        local res = c:batch(reqs)
        for i = 1, 4 do
            assert.equals("server", res[i].code)
            assert.equals(4, res[i].meta.attempts)
        end
        assert.same(before, sim:state())
        sim:curl("DELETE", "/_sim/faults")
    end)
end)
