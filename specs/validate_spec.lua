-- validate: every rule with a violating case and a passing edge case; all faults reported;
-- no message ever carries a value.
local core = require("cxone.core")
local cxone = require("cxone")

local UUID = "a1b2c3d4-e5f6-4890-abcd-ef1234567890"
local CANARY = "CANARY-7f3e9c1d-value"

local function var(name, value, masked, extra)
    local v = { name = name, value = value, masked = masked or false }
    for k, x in pairs(extra or {}) do v[k] = x end
    return v
end

local function payload(vars, over)
    local p = { actionId = UUID, environmentId = "prod", variables = vars or { var("TIMEOUT_MS", "3000") } }
    for k, v in pairs(over or {}) do p[k] = v end
    return p
end

-- Returns the violations keyed "path code" for easy assertions.
local function violations(p, opts)
    local ok, list, code = core.validate(p, opts)
    assert.is_nil(ok)
    assert.equal("invalid", code)
    assert.is_table(list)
    local set = {}
    for _, v in ipairs(list) do
        assert.is_string(v.path); assert.is_string(v.code); assert.is_string(v.message)
        set[v.path .. " " .. v.code] = v.message
    end
    return set, list
end

local function valid(p, opts)
    local ok, list = core.validate(p, opts)
    assert.is_true(ok, list and tostring(list))
end

