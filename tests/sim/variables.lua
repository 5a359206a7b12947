-- sim:variables: GET/PATCH/PUT on the variables route: masking, sorting, scopes, merge and
-- all-or-nothing, the 50-variable limit, ETag/If-Match, 400/404/405/413/422.
local T = require("t")
local D = T.DEMO

local function get(s, tok, action, env)
    return T.request(s, "GET", T.vars(action or T.CRM, env or "prod"), { token = tok })
end

T.test("GET: sorted, masked values as ***, ETag; /_sim/state has the plaintext", function(s)
    local tok = T.token(s)
    local r = get(s, tok, T.CRM, "prod")
    T.eq(r.status, 200, "status")
    T.eq(r.json.environmentId, "prod", "environmentId")
    T.eq(r.json.actionId, T.CRM, "actionId")
    local names = {}
    for i, v in ipairs(r.json.variables) do
        names[i] = v.name
        T.ok(type(v.masked) == "boolean" and type(v.description) == "string", "fields of " .. v.name)
    end
    local sorted = { table.unpack(names) }
    table.sort(sorted)
    T.eq(table.concat(names, ","), table.concat(sorted, ","), "sorted by name")
    T.eq(T.var(r.json, "CRM_API_KEY").value, "***", "masked value hidden")
    T.eq(T.var(r.json, "TIMEOUT_MS").value, "2500", "plain value shown")
    T.ok(not r.body:find("prd-crm-key-9c1f6a55", 1, true), "secret not in the body")
    T.ok(r.headers.etag:match('^"[%w]+"$'), "strong quoted ETag")
    local state = s:state()
    T.ok(T.json.encode(state):find("prd-crm-key-9c1f6a55", 1, true), "/_sim/state shows the plaintext")
end)

T.test("demo data drift between tiers", function(s)
    local tok = T.token(s)
    local st, pr = get(s, tok, T.CRM, "staging").json, get(s, tok, T.CRM, "prod").json
    T.ok(T.var(st, "TIMEOUT_MS").value ~= T.var(pr, "TIMEOUT_MS").value, "value differs staging/prod")
    T.ok(T.var(st, "FEATURE_FUZZY_MATCH") and not T.var(pr, "FEATURE_FUZZY_MATCH"), "missing in prod")
    local ps, pp = get(s, tok, T.PAY, "staging").json, get(s, tok, T.PAY, "prod").json
    T.ok(T.var(ps, "MERCHANT_ID").masked ~= T.var(pp, "MERCHANT_ID").masked, "masked flag differs")
    T.eq(get(s, tok, T.TKT, "dev").status, 200, "third action")
end)

T.test("scopes: read-only client can GET but gets 403 on PATCH and PUT", function(s)
    local ro = T.token(s, D.readonly_id, D.readonly_secret)
    T.eq(get(s, ro).status, 200, "read works")
    local body = { variables = { { name = "X_Y", value = "1", masked = false } } }
    for _, m in ipairs({ "PATCH", "PUT" }) do
        local r = T.request(s, m, T.vars(T.CRM, "dev"), { token = ro, body = body })
        T.eq(r.status, 403, m .. " status")
        T.eq(r.json.error, "insufficient_scope", "error")
        T.eq(r.json.required_scope, "integration:actions:write", "required_scope")
        T.ok(r.json.message:find("integration:actions:write", 1, true), "message names the scope")
    end
    local b = T.request(s, "POST", "/api/v2/integration/actions/" .. T.CRM .. "/build", { token = ro })
    T.eq(b.status, 403, "build needs write")
    local narrow = T.token(s, D.client_id, D.client_secret, "integration:actions:write")
    T.eq(get(s, narrow).status, 403, "write-only token cannot read")
end)

