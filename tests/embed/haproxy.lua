-- embed:haproxy: examples/haproxy/haproxy.cfg (guard, admin, exporter) in a real HAProxy 2.6
-- (Lua 5.3: the lua5.3 tree's cxone/core.so), with nbthread 2, user haproxy and chroot as Debian
-- ships it, against cxone-sim over http and https.
local T = require("t")
local L = require("lib")

local SRC = assert(os.getenv("CXONE_SRC"), "CXONE_SRC is not set (run through ctest)")
local CPATH = assert(os.getenv("CXONE_EMBED_CPATH_53"), "CXONE_EMBED_CPATH_53 is not set")
local TEMPLATE = SRC .. "/examples/haproxy/haproxy.cfg"
local CANARY = "canary-haproxy-value-77c1"

local work = T.tmpdir()
os.execute("chmod 755 " .. work)
local pki = L.make_ca(work, "good")
local other = L.make_ca(work, "other")

local H = {}
H.__index = H

local function start_haproxy(o)
    local prefix = work .. "/haproxy" .. L.free_port()
    os.execute("mkdir -p " .. prefix .. " && chmod 755 " .. prefix)
    local port = L.free_port()
    local cfg = prefix .. "/haproxy.cfg"
    L.render(TEMPLATE, cfg, {
        PREFIX = prefix, CXONE_SRC = SRC, CXONE_CPATH = CPATH, LISTEN = "127.0.0.1:" .. port,
        CA_FILE = o.ca or pki.ca, UPSTREAM = o.base.url:gsub("^https?://", ""),
    })
    -- the test-only write service
    local text = T.read(cfg)
    text = text:gsub("(lua%-load [^\n]+\n)", "%1    lua-load " .. SRC .. "/tests/embed/haproxy_writes.lua\n", 1)
    text = text:gsub("(    default_backend)", "    http-request use-service lua.cxone_test_write if { path /test/write }\n"
        .. "    http-request use-service lua.cxone_test_config if { path /test/config }\n%1", 1)
    T.write(cfg, text)
    local base = o.base.url
    local env = {
        CXONE_BASE_URL = base, CXONE_CLIENT_ID = T.DEMO.client_id, CXONE_CLIENT_SECRET = T.DEMO.client_secret,
        CXONE_DRIFT_CHECKS = o.checks or "", CXONE_CHECK_INTERVAL = "1", CXONE_ADDRESSES = "",
    }
    if base:match("^https") then
        -- connect to 127.0.0.1 but verify the certificate's name (localhost)
        local p = base:match(":(%d+)$")
        env.CXONE_BASE_URL = "https://localhost:" .. p
        env.CXONE_ADDRESSES = "localhost:" .. p .. "=127.0.0.1:" .. p
    end
    local parts = { "env" }
    for k, v in pairs(env) do parts[#parts + 1] = T.shq(k .. "=" .. v) end
    local cmd = table.concat(parts, " ") .. " haproxy -f " .. T.shq(cfg)
    local out, code = T.sh(cmd .. " -c 2>&1")
    T.eq(code, 0, "haproxy -c accepts the example: " .. out)
    out, code = T.sh(cmd .. " -D 2>" .. T.shq(prefix .. "/stderr"))
    T.eq(code, 0, "haproxy started: " .. (T.read(prefix .. "/stderr") or ""))
    local self = setmetatable({ prefix = prefix, url = "http://127.0.0.1:" .. port }, H)
    for _ = 1, 100 do
        local _, st = L.time(self.url .. "/ping")
        if st == 200 then return self end
        T.sh("sleep 0.05")
    end
    error("haproxy did not answer /ping: " .. (T.read(prefix .. "/stderr") or ""))
end

function H:pid() return tonumber((T.read(self.prefix .. "/haproxy.pid") or ""):match("%d+")) end

function H:stop()
    local pid = self:pid()
    if not pid then return end
    os.execute("kill -TERM " .. pid .. " 2>/dev/null")
    for _ = 1, 100 do
        if not T.read("/proc/" .. pid .. "/status") then return end
        T.sh("sleep 0.05")
    end
    os.execute("kill -KILL " .. pid .. " 2>/dev/null")
end

function H:get(path) return T.request({ url = self.url }, "GET", path, {}) end

local function vars_path(action, tier) return ("/admin/vars?action=%s&tier=%s"):format(action, tier) end

local sim1, sim2

T.test("runs as Debian ships it: nbthread 2, user haproxy, chroot; 60 calls issue one token", function()
    local hp = start_haproxy({ base = sim1 })
    local ok, e = pcall(function()
        local status = T.read("/proc/" .. hp:pid() .. "/status")
        T.eq(tonumber(status:match("Threads:%s*(%d+)")), 2, "two threads")
        T.eq(T.sh("ps -o user= -p " .. hp:pid()):match("%S+"), "haproxy", "runs as user haproxy")
        T.eq(T.sh("readlink /proc/" .. hp:pid() .. "/root"):match("%S+"), "/var/lib/haproxy", "chrooted")
        local before = sim1:stats().tokens_issued
        local urls = {}
        for i = 1, 60 do urls[i] = hp.url .. vars_path(T.CRM, ({ "development", "staging", "production" })[i % 3 + 1]) end
        local res = L.parallel(urls, work, 60)
        local envs = { "dev", "staging", "prod" }
        for i, r in ipairs(res) do
            local got = T.json.decode(r.body)
            T.ok(got and got.variables, "call " .. i .. " answered variables: " .. r.body)
            T.eq(got.environmentId, envs[i % 3 + 1], "call " .. i .. " got its tier")
        end
        T.eq(sim1:stats().tokens_issued - before, 1, "one token for 60 calls on two threads")
    end)
    hp:stop()
    assert(ok, e)
end)

T.test("guard: bad bodies get 422 and never reach the sim, good ones are forwarded unchanged; writes are unsupported", function()
    local hp = start_haproxy({ base = sim1 })
    local ok, e = pcall(function()
        local tok = T.token(sim1)
        local bad = { actionId = T.CRM, environmentId = "prod",
                      variables = { { name = "lower", value = CANARY, masked = true } } }
        local _, patches = L.check_guard(sim1, hp.url, tok, bad, 1, CANARY, "2")
        local w = hp:get("/test/write")
        T.eq(w.json and w.json.code, "unsupported", "a write through cxone.haproxy is refused: " .. w.body)
        T.ok(w.json.error:find("PATCH", 1, true), "the message says why")
        T.eq(L.route_count(sim1, L.PATCH_ROUTE), patches + 1, "only the guarded PATCH reached the sim (never a PUT)")
        T.eq(L.route_count(sim1, "PUT /api/v2/integration/actions/{actionId}/environments/{envId}/variables"), 0, "no PUT")
        local c = hp:get("/test/config").json
        for _, k in ipairs({ "no_secret", "plain_http" }) do
            T.eq(c[k][1], true, k .. ": no client")
            T.eq(c[k][2], "config", k .. ": code config (" .. tostring(c[k][3]) .. ")")
        end
        T.ok(c.no_secret[3]:find("client_secret", 1, true), "names the option: " .. c.no_secret[3])
        T.eq(c.wrong_type, true, "a wrong Lua type raises")
    end)
    hp:stop()
    assert(ok, e)
end)

T.test("https with a CA made by openssl; the wrong CA fails; 10 delayed calls leave /ping prompt", function()
    local hp = start_haproxy({ base = sim2 })
    local ok, e = pcall(function()
        local r = hp:get(vars_path(T.CRM, "production"))
        T.eq(r.status, 200, "GET over https: " .. tostring(r.body))
        T.eq(r.json.environmentId, "prod", "the production tier")
    end)
    hp:stop()
    assert(ok, e)
    local bad = start_haproxy({ base = sim2, ca = other.ca })
    ok, e = pcall(function()
        local r = bad:get(vars_path(T.CRM, "production"))
        T.eq(r.json and r.json.code, "network", "wrong CA: no answer accepted: " .. tostring(r.body))
        T.ok(r.json.error:find("not trusted", 1, true), "the message names the certificate check")
        T.ok(not r.body:find(T.DEMO.client_secret, 1, true), "no secret in the answer")
    end)
    bad:stop()
    assert(ok, e)
    local hp2 = start_haproxy({ base = sim1 })
    ok, e = pcall(function()
        L.ping_stays_prompt(sim1, hp2.url .. vars_path(T.CRM, "staging"), hp2.url .. "/ping")
    end)
    hp2:stop()
    assert(ok, e)
end)

T.test("the exporter's numbers equal the sim's drift", function()
    local missing = "00000000-0000-4000-8000-000000000000"
    local hp = start_haproxy({ base = sim1, checks = T.TKT .. ":staging:production," .. missing .. ":staging:production" })
    local ok, e = pcall(function()
        local text
        for _ = 1, 100 do
            text = hp:get("/metrics").body
            if text:find("cxone_drift_items{", 1, true) then break end
            T.sh("sleep 0.05")
        end
        local want = L.sim_drift(sim1, T.TKT, "staging", "prod")
        for _, ty in ipairs({ "value_mismatch", "masked_mismatch", "new_variable", "missing_variable", "unverifiable" }) do
            local pat = ('cxone_drift_items{action="%s",baseline="staging",target="production",type="%s"} (%%d+)')
                :format(T.TKT, ty):gsub("%-", "%%-")
            T.eq(tonumber(text:match(pat)), want[ty] or 0, ty)
        end
        T.ok(tonumber(text:match("cxone_check_errors_total (%d+)")) >= 1, "the check of an unknown action failed and counts")
        T.ok(not text:find(missing, 1, true), "a failed check exports no drift items")
        T.ok(not (T.read(hp.prefix .. "/stderr") or ""):find(T.DEMO.client_secret, 1, true), "no secret in HAProxy's log")
    end)
    hp:stop()
    assert(ok, e)
end)

sim1 = T.start()
sim2 = T.start({ args = { "--tls-cert", pki.cert, "--tls-key", pki.key } })
local real_exit = os.exit
os.exit = function(code)
    sim1:stop()
    sim2:stop()
    os.execute("rm -rf " .. work)
    real_exit(code)
end
T.run()
