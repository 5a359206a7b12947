--- cxone for HAProxy (2.6+, Lua 5.3): the promotion client over `core.httpclient`, so a call
-- yields instead of blocking the thread. The call engine of cxone.core decides everything
-- (retries, backoff, the deadline, the token, pacing, scrubbing); this file only moves its
-- requests through the httpclient. Reads, validate and drift are fully supported. HAProxy 2.6's
-- httpclient has no PATCH, and re-sends a request on its own (below) where Lua cannot see it, so
-- writes are refused with code `unsupported` before anything is sent (never replaced by a PUT,
-- which would drop masked values).
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
-- What HAProxy 2.6's httpclient does on its own, and how this driver copes:
-- - it makes up to 4 attempts per request (its proxy's 3 retries), each with the whole
--   `timeout` it is given: the engine's per-attempt timeout is divided by 4 here, so a hung
--   server costs at most the call's deadline (+ 1 s); a server that drips bytes slowly keeps
--   each attempt alive and is the exception;
-- - between attempts on a refused connection it waits 1 s, so a refused port costs ~3 s per
--   engine attempt;
-- - when no server answered it answers itself, with its own 502/503/504 pages (an empty 503 when
--   the host name did not resolve): those are reported
--   to the engine as transport failures (504: `timeout`; 502 and 503: `network`), never as the
--   API's answer. A refused port, an unknown host and a TLS failure (a certificate the CA file
--   does not trust) all give the same 503 page: the code is `network` for all three, and the
--   engine does not try again (HAProxy made its own connection attempts).
--
-- Callable from core.register_service, register_action and register_task (yielding contexts);
-- never from a sample fetch or a converter, which cannot yield. Under `lua-load` one Lua state
-- serves every thread: one client, one token. Under `lua-load-per-thread` each thread loads the
-- script: one client and one token per thread (each fetches its own).
-- Everything is required at load time: after `chroot` no module file can be read.
-- @module cxone.haproxy

local wire = require("cxone.transport.wire")
local cxone = require("cxone")

local M = { _VERSION = cxone._VERSION }

local METHODS = { GET = "get", POST = "post", PUT = "put", DELETE = "delete", HEAD = "head" }
local UNSUPPORTED = {
    PATCH = "HAProxy's httpclient cannot send PATCH: writes are unsupported here (use the CLI, "
        .. "or nginx with resty.cxone)",
    PUT = "writes are unsupported in HAProxy: its httpclient re-sends a request on its own, unseen "
        .. "(use the CLI, or nginx with resty.cxone)",
}
local HC_ATTEMPTS = 4 -- the httpclient's own attempts per request (HAProxy 2.6: 3 retries)

-- HAProxy's own answers when no server answered (its built-in error pages), as transport
-- failures: kind, detail.
local GATEWAY = {
    [502] = { "The server returned an invalid or incomplete response", "reset",
              "HAProxy's httpclient got an invalid or incomplete answer, or none (502)" },
    -- "resolve": code `network`, and the engine does not try again (HAProxy already made its
    -- own 4 connection attempts, 1 s apart)
    [503] = { "No server is available to handle this request", "resolve",
              "HAProxy's httpclient could not connect (its own 503: a refused port, an unknown host and "
                  .. "a certificate not trusted by httpclient.ssl.ca-file look alike)" },
    [504] = { "The server didn't respond in time", "timeout", "no answer in time (HAProxy's 504)" },
}

local Host = {}
Host.__index = Host

function Host:now()
    local t = core.now()
    return t.sec + t.usec / 1e6
end

function Host:sleep(s)
    if s > 0 then core.msleep(math.floor(s * 1000 + 0.5)) end
end

local function hostport(url)
    local scheme, hp = url:match("^(https?)://([^/]+)")
    if not hp then return nil end
    if not hp:find(":%d+$") then hp = hp .. (scheme == "https" and ":443" or ":80") end
    return hp
end

--- Sends req (the engine's request) through a new core.httpclient: status, headers (lowercase
-- name → list of values), body, or nil, kind, detail.
function Host:request(req)
    local fn = METHODS[req.method]
    if not fn then return nil, "config", UNSUPPORTED[req.method] or ("method " .. req.method .. " unsupported") end
    local hdrs = {}
    for k, v in pairs(req.headers) do hdrs[k] = { v } end
    local hc = core.httpclient()
    local per = req.timeout / HC_ATTEMPTS
    local args = { url = req.url, headers = hdrs, body = req.body,
                   timeout = math.max(1, math.floor(per * 1000)) }
    local dst = self.addr[hostport(req.url) or ""]
    if dst then args.dst = dst end
    local res = hc[fn](hc, args)
    local status = res and tonumber(res.status) or 0
    local body = res and res.body or ""
    if status == 0 then return nil, "other", "HAProxy's httpclient gave no answer" end
    local out, n = {}, 0
    for k, v in pairs(res.headers or {}) do
        -- values come as a list indexed from 0 in 2.6: Call:answer reads such lists
        out[k:lower()] = v
        n = n + 1
    end
    local gw = GATEWAY[status]
    if gw and #body < 512 and body:find(gw[1], 1, true) and body:find("^<html><body><h1>") then
        return nil, gw[2], gw[3]
    end
    if status == 503 and body == "" and n <= 1 and (n == 0 or out["content-length"]) then
        -- the httpclient's answer when the host name did not resolve: no page, no header
        return nil, "resolve", GATEWAY[503][3]
    end
    return status, out, body
end

--- Creates a client (a cxone.PromoteClient: `vars`, `drift`, `plan`, `plan_all`, `metrics`;
-- `apply` reports every write as `unsupported`). opts: as `cxone.client` (base_url, token_url,
-- client_id, client_secret, access_key_id, access_key_secret, scope, timeout (seconds, per
-- attempt), deadline (seconds, per call), retries, rate_limit, tiers, ...), plus `addresses`
-- (`{["host:port"] = "ip:port"}`: where to connect, since the httpclient resolves names only
-- through a `resolvers` section and an IP-literal URL fails the certificate check). The audit
-- trail and the masked-value ledger are off by default (no file can be opened after chroot).
-- @treturn[1] cxone.PromoteClient
-- @treturn[2] nil, message, code ("config": a missing or invalid setting, or not in HAProxy)
-- @raise when opts or one of its fields has the wrong Lua type
function M.new(opts)
    if type(opts) ~= "table" then
        error("bad argument #1 to 'new' (table expected, got " .. type(opts) .. ")", 2)
    end
    if opts.addresses ~= nil and type(opts.addresses) ~= "table" then
        error("bad argument #1 to 'new' (option 'addresses' must be a table, got " .. type(opts.addresses) .. ")", 2)
    end
    if type(core) ~= "table" or type(core.httpclient) ~= "function" then
        return nil, "cxone.haproxy runs inside HAProxy 2.5+ (the global core.httpclient is missing)", "config"
    end
    local host = setmetatable({ addr = opts.addresses or {}, unsupported = UNSUPPORTED }, Host)
    return wire.client(opts, host, { audit_log = false, state_file = false })
end

--- Validates a payload (no I/O): true, or nil, violations, "invalid".
M.validate = cxone.validate
M.payload = cxone.payload
M.drift = cxone.drift

return M
