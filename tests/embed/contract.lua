-- transport_contract: one scripted sequence of answers (cxone-sim faults) replayed through the
-- three drivers of the call engine: libcurl (cxone.core.client, in this Lua 5.4 process), nginx
-- cosockets (resty.cxone, LuaJIT, 1 worker) and HAProxy's httpclient (cxone.haproxy, Lua 5.3).
-- Each gives the same code and the same number of engine attempts, and the same message wherever
-- the engine interprets the answer. Where a host cannot tell failures apart (HAProxy answers a
-- TLS failure and an unknown host alike with its own 503), the code is `network`.
local T = require("t")
local L = require("lib")

local SRC = assert(os.getenv("CXONE_SRC"), "CXONE_SRC is not set (run through ctest)")
local CPATH_JIT = assert(os.getenv("CXONE_EMBED_CPATH_LUAJIT"), "CXONE_EMBED_CPATH_LUAJIT is not set")
local CPATH_53 = assert(os.getenv("CXONE_EMBED_CPATH_53"), "CXONE_EMBED_CPATH_53 is not set")
local core = require("cxone.core")

local work = T.tmpdir()
os.execute("chmod 755 " .. work)
local trusted = L.make_ca(work, "trusted")     -- what every driver trusts
local untrusted = L.make_ca(work, "untrusted") -- what the TLS sim's certificate chains to

local sim = T.start()
local tls = T.start({ args = { "--tls-cert", untrusted.cert, "--tls-key", untrusted.key } })
local tls_port = assert(tls.url:match(":(%d+)$"))
-- the oversized answer's server (its stdout to a file: a pipe would outlive this script)
local big_pid = tonumber(T.sh(("python3 %s %d > %s 2>/dev/null & echo $!"):format(
    T.shq(SRC .. "/tests/embed/big_server.py"), core.MAX_ANSWER + 4096, T.shq(work .. "/big.url"))):match("%d+"))
local big_url
for _ = 1, 100 do
    big_url = (T.read(work .. "/big.url") or ""):match("^(http://[%d.:]+)")
    if big_url then break end
    T.sh("sleep 0.05")
end
assert(big_url, "big_server.py did not start")
local BASES = {
    main = sim.url,
    big = big_url,
    tight = sim.url,
    tls = "https://localhost:" .. tls_port,
    unknown = "https://no-such-host.invalid",
}
local ENV = {
    CONTRACT_BASE_MAIN = BASES.main, CONTRACT_BASE_BIG = BASES.big, CONTRACT_BASE_TIGHT = BASES.tight, CONTRACT_BASE_TLS = BASES.tls, CONTRACT_BASE_UNKNOWN = BASES.unknown,
    CONTRACT_CLIENT_ID = T.DEMO.client_id, CONTRACT_CLIENT_SECRET = T.DEMO.client_secret,
    CONTRACT_TLS_ADDR = "127.0.0.1", CONTRACT_TLS_PORT = tls_port,
}
local NAMESERVER = (T.read("/etc/resolv.conf") or ""):match("\nnameserver%s+([%d.]+)")
    or (T.read("/etc/resolv.conf") or ""):match("^nameserver%s+([%d.]+)") or "127.0.0.53"