T.test("PATCH merges (upsert by name, others untouched) and answers the full list", function(s)
    local tok = T.token(s)
    local before = get(s, tok, T.CRM, "dev")
    local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = {
        environmentId = "dev", actionId = T.CRM,
        variables = { { name = "TIMEOUT_MS", value = "7000", masked = false },
                      { name = "NEW_SECRET", value = "brand-new-secret-value", masked = true, description = "d" } } } })
    T.eq(r.status, 200, "status")
    T.eq(#r.json.variables, #before.json.variables + 1, "one added")
    T.eq(T.var(r.json, "TIMEOUT_MS").value, "7000", "updated")
    T.eq(T.var(r.json, "TIMEOUT_MS").description, "Request timeout", "description kept when absent")
    T.eq(T.var(r.json, "NEW_SECRET").value, "***", "new masked value hidden")
    T.eq(T.var(r.json, "LOG_LEVEL").value, "debug", "untouched")
    T.ok(r.headers.etag ~= before.headers.etag, "ETag changed")
    local again = get(s, tok, T.CRM, "dev")
    T.eq(again.body, r.body, "GET shows the same list")
    T.eq(again.headers.etag, r.headers.etag, "same ETag")
    T.eq(get(s, tok, T.CRM, "staging").headers.etag, get(s, tok, T.CRM, "staging").headers.etag, "stable ETag")
    -- Rewriting the same values leaves the ETag alone.
    local same = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = {
        variables = { { name = "TIMEOUT_MS", value = "7000", masked = false, description = "Request timeout" } } } })
    T.eq(same.headers.etag, r.headers.etag, "no change, same ETag")
end)

T.test("PATCH is all or nothing; 422 messages name the variable and rule, never the value", function(s)
    local tok = T.token(s)
    local before = get(s, tok, T.CRM, "dev")
    local cases = {
        { { name = "GOOD_ONE", value = "ok", masked = false }, { name = "bad-name", value = "x", masked = false } },
        { { name = "GOOD_ONE", value = "ok", masked = false }, { name = "LONG", value = string.rep("v", 1025), masked = false } },
        { { name = "GOOD_ONE", value = "ok", masked = false }, { name = "NOT_STRING", value = 5, masked = false } },
        { { name = "GOOD_ONE", value = "ok", masked = false }, { name = "NO_MASK", value = "zz-secret-canary" } },
        { { name = "GOOD_ONE", value = "ok", masked = false }, { name = "DESC", value = "x", masked = true, description = 7 } },
        { { name = "DUP", value = "a", masked = false }, { name = "DUP", value = "b", masked = false } },
    }
    for i, vars in ipairs(cases) do
        local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { variables = vars } })
        T.eq(r.status, 422, "case " .. i)
        T.eq(r.json.error, "invalid_request", "error " .. i)
        T.ok(type(r.json.message) == "string" and r.json.message:find("variables%[%d%]"), "message locates the entry " .. i)
        T.ok(not r.body:find("zz-secret-canary", 1, true) and not r.body:find("vvvvvvvv", 1, true), "no value echoed " .. i)
    end
    local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { variables = {
        { name = "GOOD_ONE", value = "ok", masked = false }, { name = "LONG", value = string.rep("v", 1025), masked = false } } } })
    T.ok(r.json.message:find("LONG", 1, true) and r.json.message:find("1024", 1, true), "names variable and rule")
    local after = get(s, tok, T.CRM, "dev")
    T.eq(after.body, before.body, "nothing written")
    T.eq(after.headers.etag, before.headers.etag, "ETag unchanged")
    local mism = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { environmentId = "prod", variables = {} } })
    T.eq(mism.status, 422, "environmentId mismatch")
    mism = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { actionId = T.PAY, variables = {} } })
    T.eq(mism.status, 422, "actionId mismatch")
    T.eq(T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { vars = {} } }).status, 422, "no variables")
    local nj = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = "{not json" })
    T.eq(nj.status, 400, "not JSON")
    T.eq(nj.json.error, "invalid_request", "error")
end)

T.test("at most 50 variables after the merge", function(s)
    local tok = T.token(s)
    local n = #get(s, tok, T.CRM, "dev").json.variables
    local vars = {}
    for i = 1, 50 - n do vars[i] = { name = ("FILL_%02d"):format(i), value = "v", masked = false } end
    local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { variables = vars } })
    T.eq(r.status, 200, "exactly 50 is fine")
    T.eq(#r.json.variables, 50, "50 variables")
    r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { variables = {
        { name = "TIMEOUT_MS", value = "1", masked = false }, { name = "ONE_TOO_MANY", value = "v", masked = false } } } })
    T.eq(r.status, 422, "51 after merge")
    T.ok(r.json.message:find("50", 1, true), "message names the limit")
    T.eq(T.var(get(s, tok, T.CRM, "dev").json, "TIMEOUT_MS").value, "5000", "all or nothing")
end)

