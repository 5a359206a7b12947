--- cxone for nginx/OpenResty: the promotion client over nginx cosockets, so a call never blocks
-- the worker. TLS is always verified (`sslhandshake` with verify; trust comes from
-- `lua_ssl_trusted_certificate`), connections are kept in a keepalive pool named by host, port
-- and trust settings, timeouts apply per phase (connect, send, read), and tokens are shared by all
-- workers through a `lua_shared_dict` (keyed by token URL + client id + scope), refreshed by one
-- worker at a time under a `dict:add` lock.
--
--     lua_shared_dict cxone 1m;
--     lua_ssl_trusted_certificate /etc/ssl/certs/ca-certificates.crt;
--     resolver 127.0.0.53;   # for host names
--     init_worker_by_lua_block { client = assert(require("resty.cxone").new{ ... }) }
--
-- Create clients per worker (init_worker_by_lua, or on first use), never in init_by_lua.
-- Calls work where cosockets do: rewrite, access, content and timer contexts.
-- @module resty.cxone

local wire = require("cxone.transport.wire")
local cxone = require("cxone")

local ngx = ngx
local tcp = ngx.socket.tcp
local spawn, wait = ngx.thread.spawn, ngx.thread.wait

local M = { _VERSION = cxone._VERSION }

local MAX_BODY = 4 * 1024 * 1024
local KEEPALIVE_MS = 60000
local POOL_SIZE = 32

local Engine = {}
Engine.__index = Engine

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

local function code_of(err)
    err = tostring(err)
    if err:find("timeout", 1, true) then return "timeout" end
    if err:find("refused", 1, true) then return "refused" end
    return "network"
end

function Engine:now()
    ngx.update_time()
    return ngx.now()
end

function Engine:sleep(s)
    if s > 0 then ngx.sleep(s) end
end