local function env_prefix()
    local parts = { "env" }
    for k, v in pairs(ENV) do parts[#parts + 1] = T.shq(k .. "=" .. v) end
    return table.concat(parts, " ")
end

-- ---- the three drivers ----

local drivers = {}

-- libcurl, in this process
do
    local site = require("contract_site")
    local clients = {}
    local function client_for(base)
        if not clients[base] then
            local o = site.options(base)
            o.base_url = BASES[base]
            o.client_id, o.client_secret = T.DEMO.client_id, T.DEMO.client_secret
            o.ca_file = trusted.ca
            clients[base] = assert(core.client(o))
        end
        return clients[base]
    end
    drivers[#drivers + 1] = {
        name = "libcurl",
        run = function(base)
            local c = client_for(base)
            local t0 = T.simlib.now()
            local res, err, code = c:get(T.CRM, "dev")
            local meta = c:last_meta() or {}
            return { ok = res ~= nil, code = code, error = err, attempts = meta.attempts or 0,
                     status = meta.status or 0, ms = math.floor((T.simlib.now() - t0) * 1000) }
        end,
        stop = function() end,
    }
end

-- nginx: one worker, the token shared through the dict as in production
local function start_nginx()
    local dir = work .. "/nginx"
    os.execute("mkdir -p " .. dir .. " && chmod 755 " .. dir)
    local port = L.free_port()
    local envs = {}
    for k in pairs(ENV) do envs[#envs + 1] = "env " .. k .. ";" end
    T.write(dir .. "/nginx.conf", ([[
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log warn;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
%s
events {}
http {
    access_log off;
    client_body_temp_path %s/body;
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;%s/tests/embed/?.lua;;";
    lua_package_cpath "%s;;";
    lua_shared_dict cxone 1m;
    lua_ssl_trusted_certificate %s;
    resolver %s;
    resolver_timeout 2s;
    init_worker_by_lua_block {
        local site = require("contract_site")
        CLIENTS = site.clients(require("resty.cxone").new, function(base)
            if base == "tls" then
                return { addresses = { ["localhost:" .. os.getenv("CONTRACT_TLS_PORT")] = "127.0.0.1" } }
            end
        end)
    }
    server {
        listen 127.0.0.1:%d;
        location = /run {
            content_by_lua_block {
                local site = require("contract_site")
                local c = CLIENTS[ngx.var.arg_base]
                ngx.say(site.run(c, function() ngx.update_time() return ngx.now() end, ngx.var.arg_action, "dev"))
            }
        }
    }
}
]]):format(dir, dir, table.concat(envs, "\n"), dir, SRC, SRC, SRC, CPATH_JIT, trusted.ca, NAMESERVER, port))
    local cmd = env_prefix() .. " nginx -p " .. T.shq(dir) .. " -c " .. T.shq(dir .. "/nginx.conf")
    local out, code = T.sh(cmd .. " 2>&1")
    T.eq(code, 0, "nginx started: " .. out)
    local url = "http://127.0.0.1:" .. port
    return {
        name = "nginx",
        run = function(base)
            local r = T.request({ url = url }, "GET", "/run?base=" .. base .. "&action=" .. T.CRM, { max_time = 60 })
            T.eq(r.status, 200, "nginx answered: " .. tostring(r.body) .. (T.read(dir .. "/error.log") or ""))
            return r.json
        end,
        stop = function()
            local pid = tonumber(T.read(dir .. "/nginx.pid") or "")
            if pid then os.execute("kill -QUIT " .. pid .. " 2>/dev/null") end
        end,
        log = function() return T.read(dir .. "/error.log") or "" end,
    }
end

-- HAProxy: one Lua state (lua-load), as the example runs it
local function start_haproxy()
    local dir = work .. "/haproxy"
    os.execute("mkdir -p " .. dir .. " && chmod 755 " .. dir)
    local port = L.free_port()
    T.write(dir .. "/site.lua", [[
local site = require("contract_site")
local clients = site.clients(require("cxone.haproxy").new, function(base)
    if base == "tls" then
        local p = os.getenv("CONTRACT_TLS_PORT")
        return { addresses = { ["localhost:" .. p] = "127.0.0.1:" .. p } }
    end
end)
core.register_service("contract", "http", function(applet)
    local q = {}
    for k, v in tostring(applet.qs or ""):gmatch("([^&=]+)=([^&]*)") do q[k] = v end
    local body = site.run(clients[q.base], function() local t = core.now() return t.sec + t.usec / 1e6 end,
        q.action, "dev")
    applet:set_status(200)
    applet:add_header("content-type", "application/json")
    applet:add_header("content-length", tostring(#body))
    applet:start_response()
    applet:send(body)
end)
]])
    T.write(dir .. "/haproxy.cfg", ([[
global
    nbthread 2
    pidfile %s/haproxy.pid
    log stderr format short local0 notice
    httpclient.ssl.ca-file %s
    httpclient.ssl.verify required
    httpclient.resolvers.prefer ipv4
    lua-prepend-path %s cpath
    lua-prepend-path %s/lua/?.lua
    lua-prepend-path %s/lua/?/init.lua
    lua-prepend-path %s/tests/embed/?.lua
    lua-load %s/site.lua
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend contract
    bind 127.0.0.1:%d
    http-request use-service lua.contract
]]):format(dir, trusted.ca, CPATH_53, SRC, SRC, SRC, dir, port))
    local cmd = env_prefix() .. " haproxy -f " .. T.shq(dir .. "/haproxy.cfg")
    local out, code = T.sh(cmd .. " -D 2>" .. T.shq(dir .. "/stderr"))
    T.eq(code, 0, "haproxy started: " .. out .. (T.read(dir .. "/stderr") or ""))
    local url = "http://127.0.0.1:" .. port
    return {
        name = "haproxy",
        run = function(base)
            local r = T.request({ url = url }, "GET", "/?base=" .. base .. "&action=" .. T.CRM, { max_time = 60 })
            T.eq(r.status, 200, "haproxy answered: " .. tostring(r.body) .. (T.read(dir .. "/stderr") or ""))
            return r.json
        end,
        stop = function()
            local pid = tonumber((T.read(dir .. "/haproxy.pid") or ""):match("%d+") or "")
            if pid then os.execute("kill -TERM " .. pid .. " 2>/dev/null") end
        end,
        log = function() return T.read(dir .. "/stderr") or "" end,
    }
end

-- ---- the script ----

local GET = { method = "GET", path = T.vars(T.CRM, "dev") }
local function fault(f)
    local out = {}
    for k, v in pairs(GET) do out[k] = v end
    for k, v in pairs(f) do out[k] = v end
    return out
end

-- Each step: the faults armed before it, the base URL, and what every driver must report.
-- `same_message`: the engine interprets the answer, so the message is the same everywhere.
-- `code_by` / `attempts_by`: where a host cannot tell failures apart (documented).
local SCRIPT = {
    { name = "a plain read (warms the token)", ok = true, attempts = 1 },
    { name = "429 with Retry-After 1, then the answer",
      faults = { fault({ kind = "status", status = 429, retry_after = 1 }) }, ok = true, attempts = 2 },
    { name = "503 on every attempt", faults = { fault({ kind = "status", status = 503, count = 20 }) },
      code = "server", attempts = 2, same_message = true },
    { name = "a hung server", faults = { fault({ kind = "hang", count = 40 }) }, code = "timeout",
      attempts = 2, max_s = 15 },
    -- deadline 3 s, timeout 2 s, 3 retries: the second attempt gets what is left of the deadline
    { name = "a hung server, the deadline binding", base = "tight", faults = { fault({ kind = "hang", count = 40 }) },
      code = "timeout", attempts = 2, max_s = 4 },
    { name = "the connection reset on every attempt", faults = { fault({ kind = "reset", count = 40 }) },
      code = "network", attempts = 2 },
    { name = "401 on an expired token: one refresh, one retry", faults = { fault({ kind = "expire_tokens" }) },
      ok = true, attempts = 2, new_token = true },
    { name = "a garbage body", faults = { fault({ kind = "not_json" }) }, code = "format", attempts = 1,
      same_message = true },
    { name = "an oversized body", base = "big", code = "format", attempts = 1, same_message = true },
    -- the token request fails first: no API attempt is made (token attempts are counted apart)
    { name = "a TLS failure (untrusted certificate)", base = "tls", code = "tls", attempts = 0,
      code_by = { haproxy = "network" } },
    { name = "an unknown host", base = "unknown", code = "network", attempts = 0 },
    -- last: the engine then pauses all its calls for the time the server asked
    { name = "429 with a Retry-After past the deadline",
      faults = { fault({ kind = "status", status = 429, retry_after = 100 }) }, code = "rate_limited",
      attempts = 1, same_message = true },
}

-- CONTRACT_DRIVERS (e.g. "nginx,haproxy") picks drivers when debugging one; ctest runs all three.
local only = os.getenv("CONTRACT_DRIVERS")
local function wanted(name) return not only or only:find(name, 1, true) ~= nil end

T.test("one scripted sequence of answers through libcurl, nginx and HAProxy", function()
    if not wanted("libcurl") then table.remove(drivers, 1) end
    if wanted("nginx") then drivers[#drivers + 1] = start_nginx() end
    if wanted("haproxy") then drivers[#drivers + 1] = start_haproxy() end
    local ok, e = pcall(function()
        for _, step in ipairs(SCRIPT) do
            local seen = {}
            for _, d in ipairs(drivers) do
                sim:curl("DELETE", "/_sim/faults")
                for _, f in ipairs(step.faults or {}) do sim:fault(f) end
                local tokens = sim:stats().tokens_issued
                local r = d.run(step.base or "main")
                local what = ("%s / %s"):format(step.name, d.name)
                T.ok(type(r) == "table", what .. ": an answer")
                local want_code = step.code_by and step.code_by[d.name] or step.code
                if step.ok then
                    T.eq(r.ok, true, what .. ": succeeded (" .. tostring(r.error) .. ")")
                else
                    T.eq(r.ok, false, what .. ": failed")
                    T.eq(r.code, want_code, what .. ": code (" .. tostring(r.error) .. ")")
                end
                T.eq(r.attempts, step.attempts, what .. ": engine attempts (" .. tostring(r.error) .. ")")
                if step.max_s then
                    T.ok(r.ms <= step.max_s * 1000, ("%s: took %d ms, at most the deadline + 1 s"):format(what, r.ms))
                end
                if step.new_token then
                    T.eq(sim:stats().tokens_issued, tokens + 1, what .. ": one new token")
                end
                T.ok(not tostring(r.error):find(T.DEMO.client_secret, 1, true), what .. ": no secret in the message")
                seen[#seen + 1] = { d = d.name, r = r }
            end
            if step.same_message then
                for i = 2, #seen do
                    T.eq(seen[i].r.error, seen[1].r.error,
                        ("%s: %s gives %s's message"):format(step.name, seen[i].d, seen[1].d))
                end
            end
        end
    end)
    sim:curl("DELETE", "/_sim/faults")
    for _, d in ipairs(drivers) do
        if d.log then
            T.ok(not d.log():find(T.DEMO.client_secret, 1, true), d.name .. ": no secret in the host's log")
        end
        d.stop()
    end
    assert(ok, e)
end)

local real_exit = os.exit
os.exit = function(code)
    sim:stop()
    tls:stop()
    os.execute("kill " .. big_pid)
    os.execute("rm -rf " .. work)
    real_exit(code)
end
T.run()
