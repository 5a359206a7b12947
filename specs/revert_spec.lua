-- cxone revert: apply keeps the before-state of each run (0600, no masked value), and a revert
-- puts every variable back as it was (checked against the emulator's state), refuses when a
-- later change touched what the run wrote, names the masked values it needs and checks them
-- against the recorded fingerprints, and is audited as a revert of the run. Runs the real CLI
-- against cxone-sim. Lua 5.1-compatible (the CLI is always lua5.4).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1, A2 = D.actions[1], D.actions[2]
local q = simlib.shquote
local read_file, write_file, capture = simlib.read_file, simlib.write_file, simlib.capture
local cxone = simlib.cxone

local CANARY1 = "canary-revert-one-5d1e"
local CANARY2 = "canary-revert-two-9b7c"
-- the demo data's masked values (what a revert restores)
local DEMO_KEYS = {
    CXONE_REVERT_DEV_CRM_API_KEY = "dev-crm-key-7f3a9c21",
    CXONE_REVERT_STAGING_CRM_API_KEY = "stg-crm-key-4b8e2d10",
    CXONE_REVERT_PROD_CRM_API_KEY = "prd-crm-key-9c1f6a55",
}

-- Every variable of every action and environment (masked plaintext included), as one sorted text.
local function snapshot(state)
    local lines = {}
    for _, a in ipairs(state.actions) do
        for env, e in pairs(a.environments) do
            for _, v in ipairs(e.variables) do
                lines[#lines + 1] = table.concat({ a.id, env, v.name, v.value, tostring(v.masked),
                                                   tostring(v.description) }, "|")
            end
        end
    end
    table.sort(lines)
    return table.concat(lines, "\n")
end

local function with(env, extra)
    local out = {}
    for k, v in pairs(env) do out[k] = v end
    for k, v in pairs(extra or {}) do out[k] = v end
    return out
end

