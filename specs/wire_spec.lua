-- core.engine (the call engine's Lua binding: cxone.Engine, cxone.Call) driven with scripted
-- answers and a fake clock, and cxone.transport.wire (the generic driver) over a scripted host:
-- the token fetched once and shared between processes under a lock (the leader's error given to
-- waiters, a dead holder costing one timeout), retries and Retry-After, the 401 refresh,
-- unsupported methods, and secrets kept out of every message and tostring.
local core = require("cxone.core")
local wire = require("cxone.transport.wire")
local client = require("cxone.client")

local CRM = "a1b2c3d4-e5f6-4890-abcd-ef1234567890"
local SECRET = "canary-client-secret-6b1d"
local MASKED = "canary-masked-value-93aa"
local TOKEN = "canary-token-c0ffee"

local function token_ok(tok) return 200, {}, '{"access_token":"' .. (tok or TOKEN) .. '","expires_in":3600}' end
local function vars_ok(env)
    return 200, { ETag = '"e"' }, '{"actionId":"' .. CRM .. '","environmentId":"' .. tostring(env)
        .. '","variables":[{"name":"A","value":"1","masked":false}]}'
end

local function opts(extra)
    local o = { base_url = "http://127.0.0.1:9", client_id = "demo", client_secret = SECRET,
                backoff_base = 0.1, backoff_cap = 0.2 }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
end

-- A scripted host: answer(req) gives what request() returns; the clock moves only by sleep.
local function host(answer)
    local h = { log = {}, clock = 1000, slept = 0 }
    function h:now() return self.clock end
    function h:sleep(s) self.clock = self.clock + s; self.slept = self.slept + s end
    function h:request(req)
        self.log[#self.log + 1] = req
        return answer(req, self)
    end
    return h
end

local function count(h, pat)
    local n = 0
    for _, req in ipairs(h.log) do if req.url:find(pat, 1, true) then n = n + 1 end end
    return n
end

describe("core.engine", function()
    it("returns config errors for missing or invalid settings, raises for wrong types", function()
        local e, msg, code = core.engine({ base_url = "http://127.0.0.1:9", client_id = "x" })
        assert.is_nil(e)
        assert.equal("config", code)
        assert.matches("client_secret", msg, 1, true)
        e, msg, code = core.engine(opts({ base_url = "http://example.com" }))
        assert.is_nil(e)
        assert.equal("config", code)
        assert.matches("plain http", msg, 1, true)
        assert.has_error(function() core.engine(opts({ timeout = "5" })) end)
        assert.has_error(function() core.engine() end)
    end)

    it("drives one call: the token request, then the API request, then done", function()
        local e = assert(core.engine(opts()))
        local c = e:call("get", { action = CRM, env = "dev" }, 10)
        local what, req = c:next(10)
        assert.equal("token", what)
        assert.equal("POST", req.method)
        assert.equal("http://127.0.0.1:9/oauth/token", req.url)
        assert.equal("token", req.kind)
        c:answer(10.1, token_ok())
        what, req = c:next(10.1)
        assert.equal("send", what)
        assert.equal("GET", req.method)
        assert.equal("http://127.0.0.1:9/api/v2/integration/actions/" .. CRM .. "/environments/dev/variables", req.url)
        assert.equal("Bearer " .. TOKEN, req.headers.Authorization)
        assert.equal(1, req.attempt)
        assert.is_true(req.timeout > 0 and req.timeout <= 30)
        c:answer(10.2, vars_ok("dev"))
        assert.equal("done", c:next(10.2))
        local res, err, meta = c:result()
        assert.equal("dev", res and res.environmentId, err)
        assert.equal('"e"', meta.etag)
        assert.equal(1, meta.attempts)
        assert.equal(200, meta.status)
        local s = e:stats()
        assert.equal(1, s.requests)
        assert.equal(1, s.successes)
        assert.equal(1, s.token_requests)
        assert.equal(20, #s.latency_buckets)
        local tok, ttl = e:token(10.2)
        assert.equal(TOKEN, tok)
        assert.is_true(ttl > 3000)
        c:close()
        c:close() -- idempotent
        assert.has_error(function() c:next(11) end)
    end)

    it("waits as the engine says (backoff, Retry-After) and counts the attempts", function()
        local e = assert(core.engine(opts({ retries = 2 })))
        local c = e:call("get", { action = CRM, env = "dev" }, 0)
        local now = 0
        local _, _ = c:next(now)
        c:answer(now, token_ok())
        c:next(now)
        c:answer(now, 429, { ["Retry-After"] = "3" }, "{}")
        local what, s = c:next(now)
        assert.equal("wait", what)
        assert.is_true(s >= 3 and s < 4, tostring(s))
        now = now + s
        local w2, req = c:next(now)
        assert.equal("send", w2)
        assert.equal(2, req.attempt)
        c:answer(now, vars_ok("dev"))
        assert.equal("done", c:next(now))
        assert.equal(2, c:meta().attempts)
        assert.equal(1, e:stats().rate_limited)
    end)

    it("makes calls with unusable data done at once with `invalid`, raises on wrong types", function()
        local e = assert(core.engine(opts()))
        local c = e:call("get", { action = "../x", env = "dev" }, 0)
        assert.equal("done", c:next(0))
        local r, msg, code = c:result()
        assert.is_nil(r)
        assert.equal("invalid", code)
        assert.is_string(msg)
        c = e:call("patch", { payload = { actionId = CRM, environmentId = "dev", variables = { { f = print } } } }, 0)
        assert.equal("done", c:next(0))
        assert.equal("invalid", select(3, c:result()))
        assert.has_error(function() e:call("delete", {}, 0) end)
        assert.has_error(function() e:call("get", { action = 1, env = "dev" }, 0) end)
        assert.has_error(function() e:call("patch", {}, 0) end)
        assert.has_error(function() e:call("get", { action = CRM, env = "dev" }) end) -- no now
        assert.has_error(function() e:call("get", { action = CRM, env = "dev" }, 0):next("x") end)
    end)

    it("gives builds one idempotency key for every attempt", function()
        local e = assert(core.engine(opts()))
        local c = e:call("build", { action = CRM }, 0)
        c:next(0)
        c:answer(0, token_ok())
        local _, r1 = c:next(0)
        local key = r1.headers["Idempotency-Key"]
        assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", key)
        c:neterr(0, "reset", "connection reset")
        local now, w, r2 = 0, c:next(0)
        while w == "wait" do
            now = now + r2
            w, r2 = c:next(now)
        end
        assert.equal("send", w)
        assert.equal(2, r2.attempt)
        assert.equal(key, r2.headers["Idempotency-Key"])
        assert.are_not.equal(core.uuid(), core.uuid())
    end)

    it("never shows a secret: tostring, messages, the token failure", function()
        local e = assert(core.engine(opts()))
        assert.not_matches(SECRET, tostring(e), 1, true)
        local c = e:call("patch", { payload = { actionId = CRM, environmentId = "dev",
            variables = { { name = "K", value = MASKED, masked = true } } } }, 0)
        c:next(0)
        c:answer(0, token_ok())
        c:next(0)
        c:answer(0, 422, {}, '{"message":"bad value ' .. MASKED .. ' for ' .. SECRET .. ' with ' .. TOKEN .. '"}')
        assert.equal("done", c:next(0))
        local _, msg = c:result()
        assert.is_string(msg)
        for _, canary in ipairs({ MASKED, SECRET, TOKEN }) do
            assert.not_matches(canary, msg, 1, true)
            assert.not_matches(canary, tostring(c), 1, true)
        end
        local e2 = assert(core.engine(opts()))
        local c2 = e2:call("get", { action = CRM, env = "dev" }, 0)
        c2:next(0)
        c2:neterr(0, "tls", "certificate for " .. SECRET .. " rejected")
        local code, fmsg = e2:token_failure(0)
        assert.equal("tls", code)
        assert.not_matches(SECRET, fmsg, 1, true)
        assert.equal("tls", select(3, c2:result()))
        e:close()
        assert.equal("cxone.Engine (closed)", tostring(e))
    end)

    it("imports a token another process obtained, and takes its failure", function()
        local e = assert(core.engine(opts()))
        assert.is_nil(e:token(0))
        assert.truthy(e:token_import("shared-token-1234", 100, 0))
        assert.equal("shared-token-1234", (e:token(0)))
        local c = e:call("get", { action = CRM, env = "dev" }, 0)
        local what, req = c:next(0)
        assert.equal("send", what) -- no token request of its own
        assert.equal("Bearer shared-token-1234", req.headers.Authorization)
        local bad, msg, code = e:token_import("not a token", 100, 0)
        assert.is_nil(bad)
        assert.equal("format", code)
        assert.is_string(msg)
        local e2 = assert(core.engine(opts()))
        e2:token_failed("auth", "token request refused (HTTP 401)", 5, 0)
        local c2 = e2:call("get", { action = CRM, env = "dev" }, 1)
        assert.equal("done", c2:next(1))
        local _, m2, code2 = c2:result()
        assert.equal("auth", code2)
        assert.equal("token request refused (HTTP 401)", m2)
        assert.equal(0, e2:stats().token_requests)
        assert.is_string(e:token_key())
        assert.equal(32, #e:token_key())
    end)
end)

describe("cxone.transport.wire", function()
    it("fetches one token for many calls and sends it", function()
        local h = host(function(req)
            if req.url:find("/oauth/token", 1, true) then return token_ok() end
            assert.equal("Bearer " .. TOKEN, req.headers.Authorization)
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts(), h))
        for _ = 1, 5 do
            local r, err, meta = t:get(CRM, "dev")
            assert.equal("dev", r and r.environmentId, err)
            assert.equal('"e"', meta.etag)
        end
        assert.equal(1, count(h, "oauth"))
        assert.equal(5, t:stats().successes)
        local ok, _, info = t:authenticate() -- a new token now, even though one is cached
        assert.is_true(ok)
        assert.equal(3600, info.expires_in)
        assert.equal(2, t:stats().token_requests)
        assert.is_true(t:token_ttl() > 3000)
        assert.not_matches(SECRET, tostring(t), 1, true)
    end)

    it("retries 503 with backoff and gives up after the budget", function()
        local h = host(function(req)
            if req.url:find("oauth") then return token_ok() end
            return 503, {}, '{"error":"busy"}'
        end)
        local t = assert(wire.new(opts({ retries = 2 }), h))
        local r, msg, code = t:get(CRM, "dev")
        assert.is_nil(r)
        assert.equal("server", code)
        assert.equal(3, t:last_meta().attempts)
        assert.is_string(msg)
        assert.is_true(h.slept > 0)
    end)

    it("honours Retry-After, and fails at once with rate_limited past the deadline", function()
        local calls = 0
        local h = host(function(req)
            if req.url:find("oauth") then return token_ok() end
            calls = calls + 1
            if calls == 1 then return 429, { ["retry-after"] = "3" }, "{}" end
            if calls == 3 then return 429, { ["Retry-After"] = { [0] = "500" } }, "{}" end
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts({ deadline = 60 }), h))
        assert.truthy(t:get(CRM, "dev"))
        assert.is_true(h.slept >= 3 and h.slept < 4)
        local slept = h.slept
        local r, msg, code = t:get(CRM, "dev")
        assert.is_nil(r)
        assert.equal("rate_limited", code)
        assert.matches("500 s", msg, 1, true)
        assert.equal(slept, h.slept, "no wait for an answer that cannot come in time")
    end)

    it("refreshes a refused token once and retries once", function()
        local issued = 0
        local h = host(function(req)
            if req.url:find("oauth") then
                issued = issued + 1
                return token_ok("tok" .. issued)
            end
            if req.headers.Authorization == "Bearer tok1" then return 401, {}, '{"error":"invalid_token"}' end
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts(), h))
        assert.truthy(t:get(CRM, "dev"))
        assert.equal(2, issued)
        assert.equal(2, t:last_meta().attempts)
    end)

    it("refuses unsupported methods before sending anything", function()
        local h = host(function() error("nothing may be sent") end)
        h.unsupported = { PATCH = "no PATCH here" }
        local t = assert(wire.new(opts(), h))
        local r, msg, code = t:patch({ actionId = CRM, environmentId = "dev", variables = {} })
        assert.is_nil(r)
        assert.equal("unsupported", code)
        assert.equal("no PATCH here", msg)
        assert.equal(0, #h.log)
    end)

    it("keeps the client secret and the token out of transport failures", function()
        local h = host(function(req)
            if req.url:find("oauth") then return token_ok() end
            return nil, "reset", "connection reset while sending " .. SECRET .. " " .. TOKEN
        end)
        local t = assert(wire.new(opts({ retries = 1 }), h))
        local r, msg, code = t:get(CRM, "dev")
        assert.is_nil(r)
        assert.equal("network", code)
        assert.not_matches(SECRET, msg, 1, true)
        assert.not_matches(TOKEN, msg, 1, true)
        assert.equal(2, t:last_meta().attempts)
    end)

    it("checks its options", function()
        local h = host(function() end)
        assert.has_error(function() wire.new(nil, h) end)
        assert.has_error(function() wire.new(opts(), {}) end)
        local t, msg, code = wire.new({ base_url = "http://127.0.0.1" }, h)
        assert.is_nil(t)
        assert.equal("config", code)
        assert.matches("client_id", msg, 1, true)
        t, msg, code = wire.new(opts({ base_url = "http://example.com" }), h)
        assert.is_nil(t)
        assert.equal("config", code)
        assert.matches("plain http", msg, 1, true)
        assert.has_error(function() wire.new(opts({ retries = "3" }), h) end)
    end)

    it("carries cxone.client's plan and drift (the same code path as libcurl)", function()
        local h = host(function(req)
            if req.url:find("oauth") then return token_ok() end
            local env = req.url:match("/environments/([^/]+)/")
            if env == "staging" then
                return 200, {}, '{"variables":[{"name":"A","value":"2","masked":false}],"environmentId":"staging"}'
            end
            return vars_ok(env)
        end)
        local t = assert(wire.new(opts(), h))
        local c = assert(client.new({ core = t, audit_log = false, state_file = false, client_secret = SECRET }))
        local rep = assert(c:drift(CRM, "development", "staging"))
        assert.equal(1, #rep.items)
        assert.equal("value_mismatch", rep.items[1].drift_type)
        local p = assert(c:plan({ action = CRM, tier = "staging", baseline = "development", variables = { A = "1" } }))
        assert.equal(1, p.changes)
    end)
end)

describe("cxone.transport.wire with a token store shared by processes", function()
    -- a store as nginx's shared dict gives it, on the hosts' shared fake clock
    local function store(clock)
        local s = { toks = {}, locks = {}, fails = {}, log = {} }
        local function now() return clock.t end
        s.api = {
            get = function(k)
                local v = s.toks[k]
                if v and v.at > now() then return v.tok, v.at - now() end
            end,
            set = function(k, tok, ttl) s.toks[k] = { tok = tok, at = now() + ttl } end,
            drop = function(k, tok) if s.toks[k] and s.toks[k].tok == tok then s.toks[k] = nil end end,
            lock = function(k, ttl, held)
                if not held and s.locks[k] and s.locks[k] > now() then return false end
                s.locks[k] = now() + ttl
                return true
            end,
            unlock = function(k) s.locks[k] = nil end,
            fail = function(k, code, msg, ttl) s.fails[k] = { code = code, msg = msg, at = now() + ttl } end,
            failure = function(k)
                local f = s.fails[k]
                if f and f.at > now() then return f.code, f.msg, f.at - now() end
            end,
        }
        return s
    end
    local function shared_host(clock, st, answer)
        local h = host(answer)
        h.tokens = st.api
        function h:now() return clock.t end
        function h:sleep(s) clock.t = clock.t + s; self.slept = self.slept + s end
        return h
    end

    it("a second process takes the first one's token: one token request in all", function()
        local clock = { t = 0 }
        local st = store(clock)
        local answer = function(req)
            if req.url:find("oauth") then return token_ok() end
            return vars_ok("dev")
        end
        local h1, h2 = shared_host(clock, st, answer), shared_host(clock, st, answer)
        local t1, t2 = assert(wire.new(opts(), h1)), assert(wire.new(opts(), h2))
        assert.truthy(t1:get(CRM, "dev"))
        assert.truthy(t2:get(CRM, "dev"))
        assert.equal(1, count(h1, "oauth"))
        assert.equal(0, count(h2, "oauth"))
        assert.is_nil(next(st.locks), "the lock was released")
    end)

    it("waiters get the leader's error at once, and nobody asks again while it is remembered", function()
        local clock = { t = 0 }
        local st = store(clock)
        local answer = function(req)
            if req.url:find("oauth") then return 401, {}, '{"error":"invalid_client"}' end
            return vars_ok("dev")
        end
        local h1, h2 = shared_host(clock, st, answer), shared_host(clock, st, answer)
        local t1, t2 = assert(wire.new(opts(), h1)), assert(wire.new(opts(), h2))
        local _, m1, c1 = t1:get(CRM, "dev")
        assert.equal("auth", c1)
        local t0 = clock.t
        local _, m2, c2 = t2:get(CRM, "dev")
        assert.equal("auth", c2)
        assert.equal(m1, m2)
        assert.equal(t0, clock.t, "no wait")
        assert.equal(0, #h2.log, "the second process sent nothing")
        assert.equal(1, count(h1, "oauth"))
    end)

    it("a lock holder that died costs the others at most one request timeout", function()
        local clock = { t = 0 }
        local st = store(clock)
        local h = shared_host(clock, st, function(req)
            if req.url:find("oauth") then return token_ok() end
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts({ timeout = 5, deadline = 60 }), h))
        assert.is_true(st.api.lock(t.token_key, 5)) -- taken by a process that then died
        assert.truthy(t:get(CRM, "dev"))
        assert.is_true(clock.t >= 5 and clock.t <= 5.1, "waited " .. clock.t .. " s")
        assert.equal(1, count(h, "oauth"))
    end)

    it("a token the API refused is dropped from the store, not taken again", function()
        local clock = { t = 0 }
        local st = store(clock)
        local issued = 0
        local h = shared_host(clock, st, function(req)
            if req.url:find("oauth") then
                issued = issued + 1
                return token_ok("tok" .. issued)
            end
            if req.headers.Authorization == "Bearer stale-token" then return 401, {}, "{}" end
            return vars_ok("dev")
        end)
        local t = assert(wire.new(opts(), h))
        st.api.set(t.token_key, "stale-token", 100)
        assert.truthy(t:get(CRM, "dev"))
        assert.equal(1, issued)
        assert.equal("tok1", (st.api.get(t.token_key)))
    end)
end)
