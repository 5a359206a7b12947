-- sim:tokens: both OAuth grants, Basic and form credentials, scope intersection, errors, expiry.
local T = require("t")
local D = T.DEMO
local ALL = "integration:actions:read integration:actions:write integration:actions:admin"

T.test("client_credentials in the form body", function(s)
    local r = T.request(s, "POST", "/oauth/token", { form = "grant_type=client_credentials&client_id="
        .. D.client_id .. "&client_secret=" .. D.client_secret })
    T.eq(r.status, 200, "status")
    T.eq(r.json.token_type, "Bearer", "token_type")
    T.eq(r.json.expires_in, 3600, "expires_in")
    T.eq(r.json.scope, ALL, "all scopes when none asked")
    T.ok(r.json.access_token:match("^sim_%x+$") and #r.json.access_token == 44, "opaque sim_ token")
end)

T.test("client_credentials in HTTP Basic, scope intersected", function(s)
    local r = T.request(s, "POST", "/oauth/token", { basic = D.client_id .. ":" .. D.client_secret,
        form = "grant_type=client_credentials&scope=integration%3Aactions%3Aread+bogus:scope" })
    T.eq(r.status, 200, "status")
    T.eq(r.json.scope, "integration:actions:read", "intersection")
    local ro = T.request(s, "POST", "/oauth/token", { basic = D.readonly_id .. ":" .. D.readonly_secret,
        form = "grant_type=client_credentials&scope=" .. ALL:gsub(" ", "+") })
    T.eq(ro.status, 200, "readonly status")
    T.eq(ro.json.scope, "integration:actions:read", "readonly gets read only")
    local none = T.request(s, "POST", "/oauth/token", { basic = D.readonly_id .. ":" .. D.readonly_secret,
        form = "grant_type=client_credentials&scope=integration:actions:write" })
    T.eq(none.status, 400, "no allowed scope asked")
    T.eq(none.json.error, "invalid_scope", "error")
end)

T.test("password grant with an access key, client in Basic", function(s)
    local r = T.request(s, "POST", "/oauth/token", { basic = D.client_id .. ":" .. D.client_secret,
        form = "grant_type=password&username=" .. D.access_key_id .. "&password=" .. D.access_key_secret })
    T.eq(r.status, 200, "status")
    T.eq(r.json.scope, ALL, "access key maps to demo-client's scopes")
    local g = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = r.json.access_token })
    T.eq(g.status, 200, "token works")
    local bad = T.request(s, "POST", "/oauth/token", { basic = D.client_id .. ":" .. D.client_secret,
        form = "grant_type=password&username=" .. D.access_key_id .. "&password=wrong" })
    T.eq(bad.status, 401, "wrong access key secret")
    T.eq(bad.json.error, "invalid_client", "error")
    local other = T.request(s, "POST", "/oauth/token", { basic = D.readonly_id .. ":" .. D.readonly_secret,
        form = "grant_type=password&username=" .. D.access_key_id .. "&password=" .. D.access_key_secret })
    T.eq(other.status, 401, "access key of another client")
    local missing = T.request(s, "POST", "/oauth/token", { basic = D.client_id .. ":" .. D.client_secret,
        form = "grant_type=password&username=" .. D.access_key_id })
    T.eq(missing.status, 400, "missing password")
    T.eq(missing.json.error, "invalid_request", "error")
end)

T.test("wrong credentials, bad grants, missing fields", function(s)
    local r = T.request(s, "POST", "/oauth/token", { form = "grant_type=client_credentials&client_id="
        .. D.client_id .. "&client_secret=nope" })
    T.eq(r.status, 401, "wrong secret")
    T.eq(r.json.error, "invalid_client", "error")
    r = T.request(s, "POST", "/oauth/token", { basic = "nobody:x", form = "grant_type=client_credentials" })
    T.eq(r.status, 401, "unknown client")
    T.eq(r.json.error, "invalid_client", "error")
    r = T.request(s, "POST", "/oauth/token", { form = "grant_type=authorization_code&code=x" })
    T.eq(r.status, 400, "unsupported grant")
    T.eq(r.json.error, "unsupported_grant_type", "error")
    r = T.request(s, "POST", "/oauth/token", { form = "client_id=" .. D.client_id })
    T.eq(r.status, 400, "no grant_type")
    T.eq(r.json.error, "invalid_request", "error")
    r = T.request(s, "POST", "/oauth/token", { form = "grant_type=client_credentials" })
    T.eq(r.status, 400, "no client credentials")
    T.eq(r.json.error, "invalid_request", "error")
    r = T.request(s, "GET", "/oauth/token")
    T.eq(r.status, 405, "GET on the token route")
    T.eq(r.headers.allow, "POST", "Allow")
    T.eq(s:stats().tokens_issued, 0, "no token issued by failures")
end)

T.test("401 for missing, unknown and expired tokens (expire_tokens fault)", function(s)
    local tok = T.token(s)
    local r = T.request(s, "GET", T.vars(T.CRM, "dev"))
    T.eq(r.status, 401, "missing token")
    T.eq(r.json.error, "invalid_token", "error")
    T.ok(r.headers["www-authenticate"]:match("^Bearer"), "WWW-Authenticate: Bearer")
    r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = "sim_0000000000000000000000000000000000000000" })
    T.eq(r.status, 401, "unknown token")
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status, 200, "valid token")
    s:fault({ kind = "expire_tokens", method = "GET" })
    r = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok })
    T.eq(r.status, 401, "token expired by the fault")
    T.eq(r.headers["www-authenticate"], "Bearer", "WWW-Authenticate")
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status, 401, "stays expired")
    T.eq(T.request(s, "GET", T.vars(T.CRM, "dev"), { token = T.token(s) }).status, 200, "a new token works")
end)

T.test("--token-ttl 1: the token expires (polled, no fixed sleep)", function()
    local s = T.start({ args = { "--token-ttl", "1" } })
    local ok, e = pcall(function()
        local r = T.request(s, "POST", "/oauth/token", { basic = D.client_id .. ":" .. D.client_secret,
            form = "grant_type=client_credentials" })
        T.eq(r.json.expires_in, 1, "expires_in follows --token-ttl")
        local tok = r.json.access_token
        local deadline, status = os.time() + 5, nil
        repeat
            status = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).status
        until status == 401 or os.time() > deadline
        T.eq(status, 401, "expired within 5 s")
    end)
    s:stop()
    assert(ok, e)
end)

T.run(function() return T.start() end)