describe("validate", function()
    it("accepts a well-formed payload, including the seed's example", function()
        valid(payload({
            var("API_KEY", "sk_live_abc123", true, { description = "Scoped override for prod" }),
            var("TIMEOUT_MS", "3000", false),
        }))
    end)

    describe("rule 1: actionId", function()
        it("must be present", function()
            local p = payload(); p.actionId = nil
            assert.truthy(violations(p)["actionId required"])
        end)
        it("must be a string", function()
            assert.truthy(violations(payload(nil, { actionId = 42 }))["actionId type"])
        end)
        it("must be an 8-4-4-4-12 hex UUID", function()
            for _, bad in ipairs({ "a1b2c3d4-e5f6-7890-abcd-ef123456789", "a1b2c3d4e5f67890abcdef1234567890",
                "g1b2c3d4-e5f6-7890-abcd-ef1234567890", "a1b2c3d4-e5f6-7890-abcd-ef1234567890\n",
                " a1b2c3d4-e5f6-7890-abcd-ef1234567890", "", "../../admin" }) do
                assert.truthy(violations(payload(nil, { actionId = bad }))["actionId uuid"], bad)
            end
        end)
        it("accepts upper- and lower-case hex", function()
            valid(payload(nil, { actionId = "A1B2C3D4-E5F6-7890-ABCD-EF1234567890" }))
        end)
    end)

    describe("rule 2: environmentId", function()
        it("must be one of the tier matrix's ids", function()
            local set = violations(payload(nil, { environmentId = "production" }))
            assert.matches("dev, staging, prod", set["environmentId environment"], 1, true)
        end)
        it("accepts each id", function()
            for _, e in ipairs({ "dev", "staging", "prod" }) do valid(payload(nil, { environmentId = e })) end
        end)
        it("follows a replaced matrix", function()
            local m = cxone.tiers.new({ { name = "qa", id = "qa" }, { name = "live", id = "live" } })
            valid(payload(nil, { environmentId = "qa" }), { environments = m:ids() })
            assert.truthy(violations(payload(nil, { environmentId = "prod" }), { environments = m:ids() })
                ["environmentId environment"])
        end)
        it("must be present", function()
            local p = payload(); p.environmentId = nil
            assert.truthy(violations(p)["environmentId required"])
        end)
    end)

    describe("rule 3: variables count", function()
        local function many(n, prefix)
            local vars = {}
            for i = 1, n do vars[i] = var((prefix or "V") .. i, "v" .. i) end
            return vars
        end
        it("accepts exactly 50", function() valid(payload(many(50))) end)
        it("rejects 51", function()
            assert.matches("51 variables", violations(payload(many(51)))["variables too_many"])
        end)
        it("counts the environment after the merge when existing names are given", function()
            -- 30 new + 25 existing (5 of them overlap) = 50: fine
            local existing = {}
            for i = 26, 50 do existing[#existing + 1] = "V" .. i end
            valid(payload(many(30)), { existing = existing })
            -- one more existing name that does not overlap: 51
            existing[#existing + 1] = "OTHER"
            assert.matches("after the merge the environment would hold 51",
                violations(payload(many(30)), { existing = existing })["variables too_many"])
        end)
        it("has a configurable limit", function()
            valid(payload(many(3)), { max_variables = 3 })
            assert.truthy(violations(payload(many(4)), { max_variables = 3 })["variables too_many"])
        end)
        it("must be a list", function()
            assert.truthy(violations(payload({ [1] = var("A", "1"), [3] = var("B", "2") }))["variables not_sequence"])
            assert.truthy(violations(payload({ var("A", "1"), extra = true }))["variables not_sequence"])
            assert.truthy(violations(payload(nil, { variables = "A=1" }))["variables type"])
            local p = payload(); p.variables = nil
            assert.truthy(violations(p)["variables required"])
        end)
        it("accepts an empty list", function() valid(payload({})) end)
    end)

    describe("rule 4: entries", function()
        it("names match ^[A-Z_][A-Z0-9_]*$", function()
            for _, bad in ipairs({ "api_key", "1KEY", "KEY-NAME", "KEY NAME", "", "KÉY" }) do
                assert.truthy(violations(payload({ var(bad, "v") }))["variables[1].name name_pattern"], bad)
            end
            for _, good in ipairs({ "_", "A", "_KEY_1", "K9" }) do valid(payload({ var(good, "v") })) end
        end)
        it("name must be a string and present", function()
            assert.truthy(violations(payload({ { value = "v", masked = false } }))["variables[1].name required"])
            assert.truthy(violations(payload({ var(7, "v") }))["variables[1].name type"])
        end)
        it("value at most 1024 bytes: 1024 passes, 1025 fails", function()
            valid(payload({ var("V", ("x"):rep(1024)) }))
            assert.matches("1025 bytes", violations(payload({ var("V", ("x"):rep(1025)) }))["variables[1].value too_long"])
        end)
        it("value is valid UTF-8 without NUL", function()
            valid(payload({ var("V", "café – ünïcode ✓ 😀") }))
            assert.truthy(violations(payload({ var("V", "caf\233") }))["variables[1].value utf8"])
            assert.truthy(violations(payload({ var("V", "\237\160\128") }))["variables[1].value utf8"]) -- surrogate
            assert.truthy(violations(payload({ var("V", "\192\175") }))["variables[1].value utf8"]) -- overlong
            assert.truthy(violations(payload({ var("V", "a\0b") }))["variables[1].value nul"])
        end)
        it("value must be a string and present", function()
            assert.truthy(violations(payload({ var("V", 3000) }))["variables[1].value type"])
            assert.truthy(violations(payload({ { name = "V", masked = false } }))["variables[1].value required"])
        end)
        it("masked must be a boolean and present", function()
            assert.truthy(violations(payload({ { name = "V", value = "v", masked = "true" } }))["variables[1].masked type"])
            assert.truthy(violations(payload({ { name = "V", value = "v" } }))["variables[1].masked required"])
        end)
        it("description is an optional string", function()
            valid(payload({ var("V", "v", false, { description = "why" }) }))
            assert.truthy(violations(payload({ var("V", "v", false, { description = 5 }) }))["variables[1].description type"])
        end)
        it("an entry must be a table", function()
            assert.truthy(violations(payload({ "V=1" }))["variables[1] type"])
        end)
    end)

    describe("rule 5: unique names", function()
        it("rejects a repeated name and says where it first appeared", function()
            local set = violations(payload({ var("A", "1"), var("B", "2"), var("A", "3") }))
            assert.matches("variables%[1%]", set["variables[3].name duplicate"])
        end)
        it("is not fooled by long (non-interned) names", function()
            local long = ("L"):rep(100)
            assert.truthy(violations(payload({ var(long, "1"), var(long, "2") }))["variables[2].name duplicate"])
        end)
    end)

    describe("rule 6: unknown keys", function()
        it("rejects a typo such as maskd", function()
            local set = violations(payload({ { name = "API_KEY", value = "secret-value", maskd = true, masked = false } }))
            assert.matches("maskd", set["variables[1].maskd unknown_key"])
        end)
        it("rejects unknown top-level keys", function()
            assert.truthy(violations(payload(nil, { enviromentId = "prod" }))["enviromentId unknown_key"])
        end)
    end)

    describe("rule 7: injection characters", function()
        it("rejects each of ; | & $ ` \\ ' \"", function()
            for c in (";|&$`\\'\""):gmatch(".") do
                assert.truthy(violations(payload({ var("V", "a" .. c .. "b") }))["variables[1].value forbidden_char"], c)
            end
        end)
        it("passes everything else printable", function()
            valid(payload({ var("V", "postgresql://db.internal:5432/main?x=1#frag ~!@%^*()-_=+[]{}<>,./?") }))
        end)
        it("has a configurable set", function()
            valid(payload({ var("V", "a;b") }), { forbidden = "#" })
            assert.truthy(violations(payload({ var("V", "a#b") }), { forbidden = "#" })["variables[1].value forbidden_char"])
        end)
    end)

    describe("rule 8: secrets", function()
        it("masked values need at least 8 bytes: 8 passes, 7 fails", function()
            valid(payload({ var("S", "12345678", true) }))
            assert.truthy(violations(payload({ var("S", "1234567", true) }))["variables[1].value secret_too_short"])
        end)
        it("plain values may be short", function() valid(payload({ var("S", "1", false) })) end)
    end)

    it("reports every fault of a payload, not just the first", function()
        local p = {
            actionId = "not-a-uuid", environmentId = "qa",
            variables = { var("lower", "a;b"), var("S", "short", true), var("S", "x", false, { maskd = 1 }) },
        }
        local set, list = violations(p)
        for _, key in ipairs({ "actionId uuid", "environmentId environment", "variables[1].name name_pattern",
            "variables[1].value forbidden_char", "variables[2].value secret_too_short",
            "variables[3].name duplicate", "variables[3].maskd unknown_key" }) do
            assert.truthy(set[key], key)
        end
        assert.equal(7, #list)
        -- tostring renders one line per violation
        local text = tostring(list)
        local n = 0
        for _ in text:gmatch("[^\n]+") do n = n + 1 end
        assert.equal(#list, n)
    end)

    it("never puts a value in a message, path or code (canary)", function()
        local p = payload({
            var("A", CANARY .. ";", true), var("B", CANARY .. "`", false), var("C", CANARY .. "\0", true),
            var("D", CANARY .. ("x"):rep(1100), true), var("lower", CANARY .. "\255", false),
            { name = "E", value = CANARY, masked = CANARY },
        }, { actionId = CANARY, environmentId = CANARY, [CANARY] = true })
        local _, list = core.validate(p)
        assert.is_true(#list >= 8)
        for _, v in ipairs(list) do
            assert.is_nil(v.message:find(CANARY, 1, true), v.message)
            assert.is_nil(v.path:find(CANARY, 1, true), v.path)
        end
        assert.is_nil(tostring(list):find(CANARY, 1, true))
    end)

    it("does not name a masked value's forbidden character", function()
        local _, list = core.validate(payload({ var("S", "abcdefgh|", true) }))
        assert.matches("masked", list[1].message)
        assert.is_nil(list[1].message:find("contains |", 1, true))
    end)

    describe("malformed input never crashes", function()
        it("raises argument errors for a non-table payload or options", function()
            for _, bad in ipairs({ "x", 1, true }) do
                assert.has_error(function() core.validate(bad) end)
            end
            assert.has_error(function() core.validate() end)
            assert.has_error(function() core.validate({}, "x") end)
            assert.has_error(function() core.validate({}, { max_variables = "50" }) end,
                "bad argument #2 to 'validate' (option 'max_variables' must be an integer, got string)")
            assert.has_error(function() core.validate({}, { existing = 5 }) end)
        end)
        it("survives cycles, deep nesting, huge strings, binary junk and odd keys", function()
            local cyc = { name = "A", value = "v", masked = false }
            cyc.self = cyc
            local deep = {}
            local t = deep
            for _ = 1, 10000 do t.x = {}; t = t.x end
            local junk = {}
            for i = 1, 2000 do junk[i] = string.char(i % 256) end
            local p = {
                actionId = { cyc }, environmentId = deep,
                variables = { cyc, deep, { name = table.concat(junk), value = ("\255"):rep(1048576), masked = false },
                    { [cyc] = 1, [1.5] = 2, [true] = 3 }, function() end, coroutine.create(function() end) },
            }
            p[p] = p
            local ok, list = core.validate(p)
            assert.is_nil(ok)
            assert.is_true(#list > 5)
        end)
        it("caps an enormous number of violations", function()
            local vars = {}
            for i = 1, 5000 do vars[i] = "junk" end
            local _, list = core.validate(payload(vars))
            assert.is_true(#list <= 1000)
            assert.equal("too_many_violations", list[#list].code)
        end)
        it("ignores metatables (raw access only)", function()
            local entry = setmetatable({}, { __index = function() error("metamethod called") end })
            local _, list = core.validate(payload({ entry }))
            assert.truthy(#list >= 3)
        end)
    end)

    it("is wrapped by cxone.validate with the tier matrix", function()
        local m = cxone.tiers.new({ { name = "qa", id = "qa" } })
        assert.is_true(cxone.validate(payload(nil, { environmentId = "qa" }), { tiers = m }))
        assert.has_error(function() cxone.validate("x") end)
    end)
end)
