-- sim:log: one stderr line per request (method, path, status, ms) that never holds a token, a
-- secret, a query string or a masked value; --quiet silences it.
local T = require("t")

T.test("the log has method, path, status and time, and no secrets (canary)", function()
    local dir = T.tmpdir()
    local log = dir .. "/stderr.log"
    local s = T.start({ stderr = log })
    local CANARY = "canary-masked-value-5f2d9e"
    local tok = T.token(s)
    T.request(s, "POST", "/oauth/token", { basic = T.DEMO.client_id .. ":" .. T.DEMO.client_secret,
        form = "grant_type=password&username=" .. T.DEMO.access_key_id .. "&password=" .. T.DEMO.access_key_secret })
    T.eq(T.request(s, "PATCH", T.vars(T.CRM, "prod"), { token = tok, body = { variables = {
        { name = "CANARY", value = CANARY, masked = true } } } }).status, 200, "PATCH")
    T.request(s, "PATCH", T.vars(T.CRM, "prod"), { token = tok, body = { variables = {
        { name = "CANARY", value = CANARY } } } })
    T.request(s, "GET", T.vars(T.CRM, "prod") .. "?client_secret=query-secret-77", { token = tok })
    T.request(s, "POST", "/_sim/webhooks/x", { body = { v = CANARY } })
    -- A hang released by the client's timeout is logged once the client leaves.
    s:fault({ method = "GET", kind = "hang" })
    T.request(s, "GET", T.vars(T.TKT, "dev"), { token = tok, max_time = 1 })
    local text
    for _ = 1, 300 do
        text = T.read(log) or ""
        if text:find("GET /api/v2/integration/actions/" .. T.TKT .. "/environments/dev/variables hang", 1, true) then break end
        os.execute("sleep 0.01")
    end
    s:stop()
    text = T.read(log) or ""
    local line = text:match("PATCH /api/v2/integration/actions/[^\n]*")
    T.ok(line, "PATCH line")
    T.ok(line:find(T.CRM, 1, true) and line:match(" 200 [%d.]+ms$"), "PATCH line: path, status, time: " .. line)
    T.ok(text:find("POST /oauth/token 200", 1, true), "token line")
    T.ok(text:find("variables 422", 1, true), "422 line")
    T.ok(text:find("/environments/dev/variables hang", 1, true), "released hang logged")
    for _, secret in ipairs({ tok, "sim_", CANARY, T.DEMO.client_secret, T.DEMO.access_key_secret,
                              "query-secret-77", "client_secret", "prd-crm-key-9c1f6a55" }) do
        T.ok(not text:find(secret, 1, true), "log does not contain " .. secret:sub(1, 6) .. "...")
    end
    os.execute("rm -rf " .. dir)
end)

T.test("--quiet writes nothing per request", function()
    local dir = T.tmpdir()
    local log = dir .. "/stderr.log"
    local s = T.start({ stderr = log, args = { "--quiet" } })
    T.token(s)
    s:stop()
    T.eq(T.read(log), "", "empty stderr")
    os.execute("rm -rf " .. dir)
end)

T.test("--help exits 0 and lists the flags", function()
    local out, code = T.sh(T.shq(os.getenv("CXONE_SIM_BIN")) .. " --help")
    T.eq(code, 0, "exit 0")
    for _, f in ipairs({ "--listen", "--state", "--scenario", "--token-ttl", "--rate-limit", "--rate-limit-headers",
                         "--rate-limit-reset", "--tls-cert", "--quiet" }) do
        T.ok(out:find(f, 1, true), f)
    end
end)

T.run()
