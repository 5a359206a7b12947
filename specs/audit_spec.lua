-- audit: one record per line, never a value; concurrent writers; SIGKILL mid-stream; tamper
-- evidence by line; rotation continuing the chain.
local core = require("cxone.core")
local json = require("cjson.safe").new()
local audit = require("cxone.audit")

local LUA = os.getenv("CXONE_LUA") or "lua5.4"

local tmpdir = require("support.sim").tmpdir

local function lines(path)
    local out = {}
    for l in io.lines(path) do out[#out + 1] = l end
    return out
end

local function write_lines(path, ls, no_final_newline)
    local f = assert(io.open(path, "wb"))
    f:write(table.concat(ls, "\n"))
    if not no_final_newline then f:write("\n") end
    f:close()
end

local function fill(path, n, opts)
    local a = assert(core.audit_open(path, opts))
    for i = 1, n do
        assert(a:append({ event = "apply", action_id = "a" .. i, environment = "prod", variables = { "A", "B" },
            drift_count = i % 3, latency_ms = 1.5, status = "success" }))
    end
    assert(a:close())
end

local function shell(cmd)
    local ok = os.execute(cmd)
    return ok == true or ok == 0
end

describe("audit", function()
    local dir
    before_each(function() dir = tmpdir() end)
    after_each(function() shell("rm -rf '" .. dir .. "'") end)

    it("writes one JSON record per line with names only, chained by hash", function()
        local path = dir .. "/t.jsonl"
        local a = assert(core.audit_open(path))
        local seq, hash = a:append({ event = "apply", action_id = "x", environment = "prod", tier = "production",
            variables = { "API_KEY", { name = "TIMEOUT", value = "CANARY-value-must-not-appear", masked = false } },
            drift_count = 2, latency_ms = 12.5, attempts = 1, status = "success", error = "none" })
        assert.equal(1, seq)
        assert.matches("^%x+$", hash)
        assert.equal(64, #hash)
        assert.equal(2, (a:append({ event = "build", status = "queued" })))
        a:close()
        local ls = lines(path)
        assert.equal(2, #ls)
        local r = assert(json.decode(ls[1]))
        assert.equal(1, r.seq)
        assert.matches("^%d%d%d%d%-%d%d%-%d%dT%d%d:%d%d:%d%d%.%d%d%dZ$", r.ts)
        assert.same({ "API_KEY", "TIMEOUT" }, r.variables)
        assert.equal(("0"):rep(64), r.prev)
        assert.equal(hash, r.hash)
        assert.equal(hash, json.decode(ls[2]).prev)
        assert.is_nil(ls[1]:find("CANARY", 1, true))
        assert.is_true((core.audit_verify(path)))
    end)

    it("refuses fields that could carry values, and wrong types", function()
        local a = assert(core.audit_open(dir .. "/t.jsonl"))
        assert.has_error(function() a:append({ event = "x", value = "secret" }) end)
        assert.has_error(function() a:append({ event = "x", token = "t" }) end)
        assert.has_error(function() a:append({ status = "no event" }) end)
        assert.has_error(function() a:append({ event = "x", drift_count = "2" }) end)
        assert.has_error(function() a:append({ event = "x", variables = { 5 } }) end)
        assert.has_error(function() a:append("x") end)
        a:close()
        -- nothing half-written
        local f = io.open(dir .. "/t.jsonl", "rb")
        assert.equal("", f:read("*a"))
        f:close()
    end)

    it("raises argument errors and handles close/GC idempotently", function()
        assert.has_error(function() core.audit_open() end)
        assert.has_error(function() core.audit_open(5) end)
        assert.has_error(function() core.audit_open(dir .. "/x", { sync = "sometimes" }) end)
        assert.has_error(function() core.audit_open(dir .. "/x", "always") end)
        assert.has_error(function() core.audit_verify() end)
        assert.has_error(function() core.audit_verify(dir, { previous_hash = "xyz" }) end)
        local a = assert(core.audit_open(dir .. "/x"))
        assert.matches("cxone.Audit %(", tostring(a))
        assert.is_true(a:close())
        assert.is_true(a:close())
        assert.equal("cxone.Audit (closed)", tostring(a))
        assert.has_error(function() a:append({ event = "x" }) end, "attempt to use a closed cxone.Audit")
        a = nil
        collectgarbage(); collectgarbage()
        local b = assert(core.audit_open(dir .. "/y"))
        b:append({ event = "x" })
        b = nil
        collectgarbage(); collectgarbage() -- __gc closes (and fsyncs) it
        assert.equal(1, #lines(dir .. "/y"))
    end)

    it("returns io failures instead of raising", function()
        local a, msg, code = core.audit_open(dir .. "/no/such/dir/t.jsonl")
        assert.is_nil(a); assert.equal("io", code); assert.matches("cannot open", msg)
        local ok, _, vcode = core.audit_verify(dir .. "/missing.jsonl")
        assert.is_nil(ok); assert.equal("io", vcode)
    end)

    it("supports sync on every record", function()
        fill(dir .. "/s.jsonl", 20, { sync = "always" })
        local ok, rep = core.audit_verify(dir .. "/s.jsonl")
        assert.is_true(ok)
        assert.equal(20, rep.records)
    end)

    it("keeps 8 concurrent processes x 2000 records whole, gapless and chained", function()
        local path = dir .. "/c.jsonl"
        local script = dir .. "/w.lua"
        local f = assert(io.open(script, "w"))
        f:write([[
local core = require("cxone.core")
local a = assert(core.audit_open(arg[1]))
for i = 1, 2000 do
  assert(a:append({ event = "apply", action_id = "proc-" .. arg[2], drift_count = i, variables = { "A", "B", "C" } }))
end
assert(a:close())
]])
        f:close()
        local cmd = {}
        for p = 1, 8 do cmd[#cmd + 1] = ("%s %s %s %d &"):format(LUA, script, path, p) end
        assert.is_true(shell(table.concat(cmd, " ") .. " wait"))
        local ls = lines(path)
        assert.equal(16000, #ls)
        local per = {}
        for i, l in ipairs(ls) do
            local r = json.decode(l)
            assert.is_table(r, "line " .. i .. " does not parse")
            assert.equal(i, r.seq)
            per[r.action_id] = (per[r.action_id] or 0) + 1
        end
        for p = 1, 8 do assert.equal(2000, per["proc-" .. p]) end
        local ok, rep = core.audit_verify(path)
        assert.is_true(ok, rep)
        assert.equal(16000, rep.records)
        assert.equal(0, #rep.torn)
    end)

    it("survives a writer killed with SIGKILL mid-stream and resumes the chain", function()
        local path = dir .. "/k.jsonl"
        local script = dir .. "/k.lua"
        local f = assert(io.open(script, "w"))
        f:write([[
local core = require("cxone.core")
local a = assert(core.audit_open(arg[1], { sync = "none" }))
local big = {}
for i = 1, 50 do big[i] = ("VARIABLE_NAME_%03d"):format(i) end
while true do a:append({ event = "apply", variables = big, status = "success" }) end
]])
        f:close()
        local p = io.popen("echo $$; exec " .. LUA .. " " .. script .. " " .. path)
        local pid = p:read("*l")
        -- wait (bounded) until it has written a good number of records, then kill it mid-stream
        local size = 0
        for _ = 1, 200 do
            local h = io.open(path, "rb")
            if h then size = h:seek("end"); h:close() end
            if size > 200000 then break end
            shell("sleep 0.05")
        end
        assert.is_true(size > 200000)
        shell("kill -9 " .. pid)
        p:close()
        local ok, rep = core.audit_verify(path)
        assert.is_true(ok, rep)
        assert.is_true(rep.records > 0)
        local before = rep.records
        -- appending resumes from the last intact record
        fill(path, 3)
        ok, rep = core.audit_verify(path)
        assert.is_true(ok, rep)
        assert.equal(before + 3, rep.records)
        assert.equal(before + 3, rep.last_seq)
    end)

    it("detects a torn last line on open, closes it and chains from the last intact record", function()
        local path = dir .. "/t.jsonl"
        fill(path, 5)
        local ls = lines(path)
        local cut = ls[5]:sub(1, 40) -- record 5 half-written
        ls[5] = cut
        write_lines(path, ls, true)
        local a = assert(core.audit_open(path))
        local torn = a:torn()
        assert.same({ offset = #table.concat(ls, "\n") - #cut, bytes = #cut }, torn)
        local seq = a:append({ event = "resume" })
        a:close()
        assert.equal(5, seq)
        local ok, rep = core.audit_verify(path)
        assert.is_true(ok, rep)
        assert.equal(5, rep.records)
        assert.same({ { file = path, line = 5, bytes = #cut } }, rep.torn)
        assert.matches("line 5: torn record", audit.describe(ok, rep))
    end)

    describe("tamper evidence names the line", function()
        local path
        before_each(function()
            path = dir .. "/t.jsonl"
            fill(path, 10)
        end)
        local function broken(ls, line, pattern)
            write_lines(path, ls)
            local ok, msg, code, rep = core.audit_verify(path)
            assert.is_nil(ok)
            assert.equal("tampered", code)
            assert.equal(line, rep.line)
            assert.matches("line " .. line .. ":", msg)
            if pattern then assert.matches(pattern, msg) end
        end
        it("an edited record", function()
            local ls = lines(path)
            ls[4] = ls[4]:gsub('"status":"success"', '"status":"failure"')
            broken(ls, 4, "edited")
        end)
        it("a deleted record", function()
            local ls = lines(path)
            table.remove(ls, 6)
            broken(ls, 6, "deleted")
        end)
        it("two swapped records", function()
            local ls = lines(path)
            ls[3], ls[4] = ls[4], ls[3]
            broken(ls, 3)
        end)
        it("a record truncated in the middle of the file", function()
            local ls = lines(path)
            ls[7] = ls[7]:sub(1, 30)
            broken(ls, 7, "cut short or altered")
        end)
        it("a forged record with a recomputed hash", function()
            local ls = lines(path)
            local r = json.decode(ls[8])
            local prefix = ls[8]:match('^(.*),"hash":"%x+"}$'):gsub('"status":"success"', '"status":"forged"')
            ls[8] = prefix .. ',"hash":"' .. core.sha256(prefix) .. '"}'
            assert.equal(8, r.seq)
            broken(ls, 9, "does not chain")
        end)
        it("an intact file verifies", function()
            local ok, rep = core.audit_verify(path)
            assert.is_true(ok)
            assert.equal(10, rep.records)
            assert.equal(1, rep.first_seq)
            assert.equal(10, rep.last_seq)
        end)
    end)

    it("continues the chain into a new file after rotation by rename", function()
        local path = dir .. "/r.jsonl"
        local a = assert(core.audit_open(path))
        for _ = 1, 3 do a:append({ event = "before" }) end
        assert(os.rename(path, path .. ".1"))
        local seq = a:append({ event = "after" })
        a:append({ event = "after" })
        a:close()
        assert.equal(4, seq)
        assert.equal(3, #lines(path .. ".1"))
        assert.equal(2, #lines(path))
        local ok1, rep1 = core.audit_verify(path .. ".1")
        assert.is_true(ok1)
        -- the new file on its own says where it starts; with the old one it verifies end to end
        local ok2, rep2 = core.audit_verify(path)
        assert.is_true(ok2)
        assert.equal(rep1.last_hash, rep2.starts_after)
        local ok3, rep3 = core.audit_verify({ path .. ".1", path })
        assert.is_true(ok3)
        assert.equal(5, rep3.records)
        assert.is_true((core.audit_verify(path, { previous_hash = rep1.last_hash })))
        assert.is_nil((core.audit_verify(path, { previous_hash = ("a"):rep(64) })))
    end)
end)
