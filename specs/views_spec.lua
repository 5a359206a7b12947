-- cxone.transport.views: what the embedded examples answer (guard verdicts, JSON views, the
-- exporter's Prometheus text). Pure functions: no host needed.
local views = require("cxone.transport.views")
local core = require("cxone.core")

local CRM = "a1b2c3d4-e5f6-4890-abcd-ef1234567890"
local CANARY = "canary-view-value-1f2e"
local PATH = "/api/v2/integration/actions/" .. CRM .. "/environments/prod/variables"

describe("views.guard", function()
    it("lets a valid body through", function()
        local body = core.json_encode({ actionId = CRM, environmentId = "prod",
                                        variables = { { name = "A", value = "1", masked = false } } })
        assert.is_nil(views.guard(body, PATH))
    end)
    it("lists every violation, never a value", function()
        local body = core.json_encode({ actionId = "nope", environmentId = "prod",
                                        variables = { { name = "bad name", value = CANARY, masked = true } } })
        local status, answer = views.guard(body, PATH)
        assert.equal(422, status)
        local doc = core.json_decode(answer)
        assert.is_true(#doc.violations >= 2)
        assert.falsy(answer:find(CANARY, 1, true))
    end)
    it("refuses empty and non-JSON bodies, and ids that differ from the URL's", function()
        assert.equal(422, (views.guard(nil)))
        assert.equal(422, (views.guard("[1,2")))
        local body = core.json_encode({ actionId = CRM, environmentId = "dev",
                                        variables = { { name = "A", value = "1", masked = false } } })
        local status, answer = views.guard(body, PATH)
        assert.equal(422, status)
        assert.truthy(answer:find("url_mismatch", 1, true))
        assert.is_nil(views.guard(body)) -- without a path there is nothing to compare
    end)
end)

describe("views.plan and views.drift", function()
    it("never show a masked value", function()
        local plan = { action = CRM, tier = { name = "production", id = "prod" }, baseline = { name = "staging" },
                       changes = 1, counts = { add = 1 },
                       items = { { name = "K", kind = "add", masked = true, new = CANARY },
                                 { name = "T", kind = "change", masked = false, old = "1", new = "2" } } }
        local out = views.plan(plan)
        assert.falsy(out:find(CANARY, 1, true))
        local doc = core.json_decode(out)
        assert.equal("staging", doc.baseline)
        assert.equal("2", doc.items[2].new)
        local rep = { action = CRM, baseline = "staging", target = "production", items = {
            { variable = "K", drift_type = "masked_mismatch", baseline = CANARY, baseline_masked = true,
              target = "x", target_masked = false } } }
        local d = views.drift(rep)
        assert.falsy(d:find(CANARY, 1, true))
        assert.equal("***", core.json_decode(d).items[1].baseline)
    end)
end)

describe("views.metrics", function()
    it("renders every drift type per check, the error counter and the timestamp", function()
        local st = { ts = 1700000000.5, results = { { action = CRM, baseline = "staging", target = "production",
                                                      counts = { value_mismatch = 2, unverifiable = 1 } } } }
        local text = views.metrics(st, 3)
        assert.truthy(text:find('cxone_drift_items{action="' .. CRM .. '",baseline="staging",target="production",type="value_mismatch"} 2', 1, true))
        assert.truthy(text:find('type="new_variable"} 0', 1, true))
        assert.truthy(text:find("cxone_check_errors_total 3", 1, true))
        assert.truthy(text:find("cxone_last_check_timestamp_seconds 1700000000.500", 1, true))
    end)
    it("escapes label values", function()
        local text = views.metrics({ results = { { action = 'a"b\\c', baseline = "x", target = "y", counts = {} } } }, 0)
        assert.truthy(text:find('action="a\\"b\\\\c"', 1, true))
    end)
    it("parses the checks list", function()
        local c = views.parse_checks(CRM .. ":staging:production, bad, x:y:z")
        assert.equal(2, #c)
        assert.equal("production", c[1].target)
    end)
end)