-- Reads the body: Content-Length, chunked, or until close. Returns body or nil, err, code.
local function read_body(sock, hdrs)
    local te = hdrs["transfer-encoding"]
    if te and te:lower():find("chunked", 1, true) then
        local parts, total = {}, 0
        while true do
            local line, err = sock:receive("*l")
            if not line then return nil, "reading a chunk: " .. tostring(err), code_of(err) end
            local n = tonumber(line:match("^%s*(%x+)"), 16)
            if not n then return nil, "malformed chunked encoding", "format" end
            if n == 0 then
                repeat
                    line, err = sock:receive("*l")
                    if not line then return nil, "reading trailers: " .. tostring(err), code_of(err) end
                until line == ""
                break
            end
            total = total + n
            if total > MAX_BODY then return nil, "the answer is larger than 4 MiB", "format" end
            local data, derr = sock:receive(n)
            if not data then return nil, "reading a chunk: " .. tostring(derr), code_of(derr) end
            parts[#parts + 1] = data
            sock:receive(2) -- CRLF
        end
        return table.concat(parts)
    end
    local len = hdrs["content-length"]
    if len then
        len = tonumber(len)
        if not len or len < 0 then return nil, "malformed Content-Length", "format" end
        if len > MAX_BODY then return nil, "the answer is larger than 4 MiB", "format" end
        if len == 0 then return "" end
        local data, err, partial = sock:receive(len)
        if not data then
            return nil, ("the answer was cut after %d of %d bytes (%s)"):format(#(partial or ""), len,
                tostring(err)), code_of(err)
        end
        return data
    end
    local data, err = sock:receive("*a")
    if not data then return nil, "reading the answer: " .. tostring(err), code_of(err) end
    return data, nil, nil, true
end

--- Sends req ({method, url, headers, body}) and returns status, headers (lowercase), body, or
-- nil, message, code.
function Engine:request(req, t)
    local scheme, host, port, path = split_url(req.url)
    if not scheme then return nil, "not an http(s) URL", "config" end
    local sock = tcp()
    sock:settimeouts(math.ceil(t.connect * 1000), math.ceil(t.send * 1000), math.ceil(t.read * 1000))
    local pool = ("cxone:%s:%s:%d:%s"):format(scheme, host, port, self.trust)
    local ok, err = sock:connect(self.addr[host .. ":" .. port] or host, port, { pool = pool, pool_size = POOL_SIZE })
    if not ok then
        return nil, ("connecting to %s:%d: %s"):format(host, port, tostring(err)), code_of(err)
    end
    if scheme == "https" and (sock:getreusedtimes() or 0) == 0 then
        local sess, herr = sock:sslhandshake(nil, self.server_name or host, true)
        if not sess then
            sock:close()
            return nil, ("TLS handshake with %s:%d failed: %s (the server's certificate must chain to a CA "
                .. "in lua_ssl_trusted_certificate)"):format(host, port, tostring(herr)), "tls"
        end
    end
    local lines = { ("%s %s HTTP/1.1"):format(req.method, path),
                    ("Host: %s"):format((port == 80 or port == 443) and host or (host .. ":" .. port)) }
    for k, v in pairs(req.headers or {}) do lines[#lines + 1] = k .. ": " .. v end
    local body = req.body
    if body or req.method ~= "GET" then lines[#lines + 1] = "Content-Length: " .. #(body or "") end
    lines[#lines + 1] = "Connection: keep-alive"
    lines[#lines + 1] = ""
    lines[#lines + 1] = body or ""
    local sent, serr = sock:send(table.concat(lines, "\r\n"))
    if not sent then
        sock:close()
        return nil, "sending the request: " .. tostring(serr), code_of(serr)
    end
    local status_line, rerr = sock:receive("*l")
    if not status_line then
        sock:close()
        return nil, "no answer: " .. tostring(rerr), code_of(rerr)
    end
    local ver, status = status_line:match("^HTTP/(%d%.%d) (%d%d%d)")
    status = tonumber(status)
    if not status then
        sock:close()
        return nil, "the server did not answer HTTP", "format"
    end
    local hdrs = {}
    while true do
        local line, herr = sock:receive("*l")
        if not line then
            sock:close()
            return nil, "reading the headers: " .. tostring(herr), code_of(herr)
        end
        if line == "" then break end
        local k, v = line:match("^([^:]+):%s*(.-)%s*$")
        if k then hdrs[k:lower()] = v end
    end
    local data, berr, bcode, to_close = read_body(sock, hdrs)
    if not data then
        sock:close()
        return nil, berr, bcode
    end
    local conn = (hdrs["connection"] or ""):lower()
    if to_close or ver ~= "1.1" or conn:find("close", 1, true) then
        sock:close()
    else
        sock:setkeepalive(KEEPALIVE_MS, POOL_SIZE)
    end
    return status, hdrs, data
end

--- Runs the functions with at most conc light threads in flight.
function Engine:run_all(fns, conc)
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

-- Tokens in the lua_shared_dict, shared by every worker.
function Engine:token_get(key) return self.dict and self.dict:get("tok:" .. key) end
function Engine:token_set(key, token, ttl) return self.dict:set("tok:" .. key, token, ttl) end
function Engine:token_lock(key, ttl) return (self.dict:add("lock:" .. key, true, ttl)) and true or false end
function Engine:token_unlock(key) self.dict:delete("lock:" .. key) end
function Engine:token_drop(key, token)
    if self.dict:get("tok:" .. key) == token then self.dict:delete("tok:" .. key) end
end

--- Creates a client (a cxone.PromoteClient: `vars`, `drift`, `plan`, `plan_all`, `apply`,
-- `apply_all`, `promote`, `metrics`, `close`) whose requests go over cosockets.
-- opts: everything `cxone.client` takes (base_url, token_url, client_id, client_secret,
-- access_key_id, access_key_secret, scope, timeout, connect_timeout, deadline, retries,
-- audit_log, state_file, tiers, ...), plus `token_dict` (name of a lua_shared_dict, default
-- "cxone" when it exists: the token is shared by all workers), `ca_file` (the file named by
-- lua_ssl_trusted_certificate; only part of the keepalive pool's name: cosockets take trust from
-- that directive), `server_name` (TLS name when it differs from the URL's host) and `addresses`
-- (`{["host:port"] = "ip"}`, to connect without a resolver).
-- @treturn[1] cxone.PromoteClient
-- @treturn[2] nil, message, code ("config")
function M.new(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    if ngx.get_phase() == "init" then
        -- the master would hand one client to every forked worker
        return nil, "create cxone clients per worker (init_worker_by_lua or on first use), not in init_by_lua",
            "config"
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
    local engine = setmetatable({
        dict = dict,
        shares_tokens = dict ~= nil, -- else each worker keeps its own token
        trust = (opts.ca_file or "lua_ssl_trusted_certificate") .. ":" .. tostring(opts.server_name or ""),
        server_name = opts.server_name,
        addr = opts.addresses or {},
    }, Engine)
    return wire.client(opts, engine)
end

--- Validates a payload (no I/O): true, or nil, violations, "invalid".
M.validate = cxone.validate
M.payload = cxone.payload
M.drift = cxone.drift

return M
