-- lib.lua: what the embed:* suites share: certificates made with openssl, free ports, example
-- templates rendered with envsubst, parallel curl, and a timing helper. Lua 5.4.
local T = require("t")

local L = {}

function L.free_port()
    -- a random port no socket on this machine uses (from /proc/net/tcp*: no subprocess)
    local used = {}
    for _, f in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
        for port in (T.read(f) or ""):gmatch("\n%s*%d+: %x+:(%x+)") do used[tonumber(port, 16)] = true end
    end
    for _ = 1, 1000 do
        local p = math.random(20000, 60000)
        if not used[p] then return p end
    end
    error("no free port")
end

--- A CA and a server certificate it signed (CN/SAN localhost and 127.0.0.1) under dir/name-*.
function L.make_ca(dir, name)
    local p = dir .. "/" .. name
    local cmd = "(" .. table.concat({
        ("openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=%s-test-ca -keyout %s-ca.key -out %s-ca.pem"):format(name, p, p),
        ("openssl req -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -subj /CN=localhost -keyout %s-key.pem -out %s.csr"):format(p, p),
        ("printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\\n' > %s.ext"):format(p),
        ("openssl x509 -req -in %s.csr -CA %s-ca.pem -CAkey %s-ca.key -CAcreateserial -days 2 -extfile %s.ext -out %s-cert.pem"):format(p, p, p, p, p),
    }, " && ") .. ") >/dev/null 2>&1"
    local _, code = T.sh(cmd)
    T.eq(code, 0, "openssl made " .. name)
    return { ca = p .. "-ca.pem", cert = p .. "-cert.pem", key = p .. "-key.pem" }
end

