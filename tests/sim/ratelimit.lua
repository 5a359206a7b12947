-- sim:ratelimit: --rate-limit N/s is a per-client token bucket (burst N) answering 429 + Retry-After,
-- with X-RateLimit-* and RateLimit/RateLimit-Policy headers in the style --rate-limit-headers and
-- --rate-limit-reset (or /_sim/config) pick, and 429s and requests counted by kind in /_sim/stats.
local T = require("t")

local RL_HEADERS = { "x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset", "ratelimit-policy",
                     "ratelimit" }

--- answers(url, n, token [, method]) -> list of { status, headers (lowercased) } of n requests made
-- by ONE curl over one keep-alive connection, in order (so they reach the sim back to back).
local function answers(url, n, token, method)
    local parts = { "curl -s -D -" }
    if method then parts[#parts + 1] = "-X " .. method .. " -H 'Content-Type: application/json' -d '{\"variables\":[]}'" end
    parts[#parts + 1] = "-H " .. T.shq("Authorization: Bearer " .. token)
    for _ = 1, n do parts[#parts + 1] = T.shq(url) .. " -o /dev/null" end
    local list, cur = {}, nil
    for line in T.sh(table.concat(parts, " ")):gmatch("[^\r\n]+") do
        local st = line:match("^HTTP/%S+ (%d+)")
        if st then
            cur = { status = tonumber(st), headers = {} }
            list[#list + 1] = cur
        elseif cur then
            local k, v = line:match("^([^:]+):%s*(.-)%s*$")
            if k then cur.headers[k:lower()] = v end
        end
    end
    return list
end

local function int(h, name)
    local v = h[name]
    T.ok(v and v:match("^%d+$"), name .. " is a whole number (" .. tostring(v) .. ")")
    return tonumber(v)
end

-- Checks the five rate-limit headers of one answer against each other; returns remaining, reset.
local function check_headers(h, limit, window, what)
    T.eq(int(h, "x-ratelimit-limit"), limit, what .. ": X-RateLimit-Limit")
    local remaining, reset = int(h, "x-ratelimit-remaining"), int(h, "x-ratelimit-reset")
    T.ok(remaining <= limit, what .. ": Remaining <= Limit")
    T.ok(reset <= window, what .. ": Reset <= the time a full bucket takes (" .. reset .. ")")
    T.eq(h["ratelimit-policy"], ('"default";q=%d;w=%d'):format(limit, window), what .. ": RateLimit-Policy")
    T.eq(h["ratelimit"], ('"default";r=%d;t=%d'):format(remaining, reset), what .. ": RateLimit agrees with X-*")
    return remaining, reset
end

local function no_headers(h, what)
    for _, name in ipairs(RL_HEADERS) do T.eq(h[name], nil, what .. ": no " .. name) end
end

local function with_sim(args, fn)
    local s = T.start({ args = args })
    local ok, e = xpcall(fn, debug.traceback, s)
    s:stop()
    assert(ok, e)
end

T.test("off by default: no 429, no rate-limit headers", function()
    with_sim(nil, function(s)
        local tok = T.token(s)
        local list = answers(s.url .. T.vars(T.CRM, "dev"), 20, tok)
        T.eq(#list, 20, "twenty answers")
        for i, a in ipairs(list) do
            T.eq(a.status, 200, "answer " .. i)
            no_headers(a.headers, "answer " .. i)
        end
        T.eq(s:stats().rate_limited, 0, "nothing limited")
    end)
end)

T.test("burst N, Remaining counts down to 0, then 429 with Retry-After; headers on every answer", function()
    -- 4/s: a whole token takes 250 ms to come back, far longer than 8 keep-alive requests take.
    with_sim({ "--rate-limit", "4/s" }, function(s)
        local tok = T.token(s)
        local list = answers(s.url .. T.vars(T.CRM, "dev"), 8, tok)
        T.eq(#list, 8, "eight answers")
        local statuses, remaining = {}, {}
        for i, a in ipairs(list) do
            statuses[i] = a.status
            local r, reset = check_headers(a.headers, 4, 1, "answer " .. i)
            remaining[i] = r
            T.eq(reset, 1, "answer " .. i .. ": the bucket is not full, it is full again within 1 s")
            if a.status == 429 then
                T.eq(a.headers["retry-after"], "1", "answer " .. i .. ": Retry-After")
                T.ok(reset >= tonumber(a.headers["retry-after"]), "Reset is never before Retry-After")
            else
                T.eq(a.headers["retry-after"], nil, "answer " .. i .. ": no Retry-After on a 200")
            end
        end
        T.eq(table.concat(statuses, " "), "200 200 200 200 429 429 429 429", "a burst of 4, then limited")
        T.eq(table.concat(remaining, " "), "3 2 1 0 0 0 0 0", "Remaining after each answer")
        local r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
        T.eq(r.status, 429, "still limited")
        T.eq(r.json.error, "rate_limited", "error code")
        -- Another client has its own (full) bucket.
        local ro = T.token(s, T.DEMO.readonly_id, T.DEMO.readonly_secret)
        local other = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = ro })
        T.eq(other.status, 200, "other client unaffected")
        T.eq(check_headers(other.headers, 4, 1, "other client"), 3, "other client's own Remaining")
    end)
end)

T.test("headers on 4xx and 202 answers of a known client; none on 401, on the token route, on faults", function()
    with_sim({ "--rate-limit", "50/s" }, function(s)
        local tok = T.token(s)
        -- each of these spends a token: Remaining is below the limit whatever came back meanwhile
        local nf = T.request(s, "GET", T.vars("no-such-action", "dev"), { token = tok })
        T.eq(nf.status, 404, "unknown action")
        T.ok(check_headers(nf.headers, 50, 1, "404") <= 49, "a 404 after the token check spends a token")
        local bad = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = "not json" })
        T.eq(bad.status, 400, "bad body")
        T.ok(check_headers(bad.headers, 50, 1, "400") <= 49, "400: Remaining")
        local build = T.request(s, "POST", "/api/v2/integration/actions/" .. T.CRM .. "/build", { token = tok })
        T.eq(build.status, 202, "build")
        T.ok(check_headers(build.headers, 50, 1, "202") <= 49, "202: Remaining")
        local anon = T.request(s, "GET", T.vars(T.CRM, "dev"))
        T.eq(anon.status, 401, "no token")
        no_headers(anon.headers, "401 (no client, no bucket)")
        local t = T.request(s, "POST", "/oauth/token", { form = "grant_type=client_credentials&client_id="
            .. T.DEMO.client_id .. "&client_secret=" .. T.DEMO.client_secret })
        T.eq(t.status, 200, "token")
        no_headers(t.headers, "token route")
        s:fault({ kind = "status", status = 503, path = T.vars(T.CRM, "dev") })
        local f = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
        T.eq(f.status, 503, "fault")
        no_headers(f.headers, "a fault's answer")
        -- a delayed answer still carries them
        s:fault({ kind = "delay", delay_ms = 20, path = T.vars(T.CRM, "dev") })
        local d = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
        T.eq(d.status, 200, "delayed")
        T.ok(check_headers(d.headers, 50, 1, "delayed 200") <= 49, "delayed 200: Remaining")
    end)
end)

T.test("a 403 shows the bucket without spending a token (a full bucket: Reset 0)", function()
    -- 0.5/s: a burst of 1, a token every 2 s; a full bucket stays full however long this takes
    with_sim({ "--rate-limit", "0.5/s" }, function(s)
        local ro = T.token(s, T.DEMO.readonly_id, T.DEMO.readonly_secret)
        for i = 1, 2 do
            local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = ro, body = { variables = {} } })
            T.eq(r.status, 403, "read-only client " .. i)
            T.eq(check_headers(r.headers, 1, 2, "403 " .. i), 1, "403 " .. i .. ": the token is still there")
            T.eq(int(r.headers, "x-ratelimit-reset"), 0, "403 " .. i .. ": full bucket, Reset 0")
        end
        local r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = ro })
        T.eq(r.status, 200, "the token the 403s left")
        T.eq(check_headers(r.headers, 1, 2, "200"), 0, "now spent")
    end)
