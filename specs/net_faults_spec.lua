-- cxone.Client under faults injected by cxone-sim: retries, Retry-After, backoff, deadlines,
-- token expiry and revocation, and the failure codes.
local core = require "cxone.core"
local simlib = require "support.sim"
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]
local VARS = "/api/v2/integration/actions/*/environments/*/variables"

local now = simlib.now

describe("cxone.Client faults", function()
    local sim
    local function client(extra)
        local c = assert(core.client(simlib.client_opts(sim, { backoff_base = 0.01, backoff_cap = 0.05 }, extra)))
        assert(c:authenticate())
        return c
    end
    local function patch_payload(a, env, value)
        return { actionId = a, environmentId = env,
                 variables = { { name = "FAULT_TEST", value = value, masked = false } } }
    end

    simlib.suite({ dir = false, reset = "faults" }, function(s) sim = s.sim end)

    it("three 429s with Retry-After: 1 succeed on the 4th attempt after waiting", function()
        local c = client()
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 429, retry_after = 1, count = 3 }
        local t0 = now()
        local r, err, meta = c:get(A1, "dev")
        local dt = now() - t0
        assert.is_table(r, err)
        assert.equals(4, meta.attempts)
        assert.equals(200, meta.status)
        assert.is_true(dt >= 2.9, "waited " .. dt .. " s")
        assert.is_true(meta.latency_ms >= 2900)
        local st = c:stats()
        assert.equals(4, st.attempts)
        assert.equals(3, st.retries)
    end)

    it("honours a Retry-After given as an HTTP-date", function()
        local c = client()
        local when = os.date("!%a, %d %b %Y %H:%M:%S GMT", os.time() + 2)
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 503, retry_after = when, count = 1 }
        local t0 = now()
        local r, err, meta = c:get(A1, "dev")
        local dt = now() - t0
        assert.is_table(r, err)
        assert.equals(2, meta.attempts)
        -- the date has whole-second resolution: the wait is between 1 and 2 s, far above backoff
        assert.is_true(dt >= 0.9, "waited " .. dt .. " s")
        assert.is_true(dt < 5, "waited " .. dt .. " s")
    end)

    it("a Retry-After over retry_after_cap or past the deadline fails at once, naming the wait", function()
        local c = client{ retry_after_cap = 0.2 }
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 429, retry_after = 30, count = 1 }
        local t0 = now()
        local r, msg, code = c:get(A1, "dev")
        assert.is_nil(r)
        assert.equals("rate_limited", code)
        assert.matches("asked to wait 30 s", msg, 1, true)
        assert.matches("retry_after_cap", msg, 1, true)
        assert.equals(1, c:last_meta().attempts)
        assert.is_true(now() - t0 < 5)
        -- within the cap but past the deadline: the same, without waiting for the deadline
        local d = client{ deadline = 2 }
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 429, retry_after = 86400, count = 1 }
        t0 = now()
        r, msg, code = d:get(A1, "dev")
        assert.is_nil(r)
        assert.equals("rate_limited", code)
        assert.matches("asked to wait 86400 s", msg, 1, true)
        assert.matches("deadline", msg, 1, true)
        assert.is_true(now() - t0 < 1.5)
    end)

    it("429 beyond the retries is rate_limited", function()
        local c = client{ retries = 1 }
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 429, retry_after = 0, count = 5 }
        local r, msg, code = c:get(A1, "dev")
        local meta = c:last_meta()
        assert.is_nil(r)
        assert.equals("rate_limited", code)
        assert.matches("429", msg, 1, true)
        assert.equals(2, meta.attempts)
    end)

    it("a 503 storm longer than the retry budget is server, with nothing half-applied", function()
        local c = client()
        local before = sim:state()
        sim:fault{ method = "PATCH", path = VARS, kind = "status", status = 503, count = 10 }
        local r, msg, code = c:patch(patch_payload(A2, "staging", "storm"))
        local meta = c:last_meta()
        assert.is_nil(r)
        assert.equals("server", code)
        assert.matches("503", msg, 1, true)
        assert.equals(4, meta.attempts)
        assert.same(before, sim:state())
        sim:curl("DELETE", "/_sim/faults")
    end)

    it("the per-call deadline stops retrying", function()
        local c = client{ retries = 10, deadline = 0.5 }
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 503, retry_after = 1, count = 10 }
        local t0 = now()
        local r, _, code = c:get(A1, "dev")
        local meta = c:last_meta()
        assert.is_nil(r)
        assert.equals("server", code)
        assert.equals(1, meta.attempts) -- waiting 1 s would pass the 0.5 s deadline
        assert.is_true(now() - t0 < 2)
    end)

    it("500, 502 and 504 are retried too", function()
        local c = client()
        for _, s in ipairs{ 500, 502, 504 } do
            sim:fault{ method = "GET", path = VARS, kind = "status", status = s, count = 1 }
            local r, err, meta = c:get(A3, "prod")
            assert.is_table(r)
            assert.equals(2, meta.attempts)
        end
    end)

    it("a hang is timeout after the attempt's timeout", function()
        local c = client{ timeout = 0.3, retries = 1 }
        sim:fault{ method = "GET", path = VARS, kind = "hang", count = 2 }
        local t0 = now()
        local r, msg, code = c:get(A1, "dev")
        local meta = c:last_meta()
        local dt = now() - t0
        assert.is_nil(r)
        assert.equals("timeout", code)
        assert.matches("imeout", msg)
        assert.equals(2, meta.attempts)
        assert.is_true(dt >= 0.6 and dt < 5, "took " .. dt)
    end)

    it("a connection reset is retried", function()
        local c = client()
        -- libcurl would re-send a request on a fresh connection when a reused one dies before
        -- any answer; the body's read callback refuses the rewind, so every send is an attempt
        -- the engine counts (and the audit records): two resets, three attempts
        sim:fault{ method = "PATCH", path = VARS, kind = "reset", count = 2 }
        local r, err, meta = c:patch(patch_payload(A1, "dev", "after-reset"))
        assert.is_table(r)
        assert.equals(3, meta.attempts)
        assert.equals(2, c:stats().retries)
        assert.is_true(c:stats().connections >= 3)
        -- a reset on every attempt ends as network
        sim:fault{ method = "GET", path = VARS, kind = "reset", count = 20 }
        local r2, msg, code = c:get(A1, "dev")
        local meta2 = c:last_meta()
        assert.is_nil(r2)
        assert.equals("network", code)
        assert.is_string(msg)
        assert.equals(4, meta2.attempts)
        sim:curl("DELETE", "/_sim/faults")
    end)

    it("a truncated body is retried", function()
        local c = client()
        sim:fault{ method = "GET", path = VARS, kind = "truncate", count = 1 }
        local r, err, meta = c:get(A1, "staging")
        assert.is_table(r)
        assert.equals(2, meta.attempts)
    end)

    it("a 200 that is not JSON is format", function()
        local c = client()
        sim:fault{ method = "GET", path = VARS, kind = "not_json", count = 1 }
        local r, msg, code = c:get(A1, "dev")
        local meta = c:last_meta()
        assert.is_nil(r)
        assert.equals("format", code)
        assert.matches("variables", msg, 1, true)
        assert.equals(200, meta.status)
        assert.equals(1, meta.attempts)
    end)

    it("a refused connection is network after the retries", function()
        local c = assert(core.client{ base_url = "http://127.0.0.1:1", client_id = "x", client_secret = "y",
                                      backoff_base = 0.01 })
        local ok, msg, code = c:authenticate()
        assert.is_nil(ok)
        assert.equals("network", code)
        assert.matches("4 attempts", msg, 1, true)
        assert.equals(4, c:stats().token_requests)
    end)

    it("a token expiring mid-run is refreshed once", function()
        local short = simlib.start{ args = { "--token-ttl", "3" } }
        local c = assert(core.client{ base_url = short.url, client_id = D.client_id,
                                      client_secret = D.client_secret, refresh_margin = 1 })
        for _ = 1, 5 do assert(c:get(A1, "dev")) end
        assert.equals(1, c:stats().token_requests)
        -- wait (polling the clock, not a fixed sleep) until less than the margin remains
        while c:token_ttl() >= 1 do os.execute("sleep 0.1") end
        for _ = 1, 5 do assert(c:get(A1, "dev")) end
        local st = c:stats()
        assert.equals(2, st.token_requests)
        assert.equals(10, st.attempts)
        assert.equals(0, st.retries)
        assert.is_true(c:token_ttl() > 1.5)
        short:stop()
    end)

    it("a revoked token gets one refresh and one retry", function()
        local c = client()
        assert(c:get(A1, "dev"))
        sim:fault{ method = "GET", path = VARS, kind = "expire_tokens", count = 1 }
        -- this request revokes every token before it is processed: 401 → refresh → retry once
        local r, err, meta = c:get(A1, "dev")
        assert.is_table(r)
        assert.equals(2, meta.attempts)
        local r2, _, meta2 = c:get(A1, "dev")
        assert.is_table(r2)
        assert.equals(1, meta2.attempts)
        local st = c:stats()
        assert.equals(2, st.token_requests)
        assert.equals(4, st.attempts)
    end)

    it("a 401 after the refresh is auth", function()
        local c = client()
        sim:fault{ method = "GET", path = VARS, kind = "status", status = 401, count = 2 }
        local r, msg, code = c:get(A1, "dev")
        local meta = c:last_meta()
        assert.is_nil(r)
        assert.equals("auth", code)
        assert.matches("401", msg, 1, true)
        assert.equals(2, meta.attempts)
        assert.equals(2, c:stats().token_requests)
    end)

    it("403 is scope and names the scope to grant", function()
        local c = assert(core.client{ base_url = sim.url, client_id = D.readonly_id, client_secret = D.readonly_secret })
        assert(c:get(A1, "dev"))
        local r, msg, code = c:patch(patch_payload(A1, "dev", "nope"))
        local meta = c:last_meta()
        assert.is_nil(r)
        assert.equals("scope", code)
        assert.equals(403, meta.status)
        assert.matches("integration:actions:write", msg, 1, true)
        assert.matches("readonly-client", msg, 1, true)
        r, msg, code = c:build(A1)
        assert.equals("scope", code)
        assert.matches("integration:actions:", msg, 1, true)
    end)

    it("a retried build is queued once", function()
        local c = client()
        local before = sim:stats().builds_queued
        -- the first attempt is processed (queued) but its answer is cut short; the retry carries
        -- the same Idempotency-Key, so the sim answers with the same build
        sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "truncate", count = 1 }
        local r, err, meta = c:build(A2)
        assert.is_table(r, err)
        assert.equals(2, meta.attempts)
        sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "status", status = 503, count = 2 }
        local r2, _, meta2 = c:build(A3)
        assert.is_table(r2)
        assert.equals(3, meta2.attempts)
        assert.equals(before + 2, sim:stats().builds_queued)
    end)

    it("a webhook is not retried after a 500 (it may have been processed), but is after a 503", function()
        local c = client()
        local hook = sim.url .. "/_sim/webhooks/faulty"
        -- /_sim routes take no faults, so point the webhook at an API route that does
        sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "status", status = 500, count = 1 }
        local ok, _, code = c:webhook(sim.url .. "/api/v2/integration/actions/" .. A1 .. "/build", { e = 1 })
        local meta = c:last_meta()
        assert.is_nil(ok)
        assert.equals("server", code)
        assert.equals(1, meta.attempts)
        sim:fault{ method = "POST", path = "/api/v2/integration/actions/*/build", kind = "status", status = 503, count = 1 }
        ok, _, code = c:webhook(sim.url .. "/api/v2/integration/actions/" .. A1 .. "/build", { e = 1 })
        meta = c:last_meta()
        assert.is_nil(ok)
        assert.equals("auth", code) -- the retry reached the route, which wants a token we never send
        assert.equals(2, meta.attempts)
        assert.is_true((c:webhook(hook, { e = 2 })))
    end)
end)
