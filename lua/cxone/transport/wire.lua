--- A cxone.Client-compatible object for hosts that do their own I/O (nginx cosockets, HAProxy's
-- httpclient). The C core builds every request and interprets every answer (core.wire_*); an
-- *engine* only moves bytes. `cxone.client.new{core = obj}` then runs plan, apply and drift on
-- top of it, the same code path as the libcurl client.
--
-- An engine is a table with:
-- `engine:request(req, timeouts)` → status, headers (lowercase names), body, or nil, message, code
--   (`network`, `timeout`, `refused`, `tls`, `config`), final (true: do not retry); `req` is
--   `{method, url, headers, body}`,
-- `engine:sleep(seconds)`, `engine:now()` (seconds), optional `engine:run_all(fns, concurrency)`,
-- optional `engine.unsupported` (method → why), and, with `engine.shares_tokens`, token storage
-- shared by processes:
-- `engine:token_get(key)`, `engine:token_set(key, token, ttl)`, `engine:token_lock(key)` (true
-- when this caller may refresh), `engine:token_unlock(key)`, `engine:token_drop(key, token)`.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.transport.wire

local wire = require("cxone.core")

local M = {}

local Transport = {}
Transport.__index = Transport
Transport.__name = "cxone.WireTransport"

local DEFAULT_SCOPE = "integration:actions:read integration:actions:write integration:actions:admin"
local OPS = { get = true, patch = true, put = true, build = true }
local LOCK_WAIT = 10      -- seconds a caller waits for another one's token refresh
local LOCK_POLL = 0.02

-- Per-process token storage, used when the engine has none of its own.
local function local_store()
    local toks, locks = {}, {}
    return {
        get = function(key, now)
            local t = toks[key]
            if t and now < t.refresh_at then return t.token end
            return nil
        end,
        set = function(key, token, ttl, now) toks[key] = { token = token, refresh_at = now + ttl } end,
        lock = function(key, now)
            if locks[key] and locks[key] > now then return false end
            locks[key] = now + LOCK_WAIT
            return true
        end,
        unlock = function(key) locks[key] = nil end,
        drop = function(key, token)
            if toks[key] and toks[key].token == token then toks[key] = nil end
        end,
    }
end

-- One store per Lua state: every transport in it shares tokens (keyed by token URL + client id
-- + scope), e.g. all HAProxy threads under lua-load.
local STORE = local_store()

local function opt_num(opts, k, def, lo, hi)
    local v = opts[k]
    if v == nil then return def end
    if type(v) ~= "number" or v < lo or v > hi then
        error(("bad argument #1 to 'new' (option '%s' must be a number in [%s, %s])"):format(k, lo, hi), 3)
    end
    return v
end

local function opt_str(opts, k)
    local v = opts[k]
    if v ~= nil and type(v) ~= "string" then
        error(("bad argument #1 to 'new' (option '%s' must be a string, got %s)"):format(k, type(v)), 3)
    end
    if v == "" then return nil end
    return v
end

--- Creates a transport. opts: base_url (required), token_url, client_id, client_secret (or
-- access_key_id/access_key_secret as well), scope, basic_auth, insecure_http, retries (3),
-- timeout (per attempt, 30 s), connect_timeout (10 s), deadline (per call, 120 s),
-- refresh_margin (30 s), backoff_base, backoff_cap, retry_after_cap, user_agent.
-- @tparam table opts
-- @tparam table engine
-- @treturn[1] cxone.WireTransport
-- @treturn[2] fail with code "config"
function M.new(opts, engine)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    if type(engine) ~= "table" or type(engine.request) ~= "function" then
        error("bad argument #2 to 'new' (an engine with request() expected)", 2)
    end
    local base = opt_str(opts, "base_url")
    local id, secret = opt_str(opts, "client_id"), opt_str(opts, "client_secret")
    local key_id, key_secret = opt_str(opts, "access_key_id"), opt_str(opts, "access_key_secret")
    if not id then error("bad argument #1 to 'new' (option 'client_id' is required)", 2) end
    if not secret then error("bad argument #1 to 'new' (option 'client_secret' is required)", 2) end
    if (key_id == nil) ~= (key_secret == nil) then
        error("bad argument #1 to 'new' (options 'access_key_id' and 'access_key_secret' go together)", 2)
    end
    if not base then return nil, "option 'base_url' is required", "config" end
    base = base:gsub("/+$", "")
    local ok, err = wire.wire_check_url("base_url", base, opts.insecure_http == true)
    if not ok then return nil, err, "config" end
    local token_url = opt_str(opts, "token_url") or (base .. "/oauth/token")
    ok, err = wire.wire_check_url("token_url", token_url, opts.insecure_http == true)
    if not ok then return nil, err, "config" end
    local scope = opt_str(opts, "scope") or DEFAULT_SCOPE
    local self = setmetatable({
        engine = engine,
        base_url = base,
        token_url = token_url,
        client_id = id,
        scope = scope,
        -- the key under which the token is shared: token URL + client id + scope
        token_key = wire.sha256(table.concat({ token_url, id, key_id or "", scope }, "\0")):sub(1, 32),
        token_req = { token_url = token_url, client_id = id, client_secret = secret,
                      access_key_id = key_id, access_key_secret = key_secret, scope = scope,
                      basic_auth = opts.basic_auth == true },
        secrets = { secret, key_secret },
        retries = opt_num(opts, "retries", 3, 0, 100),
        timeout = opt_num(opts, "timeout", 30, 0.001, 86400),
        connect_timeout = opt_num(opts, "connect_timeout", 10, 0.001, 3600),
        deadline = opt_num(opts, "deadline", 120, 0.001, 86400),
        refresh_margin = opt_num(opts, "refresh_margin", 30, 0, 86400),
        backoff_base = opt_num(opts, "backoff_base", 0.5, 0, 3600),
        backoff_cap = opt_num(opts, "backoff_cap", 8, 0, 3600),
        retry_after_cap = opt_num(opts, "retry_after_cap", 60, 0, 86400),
        user_agent = opt_str(opts, "user_agent") or ("cxone-overrides/" .. wire._VERSION .. " (embedded)"),
        store = STORE,
        stats_ = { requests = 0, attempts = 0, retries = 0, token_requests = 0, successes = 0,
                   failures = 0, connections = 0, latency_ms_total = 0 },
        token_expiry = nil,
        closed = false,
    }, Transport)
    return self
