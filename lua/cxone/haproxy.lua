--- cxone for HAProxy (2.6+, Lua 5.3): the promotion client over `core.httpclient`, so a call
-- yields instead of blocking the thread. Reads, validate and drift are fully supported. HAProxy
-- 2.6's httpclient has no PATCH, so writes are refused with code `unsupported` before anything is
-- sent (never replaced by a PUT, which would drop masked values).
--
--     global
--         httpclient.ssl.ca-file /etc/ssl/certs/ca-certificates.crt   # trust for https
--         lua-prepend-path /usr/share/lua/5.3/?.lua
--         lua-load /etc/haproxy/site.lua
--
--     -- site.lua (HAProxy's API is the global `core`; never shadow it)
--     local cx = require("cxone.haproxy")
--     local client = assert(cx.new{ base_url = ..., client_id = ..., client_secret = ... })
--     core.register_service("cxone_vars", "http", function(applet) ... client:vars(...) ... end)
--
-- Callable from core.register_service, register_action and register_task (yielding contexts).
-- Everything is required at load time: after `chroot` no module file can be read.
-- @module cxone.haproxy

local wire = require("cxone.transport.wire")
local cxone = require("cxone")

local M = { _VERSION = cxone._VERSION }

local METHODS = { GET = "get", POST = "post", PUT = "put", DELETE = "delete", HEAD = "head" }
local UNSUPPORTED = {
    PATCH = "HAProxy's httpclient cannot send PATCH: writes are unsupported here (use the CLI, "
        .. "or nginx with resty.cxone)",
}

local Engine = {}
Engine.__index = Engine

function Engine:now()
    local t = core.now()
    return t.sec + t.usec / 1e6
end

function Engine:sleep(s)
    if s > 0 then core.msleep(math.floor(s * 1000 + 0.5)) end
end

local function hostport(url)
    local scheme, hp = url:match("^(https?)://([^/]+)")
    if not hp then return nil end
    if not hp:find(":%d+$") then hp = hp .. (scheme == "https" and ":443" or ":80") end
    return hp
end

--- Sends req through a new core.httpclient; status, headers (lowercase → string), body, or nil,
-- message, code, final. The httpclient reports no reason for a failed exchange (it answers with
-- its own 503 page): that is a `network` failure (for https it includes a certificate the CA
-- file does not trust), not retried again since HAProxy retried the connection itself.
function Engine:request(req, t)
    local fn = METHODS[req.method]
    if not fn then return nil, UNSUPPORTED[req.method] or ("method " .. req.method .. " unsupported"), "unsupported" end
    local hdrs = {}
    for k, v in pairs(req.headers or {}) do hdrs[k] = { v } end
    local hc = core.httpclient()
    local args = { url = req.url, headers = hdrs, body = req.body,
                   timeout = math.ceil((t.read or 30) * 1000) }
    local dst = self.addr[hostport(req.url) or ""]
    if dst then args.dst = dst end
    local res = hc[fn](hc, args)
    local status = res and tonumber(res.status) or 0
    local body = res and res.body or ""
    -- when no server answered, HAProxy's own httpclient proxy (which already retried the
    -- connection) answers 503 with its built-in page: that is a transport failure, not the API's
    if status == 503 and body:find("No server is available to handle this request", 1, true) then
        status = 0
    end
    if status == 0 then
        local https = req.url:find("^https:")
        return nil, ("no answer from %s%s"):format(hostport(req.url) or "?", https
            and " (connection failed, timed out, or the certificate is not trusted by httpclient.ssl.ca-file)"
            or " (connection failed or timed out)"), "network", true -- final: HAProxy retried already
    end
    local out = {}
    for k, v in pairs(res.headers or {}) do
        -- values come as a list (indexed from 0 in 2.6): keep the last one
        local val = v
        if type(v) == "table" then val = v[#v] or v[0] end
        if type(val) == "string" then out[k:lower()] = val end
    end
    return status, out, body
end

--- Creates a client (a cxone.PromoteClient: `vars`, `drift`, `plan`, `plan_all`, `metrics`;
-- `apply` reports every write as `unsupported`). opts: as `cxone.client` (base_url, token_url,
-- client_id, client_secret, access_key_id, access_key_secret, scope, timeout, deadline, retries,
-- tiers, ...), plus `addresses` (`{["host:port"] = "ip:port"}`: where to connect, since the
-- httpclient resolves names only through a `resolvers` section and an IP-literal URL fails the
-- certificate check). Tokens are shared by everything running in this Lua state (lua-load: all
-- threads), keyed by token URL + client id + scope. The audit trail and the masked-value ledger
-- are off by default (no file can be opened after chroot).
-- @treturn[1] cxone.PromoteClient
-- @treturn[2] nil, message, code ("config")
function M.new(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    if type(core) ~= "table" or type(core.httpclient) ~= "function" then
        return nil, "cxone.haproxy runs inside HAProxy 2.5+ (the global core.httpclient is missing)", "config"
    end
    local engine = setmetatable({ addr = opts.addresses or {}, unsupported = UNSUPPORTED }, Engine)
    return wire.client(opts, engine, { audit_log = false, state_file = false })
end

--- Validates a payload (no I/O): true, or nil, violations, "invalid".
M.validate = cxone.validate
M.payload = cxone.payload
M.drift = cxone.drift

return M
