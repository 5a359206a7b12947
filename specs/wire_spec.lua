-- core.wire_* (requests built and answers interpreted without I/O, the retry policy) and
-- cxone.transport.wire driven by a scripted engine: tokens shared under a lock, retries,
-- the 401 refresh, unsupported methods, and secrets kept out of every message.
local core = require("cxone.core")
local wire = require("cxone.transport.wire")
local client = require("cxone.client")

local CRM = "a1b2c3d4-e5f6-4890-abcd-ef1234567890"
local SECRET = "canary-client-secret-6b1d"
local MASKED = "canary-masked-value-93aa"
local TOKEN = "canary-token-c0ffee"

describe("core.wire_request", function()
    it("builds a GET with a checked URL and the bearer token", function()
        local r = assert(core.wire_request("get", { base_url = "https://api.example.com//", action = CRM,
                                                    env = "prod", token = TOKEN }))
        assert.equal("GET", r.method)
        assert.equal("https://api.example.com/api/v2/integration/actions/" .. CRM .. "/environments/prod/variables", r.url)
        assert.equal("Bearer " .. TOKEN, r.headers.Authorization)
        assert.is_nil(r.body)
    end)
    it("builds a PATCH with its JSON body and If-Match", function()
        local p = { actionId = CRM, environmentId = "dev", variables = { { name = "A", value = "1", masked = false } } }
        local r = assert(core.wire_request("patch", { base_url = "http://127.0.0.1:1", payload = p, if_match = '"e1"' }))
        assert.equal("PATCH", r.method)
        assert.equal('"e1"', r.headers["If-Match"])
        assert.equal("application/json", r.headers["Content-Type"])
        assert.same(p, core.json_decode(r.body))
    end)
    it("gives builds a fresh Idempotency-Key unless one is given", function()
        local a = assert(core.wire_request("build", { base_url = "http://x", action = CRM }))
        local b = assert(core.wire_request("build", { base_url = "http://x", action = CRM }))
        assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", a.idempotency_key)
        assert.not_equal(a.idempotency_key, b.idempotency_key)
        assert.equal(a.idempotency_key, a.headers["Idempotency-Key"])
        local c = assert(core.wire_request("build", { base_url = "http://x", action = CRM, idempotency_key = "k-1" }))
        assert.equal("k-1", c.headers["Idempotency-Key"])
    end)
    it("refuses ids that would change the path, and bad header values", function()
        for _, bad in ipairs({ "../x", "a/b", "a?b", "", "a b", ".." }) do
            local r, msg, code = core.wire_request("get", { base_url = "http://x", action = bad, env = "prod" })
            assert.is_nil(r, bad)
            assert.equal("invalid", code)
            assert.matches("action id", msg)
            r, msg, code = core.wire_request("get", { base_url = "http://x", action = CRM, env = bad })
            assert.is_nil(r, bad)
            assert.equal("invalid", code)
            assert.matches("environment id", msg)
        end
        local _, _, code = core.wire_request("patch", { base_url = "http://x", if_match = "a\nb",
            payload = { actionId = CRM, environmentId = "dev", variables = {} } })
        assert.equal("invalid", code)
        _, _, code = core.wire_request("get", { base_url = "http://x", action = CRM, env = "dev", token = "a b" })
        assert.equal("invalid", code)
    end)
    it("raises on misuse", function()
        assert.has_error(function() core.wire_request("delete", { base_url = "http://x" }) end)
        assert.has_error(function() core.wire_request("get") end)
        assert.has_error(function() core.wire_request("get", { action = CRM, env = "dev" }) end)
        assert.has_error(function() core.wire_request("patch", { base_url = "http://x", payload = 1 }) end)
        assert.has_error(function() core.wire_token_request({ token_url = "http://x" }) end)
        assert.has_error(function() core.wire_response("get", "x") end)
        assert.has_error(function() core.wire_retry(-1, 503) end)
        assert.has_error(function() core.wire_scrub("m") end)
    end)
end)

