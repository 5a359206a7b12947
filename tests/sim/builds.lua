-- sim:builds: POST .../build answers 202 queued; an Idempotency-Key makes repeats return the same build.
local T = require("t")

local function build(s, tok, action, key)
    return T.request(s, "POST", "/api/v2/integration/actions/" .. action .. "/build",
        { token = tok, headers = key and { "Idempotency-Key: " .. key } or nil })
end

T.test("without a key every POST queues a new build", function(s)
    local tok = T.token(s)
    local a, b = build(s, tok, T.CRM), build(s, tok, T.CRM)
    T.eq(a.status, 202, "status")
    T.eq(a.json.status, "queued", "queued")
    T.eq(a.json.actionId, T.CRM, "actionId")
    T.ok(a.json.buildId:match("^%x+%-%x+%-4%x+%-%x+%-%x+$"), "uuid buildId")
    T.ok(a.json.buildId ~= b.json.buildId, "two builds")
    T.eq(s:stats().builds_queued, 2, "builds_queued")
end)

T.test("the same Idempotency-Key returns the same buildId without queuing again", function(s)
    local tok = T.token(s)
    local a = build(s, tok, T.PAY, "deploy-42")
    local b = build(s, tok, T.PAY, "deploy-42")
    T.eq(b.status, 202, "repeat is 202")
    T.eq(b.json.buildId, a.json.buildId, "same build")
    local c = build(s, tok, T.TKT, "deploy-42")
    T.ok(c.json.buildId ~= a.json.buildId, "key is per action")
    local d = build(s, tok, T.PAY, "deploy-43")
    T.ok(d.json.buildId ~= a.json.buildId, "another key, another build")
    T.eq(s:stats().builds_queued, 3, "three queued")
    T.eq(s:stats().routes["POST /api/v2/integration/actions/{actionId}/build"]["202"], 4, "four answers")
end)

T.test("unknown action 404, no token 401", function(s)
    local tok = T.token(s)
    T.eq(build(s, tok, "nope").status, 404, "unknown action")
    T.eq(build(s, nil, T.CRM).status, 401, "no token")
    T.eq(s:stats().builds_queued, 0, "nothing queued")
end)

T.run(function() return T.start() end)