end)

T.test("a slow rate: Reset and Retry-After count the seconds a token takes", function()
    -- 0.5/s: a burst of 1, a token every 2 s
    with_sim({ "--rate-limit", "0.5/s" }, function(s)
        local tok = T.token(s)
        local list = answers(s.url .. T.vars(T.CRM, "dev"), 3, tok)
        T.eq(list[1].status, 200, "the one token")
        T.eq(check_headers(list[1].headers, 1, 2, "200"), 0, "Remaining")
        T.eq(int(list[1].headers, "x-ratelimit-reset"), 2, "empty bucket: full again in 2 s")
        for i = 2, 3 do
            T.eq(list[i].status, 429, "answer " .. i)
            T.eq(check_headers(list[i].headers, 1, 2, "429"), 0, "Remaining")
            T.eq(int(list[i].headers, "x-ratelimit-reset"), 2, "Reset")
            T.eq(list[i].headers["retry-after"], "2", "Retry-After")
        end
    end)
end)

T.test("--rate-limit-reset epoch: X-RateLimit-Reset is a unix time; RateLimit's t stays a delta", function()
    with_sim({ "--rate-limit", "0.5/s", "--rate-limit-reset", "epoch" }, function(s)
        local tok = T.token(s)
        local before = os.time()
        local r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
        local after = os.time()
        T.eq(r.status, 200, "status")
        local reset = int(r.headers, "x-ratelimit-reset")
        T.ok(reset > before and reset <= after + 3,
            ("epoch reset %d within (%d, %d]"):format(reset, before, after + 3))
        T.eq(r.headers["ratelimit"], '"default";r=0;t=2', "IETF field keeps delta seconds")
        T.eq(s:get_json("/_sim/config").rate_limit_reset, "epoch", "config shows it")
    end)
end)

