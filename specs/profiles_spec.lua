-- Profiles and tier policy (cxone.profiles, cxone.tenancy, cxone.policy), through the real
-- command line against two cxone-sim processes, one per tenant (each its own port and state
-- file): a staging tenant that knows only demo-client, a production tenant that knows only
-- prod-client. Lua 5.1-compatible (the spec itself also runs under LuaJIT and 5.3).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1 = D.actions[1]
local q = simlib.shquote

local tmpdir, read_file, write_file = simlib.tmpdir, simlib.read_file, simlib.write_file
local cxone = simlib.cxone

local PROD_SECRET = "prod-secret-CANARY-5e1f0a"
local NEW_KEY = "crm-key-CANARY-91b7c2"

-- the variables of an action's environment in a sim's state
local function vars_of(sim, action, env)
    for _, a in ipairs(sim:state().actions) do
        if a.id == action then
            local out = {}
            for _, v in ipairs(a.environments[env].variables) do out[v.name] = v end
            return out
        end
    end
end

local function audit_records(path)
    local out = {}
    for line in (read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = assert(json.decode(line)) end
    return out
end

local function refute_canaries(...)
    for i = 1, select("#", ...) do
        local s = select(i, ...) or ""
        assert.is_nil(s:find(PROD_SECRET, 1, true), "the production secret leaked")
        assert.is_nil(s:find(NEW_KEY, 1, true), "a masked value leaked")
        assert.is_nil(s:find(D.client_secret, 1, true), "the staging secret leaked")
    end
end

local DAYS = { "Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat" }

describe("profiles and tier policy", function()
    local stg, prod, dir, env
    setup(function()
        dir = tmpdir()
        -- the production tenant: the demo data with its own client (and no other)
        local state = assert(json.decode(read_file(simlib.ROOT .. "/sim/demo_state.json")))
        state.clients = { { client_id = "prod-client", client_secret = PROD_SECRET,
            scopes = { "integration:actions:read", "integration:actions:write", "integration:actions:admin" } } }
        state.access_keys = nil
        write_file(dir .. "/prod.json", assert(json.encode(state)))
        stg = simlib.start()
        prod = simlib.start({ args = { "--state", dir .. "/prod.json" } })
        write_file(dir .. "/prod.secret", PROD_SECRET .. "\n")
        env = {
            STG_SECRET = D.client_secret, CXONE_AUDIT_LOG = dir .. "/audit.jsonl", NO_COLOR = "1",
            CXONE_BASE_URL = false, CXONE_CLIENT_ID = false, CXONE_CLIENT_SECRET = false, CXONE_TOKEN_URL = false,
            CXONE_ACCESS_KEY_ID = false, CXONE_ACCESS_KEY_SECRET = false, CXONE_WEBHOOK_URL = false,
            CXONE_CA_FILE = false, CXONE_AUDIT_KEY = false, CXONE_STATE_FILE = false, CXONE_DEBUG = false,
            CXONE_CONFIG = false, KEY = NEW_KEY,
        }
        write_file(dir .. "/promote.lua", ([[
return {
  { action = %q, tier = "staging", variables = { TIMEOUT_MS = "4000", CRM_API_KEY = { value = env("KEY"), masked = true } } },
  { action = %q, tier = "production", variables = { TIMEOUT_MS = "4000", CRM_API_KEY = { value = env("KEY"), masked = true } } },
}]]):format(A1, A1))
        write_file(dir .. "/prod_only.lua", ([[
return { { action = %q, tier = "production", variables = { TIMEOUT_MS = "4500" } } }]]):format(A1))
        write_file(dir .. "/prod_masked.lua", ([[
return { { action = %q, tier = "production", variables = { TIMEOUT_MS = "4000",
  CRM_API_KEY = { value = env("KEY2"), masked = true } } } }]]):format(A1))
    end)
    teardown(function()
        stg:stop()
        prod:stop()
        os.execute("rm -rf " .. q(dir))
    end)

    -- writes a configuration (0600) and returns its path; `prod_extra` goes into the production tier
    local n = 0
    local function config(prod_extra, opts)
        opts = opts or {}
        n = n + 1
        local path = ("%s/cx%d.lua"):format(dir, n)
        write_file(path, ([[
return {
  tenants = {
    stg = { base_url = %q, client_id = "demo-client", client_secret = env("STG_SECRET") },
    prod = { base_url = %q, client_id = "prod-client", client_secret = %s, rate_limit = 50 },
  },
  tiers = {
    development = { tenant = "stg" }, staging = { tenant = "stg" },
    production = { tenant = "prod" %s },
  },
}]]):format(stg.url, prod.url, opts.secret or ('{ command = { "cat", %q } }'):format(dir .. "/prod.secret"),
            prod_extra and (", " .. prod_extra) or ""))
        os.execute("chmod 600 " .. q(path))
        return path
    end

    before_each(function()
        assert.equals(200, (stg:post_json("/_sim/reset", {})))
        assert.equals(200, (prod:post_json("/_sim/reset", {})))
        os.remove(dir .. "/audit.jsonl")
        os.remove(dir .. "/audit.jsonl.masked.json")
    end)

    it("promotes from a staging tenant to a production tenant with per-tier credentials; the audit names each write's tenant", function()
        local cfg = config()
        local s0, p0 = stg:count("PATCH"), prod:count("PATCH")
        local code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/promote.lua" }, env)
        assert.equals(0, code, err)
        -- each tenant got its own tier's write (and only that one)
        assert.equals("4000", vars_of(stg, A1, "staging").TIMEOUT_MS.value)
        assert.equals(NEW_KEY, vars_of(stg, A1, "staging").CRM_API_KEY.value)
        assert.equals("4000", vars_of(prod, A1, "prod").TIMEOUT_MS.value)
        assert.equals(NEW_KEY, vars_of(prod, A1, "prod").CRM_API_KEY.value)
        assert.equals("2500", vars_of(stg, A1, "prod").TIMEOUT_MS.value) -- staging tenant's prod untouched
        assert.equals("3000", vars_of(prod, A1, "staging").TIMEOUT_MS.value) -- and the other way round
        assert.equals(s0 + 1, stg:count("PATCH"))
        assert.equals(p0 + 1, prod:count("PATCH"))
        local trail = read_file(dir .. "/audit.jsonl")
        refute_canaries(out, err, trail, read_file(dir .. "/audit.jsonl.masked.json"))
        local tenant_of = {}
        for _, r in ipairs(audit_records(dir .. "/audit.jsonl")) do
            if r.event == "apply" then tenant_of[r.environment] = r.tenant end
        end
        assert.equals(stg.url .. " demo-client", tenant_of.staging)
        assert.equals(prod.url .. " prod-client", tenant_of.prod)
        -- re-planning the same playbook: nothing to change in either tenant (ledger keys per tenant)
        code, out = cxone({ "plan", "--config", cfg, dir .. "/promote.lua" }, env)
        assert.equals(0, code, out)
    end)

    it("reads a credential from a file when used, and CXONE_CONFIG names the file", function()
        local cfg = config(nil, { secret = ("{ file = %q }"):format(dir .. "/prod.secret") })
        local e = {}
        for k, v in pairs(env) do e[k] = v end
        e.CXONE_CONFIG = cfg
        local code, out, err = cxone({ "apply", "--yes", dir .. "/prod_only.lua" }, e)
        assert.equals(0, code, err)
        assert.equals("4500", vars_of(prod, A1, "prod").TIMEOUT_MS.value)
        refute_canaries(out, err)
    end)

    it("refuses a production value staging never received, where the policy asks (plain and masked)", function()
        local cfg = config('promoted_from = "staging"')
        local p0 = prod:count("PATCH")
        -- plain: 4500 was never applied to staging
        local code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/prod_only.lua" }, env)
        assert.equals(1, code)
        assert.matches("production accepts only values an audited run applied to staging first", err, 1, true)
        assert.matches("never received this value of TIMEOUT_MS", err, 1, true)
        assert.equals(p0, prod:count("PATCH"))
        assert.equals("2500", vars_of(prod, A1, "prod").TIMEOUT_MS.value)
        -- the same promotion staging-then-production in one run is accepted
        code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/promote.lua" }, env)
        assert.equals(0, code, err)
        -- a later run: production may take what staging got (plain 4000; the masked value by fingerprint)...
        assert.equals(200, (prod:post_json("/_sim/reset", {})))
        local e = {}
        for k, v in pairs(env) do e[k] = v end
        e.KEY2 = NEW_KEY
        code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/prod_masked.lua" }, e)
        assert.equals(0, code, err)
        assert.equals(NEW_KEY, vars_of(prod, A1, "prod").CRM_API_KEY.value)
        -- ...but not a masked value staging never received
        assert.equals(200, (prod:post_json("/_sim/reset", {})))
        e.KEY2 = NEW_KEY .. "-other"
        local before = prod:count("PATCH")
        code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/prod_masked.lua" }, e)
        assert.equals(1, code)
        assert.matches("never received this value of CRM_API_KEY", err, 1, true)
        assert.equals(before, prod:count("PATCH"))
        refute_canaries(out, err, read_file(dir .. "/audit.jsonl"))
    end)

    it("refuses an apply inside a freeze window; --override-freeze allows it and the audit records the reason", function()
        local cfg = config('freeze = { { days = "Mon-Sun", from = "00:00", to = "24:00", utc_offset = "+01:00" } }')
        local p0 = prod:count("PATCH")
        local code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/prod_only.lua" }, env)
        assert.equals(1, code)
        assert.matches("inside a freeze window: production", err, 1, true)
        assert.matches("--override-freeze", err, 1, true)
        assert.equals(p0, prod:count("PATCH"))
        assert.is_nil(read_file(dir .. "/audit.jsonl")) -- nothing started
        -- plan is not an apply: allowed during a freeze
        code = cxone({ "plan", "--config", cfg, dir .. "/prod_only.lua" }, env)
        assert.equals(2, code)
        code, out, err = cxone({ "apply", "--yes", "--config", cfg, "--override-freeze", "incident 4711: hotfix",
            dir .. "/prod_only.lua" }, env)
        assert.equals(0, code, err)
        assert.matches("freeze window overridden", err, 1, true)
        assert.equals("4500", vars_of(prod, A1, "prod").TIMEOUT_MS.value)
        local started
        for _, r in ipairs(audit_records(dir .. "/audit.jsonl")) do
            if r.event == "apply.started" then started = r end
        end
        assert.equals("incident 4711: hotfix", started.override_freeze)
        -- a window that does not hold now (a day that is neither today nor yesterday) lets it through
        local wday = os.date("!*t").wday
        local other = DAYS[(wday + 2) % 7 + 1]
        assert.equals(200, (prod:post_json("/_sim/reset", {})))
        cfg = config(('freeze = { { days = %q, from = "00:00", to = "24:00" } }'):format(other))
        code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/prod_only.lua" }, env)
        assert.equals(0, code, err)
    end)

    it("config check shows each tier's tenant with secrets masked, tries a token for each: exit 0, or 1 when one fails", function()
        local cfg = config('promoted_from = "staging"')
        local code, out, err = cxone({ "config", "check", "--config", cfg }, env)
        assert.equals(0, code, err)
        assert.matches("production (prod): token ok", out, 1, true)
        assert.matches("staging (staging): token ok", out, 1, true)
        assert.matches(prod.url, out, 1, true)
        assert.matches("prod-client", out, 1, true)
        assert.matches("env STG_SECRET (set, ***)", out, 1, true)
        assert.matches("command cat " .. dir .. "/prod.secret (***)", out, 1, true)
        assert.matches("promoted_from%s+staging", out)
        refute_canaries(out, err)
        code, out = cxone({ "config", "check", "--json", "--config", cfg }, env)
        assert.equals(0, code)
        local doc = assert(json.decode(out))
        assert.is_true(doc.ok)
        assert.equals("ok", doc.tiers[3].token)
        refute_canaries(out)
        -- a wrong production secret: that tier fails, exit 1, and the secret is still not shown
        write_file(dir .. "/wrong.secret", "wrong-CANARY-secret-3141\n")
        cfg = config(nil, { secret = ("{ file = %q }"):format(dir .. "/wrong.secret") })
        code, out, err = cxone({ "config", "check", "--config", cfg }, env)
        assert.equals(1, code)
        assert.matches("production (prod): token failed (auth)", out, 1, true)
        assert.matches("staging (staging): token ok", out, 1, true)
        assert.is_nil((out .. err):find("wrong-CANARY-secret-3141", 1, true))
        -- an unset env() is named, not guessed
        local e = {}
        for k, v in pairs(env) do e[k] = v end
        e.STG_SECRET = false
        code, out = cxone({ "config", "check", "--config", config() }, e)
        assert.equals(1, code)
        assert.matches("environment variable STG_SECRET is not set", out, 1, true)
        assert.matches("env STG_SECRET (NOT SET)", out, 1, true)
        -- no file: the single tenant of CXONE_*
        local se = simlib.sim_env(stg, dir)
        code, out, err = cxone({ "config", "check" }, se)
        assert.equals(0, code, err)
        assert.matches("no configuration file", out, 1, true)
        assert.matches("production (prod): token ok", out, 1, true)
        refute_canaries(out, err)
        se.CXONE_CLIENT_SECRET = "not-the-secret-CANARY-2718"
        code, out, err = cxone({ "config", "check" }, se)
        assert.equals(1, code)
        assert.is_nil((out .. err):find("not-the-secret-CANARY-2718", 1, true))
    end)

    it("config check: the access-key flow, with its secret masked", function()
        local path = dir .. "/ak.lua"
        write_file(path, ([[return { tiers = { staging = { base_url = %q, auth = "access_key", client_id = "demo-client",
            client_secret = env("STG_SECRET"), access_key_id = %q, access_key_secret = env("AKS") } } }]])
            :format(stg.url, D.access_key_id))
        os.execute("chmod 600 " .. q(path))
        local e = {}
        for k, v in pairs(env) do e[k] = v end
        e.AKS = D.access_key_secret
        local code, out, err = cxone({ "config", "check", "--config", path }, e)
        assert.equals(0, code, err)
        assert.matches("staging (staging): token ok", out, 1, true)
        assert.matches("auth%s+access_key", out)
        assert.matches("access_key_secret%s+env AKS %(set, %*%*%*%)", out)
        assert.matches("production (prod): not configured", out, 1, true)
        assert.is_nil((out .. err):find(D.access_key_secret, 1, true))
        e.AKS = "wrong-access-key-CANARY-1618"
        code, out, err = cxone({ "config", "check", "--config", path }, e)
        assert.equals(1, code)
        assert.matches("staging (staging): token failed (auth)", out, 1, true)
        assert.is_nil((out .. err):find("wrong-access-key-CANARY-1618", 1, true))
    end)

    it("refuses a configuration writable by group or others, and one that tries io or os", function()
        local cfg = config()
        local p0 = prod:count("PATCH")
        os.execute("chmod 602 " .. q(cfg))
        local code, _, err = cxone({ "config", "check", "--config", cfg }, env)
        assert.equals(1, code)
        assert.matches("writable by others", err, 1, true)
        code, _, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/prod_only.lua" }, env)
        assert.equals(1, code)
        assert.matches("configuration refused", err, 1, true)
        assert.equals(p0, prod:count("PATCH"))
        os.execute("chmod 620 " .. q(cfg))
        code, _, err = cxone({ "config", "check", "--config", cfg }, env)
        assert.equals(1, code)
        assert.matches("writable by its group", err, 1, true)
        -- the sandbox offers env() and nothing else
        local evil = dir .. "/evil.lua"
        write_file(evil, 'io.open("' .. dir .. '/pwned", "w"); return { tiers = {} }')
        os.execute("chmod 600 " .. q(evil))
        code, _, err = cxone({ "config", "check", "--config", evil }, env)
        assert.equals(1, code)
        assert.is_nil(read_file(dir .. "/pwned"))
        write_file(evil, 'return { tiers = { production = { tenant = "x" } }, tenants = { x = { base_url = os.getenv("HOME") } } }')
        code, _, err = cxone({ "config", "check", "--config", evil }, env)
        assert.equals(1, code)
        assert.matches("os", err, 1, true)
    end)

    it("a saved plan spanning two tenants applies to each, and is still held to the freeze", function()
        local cfg = config()
        local plan = dir .. "/two.json"
        os.remove(plan)
        local code, out, err = cxone({ "plan", "--config", cfg, "--out", plan, dir .. "/promote.lua" }, env)
        assert.equals(2, code, err)
        refute_canaries(out, err, read_file(plan))
        -- the same tenants, now with production frozen: the saved plan is refused
        local frozen = config('freeze = { { days = "Mon-Sun" } }')
        local p0 = prod:count("PATCH")
        code, out, err = cxone({ "apply", "--config", frozen, plan }, env)
        assert.equals(1, code)
        assert.matches("inside a freeze window", err, 1, true)
        assert.equals(p0, prod:count("PATCH"))
        code, out, err = cxone({ "apply", "--config", cfg, plan }, env)
        assert.equals(0, code, err)
        assert.equals("4000", vars_of(stg, A1, "staging").TIMEOUT_MS.value)
        assert.equals(NEW_KEY, vars_of(prod, A1, "prod").CRM_API_KEY.value)
        refute_canaries(out, err, read_file(dir .. "/audit.jsonl"))
    end)

    it("drift across tenants: a playbook's masked values are proven per tenant; two tenants' fingerprints are never compared", function()
        local cfg = config()
        local code, out, err = cxone({ "apply", "--yes", "--config", cfg, dir .. "/promote.lua" }, env)
        assert.equals(0, code, err)
        code, out, err = cxone({ "drift", "--config", cfg, dir .. "/promote.lua" }, env)
        assert.equals(0, code, out .. err)
        code, out, err = cxone({ "drift", "--json", "--config", cfg, A1, "staging", "production" }, env)
        local doc = assert(json.decode(out), err)
        local key
        for _, it in ipairs(doc.items or {}) do if it.variable == "CRM_API_KEY" then key = it end end
        assert.truthy(key, out)
        assert.matches("different tenants", key.note, 1, true)
        refute_canaries(out, err)
    end)

    it("never sends a tier the configuration does not map to another tenant", function()
        local path = dir .. "/stg_only.lua"
        write_file(path, ([[return { tiers = { staging = { base_url = %q, client_id = "demo-client",
            client_secret = env("STG_SECRET") } } }]]):format(stg.url))
        os.execute("chmod 600 " .. q(path))
        local g0 = stg:count("GET")
        local code, _, err = cxone({ "apply", "--yes", "--config", path, dir .. "/prod_only.lua" }, env)
        assert.equals(1, code)
        assert.matches("no tenant in the configuration", err, 1, true)
        assert.equals(g0, stg:count("GET")) -- not even a read went to the staging tenant
        code = cxone({ "vars", "--config", path, A1, "production" }, env)
        assert.equals(1, code)
        code, _, err = cxone({ "vars", "--config", path, A1, "staging" }, env)
        assert.equals(0, code, err)
    end)

    it("freeze windows: weekdays, offsets and windows across midnight", function()
        local profiles = require("cxone.profiles")
        local path = dir .. "/fz.lua"
        write_file(path, [[return { tiers = { production = { base_url = "http://127.0.0.1:1", client_id = "c",
            client_secret = "s", freeze = { { days = "Mon-Fri", from = "09:00", to = "17:00", utc_offset = "+02:00" },
                                           { days = "Sat", from = "22:00", to = "02:00" } } } } }]])
        os.execute("chmod 600 " .. q(path))
        local prof = assert(profiles.load(path))
        local pol = prof.tiers.production
        -- 2026-12-02 is a Wednesday; 07:30 UTC is 09:30 at +02:00
        local wed = 1796169600 -- 2026-12-02T00:00:00Z
        assert.truthy(profiles.frozen(pol, wed + 7 * 3600 + 30 * 60))
        assert.is_nil(profiles.frozen(pol, wed + 6 * 3600 + 30 * 60)) -- 08:30 local
        assert.is_nil(profiles.frozen(pol, wed + 15 * 3600)) -- 17:00 local: the window has ended
        local sat = wed + 3 * 86400
        assert.truthy(profiles.frozen(pol, sat + 23 * 3600)) -- Saturday 23:00
        assert.truthy(profiles.frozen(pol, sat + 86400 + 3600)) -- Sunday 01:00, the same window
        assert.is_nil(profiles.frozen(pol, sat + 86400 + 3 * 3600)) -- Sunday 03:00
        write_file(path, [[return { tiers = { production = { base_url = "u", client_id = "c", client_secret = "s",
            freeze = { { days = "Mon-Fry" } } } } }]])
        local ok, msg, code = profiles.load(path)
        assert.is_nil(ok)
        assert.equals("config", code)
        assert.matches("days must be like Mon-Fri", msg, 1, true)
    end)
end)
