-- sim:ratelimit: --rate-limit N/s is a per-client token bucket (burst N) answering 429 + Retry-After.
local T = require("t")

T.test("off by default", function()
    local s = T.start()
    local ok, e = pcall(function()
        local tok = T.token(s)
        local url = s.url .. T.vars(T.CRM, "dev")
        local codes = T.multi(url, 20, tok)
        T.eq(#codes, 20, "twenty answers")
        T.ok(not table.concat(codes, " "):find("429"), "no 429 without --rate-limit")
    end)
    s:stop()
    assert(ok, e)
end)

T.test("burst N then 429 with Retry-After >= 1; buckets are per client", function()
    local s = T.start({ args = { "--rate-limit", "3/s" } })
    local ok, e = pcall(function()
        local tok = T.token(s)
        local url = s.url .. T.vars(T.CRM, "dev")
        local ok200, n429 = 0, 0
        for _, code in ipairs(T.multi(url, 10, tok)) do
            if code == "200" then ok200 = ok200 + 1 elseif code == "429" then n429 = n429 + 1 end
        end
        T.ok(ok200 >= 3 and ok200 <= 5, "about a burst of 3 passes (" .. ok200 .. ")")
        T.ok(n429 >= 5, "the rest are limited (" .. n429 .. ")")
        local r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
        if r.status == 429 then
            T.eq(r.json.error, "rate_limited", "error")
            local ra = tonumber(r.headers["retry-after"])
            T.ok(ra and ra >= 1 and ra % 1 == 0, "Retry-After whole seconds >= 1")
        end
        -- Another client has its own bucket.
        local ro = T.token(s, T.DEMO.readonly_id, T.DEMO.readonly_secret)
        T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = ro }).status, 200, "other client unaffected")
        T.ok((s:stats().routes["GET /api/v2/integration/actions/{actionId}/environments/{envId}/variables"]["429"] or 0) >= 5,
            "429s counted")
    end)
    s:stop()
    assert(ok, e)
end)

T.test("bad --rate-limit exits 2", function()
    local _, code = T.sh(T.shq(os.getenv("CXONE_SIM_BIN")) .. " --listen 127.0.0.1:0 --rate-limit fast 2>/dev/null")
    T.eq(code, 2, "exit 2")
end)

T.run()