T.test("--rate-limit-headers 429: the headers only on 429s; none: only Retry-After", function()
    with_sim({ "--rate-limit", "2/s", "--rate-limit-headers", "429" }, function(s)
        local tok = T.token(s)
        local list = answers(s.url .. T.vars(T.CRM, "dev"), 4, tok)
        T.eq(list[1].status .. " " .. list[2].status .. " " .. list[3].status, "200 200 429", "burst of 2")
        no_headers(list[1].headers, "200")
        no_headers(list[2].headers, "200")
        T.eq(check_headers(list[3].headers, 2, 1, "429"), 0, "Remaining on the 429")
        T.eq(list[3].headers["retry-after"], "1", "Retry-After")
    end)
    with_sim({ "--rate-limit", "2/s", "--rate-limit-headers", "none" }, function(s)
        local tok = T.token(s)
        local list = answers(s.url .. T.vars(T.CRM, "dev"), 4, tok)
        T.eq(list[3].status, 429, "limited")
        for i, a in ipairs(list) do no_headers(a.headers, "answer " .. i) end
        T.eq(list[3].headers["retry-after"], "1", "Retry-After only")
        T.eq(list[1].headers["retry-after"], nil, "no Retry-After on a 200")
    end)
end)

T.test("/_sim/config switches the limit and the header style at run time; reset restores the flags", function()
    with_sim({ "--rate-limit-headers", "429" }, function(s)
        local tok = T.token(s)
        local cfg = s:get_json("/_sim/config")
        T.eq(cfg.rate_limit, 0, "off at start")
        T.eq(cfg.rate_limit_headers, "429", "from the flag")
        T.eq(cfg.rate_limit_reset, "delta", "default")
        T.eq(#answers(s.url .. T.vars(T.CRM, "dev"), 5, tok), 5, "five answers")
        local st, doc = s:post_json("/_sim/config", { rate_limit = 3, rate_limit_headers = "all" })
        T.eq(st, 200, "set")
        T.eq(doc.rate_limit, 3, "rate_limit echoed")
        T.eq(doc.rate_limit_headers, "all", "rate_limit_headers echoed")
        local list = answers(s.url .. T.vars(T.CRM, "dev"), 4, tok)
        T.eq(list[4].status, 429, "now limited at 3/s")
        T.eq(check_headers(list[1].headers, 3, 1, "first"), 2, "a fresh bucket after the change")
        T.eq(select(1, s:post_json("/_sim/config", { rate_limit = 3 })), 200, "set again")
        local again = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
        T.eq(again.status, 200, "setting the rate starts every bucket afresh (full)")
        T.eq(check_headers(again.headers, 3, 1, "after setting again"), 2, "full bucket minus one")
        for _, bad in ipairs({ { rate_limit_headers = "some" }, { rate_limit_reset = "later" },
                               { rate_limit = -1 }, { rate_limit = "20/s" }, { etag = "no" }, { burst = 3 } }) do
            local code = s:post_json("/_sim/config", bad)
            T.eq(code, 422, "refused: " .. T.json.encode(bad))
        end
        T.eq(s:get_json("/_sim/config").rate_limit, 3, "a refused change leaves the settings")
        T.eq(select(1, s:post_json("/_sim/config", { rate_limit = 0 })), 200, "off again")
        local free = answers(s.url .. T.vars(T.CRM, "dev"), 6, tok)
        for i, a in ipairs(free) do
            T.eq(a.status, 200, "unlimited " .. i)
            no_headers(a.headers, "unlimited " .. i)
        end
        T.eq(select(1, s:post_json("/_sim/config", { rate_limit = 1, rate_limit_reset = "epoch" })), 200, "set")
        T.eq(s:curl("POST", "/_sim/reset"), 200, "reset")
        cfg = s:get_json("/_sim/config")
        T.eq(cfg.rate_limit, 0, "reset: the flag's rate")
        T.eq(cfg.rate_limit_headers, "429", "reset: the flag's header style")
        T.eq(cfg.rate_limit_reset, "delta", "reset: the flag's reset style")
    end)
end)

T.test("stats count 429s and requests by kind (read, write, build, token)", function()
    with_sim({ "--rate-limit", "3/s" }, function(s)
        local tok = T.token(s)
        local s0 = s:stats()
        local reads = answers(s.url .. T.vars(T.CRM, "dev"), 5, tok)
        local writes = answers(s.url .. T.vars(T.CRM, "dev"), 3, tok, "PATCH")
        local puts = answers(s.url .. T.vars(T.PAY, "dev"), 2, tok, "PUT")
        T.eq(#reads + #writes + #puts, 10, "ten answers")
        local n429 = { read = 0, write = 0 }
        for _, a in ipairs(reads) do if a.status == 429 then n429.read = n429.read + 1 end end
        for _, list in ipairs({ writes, puts }) do
            for _, a in ipairs(list) do if a.status == 429 then n429.write = n429.write + 1 end end
        end
        T.eq(n429.read, 2, "5 reads against a burst of 3")
        T.request(s, "POST", "/api/v2/integration/actions/" .. T.CRM .. "/build", { token = tok })
        local s1 = s:stats()
        local function d(kind, field) return s1.kinds[kind][field] - s0.kinds[kind][field] end
        T.eq(d("read", "requests"), 5, "reads")
        T.eq(d("write", "requests"), 5, "writes (PATCH and PUT)")
        T.eq(d("build", "requests"), 1, "builds")
        T.eq(d("token", "requests"), 0, "no token request in between")
        T.eq(s1.kinds.token.requests, 1, "the one token request")
        T.eq(d("read", "rate_limited"), n429.read, "read 429s")
        T.eq(d("write", "rate_limited"), n429.write, "write 429s")
        local total = 0
        for _, codes in pairs(s1.routes) do total = total + (codes["429"] or 0) end
        T.eq(s1.rate_limited, total, "rate_limited is every 429 the routes counted")
        T.ok(s1.rate_limited - s0.rate_limited >= n429.read + n429.write, "rate_limited grew")
        local sum = 0
        for _, k in pairs(s1.kinds) do sum = sum + k.requests end
        T.eq(sum, s1.requests, "the kinds add up to requests")
    end)
end)

T.test("bad --rate-limit, --rate-limit-headers or --rate-limit-reset exits 2", function()
    local bin = T.shq(os.getenv("CXONE_SIM_BIN")) .. " --listen 127.0.0.1:0 "
    for _, args in ipairs({ "--rate-limit fast", "--rate-limit-headers sometimes", "--rate-limit-reset later",
                            "--rate-limit-headers" }) do
        local _, code = T.sh(bin .. args .. " 2>/dev/null </dev/null")
        T.eq(code, 2, args .. ": exit 2")
    end
end)

T.run()
