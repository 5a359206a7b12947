-- drift: every drift type, masked values on both sides, flag flips, empty lists, 50 vs 50,
-- and masked plaintext never in an item.
local core = require("cxone.core")
local cxone = require("cxone")

local SECRET = "CANARY-secret-4b1e-plaintext"

local function v(name, value, masked) return { name = name, value = value, masked = masked or false } end

local function by_name(items)
    local m = {}
    for _, it in ipairs(items) do m[it.variable] = it end
    return m
end

describe("drift", function()
    it("finds nothing between identical lists", function()
        local a = { v("A", "1"), v("B", "2") }
        assert.same({}, core.drift(a, { v("B", "2"), v("A", "1") }))
    end)

    it("reports value_mismatch with both plain values", function()
        local it1 = core.drift({ v("A", "1") }, { v("A", "2") })[1]
        assert.same({ variable = "A", drift_type = "value_mismatch", baseline = "1", target = "2",
            baseline_masked = false, target_masked = false }, it1)
    end)

    it("reports new_variable and missing_variable", function()
        local m = by_name(core.drift({ v("OLD", "x") }, { v("NEW", "y") }))
        assert.equal("missing_variable", m.OLD.drift_type)
        assert.equal("x", m.OLD.baseline)
        assert.is_nil(m.OLD.target)
        assert.equal("new_variable", m.NEW.drift_type)
        assert.equal("y", m.NEW.target)
        assert.is_nil(m.NEW.baseline)
    end)

    it("reports a masked flag flip as masked_mismatch, showing the masked side as ***", function()
        local m = by_name(core.drift({ v("K", SECRET, true) }, { v("K", SECRET, false) }))
        assert.equal("masked_mismatch", m.K.drift_type)
        assert.equal("***", m.K.baseline)
        assert.equal(SECRET, m.K.target) -- the target side is plain, so it may show
        assert.is_true(m.K.baseline_masked)
        assert.is_false(m.K.target_masked)
    end)

    it("calls redacted masked values unverifiable, never a false value_mismatch", function()
        local items = core.drift({ v("K", "***", true) }, { v("K", "***", true) })
        assert.equal(1, #items)
        assert.equal("unverifiable", items[1].drift_type)
        -- one side redacted, the other a desired plaintext: still unverifiable
        items = core.drift({ v("K", "***", true) }, { v("K", SECRET, true) })
        assert.equal("unverifiable", items[1].drift_type)
        assert.is_nil(tostring(items[1].target):find(SECRET, 1, true))
    end)

    it("compares masked plaintexts when both sides have them, showing ***", function()
        assert.same({}, core.drift({ v("K", SECRET, true) }, { v("K", SECRET, true) }))
        local items = core.drift({ v("K", SECRET, true) }, { v("K", SECRET .. "2", true) })
        assert.equal("value_mismatch", items[1].drift_type)
        assert.equal("***", items[1].baseline)
        assert.equal("***", items[1].target)
    end)

    it("never puts a masked plaintext in any item or rendering (canary)", function()
        local base = { v("A", SECRET, true), v("B", SECRET, true), v("C", SECRET, true), v("D", SECRET, true) }
        local target = { v("A", SECRET .. "x", true), v("B", "***", true), v("E", SECRET, true), v("D", SECRET, false) }
        local items = core.drift(base, target)
        for _, it in ipairs(items) do
            if it.variable ~= "D" then -- D's target is declared plain by its owner
                assert.is_nil(tostring(it.baseline):find(SECRET, 1, true))
                assert.is_nil(tostring(it.target):find(SECRET, 1, true))
            end
        end
        local report = cxone.drift(base, { v("A", SECRET .. "x", true), v("B", "***", true), v("E", SECRET, true) })
        assert.is_nil(tostring(report):find(SECRET, 1, true))
    end)

    it("handles empty lists on either side", function()
        assert.same({}, core.drift({}, {}))
        assert.equal("new_variable", core.drift({}, { v("A", "1") })[1].drift_type)
        assert.equal("missing_variable", core.drift({ v("A", "1") }, {})[1].drift_type)
    end)

    it("compares 50 against 50 completely, sorted by name", function()
        local a, b = {}, {}
        for i = 50, 1, -1 do
            local name = ("VAR_%02d"):format(i)
            a[#a + 1] = v(name, "v" .. i)
            b[#b + 1] = v(name, i % 5 == 0 and "changed" or "v" .. i)
        end
        local items = core.drift(a, b)
        assert.equal(10, #items)
        for i = 2, #items do assert.is_true(items[i - 1].variable < items[i].variable) end
        for _, it in ipairs(items) do assert.equal("value_mismatch", it.drift_type) end
    end)

    it("returns a failure for malformed lists and duplicates", function()
        local ok, msg, code = core.drift({ { value = "1" } }, {})
        assert.is_nil(ok); assert.equal("invalid", code); assert.matches("baseline%[1%]", msg)
        ok, msg, code = core.drift({}, { v("A", "1"), v("A", "2") })
        assert.is_nil(ok); assert.equal("invalid", code); assert.matches("twice", msg)
        ok, _, code = core.drift({}, { "x" })
        assert.is_nil(ok); assert.equal("invalid", code)
        ok, _, code = core.drift({ v("A", {}) }, {})
        assert.is_nil(ok); assert.equal("invalid", code)
    end)

    it("raises argument errors for non-tables", function()
        assert.has_error(function() core.drift("a", {}) end)
        assert.has_error(function() core.drift({}, nil) end)
        assert.has_error(function() cxone.drift({}, 5) end)
    end)

    it("renders a readable report", function()
        local r = cxone.drift({ v("A", "1"), v("K", "***", true), v("GONE", "x") },
            { v("A", "2"), v("K", "***", true), v("NEW", "y") }, { baseline = "staging", target = "production" })
        local text = tostring(r)
        assert.matches("drift staging → production", text, 1, true)
        assert.matches('~ A     "1" → "2"', text, 1, true)
        assert.matches("? K", text, 1, true)
        assert.matches("4 differences", text, 1, true)
        assert.equal(4, r:count())
        assert.equal(1, r:counts().unverifiable)
        assert.matches("no drift", tostring(cxone.drift({}, {})))
    end)

    describe("ignore, expect_differ and proofs of masked values", function()
        local function proof(map)
            return function(name)
                local p = map[name]
                if type(p) == "table" then return p end
                return nil, p or "no record"
            end
        end
        local base = { v("A", "1"), v("B", "x"), v("K", "***", true), v("GONE", "g") }
        local target = { v("A", "2"), v("B", "y"), v("K", "***", true) }

        it("ignored variables never count; expected ones count only if present on one side", function()
            local r = cxone.drift(base, target, nil, { ignore = { "A" }, expect_differ = { "B", "GONE" } })
            local m = by_name(r.items)
            assert.is_nil(m.A)
            assert.is_nil(m.B)
            assert.equal("missing_variable", m.GONE.drift_type) -- absence is drift even when expected to differ
            assert.equal("unverifiable", m.K.drift_type)
            assert.equal(2, r:count())
            local acc = by_name(r.accepted)
            assert.equal("ignore", acc.A.accepted)
            assert.equal("expect_differ", acc.B.accepted)
            assert.matches("(1 ignored, 1 expected to differ)", tostring(r), 1, true)
            assert.equal(2, r:totable().drift)
        end)

        it("equal fingerprints trusted by ETag: no drift; different ones: value_mismatch", function()
            local fp = "v2:" .. ("a"):rep(64)
            local r = cxone.drift({ v("K", "***", true) }, { v("K", "***", true) }, nil, { proofs = {
                baseline = proof({ K = { fp = fp, basis = "etag" } }), target = proof({ K = { fp = fp, basis = "etag" } }) } })
            assert.equal(0, r:count())
            assert.same({ { variable = "K", basis = "etag" } }, r.same)
            r = cxone.drift({ v("K", "***", true) }, { v("K", "***", true) }, nil, { proofs = {
                baseline = proof({ K = { fp = fp, basis = "etag" } }),
                target = proof({ K = { fp = "v2:" .. ("b"):rep(64), basis = "etag" } }) } })
            assert.equal(1, r:count())
            assert.equal("value_mismatch", r.items[1].drift_type)
            assert.equal("***", r.items[1].baseline)
        end)

        it("a ledger-only proof is 'assumed equal, written by run ...', unverifiable when strict", function()
            local fp = "v2:" .. ("c"):rep(64)
            local proofs = { baseline = proof({ K = { fp = fp, basis = "ledger", run = "run1" } }),
                             target = proof({ K = { fp = fp, basis = "ledger", run = "run2" } }) }
            local r = cxone.drift({ v("K", "***", true) }, { v("K", "***", true) }, nil, { proofs = proofs })
            assert.equal(0, r:count())
            assert.matches("assumed equal, written by run run1 and run run2", tostring(r), 1, true)
            r = cxone.drift({ v("K", "***", true) }, { v("K", "***", true) }, nil, { proofs = proofs, strict = true })
            assert.equal(1, r:count())
            assert.equal("unverifiable", r.items[1].drift_type)
            assert.matches("--strict", tostring(r), 1, true)
        end)

        it("a side without a proof stays unverifiable, saying why", function()
            local r = cxone.drift({ v("K", "***", true) }, { v("K", "***", true) }, nil, { proofs = {
                baseline = proof({ K = { fp = "v2:x", basis = "etag" } }), target = proof({ K = "prod changed since" }) } })
            assert.equal("unverifiable", r.items[1].drift_type)
            assert.matches("prod changed since", tostring(r), 1, true)
        end)
    end)
end)