describe("core.wire_token_request / wire_token_response", function()
    it("sends client credentials form-encoded, or an access key with HTTP Basic", function()
        local r = core.wire_token_request({ token_url = "http://t/oauth/token", client_id = "id", client_secret = "s&1" })
        assert.matches("grant_type=client_credentials", r.body, 1, true)
        assert.matches("client_secret=s%261", r.body, 1, true)
        assert.is_nil(r.headers.Authorization)
        local k = core.wire_token_request({ token_url = "http://t", client_id = "id", client_secret = "sec",
                                            access_key_id = "kid", access_key_secret = "ks" })
        assert.matches("grant_type=password&username=kid&password=ks", k.body, 1, true)
        assert.equal("Basic aWQ6c2Vj", k.headers.Authorization)
    end)
    it("reads the token, and maps refusals to codes without echoing the body", function()
        local t = assert(core.wire_token_response(200, '{"access_token":"' .. TOKEN .. '","expires_in":60,"scope":"a"}'))
        assert.equal(TOKEN, t.access_token)
        assert.equal(60, t.expires_in)
        assert.equal(300, core.wire_token_response(200, '{"access_token":"x"}').expires_in)
        local cases = { { 401, "auth" }, { 403, "scope" }, { 429, "rate_limited" }, { 502, "server" } }
        for _, c in ipairs(cases) do
            local r, msg, code = core.wire_token_response(c[1], '{"error":"x","secret":"' .. SECRET .. '"}')
            assert.is_nil(r)
            assert.equal(c[2], code)
            assert.not_matches(SECRET, msg, 1, true)
        end
        local _, _, code = core.wire_token_response(200, '{"access_token":"has space"}')
        assert.equal("format", code)
        _, _, code = core.wire_token_response(200, "<html>")
        assert.equal("format", code)
    end)
end)

