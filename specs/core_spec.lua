-- cxone.core and the cxone package: loading, argument errors of every native function, JSON,
-- hashing, tiers and payload building.
local core = require("cxone.core")
local cxone = require("cxone")

local LUA = os.getenv("CXONE_LUA") or "lua5.4"

describe("loading", function()
    it("leaves _G untouched", function()
        local p = io.popen(LUA .. [[ -e 'local before = {} for k in pairs(_G) do before[k] = true end
require("cxone.core"); require("cxone"); require("cxone.client")
local new = {} for k in pairs(_G) do if not before[k] then new[#new + 1] = k end end
print(#new, table.concat(new, ","))' 2>&1]])
        local out = p:read("*a")
        p:close()
        assert.equal("0\t\n", out)
    end)
    it("exposes a version and the documented functions", function()
        assert.matches("^%d+%.%d+%.%d+$", core._VERSION)
        for _, f in ipairs({ "validate", "drift", "audit_open", "audit_verify", "sha256", "hmac_sha256",
            "json_encode", "json_decode", "client" }) do
            assert.is_function(core[f], f)
        end
        assert.equal(core.null, cxone.null)
    end)
end)

describe("argument errors", function()
    local cases = {
        { "validate", function() core.validate(nil) end },
        { "drift", function() core.drift(1, {}) end },
        { "audit_open", function() core.audit_open({}) end },
        { "audit_verify", function() core.audit_verify(true) end },
        { "sha256", function() core.sha256({}) end },
        { "hmac_sha256", function() core.hmac_sha256("k") end },
        { "json_encode", function() core.json_encode() end },
        { "json_decode", function() core.json_decode({}) end },
        { "client", function() core.client("x") end },
        { "exec", function() core.exec({}) end },
        { "exec args", function() core.exec("/bin/true", "x") end },
        { "exec arg", function() core.exec("/bin/true", { "a", {} }) end },
        { "capture", function() core.capture("echo") end },
        { "capture empty", function() core.capture({}) end },
        { "capture arg", function() core.capture({ "echo", {} }) end },
        { "file_owner", function() core.file_owner({}) end },
        { "payload", function() cxone.payload(1, "production", {}) end },
        { "payload tier", function() cxone.payload("a", nil, {}) end },
        { "tiers.new", function() cxone.tiers.new({ { name = 1 } }) end },
    }
    for _, c in ipairs(cases) do
        it(c[1] .. " names the bad argument", function()
            local ok, err = pcall(c[2])
            assert.is_false(ok)
            assert.matches("bad argument #%d", tostring(err))
        end)
    end
end)

describe("exec", function()
    it("a program that cannot be run is a failure (code system), and the process goes on", function()
        local ok, msg, code = core.exec("/nonexistent/cxone-no-such-program", { "--help" })
        assert.is_nil(ok)
        assert.equal("system", code)
        assert.matches("cannot run /nonexistent/cxone%-no%-such%-program", msg)
    end)
end)

describe("capture", function()
    it("runs a program without a shell and returns its stdout", function()
        assert.equal("a b;$HOME\n", core.capture({ "echo", "a b;$HOME" })) -- no shell: nothing expanded
        assert.equal("", core.capture({ "true" }))
    end)
    it("a program that fails, cannot run, says too much or takes too long is a failure (code config)", function()
        local ok, msg, code = core.capture({ "sh", "-c", "echo secret-CANARY; exit 3" })
        assert.is_nil(ok)
        assert.equal("config", code)
        assert.matches("exit status 3", msg)
        assert.is_nil(msg:find("secret-CANARY", 1, true)) -- its output is never part of the message
        ok, msg, code = core.capture({ "/nonexistent/cxone-no-such-program" })
        assert.is_nil(ok)
        assert.equal("config", code)
        assert.matches("cannot run", msg)
        ok, msg = core.capture({ "head", "-c", "70000", "/dev/zero" })
        assert.is_nil(ok)
        assert.matches("more than 65536 bytes", msg)
        ok, msg = core.capture({ "sleep", "5" }, 0.2)
        assert.is_nil(ok)
        assert.matches("did not finish within 0.2 s", msg)
    end)
end)

describe("file_owner", function()
    it("gives the owner, the mode and this process's uid; a missing file is an io failure", function()
        local path = os.tmpname()
        os.execute("chmod 640 " .. path)
        local st = assert(core.file_owner(path))
        assert.equal(st.self, st.uid)
        assert.equal(tonumber("640", 8), st.mode)
        os.remove(path)
        local ok, _, code = core.file_owner(path)
        assert.is_nil(ok)
        assert.equal("io", code)
    end)
end)

describe("json", function()
    it("round-trips values, with null as cjson's null", function()
        local v = { a = { 1, 2.5, "x\"\n\1é" }, b = true, c = core.null, e = {} }
        local back = core.json_decode(core.json_encode(v))
        assert.same({ 1, 2.5, "x\"\n\1é" }, back.a)
        assert.equal(core.null, back.c)
        assert.same({}, back.e)
        assert.equal('[]', core.json_encode({}))
        assert.equal('{}', core.json_encode(setmetatable({}, { __jsontype = "object" })))
        assert.equal("0.1", core.json_encode(0.1))
    end)
    it("returns failures for bad input and values it cannot encode", function()
        local cyc = {}; cyc.x = cyc
        for _, v in ipairs({ cyc, { f = print }, { [true] = 1 }, 0 / 0, math.huge }) do
            local ok, msg, code = core.json_encode(v)
            assert.is_nil(ok); assert.is_string(msg); assert.equal("invalid", code)
        end
        for _, s in ipairs({ "", "{", "[1,]", '"\\ud800"', "nul", "1 2", ("["):rep(1000), '"\1"' }) do
            local ok, msg, code = core.json_decode(s)
            assert.is_nil(ok); assert.is_string(msg); assert.equal("format", code)
        end
    end)
    it("never crashes on random bytes: each input decodes, or fails as nil, message, \"format\"", function()
        math.randomseed(42)
        local failed = 0
        local function check(s)
            local v, msg, code = core.json_decode(s)
            if v == nil then
                failed = failed + 1
                assert.is_string(msg)
                assert.equal("format", code)
            end
        end
        for _ = 1, 2000 do
            local t = {}
            for i = 1, math.random(0, 40) do t[i] = string.char(math.random(0, 255)) end
            check(table.concat(t))
            check('{"a":[' .. table.concat(t) .. ']}')
        end
        assert.is_true(failed > 0) -- random bytes are mostly not JSON: the failure path was taken
        assert.same({ a = { 1 } }, core.json_decode('{"a":[1]}')) -- and the decoder still works
    end)
end)

describe("hashing", function()
    it("computes SHA-256 and HMAC-SHA-256 test vectors", function()
        assert.equal("ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", core.sha256("abc"))
        -- RFC 4231 test case 2
        assert.equal("5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
            core.hmac_sha256("Jefe", "what do ya want for nothing?"))
    end)
end)

describe("tiers and payloads", function()
    it("maps the default tiers, with builds for development and staging", function()
        local m = cxone.tiers.new()
        assert.same({ "dev", "staging", "prod" }, m:ids())
        assert.is_true(m:resolve("development").build)
        assert.is_true(m:resolve("staging").build)
        assert.is_false(m:resolve("production").build)
        assert.equal("production", m:resolve("prod").name)
        local t, err = m:resolve("qa")
        assert.is_nil(t); assert.matches("unknown tier", err)
        assert.matches("development→dev %(build%)", tostring(m))
    end)
    it("has one definition of the matrix: core.TIERS, which validate's default environments follow", function()
        assert.same({ { name = "development", id = "dev", build = true },
                      { name = "staging", id = "staging", build = true },
                      { name = "production", id = "prod", build = false } }, core.TIERS)
        assert.same(core.TIERS, cxone.tiers.DEFAULT)
        local ok, msg, code = core.validate({ environmentId = "qa", variables = {} })
        assert.is_nil(ok)
        assert.equal("invalid", code)
        assert.matches("environmentId must be one of dev, staging, prod", msg, 1, true)
    end)
    it("builds the payload with defaults", function()
        local p = cxone.payload("a1b2c3d4-e5f6-4890-abcd-ef1234567890", "production", {
            { name = "API_KEY", value = "sk_live_abc12345", masked = true },
            { name = "TIMEOUT_MS", value = "3000", description = "why" },
        })
        assert.same({
            actionId = "a1b2c3d4-e5f6-4890-abcd-ef1234567890", environmentId = "prod",
            variables = {
                { name = "API_KEY", value = "sk_live_abc12345", masked = true, description = "Scoped override for prod" },
                { name = "TIMEOUT_MS", value = "3000", masked = false, description = "why" },
            },
        }, p)
        assert.is_true(cxone.validate(p))
    end)
    it("accepts a map of variables, sorted by name, and keeps typos for validate to report", function()
        local p = cxone.payload("a1b2c3d4-e5f6-4890-abcd-ef1234567890", "dev",
            { Z_FLAG = "true", API_KEY = { value = "sk_live_abc12345", maskd = true } })
        assert.equal("API_KEY", p.variables[1].name)
        assert.equal("Z_FLAG", p.variables[2].name)
        local ok, list = cxone.validate(p)
        assert.is_nil(ok)
        assert.matches("maskd", tostring(list))
    end)
    it("fails for an unknown tier", function()
        local p, err, code = cxone.payload("x", "qa", {})
        assert.is_nil(p); assert.equal("invalid", code); assert.matches("unknown tier", err)
    end)
end)
