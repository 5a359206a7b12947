-- embed:nginx: examples/nginx/nginx.conf (guard, admin, exporter) in a real nginx with the Lua
-- module (LuaJIT: the luajit tree's cxone/core.so) against cxone-sim, over http and https.
local T = require("t")
local L = require("lib")

local SRC = assert(os.getenv("CXONE_SRC"), "CXONE_SRC is not set (run through ctest)")
local CPATH = assert(os.getenv("CXONE_EMBED_CPATH_LUAJIT"), "CXONE_EMBED_CPATH_LUAJIT is not set")
local TEMPLATE = SRC .. "/examples/nginx/nginx.conf"
local CANARY = "canary-guard-value-5f0e"

local work = T.tmpdir()
os.execute("chmod 755 " .. work) -- workers run as nobody
local pki = L.make_ca(work, "good")
local other = L.make_ca(work, "other")

local N = {}
N.__index = N

--- Starts nginx from the example template. o: workers, ca, base (sim), base2 (sim), checks.
local function start_nginx(o)
    local prefix = work .. "/nginx" .. L.free_port()
    os.execute("mkdir -p " .. prefix .. " && chmod 755 " .. prefix)
    local port = L.free_port()
    local up = o.base.url:gsub("^https?://", "")
    L.render(TEMPLATE, prefix .. "/nginx.conf", {
        WORKERS = tostring(o.workers or 2), PREFIX = prefix, CXONE_SRC = SRC, CXONE_CPATH = CPATH,
        LISTEN = "127.0.0.1:" .. port, CA_FILE = o.ca or pki.ca, UPSTREAM = up,
        UPSTREAM_SCHEME = o.base.url:match("^(https?)"),
    })
    local env = {
        CXONE_BASE_URL = o.base.url, CXONE_CLIENT_ID = T.DEMO.client_id,
        CXONE_CLIENT_SECRET = T.DEMO.client_secret,
        CXONE_BASE_URL_2 = o.base2 and o.base2.url or "", CXONE_TLS_SERVER_NAME = "localhost",
        CXONE_DRIFT_CHECKS = o.checks or "", CXONE_CHECK_INTERVAL = "1",
    }
    local parts = { "env" }
    for k, v in pairs(env) do parts[#parts + 1] = T.shq(k .. "=" .. v) end
    local base_cmd = table.concat(parts, " ") .. " nginx -p " .. T.shq(prefix) .. " -c " .. T.shq(prefix .. "/nginx.conf")
    local out, code = T.sh(base_cmd .. " -t 2>&1")
    T.eq(code, 0, "nginx -t accepts the example: " .. out)
    out, code = T.sh(base_cmd .. " 2>&1")
    T.eq(code, 0, "nginx started: " .. out)
    local self = setmetatable({ prefix = prefix, url = "http://127.0.0.1:" .. port, cmd = base_cmd }, N)
    for _ = 1, 100 do
        local _, st = L.time(self.url .. "/ping")
        if st == 200 then return self end
        T.sh("sleep 0.05")
    end
    error("nginx did not answer /ping")
end

function N:pid() return tonumber(T.read(self.prefix .. "/nginx.pid")) end

function N:stop()
    local pid = self:pid()
    if not pid then return end
    os.execute("kill -QUIT " .. pid .. " 2>/dev/null")
    for _ = 1, 100 do
        if not T.read("/proc/" .. pid .. "/status") then return end
        T.sh("sleep 0.05")
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
end

function N:log() return T.read(self.prefix .. "/error.log") or "" end

function N:get(path)
    return T.request({ url = self.url }, "GET", path, {})
end

local function vars_path(action, tier, base2)
    return ("/admin/vars?action=%s&tier=%s%s"):format(action, tier, base2 and "&base=2" or "")
end

local sim1, sim2
T.test("a client is never made in the master (init_by_lua)", function()
    local dir = work .. "/init"
    os.execute("mkdir -p " .. dir)
    T.write(dir .. "/nginx.conf", ([[
pid %s/nginx.pid;
error_log %s/error.log warn;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
events {}
http {
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;;";
    lua_package_cpath "%s;;";
    init_by_lua_block {
        local c, err, code = require("resty.cxone").new{ base_url = "http://127.0.0.1:1",
            client_id = "x", client_secret = "y" }
        assert(c == nil and code == "config" and err:find("init_worker", 1, true), "expected a refusal")
    }
}
]]):format(dir, dir, SRC, SRC, CPATH))
    local out, code = T.sh("nginx -p " .. T.shq(dir) .. " -c " .. T.shq(dir .. "/nginx.conf") .. " -t 2>&1")
    T.eq(code, 0, "nginx -t ran init_by_lua and the refusal held: " .. out)
end)

T.test("apply over cosockets: the same plan/apply code path writes, builds and audits (names only)", function()
    local dir = work .. "/apply"
    os.execute("mkdir -p " .. dir .. " && chmod 777 " .. dir) -- workers (nobody) write the trail
    local port = L.free_port()
    T.write(dir .. "/nginx.conf", ([[
worker_processes 1;
pid %s/nginx.pid;
error_log %s/error.log warn;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
env CXONE_BASE_URL;
events {}
http {
    access_log off;
    client_body_temp_path %s/body;
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;;";
    lua_package_cpath "%s;;";
    lua_shared_dict cxone 1m;
    server {
        listen 127.0.0.1:%d;
        location = /apply {
            content_by_lua_block {
                local c = assert(require("resty.cxone").new{ base_url = os.getenv("CXONE_BASE_URL"),
                    client_id = "%s", client_secret = "%s",
                    audit_log = "%s/audit.jsonl", state_file = "%s/ledger.json" })
                local rep = c:promote({ { action = "%s", tier = "staging", baseline = "development",
                    variables = { TIMEOUT_MS = "4242", NGINX_KEY = { value = "%s", masked = true } } } })
                ngx.say(require("cxone.core").json_encode({ ok = rep.ok == true, applied = rep.counts.applied,
                    code = rep.code, message = rep.message }))
            }
        }
    }
}
]]):format(dir, dir, dir, SRC, SRC, CPATH, port, T.DEMO.client_id, T.DEMO.client_secret, dir, dir, T.CRM, CANARY))
    local cmd = "env CXONE_BASE_URL=" .. T.shq(sim1.url) .. " nginx -p " .. T.shq(dir) .. " -c " .. T.shq(dir .. "/nginx.conf")
    local out, code = T.sh(cmd .. " 2>&1")
    T.eq(code, 0, "nginx started: " .. out)
    local ng = setmetatable({ prefix = dir, url = "http://127.0.0.1:" .. port }, N)
    local ok, e = pcall(function()
        local builds = sim1:stats().builds_queued
        local r = T.request({ url = ng.url }, "GET", "/apply", { max_time = 30 })
        T.eq(r.status, 200, "answered: " .. tostring(r.body) .. " " .. ng:log())
        T.eq(r.json.ok, true, "applied: " .. r.body)
        T.eq(r.json.applied, 1, "one step applied")
        local state = sim1:state()
        local found
        for _, a in ipairs(state.actions) do
            if a.id == T.CRM then
                for _, v in ipairs(a.environments.staging.variables) do
                    if v.name == "TIMEOUT_MS" then T.eq(v.value, "4242", "the value landed") end
                    if v.name == "NGINX_KEY" then found = v end
                end
            end
        end
        T.ok(found and found.masked and found.value == CANARY, "the masked value landed masked")
        T.eq(sim1:stats().builds_queued, builds + 1, "staging's build was queued")
        local trail = T.read(dir .. "/audit.jsonl") or ""
        T.ok(trail:find("apply.started", 1, true) and trail:find("NGINX_KEY", 1, true), "audited: " .. trail)
        T.ok(not trail:find(CANARY, 1, true), "the trail holds names, never values")
        T.ok(not ng:log():find(CANARY, 1, true) and not ng:log():find(T.DEMO.client_secret, 1, true),
            "no value or secret in the error log")
    end)
    ng:stop()
    assert(ok, e)
end)

-- An nginx with 4 workers and small clients (timeout 2 s) for the host checks: /get (one read),
-- /lock (takes the token lock as a worker that then dies would), /config (the constructor's
-- refusals), /noresolver (a host name without a `resolver`).
local function start_checks(base, extra)
    local dir = work .. "/checks" .. L.free_port()
    os.execute("mkdir -p " .. dir .. " && chmod 755 " .. dir)
    local port = L.free_port()
    T.write(dir .. "/nginx.conf", ([[
worker_processes 4;
pid %s/nginx.pid;
error_log %s/error.log warn;
load_module /usr/lib/nginx/modules/ndk_http_module.so;
load_module /usr/lib/nginx/modules/ngx_http_lua_module.so;
env CXONE_BASE_URL;
events {}
http {
    access_log off;
    client_body_temp_path %s/body;
    lua_package_path "%s/lua/?.lua;%s/lua/?/init.lua;;";
    lua_package_cpath "%s;;";
    lua_shared_dict cxone 1m;
    init_worker_by_lua_block {
        CLIENT = assert(require("resty.cxone").new{ base_url = os.getenv("CXONE_BASE_URL"),
            client_id = "%s", client_secret = "%s", timeout = 2, deadline = 20, retries = 0,
            audit_log = false, state_file = false, %s })
    }
    server {
        listen 127.0.0.1:%d reuseport; # connections spread over the 4 workers
        location = /get {
            content_by_lua_block {
                ngx.update_time()
                local t0 = ngx.now()
                local res, err, code = CLIENT.core:get("%s", "dev")
                ngx.update_time()
                ngx.say(require("cxone.core").json_encode({ ok = res ~= nil, code = code, error = err,
                    s = ngx.now() - t0, pid = ngx.worker.pid() }))
            }
        }
        location = /lock {
            content_by_lua_block {
                ngx.shared.cxone:delete("tok:" .. CLIENT.core.token_key)
                ngx.say(tostring(ngx.shared.cxone:add("lock:" .. CLIENT.core.token_key, true, 2)))
            }
        }
        location = /config {
            content_by_lua_block {
                local new = require("resty.cxone").new
                local out = {}
                local base = os.getenv("CXONE_BASE_URL")
                local c, err, code = new{ base_url = base, client_id = "x" }
                out.no_secret = { c == nil, code, err }
                c, err, code = new{ base_url = base, client_id = "x", client_secret = "y", pool_size = 0 }
                out.pool_size = { c == nil, code, err }
                c, err, code = new{ base_url = "http://example.com", client_id = "x", client_secret = "y" }
                out.plain_http = { c == nil, code, err }
                out.wrong_type = not pcall(new, { base_url = base, client_id = "x", client_secret = "y", pool_size = "8" })
                out.wrong_type_core = not pcall(new, { base_url = base, client_id = "x", client_secret = "y", timeout = "8" })
                ngx.say(require("cxone.core").json_encode(out))
            }
        }
        location = /noresolver {
            content_by_lua_block {
                local c = assert(require("resty.cxone").new{ base_url = "https://cxone-test.invalid",
                    client_id = "x", client_secret = "y", audit_log = false, state_file = false })
                local res, err, code = c.core:get("%s", "dev")
                ngx.say(require("cxone.core").json_encode({ code = code, error = err,
                    token_requests = c.core:stats().token_requests }))
            }
        }
    }
}
]]):format(dir, dir, dir, SRC, SRC, CPATH, T.DEMO.client_id, T.DEMO.client_secret, extra or "", port, T.CRM,
        T.CRM))
    local out, code = T.sh("env CXONE_BASE_URL=" .. T.shq(base.url) .. " nginx -p " .. T.shq(dir) .. " -c "
        .. T.shq(dir .. "/nginx.conf") .. " 2>&1")
    T.eq(code, 0, "nginx started: " .. out)
    return setmetatable({ prefix = dir, url = "http://127.0.0.1:" .. port }, N)
end

T.test("4 workers: waiters get the token fetcher's error at once, and nobody asks again", function()
    local ng = start_checks(sim1)
    local ok, e = pcall(function()
        local before = L.route_count(sim1, "POST /oauth/token")
        -- the token endpoint refuses after 1.5 s: every waiting worker gets that refusal
        sim1:fault({ method = "POST", path = "/oauth/token", kind = "status", status = 401, delay_ms = 1500 })
        local urls = {}
        for i = 1, 40 do urls[i] = ng.url .. "/get" end
        local res = L.parallel(urls, work, 40)
        local pids = {}
        for i, r in ipairs(res) do
            local j = T.json.decode(r.body)
            T.ok(j, "call " .. i .. " answered: " .. r.body)
            T.eq(j.code, "auth", "call " .. i .. " got the fetcher's error: " .. tostring(j.error))
            T.ok(j.s < 5, ("call %d answered in %.2f s (the refusal came after 1.5 s; a waiter used to wait 10 s)")
                :format(i, j.s))
            pids[j.pid] = true
        end
        local n = 0
        for _ in pairs(pids) do n = n + 1 end
        T.ok(n >= 2, "the calls ran in " .. n .. " workers")
        T.eq(L.route_count(sim1, "POST /oauth/token") - before, 1, "one token request for 40 calls in 4 workers")
        T.ok(not ng:log():find(T.DEMO.client_secret, 1, true), "no secret in the error log")
    end)
    ng:stop()
    assert(ok, e)
end)

T.test("4 workers: a lock holder that died costs one request timeout (2 s), not more", function()
    local ng = start_checks(sim1)
    local ok, e = pcall(function()
        local before = L.route_count(sim1, "POST /oauth/token")
        T.eq(ng:get("/lock").body, "true\n", "the lock is taken by a holder that never comes back")
        local r = ng:get("/get")
        local j = T.json.decode(r.body)
        T.eq(j and j.ok, true, "the call succeeded: " .. r.body)
        T.ok(j.s >= 1.5 and j.s < 4, ("it waited for the lock to expire: %.2f s"):format(j.s))
        T.eq(L.route_count(sim1, "POST /oauth/token") - before, 1, "then one token request")
    end)
    ng:stop()
    assert(ok, e)
end)

T.test("4 workers share one rate limit through the dict: no 429 from a server limiting to 5/s", function()
    -- the server sends no rate-limit headers: each worker alone would pace itself to rate_limit
    -- (4/s), 16/s together; shared, the 30 calls go out at 4/s
    local limited = T.start({ args = { "--rate-limit", "5/s", "--rate-limit-headers", "none" } })
    local ng = start_checks(limited, "rate_limit = 4, retries = 3")
    local ok, e = pcall(function()
        local urls = {}
        for i = 1, 30 do urls[i] = ng.url .. "/get" end
        local res = L.parallel(urls, work, 30)
        local pids = {}
        for i, r in ipairs(res) do
            local j = T.json.decode(r.body)
            T.eq(j and j.ok, true, "call " .. i .. " succeeded: " .. r.body)
            pids[j.pid] = true
        end
        local n = 0
        for _ in pairs(pids) do n = n + 1 end
        T.ok(n >= 3, "the calls ran in " .. n .. " workers")
        T.eq(L.route_count(limited, L.GET_ROUTE, 429), 0, "no request was refused with 429")
        T.eq(L.route_count(limited, L.GET_ROUTE, 200), 30, "30 reads answered")
    end)
    ng:stop()
    limited:stop()
    assert(ok, e)
end)

T.test("constructors return config errors; a missing resolver is named at once", function()
    local ng = start_checks(sim1)
    local ok, e = pcall(function()
        local c = T.json.decode(ng:get("/config").body)
        for _, k in ipairs({ "no_secret", "pool_size", "plain_http" }) do
            T.eq(c[k][1], true, k .. ": no client")
            T.eq(c[k][2], "config", k .. ": code config (" .. tostring(c[k][3]) .. ")")
        end
        T.ok(c.no_secret[3]:find("client_secret", 1, true), "names the option: " .. c.no_secret[3])
        T.ok(c.pool_size[3]:find("pool_size", 1, true), "names the option: " .. c.pool_size[3])
        T.eq(c.wrong_type, true, "a wrong Lua type raises")
        T.eq(c.wrong_type_core, true, "a wrong Lua type of an engine option raises")
        local t0 = T.simlib.now()
        local r = T.json.decode(ng:get("/noresolver").body)
        T.eq(r.code, "config", "no resolver: a config error: " .. tostring(r.error))
        T.ok(r.error:find("resolver", 1, true), "the message names the resolver directive: " .. r.error)
        T.eq(r.token_requests, 1, "asked once, not retried")
        T.ok(T.simlib.now() - t0 < 2, "at once")
    end)
    ng:stop()
    assert(ok, e)
end)

local function sims()
    sim1 = T.start()
    sim2 = T.start({ args = { "--tls-cert", pki.cert, "--tls-key", pki.key } })
end

T.test("60 calls across two workers issue exactly one token; two base URLs never share one", function()
    local ng = start_nginx({ base = sim1, base2 = sim2 })
    local ok, e = pcall(function()
        local before = sim1:stats().tokens_issued
        local urls = {}
        for i = 1, 60 do urls[i] = ng.url .. vars_path(T.CRM, ({ "development", "staging", "production" })[i % 3 + 1]) end
        local res = L.parallel(urls, work, 60)
        for i, r in ipairs(res) do
            T.ok(T.json.decode(r.body) and T.json.decode(r.body).variables, "call " .. i .. " answered variables: " .. r.body)
        end
        T.eq(sim1:stats().tokens_issued - before, 1, "one token for 60 calls in 2 workers")
        -- the second base URL (https) gets its own token, and is never sent the first one
        local r = ng:get(vars_path(T.CRM, "production", true))
        T.eq(r.status, 200, "https GET through the second client: " .. tostring(r.body))
        T.eq(L.stats(sim2, pki.ca).tokens_issued, 1, "the second base URL issued its own token")
        T.eq(L.route_count(sim2, L.GET_ROUTE, 401, pki.ca), 0, "no request to the second base URL carried a foreign token")
        T.eq(sim1:stats().tokens_issued - before, 1, "still one token at the first base URL")
        T.ok(not ng:log():find("%[alert%]") and not ng:log():find("%[crit%]"), "no alert/crit lines")
    end)
    ng:stop()
    assert(ok, e)
end)

T.test("90 requests across the three tiers in two workers: each answer is its tier's", function()
    local ng = start_nginx({ base = sim1 })
    local ok, e = pcall(function()
        local tiers = { development = "dev", staging = "staging", production = "prod" }
        local names = { "development", "staging", "production" }
        local want = {}
        local tok = T.token(sim1)
        for name, env in pairs(tiers) do
            want[env] = T.request(sim1, "GET", T.vars(T.CRM, env), { token = tok }).body
        end
        local urls = {}
        for i = 1, 90 do urls[i] = ng.url .. vars_path(T.CRM, names[i % 3 + 1]) end
        local res = L.parallel(urls, work, 30)
        for i, r in ipairs(res) do
            local env = tiers[names[i % 3 + 1]]
            local got = T.json.decode(r.body)
            T.ok(got, "answer " .. i .. " is JSON: " .. r.body)
            T.eq(got.environmentId, env, "answer " .. i .. " environment")
            T.eq(L.canon(got.variables), L.canon(T.json.decode(want[env]).variables),
                "answer " .. i .. " holds " .. env .. "'s variables")
        end
    end)
    ng:stop()
    assert(ok, e)
end)

T.test("the guard: bad bodies get 422 with every violation (never a value) and never reach the sim", function()
    local ng = start_nginx({ base = sim1 })
    local ok, e = pcall(function()
        local tok = T.token(sim1)
        local bad = { actionId = "not-a-uuid", environmentId = "prod",
                      variables = { { name = "bad name", value = CANARY, masked = true }, { name = "X" } } }
        local good = L.check_guard(sim1, ng.url, tok, bad, 3, CANARY, "1")
        local g2 = T.request({ url = ng.url }, "PATCH", T.vars(T.CRM, "dev"), { body = good, token = tok })
        T.eq(g2.status, 200, "a good body lands")
        T.eq(T.var(g2.json, "GUARD_OK").value, "1", "the sim holds it")
    end)
    ng:stop()
    assert(ok, e)
end)

T.test("https with the wrong CA is a tls failure; with 10 delayed calls in flight /ping stays prompt (1 worker)", function()
    local ng = start_nginx({ base = sim1, base2 = sim2, ca = other.ca, workers = 1 })
    local ok, e = pcall(function()
        local r = ng:get(vars_path(T.CRM, "production", true))
        T.eq(r.json and r.json.code, "tls", "wrong CA → tls: " .. tostring(r.body))
        T.ok(not r.body:find(T.DEMO.client_secret, 1, true), "no secret in the answer")
        L.ping_stays_prompt(sim1, ng.url .. vars_path(T.CRM, "staging"), ng.url .. "/ping")
    end)
    ng:stop()
    assert(ok, e)
end)

T.test("the exporter's numbers equal the sim's drift; five reloads leak nothing", function()
    local check = T.CRM .. ":staging:production," .. T.PAY .. ":development:staging"
    local ng = start_nginx({ base = sim1, checks = check })
    local ok, e = pcall(function()
        local text
        for _ = 1, 100 do
            text = ng:get("/metrics").body
            if text:find("cxone_drift_items{", 1, true) and text:find(T.PAY, 1, true) then break end
            T.sh("sleep 0.05")
        end
        for _, c in ipairs({ { T.CRM, "staging", "prod" }, { T.PAY, "dev", "staging" } }) do
            local want = L.sim_drift(sim1, c[1], c[2], c[3])
            local bname = c[2] == "dev" and "development" or c[2]
            local tname = c[3] == "prod" and "production" or c[3]
            for _, ty in ipairs({ "value_mismatch", "masked_mismatch", "new_variable", "missing_variable", "unverifiable" }) do
                local pat = ('cxone_drift_items{action="%s",baseline="%s",target="%s",type="%s"} (%%d+)')
                    :format(c[1], bname, tname, ty):gsub("%-", "%%-")
                T.eq(tonumber(text:match(pat)), want[ty] or 0, c[1] .. " " .. ty)
            end
        end
        T.ok(text:match("cxone_check_errors_total 0"), "no failed checks")
        T.ok(tonumber(text:match("cxone_last_check_timestamp_seconds ([%d.]+)")) > 1e9, "timestamp set")
        local pid = ng:pid()
        local function fds() return tonumber(T.sh("ls /proc/" .. pid .. "/fd | wc -l"):match("%d+")) end
        local before = fds()
        for _ = 1, 5 do
            local out, code = T.sh(ng.cmd .. " -s reload 2>&1")
            T.eq(code, 0, "reload: " .. out)
            local _, st = L.time(ng.url .. "/ping")
            T.eq(st, 200, "answers after a reload")
        end
        -- old workers finish gracefully; once only the 2 new ones are left, compare
        local children
        for _ = 1, 100 do
            children = tonumber(T.sh("pgrep -P " .. pid .. " | wc -l"):match("%d+"))
            if children == 2 then break end
            T.sh("sleep 0.05")
        end
        T.eq(children, 2, "the old workers exited")
        T.eq(fds(), before, "the master holds as many descriptors as before")
        local log = ng:log()
        T.ok(not log:find("%[alert%]") and not log:find("%[crit%]") and not log:find("%[emerg%]"),
            "no alert/crit/emerg lines: " .. log)
        T.ok(not log:find(T.DEMO.client_secret, 1, true), "no secret in the error log")
    end)
    ng:stop()
    assert(ok, e)
end)

local ok, e = pcall(sims)
if not ok then print("FAIL starting the sims: " .. tostring(e)); os.exit(1) end
local function cleanup()
    sim1:stop()
    sim2:stop()
    os.execute("rm -rf " .. work)
end
local real_exit = os.exit
os.exit = function(code) cleanup(); real_exit(code) end
T.run()