end

function Transport:__tostring()
    if self.closed then return "cxone.WireTransport (closed)" end
    return ("cxone.WireTransport (client_id=%s, %s)"):format(self.client_id, self.base_url)
end

local function check(self)
    if self.closed then error("attempt to use a closed cxone.WireTransport", 3) end
end

function Transport:_now() return self.engine:now() end

local function store_get(self, now)
    local e = self.engine
    if e.shares_tokens then return e:token_get(self.token_key) end
    return self.store.get(self.token_key, now)
end

local function store_set(self, token, ttl, now)
    local e = self.engine
    if e.shares_tokens then return e:token_set(self.token_key, token, ttl) end
    return self.store.set(self.token_key, token, ttl, now)
end

local function store_lock(self, now)
    local e = self.engine
    if e.shares_tokens then return e:token_lock(self.token_key, LOCK_WAIT) end
    return self.store.lock(self.token_key, now)
end

local function store_unlock(self)
    local e = self.engine
    if e.shares_tokens then return e:token_unlock(self.token_key) end
    return self.store.unlock(self.token_key)
end

local function store_drop(self, token)
    local e = self.engine
    if e.shares_tokens then return e:token_drop(self.token_key, token) end
    return self.store.drop(self.token_key, token)
end

-- One token request with retries: the token table, or nil, message, code.
local function fetch_token(self)
    local e = self.engine
    local start = e:now()
    local used = 0
    while true do
        local req = wire.wire_token_request(self.token_req)
        self.stats_.token_requests = self.stats_.token_requests + 1
        local st, hdrs, body, final = e:request(req, self:_timeouts(start))
        local delay
        if not st then
            local msg, code = wire.wire_scrub(tostring(hdrs), self.secrets), body or "network"
            if not final then delay = wire.wire_retry(used, code, self:_retry_opts(nil, start)) end
            if not delay then return nil, "token request failed: " .. msg, code end
        else
            if st ~= 200 then
                local ra = hdrs and hdrs["retry-after"]
                delay = wire.wire_retry(used, st, self:_retry_opts(ra, start))
            end
            if not delay then
                return wire.wire_token_response(st, body, { access_key = self.token_req.access_key_id ~= nil })
            end
        end
        used = used + 1
        e:sleep(delay)
    end
end

--- The bearer token: the shared one while fresh, else a new one fetched by exactly one caller
-- (the others wait for it). `stale` (a token the API refused) is never returned again.
-- @treturn[1] string token
-- @treturn[2] fail
function Transport:_token(stale)
    local e = self.engine
    local now = e:now()
    if stale then store_drop(self, stale) end
    local tok = store_get(self, now)
    if tok and tok ~= stale then return tok end
    local waited_until = now + LOCK_WAIT
    while true do
        if store_lock(self, now) then
            tok = store_get(self, e:now())
            if tok and tok ~= stale then store_unlock(self); return tok end
            local t, err, code = fetch_token(self)
            if not t then store_unlock(self); return nil, err, code end
            local life = t.expires_in - self.refresh_margin
            if life < t.expires_in / 2 then life = t.expires_in / 2 end
            store_set(self, t.access_token, life, e:now())
            self.token_expiry = e:now() + t.expires_in
            self.token_scope = t.scope
            self.token_expires_in = t.expires_in
            store_unlock(self)
            return t.access_token
        end
        e:sleep(LOCK_POLL)
        now = e:now()
        tok = store_get(self, now)
        if tok and tok ~= stale then return tok end
        if now > waited_until then
            return nil, "timed out waiting for another worker's token request", "network"
        end
    end
