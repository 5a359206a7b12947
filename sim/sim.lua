-- sim.lua: all of cxone-sim's behaviour (routing, OAuth tokens, variables, builds, faults,
-- webhooks, stats, state file). Embedded in the binary; called by http.c from one thread.
local json = require("cjson.safe").new()
local simc = require("simc")

local M = {}

local SCOPE_READ = "integration:actions:read"
local SCOPE_WRITE = "integration:actions:write"
local ENVIRONMENTS = { dev = true, staging = true, prod = true }
local ENV_ORDER = simc.tiers -- the tier matrix, defined once in plugin/tiers.h
local MAX_VARIABLES = 50
local MAX_VALUE_BYTES = 1024
local MAX_NAME_BYTES = 128
local NAME_PATTERN = "^[A-Z_][A-Z0-9_]*$"
local MAX_BUILDS_KEPT = 1000
local MAX_EVENTS_PER_HOOK = 1000
local STATE_FORMAT = "cxone-sim-state/1"
local FAULT_KINDS = { status = true, delay = true, hang = true, reset = true, truncate = true,
                      not_json = true, expire_tokens = true, lost_answer = true, echo = true }
local FAULT_KIND_LIST = "status, delay, hang, reset, truncate, not_json, expire_tokens, lost_answer, echo"
local JSON_HEADERS = { ["Content-Type"] = "application/json" }

-- Debian's lua-cjson encodes an empty table as {}: empty arrays go out as this marker,
-- replaced by [] after encoding.
local EMPTY = "__cxone_sim_empty_array__"
local EMPTY_QUOTED = '"' .. EMPTY .. '"'

local function encode(v)
    local s = assert(json.encode(v))
    if s:find(EMPTY_QUOTED, 1, true) then s = s:gsub(EMPTY_QUOTED, "[]") end
    -- cjson 2.1.0 writes "/" as "\/"; a solidus never needs escaping, so undo it for
    -- readable output (an escaped backslash is "\\", which this cannot split).
    if s:find("\\/", 1, true) then s = s:gsub("\\/", "/") end
    return s
end

local function arr(t)
    if #t == 0 then return EMPTY end
    return t
end

---------------------------------------------------------------------------------------------
-- Run-time data
---------------------------------------------------------------------------------------------
-- rate_limit: requests/s per client (0 = off); rate_limit_headers: "all", "429" or "none";
-- rate_limit_reset: "delta" or "epoch" (see sim/README.md, Rate limit)
local config = { token_ttl = 3600, rate_limit = 0, rate_limit_headers = "all", rate_limit_reset = "delta" }
local start_config = {}     -- the run-time switches as given at start, for POST /_sim/reset
local initial_text          -- the data set loaded at start, for POST /_sim/reset
local S                     -- the state: see load_state
local tokens = {}           -- access token -> { client_id, scopes = set, expires }
local buckets = {}          -- client id -> { level, t } (rate limit)
local faults = {}           -- armed faults, in order
local webhooks = {}         -- name -> list of events
local pending = {}          -- deferred answers: id -> function returning a verdict
local next_pending = 0
local issued_since_purge = 0
local KINDS = { "read", "write", "build", "token", "other" }
local stats = { requests = 0, tokens_issued = 0, builds_queued = 0, rate_limited = 0, routes = {}, kinds = {} }
for _, k in ipairs(KINDS) do stats.kinds[k] = { requests = 0, rate_limited = 0 } end
local KEY_KIND = {}         -- route key ("GET <template>") -> kind; filled next to ROUTES

---------------------------------------------------------------------------------------------
-- Small helpers
---------------------------------------------------------------------------------------------
local function is_array(t)
    if type(t) ~= "table" then return false end
    local n = #t
    for k in pairs(t) do
        if type(k) ~= "number" or k < 1 or k > n or k % 1 ~= 0 then return false end
    end
    return true
end

local function is_object(t)
    return type(t) == "table" and (next(t) == nil or not is_array(t))
end

local function uuid4()
    local h = simc.random_hex(16)
    local variant = ("89ab"):sub(tonumber(h:sub(17, 17), 16) % 4 + 1, tonumber(h:sub(17, 17), 16) % 4 + 1)
    return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-4" .. h:sub(14, 16) .. "-" .. variant
        .. h:sub(18, 20) .. "-" .. h:sub(21, 32)
end

local function rfc3339()
    return os.date("!%Y-%m-%dT%H:%M:%SZ")
end

local B64 = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
local B64_INDEX = {}
for i = 1, #B64 do B64_INDEX[B64:byte(i)] = i - 1 end

