--- cxone for nginx/OpenResty: the promotion client over nginx cosockets, so a call never blocks
-- the worker. The call engine of cxone.core decides everything (retries, backoff, the deadline,
-- the token and its 401 refresh, pacing, scrubbing); this file only moves its requests over
-- cosockets. TLS is always verified (`sslhandshake` with verify; trust comes from
-- `lua_ssl_trusted_certificate`), connections are kept in a keepalive pool named by host, port
-- and trust settings (`pool_size` connections per pool), timeouts apply per phase (connect,
-- send, read), and through a `lua_shared_dict` all workers share:
-- - the token (keyed by token URL + client id + scope), fetched by one worker at a time under a
--   `dict:add` lock that expires after one request timeout (a worker that died holding it costs
--   the others at most that); a failed fetch is published for a few seconds, so the waiting
--   workers get the fetcher's error at once and a storm of callers does not ask again;
-- - the client-side rate limit (`rate_limit`, `CXONE_MAX_RPS`, or what the server's headers
--   taught the engine): a GCRA "theoretical arrival time" in the dict, advanced atomically with
--   `dict:incr`, spaces the requests of all workers together.
--
--     lua_shared_dict cxone 1m;
--     lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
--     resolver 127.0.0.53;   # for host names (or the `addresses` option)
--     init_worker_by_lua_block { client = assert(require("resty.cxone").new{ ... }) }
--
-- Create clients per worker (init_worker_by_lua, or on first use), never in init_by_lua.
-- Calls work where cosockets do: rewrite, access, content and timer contexts.
-- @module resty.cxone

local wire = require("cxone.transport.wire")
local cxone = require("cxone")
local core = require("cxone.core")

local ngx = ngx
local tcp = ngx.socket.tcp
local spawn, wait = ngx.thread.spawn, ngx.thread.wait

local M = { _VERSION = cxone._VERSION }

local MAX_BODY = core.MAX_ANSWER
local KEEPALIVE_MS = 60000
local POOL_SIZE = 32

local Host = {}
Host.__index = Host

-- "https://host:port/path" → scheme, host, port, path
local function split_url(url)
    local scheme, rest = url:match("^(https?)://(.*)$")
    if not scheme then return nil end
    local hostport, path = rest:match("^([^/]*)(/.*)$")
    if not hostport then hostport, path = rest, "/" end
    local host, port = hostport:match("^%[(.+)%]:(%d+)$")
    if not host then host, port = hostport:match("^([^:]+):(%d+)$") end
    if not host then host = hostport:match("^%[(.+)%]$") or hostport end
    port = tonumber(port) or (scheme == "https" and 443 or 80)
    return scheme, host, port, path
end

-- A cosocket error → the engine's kind of transport failure.
local function kind_of(err, sent)
    err = tostring(err)
    if err:find("timeout", 1, true) then return "timeout" end
    if err:find("refused", 1, true) then return "refused" end
    if err:find("no resolver defined", 1, true) then return "config" end
    if err:find("could not be resolved", 1, true) then return "resolve" end
    if err:find("no memory", 1, true) then return "memory" end
    return sent and "reset" or "refused"
end

function Host:now()
    ngx.update_time()
    return ngx.now()
end

function Host:sleep(s)
    if s > 0 then ngx.sleep(s) end
end