end

function Transport:_timeouts(start)
    local left = start + self.deadline - self.engine:now()
    local t = self.timeout < left and self.timeout or left
    if t < 0.001 then t = 0.001 end
    local ct = self.connect_timeout < t and self.connect_timeout or t
    return { connect = ct, send = t, read = t }
end

function Transport:_retry_opts(retry_after, start)
    local ra = retry_after and wire.wire_retry_after(retry_after) or nil
    return { retries = self.retries, backoff_base = self.backoff_base, backoff_cap = self.backoff_cap,
             retry_after = ra, retry_after_cap = self.retry_after_cap,
             remaining = start + self.deadline - self.engine:now() }
end

-- One API call with retries and the 401 refresh: `result, nil, meta` or `nil, message, code`,
-- and the meta once more as a fourth value (internal: batch keeps it per request, the public
-- methods in last_meta).
function Transport:_call(op, ropts, payload)
    local e = self.engine
    local st = self.stats_
    st.requests = st.requests + 1
    local start = e:now()
    local attempts, used, auth_retried = 0, 0, false
    local function done(status, r, a, b)
        local meta = r and b or { status = status }
        meta.latency_ms = math.floor((e:now() - start) * 1e6 + 0.5) / 1000
        meta.attempts = attempts
        if ropts.idempotency_key then meta.idempotency_key = ropts.idempotency_key end
        st.latency_ms_total = st.latency_ms_total + meta.latency_ms
        if r then st.successes = st.successes + 1 else st.failures = st.failures + 1 end
        return r, a, b, meta
    end
    local probe, perr, pcode = wire.wire_request(op, ropts)
    if not probe then return done(0, nil, perr, pcode) end
    ropts.idempotency_key = probe.idempotency_key
    local why = e.unsupported and e.unsupported[probe.method]
    if why then return done(0, nil, why, "unsupported") end
    while true do
        local tok, terr, tcode = self:_token()
        if not tok then return done(0, nil, terr, tcode) end
        ropts.token = tok
        local req = wire.wire_request(op, ropts)
        attempts = attempts + 1
        st.attempts = st.attempts + 1
        local status, hdrs, body, final = e:request(req, self:_timeouts(start))
        local delay
        if not status then
            local msg, code = wire.wire_scrub(tostring(hdrs), self.secrets, payload), body or "network"
            if not final then delay = wire.wire_retry(used, code, self:_retry_opts(nil, start)) end
            if not delay then
                return done(0, nil, ("request failed after %d attempt%s: %s"):format(attempts,
                    attempts == 1 and "" or "s", msg), code)
            end
        elseif status == 401 and not auth_retried then
            auth_retried = true
            self:_token(tok) -- refresh once, retry once (outside the retry budget)
            delay = 0
        else
            if status < 200 or status >= 300 then
                delay = wire.wire_retry(used, status, self:_retry_opts(hdrs and hdrs["retry-after"], start))
            end
            if not delay then
                return done(status, wire.wire_response(op, status, hdrs, body, {
                    client_id = self.client_id, secrets = { self.secrets[1], self.secrets[2], tok },
                    payload = payload, attempts = attempts }))
            end
        end
        if delay > 0 or status ~= 401 then
            used = used + 1
            st.retries = st.retries + 1
            e:sleep(delay)
        end
    end
end

--- Fetches a token now. @treturn[1] true, nil, {expires_in=, scope=} @treturn[2] fail
function Transport:authenticate()
    check(self)
    -- a new token even when one is cached: the cached one is passed as stale
    local tok, err, code = self:_token(store_get(self, self.engine:now()) or false)
    if not tok then return nil, err, code end
    return true, nil, { expires_in = self.token_expires_in, scope = self.token_scope }
end

-- A public call's three values, its meta kept for last_meta.
local function public(self, r, a, b, meta)
    self.last_meta_ = meta
    return r, a, b
end

--- The meta table of the latest get, patch, put or build, as cxone.Client:last_meta.
function Transport:last_meta()
    check(self)
    return self.last_meta_
end

local function get(self, action, env)
    return self:_call("get", { base_url = self.base_url, action = action, env = env, user_agent = self.user_agent })
end

