-- cxone export: a playbook reproducing what is deployed (round trip through cxone plan: 0
-- changes), values from a hostile server escaped as literals, masked values never exported,
-- the list route and its absence, --json. Runs the real CLI against cxone-sim.
-- Lua 5.1-compatible (the spec also runs under LuaJIT and 5.3; the CLI is always lua5.4).
local json = require("cjson.safe")
local simlib = require("support.sim")
local D = simlib.DEMO
local A1 = D.actions[1]
local q = simlib.shquote
local read_file = simlib.read_file
local cxone = simlib.cxone

local HOSTILE = 'he said "hi" ]] ]==] \\ \n second line \r\t ")..os.exit(3)..(" \'x\' ${HOME} end'

-- Runs a chunk of Lua source with no globals at all: data evaluates, code fails.
local function eval_data(src)
    local chunk, err
    if setfenv then
        chunk, err = loadstring(src, "=export")
        if chunk then setfenv(chunk, {}) end
    else
        chunk, err = load(src, "=export", "t", {})
    end
    assert(chunk, err)
    return chunk()
end

local function masked_values(state)
    local out = {}
    for _, a in ipairs(state.actions) do
        for _, e in pairs(a.environments) do
            for _, v in ipairs(e.variables) do
                if v.masked then out[#out + 1] = v.value end
            end
        end
    end
    return out
end

describe("cxone export", function()
    local sim, dir, env
    simlib.suite({ clean = "files", env = "each" }, function(s) sim, dir, env = s.sim, s.dir, s.env end)

    it("exports the demo data set (every action, listed) and plan of it shows 0 changes", function()
        local code, out, err = cxone({ "export", "--out", dir .. "/ex.lua" }, env)
        assert.equals(0, code, err)
        assert.equals("", out)
        local text = assert(read_file(dir .. "/ex.lua"))
        -- every action of the demo data, every tier, sorted by action id
        local st = sim:state()
        local ids = {}
        for _, a in ipairs(st.actions) do ids[#ids + 1] = a.id end
        table.sort(ids)
        local book = eval_data(text)
        assert.equals(#ids * 3, #book)
        assert.equals(ids[1], book[1].action)
        assert.equals("development", book[1].tier)
        assert.equals("production", book[3].tier)
        assert.equals(ids[#ids], book[#book].action)
        -- masked: keep, never the value
        for _, secret in ipairs(masked_values(st)) do
            assert.falsy(text:find(secret, 1, true))
        end
        assert.truthy(text:find('{ name = "CRM_API_KEY", masked = true, keep = true }', 1, true))
        -- round trip
        local pcode, pout, perr = cxone({ "plan", dir .. "/ex.lua" }, env)
        assert.equals(0, pcode, perr)
        assert.matches("0 steps with changes pending, " .. #book .. " unchanged", pout, 1, true)
        -- and drift of it: none (a kept masked variable counts only when missing or unmasked)
        local dcode, dout, derr = cxone({ "drift", dir .. "/ex.lua" }, env)
        assert.equals(0, dcode, dout .. derr)
        -- stable: the same state exports byte for byte the same
        local code2, out2 = cxone({ "export" }, env)
        assert.equals(0, code2)
        assert.equals(text, out2)
    end)

    it("--baselines lists only what differs from the tier before, and still plans 0 changes", function()
        local code, out, err = cxone({ "export", "--baselines", A1, "--out", dir .. "/b.lua" }, env)
        assert.equals(0, code, err .. out)
        local book = eval_data(read_file(dir .. "/b.lua"))
        assert.equals(3, #book)
        assert.equals("development", book[2].baseline) -- staging holds every variable of development
        local names = {}
        for _, v in ipairs(book[2].variables) do names[v.name] = true end
        assert.falsy(names.FEATURE_FUZZY_MATCH) -- same value as development: left to the baseline
        assert.truthy(names.TIMEOUT_MS)
        assert.is_nil(book[3].baseline) -- production lacks FEATURE_FUZZY_MATCH
        local pcode, _, perr = cxone({ "plan", dir .. "/b.lua" }, env)
        assert.equals(0, pcode, perr)
    end)

    it("writes a hostile server value as a literal that is data, byte for byte", function()
        local st = sim:state()
        for _, a in ipairs(st.actions) do
            if a.id == A1 then
                table.insert(a.environments.dev.variables, { name = "HOSTILE", value = HOSTILE, masked = false,
                                                             description = 'd"]]\n")..os.exit(4)..("' })
            end
        end
        local status = sim:curl("PUT", "/_sim/state", st)
        assert.equals(200, status)
        local code, out, err = cxone({ "export", A1, "--tier", "development" }, env)
        assert.equals(0, code, err)
        local book = eval_data(out) -- no globals: a value that became code would fail here
        assert.equals(1, #book)
        local got
        for _, v in ipairs(book[1].variables) do if v.name == "HOSTILE" then got = v end end
        assert.equals(HOSTILE, got.value)
        assert.equals('d"]]\n")..os.exit(4)..("', got.description)
        -- and through cxone's own loader (cxone plan): the file loads as data (no exit 3 or 4 from
        -- the values), and the plan round refuses the value's characters, as for any playbook
        local path = dir .. "/h.lua"
        simlib.write_file(path, out)
        local pcode, _, perr = cxone({ "plan", path }, env)
        assert.equals(1, pcode, perr)
        assert.matches("HOSTILE", perr, 1, true)
        assert.matches([[(HOSTILE) value contains " \ ' $, which is not allowed]], perr, 1, true)
        assert.falsy(perr:find("cannot load playbook", 1, true))
    end)

    it("--json gives the same as data, masked entries without a value", function()
        local code, out, err = cxone({ "export", "--json", A1, "--tier", "prod", "--tier", "staging" }, env)
        assert.equals(0, code, err)
        local doc = assert(json.decode(out))
        assert.is_true(doc.ok)
        assert.equals("cxone-export/1", doc.format)
        assert.equals(2, #doc.steps)
        assert.equals("staging", doc.steps[1].tier) -- promotion order, whatever order they were named in
        assert.equals("production", doc.steps[2].tier)
        for _, v in ipairs(doc.steps[2].variables) do
            if v.name == "CRM_API_KEY" then
                assert.is_true(v.keep)
                assert.is_nil(v.value)
            end
            if v.name == "TIMEOUT_MS" then assert.equals("2500", v.value) end
        end
        assert.falsy(out:find("prd-crm-key", 1, true))
    end)

    it("without a list route (404), ids are required and the error says so", function()
        sim:fault({ method = "GET", path = "/api/v2/integration/actions", kind = "status", status = 404 })
        local code, out, err = cxone({ "export" }, env)
        assert.equals(1, code, out)
        assert.matches("no list route", err, 1, true)
        assert.matches("give the action ids", err, 1, true)
        -- an unknown action is named, with the URL tried
        code, _, err = cxone({ "export", "00000000-0000-4000-8000-000000000000" }, env)
        assert.equals(1, code)
        assert.matches("tried GET", err, 1, true)
    end)

    it("a keep entry needs the variable to exist masked; the error names it", function()
        local path = dir .. "/keep.lua"
        simlib.write_file(path, ("return { { action = %q, tier = 'production', variables = { "
            .. "{ name = 'CRM_API_KEY', masked = true, keep = true }, { name = 'NOT_THERE', masked = true, keep = true }, "
            .. "{ name = 'TIMEOUT_MS', masked = true, keep = true } } } }"):format(A1))
        local code, _, err = cxone({ "plan", path }, env)
        assert.equals(1, code)
        assert.matches("NOT_THERE, TIMEOUT_MS must exist as masked", err, 1, true)
        assert.falsy(err:find("CRM_API_KEY must", 1, true))
        simlib.write_file(path, ("return { { action = %q, tier = 'production', variables = { "
            .. "{ name = 'CRM_API_KEY', keep = true } } } }"):format(A1))
        code, _, err = cxone({ "plan", path }, env)
        assert.equals(1, code)
        assert.matches("keep = true needs masked = true", err, 1, true)
        simlib.write_file(path, ("return { { action = %q, tier = 'production', variables = { "
            .. "{ name = 'CRM_API_KEY', masked = true, keep = true, value = 'abcdefgh12' } } } }"):format(A1))
        code, _, err = cxone({ "plan", path }, env)
        assert.equals(1, code)
        assert.matches("takes no value", err, 1, true)
    end)

    it("never replaces a file without --force", function()
        simlib.write_file(dir .. "/x.lua", "return {}\n")
        local code, _, err = cxone({ "export", A1, "--out", dir .. "/x.lua" }, env)
        assert.equals(1, code)
        assert.matches("exists", err, 1, true)
        assert.equals("return {}\n", read_file(dir .. "/x.lua"))
        code = cxone({ "export", A1, "--out", dir .. "/x.lua", "--force" }, env)
        assert.equals(0, code)
        assert.truthy(read_file(dir .. "/x.lua"):find(A1, 1, true))
    end)
end)