T.test("PUT replaces the whole set", function(s)
    local tok = T.token(s)
    local r = T.request(s, "PUT", T.vars(T.TKT, "staging"), { token = tok, body = { environmentId = "staging",
        actionId = T.TKT, variables = { { name = "ONLY_ONE", value = "v1", masked = false } } } })
    T.eq(r.status, 200, "status")
    T.eq(#r.json.variables, 1, "replaced")
    T.eq(r.json.variables[1].description, "", "description defaults to empty")
    T.eq(#get(s, tok, T.TKT, "staging").json.variables, 1, "GET agrees")
    T.eq(#get(s, tok, T.TKT, "prod").json.variables, 4, "other tiers untouched")
    local bad = T.request(s, "PUT", T.vars(T.TKT, "staging"), { token = tok, body = { variables = {
        { name = "A", value = "x", masked = false }, { name = "b", value = "x", masked = false } } } })
    T.eq(bad.status, 422, "PUT validates")
    local vars = {}
    for i = 1, 51 do vars[i] = { name = "V" .. i, value = "v", masked = false } end
    T.eq(T.request(s, "PUT", T.vars(T.TKT, "staging"), { token = tok, body = { variables = vars } }).status, 422, "51")
    T.eq(T.request(s, "PUT", T.vars(T.TKT, "staging"), { token = tok, body = { variables = {} } }).status, 200, "empty set")
    local empty = get(s, tok, T.TKT, "staging")
    T.ok(empty.body:find('"variables":[]', 1, true), "empty list is a JSON array")
end)

T.test("ETag / If-Match: 412 and nothing written; * matches", function(s)
    local tok = T.token(s)
    local plan = get(s, tok, T.PAY, "prod")
    local etag = plan.headers.etag
    local body = { variables = { { name = "RETRY_LIMIT", value = "4", masked = false } } }
    local r = T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = body, headers = { "If-Match: " .. etag } })
    T.eq(r.status, 200, "matching If-Match")
    T.ok(r.headers.etag ~= etag, "new ETag")
    local stale = T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, headers = { "If-Match: " .. etag },
        body = { variables = { { name = "RETRY_LIMIT", value = "9", masked = false } } } })
    T.eq(stale.status, 412, "stale ETag")
    T.eq(stale.json.error, "precondition_failed", "error")
    stale = T.request(s, "PUT", T.vars(T.PAY, "prod"), { token = tok, headers = { "If-Match: " .. etag },
        body = { variables = {} } })
    T.eq(stale.status, 412, "stale ETag on PUT")
    local now = get(s, tok, T.PAY, "prod")
    T.eq(T.var(now.json, "RETRY_LIMIT").value, "4", "nothing written")
    T.eq(now.headers.etag, r.headers.etag, "ETag of the last write")
    T.eq(T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = body, headers = { "If-Match: *" } }).status,
        200, "* matches")
    T.eq(T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = body,
        headers = { 'If-Match: "nope", ' .. now.headers.etag } }).status, 200, "list with the current tag")
end)

T.test("404 unknown action/env/path, 405 with Allow, 413 over 1 MiB", function(s)
    local tok = T.token(s)
    T.eq(get(s, tok, "00000000-0000-4000-8000-000000000000", "dev").status, 404, "unknown action")
    T.eq(get(s, tok, T.CRM, "qa").status, 404, "unknown environment")
    T.eq(T.request(s, "GET", "/api/v2/nothing", { token = tok }).status, 404, "unknown path")
    T.eq(T.request(s, "GET", "/", {}).status, 404, "root")
    local r = T.request(s, "DELETE", T.vars(T.CRM, "dev"), { token = tok })
    T.eq(r.status, 405, "DELETE")
    T.eq(r.headers.allow, "GET, PATCH, PUT", "Allow")
    r = T.request(s, "GET", "/api/v2/integration/actions/" .. T.CRM .. "/build", { token = tok })
    T.eq(r.status, 405, "GET build")
    T.eq(r.headers.allow, "POST", "Allow on build")
    local big = '{"variables":[{"name":"BIG","masked":false,"value":"' .. string.rep("x", 1024 * 1024) .. '"}]}'
    r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = big })
    T.eq(r.status, 413, "over 1 MiB")
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status, 200, "still serving")
    -- A chunked upload (no Content-Length) over the cap is caught while reading.
    local tmp = os.tmpname()
    T.write(tmp, big)
    local out = T.sh("curl -s -o /dev/null -w '%{http_code}' -X PATCH -H 'Transfer-Encoding: chunked' "
        .. "-H 'Authorization: Bearer " .. tok .. "' --data-binary @" .. tmp .. " " .. s.url .. T.vars(T.CRM, "dev"))
    os.remove(tmp)
    T.eq(out, "413", "chunked over 1 MiB")
end)

T.run(function() return T.start() end)