local function b64decode(s)
    s = s:gsub("%s", ""):gsub("=+$", "")
    local out, bits, nbits = {}, 0, 0
    for i = 1, #s do
        local v = B64_INDEX[s:byte(i)]
        if not v then return nil end
        bits = (bits << 6) | v
        nbits = nbits + 6
        if nbits >= 8 then
            nbits = nbits - 8
            out[#out + 1] = string.char((bits >> nbits) & 0xff)
        end
    end
    return table.concat(out)
end

local function urldecode(s)
    s = s:gsub("+", " ")
    return (s:gsub("%%(%x%x)", function(h) return string.char(tonumber(h, 16)) end))
end

local function parse_form(body)
    local t = {}
    for pair in body:gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=(.*)$")
        if not k then k, v = pair, "" end
        k = urldecode(k)
        if t[k] == nil then t[k] = urldecode(v) end
    end
    return t
end

local function split_path(path)
    local segs = {}
    for seg in path:gmatch("[^/]+") do segs[#segs + 1] = seg end
    return segs
end

---------------------------------------------------------------------------------------------
-- Verdicts (what http.c acts on) and statistics
---------------------------------------------------------------------------------------------
local function record(key, status)
    local r = stats.routes[key]
    if not r then
        r = {}
        stats.routes[key] = r
    end
    local k = tostring(status)
    r[k] = (r[k] or 0) + 1
    if status == 429 then
        stats.rate_limited = stats.rate_limited + 1
        local kind = stats.kinds[KEY_KIND[key] or "other"]
        kind.rate_limited = kind.rate_limited + 1
    end
end

local function respond(status, body, headers)
    local h = { ["Content-Type"] = "application/json" }
    for k, v in pairs(headers or {}) do h[k] = v end
    return { status = status, headers = h, body = type(body) == "string" and body or encode(body) }
end

local function err(status, code, message, extra, headers)
    local b = { error = code, message = message }
    for k, v in pairs(extra or {}) do b[k] = v end
    return respond(status, b, headers)
end

---------------------------------------------------------------------------------------------
-- Validation shared by the API and the state file. Messages name the variable and the rule,
-- never the value.
---------------------------------------------------------------------------------------------
local function check_variable(v, where)
    if type(v) ~= "table" or is_array(v) and next(v) ~= nil then
        return where .. ": must be an object"
    end
    if type(v.name) ~= "string" then return where .. ": name must be a string" end
    if #v.name > MAX_NAME_BYTES or not v.name:match(NAME_PATTERN) then
        return where .. ": name must match " .. NAME_PATTERN .. " (at most " .. MAX_NAME_BYTES .. " bytes)"
    end
    local w = where .. " (" .. v.name .. ")"
    if type(v.value) ~= "string" then return w .. ": value must be a string" end
    if #v.value > MAX_VALUE_BYTES then
        return w .. ": value must be at most " .. MAX_VALUE_BYTES .. " bytes"
    end
    if type(v.masked) ~= "boolean" then return w .. ": masked must be a boolean" end
    if v.description ~= nil and type(v.description) ~= "string" then
        return w .. ": description must be a string"
    end
    return nil
end

-- Recomputes an environment's ETag and cached GET body after its variables changed.
local function refresh_env(action, env_id, env)
    local names = {}
    for name in pairs(env.vars) do names[#names + 1] = name end
    table.sort(names)
    local canon, view = {}, {}
    for i, name in ipairs(names) do
        local v = env.vars[name]
        canon[i] = name .. "\0" .. v.value .. "\0" .. (v.masked and "1" or "0") .. "\0" .. v.description
        view[i] = { name = name, value = v.masked and "***" or v.value, masked = v.masked,
                    description = v.description }
    end
    env.names = names
    env.etag = '"' .. simc.sha256_hex(action.id .. "\n" .. env_id .. "\n" .. table.concat(canon, "\n")):sub(1, 32) .. '"'
    env.body = encode({ variables = arr(view), environmentId = env_id, actionId = action.id })
end

-- Parses and checks a state file; returns the state or nil, message.
local function load_state(text, origin)
    local doc, derr = json.decode(text)
    if type(doc) ~= "table" then
        return nil, origin .. ": not valid JSON (" .. tostring(derr or "not an object") .. ")"
    end
    local function fail(msg) return nil, origin .. ": " .. msg end
    if doc.format ~= nil and doc.format ~= STATE_FORMAT then
        return fail("unknown format '" .. tostring(doc.format) .. "' (expected " .. STATE_FORMAT .. ")")
    end
    local st = { clients = {}, client_order = {}, keys = {}, key_order = {}, actions = {},
                 action_order = {}, builds = {}, idem = {}, journal_seq = math.tointeger(doc.journal_seq) or 0 }
    if not is_array(doc.clients or {}) then return fail("clients must be an array") end
    for i, c in ipairs(doc.clients or {}) do
        local where = "clients[" .. i .. "]"
        if type(c) ~= "table" or type(c.client_id) ~= "string" or type(c.client_secret) ~= "string" then
            return fail(where .. " needs string client_id and client_secret")
        end
        if not is_array(c.scopes or {}) then return fail(where .. ".scopes must be an array") end
        local scopes, set = {}, {}
        for _, s in ipairs(c.scopes or {}) do
            if type(s) ~= "string" then return fail(where .. ".scopes must hold strings") end
            scopes[#scopes + 1] = s
            set[s] = true
        end
        if st.clients[c.client_id] then return fail(where .. ": duplicate client_id") end
        st.clients[c.client_id] = { id = c.client_id, secret = c.client_secret, scopes = scopes, set = set }
        st.client_order[#st.client_order + 1] = c.client_id
    end
    if not is_array(doc.access_keys or {}) then return fail("access_keys must be an array") end
    for i, k in ipairs(doc.access_keys or {}) do
        local where = "access_keys[" .. i .. "]"
        if type(k) ~= "table" or type(k.access_key_id) ~= "string"
            or type(k.access_key_secret) ~= "string" or type(k.client_id) ~= "string" then
            return fail(where .. " needs string access_key_id, access_key_secret and client_id")
        end
        if not st.clients[k.client_id] then return fail(where .. ": unknown client_id") end
        st.keys[k.access_key_id] = { id = k.access_key_id, secret = k.access_key_secret, client_id = k.client_id }
        st.key_order[#st.key_order + 1] = k.access_key_id
    end
    if not is_array(doc.actions or {}) then return fail("actions must be an array") end
    for i, a in ipairs(doc.actions or {}) do
        local where = "actions[" .. i .. "]"
        if type(a) ~= "table" or type(a.id) ~= "string" or a.id == "" or a.id:find("/", 1, true) then
            return fail(where .. " needs a string id without '/'")
        end
        if a.name ~= nil and type(a.name) ~= "string" then return fail(where .. ".name must be a string") end
        if st.actions[a.id] then return fail(where .. ": duplicate id") end
        local envs = a.environments or {}
        if not is_object(envs) then return fail(where .. ".environments must be an object") end
        for env_id in pairs(envs) do
            if not ENVIRONMENTS[env_id] then
                return fail(where .. ".environments: unknown environment '" .. tostring(env_id) .. "'")
            end
        end
        local action = { id = a.id, name = a.name or a.id, envs = {} }
        for _, env_id in ipairs(ENV_ORDER) do
            local e = envs[env_id] or {}
            local list = e.variables or {}
            local ewhere = where .. ".environments." .. env_id .. ".variables"
            if type(e) ~= "table" or not is_array(list) then return fail(ewhere .. " must be an array") end
            if #list > MAX_VARIABLES then return fail(ewhere .. ": more than " .. MAX_VARIABLES .. " variables") end
            local vars = {}
            for j, v in ipairs(list) do
                local msg = check_variable(v, ewhere .. "[" .. j .. "]")
                if msg then return fail(msg) end
                if vars[v.name] then return fail(ewhere .. "[" .. j .. "] (" .. v.name .. "): duplicate name") end
                vars[v.name] = { value = v.value, masked = v.masked, description = v.description or "" }
            end
            local env = { vars = vars }
            refresh_env(action, env_id, env)
            action.envs[env_id] = env
        end
        st.actions[a.id] = action
        st.action_order[#st.action_order + 1] = a.id
    end
    if not is_array(doc.builds or {}) then return fail("builds must be an array") end
    for i, b in ipairs(doc.builds or {}) do
        if type(b) ~= "table" or type(b.buildId) ~= "string" or type(b.actionId) ~= "string" then
            return fail("builds[" .. i .. "] needs string buildId and actionId")
        end
        local build = { buildId = b.buildId, actionId = b.actionId, status = tostring(b.status or "queued"),
                        createdAt = b.createdAt, idempotencyKey = b.idempotencyKey }
        st.builds[#st.builds + 1] = build
        if type(b.idempotencyKey) == "string" then st.idem[b.actionId .. "\n" .. b.idempotencyKey] = build end
    end
    return st
end

-- The state in the file format (plaintext of masked values included).
local function state_document()
    local doc = { format = STATE_FORMAT, clients = {}, access_keys = {}, actions = {}, builds = {} }
    for _, id in ipairs(S.client_order) do
        local c = S.clients[id]
        doc.clients[#doc.clients + 1] = { client_id = c.id, client_secret = c.secret, scopes = arr(c.scopes) }
    end
    for _, id in ipairs(S.key_order) do
        local k = S.keys[id]
        doc.access_keys[#doc.access_keys + 1] = { access_key_id = k.id, access_key_secret = k.secret,
                                                  client_id = k.client_id }
    end
    for _, id in ipairs(S.action_order) do
        local a = S.actions[id]
        local envs = {}
        for _, env_id in ipairs(ENV_ORDER) do
            local env, list = a.envs[env_id], {}
            for i, name in ipairs(env.names) do
                local v = env.vars[name]
                list[i] = { name = name, value = v.value, masked = v.masked, description = v.description }
            end
            envs[env_id] = { variables = arr(list) }
        end
        doc.actions[#doc.actions + 1] = { id = a.id, name = a.name, environments = envs }
    end
    for i, b in ipairs(S.builds) do doc.builds[i] = b end
    doc.clients, doc.access_keys = arr(doc.clients), arr(doc.access_keys)
    doc.actions, doc.builds = arr(doc.actions), arr(doc.builds)
    return doc
end

-- Persistence (only with --state): each change is one journal line, appended and made
-- durable before the answer; the whole state is written (a snapshot, atomically) at start, at
-- exit, on PUT /_sim/state and reset, and when the journal outgrows the last snapshot, so the
-- cost of a change is proportional to the change. Journal records carry a sequence number; the
-- snapshot records the last one it includes, so replay never applies a record twice.
local persisting = false        -- --state given
local journal_seq = 0           -- last record written (or replayed)
local journal_records = 0       -- records since the last snapshot
local snapshot_bytes = 0
local COMPACT_MIN_BYTES = 1024 * 1024
local compact_every = tonumber(os.getenv("CXONE_SIM_COMPACT_EVERY") or "") or math.huge

local function persist_full()
    if not persisting then return true end
    local doc = state_document()
    doc.journal_seq = journal_seq
    local text = encode(doc) .. "\n"
    local ok, perr = simc.persist(text)
    if not ok then return nil, perr end
    snapshot_bytes, journal_records = #text, 0
    local rok, rerr = simc.journal_reset()
    -- Not fatal: the records left behind are at or below journal_seq, so replay skips them.
    if not rok then io.stderr:write("cxone-sim: ", tostring(rerr), "\n") end
    return true
end

local function journal(rec)
    if not persisting then return true end
    rec.seq = journal_seq + 1
    local ok, perr = simc.journal_append(encode(rec) .. "\n")
    if not ok then return nil, perr end
    journal_seq, journal_records = rec.seq, journal_records + 1
    if journal_records >= compact_every or simc.journal_size() > math.max(COMPACT_MIN_BYTES, snapshot_bytes) then
        local cok, cerr = persist_full()
        -- The change itself is durable in the journal; a failed compaction is retried later.
        if not cok then io.stderr:write("cxone-sim: compaction failed: ", tostring(cerr), "\n") end
    end
    return true
end

local function env_record(action, env_id, env)
    local list = {}
    for i, name in ipairs(env.names) do
        local v = env.vars[name]
        list[i] = { name = name, value = v.value, masked = v.masked, description = v.description }
    end
    return { op = "env", action = action.id, env = env_id, variables = arr(list) }
end

local function storage_failed(key, msg)
    io.stderr:write("cxone-sim: state not saved: ", tostring(msg), "\n")
    record(key, 500)
    return err(500, "storage_failed", "the change could not be saved; nothing was changed")
end

---------------------------------------------------------------------------------------------
-- Faults
---------------------------------------------------------------------------------------------
local function parse_fault(f, where)
    if type(f) ~= "table" or is_array(f) and next(f) ~= nil then return nil, where .. " must be an object" end
    if not FAULT_KINDS[f.kind] then
        return nil, where .. ".kind must be one of " .. FAULT_KIND_LIST
    end
    local out = { kind = f.kind }
    if f.method ~= nil then
        if type(f.method) ~= "string" or f.method == "" then return nil, where .. ".method must be a string" end
        out.method = f.method:upper()
    end
    if f.path ~= nil then
        if type(f.path) ~= "string" or f.path:sub(1, 1) ~= "/" then
            return nil, where .. ".path must be a string starting with /"
        end
        out.path = f.path
        out.segs = split_path(f.path)
    end
    local count = f.count == nil and 1 or f.count
    if math.type(count) == "float" and count % 1 == 0 then count = math.tointeger(count) end
    if math.type(count) ~= "integer" or count < 1 then return nil, where .. ".count must be a positive integer" end
    out.count = count
    if f.delay_ms ~= nil then
        if type(f.delay_ms) ~= "number" or f.delay_ms < 0 then
            return nil, where .. ".delay_ms must be a number >= 0"
        end
        out.delay_ms = f.delay_ms
    elseif f.kind == "delay" then
        return nil, where .. ": kind delay needs delay_ms"
    end
    if f.kind == "status" then
        if math.type(f.status) == "float" and f.status % 1 == 0 then f.status = math.tointeger(f.status) end
        if math.type(f.status) ~= "integer" or f.status < 100 or f.status > 599 then
            return nil, where .. ": kind status needs status between 100 and 599"
        end
        out.status = f.status
        if f.body ~= nil then
            if type(f.body) ~= "string" then return nil, where .. ".body must be a string (sent verbatim)" end
            out.body = f.body
        end
        if f.headers ~= nil then
            if type(f.headers) ~= "table" or is_array(f.headers) and next(f.headers) ~= nil then
                return nil, where .. ".headers must be an object of strings"
            end
            for k, v in pairs(f.headers) do
                if type(k) ~= "string" or type(v) ~= "string" or not k:match("^[%w-]+$") or v:find("[\r\n%z]") then
                    return nil, where .. ".headers must map header names to single-line strings"
                end
            end
            out.headers = f.headers
        end
    end
    if f.retry_after ~= nil then
        -- seconds, or a string sent verbatim (an HTTP-date, as RFC 9110 also allows)
        if type(f.retry_after) == "string" and f.retry_after:match("^[%w ,:]+$") then
            out.retry_after = f.retry_after
        elseif type(f.retry_after) ~= "number" or f.retry_after < 0 then
            return nil, where .. ".retry_after must be a number >= 0 or an HTTP-date"
        else
            out.retry_after = math.floor(f.retry_after)
        end
    end
    return out
end

local function fault_view(f)
    return { kind = f.kind, method = f.method, path = f.path, count = f.count, status = f.status,
             retry_after = f.retry_after, delay_ms = f.delay_ms, body = f.body, headers = f.headers }
end

-- Parses one fault object or {"faults":[...]}; returns a list or nil, message.
local function parse_faults(doc)
    local list = {}
    if type(doc) == "table" and doc.faults ~= nil then
        if not is_array(doc.faults) then return nil, "faults must be an array" end
        for i, f in ipairs(doc.faults) do
            local p, e = parse_fault(f, "faults[" .. i .. "]")
            if not p then return nil, e end
            list[#list + 1] = p
        end
    else
        local p, e = parse_fault(doc, "fault")
        if not p then return nil, e end
        list[1] = p
    end
    return list
end

local function fault_matches(f, method, segs)
    if f.method and f.method ~= method then return false end
    if not f.segs then return true end
    if #f.segs ~= #segs then return false end
    for i, s in ipairs(f.segs) do
        if s ~= "*" and s ~= segs[i] then return false end
    end
    return true
end

-- Takes the first armed fault matching the request (consuming one of its count).
local function take_fault(method, segs)
    for i, f in ipairs(faults) do
        if fault_matches(f, method, segs) then
            f.count = f.count - 1
            if f.count <= 0 then table.remove(faults, i) end
            return f
        end
    end
    return nil
end

local function defer(delay_ms, fn)
    next_pending = next_pending + 1
    pending[next_pending] = fn
    return { action = "defer", id = next_pending, delay_ms = delay_ms }
end

---------------------------------------------------------------------------------------------
-- Authentication, scopes, rate limit
---------------------------------------------------------------------------------------------
local function purge_tokens()
    local now = simc.now()
    for t, info in pairs(tokens) do
        if info.expires <= now then tokens[t] = nil end
    end
end

local function issue_token(client_id, granted)
    local tok = "sim_" .. simc.random_hex(20)
    local set = {}
    for _, s in ipairs(granted) do set[s] = true end
    tokens[tok] = { client_id = client_id, scopes = set, expires = simc.now() + config.token_ttl }
    stats.tokens_issued = stats.tokens_issued + 1
    issued_since_purge = issued_since_purge + 1
    if issued_since_purge >= 1024 then
        issued_since_purge = 0
        purge_tokens()
    end
    return tok
end

-- Returns the token's record, or nil and a 401 verdict.
local function authenticate(req, key)
    local auth = req.headers.authorization
    local tok = auth and auth:match("^[Bb][Ee][Aa][Rr][Ee][Rr]%s+(%S+)%s*$")
    local info = tok and tokens[tok]
    if info and info.expires <= simc.now() then
        tokens[tok] = nil
        info = nil
    end
    if not info then
        record(key, 401)
        return nil, err(401, "invalid_token",
            tok and "the access token is unknown or expired" or "a bearer access token is required",
            nil, { ["WWW-Authenticate"] = "Bearer" })
    end
    return info
end

-- The per-client token bucket: burst max(1, rate), refilled at rate tokens/s. Takes a token
-- when `take` is set; returns nil when the limit is off, else what the answer may say about it:
-- { limited = seconds to wait (when no token was left), limit, remaining, reset (seconds until
-- the bucket is full again, not rounded), window (seconds the burst lasts) }.
local function rate_check(client_id, take)
    local rate = config.rate_limit
    if not rate or rate <= 0 then return nil end
    local cap = math.max(1, rate)
    local now = simc.now()
    local b = buckets[client_id]
    if not b then
        b = { level = cap, t = now }
        buckets[client_id] = b
    end
    b.level = math.min(cap, b.level + (now - b.t) * rate)
    b.t = now
    local rl = { limit = math.floor(cap + 1e-9), window = math.max(1, math.ceil(cap / rate - 1e-9)) }
    if take then
        if b.level >= 1 then
            b.level = b.level - 1
        else
            rl.limited = math.max(1, math.ceil((1 - b.level) / rate))
        end
    end
    rl.remaining = math.max(0, math.floor(b.level + 1e-9))
    rl.reset = math.max(0, (cap - b.level) / rate)
    return rl
end

-- Adds the rate-limit headers the configured server style sends (rl from rate_check).
local function add_rate_headers(h, rl, status)
    local mode = config.rate_limit_headers
    if mode == "none" or mode == "429" and status ~= 429 then return end
    local reset = math.ceil(rl.reset - 1e-9) -- whole seconds, never early
    h["X-RateLimit-Limit"] = tostring(rl.limit)
    h["X-RateLimit-Remaining"] = tostring(rl.remaining)
    if config.rate_limit_reset == "epoch" then
        h["X-RateLimit-Reset"] = ("%d"):format(math.ceil(simc.time() + rl.reset))
    else
        h["X-RateLimit-Reset"] = tostring(reset)
    end
    -- draft-ietf-httpapi-ratelimit-headers-08 structured fields
    h["RateLimit-Policy"] = ('"default";q=%d;w=%d'):format(rl.limit, rl.window)
    h["RateLimit"] = ('"default";r=%d;t=%d'):format(rl.remaining, reset)
end

-- Authentication, scope and rate limit for an API route: returns the token record or nil, verdict.
-- Leaves the bucket's state in req.rl, so that the final answer carries the rate-limit headers.
local function guard(req, key, scope)
    local info, verdict = authenticate(req, key)
    if not info then return nil, verdict end
    if not info.scopes[scope] then
        req.rl = rate_check(info.client_id, false)
        record(key, 403)
        return nil, err(403, "insufficient_scope", "this operation requires the " .. scope .. " scope",
            { required_scope = scope })
    end
    local rl = rate_check(info.client_id, true)
    req.rl = rl
    if rl and rl.limited then
        record(key, 429)
        return nil, err(429, "rate_limited", "too many requests for this client; retry later", nil,
            { ["Retry-After"] = tostring(rl.limited) })
    end
    return info
end

---------------------------------------------------------------------------------------------
-- POST /oauth/token
---------------------------------------------------------------------------------------------
local function basic_credentials(req)
    local auth = req.headers.authorization
    local b64 = auth and auth:match("^[Bb][Aa][Ss][Ii][Cc]%s+(%S+)%s*$")
    local raw = b64 and b64decode(b64)
    if not raw then return nil end
    return raw:match("^([^:]*):(.*)$")
end

local function token_route(req, params, key)
    local form = parse_form(req.body or "")
    local function bad(code, message)
        record(key, 400)
        return err(400, code, message)
    end
    local function unauthorized()
        record(key, 401)
        return err(401, "invalid_client", "client authentication failed", nil,
            { ["WWW-Authenticate"] = 'Basic realm="cxone-sim"' })
    end
    local grant = form.grant_type
    if not grant or grant == "" then return bad("invalid_request", "grant_type is required") end
    if grant ~= "client_credentials" and grant ~= "password" then
        return bad("unsupported_grant_type", "grant_type must be client_credentials or password")
    end
    local id, secret = form.client_id, form.client_secret
    if not id or id == "" then id, secret = basic_credentials(req) end
    if not id or id == "" or not secret or secret == "" then
        return bad("invalid_request", "client_id and client_secret are required (form fields or HTTP Basic)")
    end
    local client = S.clients[id]
    if not client or client.secret ~= secret then return unauthorized() end
    local allowed = client.scopes
    if grant == "password" then
        local user, pass = form.username, form.password
        if not user or user == "" or not pass or pass == "" then
            return bad("invalid_request", "username and password (access key id and secret) are required")
        end
        local ak = S.keys[user]
        if not ak or ak.secret ~= pass or ak.client_id ~= client.id then return unauthorized() end
    end
    local granted = {}
    if form.scope and form.scope:find("%S") then
        local asked = {}
        for s in form.scope:gmatch("%S+") do asked[s] = true end
        for _, s in ipairs(allowed) do
            if asked[s] then granted[#granted + 1] = s end
        end
        if #granted == 0 then
            record(key, 400)
            return err(400, "invalid_scope", "none of the requested scopes is allowed for this client")
        end
    else
        for i, s in ipairs(allowed) do granted[i] = s end
    end
    local tok = issue_token(client.id, granted)
    record(key, 200)
    return respond(200, { access_token = tok, token_type = "Bearer", expires_in = config.token_ttl,
                          scope = table.concat(granted, " ") },
        { ["Cache-Control"] = "no-store", Pragma = "no-cache" })
end

---------------------------------------------------------------------------------------------
-- Variables
---------------------------------------------------------------------------------------------
local function find_env(params, key)
    local action = S.actions[params.actionId]
    if not action then
        record(key, 404)
        return nil, nil, err(404, "not_found", "no action with this id")
    end
    local env = ENVIRONMENTS[params.envId] and action.envs[params.envId]
    if not env then
        record(key, 404)
        return nil, nil, err(404, "not_found", "no environment with this id (dev, staging, prod)")
    end
    return action, env
end

local function variables_answer(key, env)
    record(key, 200)
    local headers = { ["Content-Type"] = "application/json" }
    if config.etag then headers.ETag = env.etag end
    return { status = 200, headers = headers, body = env.body }
end

local function get_variables(req, params, key)
    local _, verdict = guard(req, key, SCOPE_READ)
    if verdict then return verdict end
    local action, env, nf = find_env(params, key)
    if not action then return nf end
    return variables_answer(key, env)
end

-- True when the If-Match header (if any) matches the current ETag.
local function precondition_ok(req, env)
    local im = req.headers["if-match"]
    if not im or not config.etag then return true end
    for tag in im:gmatch("[^,]+") do
        tag = tag:match("^%s*(.-)%s*$")
        if tag == "*" or tag == env.etag then return true end
    end
    return false
end

local function write_variables(req, params, key, replace)
    local _, verdict = guard(req, key, SCOPE_WRITE)
    if verdict then return verdict end
    local action, env, nf = find_env(params, key)
    if not action then return nf end
    if not precondition_ok(req, env) then
        record(key, 412)
        return err(412, "precondition_failed", "If-Match does not match the current ETag; the variables changed",
            nil, { ETag = env.etag })
    end
    local doc = json.decode(req.body or "")
    if doc == nil then
        record(key, 400)
        return err(400, "invalid_request", "the body is not valid JSON")
    end
    local function invalid(message)
        record(key, 422)
        return err(422, "invalid_request", message)
    end
    if not is_object(doc) then return invalid("the body must be a JSON object") end
    if doc.environmentId ~= nil and doc.environmentId ~= params.envId then
        return invalid("environmentId in the body does not match the environment in the path")
    end
    if doc.actionId ~= nil and doc.actionId ~= params.actionId then
        return invalid("actionId in the body does not match the action in the path")
    end
    if type(doc.variables) ~= "table" or not is_array(doc.variables) then
        return invalid("variables must be an array")
    end
    -- Check every entry before touching anything: all or nothing.
    local seen = {}
    for i, v in ipairs(doc.variables) do
        local msg = check_variable(v, "variables[" .. i .. "]")
        if msg then return invalid(msg) end
        if seen[v.name] then return invalid("variables[" .. i .. "] (" .. v.name .. "): duplicate name") end
        seen[v.name] = true
    end
    local new, count = {}, 0
    if not replace then
        for name, v in pairs(env.vars) do
            new[name] = v
            count = count + 1
        end
    end
    for _, v in ipairs(doc.variables) do
        local old = new[v.name]
        if not old then count = count + 1 end
        new[v.name] = { value = v.value, masked = v.masked,
                        description = v.description or (not replace and old and old.description) or "" }
    end
    if count > MAX_VARIABLES then
        return invalid("an environment holds at most " .. MAX_VARIABLES .. " variables (this request would leave "
            .. count .. ")")
    end
    local old_vars, old_names, old_etag, old_body = env.vars, env.names, env.etag, env.body
    env.vars = new
    refresh_env(action, params.envId, env)
    if env.etag ~= old_etag then
        local ok, perr = journal(env_record(action, params.envId, env))
        if not ok then
            env.vars, env.names, env.etag, env.body = old_vars, old_names, old_etag, old_body
            return storage_failed(key, perr)
        end
    end
    return variables_answer(key, env)
end

local function patch_variables(req, params, key) return write_variables(req, params, key, false) end
local function put_variables(req, params, key) return write_variables(req, params, key, true) end

-- GET /api/v2/integration/actions (an emulator extension: the contract has no list route):
-- {"actions": [{"id", "name", "environments": [ids]}]}, sorted by id (read scope).
local function list_actions(req, params, key)
    local _, verdict = guard(req, key, SCOPE_READ)
    if verdict then return verdict end
    local ids = {}
    for _, id in ipairs(S.action_order) do ids[#ids + 1] = id end
    table.sort(ids)
    local list = {}
    for i, id in ipairs(ids) do
        list[i] = { id = id, name = S.actions[id].name, environments = arr({ table.unpack(ENV_ORDER) }) }
    end
    record(key, 200)
    return respond(200, { actions = arr(list) })
end

---------------------------------------------------------------------------------------------
-- Builds
---------------------------------------------------------------------------------------------
local function post_build(req, params, key)
    local _, verdict = guard(req, key, SCOPE_WRITE)
    if verdict then return verdict end
    local action = S.actions[params.actionId]
    if not action then
        record(key, 404)
        return err(404, "not_found", "no action with this id")
    end
    local ikey = req.headers["idempotency-key"]
    if ikey == "" then ikey = nil end
    local prior = ikey and S.idem[action.id .. "\n" .. ikey]
    if prior then
        record(key, 202)
        return respond(202, { buildId = prior.buildId, status = "queued", actionId = action.id })
    end
    local build = { buildId = uuid4(), actionId = action.id, status = "queued", createdAt = rfc3339(),
                    idempotencyKey = ikey }
    S.builds[#S.builds + 1] = build
    if ikey then S.idem[action.id .. "\n" .. ikey] = build end
    local dropped
    if #S.builds > MAX_BUILDS_KEPT then dropped = table.remove(S.builds, 1) end
    local ok, perr = journal({ op = "build", build = build })
    if not ok then
        table.remove(S.builds)
        if dropped then table.insert(S.builds, 1, dropped) end
        if ikey then S.idem[action.id .. "\n" .. ikey] = nil end
        return storage_failed(key, perr)
    end
    if dropped and dropped.idempotencyKey then S.idem[dropped.actionId .. "\n" .. dropped.idempotencyKey] = nil end
    stats.builds_queued = stats.builds_queued + 1
    record(key, 202)
    return respond(202, { buildId = build.buildId, status = "queued", actionId = action.id })
end

---------------------------------------------------------------------------------------------
-- API routing
---------------------------------------------------------------------------------------------
local VARIABLES = "/api/v2/integration/actions/{actionId}/environments/{envId}/variables"
local ROUTES = {
    { segs = split_path("/oauth/token"), template = "/oauth/token",
      methods = { POST = token_route }, allow = "POST" },
    { segs = split_path(VARIABLES), template = VARIABLES,
      methods = { GET = get_variables, PATCH = patch_variables, PUT = put_variables }, allow = "GET, PATCH, PUT" },
    { segs = split_path("/api/v2/integration/actions"), template = "/api/v2/integration/actions",
      methods = { GET = list_actions }, allow = "GET" },
    { segs = split_path("/api/v2/integration/actions/{actionId}/build"),
      template = "/api/v2/integration/actions/{actionId}/build",
      methods = { POST = post_build }, allow = "POST" },
}

local function match_route(segs)
    for _, r in ipairs(ROUTES) do
        if #r.segs == #segs then
            local params, ok = {}, true
            for i, s in ipairs(r.segs) do
                local p = s:match("^{(.*)}$")
                if p then
                    params[p] = segs[i]
                elseif s ~= segs[i] then
                    ok = false
                    break
                end
            end
            if ok then return r, params end
        end
    end
    return nil
end

local function route_key(method, route)
    return method .. " " .. (route and route.template or "(unknown)")
end

-- What each route key counts as in stats.kinds (anything else: "other").
KEY_KIND["GET " .. VARIABLES] = "read"
KEY_KIND["PATCH " .. VARIABLES] = "write"
KEY_KIND["PUT " .. VARIABLES] = "write"
KEY_KIND["POST /api/v2/integration/actions/{actionId}/build"] = "build"
KEY_KIND["POST /oauth/token"] = "token"
KEY_KIND["GET /api/v2/integration/actions"] = "read"

-- The last touch on an API answer: the rate-limit headers of the client's bucket, if guard ran.
local function finish(req, v)
    if req.rl and v.headers then add_rate_headers(v.headers, req.rl, v.status) end
    return v
end

local function process(req, route, params, key)
    if not route then
        record(key, 404)
        return err(404, "not_found", "no such route")
    end
    local h = route.methods[req.method]
    if not h then
        record(key, 405)
        return err(405, "method_not_allowed", req.method .. " is not allowed here", nil, { Allow = route.allow })
    end
    return h(req, params, key)
end

-- A plausible answer body for the truncate fault (cut short by http.c).
local function plausible_body(route, params)
    if route and route.template == VARIABLES then
        local a = S.actions[params.actionId]
        local env = a and a.envs[params.envId]
        if env then return env.body end
    end
    return encode({ status = "ok", message = "simulated truncated answer", padding = string.rep("x", 64) })
end

local function apply_fault(f, req, route, params, key)
    local kind = f.kind
    if kind == "status" and f.body then
        -- a hostile or foreign server: the exact body and headers given, nothing processed
        record(key, f.status)
        local headers = { ["Content-Type"] = "application/json" }
        for k, v in pairs(f.headers or {}) do headers[k] = v end
        if f.retry_after then headers["Retry-After"] = tostring(f.retry_after) end
        return { status = f.status, headers = headers, body = f.body }
    elseif kind == "status" then
        record(key, f.status)
        local code = f.status == 429 and "rate_limited" or f.status >= 500 and "server_error" or "simulated_error"
        local headers = f.retry_after and { ["Retry-After"] = tostring(f.retry_after) } or nil
        return err(f.status, code, "simulated fault (status " .. f.status .. ")", nil, headers)
    elseif kind == "hang" then
        return { action = "hang" }
    elseif kind == "reset" then
        return { action = "reset" }
    elseif kind == "truncate" then
        record(key, 200)
        local v = respond(200, plausible_body(route, params))
        v.action = "truncate"
        return v
    elseif kind == "not_json" then
        record(key, 200)
        return { status = 200, headers = { ["Content-Type"] = "text/html" },
                 body = "<html><body><h1>502 Bad Gateway</h1><p>simulated proxy page</p></body></html>\n" }
    elseif kind == "expire_tokens" then
        tokens = {}
    elseif kind == "lost_answer" then
        -- the request takes full effect, then the connection drops before the answer
        local v = process(req, route, params, key)
        v.action = "reset"
        return v
    elseif kind == "echo" then
        -- a server that quotes the rejected request back in its error message
        record(key, 422)
        return err(422, "invalid_request", "rejected request body: " .. (req.body or ""))
    end
    -- delay and expire_tokens: answer normally.
    return process(req, route, params, key)
end

---------------------------------------------------------------------------------------------
-- /_sim control routes (no auth, no faults, not counted in stats)
---------------------------------------------------------------------------------------------
local function reset_runtime()
    config.etag = true
    for k, v in pairs(start_config) do config[k] = v end
    faults = {}
    webhooks = {}
    buckets = {}
end

-- Swaps in a whole new state and persists it; on a storage failure the old state stays and
-- the error answer is returned (nil on success).
local function replace_state(st)
    local old = S
    S = st
    local ok, perr = persist_full()
    if ok then return nil end
    S = old
    return err(500, "storage_failed", tostring(perr))
end

-- The settings POST /_sim/config takes: name -> check(value) returning nil or what it must be.
local CONFIG_CHECKS = {
    etag = function(v) if type(v) ~= "boolean" then return "a boolean" end end,
    rate_limit = function(v)
        if type(v) ~= "number" or v < 0 or v > 1e7 or v ~= v then return "a number of requests/s >= 0 (0: off)" end
    end,
    rate_limit_headers = function(v)
        if v ~= "all" and v ~= "429" and v ~= "none" then return '"all", "429" or "none"' end
    end,
    rate_limit_reset = function(v)
        if v ~= "delta" and v ~= "epoch" then return '"delta" or "epoch"' end
    end,
}

local function config_view()
    return { etag = config.etag, rate_limit = config.rate_limit, rate_limit_headers = config.rate_limit_headers,
             rate_limit_reset = config.rate_limit_reset }
end

local function sim_route(req, segs)
    local m, n = req.method, #segs
    local function not_allowed(allow)
        return err(405, "method_not_allowed", m .. " is not allowed here", nil, { Allow = allow })
    end
    local what = segs[2]
    if n == 2 and what == "stats" then
        if m ~= "GET" then return not_allowed("GET") end
        return respond(200, { requests = stats.requests, connections = simc.connections(),
                              tokens_issued = stats.tokens_issued, builds_queued = stats.builds_queued,
                              rate_limited = stats.rate_limited, kinds = stats.kinds, routes = stats.routes })
    elseif n == 2 and what == "state" then
        if m == "GET" then return respond(200, encode(state_document())) end
        if m ~= "PUT" then return not_allowed("GET, PUT") end
        local st, e = load_state(req.body or "", "state")
        if not st then return err(400, "invalid_request", e) end
        local failed = replace_state(st)
        if failed then return failed end
        return respond(200, { status = "replaced", actions = #S.action_order })
    elseif n == 2 and what == "reset" then
        if m ~= "POST" then return not_allowed("POST") end
        local failed = replace_state(assert(load_state(initial_text, "initial state")))
        if failed then return failed end
        reset_runtime()
        return respond(200, { status = "reset" })
    elseif n == 2 and what == "config" then
        -- runtime switches: see CONFIG_CHECKS
        if m == "GET" then return respond(200, config_view()) end
        if m ~= "POST" then return not_allowed("GET, POST") end
        local doc = json.decode(req.body or "")
        if not is_object(doc) then return err(400, "invalid_request", "the body must be a JSON object") end
        for k, v in pairs(doc) do
            local check = CONFIG_CHECKS[k]
            if not check then return err(422, "invalid_request", "unknown setting '" .. tostring(k) .. "'") end
            local e = check(v)
            if e then return err(422, "invalid_request", k .. " must be " .. e) end
        end
        for k, v in pairs(doc) do config[k] = v end
        if doc.rate_limit ~= nil then buckets = {} end
        return respond(200, config_view())
    elseif n == 2 and what == "faults" then
        if m == "GET" then
            local list = {}
            for i, f in ipairs(faults) do list[i] = fault_view(f) end
            return respond(200, { faults = arr(list) })
        elseif m == "DELETE" then
            local cleared = #faults
            faults = {}
            return respond(200, { cleared = cleared })
        elseif m == "POST" then
            local doc = json.decode(req.body or "")
            if doc == nil then return err(400, "invalid_request", "the body is not valid JSON") end
            local list, e = parse_faults(doc)
            if not list then return err(422, "invalid_request", e) end
            local views = {}
            for i, f in ipairs(list) do
                faults[#faults + 1] = f
                views[i] = fault_view(f)
            end
            return respond(201, { armed = #list, faults = arr(views) })
        end
        return not_allowed("GET, POST, DELETE")
    elseif n == 3 and what == "webhooks" then
        local name = segs[3]
        if m == "POST" then
            local body = req.body or ""
            local decoded = json.decode(body)
            local events = webhooks[name]
            if not events then
                events = {}
                webhooks[name] = events
            end
            if #events >= MAX_EVENTS_PER_HOOK then table.remove(events, 1) end
            events[#events + 1] = { headers = req.headers, received_at = rfc3339(),
                                    body = decoded == nil and body or decoded }
            return { status = 204, headers = {}, body = "" }
        elseif m == "GET" then
            return respond(200, { events = arr(webhooks[name] or {}) })
        elseif m == "DELETE" then
            webhooks[name] = nil
            return { status = 204, headers = {}, body = "" }
        end
        return not_allowed("GET, POST, DELETE")
    end
    return err(404, "not_found", "no such /_sim route")
end

---------------------------------------------------------------------------------------------
-- Entry points called from C
---------------------------------------------------------------------------------------------

--- handle(req) -> verdict. req: method, path, headers (lowercased names), args, body,
-- too_large, remote. verdict: action ("respond" default, "reset", "hang", "truncate",
-- "defer" with id and delay_ms), status, headers, body.
function M.handle(req)
    local segs = split_path(req.path)
    if segs[1] == "_sim" then
        if req.too_large then return err(413, "payload_too_large", "the request body is over 1 MiB") end
        return sim_route(req, segs)
    end
    stats.requests = stats.requests + 1
    local route, params = match_route(segs)
    local key = route_key(req.method, route)
    local kind = stats.kinds[KEY_KIND[key] or "other"]
    kind.requests = kind.requests + 1
    if req.too_large then
        record(key, 413)
        return err(413, "payload_too_large", "the request body is over 1 MiB")
    end
    local f = take_fault(req.method, segs)
    if not f then return finish(req, process(req, route, params, key)) end
    if f.delay_ms and f.delay_ms > 0 and f.kind ~= "hang" then
        return defer(f.delay_ms, function() return finish(req, apply_fault(f, req, route, params, key)) end)
    end
    return finish(req, apply_fault(f, req, route, params, key))
end

--- resume(id) -> verdict for a deferred answer whose delay is over.
function M.resume(id)
    local fn = pending[id]
    pending[id] = nil
    if not fn then return err(500, "internal", "unknown deferred answer") end
    return fn()
end

--- cancel(id): the client left before a deferred answer was due.
function M.cancel(id)
    pending[id] = nil
end

-- Applies the journal's records above the snapshot's sequence number to S. A line that does
-- not parse or does not fit (a torn append, never acknowledged) is skipped and counted.
local function replay_journal(text, origin, base)
    journal_seq = base
    local applied, skipped = 0, 0
    for line in text:gmatch("([^\n]*)\n") do
        local rec = json.decode(line)
        local seq = type(rec) == "table" and math.tointeger(rec.seq)
        local ok = false
        if seq and seq <= base then
            ok = true -- already in the snapshot
        elseif seq and rec.op == "env" and type(rec.variables) == "table" and S.actions[rec.action]
            and ENVIRONMENTS[rec.env] then
            local vars, bad = {}, false
            for j, v in ipairs(rec.variables) do
                if check_variable(v, "variables[" .. j .. "]") then bad = true break end
                vars[v.name] = { value = v.value, masked = v.masked, description = v.description or "" }
            end
            if not bad then
                local action = S.actions[rec.action]
                local env = action.envs[rec.env]
                env.vars = vars
                refresh_env(action, rec.env, env)
                ok = true
            end
        elseif seq and rec.op == "build" and type(rec.build) == "table" and type(rec.build.buildId) == "string"
            and type(rec.build.actionId) == "string" then
            local b = rec.build
            local build = { buildId = b.buildId, actionId = b.actionId, status = tostring(b.status or "queued"),
                            createdAt = b.createdAt, idempotencyKey = b.idempotencyKey }
            S.builds[#S.builds + 1] = build
            if type(build.idempotencyKey) == "string" then S.idem[build.actionId .. "\n" .. build.idempotencyKey] = build end
            if #S.builds > MAX_BUILDS_KEPT then
                local dropped = table.remove(S.builds, 1)
                if dropped.idempotencyKey then S.idem[dropped.actionId .. "\n" .. dropped.idempotencyKey] = nil end
            end
            ok = true
        end
        if ok and seq > base then
            applied = applied + 1
            if seq > journal_seq then journal_seq = seq end
        elseif not ok then
            skipped = skipped + 1
        end
    end
    if applied > 0 or skipped > 0 then
        io.stderr:write(("cxone-sim: %s: replayed %d change(s)%s\n"):format(origin, applied,
            skipped > 0 and (", skipped %d incomplete line(s)"):format(skipped) or ""))
    end
end

--- init(cfg) -> true | nil, message. cfg: demo_text, state_text?, state_path?, scenario_text?,
-- token_ttl, rate_limit.
function M.init(cfg)
    config.token_ttl = cfg.token_ttl or 3600
    config.etag = true
    config.rate_limit = cfg.rate_limit or 0
    config.rate_limit_headers = cfg.rate_limit_headers or "all"
    config.rate_limit_reset = cfg.rate_limit_reset or "delta"
    for _, k in ipairs({ "rate_limit", "rate_limit_headers", "rate_limit_reset" }) do
        local e = CONFIG_CHECKS[k](config[k])
        if e then return nil, k .. " must be " .. e end
        start_config[k] = config[k]
    end
    local text, origin = cfg.demo_text, "built-in demo data"
    if cfg.state_text then text, origin = cfg.state_text, cfg.state_path end
    local st, e = load_state(text, origin)
    if not st then return nil, e end
    S, initial_text = st, text
    persisting = cfg.state_path ~= nil
    if cfg.journal_text then replay_journal(cfg.journal_text, cfg.state_path .. ".journal", st.journal_seq) end
    if cfg.scenario_text then
        local doc, derr = json.decode(cfg.scenario_text)
        if doc == nil then return nil, "scenario: not valid JSON (" .. tostring(derr) .. ")" end
        local list, ferr = parse_faults(doc)
        if not list then return nil, "scenario: " .. ferr end
        for _, f in ipairs(list) do faults[#faults + 1] = f end
    end
    return true
end

--- flush() -> true | nil, message: writes the whole state to the state file (and empties the
-- journal).
function M.flush()
    return persist_full()
end

return M