--- Renders an example template with envsubst (only the listed variables).
function L.render(template, out, vars)
    local names, env = {}, {}
    for k, v in pairs(vars) do
        names[#names + 1] = "${" .. k .. "}"
        env[#env + 1] = k .. "=" .. T.shq(v)
    end
    local _, code = T.sh(("env %s envsubst %s < %s > %s"):format(table.concat(env, " "),
        T.shq(table.concat(names, " ")), T.shq(template), T.shq(out)))
    T.eq(code, 0, "envsubst rendered " .. template)
end

--- Runs the URLs with one curl in parallel; returns a list of {status, body} in order.
function L.parallel(urls, dir, max)
    local parts = { "curl -s --no-progress-meter -Z --parallel-immediate --parallel-max " .. (max or #urls) .. " --max-time 30" }
    for i, u in ipairs(urls) do
        parts[#parts + 1] = T.shq(u) .. " -o " .. T.shq(dir .. "/p" .. i) .. " -w '%{http_code}\\n'"
    end
    local out = T.sh(table.concat(parts, " "))
    local _ = out
    local res = {}
    for i = 1, #urls do res[i] = { body = T.read(dir .. "/p" .. i) or "" } end
    return res
end

--- Starts the URLs in the background with one parallel curl; :wait() returns how many got 200.
function L.background(urls)
    local parts = { "curl -s --no-progress-meter -Z --parallel-immediate --max-time 30" }
    for _, u in ipairs(urls) do parts[#parts + 1] = T.shq(u) .. " -o /dev/null -w '%{http_code}\\n'" end
    local p = assert(io.popen(table.concat(parts, " "), "r"))
    return {
        wait = function()
            local out = p:read("a")
            p:close()
            local n = 0
            for c in out:gmatch("%d+") do if c == "200" then n = n + 1 end end
            return n
        end,
    }
end

--- Seconds one GET takes (curl's time_total) and its status.
function L.time(url)
    local out = T.sh("curl -s -o /dev/null --max-time 10 -w '%{http_code} %{time_total}' " .. T.shq(url))
    local code, t = out:match("(%d+) ([%d.]+)")
    return tonumber(t), tonumber(code)
end

--- Waits (polling the sim's fault list, bounded) until no armed fault is left: every delayed
-- request has arrived and is in flight.
function L.wait_faults_taken(sim, limit)
    local deadline = os.time() + (limit or 10)
    while os.time() <= deadline do
        local f = sim:get_json("/_sim/faults")
        local list = f.faults or f
        if #list == 0 then return true end
        T.sh("sleep 0.05")
    end
    return false
end

--- The sim's /_sim/stats (over https with the CA file when given).
function L.stats(sim, ca)
    if not ca then return sim:stats() end
    local r = T.request(sim, "GET", "/_sim/stats", { extra = "--cacert " .. T.shq(ca) })
    T.eq(r.status, 200, "GET /_sim/stats")
    return r.json
end

--- Sum of a sim route's answers with a given status.
function L.route_count(sim, route, status, ca)
    local r = L.stats(sim, ca).routes[route] or {}
    if status then return r[tostring(status)] or 0 end
    local n = 0
    for _, c in pairs(r) do n = n + c end
    return n
end

L.GET_ROUTE = "GET /api/v2/integration/actions/{actionId}/environments/{envId}/variables"
L.PATCH_ROUTE = "PATCH /api/v2/integration/actions/{actionId}/environments/{envId}/variables"

--- The drift the sim holds between two environments, computed here with cxone.core (5.4) from
-- what the API answers (read with curl): type → count.
function L.sim_drift(sim, action, benv, tenv)
    local core = require("cxone.core")
    local tok = T.token(sim)
    local b = T.request(sim, "GET", T.vars(action, benv), { token = tok }).json
    local t = T.request(sim, "GET", T.vars(action, tenv), { token = tok }).json
    local items = assert(core.drift(b.variables, t.variables))
    local counts = {}
    for _, it in ipairs(items) do counts[it.drift_type] = (counts[it.drift_type] or 0) + 1 end
    return counts
end


--- Variables as a canonical string (name=value/masked, sorted), to compare answers.
function L.canon(vars)
    local out = {}
    for i, v in ipairs(vars or {}) do out[i] = ("%s=%s/%s"):format(v.name, tostring(v.value), tostring(v.masked)) end
    table.sort(out)
    return table.concat(out, ";")
end

--- The host stays responsive while ten slow calls are in flight: delays the next ten GETs of
-- the sim by 2 s, sends them through slow_url, and checks that `ping_url` answers within 500 ms
-- every time; then that all ten completed.
function L.ping_stays_prompt(sim, slow_url, ping_url)
    sim:fault({ method = "GET", kind = "delay", delay_ms = 2000, count = 10 })
    local urls = {}
    for i = 1, 10 do urls[i] = slow_url end
    local bg = L.background(urls)
    T.ok(L.wait_faults_taken(sim), "the 10 delayed calls are in flight")
    local worst = 0
    for _ = 1, 5 do
        local t, st = L.time(ping_url)
        T.eq(st, 200, "/ping answered")
        if t > worst then worst = t end
    end
    T.ok(worst < 0.5, ("/ping within 500 ms while 10 calls wait 2 s (worst %.3f s)"):format(worst))
    T.eq(bg.wait(), 10, "the delayed calls all completed")
end

--- The write guard in front of the sim, as both hosts serve it at `url`: `bad` (a PATCH body for
-- prod holding `canary` as a masked value) gets 422 with at least `min_violations` violations and
-- never the value; a body for another environment than the URL's and a non-JSON body get 422 too;
-- none reaches the sim. Then a good body for dev (GUARD_OK = `value`) is forwarded byte for byte
-- (the sim's echo fault quotes it), and /admin/plan shows a step's changes without the canary.
-- Returns the good body, and the sim's PATCH count before the forwarded one.
function L.check_guard(sim, url, tok, bad, min_violations, canary, value)
    local patches = L.route_count(sim, L.PATCH_ROUTE)
    local r = T.request({ url = url }, "PATCH", T.vars(T.CRM, "prod"), { body = bad, token = tok })
    T.eq(r.status, 422, "bad body refused")
    T.ok(r.json and #r.json.violations >= min_violations, "every violation listed: " .. r.body)
    T.ok(not r.body:find(canary, 1, true), "the value is never echoed")
    local other_env = '{"actionId":"' .. T.CRM .. '","environmentId":"prod","variables":[]}'
    local m = T.request({ url = url }, "PATCH", T.vars(T.CRM, "dev"), { body = other_env, token = tok })
    T.eq(m.status, 422, "a body for another environment than the URL's is refused")
    T.ok(m.body:find("url_mismatch", 1, true), m.body)
    local nj = T.request({ url = url }, "PATCH", T.vars(T.CRM, "prod"), { body = "{not json", token = tok })
    T.eq(nj.status, 422, "not JSON refused")
    T.eq(L.route_count(sim, L.PATCH_ROUTE), patches, "the sim saw no PATCH")
    sim:fault({ method = "PATCH", kind = "echo" })
    local good = '{"actionId":"' .. T.CRM .. '","environmentId":"dev","variables":[{"name":"GUARD_OK","value":"'
        .. value .. '","masked":false}]}'
    local g = T.request({ url = url }, "PATCH", T.vars(T.CRM, "dev"), { body = good, token = tok })
    T.eq(g.status, 422, "the echo fault answered")
    T.ok(g.body:find(T.json.encode(good):sub(2, -2), 1, true) or g.body:find(good, 1, true),
        "forwarded unchanged: " .. g.body)
    -- the admin plan: what would change, masked values never shown
    local step = { action = T.CRM, tier = "production", baseline = "staging",
                   variables = { TIMEOUT_MS = "3000", NEW_KEY = { value = canary, masked = true } } }
    local pl = T.request({ url = url }, "POST", "/admin/plan", { body = step })
    T.eq(pl.status, 200, "plan answered: " .. pl.body)
    T.eq(pl.json.changes, 2, "one change and one addition")
    T.ok(not pl.body:find(canary, 1, true), "the masked value is not in the plan")
    return good, patches
end

return L
