-- sim:faults: every fault kind, matching by method and path with *, counts, order, the scenario
-- file, /_sim/faults listing and clearing, and that delays and hangs never stall other clients.
local T = require("t")

local PROD_ANY = "/api/v2/integration/actions/*/environments/prod/variables"
local BODY = { variables = { { name = "FAULTED", value = "v", masked = false } } }

local function now_ms()
    return tonumber((T.sh("date +%s%3N"):gsub("%s", "")))
end

T.test("status fault: answer S (with Retry-After) and touch nothing; count and order", function(s)
    local tok = T.token(s)
    s:fault({ faults = { { method = "PATCH", path = PROD_ANY, kind = "status", status = 503, retry_after = 2, count = 2 },
                         { method = "PATCH", path = PROD_ANY, kind = "status", status = 500 } } })
    local listed = s:get_json("/_sim/faults").faults
    T.eq(#listed, 2, "two armed")
    T.eq(listed[1].count, 2, "count")
    local dev = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = BODY })
    T.eq(dev.status, 200, "dev path does not match")
    local r1 = T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = BODY })
    T.eq(r1.status, 503, "first")
    T.eq(r1.headers["retry-after"], "2", "Retry-After")
    T.ok(r1.json and r1.json.error, "JSON error body")
    T.eq(T.request(s, "GET", T.vars(T.PAY, "prod"), { token = tok }).status, 200, "GET not matched (method)")
    T.eq(T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = BODY }).status, 503, "second of count 2")
    T.eq(T.request(s, "PATCH", T.vars(T.CRM, "prod"), { token = tok, body = BODY }).status, 500, "then the next fault")
    T.eq(#s:get_json("/_sim/faults").faults, 0, "all consumed")
    local g = T.request(s, "GET", T.vars(T.PAY, "prod"), { token = tok })
    T.eq(T.var(g.json, "FAULTED"), nil, "no state change")
    T.eq(T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = BODY }).status, 200, "normal again")
end)

T.test("faults never apply to /_sim; DELETE clears; bad faults are refused", function(s)
    s:fault({ kind = "status", status = 500, count = 5 })
    T.eq(T.request(s, "GET", "/_sim/stats").status, 200, "/_sim unaffected")
    T.eq(T.request(s, "DELETE", "/_sim/faults").status, 200, "cleared")
    T.eq(#s:get_json("/_sim/faults").faults, 0, "none left")
    T.eq(T.request(s, "POST", "/_sim/faults", { body = { kind = "explode" } }).status, 422, "unknown kind")
    T.eq(T.request(s, "POST", "/_sim/faults", { body = { kind = "status" } }).status, 422, "status without status")
    T.eq(T.request(s, "POST", "/_sim/faults", { body = "nope" }).status, 400, "not JSON")
    T.eq(T.request(s, "POST", "/oauth/token", { form = "grant_type=client_credentials&client_id="
        .. T.DEMO.client_id .. "&client_secret=" .. T.DEMO.client_secret }).status, 200, "nothing armed")
end)

T.test("reset drops the connection; truncate cuts the body; not_json; no state change", function(s)
    local tok = T.token(s)
    s:fault({ method = "PATCH", kind = "reset" })
    local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = BODY })
    T.eq(r.exit, 52, "curl: empty reply (connection dropped)")
    s:fault({ method = "GET", kind = "truncate" })
    r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
    T.eq(r.exit, 18, "curl: partial body")
    T.eq(r.json, nil, "cut-short body does not parse")
    s:fault({ method = "PATCH", kind = "not_json" })
    r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = BODY })
    T.eq(r.status, 200, "200")
    T.eq(r.json, nil, "body is not JSON")
    T.ok(#r.body > 0, "some body")
    T.eq(T.var(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).json, "FAULTED"), nil, "nothing written")
end)

