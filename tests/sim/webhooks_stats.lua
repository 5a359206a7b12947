-- sim:webhooks_stats: the webhook sink and /_sim/stats (requests, connections over keep-alive, routes).
local T = require("t")

T.test("webhook sink stores JSON and raw bodies with lowercased headers", function(s)
    local r = T.request(s, "POST", "/_sim/webhooks/ci", { body = { pipeline = "deploy", ok = true },
        headers = { "X-Signature: sha256=abc" } })
    T.ok(r.status == 204 or r.status == 200, "stored")
    r = T.request(s, "POST", "/_sim/webhooks/ci", { form = "plain text, not json" })
    local ev = s:get_json("/_sim/webhooks/ci").events
    T.eq(#ev, 2, "two events")
    T.eq(ev[1].body.pipeline, "deploy", "JSON body decoded")
    T.eq(ev[1].body.ok, true, "JSON body decoded")
    T.eq(ev[1].headers["x-signature"], "sha256=abc", "header, lowercased name")
    T.eq(ev[1].headers["content-type"], "application/json", "content-type")
    T.ok(ev[1].received_at:match("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%dZ$"), "RFC 3339 time")
    T.eq(ev[2].body, "plain text, not json", "raw body kept as a string")
    local other = T.request(s, "GET", "/_sim/webhooks/other")
    T.eq(other.status, 200, "unknown hook")
    T.ok(other.body:find('"events":[]', 1, true), "empty list")
    T.eq(T.request(s, "DELETE", "/_sim/webhooks/ci").status, 204, "cleared")
    T.eq(#s:get_json("/_sim/webhooks/ci").events, 0, "empty after DELETE")
end)

T.test("stats: exact shape, counts per route template and status", function(s)
    local tok = T.token(s)
    T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
    T.request(s, "GET", T.vars(T.PAY, "prod"), { token = tok })
    T.request(s, "GET", T.vars(T.PAY, "prod"))
    T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = { variables = {} } })
    T.request(s, "POST", "/api/v2/integration/actions/" .. T.CRM .. "/build", { token = tok })
    T.request(s, "GET", "/nowhere")
    local st = s:stats()
    local keys = {}
    for k in pairs(st) do keys[#keys + 1] = k end
    table.sort(keys)
    T.eq(table.concat(keys, ","), "builds_queued,connections,kinds,rate_limited,requests,routes,tokens_issued",
        "exact keys")
    T.eq(st.requests, 7, "API requests (control routes not counted)")
    T.eq(st.tokens_issued, 1, "tokens_issued")
    T.eq(st.builds_queued, 1, "builds_queued")
    local V = "/api/v2/integration/actions/{actionId}/environments/{envId}/variables"
    T.eq(st.routes["GET " .. V]["200"], 2, "GET 200")
    T.eq(st.routes["GET " .. V]["401"], 1, "GET 401")
    T.eq(st.routes["PATCH " .. V]["200"], 1, "PATCH 200")
    T.eq(st.routes["POST /oauth/token"]["200"], 1, "token")
    T.eq(st.routes["POST /api/v2/integration/actions/{actionId}/build"]["202"], 1, "build")
    -- requests by kind (401s and 404s included): they add up to `requests`
    T.eq(st.kinds.read.requests, 3, "reads")
    T.eq(st.kinds.write.requests, 1, "writes")
    T.eq(st.kinds.build.requests, 1, "builds")
    T.eq(st.kinds.token.requests, 1, "token requests")
    T.eq(st.kinds.other.requests, 1, "unknown paths")
    T.eq(st.rate_limited, 0, "no 429 without a rate limit")
    for k, v in pairs(st.kinds) do T.eq(v.rate_limited, 0, k .. ": no 429") end
end)

T.test("connections: one keep-alive curl with five URLs is one connection", function(s)
    local tok = T.token(s)
    local before = s:stats()
    local url = s.url .. T.vars(T.CRM, "dev")
    T.eq(table.concat(T.multi(url, 5, tok), " "), "200 200 200 200 200", "five answers")
    local after = s:stats()
    T.eq(after.requests - before.requests, 5, "five requests")
    -- +1 for the keep-alive curl, +1 for the stats request itself.
    T.eq(after.connections - before.connections, 2, "one connection for five requests")
    T.sh("for i in 1 2 3; do curl -s -o /dev/null " .. s.url .. "/_sim/faults; done")
    T.eq(s:stats().connections - after.connections, 4, "three separate curls, three connections")
end)

T.run(function() return T.start() end)
