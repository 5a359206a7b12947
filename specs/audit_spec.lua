-- audit: one record per line, never a value; concurrent writers; SIGKILL mid-stream; the chain
-- (SHA-256, or HMAC-SHA-256 with a key) catches edits, deletions at either end, junk lines, cut
-- tails (with --head), wrong and missing keys; torn final lines; rotation; `cxone audit verify`.
local core = require("cxone.core")
local json = require("cjson.safe").new()
local audit = require("cxone.audit")
local simlib = require("support.sim")

local LUA = os.getenv("CXONE_LUA") or "lua5.4"
local cxone, read_file = simlib.cxone, simlib.read_file
local GENESIS = ("0"):rep(64)
local KEY = "CANARY-audit-key-7f3a9c1e"

local function lines(path)
    local out = {}
    for l in io.lines(path) do out[#out + 1] = l end
    return out
end

local function write_lines(path, ls, no_final_newline)
    local f = assert(io.open(path, "wb"))
    f:write(table.concat(ls, "\n"))
    if not no_final_newline and #ls > 0 then f:write("\n") end
    f:close()
end

local function write_raw(path, s)
    local f = assert(io.open(path, "wb"))
    f:write(s)
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

-- the hash a record line carries, and its prefix (what the hash covers)
local function split(line)
    local prefix, hash = line:match('^(.*),"hash":"(%x+)"}$')
    return prefix, hash
end

-- nil, message, code: exactly three values
local function fails(code, ...)
    local n = select("#", ...)
    local r, msg, c = ...
    assert.equal(3, n)
    assert.is_nil(r)
    assert.is_string(msg)
    assert.equal(code, c, msg)
    return msg
end

describe("audit", function()
    local dir
    simlib.tmpdir_each(function(d) dir = d end)

    it("writes one JSON record per line with names only, chained by hash from genesis", function()
        local path = dir .. "/t.jsonl"
        local a = assert(core.audit_open(path))
        local seq, err, hash = a:append({ event = "apply", action_id = "x", environment = "prod", tier = "production",
            variables = { "API_KEY", { name = "TIMEOUT", value = "CANARY-value-must-not-appear", masked = false } },
            drift_count = 2, latency_ms = 12.5, attempts = 1, status = "success", error = "none" })
        assert.equal(1, seq)
        assert.is_nil(err)
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
        assert.equal("sha256", r.chain)
        assert.equal(GENESIS, r.prev)
        assert.equal(hash, r.hash)
        assert.equal(core.sha256((split(ls[1]))), hash)
        assert.equal(hash, json.decode(ls[2]).prev)
        assert.is_nil(ls[1]:find("CANARY", 1, true))
        local rep = core.audit_verify(path)
        assert.is_true(rep.ok)
        assert.equal("sha256", rep.chain)
        assert.equal(json.decode(ls[2]).hash, rep.head)
        assert.same({}, rep.errors)
    end)

    it("refuses fields that could carry values, and wrong types", function()
        local a = assert(core.audit_open(dir .. "/t.jsonl"))
        assert.has_error(function() a:append({ event = "x", value = "secret" }) end)
        assert.has_error(function() a:append({ event = "x", token = "t" }) end)
        assert.has_error(function() a:append({ event = "x", chain = "none" }) end)
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
        assert.has_error(function() core.audit_open(dir .. "/x", { key = "" }) end)
        assert.has_error(function() core.audit_open(dir .. "/x", { key = 5 }) end)
        assert.has_error(function() core.audit_verify() end)
        assert.has_error(function() core.audit_verify({}) end)
        assert.has_error(function() core.audit_verify(dir, { after = "xyz" }) end)
        assert.has_error(function() core.audit_verify(dir, { head = ("A"):rep(64) }) end)
        assert.has_error(function() core.audit_verify(dir, { key = "" }) end)
        local a = assert(core.audit_open(dir .. "/x"))
        assert.matches("cxone.Audit %(", tostring(a))
        assert.is_true(a:close())
        assert.is_true(a:close())
        assert.equal("cxone.Audit (closed)", tostring(a))
        assert.has_error(function() a:append({ event = "x" }) end, "attempt to use a closed cxone.Audit")
        a = nil
        collectgarbage(); collectgarbage()
        local b = assert(core.audit_open(dir .. "/y", { key = KEY }))
        assert.is_nil(tostring(b):find(KEY, 1, true))
        b:append({ event = "x" })
        b = nil
        collectgarbage(); collectgarbage() -- __gc closes (and fsyncs) it
        assert.equal(1, #lines(dir .. "/y"))
    end)

    it("returns io failures instead of raising (nil, message, code: three values)", function()
        local msg = fails("io", core.audit_open(dir .. "/no/such/dir/t.jsonl"))
        assert.matches("cannot open", msg)
        fails("io", core.audit_verify(dir .. "/missing.jsonl"))
        local rep = core.audit_verify(dir .. "/missing.jsonl", { report = true })
        assert.is_false(rep.ok)
        assert.equal("io", rep.errors[1].code)
    end)

    it("supports sync on every record", function()
        fill(dir .. "/s.jsonl", 20, { sync = "always" })
        local rep = core.audit_verify(dir .. "/s.jsonl")
        assert.is_true(rep.ok)
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
        local rep = core.audit_verify(path)
        assert.is_table(rep)
        assert.equal(16000, rep.records)
        assert.equal(0, #rep.torn)
    end)

    it("survives a writer killed with SIGKILL mid-stream and resumes the chain", function()
        local path = dir .. "/k.jsonl"
        local script = dir .. "/k.lua"
        local f = assert(io.open(script, "w"))
        f:write([[
local core = require("cxone.core")
local a = assert(core.audit_open(arg[1], { sync = "none", key = arg[2] }))
local big = {}
for i = 1, 50 do big[i] = ("VARIABLE_NAME_%03d"):format(i) end
while true do a:append({ event = "apply", variables = big, status = "success" }) end
]])
        f:close()
        local p = io.popen("echo $$; exec " .. LUA .. " " .. script .. " " .. path .. " " .. KEY)
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
        local rep = assert(core.audit_verify(path, { key = KEY }))
        assert.is_true(rep.records > 0)
        local before, torn = rep.records, #rep.torn
        -- appending resumes from the last intact record (a torn tail is dropped and recorded)
        fill(path, 3, { key = KEY })
        rep = assert(core.audit_verify(path, { key = KEY }))
        assert.equal(before + 3 + torn, rep.records)
        assert.equal(before + 3 + torn, rep.last_seq)
        assert.equal(0, #rep.torn)
    end)

    describe("a torn final line (bytes after the last newline)", function()
        local path
        before_each(function()
            path = dir .. "/t.jsonl"
            fill(path, 5)
        end)

        it("is a warning; the next append drops it, records that it did, and verify passes", function()
            local ls = lines(path)
            local cut = ls[5]:sub(1, 40) -- record 5 half-written
            ls[5] = cut
            write_lines(path, ls, true)
            local rep = assert(core.audit_verify(path))
            assert.equal(4, rep.records)
            assert.same({ { file = path, line = 5, bytes = #cut } }, rep.torn)
            assert.matches("line 5: torn record", audit.describe(rep))
            local a = assert(core.audit_open(path))
            assert.same({ offset = #table.concat(ls, "\n") - #cut, bytes = #cut }, a:torn())
            local seq, head = a:append({ event = "resume" })
            a:close()
            assert.equal(6, seq)
            local now = lines(path)
            assert.equal(6, #now)
            local drop = assert(json.decode(now[5]))
            assert.equal("audit.torn_tail_dropped", drop.event)
            assert.equal(5, drop.seq)
            assert.equal(#cut, drop.bytes)
            assert.equal(core.sha256(cut), drop.dropped_sha256)
            assert.equal(json.decode(now[4]).hash, drop.prev)
            assert.equal("resume", json.decode(now[6]).event)
            rep = assert(core.audit_verify(path, { head = head }))
            assert.equal(6, rep.records)
            assert.same({}, rep.torn)
        end)

        it("a complete last record that lost only its newline: the writer and verifier agree", function()
            local ls = lines(path)
            local _, last = split(ls[5])
            write_lines(path, ls, true)
            local rep = assert(core.audit_verify(path))
            assert.equal(4, rep.records) -- not counted: it may have been cut anywhere
            assert.equal(1, #rep.torn)
            fails("tampered", core.audit_verify(path, { head = last }))
            local a = assert(core.audit_open(path))
            local seq = a:append({ event = "next" })
            a:close()
            assert.equal(6, seq) -- seq 5 is the drop record, never a reused number
            rep = assert(core.audit_verify(path))
            assert.equal(6, rep.records)
        end)

        it("long lines: the writer reads past its 64 KiB window as the verifier does", function()
            local names = {}
            for i = 1, 20000 do names[i] = ("VARIABLE_%010d"):format(i) end
            local a = assert(core.audit_open(path))
            assert.equal(6, (a:append({ event = "apply", variables = names })))
            a:close()
            local f = assert(io.open(path, "ab"))
            f:write('{"seq":7,"ts":"', ("x"):rep(200 * 1024))
            f:close()
            local rep = assert(core.audit_verify(path))
            assert.equal(6, rep.records)
            assert.equal(200 * 1024 + 15, rep.torn[1].bytes)
            a = assert(core.audit_open(path))
            assert.equal(8, (a:append({ event = "after a long torn tail" })))
            a:close()
            rep = assert(core.audit_verify(path))
            assert.equal(8, rep.records)
            assert.same({}, rep.torn)
            -- a tail longer than any record is damage for both
            f = assert(io.open(path, "ab"))
            f:write('{"seq":9,"ts":"', ("x"):rep(1100 * 1024))
            f:close()
            fails("tampered", core.audit_verify(path))
            fails("tampered", core.audit_open(path))
            -- a record over 1 MiB is refused, not written
            for i = 1, 70000 do names[i] = ("VARIABLE_%010d"):format(i) end
            f = assert(io.open(path, "wb")); f:close()
            a = assert(core.audit_open(path))
            fails("invalid", a:append({ event = "apply", variables = names }))
            a:close()
            assert.equal("", read_file(path))
        end)

        it("bytes that are not the start of a record are damage, for the writer and the verifier", function()
            local f = assert(io.open(path, "ab"))
            f:write("garbage without a newline")
            f:close()
            local msg = fails("tampered", core.audit_verify(path))
            assert.matches("line 6: the file ends with", msg, 1, true)
            fails("tampered", core.audit_open(path))
        end)
    end)

    describe("tamper evidence names the line", function()
        local path
        before_each(function()
            path = dir .. "/t.jsonl"
            fill(path, 10)
        end)
        local function broken(ls, line, pattern, opts)
            write_lines(path, ls)
            local msg = fails("tampered", core.audit_verify(path, opts))
            local rep = core.audit_verify(path, { report = true, head = opts and opts.head })
            assert.is_false(rep.ok)
            assert.equal(line, rep.errors[1].line)
            assert.equal(path, rep.errors[1].file)
            assert.matches("line " .. line .. ":", msg)
            if pattern then assert.matches(pattern, msg) end
            return msg, rep
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
        it("the first record deleted (or the first three)", function()
            local ls = lines(path)
            table.remove(ls, 1)
            broken(ls, 1, "starts at seq 2, not at seq 1")
            table.remove(ls, 1); table.remove(ls, 1)
            local _, rep = broken(ls, 1, "first records were deleted")
            assert.equal(0, rep.records)
        end)
        it("two swapped records", function()
            local ls = lines(path)
            ls[3], ls[4] = ls[4], ls[3]
            broken(ls, 3)
        end)
        it("a record truncated in the middle of the file", function()
            local ls = lines(path)
            ls[7] = ls[7]:sub(1, 30)
            broken(ls, 7, "not a record")
        end)
        it("a junk line in the middle (and a blank one)", function()
            local orig = lines(path)
            local ls = { (table.unpack or unpack)(orig) }
            table.insert(ls, 5, "this is not a record")
            local _, rep = broken(ls, 5, "not a record")
            assert.equal(4, rep.records)
            ls = { (table.unpack or unpack)(orig) }
            table.insert(ls, 8, "")
            broken(ls, 8, "blank")
        end)
        it("a forged record with a recomputed hash", function()
            local ls = lines(path)
            local r = json.decode(ls[8])
            local prefix = split(ls[8]):gsub('"status":"success"', '"status":"forged"')
            ls[8] = prefix .. ',"hash":"' .. core.sha256(prefix) .. '"}'
            assert.equal(8, r.seq)
            broken(ls, 9, "does not chain")
        end)
        it("the last record cut: only --head notices", function()
            local ls = lines(path)
            local _, last = split(ls[10])
            local _, ninth = split(ls[9])
            table.remove(ls, 10)
            write_lines(path, ls)
            local rep = assert(core.audit_verify(path)) -- a shorter chain is still a chain
            assert.equal(9, rep.records)
            assert.equal(ninth, rep.head)
            local msg = fails("tampered", core.audit_verify(path, { head = last }))
            assert.matches("ends at seq 9, not at the given head", msg, 1, true)
            assert.is_table(core.audit_verify(path, { head = ninth }))
            -- a head in the middle: the trail continues past it
            msg = fails("tampered", core.audit_verify(path, { head = select(2, split(ls[7])) }))
            assert.matches("record seq 7, and 2 records follow it", msg, 1, true)
        end)
        it("an intact file verifies", function()
            local rep = assert(core.audit_verify(path))
            assert.equal(10, rep.records)
            assert.equal(1, rep.first_seq)
            assert.equal(10, rep.last_seq)
            assert.equal(select(2, split(lines(path)[10])), rep.head)
        end)
    end)

    it("200 KB of random bytes do not verify as intact (with or without newlines)", function()
        local f = assert(io.open("/dev/urandom", "rb"))
        local bytes = f:read(200 * 1024)
        f:close()
        assert.equal(200 * 1024, #bytes)
        write_raw(dir .. "/r1", bytes)
        fails("tampered", core.audit_verify(dir .. "/r1"))
        write_raw(dir .. "/r2", (bytes:gsub("\n", "")))
        fails("tampered", core.audit_verify(dir .. "/r2"))
        -- random bytes after a good trail are no torn write either
        fill(dir .. "/r3", 3)
        local g = assert(io.open(dir .. "/r3", "ab"))
        g:write(bytes)
        g:close()
        fails("tampered", core.audit_verify(dir .. "/r3"))
        fails("tampered", core.audit_open(dir .. "/r3"))
    end)

    describe("keyed (HMAC-SHA-256)", function()
        local path
        before_each(function()
            path = dir .. "/k.jsonl"
            fill(path, 6, { key = KEY })
        end)

        it("says so in every record, verifies with the key, and never writes the key", function()
            local text = read_file(path)
            assert.is_nil(text:find(KEY, 1, true))
            for _, l in ipairs(lines(path)) do
                local r = assert(json.decode(l))
                assert.equal("hmac-sha256", r.chain)
                assert.equal(core.hmac_sha256(KEY, "cxone-audit-key-id"):sub(1, 16), r.key_id)
                assert.equal(core.hmac_sha256(KEY, (split(l))), r.hash)
            end
            local rep = assert(core.audit_verify(path, { key = KEY }))
            assert.equal(6, rep.records)
            assert.equal("hmac-sha256", rep.chain)
        end)

        it("a wrong key fails (code key), for the verifier and the writer", function()
            local msg = fails("key", core.audit_verify(path, { key = KEY .. "x" }))
            assert.matches("line 1: record seq 1 was written with another key", msg, 1, true)
            msg = fails("key", core.audit_open(path, { key = "another key" }))
            assert.matches("another key", msg, 1, true)
            assert.is_nil(msg:find(KEY, 1, true))
        end)

        it("records forged with another key under this key's id fail", function()
            local ls = lines(path)
            local prefix = split(ls[6]):gsub('"status":"success"', '"status":"forged"')
            ls[6] = prefix .. ',"hash":"' .. core.hmac_sha256("attacker key", prefix) .. '"}'
            write_lines(path, ls)
            local msg = fails("tampered", core.audit_verify(path, { key = KEY }))
            assert.matches("line 6: record seq 6 does not verify with the given key", msg, 1, true)
        end)

        it("no key fails (code key), for the verifier and the writer", function()
            local msg = fails("key", core.audit_verify(path))
            assert.matches("CXONE_AUDIT_KEY", msg, 1, true)
            fails("key", core.audit_open(path))
            -- and a key given for an unkeyed trail
            fill(dir .. "/plain.jsonl", 2)
            fails("tampered", core.audit_verify(dir .. "/plain.jsonl", { key = KEY }))
            fails("key", core.audit_open(dir .. "/plain.jsonl", { key = KEY }))
        end)

        it("a record edited and re-hashed without the key fails", function()
            local ls = lines(path)
            local prefix = split(ls[3]):gsub('"status":"success"', '"status":"forged"')
            ls[3] = prefix .. ',"hash":"' .. core.sha256(prefix) .. '"}'
            write_lines(path, ls)
            local msg = fails("tampered", core.audit_verify(path, { key = KEY }))
            assert.matches("line 3:", msg, 1, true)
        end)

        it("the whole trail rewritten as plain SHA-256 fails with the key", function()
            local prev = GENESIS
            local out = {}
            for _, l in ipairs(lines(path)) do
                local prefix = split(l):gsub(',"key_id":"%x+","chain":"hmac%-sha256","prev":"%x+"',
                    ',"chain":"sha256","prev":"' .. prev .. '"')
                prev = core.sha256(prefix)
                out[#out + 1] = prefix .. ',"hash":"' .. prev .. '"}'
            end
            write_lines(path, out)
            assert.is_table(core.audit_verify(path)) -- without the key nothing can tell
            local msg = fails("tampered", core.audit_verify(path, { key = KEY }))
            assert.matches("not keyed", msg, 1, true)
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
        local rep1 = assert(core.audit_verify(path .. ".1"))
        -- the new file alone does not start at seq 1: it needs the old file, or `after`
        local msg = fails("tampered", core.audit_verify(path))
        assert.matches("starts at seq 4", msg, 1, true)
        local rep3 = assert(core.audit_verify({ path .. ".1", path }))
        assert.equal(5, rep3.records)
        local rep2 = assert(core.audit_verify(path, { after = rep1.head }))
        assert.equal(rep1.head, rep2.starts_after)
        assert.equal(rep3.head, rep2.head)
        fails("tampered", core.audit_verify(path, { after = ("a"):rep(64) }))
        -- files out of order
        fails("tampered", core.audit_verify({ path, path .. ".1" }))
        -- a trail that starts at seq 1 given an `after` does not continue from it
        fails("tampered", core.audit_verify(path .. ".1", { after = rep3.head }))
    end)

    describe("cxone audit verify", function()
        local function env(extra)
            local e = { CXONE_AUDIT_KEY = false, CXONE_AUDIT_LOG = false }
            for k, v in pairs(extra or {}) do e[k] = v end
            return e
        end
        local function no_key(...)
            for i = 1, select("#", ...) do
                local s = select(i, ...)
                if type(s) == "string" then assert.is_nil(s:find(KEY, 1, true)) end
            end
        end

        it("--json prints {ok, records, first_seq, last_seq, head, torn, errors}; exit 0, 1, 2", function()
            local path = dir .. "/t.jsonl"
            fill(path, 4, { key = KEY })
            local code, out, err = cxone({ "audit", "verify", "--json", path }, env({ CXONE_AUDIT_KEY = KEY }))
            no_key(out, err)
            assert.equal(0, code, err)
            local doc = assert(json.decode(out))
            assert.is_true(doc.ok)
            assert.equal(4, doc.records)
            assert.equal(1, doc.first_seq)
            assert.equal(4, doc.last_seq)
            assert.equal(select(2, split(lines(path)[4])), doc.head)
            assert.equal("hmac-sha256", doc.chain)
            assert.matches("^%[%]", out:match('"torn":(.*)'))
            assert.matches("^%[%]", out:match('"errors":(.*)'))
            -- without the key: exit 1, the error in the JSON
            code, out, err = cxone({ "audit", "verify", "--json", path }, env())
            assert.equal(1, code)
            doc = assert(json.decode(out))
            assert.is_false(doc.ok)
            assert.equal("key", doc.errors[1].code)
            assert.equal(1, doc.errors[1].line)
            assert.equal(0, doc.records)
            -- --head: a cut tail
            local ls = lines(path)
            local _, last = split(ls[4])
            table.remove(ls, 4)
            write_lines(path, ls)
            code, out, err = cxone({ "audit", "verify", "--head", last, path }, env({ CXONE_AUDIT_KEY = KEY }))
            no_key(out, err)
            assert.equal(1, code)
            assert.matches("audit trail BROKEN", err, 1, true)
            assert.matches("not at the given head", err, 1, true)
            code, out = cxone({ "audit", "verify", "--head", select(2, split(ls[3])), path },
                env({ CXONE_AUDIT_KEY = KEY }))
            assert.equal(0, code)
            assert.matches("audit trail intact: 3 records", out, 1, true)
            -- usage: exit 64, as every command's usage errors (2 means changes pending or drift)
            code, _, err = cxone({ "audit", "verify" }, env())
            assert.equal(64, code)
            assert.matches("cxone audit takes verify FILE...", err, 1, true)
            code = cxone({ "audit", "check", path }, env())
            assert.equal(64, code)
            code, _, err = cxone({ "audit", "verify", "--after", "abc", path }, env())
            assert.equal(64, code)
            assert.matches("--after must be", err, 1, true)
        end)

        it("--after and rotated files given in order", function()
            local path = dir .. "/r.jsonl"
            local a = assert(core.audit_open(path))
            for _ = 1, 3 do a:append({ event = "before" }) end
            assert(os.rename(path, path .. ".1"))
            a:append({ event = "after" })
            a:close()
            local code, _, err = cxone({ "audit", "verify", path }, env())
            assert.equal(1, code)
            assert.matches("--after HASH", err, 1, true)
            code = cxone({ "audit", "verify", path .. ".1", path }, env())
            assert.equal(0, code)
            local _, first_head = split(lines(path .. ".1")[3])
            local out
            code, out = cxone({ "audit", "verify", "--json", "--after", first_head:upper(), path }, env())
            assert.equal(0, code)
            assert.equal(4, assert(json.decode(out)).first_seq)
        end)

        it("a keyed apply: CXONE_AUDIT_KEY never appears in any output or record", function()
            local sim = simlib.start()
            local ok, e = pcall(function()
                local e = simlib.sim_env(sim, dir)
                e.CXONE_AUDIT_KEY = KEY
                local book = dir .. "/book.lua"
                simlib.write_file(book, ([[
return { { action = %q, tier = "development", variables = { AUDIT_FLAG = "on" } } }
]]):format(simlib.DEMO.actions[1]))
                local outputs = {}
                local function run(args, env)
                    local code, out, err = cxone(args, env)
                    outputs[#outputs + 1] = out
                    outputs[#outputs + 1] = err
                    return code, out, err
                end
                local code, _, err = run({ "apply", "--yes", book }, e)
                assert.equal(0, code, err)
                code, _, err = run({ "apply", "--yes", "--json", book }, e)
                assert.equal(0, code, err)
                code, _, err = run({ "audit", "verify", "--json", dir .. "/audit.jsonl" }, e)
                assert.equal(0, code, err)
                local trail = read_file(dir .. "/audit.jsonl")
                assert.matches('"chain":"hmac-sha256"', trail, 1, true)
                outputs[#outputs + 1] = trail
                -- the trail is keyed: without the key it does not verify, and apply refuses to write
                local e2 = simlib.sim_env(sim, dir)
                code, _, err = run({ "audit", "verify", dir .. "/audit.jsonl" }, e2)
                assert.equal(1, code)
                assert.matches("CXONE_AUDIT_KEY", err, 1, true)
                local before = sim:count("PATCH")
                simlib.write_file(book, ([[
return { { action = %q, tier = "development", variables = { AUDIT_FLAG = "off" } } }
]]):format(simlib.DEMO.actions[1]))
                code, _, err = run({ "apply", "--yes", book }, e2)
                assert.equal(1, code)
                assert.matches("CXONE_AUDIT_KEY", err, 1, true)
                assert.equal(before, sim:count("PATCH"))
                for _, s in ipairs(outputs) do no_key(s) end
                for _, f in ipairs({ "audit.jsonl.masked.json" }) do no_key(read_file(dir .. "/" .. f)) end
            end)
            sim:stop()
            assert(ok, e)
        end)
    end)
end)
