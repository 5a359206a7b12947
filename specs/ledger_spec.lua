-- cxone.ledger and core.state_open: the masked-value ledger's journal (folding, compaction, the
-- earlier one-object format, torn final lines, owed builds) and the state file primitives
-- (lock, durable append, atomic replace with a unique temp file, mode 0600).
-- Lua 5.1-compatible (LuaJIT, 5.3, 5.4).
local core = require("cxone.core")
local ledgermod = require("cxone.ledger")
local simlib = require("support.sim")
local read_file, write_file, capture, q = simlib.read_file, simlib.write_file, simlib.capture, simlib.shquote

describe("cxone.ledger", function()
    local dir
    simlib.tmpdir_each(function(d) dir = d end)

    it("folds writes: fingerprints carry over only from the ETag the write was planned against", function()
        local l = assert(ledgermod.open(dir .. "/l.json"))
        l:note_write("A", "dev", { prev = nil, etag = '"e1"', fp = { S1 = "f1" }, clear = {} })
        l:note_write("A", "dev", { prev = '"e1"', etag = '"e2"', fp = { S2 = "f2" }, clear = {} })
        assert.same({ S1 = "f1", S2 = "f2" }, l:get("A", "dev").fp)
        -- planned against another ETag (someone wrote in between): the old fingerprints go
        l:note_write("A", "dev", { prev = '"other"', etag = '"e3"', fp = { S3 = "f3" }, clear = {} })
        assert.same({ S3 = "f3" }, l:get("A", "dev").fp)
        -- a variable written unmasked drops its fingerprint
        l:note_write("A", "dev", { prev = '"e3"', etag = '"e4"', fp = {}, clear = { "S3" } })
        assert.same({}, l:get("A", "dev").fp)
        -- without an ETag the fingerprint is kept with the run that wrote it (drift reports it as
        -- "assumed equal, written by run ..."; planning never trusts it: the entry has no ETag)
        l:note_write("A", "dev", { prev = '"e4"', etag = nil, fp = { S4 = "f4" }, clear = {}, run = "r5" })
        assert.same({ S4 = "f4" }, l:get("A", "dev").fp)
        assert.same({ S4 = "r5" }, l:get("A", "dev").runs)
        assert.is_nil(l:get("A", "dev").etag)
        assert(l:flush())
        -- a fresh reader folds the journal to the same state
        local again = assert(ledgermod.open(dir .. "/l.json"))
        assert.same(l:get("A", "dev").fp, again:get("A", "dev").fp)
        l:close()
    end)

    it("remembers owed builds until done, across compaction", function()
        local l = assert(ledgermod.open(dir .. "/l.json"))
        l:note_build_owed("A", "staging", "cxone-run-A-staging")
        assert(l:compact())
        local r = assert(ledgermod.open(dir .. "/l.json"))
        assert.same({ key = "cxone-run-A-staging" }, r:get("A", "staging").build)
        r:note_build_done("A", "staging")
        assert(r:compact())
        assert.is_nil(assert(ledgermod.open(dir .. "/l.json")):get("A", "staging").build)
        r:close(); l:close()
    end)

    it("reads the earlier one-object format, skips a torn final line, compacts to one line", function()
        local path = dir .. "/old.json"
        write_file(path, '{"A/prod":{"etag":"\\"e9\\"","fp":{"K":"fk"}}}\n{"k":"A/prod","op":"wri')
        local l = assert(ledgermod.open(path))
        assert.same({ K = "fk" }, l:get("A", "prod").fp)
        assert(l:compact())
        local text = read_file(path)
        assert.equals(1, select(2, text:gsub("\n", "")))
        assert.matches('"format":"cxone-ledger/2"', text, 1, true)
        assert.equals("-rw-------", capture("stat -c %A " .. q(path)):match("%S+"))
        l:close()
    end)

    it("a line that is not a record, or a file it cannot read, is an error naming the path", function()
        local path = dir .. "/bad.json"
        write_file(path, '{"k":"A/prod","op":"build_owed","key":"k1"}\n{"k":"A/pr\n{"k":"A/prod","op":"build_done"}\n')
        local l, err, code = ledgermod.open(path)
        assert.is_nil(l)
        assert.equals("io", code)
        assert.matches(path, err, 1, true)
        assert.matches("line 2", err, 1, true)
        -- a journal of another format is not guessed at either
        write_file(path, '{"format":"cxone-ledger/9","entries":{}}\n')
        l, err = ledgermod.open(path)
        assert.is_nil(l)
        assert.matches("another format", err, 1, true)
        -- a directory where the ledger should be
        os.execute("mkdir " .. q(dir .. "/isdir"))
        l, err, code = ledgermod.open(dir .. "/isdir")
        assert.is_nil(l)
        assert.equals("io", code)
        assert.matches("isdir", err, 1, true)
        -- a client's ledger: the same error, and no empty ledger put in its place
        write_file(path, 'garbage\n')
        local fake = { cfg = { state_file = path } }
        l, err = ledgermod.for_client(fake)
        assert.is_nil(l)
        assert.matches(path, err, 1, true)
        assert.is_nil(fake.ledger)
        assert.equals("garbage\n", read_file(path))
    end)

    it("an owed build names the run that owes it; compaction refuses an unreadable journal", function()
        local path = dir .. "/l.json"
        local l = assert(ledgermod.open(path))
        l:note_build_owed("A", "staging", "cxone-r1-A-staging", "r1")
        assert(l:flush())
        assert.same({ key = "cxone-r1-A-staging", run = "r1" }, assert(ledgermod.open(path)):get("A", "staging").build)
        local f = assert(io.open(path, "ab"))
        f:write("not a record\n")
        f:close()
        local ok, err = l:compact()
        assert.is_nil(ok)
        assert.matches("line 2", err, 1, true)
        assert.matches("not a record", read_file(path), 1, true) -- left as it was
        l:close()
    end)

    it("in memory when no path is given; planning needs no write access", function()
        local l = assert(ledgermod.open(nil))
        l:note_build_owed("A", "dev", "k")
        assert(l:flush())
        assert(l:compact())
        assert.equals("k", l:get("A", "dev").build.key)
        -- opening for reading creates nothing
        local r = assert(ledgermod.open(dir .. "/none.json"))
        assert.is_nil(r:get("A", "dev"))
        assert.is_nil(read_file(dir .. "/none.json"))
        assert.is_nil(read_file(dir .. "/none.json.lock"))
    end)
end)