T.test("delay answers normally later without stalling others", function(s)
    local tok = T.token(s)
    s:fault({ method = "PATCH", kind = "delay", delay_ms = 1500 })
    local out = os.tmpname()
    local bodyf = os.tmpname()
    T.write(bodyf, T.json.encode(BODY))
    local t0 = now_ms()
    os.execute("curl -s -o /dev/null -w '%{http_code} %{time_total}' -X PATCH -H 'Authorization: Bearer " .. tok
        .. "' --data-binary @" .. bodyf .. " " .. s.url .. T.vars(T.CRM, "dev") .. " > " .. out .. " &")
    -- While the PATCH waits, other requests are served at once.
    local g = T.request(s, "GET", "/_sim/faults")
    T.eq(g.status, 200, "served during the delay")
    local fast = T.request(s, "GET", T.vars(T.TKT, "dev"), { token = tok })
    T.eq(fast.status, 200, "API served during the delay")
    T.ok(now_ms() - t0 < 1200, "others were not stalled by the delayed request")
    local res
    repeat res = T.read(out) until (res and #res > 0) or now_ms() - t0 > 8000
    local code, secs = res:match("^(%d+) ([%d.]+)")
    T.eq(code, "200", "delayed PATCH answered normally")
    T.ok(tonumber(secs) >= 1.4, "after the delay (" .. secs .. " s)")
    T.ok(T.var(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).json, "FAULTED"), "and applied")
    os.remove(out)
    os.remove(bodyf)
    -- A delay given with another kind delays that kind.
    s:fault({ method = "GET", kind = "status", status = 502, delay_ms = 300 })
    local t1 = now_ms()
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status, 502, "delayed status")
    T.ok(now_ms() - t1 >= 290, "was delayed")
end)

T.test("hang never answers, others are served, client timeout releases it", function(s)
    local tok = T.token(s)
    s:fault({ method = "GET", path = "/api/v2/integration/actions/*/environments/*/variables", kind = "hang" })
    local out = os.tmpname()
    os.execute("curl -s -o /dev/null --max-time 2 -H 'Authorization: Bearer " .. tok .. "' "
        .. s.url .. T.vars(T.CRM, "dev") .. "; echo $? > " .. out .. " &")
    local t0 = now_ms()
    -- Wait until the hung request has consumed the fault, then show the server still answers.
    repeat until #s:get_json("/_sim/faults").faults == 0 or now_ms() - t0 > 3000
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status, 200, "served while one hangs")
    local res
    repeat res = T.read(out) until (res and #res > 0) or now_ms() - t0 > 8000
    T.eq(res:gsub("%s", ""), "28", "the hung request timed out on the client side")
    os.remove(out)
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status, 200, "still serving")
end)

T.test("scenario file arms faults at start; a bad one exits 2", function()
    local dir = T.tmpdir()
    T.write(dir .. "/sc.json", T.json.encode({ faults = {
        { method = "POST", path = "/oauth/token", kind = "status", status = 429, retry_after = 3 } } }))
    local s = T.start({ args = { "--scenario", dir .. "/sc.json" } })
    local ok, e = pcall(function()
        local r = T.request(s, "POST", "/oauth/token", { form = "grant_type=client_credentials&client_id="
            .. T.DEMO.client_id .. "&client_secret=" .. T.DEMO.client_secret })
        T.eq(r.status, 429, "scenario fault")
        T.eq(r.headers["retry-after"], "3", "Retry-After")
        T.token(s)
    end)
    s:stop()
    assert(ok, e)
    T.write(dir .. "/bad.json", '{"faults":[{"kind":"nope"}]}')
    local _, code = T.sh(T.shq(os.getenv("CXONE_SIM_BIN")) .. " --quiet --listen 127.0.0.1:0 --scenario "
        .. dir .. "/bad.json 2>/dev/null")
    T.eq(code, 2, "bad scenario exits 2")
    os.execute("rm -rf " .. dir)
end)

T.run(function() return T.start() end)
