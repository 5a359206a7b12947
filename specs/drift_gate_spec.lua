-- `cxone drift` as a CI gate, run as a child process against cxone-sim: masked values written by
-- us compare equal across tiers (keyed fingerprints that do not depend on the action or tier),
-- trusted while the ETag is the one our write produced; without ETags the report says it relied
-- on our ledger, and --strict makes that unverifiable; --ignore and --expect-differ (and the
-- playbook's lists); `cxone drift PLAYBOOK`; exit codes 0 same, 2 drift, 1 error; --json.
-- Lua 5.1-compatible (the spec runs under LuaJIT and 5.3 too; the CLI is always lua5.4).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1 = D.actions[1]
local q = simlib.shquote
local cxone, sim_env, write_file, read_file = simlib.cxone, simlib.sim_env, simlib.write_file, simlib.read_file

local CANARY = "gate-canary-masked-5e1d0a"   -- a masked value: never printed
local OTHER = "gate-other-masked-77c2b9"     -- another one
-- the demo's staging and production differ in these (not what these tests are about)
local DEMO_DIFF = { "--ignore", "CRM_BASE_URL", "--ignore", "FEATURE_FUZZY_MATCH", "--ignore", "TIMEOUT_MS" }

local function args(...)
    local out = {}
    for _, part in ipairs({ ... }) do
        if type(part) == "table" then
            for _, a in ipairs(part) do out[#out + 1] = a end
        else
            out[#out + 1] = part
        end
    end
    return out
end

local function no_secret(...)
    for _, text in ipairs({ ... }) do
        assert.is_nil(text:find(CANARY, 1, true), "the masked value leaked")
        assert.is_nil(text:find(OTHER, 1, true), "the masked value leaked")
        assert.is_nil(text:find(D.client_secret, 1, true), "the client secret leaked")
    end
end

-- Two steps (no baseline) writing the same masked value KEY (from $GATE_KEY) and TIMEOUT_MS.
local BOOK = ([[
return {
    { action = %q, tier = "staging", variables = { TIMEOUT_MS = "3000", CRM_API_KEY = { value = env("GATE_KEY"), masked = true } } },
    { action = %q, tier = "production", variables = { TIMEOUT_MS = "3000", CRM_API_KEY = { value = env("GATE_KEY"), masked = true } } },
}
]]):format(A1, A1)

describe("cxone drift as a CI gate", function()
    local sim, dir, env
    simlib.suite({ files = { ["book.lua"] = BOOK }, clean = { "audit.jsonl", "audit.jsonl.masked.json" }, env = "each" },
        function(s) sim, dir, env = s.sim, s.dir, s.env end)
    before_each(function() env.GATE_KEY = CANARY end)

    local function apply(e)
        local code, out, err = cxone({ "apply", "--yes", "--json", dir .. "/book.lua" }, e or env)
        assert.equals(0, code, err)
        return assert(json.decode(out))
    end

    it("the same masked value written by us to staging and production: exit 0 (ETags vouch)", function()
        -- before our write nothing vouches for either side
        local code, out, err = cxone(args("drift", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(2, code, err)
        assert.matches("? CRM_API_KEY", out, 1, true)
        apply()
        code, out, err = cxone(args("drift", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(0, code, out .. err)
        assert.matches("= CRM_API_KEY", out, 1, true)
        assert.matches("ETags unchanged since", out, 1, true)
        assert.matches("no drift (2 ignored)", out, 1, true) -- TIMEOUT_MS is equal now
        no_secret(out, err)
        -- without --ignore the demo's real differences are drift
        code = cxone({ "drift", A1, "staging", "production" }, env)
        assert.equals(2, code)
        -- --json: a document, CRM_API_KEY judged equal on the ETag's word
        code, out = cxone(args("drift", "--json", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(0, code)
        local doc = assert(json.decode(out))
        assert.is_true(doc.ok)
        assert.equals(0, doc.drift)
        assert.same({ { variable = "CRM_API_KEY", basis = "etag" } }, doc.same)
        assert.equals(2, #doc.accepted)
        assert.equals("ignore", doc.accepted[1].accepted)
    end)

    it("different masked values: value_mismatch (exit 2), accepted with --expect-differ", function()
        apply()
        local e2 = sim_env(sim, dir)
        e2.GATE_KEY = OTHER
        write_file(dir .. "/prod.lua", ([[return { { action = %q, tier = "production",
            variables = { CRM_API_KEY = { value = env("GATE_KEY"), masked = true } } } }]]):format(A1))
        assert.equals(0, (cxone({ "apply", "--yes", dir .. "/prod.lua" }, e2)))
        local code, out, err = cxone(args("drift", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(2, code, err)
        assert.matches("~ CRM_API_KEY", out, 1, true)
        assert.matches("masked values differ", out, 1, true)
        code, out = cxone(args("drift", DEMO_DIFF, "--expect-differ", "CRM_API_KEY", A1, "staging", "production"), env)
        assert.equals(0, code, out)
        assert.matches("expected to differ", out, 1, true)
        no_secret(out, err)
    end)

    it("a write by someone else (ETag changed) leaves the masked value unverifiable", function()
        apply()
        -- another run without our ledger writes another value to production
        local other = sim_env(sim, dir)
        other.GATE_KEY = OTHER
        other.CXONE_AUDIT_LOG = dir .. "/other-audit.jsonl"
        write_file(dir .. "/other.lua", ([[return { { action = %q, tier = "production",
            variables = { CRM_API_KEY = { value = env("GATE_KEY"), masked = true } } } }]]):format(A1))
        assert.equals(0, (cxone({ "apply", "--yes", dir .. "/other.lua" }, other)))
        local code, out = cxone(args("drift", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(2, code)
        assert.matches("? CRM_API_KEY", out, 1, true)
        assert.matches("prod changed since our last write", out, 1, true)
    end)

    it("without ETags: 'assumed equal, written by run ...'; --strict makes it unverifiable", function()
        assert.equals(200, (sim:post_json("/_sim/config", { etag = false })))
        local doc = apply()
        local code, out, err = cxone(args("drift", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(0, code, out .. err)
        assert.matches("assumed equal, written by run " .. doc.run_id, out, 1, true)
        code, out = cxone(args("drift", "--json", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(0, code)
        local d = assert(json.decode(out))
        assert.equals("ledger", d.same[1].basis)
        assert.matches(doc.run_id, d.same[1].runs, 1, true)
        code, out = cxone(args("drift", "--strict", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(2, code)
        assert.matches("? CRM_API_KEY", out, 1, true)
        assert.matches("--strict", out, 1, true)
        -- the playbook form too
        code, out = cxone({ "drift", dir .. "/book.lua" }, env)
        assert.equals(0, code, out)
        assert.matches("assumed equal, written by run " .. doc.run_id, out, 1, true)
        code = cxone({ "drift", "--strict", dir .. "/book.lua" }, env)
        assert.equals(2, code)
    end)

    it("ledger entries of an older version (fingerprints with action and tier) are unknown, not a crash", function()
        apply()
        local ledger = dir .. "/audit.jsonl.masked.json"
        local text = assert(read_file(ledger))
        -- the same entries with fingerprints as the old derivation wrote them (bare hex)
        write_file(ledger, (text:gsub('"v2:(%x+)"', '"%1"')))
        local code, out, err = cxone(args("drift", DEMO_DIFF, A1, "staging", "production"), env)
        assert.equals(2, code, err)
        assert.matches("predates comparable fingerprints", out, 1, true)
        -- planning treats them as unknown too: the masked value is sent again
        code, out = cxone({ "plan", dir .. "/book.lua" }, env)
        assert.equals(2, code)
        assert.matches("* CRM_API_KEY", out, 1, true)
    end)

    it("drift PLAYBOOK: 0 when every target is what the playbook produces, 2 naming what is not", function()
        local code, out = cxone({ "drift", dir .. "/book.lua" }, env)
        assert.equals(2, code) -- not applied yet
        apply()
        code, out = cxone({ "drift", dir .. "/book.lua" }, env)
        assert.equals(0, code, out)
        assert.matches("step 2: drift playbook → production", out, 1, true)
        assert.matches("Drift: none in 2 steps.", out, 1, true)
        code, out = cxone({ "drift", "--format", "markdown", dir .. "/book.lua" }, env)
        assert.equals(0, code)
        assert.matches("\n#### Step 2: Drift playbook → production (`" .. A1 .. "`)\n", out, 1, true)
        assert.matches("| = | `CRM_API_KEY` | `***` | `***` | equal", out, 1, true)
        -- the masked value in the playbook changed: drift on both steps, the value never shown
        local e = sim_env(sim, dir)
        e.GATE_KEY = OTHER
        local err
        code, out, err = cxone({ "drift", dir .. "/book.lua" }, e)
        assert.equals(2, code)
        assert.matches("~ CRM_API_KEY", out, 1, true)
        assert.matches("Drift: 2 differences in 2 of 2 steps.", out, 1, true)
        no_secret(out, err)
        -- someone changes a plain value on production
        write_file(dir .. "/t.lua", ([[return { { action = %q, tier = "production", variables = { TIMEOUT_MS = "9999" } } }]]):format(A1))
        assert.equals(0, (cxone({ "apply", "--yes", dir .. "/t.lua" }, env)))
        code, out = cxone({ "drift", "--json", dir .. "/book.lua" }, env)
        assert.equals(2, code)
        local doc = assert(json.decode(out)) -- stdout holds only the document
        assert.is_true(doc.ok)
        assert.equals(1, doc.drift)
        assert.equals(0, doc.steps[1].drift)
        assert.equals("TIMEOUT_MS", doc.steps[2].items[1].variable)
        assert.equals("9999", doc.steps[2].items[1].target)
        code = cxone({ "drift", "--ignore", "TIMEOUT_MS", dir .. "/book.lua" }, env)
        assert.equals(0, code)
    end)

    it("drift PLAYBOOK with a baseline: the baseline's values merged with the step's; playbook lists", function()
        write_file(dir .. "/based.lua", ([[
return {
    drift = { ignore = { "FEATURE_FUZZY_MATCH" } },
    { action = %q, tier = "production", baseline = "staging",
      variables = { CRM_BASE_URL = "https://crm.example.internal/api/v3" },
      drift = { expect_differ = { "CRM_API_KEY" } } },
}
]]):format(A1))
        -- staging's TIMEOUT_MS (3000) is what production should hold; it holds 2500
        local code, out = cxone({ "drift", dir .. "/based.lua" }, env)
        assert.equals(2, code, out)
        assert.matches("staging + playbook → production", out, 1, true)
        assert.matches('~ TIMEOUT_MS           "3000" → "2500"', out, 1, true)
        assert.matches("FEATURE_FUZZY_MATCH", out, 1, true) -- listed, but ignored
        assert.matches("1 difference: 1 changed (1 ignored, 1 expected to differ)", out, 1, true)
        write_file(dir .. "/t.lua", ([[return { { action = %q, tier = "production", variables = { TIMEOUT_MS = "3000" } } }]]):format(A1))
        assert.equals(0, (cxone({ "apply", "--yes", dir .. "/t.lua" }, env)))
        code, out = cxone({ "drift", dir .. "/based.lua" }, env)
        assert.equals(0, code, out)
        -- a drift list that is not a list of names is refused before any request
        write_file(dir .. "/badlist.lua", ([[return { drift = { ignore = "X" }, { action = %q, tier = "staging", variables = {} } }]]):format(A1))
        local err
        code, _, err = cxone({ "drift", dir .. "/badlist.lua" }, env)
        assert.equals(1, code)
        assert.matches("drift.ignore must be a list of variable names", err, 1, true)
    end)

    it("errors exit 1 (JSON: {ok = false}), never 2", function()
        local missing = "0f8e7d6c-5b4a-4392-8170-6a5b4c3d2e10" -- a UUID the sim does not know
        write_file(dir .. "/nf.lua", ([[return { { action = %q, tier = "staging", variables = { X = "1" } } }]]):format(missing))
        local code, out, err = cxone({ "drift", "--json", dir .. "/nf.lua" }, env)
        assert.equals(1, code)
        local doc = assert(json.decode(out))
        assert.is_false(doc.ok)
        assert.equals("not_found", doc.code)
        assert.matches("tried GET " .. sim.url .. "/api/v2/integration/actions/" .. missing
            .. "/environments/staging/variables", err, 1, true)
        code, out = cxone({ "drift", "--json", missing, "staging", "production" }, env)
        assert.equals(1, code)
        assert.is_false(assert(json.decode(out)).ok)
        code = cxone({ "drift", dir .. "/absent.lua" }, env)
        assert.equals(1, code)
    end)
end)
