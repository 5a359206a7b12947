-- cxone.Client: construction, argument errors, authentication grants, the API calls,
-- connection reuse and token caching, close/GC. Runs against cxone-sim on loopback.
local core = require "cxone.core"
local simlib = require "support.sim"
local D = simlib.DEMO
local A1, A2, A3 = D.actions[1], D.actions[2], D.actions[3]

local function new_client(sim, extra)
    return assert(core.client(simlib.client_opts(sim, extra)))
end

local function find_var(list, name)
    for _, v in ipairs(list) do if v.name == name then return v end end
end

describe("cxone.Client", function()
    local sim
    simlib.suite({ dir = false, reset = false }, function(s) sim = s.sim end)

    describe("construction", function()
        it("raises argument errors for wrong types, naming the option", function()
            assert.has_error(function() core.client() end)
            assert.has_error(function() core.client("x") end)
            local cases = {
                { { client_id = 1, client_secret = "s" }, "client_id" },
                { { client_id = "a", client_secret = "s", timeout = "5" }, "timeout" },
                { { client_id = "a", client_secret = "s", retries = 1.5 }, "retries" },
                { { client_id = "a", client_secret = "s", debug = "yes" }, "debug" },
                { { client_id = "a", client_secret = "s", insecure_http = 1 }, "insecure_http" },
                { { client_id = "a", client_secret = "s", basic_auth = "no" }, "basic_auth" },
                { { client_id = "a", client_secret = "s", base_url = 42 }, "base_url" },
                { { client_id = "a", client_secret = "s", ca_file = true }, "ca_file" },
                { { client_id = "a", client_secret = "s", rate_limit = "fast" }, "rate_limit" },
            }
            for _, case in ipairs(cases) do
                local ok, err = pcall(core.client, case[1])
                assert.is_false(ok)
                assert.matches("bad argument #1", err, 1, true)
                assert.matches(case[2], err, 1, true)
            end
        end)

        it("returns config errors for missing or invalid settings, naming them", function()
            local cases = {
                { { client_id = "a" }, "client_secret" },
                { { client_secret = "s" }, "client_id" },
                { { client_id = "", client_secret = "s" }, "client_id" },
                { { client_id = "a", client_secret = "s", connect_timeout = 0 }, "connect_timeout" },
                { { client_id = "a", client_secret = "s", retries = -1 }, "retries" },
                { { client_id = "a", client_secret = "s", access_key_id = "k" }, "access_key" },
                { { client_id = "a", client_secret = "s", user_agent = "x\r\ny: z" }, "user_agent" },
                { { client_id = "a", client_secret = "s", deadline = -1 }, "deadline" },
                { { client_id = "a", client_secret = "s", rate_limit = -2 }, "rate_limit" },
            }
            for _, case in ipairs(cases) do
                local c, msg, code = core.client(case[1])
                assert.is_nil(c)
                assert.equals("config", code)
                assert.matches(case[2], msg, 1, true)
            end
        end)

        it("refuses plain http to a non-loopback host, saying why", function()
            local c, msg, code = core.client{ base_url = "http://api.example.com", client_id = "a", client_secret = "s" }
            assert.is_nil(c)
            assert.equals("config", code)
            assert.matches("plain http://", msg, 1, true)
            assert.matches("insecure_http", msg, 1, true)
            -- allowed when asked for explicitly, and always for loopback
            assert.truthy(core.client{ base_url = "http://api.example.com", insecure_http = true,
                                       client_id = "a", client_secret = "s" })
            assert.truthy(core.client{ base_url = "http://localhost:1", client_id = "a", client_secret = "s" })
            assert.truthy(core.client{ base_url = "http://[::1]:1", client_id = "a", client_secret = "s" })
        end)

        it("refuses unparsable URLs, other schemes and URLs with credentials", function()
            for _, u in ipairs{ "not a url", "ftp://example.com", "https://user:pw@example.com",
                                "https://example.com/?q=1" } do
                local c, msg, code = core.client{ base_url = u, client_id = "a", client_secret = "s" }
                assert.is_nil(c)
                assert.equals("config", code)
                assert.is_string(msg)
                assert.falsy(msg:find("pw@", 1, true))
            end
            local c, _, code = core.client{ token_url = "http://auth.example.com/t", client_id = "a", client_secret = "s" }
            assert.is_nil(c)
            assert.equals("config", code)
            c, _, code = core.client{ ca_file = "/nonexistent/ca.pem", client_id = "a", client_secret = "s" }
            assert.is_nil(c)
            assert.equals("config", code)
        end)

        it("leaves _G untouched and shows the client id, never the secret", function()
            local before = {}
            for k in pairs(_G) do before[k] = true end
            local c = new_client(sim)
            for k in pairs(_G) do assert.is_true(before[k], "new global " .. tostring(k)) end
            assert.equals("cxone.Client (client_id=demo-client, no token)", tostring(c))
            assert.is_nil(c:token_ttl())
            assert.is_true(c:authenticate())
            local s = tostring(c)
            assert.matches("^cxone%.Client %(client_id=demo%-client, token valid 3[56]%d%d s%)$", s)
            assert.falsy(s:find(D.client_secret, 1, true))
            assert.is_true(c:token_ttl() > 3500)
            c:close()
            assert.equals("cxone.Client (closed)", tostring(c))
        end)
    end)

    describe("authenticate", function()
        it("uses client credentials in the body and caches the token", function()
            local c = new_client(sim)
            local ok, err, info = c:authenticate()
            assert.is_true(ok)
            assert.equals(3600, info.expires_in)
            assert.matches("integration:actions:write", info.scope, 1, true)
            assert.equals(1, c:stats().token_requests)
        end)

        it("supports HTTP Basic client credentials and the access-key password grant", function()
            local c = new_client(sim, { basic_auth = true })
            assert.is_true(c:authenticate())
            local k = new_client(sim, { access_key_id = D.access_key_id, access_key_secret = D.access_key_secret })
            assert.is_true(k:authenticate())
            assert.truthy(k:get(A1, "dev"))
            local bad = new_client(sim, { access_key_id = D.access_key_id, access_key_secret = "wrong-secret-xyz" })
            local ok, msg, code = bad:authenticate()
            assert.is_nil(ok)
            assert.equals("auth", code)
            assert.matches("access_key", msg, 1, true)
        end)

        it("reports wrong credentials as auth without echoing the secret", function()
            local c = new_client(sim, { client_secret = "definitely-wrong-secret" })
            local ok, msg, code = c:authenticate()
            assert.is_nil(ok)
            assert.equals("auth", code)
            assert.matches("invalid_client", msg, 1, true)
            assert.falsy(msg:find("definitely-wrong-secret", 1, true))
            -- a data call right after fails the same way without asking again: a failed token
            -- request is remembered for a few seconds (a storm of callers does not re-ask)
            local r, msg2, code2 = c:get(A1, "dev")
            assert.is_nil(r)
            assert.equals("auth", code2)
            assert.equals(msg, msg2)
            assert.equals(1, c:stats().token_requests)
        end)

        it("asks for a narrower scope when told to", function()
            local c = new_client(sim, { scope = "integration:actions:read" })
            local _, _, info = c:authenticate()
            assert.equals("integration:actions:read", info.scope)
            local r, msg, code = c:patch{ actionId = A1, environmentId = "dev", variables = {} }
            assert.is_nil(r)
            assert.equals("scope", code)
            assert.matches("integration:actions:write", msg, 1, true)
        end)
    end)

    describe("calls", function()
        local c
        before_each(function() c = new_client(sim) end)
        after_each(function() c:close() end)

        it("get returns the decoded variables and meta with the ETag", function()
            local r, err, meta = c:get(A1, "staging")
            assert.is_table(r)
            assert.equals(A1, r.actionId)
            assert.equals("staging", r.environmentId)
            assert.is_table(find_var(r.variables, "TIMEOUT_MS"))
            assert.equals("***", find_var(r.variables, "CRM_API_KEY").value)
            assert.equals(200, meta.status)
            assert.matches('^".+"$', meta.etag)
            assert.equals(1, meta.attempts)
            assert.is_number(meta.latency_ms)
        end)

        it("every call returns three values: res, nil, meta or nil, message, code", function()
            local function count(...) return select("#", ...), ... end
            assert.is_nil(c:last_meta())
            local n, r, err, meta = count(c:get(A1, "dev"))
            assert.same({ 3, true, nil }, { n, type(r) == "table", err })
            assert.equals(meta, c:last_meta())
            local n2, r2, msg, code = count(c:get(A1, "missing"))
            assert.same({ 3, nil, "not_found" }, { n2, r2, code })
            assert.is_string(msg)
            assert.same({ 404, 1 }, { c:last_meta().status, c:last_meta().attempts })
            local n3, ok, err3, info = count(c:authenticate())
            assert.same({ 3, true, nil, 3600 }, { n3, ok, err3, info.expires_in })
            local n4, w, wmsg, wcode = count(c:webhook("ftp://example.invalid/hook", {}))
            assert.same({ 3, nil, "config" }, { n4, w, wcode })
            assert.is_string(wmsg)
            assert.is_nil(c:last_meta()) -- refused before the network: no meta
        end)

        it("patch merges, put replaces, with If-Match", function()
            local _, _, m0 = c:get(A2, "dev")
            local r, err, meta = c:patch({ actionId = A2, environmentId = "dev",
                variables = { { name = "NEW_FLAG", value = "on", masked = false } } }, { if_match = m0.etag })
            assert.is_table(r, err)
            assert.equals(200, meta.status)
            assert.not_equals(m0.etag, meta.etag)
            assert.equals("on", find_var(r.variables, "NEW_FLAG").value)
            assert.is_table(find_var(r.variables, "MERCHANT_ID")) -- merged, not replaced
            local r2 = assert(c:put({ actionId = A2, environmentId = "dev",
                variables = { { name = "ONLY_ONE", value = "1", masked = false } } }, { if_match = meta.etag }))
            assert.equals(1, #r2.variables)
            assert.equals("ONLY_ONE", r2.variables[1].name)
        end)

        it("an empty variables list is sent as a JSON array", function()
            local r, err, meta = c:patch{ actionId = A3, environmentId = "dev", variables = {} }
            assert.is_table(r, err)
            assert.equals(200, meta.status)
        end)

        it("a stale ETag is a conflict and nothing is written", function()
            local _, _, m0 = c:get(A1, "prod")
            local before = sim:state()
            local r, msg, code = c:patch({ actionId = A1, environmentId = "prod",
                variables = { { name = "LOG_LEVEL", value = "trace", masked = false } } }, { if_match = '"stale"' })
            local meta = c:last_meta()
            assert.is_nil(r)
            assert.equals("conflict", code)
            assert.matches("412", msg, 1, true)
            assert.equals(412, meta.status)
            assert.same(before, sim:state())
            local _, _, m1 = c:get(A1, "prod")
            assert.equals(m0.etag, m1.etag)
        end)

        it("server validation failures are invalid with the server's message", function()
            local r, msg, code = c:patch{ actionId = A1, environmentId = "dev",
                variables = { { name = "lower-case", value = "x", masked = false } } }
            assert.is_nil(r)
            assert.equals("invalid", code)
            assert.matches("422", msg, 1, true)
            assert.truthy(#msg > 30)
        end)

        it("unknown actions and environments are not_found", function()
            local r, _, code = c:get("00000000-0000-4000-8000-000000000000", "dev")
            assert.is_nil(r)
            assert.equals("not_found", code)
            r, _, code = c:get(A1, "qa")
            assert.is_nil(r)
            assert.equals("not_found", code)
        end)

        it("rejects ids that could inject path segments", function()
            local before = sim:stats().requests
            for _, bad in ipairs{ "../x", "a/b", "a?b", "a#b", "a%2Fb", "", ".", "..", "a b", ("x"):rep(200) } do
                local r, msg, code = c:get(bad, "dev")
                assert.is_nil(r)
                assert.equals("invalid", code)
                assert.matches("action id", msg, 1, true)
                r, _, code = c:get(A1, bad)
                assert.equals("invalid", code)
                r, _, code = c:build(bad)
                assert.equals("invalid", code)
                r, _, code = c:patch{ actionId = bad, environmentId = "dev", variables = {} }
                assert.equals("invalid", code)
            end
            -- header values with line breaks are refused too
            local r, _, code = c:patch({ actionId = A1, environmentId = "dev", variables = {} }, { if_match = '"a"\r\nX: y' })
            assert.is_nil(r)
            assert.equals("invalid", code)
            assert.equals(before, sim:stats().requests)
        end)

        it("build sends an Idempotency-Key (generated or given) and a reused key queues once", function()
            local before = sim:stats().builds_queued
            local r, err, meta = c:build(A1)
            assert.is_string(r.buildId)
            assert.equals("queued", r.status)
            assert.equals(202, meta.status)
            assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", meta.idempotency_key)
            local r1 = assert(c:build(A2, { idempotency_key = "release-42" }))
            local r2 = assert(c:build(A2, { idempotency_key = "release-42" }))
            assert.equals(r1.buildId, r2.buildId)
            assert.equals(before + 2, sim:stats().builds_queued)
        end)

        it("webhook posts JSON, signs it, and reports failures without raising", function()
            local ok, err, meta = c:webhook(sim.url .. "/_sim/webhooks/ci", { event = "applied", n = 3 },
                                       { secret = "hook-key", timestamp = 1700000000 })
            assert.is_true(ok)
            assert.equals(204, meta.status)
            local ev = sim:get_json("/_sim/webhooks/ci").events
            local last = ev[#ev]
            assert.equals("applied", last.body.event)
            local body = core.json_encode({ event = "applied", n = 3 })
            assert.equals("t=1700000000,v1=" .. core.hmac_sha256("hook-key", "1700000000." .. body),
                          last.headers["x-cxone-signature"])
            assert.is_nil(last.headers["x-signature"])
            assert.is_nil(last.headers.authorization) -- the bearer token never goes to a third party
            -- unsigned
            assert.is_true((c:webhook(sim.url .. "/_sim/webhooks/ci2", { event = "x" })))
            assert.is_nil(sim:get_json("/_sim/webhooks/ci2").events[1].headers["x-cxone-signature"])
            -- failures come back as values
            local r, msg, code = c:webhook("http://127.0.0.1:1/hook", { event = "x" })
            assert.is_nil(r)
            assert.equals("network", code)
            assert.is_string(msg)
            r, msg, code = c:webhook("http://ci.example.com/hook?token=abc123", { event = "x" })
            assert.is_nil(r)
            assert.equals("config", code)
            assert.falsy(msg:find("abc123", 1, true))
            r, _, code = c:webhook(sim.url .. "/_sim/webhooks/ci", { f = function() end })
            assert.is_nil(r)
            assert.equals("invalid", code)
        end)

        it("raises argument errors for every method", function()
            local P = { actionId = A1, environmentId = "dev", variables = {} }
            local cases = {
                function() c:get() end, function() c:get(A1) end, function() c:get(1, {}) end,
                function() c:patch() end, function() c:patch("x") end,
                function() c:patch({ environmentId = "dev" }) end,
                function() c:patch({ actionId = A1, environmentId = 3 }) end,
                function() c:patch(P, "etag") end, function() c:patch(P, { if_match = 5 }) end,
                function() c:put() end, function() c:put(P, { if_match = true }) end,
                function() c:build() end, function() c:build({}) end,
                function() c:build(A1, { idempotency_key = 1 }) end,
                function() c:webhook() end, function() c:webhook("http://127.0.0.1:1/") end,
                function() c:webhook("http://127.0.0.1:1/", "x") end,
                function() c:webhook("http://127.0.0.1:1/", {}, { secret = 1 }) end,
                function() c:batch() end, function() c:batch({ 1 }) end,
                function() c:batch({ { op = "delete" } }) end,
                function() c:batch({ { op = "get", action = A1 } }) end,
                function() c:batch({ { op = "patch" } }) end,
                function() c:batch({}, { concurrency = 0 }) end,
                function() c:batch({}, { stop_on_failure = 1 }) end,
                function() c.stats(nil) end, function() c.token_ttl({}) end,
                function() c.authenticate("x") end, function() c.close(1) end,
            }
            for i, f in ipairs(cases) do
                local ok, err = pcall(f)
                assert.is_false(ok, "case " .. i)
                assert.matches("bad argument", err, 1, true)
            end
        end)
    end)

    describe("transport", function()
        it("500 sequential requests use one TCP connection and one token", function()
            local c = new_client(sim)
            local s0 = sim:stats()
            for i = 1, 500 do
                local a = D.actions[i % 3 + 1]
                if i % 2 == 0 then
                    assert(c:get(a, "staging"))
                else
                    assert(c:patch{ actionId = a, environmentId = "staging",
                                    variables = { { name = "RUN_N", value = tostring(i), masked = false } } })
                end
            end
            local s1 = sim:stats()
            local st = c:stats()
            assert.equals(1, st.token_requests)
            assert.equals(1, st.connections)
            assert.equals(500, st.requests)
            assert.equals(500, st.attempts)
            assert.equals(0, st.retries)
            assert.equals(500, st.successes)
            -- the sim counts every connection, including its own stats calls (one each)
            assert.equals(s0.connections + 1 + 1, s1.connections)
            assert.equals(s0.requests + 501, s1.requests)
            assert.equals(s0.tokens_issued + 1, s1.tokens_issued)
        end)
    end)

    describe("lifetime", function()
        it("close is idempotent, methods on a closed client raise, GC and __close work", function()
            local c = new_client(sim)
            assert(c:get(A1, "dev"))
            c:close()
            c:close()
            for _, m in ipairs{ "get", "patch", "put", "build", "webhook", "batch", "stats", "token_ttl", "authenticate" } do
                local ok, err = pcall(c[m], c)
                assert.is_false(ok)
                assert.matches("attempt to use a closed cxone.Client", err, 1, true)
            end
            for _ = 1, 20 do
                local x = new_client(sim)
                assert(x:get(A1, "dev"))
            end
            collectgarbage()
            collectgarbage()
            local mt = getmetatable(c)
            for _, name in ipairs{ "__gc", "__close" } do
                local x = new_client(sim)
                assert(x:authenticate())
                mt[name](x)
                assert.equals("cxone.Client (closed)", tostring(x))
                mt[name](x) -- idempotent
                x:close()
            end
        end)
    end)
end)