local function audit_records(path)
    local out = {}
    for line in (read_file(path) or ""):gmatch("[^\n]+") do out[#out + 1] = json.decode(line) end
    return out
end

local function foreign_patch(sim, action, env, name, value)
    local token = json.decode(capture("curl -s -d grant_type=client_credentials -d client_id=" .. D.client_id
        .. " -d client_secret=" .. D.client_secret .. " " .. q(sim.url .. "/oauth/token"))).access_token
    local status = sim:curl("PATCH", "/api/v2/integration/actions/" .. action .. "/environments/" .. env .. "/variables",
        { actionId = action, environmentId = env, variables = { { name = name, value = value, masked = false } } },
        { "Authorization: Bearer " .. token })
    assert.equals(200, status)
end

local function writes(sim) return sim:count("PATCH") + sim:count("PUT /api/v2/integration/actions/{actionId}/environments/{envId}/variables") end

describe("cxone revert", function()
    local sim, dir, env
    simlib.suite({ clean = "files", env = "each" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)

    local function apply(book_env, path)
        local code, out, err = cxone({ "apply", "--yes", "--json", path }, book_env or env)
        assert.equals(0, code, err)
        return assert(json.decode(out)).run_id
    end

    it("after a promotion puts every variable back as it was; audited as a revert of the run", function()
        local before = snapshot(sim:state())
        local run = apply(with(env, { CXONE_DEMO_CRM_KEY = CANARY1 }), simlib.ROOT .. "/examples/promote.lua")
        assert.are_not.equal(before, snapshot(sim:state()))
        -- the run's record: 0600, no masked value
        local rec = dir .. "/audit.jsonl.masked.json.run." .. run .. ".json"
        local text = assert(read_file(rec))
        assert.equals("600", (capture("stat -c %a " .. q(rec)):gsub("%s+$", "")))
        assert.falsy(text:find(CANARY1, 1, true))
        assert.falsy(text:find("crm-key", 1, true))
        -- masked values not supplied: refused, naming each, nothing written
        local n = writes(sim)
        local code, out, err = cxone({ "revert", run, "--yes" }, env)
        assert.equals(1, code, out)
        for name in pairs(DEMO_KEYS) do assert.matches(name, err, 1, true) end
        assert.equals(n, writes(sim))
        -- supplied: every variable back, descriptions and masked plaintext included
        code, out, err = cxone({ "revert", run, "--yes" }, with(env, DEMO_KEYS))
        assert.equals(0, code, err)
        assert.matches("Revert of run " .. run, out, 1, true)
        assert.equals(before, snapshot(sim:state()))
        for _, secret in pairs(DEMO_KEYS) do assert.falsy((out .. err):find(secret, 1, true)) end
        -- the trail: the revert's records name the run they revert, and hold no value
        local started, applied = 0, 0
        local trail = read_file(dir .. "/audit.jsonl")
        for _, r in ipairs(audit_records(dir .. "/audit.jsonl")) do
            if r.revert_of == run and r.event == "apply.started" then started = started + 1 end
            if r.revert_of == run and r.event == "apply" then applied = applied + 1 end
        end
        assert.equals(1, started)
        assert.equals(3, applied)
        for _, secret in pairs(DEMO_KEYS) do assert.falsy(trail:find(secret, 1, true)) end
        assert.falsy(trail:find(CANARY1, 1, true))
        -- reverting again: what the run wrote is gone, so it is a conflict
        code, _, err = cxone({ "revert", run, "--yes" }, with(env, DEMO_KEYS))
        assert.equals(1, code)
        assert.matches("cannot be reverted", err, 1, true)
    end)

    it("a later change to what the run wrote refuses the revert, naming it; nothing written", function()
        local path = dir .. "/plain.lua"
        write_file(path, ("return { { action = %q, tier = 'production', variables = { TIMEOUT_MS = '4000', "
            .. "NEW_FLAG = 'on' } } }"):format(A2))
        local run = apply(env, path)
        foreign_patch(sim, A2, "prod", "NEW_FLAG", "off")
        local st = snapshot(sim:state())
        local n = writes(sim)
        local code, _, err = cxone({ "revert", run, "--yes" }, env)
        assert.equals(1, code)
        assert.matches("NEW_FLAG changed since run " .. run, err, 1, true)
        assert.falsy(err:find("TIMEOUT_MS changed", 1, true))
        assert.equals(n, writes(sim))
        assert.equals(st, snapshot(sim:state()))
    end)

    it("a masked value is checked against the fingerprint recorded before the run", function()
        local path = dir .. "/m.lua"
        write_file(path, ("return { { action = %q, tier = 'staging', variables = { "
            .. "CRM_API_KEY = { value = env('K'), masked = true } } } }"):format(A1))
        apply(with(env, { K = CANARY1 }), path)
        local run2 = apply(with(env, { K = CANARY2 }), path)
        local code, _, err = cxone({ "revert", run2, "--yes" }, with(env, { CXONE_REVERT_STAGING_CRM_API_KEY = "wrong-value-123" }))
        assert.equals(1, code)
        assert.matches("do not match the recorded fingerprint in: CXONE_REVERT_STAGING_CRM_API_KEY", err, 1, true)
        assert.falsy(err:find("wrong-value-123", 1, true))
        code, _, err = cxone({ "revert", run2, "--yes" }, with(env, { CXONE_REVERT_STAGING_CRM_API_KEY = CANARY1 }))
        assert.equals(0, code, err)
        local st = sim:state()
        for _, a in ipairs(st.actions) do
            if a.id == A1 then
                for _, v in ipairs(a.environments.staging.variables) do
                    if v.name == "CRM_API_KEY" then assert.equals(CANARY1, v.value) end
                end
            end
        end
        assert.falsy(err:find(CANARY1, 1, true))
    end)

    it("reverts the run that applied a saved plan; unknown runs and unapplied plans are named", function()
        local path = dir .. "/p.lua"
        write_file(path, ("return { { action = %q, tier = 'production', variables = { TIMEOUT_MS = '1234' } } }"):format(A1))
        local before = snapshot(sim:state())
        assert.equals(2, (cxone({ "plan", "--out", dir .. "/plan.json", path }, env)))
        local code, _, err = cxone({ "revert", dir .. "/plan.json", "--yes" }, env)
        assert.equals(1, code)
        assert.matches("never applied", err, 1, true)
        assert.equals(0, (cxone({ "apply", dir .. "/plan.json" }, env)))
        assert.are_not.equal(before, snapshot(sim:state()))
        code, _, err = cxone({ "revert", dir .. "/plan.json", "--yes" }, env)
        assert.equals(0, code, err)
        assert.equals(before, snapshot(sim:state()))
        code, _, err = cxone({ "revert", "0123456789abcdef", "--yes" }, env)
        assert.equals(1, code)
        assert.matches("no record of run 0123456789abcdef", err, 1, true)
        code, _, err = cxone({ "revert", "../../etc/passwd" }, env)
        assert.equals(1, code)
        assert.matches("is not a run id", err, 1, true)
    end)

    it("--out saves the revert as a plan that cxone apply applies, audited as a revert", function()
        local path = dir .. "/p.lua"
        write_file(path, ("return { { action = %q, tier = 'staging', variables = { TIMEOUT_MS = '1234', "
            .. "CRM_API_KEY = { value = env('K'), masked = true } } } }"):format(A1))
        local before = snapshot(sim:state())
        local run = apply(with(env, { K = CANARY1 }), path)
        local keys = { CXONE_REVERT_STAGING_CRM_API_KEY = DEMO_KEYS.CXONE_REVERT_STAGING_CRM_API_KEY }
        local n = writes(sim)
        local code, out, err = cxone({ "revert", run, "--out", dir .. "/r.json" }, with(env, keys))
        assert.equals(2, code, err)
        assert.equals(n, writes(sim))
        local text = assert(read_file(dir .. "/r.json"))
        assert.equals("600", (capture("stat -c %a " .. q(dir .. "/r.json")):gsub("%s+$", "")))
        assert.falsy((text .. out .. err):find(keys.CXONE_REVERT_STAGING_CRM_API_KEY, 1, true))
        assert.equals(run, assert(json.decode(text)).revert_of)
        code, out, err = cxone({ "apply", dir .. "/r.json" }, with(env, keys))
        assert.equals(0, code, err .. out)
        assert.equals(before, snapshot(sim:state()))
        local found = false
        for _, r in ipairs(audit_records(dir .. "/audit.jsonl")) do
            if r.event == "apply.started" and r.revert_of == run then found = true end
        end
        assert.is_true(found)
        -- a revert that removes what the run created cannot be saved: it says why
        write_file(path, ("return { { action = %q, tier = 'staging', variables = { BRAND_NEW = 'x' } } }"):format(A1))
        run = apply(env, path)
        code, _, err = cxone({ "revert", run, "--out", dir .. "/r2.json" }, with(env, keys))
        assert.equals(1, code)
        assert.matches("PUT of the whole set", err, 1, true)
        assert.is_nil(read_file(dir .. "/r2.json"))
    end)

    it("on a terminal, shows the plan and asks; anything but yes writes nothing", function()
        local path = dir .. "/p.lua"
        write_file(path, ("return { { action = %q, tier = 'production', variables = { TIMEOUT_MS = '1234' } } }"):format(A1))
        local before = snapshot(sim:state())
        local run = apply(env, path)
        local function pty_revert(answer)
            local cmd = simlib.with_env(env) .. " python3 " .. q(simlib.ROOT .. "/specs/support/pty_run.py")
                .. " --expect " .. q("Type 'yes'") .. " --send " .. q(answer .. "\\n") .. " -- "
                .. simlib.cxone_cmd({ "revert", run }) .. "; echo \"exit=$?\""
            local out = capture(cmd)
            return tonumber(out:match("exit=(%d+)%s*$")), out
        end
        local n = writes(sim)
        local code, out = pty_revert("no")
        assert.equals(1, code, out)
        assert.matches('"1234" → "2500"', out, 1, true) -- the plan was shown before the question
        assert.matches("not reverted", out, 1, true)
        assert.equals(n, writes(sim))
        code, out = pty_revert("yes")
        assert.equals(0, code, out)
        assert.equals(before, snapshot(sim:state()))
    end)

    it("asks first: without a terminal it needs --yes", function()
        local path = dir .. "/p.lua"
        write_file(path, ("return { { action = %q, tier = 'production', variables = { TIMEOUT_MS = '1234' } } }"):format(A1))
        local run = apply(env, path)
        local n = writes(sim)
        local code, out, err = cxone({ "revert", run }, env)
        assert.equals(1, code, out)
        assert.matches("--yes", err, 1, true)
        assert.equals(n, writes(sim))
    end)
end)