function Transport:get(action, env)
    check(self)
    if type(action) ~= "string" then error("bad argument #1 to 'get' (string expected, got " .. type(action) .. ")", 2) end
    if type(env) ~= "string" then error("bad argument #2 to 'get' (string expected, got " .. type(env) .. ")", 2) end
    return public(self, get(self, action, env))
end

local function write(self, op, payload, opts)
    check(self)
    if type(payload) ~= "table" then error("bad argument #1 to '" .. op .. "' (table expected, got " .. type(payload) .. ")", 3) end
    if opts ~= nil and type(opts) ~= "table" then error("bad argument #2 to '" .. op .. "' (table expected)", 3) end
    return self:_call(op, { base_url = self.base_url, payload = payload, if_match = opts and opts.if_match,
                            user_agent = self.user_agent }, payload)
end

local function build(self, action, key)
    return self:_call("build", { base_url = self.base_url, action = action, idempotency_key = key,
                                 user_agent = self.user_agent })
end

function Transport:patch(payload, opts) return public(self, write(self, "patch", payload, opts)) end
function Transport:put(payload, opts) return public(self, write(self, "put", payload, opts)) end

function Transport:build(action, opts)
    check(self)
    if type(action) ~= "string" then error("bad argument #1 to 'build' (string expected, got " .. type(action) .. ")", 2) end
    return public(self, build(self, action, opts and opts.idempotency_key))
end

--- Webhooks are not sent from an embedded host (they would hold a request handler).
function Transport:webhook()
    check(self)
    self.last_meta_ = nil
    return nil, "webhooks are not sent by the embedded transports; run promotions with the CLI",
        "unsupported"
end

--- Runs many requests ({op=, action=, env=, payload=, if_match=, idempotency_key=}) with at most
-- `concurrency` in flight when the engine can run calls concurrently; results in order, shaped as
-- cxone.Client:batch's.
function Transport:batch(reqs, opts)
    check(self)
    if type(reqs) ~= "table" then error("bad argument #1 to 'batch' (table expected)", 2) end
    opts = opts or {}
    local conc = opts.concurrency or 8
    local results, stop = {}, false
    local fns = {}
    for i, r in ipairs(reqs) do
        if type(r) ~= "table" or not OPS[r.op] then
            error(("bad argument #1 to 'batch' (request #%d: op must be get, patch, put or build)"):format(i), 2)
        end
        local bad = (r.op == "get" and (type(r.action) ~= "string" or type(r.env) ~= "string") and "action and env")
            or (r.op == "build" and type(r.action) ~= "string" and "action")
            or ((r.op == "patch" or r.op == "put") and type(r.payload) ~= "table" and "payload")
        if bad then
            error(("bad argument #1 to 'batch' (request #%d: %s missing or of the wrong type)"):format(i, bad), 2)
        end
        fns[i] = function()
            if stop then
                results[i] = { ok = false, skipped = true, code = "not_attempted" }
                return
            end
            local res, err, code, meta
            if r.op == "get" then
                res, err, code, meta = get(self, r.action, r.env)
            elseif r.op == "build" then res, err, code, meta = build(self, r.action, r.idempotency_key)
            else res, err, code, meta = write(self, r.op, r.payload, { if_match = r.if_match }) end
            if res then
                results[i] = { ok = true, result = res, meta = meta }
            else
                results[i] = { ok = false, error = err, code = code, meta = meta }
                if opts.stop_on_failure then stop = true end
            end
        end
    end
    if self.engine.run_all and conc > 1 and #fns > 1 then
        self.engine:run_all(fns, conc)
    else
        for _, f in ipairs(fns) do f() end
    end
    return results
end

function Transport:stats()
    local out = {}
    for k, v in pairs(self.stats_) do out[k] = v end
    return out
end

function Transport:token_ttl()
    if not self.token_expiry then return nil end
    local t = self.token_expiry - self.engine:now()
    return t > 0 and t or 0
end

function Transport:close()
    self.closed = true
    self.secrets = {}
    self.token_req = nil
    if self.engine.close then self.engine:close() end
end

M.Transport = Transport
--- A promotion client (cxone.client: vars, drift, plan, apply, promote) whose requests go
-- through `engine`: the one Lua code path of every host.
-- @tparam table opts as for `new`, plus cxone.client's options
-- @tparam table engine
-- @tparam[opt] table defaults cxone.client options used where opts says nothing
-- @treturn[1] cxone.PromoteClient
-- @treturn[2] fail with code "config"
function M.client(opts, engine, defaults)
    local t, err, code = M.new(opts, engine)
    if not t then return nil, err, code end
    local cfg = {}
    for k, v in pairs(defaults or {}) do cfg[k] = v end
    for k, v in pairs(opts) do cfg[k] = v end
    cfg.core = t
    return require("cxone.client").new(cfg)
end

return M
