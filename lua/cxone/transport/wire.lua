--- The generic driver of the call engine (`core.engine`) for hosts that do their own I/O (nginx
-- cosockets, HAProxy's httpclient, tests with scripted answers), and a cxone.Client-compatible
-- object over it: `cxone.client.new{core = obj}` runs plan, apply and drift on top of it, the
-- same code path as the libcurl client. Every policy (the token and its 401 refresh, retries,
-- backoff, the deadline, pacing, scrubbing, the call's meta) is the engine's: this loop only
-- moves the engine's requests to the host and the host's answers back, and sleeps when told.
--
-- A host is a table with:
-- - `host:request(req)` → `status, headers, body`, or `nil, kind, detail` when no answer came
--   (`kind`: "refused", "resolve", "tls", "timeout", "reset", "too_large", "memory", "config",
--   "other": see `Call:neterr`); `req` is `{method=, url=, headers={Name=value}, body=,
--   timeout=, connect_timeout=, kind=, attempt=}`; `headers` of the answer: name (any case) →
--   value or list of values;
-- - `host:sleep(seconds)`, `host:now()` (seconds, monotonic);
-- - optional `host:run_all(fns, concurrency)` (runs the functions concurrently);
-- - optional `host.unsupported` (method → why: calls needing it fail with code `unsupported`
--   before anything is sent);
-- - optional `host:pace(rate)` (called before each API attempt with the engine's rate, requests
--   per second: waits for a slot shared with other processes);
-- - optional `host.tokens`, a token store shared by processes: `get(key)` → token, ttl;
--   `set(key, token, ttl)`; `drop(key, token)` (only if it is still that one); `lock(key, ttl, held)`
--   → true when this caller may fetch one (an expiring lock: a holder that died costs at most
--   `ttl`; `held`: the caller holds it already, extend it); `unlock(key)`; `fail(key, code, message, ttl)`; `failure(key)` → code, message, ttl.
--   The token is a secret: a store keeps it where only the host's processes can read it;
-- - optional `host.connections` and `host.paced_s` (numbers, added to `stats`), `host:close()`.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.transport.wire

local core = require("cxone.core")

local M = {}

local Transport = {}
Transport.__index = Transport
Transport.__name = "cxone.WireTransport"

local OPS = { get = true, patch = true, put = true, build = true }
local METHOD = { get = "GET", patch = "PATCH", put = "PUT", build = "POST" }
local TOKEN_POLL = 0.02 -- seconds between looks at the shared store while another fetches

--- Creates a transport: an engine (`core.engine(opts)`) driven over `host`. opts: as
-- `core.engine` (base_url, token_url, client_id, client_secret, access_key_id,
-- access_key_secret, scope, basic_auth, insecure_http, retries, timeout, connect_timeout,
-- deadline, refresh_margin, backoff_base, backoff_cap, retry_after_cap, user_agent,
-- rate_limit, max_concurrency).
-- @tparam table opts
-- @tparam table host
-- @treturn[1] cxone.WireTransport
-- @treturn[2] fail with code "config" (a missing or invalid setting) or "memory"
-- @raise when an option has the wrong Lua type, or host is not a host
function M.new(opts, host)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    if type(host) ~= "table" or type(host.request) ~= "function" then
        error("bad argument #2 to 'new' (a host with request() expected)", 2)
    end
    local eng, err, code = core.engine(opts)
    if not eng then return nil, err, code end
    local set = eng:settings()
    return setmetatable({
        host = host,
        engine = eng,
        settings = set,
        token_key = host.tokens and assert(eng:token_key()) or nil,
        lock_call = nil, -- the call of this engine that holds the shared store's lock
        lock_gen = nil,
        last_meta_ = nil,
        closed = false,
    }, Transport)
end

function Transport:__tostring()
    if self.closed then return "cxone.WireTransport (closed)" end
    return ("cxone.WireTransport (client_id=%s, %s)"):format(self.settings.client_id, self.settings.base_url)
end

local function check(self)
    if self.closed then error("attempt to use a closed cxone.WireTransport", 3) end
end

-- ---- the token shared between processes ----

-- Before the engine is asked for its next step: if it has no fresh token, take the shared one,
-- or the failure its fetcher published, or the lock (then the engine's own token request goes
-- out), or wait for whoever holds the lock. Returns when the engine may be asked.
local function await_token(self, call, deadline_at)
    local host, eng, st, key = self.host, self.engine, self.host.tokens, self.token_key
    while true do
        local now = host:now()
        if self.lock_call or eng:token(now) or eng:token_failure(now) or now >= deadline_at then
            return -- a fetch of ours is under way, or the engine knows what to do
        end
        local tok, ttl = st.get(key)
        if tok and ttl and ttl > 0 and eng:token_import(tok, ttl, now) then return end
        local code, msg, fttl = st.failure(key)
        if code then
            eng:token_failed(code, msg, fttl or self.settings.token_fail_memory, now)
            return
        end
        if st.lock(key, self.settings.timeout) then
            self.lock_call, self.lock_gen = call, eng:token_gen()
            return
        end
        host:sleep(TOKEN_POLL)
    end
end

-- After a token request of ours was answered (or not): publish the token or the failure, and
-- release the lock; while the engine retries the request, the lock stays ours.
local function after_token(self, call, force)
    if self.lock_call ~= call then return end
    local host, eng, st, key = self.host, self.engine, self.host.tokens, self.token_key
    local now = host:now()
    if eng:token_gen() ~= self.lock_gen then
        local tok, ttl = eng:token(now)
        if tok then st.set(key, tok, ttl) end
    else
        local code, msg, fttl = eng:token_failure(now)
        if code then
            st.fail(key, code, msg, fttl)
        elseif not force then
            return -- the engine tries again
        end
    end
    self.lock_call = nil
    st.unlock(key)
end

-- ---- one call ----

-- Runs a call to its end: `result, err, code, meta` (meta also for failures).
function Transport:_run(op, args)
    local host, eng = self.host, self.engine
    local why = host.unsupported and host.unsupported[METHOD[op] or ""]
    if why then
        return nil, why, "unsupported", nil
    end
    local start = host:now()
    local call = eng:call(op, args, start)
    local shared = host.tokens ~= nil
    local deadline_at = start + self.settings.deadline
    while true do
        if shared then await_token(self, call, deadline_at) end
        local what, x = call:next(host:now())
        if what == "done" then break end
        if what == "wait" then
            host:sleep(x)
        else
            if what == "token" and shared then
                self.host.tokens.lock(self.token_key, x.timeout, true) -- ours for this request's timeout
            elseif what == "send" and host.pace then
                local rate = eng:rate()
                if rate then host:pace(rate) end
            end
            local status, h, b = host:request(x)
            local now = host:now()
            if status then
                if status == 401 and what == "send" and shared then
                    -- the shared token was refused: no process takes it again
                    local auth = x.headers.Authorization
                    if auth then host.tokens.drop(self.token_key, auth:sub(8)) end
                end
                call:answer(now, status, h, b)
            else
                call:neterr(now, h or "other", b)
            end
            if what == "token" and shared then after_token(self, call) end
        end
    end
    if shared then after_token(self, call, true) end
    local res, err, code = call:result()
    local meta = call:meta()
    call:close()
    return res, err, code, meta
end

-- A public call's three values, its meta kept for last_meta.
local function public(self, r, a, b, meta)
    self.last_meta_ = meta
    return r, a, b
end

--- Fetches a token now (a new one even when one is cached).
-- @treturn[1] true
-- @treturn[1] nil
-- @treturn[1] table `{expires_in=, scope=}`
-- @treturn[2] fail
function Transport:authenticate()
    check(self)
    local ok, err, code = self:_run("token", nil)
    if not ok then return nil, err, code end
    local _, expires_in, scope = self.engine:token_ttl(self.host:now())
    return true, nil, { expires_in = expires_in, scope = scope }
end

--- The meta table of the latest get, patch, put or build, as cxone.Client:last_meta.
function Transport:last_meta()
    check(self)
    return self.last_meta_
end

local function argcheck(cond, n, fname, msg)
    if not cond then error(("bad argument #%d to '%s' (%s)"):format(n, fname, msg), 3) end
end

function Transport:get(action, env)
    check(self)
    argcheck(type(action) == "string", 1, "get", "string expected, got " .. type(action))
    argcheck(type(env) == "string", 2, "get", "string expected, got " .. type(env))
    return public(self, self:_run("get", { action = action, env = env }))
end

local function write(self, op, payload, opts)
    check(self)
    argcheck(type(payload) == "table", 1, op, "table expected, got " .. type(payload))
    argcheck(opts == nil or type(opts) == "table", 2, op, "table expected, got " .. type(opts))
    local if_match = opts and opts.if_match
    argcheck(if_match == nil or type(if_match) == "string", 2, op, "if_match must be a string")
    return public(self, self:_run(op, { payload = payload, if_match = if_match }))
end

function Transport:patch(payload, opts) return write(self, "patch", payload, opts) end
function Transport:put(payload, opts) return write(self, "put", payload, opts) end

function Transport:build(action, opts)
    check(self)
    argcheck(type(action) == "string", 1, "build", "string expected, got " .. type(action))
    argcheck(opts == nil or type(opts) == "table", 2, "build", "table expected, got " .. type(opts))
    local key = opts and opts.idempotency_key
    argcheck(key == nil or type(key) == "string", 2, "build", "idempotency_key must be a string")
    return public(self, self:_run("build", { action = action, idempotency_key = key }))
end

--- Webhooks are not sent from an embedded host (they would hold a request handler).
function Transport:webhook()
    check(self)
    self.last_meta_ = nil
    return nil, "webhooks are not sent by the embedded transports; run promotions with the CLI",
        "unsupported"
end

--- Runs many requests ({op=, action=, env=, payload=, if_match=, idempotency_key=}) with at most
-- `concurrency` in flight when the host can run calls concurrently; results in order, shaped as
-- cxone.Client:batch's.
function Transport:batch(reqs, opts)
    check(self)
    argcheck(type(reqs) == "table", 1, "batch", "table expected, got " .. type(reqs))
    argcheck(opts == nil or type(opts) == "table", 2, "batch", "table expected, got " .. type(opts))
    opts = opts or {}
    local conc = opts.concurrency or 8
    argcheck(type(conc) == "number" and conc >= 1, 2, "batch", "concurrency must be a number >= 1")
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
        local args = { action = r.action, env = r.env, payload = r.payload, if_match = r.if_match,
                       idempotency_key = r.idempotency_key }
        fns[i] = function()
            if stop then
                results[i] = { ok = false, skipped = true, code = "not_attempted" }
                return
            end
            local res, err, code, meta = self:_run(r.op, args)
            if res then
                results[i] = { ok = true, result = res, meta = meta }
            else
                results[i] = { ok = false, error = err, code = code, meta = meta }
                if opts.stop_on_failure then stop = true end
            end
        end
    end
    if self.host.run_all and conc > 1 and #fns > 1 then
        self.host:run_all(fns, conc)
    else
        for _, f in ipairs(fns) do f() end
    end
    return results
end

--- Counters: the engine's (`Engine:stats`), with the host's connections and the time the host
-- held requests back for a rate limit shared with other processes (in `paced_s` too).
function Transport:stats()
    check(self)
    local s = self.engine:stats()
    s.connections = tonumber(self.host.connections) or 0
    s.paced_s = s.paced_s + (tonumber(self.host.paced_s) or 0)
    return s
end

--- Seconds left on the token, or nil.
function Transport:token_ttl()
    check(self)
    return (self.engine:token_ttl(self.host:now()))
end

function Transport:close()
    if self.closed then return end
    self.closed = true
    if self.lock_call and self.host.tokens then self.host.tokens.unlock(self.token_key) end
    self.lock_call = nil
    self.engine:close()
    if self.host.close then self.host:close() end
end

M.Transport = Transport

--- A promotion client (cxone.client: vars, drift, plan, apply, promote) whose requests go
-- through `host`: the one Lua code path of every host.
-- @tparam table opts as for `new`, plus cxone.client's options
-- @tparam table host
-- @tparam[opt] table defaults cxone.client options used where opts says nothing
-- @treturn[1] cxone.PromoteClient
-- @treturn[2] fail with code "config"
function M.client(opts, host, defaults)
    local t, err, code = M.new(opts, host)
    if not t then return nil, err, code end
    local cfg = {}
    for k, v in pairs(defaults or {}) do cfg[k] = v end
    for k, v in pairs(opts) do cfg[k] = v end
    cfg.core = t
    return require("cxone.client").new(cfg)
end

return M
