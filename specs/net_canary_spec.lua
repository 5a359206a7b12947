-- Canary test: a child Lua process runs the client scenarios with CXONE_DEBUG=1 and a
-- distinctive client secret, access-key secret, webhook key and masked values; its stdout,
-- stderr (the debug trace) and the webhook bodies the sim received must contain none of them,
-- nor any bearer token.
local simlib = require "support.sim"
local json = require("cjson.safe").new()
local sh = simlib.shquote
local D = simlib.DEMO

local function rand_hex(n)
    local f = assert(io.open("/dev/urandom", "rb"))
    local b = f:read(n)
    f:close()
    return (b:gsub(".", function(c) return string.format("%02x", c:byte()) end))
end

local function read(path)
    local f = assert(io.open(path, "rb"))
    local s = f:read("*a")
    f:close()
    return s
end

local CHILD = [==[
local core = require "cxone.core"
local unpack = table.unpack or unpack
local url, id, secret, key_id, key_secret, hook_key, masked1, masked2, action = unpack(arg, 1, 9)
local function say(...) io.stdout:write(table.concat({ ... }, " "), "\n") end
local function show(label, a, b, c)
    say(label, tostring(a), tostring(b), tostring(c))
end
local function sim_fault(spec)
    local body = core.json_encode(spec)
    local p = io.popen("curl -s -o /dev/null -X POST -H 'Content-Type: application/json' --data-binary @- "
        .. "'" .. url .. "/_sim/faults'", "w")
    p:write(body)
    p:close()
end
local VARS = "/api/v2/integration/actions/*/environments/*/variables"

-- body credentials, Basic credentials, and the access-key grant
for _, extra in ipairs{ {}, { basic_auth = true }, { access_key_id = key_id, access_key_secret = key_secret } } do
    local opts = { base_url = url, client_id = id, client_secret = secret, backoff_base = 0.01 }
    for k, v in pairs(extra) do opts[k] = v end
    local c = assert(core.client(opts))
    show("auth", c:authenticate())
    say("tostring", tostring(c))
    c:close()
end

local c = assert(core.client{ base_url = url, client_id = id, client_secret = secret, backoff_base = 0.01 })
local payload = { actionId = action, environmentId = "staging", variables = {
    { name = "CANARY_ONE", value = masked1, masked = true },
    { name = "CANARY_TWO", value = masked2, masked = true },
    { name = "PLAIN", value = "visible-value", masked = false } } }
local r, err, meta = c:patch(payload)
say("patch", r and #r.variables or "nil", meta.status, tostring(meta.etag))
if r then for _, v in ipairs(r.variables) do say("var", v.name, tostring(v.value)) end end
local g, _, gm = c:get(action, "staging")
say("get", g and #g.variables or "nil", gm.status)
show("put-stale", c:put(payload, { if_match = '"stale-etag"' }))
-- a server-side validation failure on a payload carrying the masked values
local bad = { actionId = action, environmentId = "staging", variables = {
    { name = "bad name " .. masked1, value = masked1, masked = true } } }
show("invalid", c:patch(bad))
-- retries, a revoked token, a truncated answer, a non-JSON answer
sim_fault{ method = "PATCH", path = VARS, kind = "status", status = 503, count = 1 }
sim_fault{ method = "PATCH", path = VARS, kind = "status", status = 429, retry_after = 0, count = 1 }
show("patch-retried", c:patch(payload))
sim_fault{ method = "GET", path = VARS, kind = "expire_tokens", count = 1 }
show("get-revoked", c:get(action, "staging"))
sim_fault{ method = "PATCH", path = VARS, kind = "truncate", count = 1 }
show("patch-truncated", c:patch(payload))
sim_fault{ method = "GET", path = VARS, kind = "not_json", count = 1 }
show("get-notjson", c:get(action, "staging"))
show("build", c:build(action))
local res = c:batch({ { op = "patch", payload = payload }, { op = "get", action = action, env = "dev" },
                      { op = "patch", payload = bad } })
for i, e in ipairs(res) do say("batch", i, tostring(e.ok), tostring(e.error), tostring(e.code)) end
-- webhooks: signed with a secret key, to the sim and to a URL whose query carries a token
show("webhook", c:webhook(url .. "/_sim/webhooks/canary?token=" .. hook_key,
                          { event = "applied", action = action, changed = { "CANARY_ONE", "CANARY_TWO" } },
                          { secret = hook_key }))
show("webhook-404", c:webhook(url .. "/nowhere?token=" .. hook_key, { event = "x" }))
-- wrong secret for the same client id: the message must not echo either secret
local w = assert(core.client{ base_url = url, client_id = id, client_secret = secret .. "-wrong" })
show("wrong-secret", w:authenticate())
for k, v in pairs(c:stats()) do say("stat", k, tostring(v)) end
say("tostring", tostring(c))
c:close()
say("DONE")
]==]

describe("canary: no secret, token or masked value leaks", function()
    local sim, dir
    local canary = {}

    simlib.suite({ reset = false }, function(s) sim, dir = s.sim, s.dir end)
    setup(function()
        local tag = rand_hex(6)
        canary.client_id = "canary-client-" .. tag
        canary.secret = "CanarySecret" .. rand_hex(10)
        canary.key_id = "canary-key-" .. tag
        canary.key_secret = "CanaryKeySecret" .. rand_hex(10)
        canary.hook_key = "CanaryHookKey" .. rand_hex(8)
        canary.masked1 = "CanaryMaskedOne" .. rand_hex(8)
        canary.masked2 = "CanaryMaskedTwo" .. rand_hex(8)
        -- add the canary client and access key to the sim's state
        local state = sim:state()
        state.clients[#state.clients + 1] = { client_id = canary.client_id, client_secret = canary.secret,
            scopes = { "integration:actions:read", "integration:actions:write", "integration:actions:admin" } }
        state.access_keys[#state.access_keys + 1] = { access_key_id = canary.key_id,
            access_key_secret = canary.key_secret, client_id = canary.client_id }
        local status = sim:curl("PUT", "/_sim/state", assert(json.encode(state)))
        assert.equals(200, status)
    end)

    it("child run with CXONE_DEBUG=1 shows none of them", function()
        local script = dir .. "/child.lua"
        local f = assert(io.open(script, "w"))
        f:write(CHILD)
        f:close()
        local lua = os.getenv("CXONE_LUA") or "lua5.4"
        local args = { sim.url, canary.client_id, canary.secret, canary.key_id, canary.key_secret,
                       canary.hook_key, canary.masked1, canary.masked2, D.actions[2] }
        for i, a in ipairs(args) do args[i] = sh(a) end
        local cmd = "CXONE_DEBUG=1 " .. sh(lua) .. " " .. sh(script) .. " " .. table.concat(args, " ")
            .. " >" .. sh(dir .. "/out.txt") .. " 2>" .. sh(dir .. "/err.txt")
        os.execute(cmd)
        local out, err = read(dir .. "/out.txt"), read(dir .. "/err.txt")
        local hooks = select(2, sim:curl("GET", "/_sim/webhooks/canary"))

        -- the run did what it should (so that the absence checks below mean something)
        assert.is_truthy(out:find("DONE", 1, true), "child failed: " .. err:sub(-1500))
        assert.matches("auth true", out, 1, true)
        assert.matches("patch %d+ 200", out)
        assert.matches("var CANARY_ONE ***", out, 1, true)
        assert.matches("conflict", out, 1, true)
        assert.matches("invalid", out, 1, true)
        assert.matches("patch%-retried table", out) -- retried and succeeded
        assert.matches("wrong%-secret nil .-invalid_client", out)
        assert.matches("cxone.Client (client_id=" .. canary.client_id .. ", token valid", out, 1, true)
        assert.matches("cxone%[%d+%] > PATCH /api/v2/integration/actions/", err)
        assert.matches("Authorization: [redacted]", err, 1, true)
        assert.matches("client_secret=[redacted]", err, 1, true)
        assert.matches("password=[redacted]", err, 1, true)
        assert.matches("retry 1/3", err, 1, true)
        assert.matches("401: refreshing the token", err, 1, true)
        assert.matches("?[redacted]", err, 1, true)
        assert.matches('"event":"applied"', hooks, 1, true)
        -- the sim really holds the masked values: they were sent
        local state = select(2, sim:curl("GET", "/_sim/state"))
        assert.matches(canary.masked1, state, 1, true)

        for name, text in pairs{ stdout = out, stderr = err, webhooks = hooks } do
            for what, value in pairs{ secret = canary.secret, key_secret = canary.key_secret,
                                      hook_key = canary.hook_key, masked1 = canary.masked1,
                                      masked2 = canary.masked2 } do
                assert.is_nil(text:find(value, 1, true), what .. " leaked into " .. name)
            end
            assert.is_nil(text:find("Bearer[ \t]+[^%[%s]"), "a bearer token leaked into " .. name)
            assert.is_nil(text:find("access_token"), "a token answer leaked into " .. name)
            assert.is_nil(text:find("Basic[ \t]+[A-Za-z0-9+/]+=*%s"), "Basic credentials leaked into " .. name)
        end
    end)
end)