-- Reads the body: Content-Length, chunked, or until close. Returns body or nil, kind, detail.
local function read_body(sock, hdrs)
    local te = hdrs["transfer-encoding"]
    if te and te:lower():find("chunked", 1, true) then
        local parts, total = {}, 0
        while true do
            local line, err = sock:receive("*l")
            if not line then return nil, kind_of(err, true), "reading a chunk: " .. tostring(err) end
            local n = tonumber(line:match("^%s*(%x+)"), 16)
            if not n then return nil, "other", "malformed chunked encoding" end
            if n == 0 then
                repeat
                    line, err = sock:receive("*l")
                    if not line then return nil, kind_of(err, true), "reading trailers: " .. tostring(err) end
                until line == ""
                break
            end
            total = total + n
            if total > MAX_BODY then return nil, "too_large" end
            local data, derr = sock:receive(n)
            if not data then return nil, kind_of(derr, true), "reading a chunk: " .. tostring(derr) end
            parts[#parts + 1] = data
            sock:receive(2) -- CRLF
        end
        return table.concat(parts)
    end
    local len = hdrs["content-length"]
    if len then
        len = tonumber(len)
        if not len or len < 0 then return nil, "other", "malformed Content-Length" end
        if len > MAX_BODY then return nil, "too_large" end
        if len == 0 then return "" end
        local data, err, partial = sock:receive(len)
        if not data then
            return nil, kind_of(err, true), ("the answer was cut after %d of %d bytes (%s)"):format(
                #(partial or ""), len, tostring(err))
        end
        return data
    end
    local data, err = sock:receive("*a")
    if not data then return nil, kind_of(err, true), "reading the answer: " .. tostring(err) end
    if #data > MAX_BODY then return nil, "too_large" end
    return data, nil, nil, true
end

--- Sends req (the engine's request) and returns status, headers (lowercase names), body, or
-- nil, kind, detail.
function Host:request(req)
    local scheme, host, port, path = split_url(req.url)
    if not scheme then return nil, "config", "not an http(s) URL" end
    local sock = tcp()
    local t = math.ceil(req.timeout * 1000)
    sock:settimeouts(math.ceil(req.connect_timeout * 1000), t, t)
    local pool = ("cxone:%s:%s:%d:%s"):format(scheme, host, port, self.trust)
    local target = self.addr[host .. ":" .. port] or host
    local ok, err = sock:connect(target, port, { pool = pool, pool_size = self.pool_size })
    if not ok then
        local kind = kind_of(err, false)
        if kind == "config" then
            return nil, "config", ("nginx cannot resolve %s: no `resolver` directive in nginx.conf (add one, e.g. "
                .. "`resolver 127.0.0.53;`, or map the host with the `addresses` option)"):format(host)
        end
        return nil, kind, ("connecting to %s:%d: %s"):format(host, port, tostring(err))
    end
    local reused = (sock:getreusedtimes() or 0) > 0
    if not reused then self.connections = self.connections + 1 end
    if scheme == "https" and not reused then
        local sess, herr = sock:sslhandshake(nil, self.server_name or host, true)
        if not sess then
            sock:close()
            return nil, "tls", ("TLS handshake with %s:%d failed: %s (nginx trusts the CAs in "
                .. "lua_ssl_trusted_certificate)"):format(host, port, tostring(herr))
        end
    end
    local lines = { ("%s %s HTTP/1.1"):format(req.method, path),
                    ("Host: %s"):format((port == 80 or port == 443) and host or (host .. ":" .. port)) }
    for k, v in pairs(req.headers) do lines[#lines + 1] = k .. ": " .. v end
    local body = req.body
    if body or req.method ~= "GET" then lines[#lines + 1] = "Content-Length: " .. #(body or "") end
    lines[#lines + 1] = "Connection: keep-alive"
    lines[#lines + 1] = ""
    lines[#lines + 1] = body or ""
    local sent, serr = sock:send(table.concat(lines, "\r\n"))
    if not sent then
        sock:close()
        return nil, kind_of(serr, true), "sending the request: " .. tostring(serr)
    end
    local status_line, rerr = sock:receive("*l")
    if not status_line then
        sock:close()
        return nil, kind_of(rerr, true), "no answer: " .. tostring(rerr)
    end
    local ver, status = status_line:match("^HTTP/(%d%.%d) (%d%d%d)")
    status = tonumber(status)
    if not status then
        sock:close()
        return nil, "other", "the server did not answer HTTP"
    end
    local hdrs = {}
    while true do
        local line, herr = sock:receive("*l")
        if not line then
            sock:close()
            return nil, kind_of(herr, true), "reading the headers: " .. tostring(herr)
        end
        if line == "" then break end
        local k, v = line:match("^([^:]+):%s*(.-)%s*$")
        if k then
            k = k:lower()
            local old = hdrs[k]
            if old == nil then hdrs[k] = v
            elseif type(old) == "table" then old[#old + 1] = v
            else hdrs[k] = { old, v } end
        end
    end
    local function one(v) return type(v) == "table" and v[#v] or v end
    local data, kind, detail, to_close = read_body(sock, { ["transfer-encoding"] = one(hdrs["transfer-encoding"]),
                                                          ["content-length"] = one(hdrs["content-length"]) })
    if not data then
        sock:close()
        return nil, kind, detail
    end
    local conn = (one(hdrs["connection"]) or ""):lower()
    if to_close or ver ~= "1.1" or conn:find("close", 1, true) then
        sock:close()
    else
        sock:setkeepalive(KEEPALIVE_MS, self.pool_size)
    end
    return status, hdrs, data
end

--- Runs the functions with at most conc light threads in flight.
function Host:run_all(fns, conc)
    local nexti = 0
    local function worker()
        while true do
            nexti = nexti + 1
            local f = fns[nexti]
            if not f then return end
            f()
        end
    end
    local threads = {}
    for i = 1, math.min(conc, #fns) do threads[i] = spawn(worker) end
    for i = 1, #threads do wait(threads[i]) end
end

--- The rate limit shared by all workers: GCRA. The dict holds the "theoretical arrival time"
-- (TAT) of the next request; each request advances it by 1/rate with one atomic `incr` and
-- waits until its slot. A TAT left behind by an idle spell is moved up to now (the budget does
-- not pile up while nobody sends).
function Host:pace(rate)
    local dict = self.dict
    if not dict then return end
    local interval = 1 / rate
    local now = self:now()
    local v = dict:incr(self.rate_key, interval, now)
    if not v then return end -- the dict is full: unpaced rather than stuck
    local slot = v - interval
    if slot <= now then
        if v < now then dict:incr(self.rate_key, now - v) end
        return
    end
    self.paced_s = self.paced_s + (slot - now)
    ngx.sleep(slot - now)
end

-- The token store over the shared dict (values: "<expires at>\n<token>", "<until>\n<code>\n<msg>").
local function dict_tokens(dict)
    local function parse(v)
        if type(v) ~= "string" then return nil end
        local at, rest = v:match("^([%d.]+)\n(.*)$")
        return tonumber(at), rest
    end
    return {
        get = function(key)
            local at, tok = parse(dict:get("tok:" .. key))
            if not at then return nil end
            ngx.update_time()
            local ttl = at - ngx.now()
            if ttl <= 0 then return nil end
            return tok, ttl
        end,
        set = function(key, tok, ttl)
            ngx.update_time()
            dict:set("tok:" .. key, ("%.3f\n%s"):format(ngx.now() + ttl, tok), ttl)
        end,
        drop = function(key, tok)
            local _, cur = parse(dict:get("tok:" .. key))
            if cur == tok then dict:delete("tok:" .. key) end
        end,
        lock = function(key, ttl, held)
            if held then
                dict:set("lock:" .. key, true, ttl)
                return true
            end
            return (dict:add("lock:" .. key, true, ttl)) and true or false
        end,
        unlock = function(key) dict:delete("lock:" .. key) end,
        fail = function(key, code, msg, ttl)
            ngx.update_time()
            dict:set("fail:" .. key, ("%.3f\n%s\n%s"):format(ngx.now() + ttl, code, msg), ttl)
        end,
        failure = function(key)
            local at, rest = parse(dict:get("fail:" .. key))
            if not at then return nil end
            ngx.update_time()
            local left = at - ngx.now()
            local code, msg = rest:match("^([^\n]*)\n(.*)$")
            if left <= 0 or not code then return nil end
            return code, msg, left
        end,
    }
end

--- Creates a client (a cxone.PromoteClient: `vars`, `drift`, `plan`, `plan_all`, `apply`,
-- `apply_all`, `promote`, `metrics`, `close`) whose requests go over cosockets.
-- opts: everything `cxone.client` takes (base_url, token_url, client_id, client_secret,
-- access_key_id, access_key_secret, scope, timeout (seconds, per attempt), connect_timeout,
-- deadline (seconds, per call), retries, rate_limit (requests per second, for all workers
-- together), audit_log, state_file, tiers, ...), plus `token_dict` (name of a
-- lua_shared_dict, default "cxone" when it exists: the token and the rate limit are shared by
-- all workers; false: each worker on its own), `pool_size` (keepalive connections per pool,
-- 32), `ca_file` (the file named by lua_ssl_trusted_certificate; only part of the keepalive
-- pool's name: cosockets take trust from that directive), `server_name` (TLS name when it
-- differs from the URL's host) and `addresses` (`{["host:port"] = "ip"}`, to connect without
-- a resolver).
-- @treturn[1] cxone.PromoteClient
-- @treturn[2] nil, message, code ("config": a missing or invalid setting)
-- @raise when opts or one of its fields has the wrong Lua type
function M.new(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    for k, ty in pairs({ token_dict = "string", pool_size = "number", server_name = "string",
                         addresses = "table", ca_file = "string" }) do
        local v = opts[k]
        if v ~= nil and type(v) ~= ty and not (k == "token_dict" and v == false) then
            error(("bad argument #1 to 'new' (option '%s' must be a %s, got %s)"):format(k, ty, type(v)), 2)
        end
    end
    if ngx.get_phase() == "init" then
        -- the master would hand one client to every forked worker
        return nil, "create cxone clients per worker (init_worker_by_lua or on first use), not in init_by_lua",
            "config"
    end
    local pool_size = opts.pool_size or POOL_SIZE
    if pool_size < 1 or pool_size > 10000 or pool_size % 1 ~= 0 then
        return nil, "option 'pool_size' must be an integer in [1, 10000]", "config"
    end
    local dict
    local dname = opts.token_dict
    if dname ~= false then
        dict = ngx.shared[dname or "cxone"]
        if dname and not dict then
            return nil, ("token_dict %s is not a lua_shared_dict (declare: lua_shared_dict %s 1m;)")
                :format(tostring(dname), tostring(dname)), "config"
        end
    end
    local host = setmetatable({
        dict = dict,
        tokens = dict and dict_tokens(dict) or nil, -- else each worker keeps its own token
        trust = (opts.ca_file or "lua_ssl_trusted_certificate") .. ":" .. tostring(opts.server_name or ""),
        server_name = opts.server_name,
        addr = opts.addresses or {},
        pool_size = pool_size,
        connections = 0,
        paced_s = 0,
    }, Host)
    local client, err, code = wire.client(opts, host)
    if not client then return nil, err, code end
    if dict then host.rate_key = "rate:" .. client.core.token_key end
    return client
end

--- Validates a payload (no I/O): true, or nil, violations, "invalid".
M.validate = cxone.validate
M.payload = cxone.payload
M.drift = cxone.drift

return M