describe("core.state_open", function()
    local dir
    simlib.tmpdir_each(function(d) dir = d end)

    it("appends, reads and replaces; nested locks; tostring names the path only", function()
        local s = assert(core.state_open(dir .. "/s"))
        assert.equals("", s:read())
        assert(s:lock()); assert(s:lock())
        assert(s:append("a\n")); assert(s:append("b\n"))
        s:unlock(); s:unlock()
        assert.equals("a\nb\n", s:read())
        assert(s:replace("c\n"))
        assert.equals("c\n", s:read())
        assert.matches("cxone.StateFile (" .. dir .. "/s)", tostring(s), 1, true)
        s:close(); s:close()
        assert.matches("closed", tostring(s), 1, true)
        assert.has_error(function() s:read() end, "attempt to use a closed cxone.StateFile")
        -- no temp file is left behind
        assert.equals("s\ns.lock\n", capture("ls " .. q(dir)))
    end)

    it("raises argument errors, and refuses a lock file that is a link", function()
        assert.has_error(function() core.state_open() end)
        assert.has_error(function() core.state_open("") end)
        local s = assert(core.state_open(dir .. "/s"))
        assert.has_error(function() s:append(nil) end)
        s:close()
        write_file(dir .. "/victim", "v")
        os.execute("ln -s " .. q(dir .. "/victim") .. " " .. q(dir .. "/t.lock"))
        local t, msg, code = core.state_open(dir .. "/t")
        assert.is_nil(t)
        assert.equals("io", code)
        assert.matches("lock file", msg, 1, true)
        assert.equals("v", read_file(dir .. "/victim"))
    end)
end)