describe("core.wire_response", function()
    it("decodes answers and keeps the ETag", function()
        local r, _, meta = core.wire_response("get", 200, { etag = '"abc"' }, '{"variables":[],"environmentId":"dev"}',
                                           { attempts = 2 })
        assert.equal("dev", r.environmentId)
        assert.equal('"abc"', meta.etag)
        assert.equal(2, meta.attempts)
        local _, _, m2 = core.wire_response("get", 200, { etag = { '"x"', '"y"' } }, '{"variables":[]}')
        assert.equal('"y"', m2.etag)
    end)
    it("reads headers through a metamethod safely (a fresh string, then a large decode)", function()
        -- lua-resty-http's headers table makes the value in __index; the ETag must be copied
        -- before the answer is decoded (allocations there can collect the string)
        local made = 0
        local hdrs = setmetatable({}, { __index = function(_, k)
            if k ~= "etag" then return nil end
            made = made + 1
            return '"' .. ("e"):rep(40) .. made .. '"'
        end })
        local vars = {}
        for i = 1, 20000 do vars[i] = { name = "V" .. i, value = ("x"):rep(20), masked = false } end
        local body = core.json_encode({ variables = vars })
        for _ = 1, 3 do
            local r, err, meta = core.wire_response("get", 200, hdrs, body)
            assert.is_table(r, err)
            assert.equal(20000, #r.variables)
            assert.equal('"' .. ("e"):rep(40) .. made .. '"', meta.etag)
        end
        local long = setmetatable({}, { __index = function() return '"' .. ("e"):rep(400) .. '"' end })
        local _, msg, code = core.wire_response("get", 200, long, body)
        assert.equal("format", code)
        assert.matches("ETag", msg)
    end)
    it("checks the shape of 2xx answers", function()
        local _, _, code = core.wire_response("get", 200, {}, '{"items":[]}')
        assert.equal("format", code)
        _, _, code = core.wire_response("build", 202, {}, '{"status":"queued"}')
        assert.equal("format", code)
        assert.equal("b1", (core.wire_response("build", 202, {}, '{"buildId":"b1"}')).buildId)
    end)
    it("maps statuses to codes", function()
        local want = { [401] = "auth", [403] = "scope", [404] = "not_found", [409] = "conflict", [412] = "conflict",
                       [422] = "invalid", [429] = "rate_limited", [503] = "server", [302] = "format" }
        for st, c in pairs(want) do
            local out = { n = select("#", core.wire_response("get", st, {}, "{}")), core.wire_response("get", st, {}, "{}") }
            assert.equal(3, out.n, st) -- nil, message, code: no fourth value
            assert.is_nil(out[1])
            assert.equal(c, out[3], st)
        end
    end)
    it("never repeats a secret or a masked value the server echoed", function()
        local p = { variables = { { name = "K", value = MASKED, masked = true } } }
        local _, msg = core.wire_response("patch", 422, {}, '{"message":"bad ' .. MASKED .. " " .. SECRET .. '"}',
                                          { payload = p, secrets = { SECRET } })
        assert.not_matches(MASKED, msg, 1, true)
        assert.not_matches(SECRET, msg, 1, true)
        assert.matches("[redacted]", msg, 1, true)
    end)
    it("removes a non-ASCII masked value before sanitising, and one cut by the length limit", function()
        local odd = "M\195\164sk\195\169d-v\195\164lue-CANARY-\226\130\18199"
        local p = { variables = { { name = "K", value = odd, masked = true } } }
        local _, msg = core.wire_response("patch", 400, {}, core.json_encode({ message = "value " .. odd .. " is not allowed" }),
                                          { payload = p })
        assert.not_matches("CANARY", msg, 1, true)
        -- echoed re-encoded to ASCII JSON (\u00e4), once or quoted inside the message
        for _, hex in ipairs({ "%04x", "%04X" }) do
            local ascii = odd:gsub("[\192-\255][\128-\191]*", function(ch)
                local b1, b2, b3 = ch:byte(1, 3)
                local cp = #ch == 2 and (b1 - 192) * 64 + (b2 - 128) or ((b1 - 224) * 64 + (b2 - 128)) * 64 + (b3 - 128)
                return "\\u" .. hex:format(cp)
            end)
            for _, body in ipairs({ '{"message":"value ' .. ascii .. ' refused"}',
                                    '{"message":"rejected: {\\"value\\":\\"' .. ascii:gsub("\\", "\\\\") .. '\\"}"}' }) do
                local _, m = core.wire_response("patch", 422, {}, body, { payload = p })
                assert.not_matches("CANARY", m, 1, true)
                assert.matches("[redacted]", m, 1, true)
            end
        end
        local long = string.rep("x", 230) .. MASKED
        _, msg = core.wire_response("patch", 422, {}, core.json_encode({ message = long }),
                                    { payload = { variables = { { name = "K", value = MASKED, masked = true } } } })
        assert.not_matches(MASKED:sub(1, 8), msg, 1, true)
    end)
end)

describe("core.wire_retry", function()
    it("retries what may succeed later, within the budget and the deadline", function()
        for _, st in ipairs({ 429, 500, 502, 503, 504 }) do
            local d = core.wire_retry(0, st, { backoff_base = 1, backoff_cap = 8 })
            assert.is_true(d >= 0 and d <= 1, st)
        end
        assert.is_nil(core.wire_retry(0, 404))
        assert.is_nil(core.wire_retry(0, 422))
        assert.is_nil(core.wire_retry(3, 503))
        assert.is_nil(core.wire_retry(0, "tls"))
        assert.is_number(core.wire_retry(0, "network"))
        assert.equal(2, core.wire_retry(0, 429, { retry_after = 2 }))
        assert.equal(5, core.wire_retry(0, 429, { retry_after = 100, retry_after_cap = 5 }))
        local d, why = core.wire_retry(0, 429, { retry_after = 2, remaining = 1 })
        assert.is_nil(d)
        assert.equal("deadline", why)
    end)
    it("is careful with non-idempotent requests when asked (safe)", function()
        assert.is_nil(core.wire_retry(0, 500, { safe = true }))
        assert.is_nil(core.wire_retry(0, "network", { safe = true }))
        assert.is_number(core.wire_retry(0, "refused", { safe = true }))
        assert.is_number(core.wire_retry(0, 503, { safe = true }))
    end)
    it("parses Retry-After", function()
        assert.equal(7, core.wire_retry_after("7"))
        assert.is_nil(core.wire_retry_after("soon"))
        assert.equal(0, core.wire_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"))
    end)
end)

-- A scripted engine: answers come from a function of the request; time is virtual.
local function engine(answer)
    local e = { t = 1000, log = {}, slept = 0 }
    function e:now() return self.t end
    function e:sleep(s) self.t = self.t + s; self.slept = self.slept + s end
    function e:request(req)
        self.log[#self.log + 1] = req
        return answer(req, #self.log)
    end
    return e
end

local function token_ok()
    return 200, {}, '{"access_token":"' .. TOKEN .. '","expires_in":3600}'
end

local function vars_ok(env)
    return 200, { etag = '"e"' }, '{"variables":[{"name":"A","value":"1","masked":false}],"environmentId":"' .. env .. '"}'
end

describe("cxone.transport.wire", function()
    local n = 0
    local function opts(extra)
        n = n + 1
        -- a distinct token URL per test: tokens are shared per Lua state, keyed by it
        local o = { base_url = "http://127.0.0.1:" .. (9000 + n), client_id = "demo", client_secret = SECRET }
        for k, v in pairs(extra or {}) do o[k] = v end
        return o
    end

    it("fetches one token for many calls and sends it", function()
        local e = engine(function(req)
            if req.url:find("/oauth/token", 1, true) then return token_ok() end
            assert.equal("Bearer " .. TOKEN, req.headers.Authorization)
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts(), e))
        for _ = 1, 5 do
            local r, err, meta = t:get(CRM, "dev")
            assert.equal("dev", r and r.environmentId, err)
            assert.equal('"e"', meta.etag)
        end
        local tokens = 0
        for _, req in ipairs(e.log) do if req.url:find("oauth") then tokens = tokens + 1 end end
        assert.equal(1, tokens)
        assert.equal(5, t:stats().successes)
        local ok, _, info = t:authenticate() -- a new token now, even though one is cached
        assert.is_true(ok)
        assert.equal(3600, info.expires_in)
        assert.equal(2, t:stats().token_requests)
        assert.is_true(t:token_ttl() > 3000)
    end)

    it("retries 503 with backoff and gives up after the budget", function()
        local e = engine(function(req)
            if req.url:find("oauth") then return token_ok() end
            return 503, {}, '{"error":"busy"}'
        end)
        local t = assert(wire.new(opts({ retries = 2, backoff_base = 0.1 }), e))
        local r, msg, code = t:get(CRM, "dev")
        local meta = t:last_meta()
        assert.is_nil(r)
        assert.equal("server", code)
        assert.equal(3, meta.attempts)
        assert.is_string(msg)
    end)

    it("honours Retry-After", function()
        local calls = 0
        local e = engine(function(req)
            if req.url:find("oauth") then return token_ok() end
            calls = calls + 1
            if calls == 1 then return 429, { ["retry-after"] = "3" }, "{}" end
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts(), e))
        assert.truthy(t:get(CRM, "dev"))
        assert.equal(3, e.slept)
    end)

    it("refreshes a refused token once and retries once", function()
        local issued = 0
        local e = engine(function(req)
            if req.url:find("oauth") then
                issued = issued + 1
                return 200, {}, '{"access_token":"tok' .. issued .. '","expires_in":3600}'
            end
            if req.headers.Authorization == "Bearer tok1" then return 401, {}, '{"error":"invalid_token"}' end
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts(), e))
        assert.truthy(t:get(CRM, "dev"))
        assert.equal(2, issued)
    end)

    it("waits for another caller's token refresh instead of starting its own", function()
        local store = {}
        local e = engine(function(req)
            if req.url:find("oauth") then return token_ok() end
            return vars_ok("dev")
        end)
        e.shares_tokens = true
        function e:token_get(k) return store[k] end
        function e:token_set(k, v) store[k] = v end
        local locked = true -- another worker holds the lock, and sets the token while we wait
        function e:token_lock() return not locked end
        function e:token_unlock() end
        function e:token_drop() end
        local sleep = e.sleep
        local t = assert(wire.new(opts(), e))
        e.sleep = function(self, s)
            sleep(self, s)
            store[t.token_key] = "from-another-worker"
        end
        e.request = function(self, req)
            self.log[#self.log + 1] = req
            assert.is_nil(req.url:find("oauth"), "no token request of our own")
            assert.equal("Bearer from-another-worker", req.headers.Authorization)
            return vars_ok("dev")
        end
        assert.truthy(t:get(CRM, "dev"))
    end)

    it("refuses unsupported methods before sending anything", function()
        local e = engine(function() error("nothing may be sent") end)
        e.unsupported = { PATCH = "no PATCH here" }
        local t = assert(wire.new(opts(), e))
        local r, msg, code = t:patch({ actionId = CRM, environmentId = "dev", variables = {} })
        assert.is_nil(r)
        assert.equal("unsupported", code)
        assert.equal("no PATCH here", msg)
        assert.equal(0, #e.log)
    end)

    it("keeps the client secret and the token out of transport failures", function()
        local e = engine(function(req)
            if req.url:find("oauth") then return token_ok() end
            return nil, "connection reset while sending " .. SECRET .. " " .. TOKEN, "network", true
        end)
        local t = assert(wire.new(opts(), e))
        local r, msg, code = t:get(CRM, "dev")
        assert.is_nil(r)
        assert.equal("network", code)
        assert.not_matches(SECRET, msg, 1, true)
    end)

    it("checks its options", function()
        local e = engine(function() end)
        assert.has_error(function() wire.new(nil, e) end)
        assert.has_error(function() wire.new(opts(), {}) end)
        assert.has_error(function() wire.new({ base_url = "http://127.0.0.1" }, e) end)
        local t, msg, code = wire.new(opts({ base_url = "http://example.com" }), e)
        assert.is_nil(t)
        assert.equal("config", code)
        assert.matches("plain http", msg, 1, true)
    end)

    it("carries cxone.client's plan and drift (the same code path as libcurl)", function()
        local e = engine(function(req)
            if req.url:find("oauth") then return token_ok() end
            local env = req.url:match("/environments/([^/]+)/")
            if env == "staging" then
                return 200, {}, '{"variables":[{"name":"A","value":"2","masked":false}],"environmentId":"staging"}'
            end
            return vars_ok(env)
        end)
        local t = assert(wire.new(opts(), e))
        local c = assert(client.new({ core = t, audit_log = false, state_file = false, client_secret = SECRET }))
        local rep = assert(c:drift(CRM, "development", "staging"))
        assert.equal(1, #rep.items)
        assert.equal("value_mismatch", rep.items[1].drift_type)
        local p = assert(c:plan({ action = CRM, tier = "staging", baseline = "development", variables = { A = "1" } }))
        assert.equal(1, p.changes)
    end)
end)
