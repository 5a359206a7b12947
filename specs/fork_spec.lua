-- Fork safety: a cxone.Client or cxone.Audit used in a forked child starts fresh (its own
-- connections, its own open file) and never disturbs the parent's; random values differ.
local core = require "cxone.core"
local simlib = require "support.sim"
local forks = require "support.fork"
local D = simlib.DEMO
local sh = simlib.shquote
local A = D.actions[1]

-- TCP connections the sim has accepted, not counting those that asked it (each question is a
-- connection of its own, over https with the test CA), and the sim's other statistics.
local asked = {}
local function conns(sim, ca)
    local args = ca and ("--cacert " .. sh(ca) .. " ") or ""
    local p = assert(io.popen("curl -s -S " .. args .. sh(sim.url .. "/_sim/stats")))
    local st = assert(require("cjson.safe").decode(p:read("*a")), "GET /_sim/stats failed")
    p:close()
    asked[sim] = (asked[sim] or 0) + 1
    return st.connections - asked[sim], st
end

-- This process's descriptors: number -> what it names (the shell's parent is this process).
local function fd_table()
    local t, p = {}, assert(io.popen("ls -l /proc/$PPID/fd 2>/dev/null"))
    for fd, target in p:read("*a"):gmatch("(%d+) %-> ([^\n]+)") do t[tonumber(fd)] = target end
    p:close()
    return t
end

-- The inodes of the TCP sockets this process holds open (libcurl's own socket pair excluded).
local function sockets()
    local tcp = {}
    for _, file in ipairs({ "/proc/net/tcp", "/proc/net/tcp6" }) do
        local f = io.open(file, "r")
        if f then
            for line in f:lines() do
                local ino = line:match("^%s*%d+:%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+%S+%s+(%d+)")
                if ino then tcp[ino] = true end
            end
            f:close()
        end
    end
    local set = {}
    for _, target in pairs(fd_table()) do
        local ino = target:match("^socket:%[(%d+)%]$")
        if ino and tcp[ino] then set[ino] = true end
    end
    return set
end

-- Which of the sockets in `set` this process still holds.
local function still_open(set)
    local now, left = sockets(), {}
    for ino in pairs(set) do
        if now[ino] then left[#left + 1] = ino end
    end
    return left
end

-- The sockets made by fn (a client's connections and libcurl's own).
local function sockets_of(fn)
    local before = sockets()
    fn()
    local made = {}
    for ino in pairs(sockets()) do
        if not before[ino] then made[ino] = true end
    end
    return made
end

-- nghttpx (Debian's nghttp2-proxy) speaking HTTP/2 over TLS in front of the sim, as tests/h2
-- does; returns its pid and URL. It cannot report a port it chose: take a free one, and try the
-- next if another process took it first.
local function start_h2(dir, sim)
    local simport = sim.url:match(":(%d+)$")
    for _ = 1, 3 do
        local port = simlib.capture("python3 -c 'import socket; s = socket.socket(); "
            .. "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"):match("%d+")
        local pid = simlib.capture("nghttpx --conf=/dev/null --frontend=127.0.0.1," .. port
            .. " --backend=127.0.0.1," .. simport .. " --workers=1 --no-ocsp"
            .. " --accesslog-file=" .. sh(dir .. "/h2-access.log") .. " --accesslog-format='$alpn $request $status'"
            .. " --errorlog-file=" .. sh(dir .. "/h2-error.log") .. " " .. sh(dir .. "/srv.key") .. " "
            .. sh(dir .. "/srv.pem") .. " >/dev/null 2>&1 & echo $!"):match("%d+")
        local url = "https://127.0.0.1:" .. port
        for _ = 1, 200 do -- ready when it answers over TLS (at most 10 s), or gone if it could not bind
            local ok = os.execute("curl -s -o /dev/null --cacert " .. sh(dir .. "/ca.pem") .. " " .. url .. "/_sim/health")
            if ok == true or ok == 0 then return pid, url end
            local alive = os.execute("kill -0 " .. pid .. " 2>/dev/null")
            if not (alive == true or alive == 0) then break end
            os.execute("sleep 0.05")
        end
        os.execute("kill " .. pid .. " 2>/dev/null")
    end
    error("nghttpx did not start: " .. (simlib.read_file(dir .. "/h2-error.log") or ""))
end

describe("fork safety", function()
    local dir, plain, tls, h2pid, h2url
    teardown(function()
        if h2pid then os.execute("kill " .. h2pid .. " 2>/dev/null") end
    end)
    simlib.tls_suite({ "127.0.0.1" }, "cxone-overrides fork test CA", true,
        function(s) dir, plain, tls = s.dir, s.plain, s.tls end)
    setup(function() h2pid, h2url = start_h2(dir, plain) end)

    local function new_client(sim, extra)
        local opts = { retries = 0 } -- a broken connection must show, not be papered over by a retry
        if sim.url:match("^https:") then opts.ca_file = dir .. "/ca.pem" end
        return assert(core.client(simlib.client_opts(sim, opts, extra)))
    end

    for _, scheme in ipairs({ "http", "https", "h2" }) do
        local function sim()
            if scheme == "h2" then return { url = h2url } end
            return scheme == "http" and plain or tls
        end
        -- the sim's connection count and statistics; behind nghttpx the sim sees the proxy's
        -- connections, not the client's, so there only the statistics
        local function count()
            if scheme == "h2" then return nil, select(2, conns(plain)) end
            return conns(sim(), scheme == "https" and dir .. "/ca.pem" or nil)
        end

        it(scheme .. ": a client used in a forked child opens its own connection; the parent keeps its own", function()
            local c
            local inherited = sockets_of(function()
                c = new_client(sim())
                for _ = 1, 3 do assert(c:get(A, "dev")) end -- one keep-alive connection, open
            end)
            assert.is_not_nil(next(inherited))
            assert.equals(1, c:stats().connections)
            local before, st0 = count()
            assert(forks.run(function()
                for _ = 1, 3 do
                    local r, err, meta = c:get(A, "dev")
                    assert(r, err)
                    assert(r.environmentId == "dev", "wrong answer in the child")
                end
                -- one new connection (stats are inherited: the parent's 1 plus the child's own)
                local st = c:stats()
                assert(st.connections == 2, "child connections: " .. tostring(st.connections))
                assert(st.token_requests == 1, "the child asked for another token")
                c:close() -- tears down the child's handles and the inherited ones
                -- none of the parent's connections stays open in the child
                assert(#still_open(inherited) == 0, "inherited connections left open in the child")
            end))
            local n = 0
            for _ in pairs(inherited) do n = n + 1 end
            assert.equals(n, #still_open(inherited)) -- the parent's own are all still open
            local after, st1 = count()
            if before then assert.equals(before + 1, after) end  -- the child's own connection
            assert.equals(st0.tokens_issued, st1.tokens_issued)     -- the token cache was kept
            for _, env in ipairs({ "dev", "staging", "prod" }) do
                local r, err, meta = c:get(A, env)
                assert.is_table(r, err)
                assert.equals(env, r.environmentId)
            end
            if before then assert.equals(before + 1, (count())) end -- the parent kept its connection
            assert.equals(1, c:stats().connections)
            c:close()
            if scheme == "h2" then -- every API request through nghttpx was HTTP/2 (ALPN h2)
                local n = 0
                for line in io.lines(dir .. "/h2-access.log") do
                    if line:find(" /api/", 1, true) then
                        assert.matches("^h2 GET /api/.* HTTP/2 200$", line)
                        n = n + 1
                    end
                end
                assert.is_true(n >= 9)
            end
        end)

        it(scheme .. ": a child that only closes or collects the inherited client leaves the parent's connection alone", function()
            local c
            local inherited = sockets_of(function()
                c = new_client(sim())
                assert(c:get(A, "dev"))
            end)
            local before = count()
            assert(forks.run(function()
                c:close()
                assert(#still_open(inherited) == 0, "inherited connections left open in the child")
            end))
            assert(forks.run(function()
                local weak = setmetatable({ c }, { __mode = "v" })
                c = nil
                collectgarbage()
                collectgarbage()
                assert(weak[1] == nil, "the client was not collected")
                assert(#still_open(inherited) == 0, "inherited connections left open in the child")
            end))
            -- a TLS close_notify or an HTTP/2 GOAWAY from a child would have ended the connection
            local r, err, meta = c:get(A, "staging")
            assert.is_table(r, err)
            assert.equals(1, meta.attempts)
            if before then assert.equals(before, (count())) end
            assert.equals(1, c:stats().connections)
            c:close()
        end)

        it(scheme .. ": a child that reused an inherited socket's number keeps its file there, untouched", function()
            local c
            local inherited = sockets_of(function()
                c = new_client(sim())
                assert(c:get(A, "dev"))
            end)
            local before = count()
            local path = dir .. "/reused-" .. scheme
            assert(forks.run(function()
                -- as a child that closed every descriptor and opened files would: our file now
                -- has the numbers of the inherited connections
                local f = assert(io.open(path, "w"))
                local fds, filefd, moved = fd_table(), nil, {}
                for fd, target in pairs(fds) do
                    if target == path then filefd = fd end
                end
                assert(filefd, "cannot find the file's descriptor")
                for fd, target in pairs(fds) do
                    local ino = target:match("^socket:%[(%d+)%]$")
                    if ino and inherited[ino] then
                        assert(forks.dup2(filefd, fd))
                        moved[#moved + 1] = fd
                    end
                end
                assert(#moved > 0, "no inherited connection found")
                local r, err, meta = c:get(A, "prod")
                assert(r, err)
                c:close()
                local now = fd_table()
                for _, fd in ipairs(moved) do
                    assert(now[fd] == path, "descriptor " .. fd .. " was closed or replaced")
                end
                f:close()
                local got = simlib.read_file(path)
                assert(got == "", "something was written on a reused descriptor: " .. #got .. " bytes")
            end))
            local r, err, meta = c:get(A, "staging")
            assert.is_table(r, err)
            assert.equals(1, meta.attempts)
            if before then assert.equals(before + 1, (count())) end -- the child's; the parent's kept
            assert.equals(1, c:stats().connections)
            c:close()
        end)

        it(scheme .. ": batch in parent and child at once, each over its own connections", function()
            local c = new_client(sim())
            assert(c:get(A, "dev"))
            local reqs = {}
            for i = 1, 30 do
                reqs[i] = { op = "get", action = D.actions[(i % 3) + 1], env = ({ "dev", "staging", "prod" })[(i % 3) + 1] }
            end
            local function check(res)
                for i, e in ipairs(res) do
                    assert(e.ok, e.error)
                    assert(e.result.environmentId == reqs[i].env, "request " .. i .. " got another tier")
                    assert(e.result.actionId == reqs[i].action, "request " .. i .. " got another action")
                end
            end
            local pid = assert(forks.fork())
            if pid == 0 then
                local ok = pcall(function() check(c:batch(reqs, { concurrency = 4 })) end)
                forks._exit(ok and 0 or 1)
            end
            check(c:batch(reqs, { concurrency = 4 }))
            local _, how, status = forks.wait(pid)
            assert.equals("exited", how)
            assert.equals(0, status)
        end)
    end

    it("Idempotency-Keys and run ids differ between parent and child", function()
        local clientmod = require "cxone.client"
        local c = new_client(plain)
        local out = dir .. "/child-keys"
        assert(forks.run(function()
            local _, _, meta = assert(c:build(A))
            simlib.write_file(out, meta.idempotency_key .. "\n" .. core.uuid() .. "\n"
                              .. clientmod.new_run_id() .. "\n")
        end))
        local _, _, meta = assert(c:build(A))
        local child = {}
        for line in io.lines(out) do child[#child + 1] = line end
        assert.equals(3, #child)
        assert.matches("^%x+%-%x+%-4%x+%-[89ab]%x+%-%x+$", child[1])
        assert.are_not.equal(child[1], meta.idempotency_key)
        assert.are_not.equal(child[2], core.uuid())
        assert.are_not.equal(child[3], clientmod.new_run_id())
        c:close()
    end)

    it("backoff jitter: parent and child do not retry in step", function()
        -- the debug trace prints every retry's wait; a separate process so its stderr is ours
        local script, trace = dir .. "/jitter.lua", dir .. "/jitter.trace"
        simlib.write_file(script, ([[
            local core = require "cxone.core"
            local forks = require "support.fork"
            local c = assert(core.client{ base_url = %q, client_id = %q, client_secret = %q,
                                          retries = 4, backoff_base = 0.2, backoff_cap = 0.2, debug = true })
            assert(c:authenticate())
            local function fault()
                local p = io.popen("curl -s -o /dev/null -w '%%{http_code}' -X POST --data-binary "
                    .. "'{\"method\":\"GET\",\"count\":4,\"kind\":\"status\",\"status\":503}' %s/_sim/faults")
                local code = p:read("*a"); p:close()
                assert(code == "201" or code == "200", "arming the fault: " .. code)
            end
            fault()
            io.stderr:write("== child\n")
            assert(forks.run(function() assert(c:get(%q, "dev")) end))
            fault()
            io.stderr:write("== parent\n")
            assert(c:get(%q, "dev"))
        ]]):format(plain.url, D.client_id, D.client_secret, plain.url, A, A))
        local lua = os.getenv("CXONE_LUA") or "lua5.4"
        local ok = os.execute(lua .. " " .. sh(script) .. " >/dev/null 2>" .. sh(trace))
        assert(ok == true or ok == 0, "the jitter script failed: " .. (simlib.read_file(trace) or ""):sub(-400))
        local waits, who = { child = {}, parent = {} }, nil
        for line in io.lines(trace) do
            who = line:match("^== (%a+)") or who
            local w = line:match("retry %d+/%d+ in ([%d.]+) s after HTTP 503")
            if w and who then table.insert(waits[who], w) end
        end
        assert.equals(4, #waits.child)
        assert.equals(4, #waits.parent)
        -- the same sequence would mean the child inherited the parent's generator state
        assert.are_not.same(waits.child, waits.parent)
    end)

    it("audit: parent and child append at the same time; the trail verifies", function()
        local path = dir .. "/audit.jsonl"
        local a = assert(core.audit_open(path))
        assert(a:append{ event = "parent.before" })
        local N = 300
        local pid = assert(forks.fork())
        if pid == 0 then
            local ok = pcall(function()
                for i = 1, N do assert(a:append{ event = "child", message = tostring(i) }) end
                assert(a:close())
            end)
            forks._exit(ok and 0 or 1)
        end
        for i = 1, N do assert(a:append{ event = "parent", message = tostring(i) }) end
        local _, how, status = forks.wait(pid)
        assert.equals("exited", how)
        assert.equals(0, status)
        local seq, head = a:append{ event = "parent.after" }
        assert.equals(2 * N + 2, seq)
        assert(a:close())
        local rep, msg = core.audit_verify(path, { head = head })
        assert.is_table(rep, msg)
        assert.equals(2 * N + 2, rep.records)
        local lines, child = 0, 0
        for line in io.lines(path) do
            lines = lines + 1
            if line:find('"event":"child"', 1, true) then child = child + 1 end
        end
        assert.equals(2 * N + 2, lines)
        assert.equals(N, child)
    end)

    it("audit: a child appends through an open file of its own, never the parent's", function()
        local path = dir .. "/audit3.jsonl"
        local a = assert(core.audit_open(path))
        assert(a:append{ event = "parent" })
        local fd
        for n, target in pairs(fd_table()) do
            if target == path then fd = n end
        end
        assert(fd, "cannot find the trail's descriptor")
        local function offset() -- of the parent's open file (shared with a child that uses it)
            return tonumber(simlib.read_file("/proc/self/fdinfo/" .. fd):match("pos:%s*(%d+)"))
        end
        local mine = offset()
        assert.equals(#simlib.read_file(path), mine)
        assert(forks.run(function()
            for _ = 1, 3 do assert(a:append{ event = "child" }) end
        end))
        assert.is_true(#simlib.read_file(path) > mine) -- the child did append
        assert.equals(mine, offset())                  -- but not through the parent's open file
        assert.equals(5, (a:append{ event = "parent" }))
        assert(a:close())
        assert.equals(5, core.audit_verify(path).records)
    end)

    it("audit: a child that closes or collects the inherited trail leaves the parent's usable", function()
        local path = dir .. "/audit2.jsonl"
        local a = assert(core.audit_open(path, { sync = "always" }))
        assert(a:append{ event = "one" })
        assert(forks.run(function() assert(a:close()) end))
        assert(forks.run(function()
            local weak = setmetatable({ a }, { __mode = "v" })
            a = nil
            collectgarbage()
            collectgarbage()
            assert(weak[1] == nil, "the trail was not collected")
        end))
        local seq = assert(a:append{ event = "two" })
        assert.equals(2, seq)
        assert(a:close())
        assert.is_table(core.audit_verify(path))
    end)

    local function lock_free(path)
        -- another process (flock(1)) can take the lock at once
        local r = os.execute("flock -n " .. sh(path .. ".lock") .. " true")
        return r == true or r == 0
    end

    it("state file: closing it while locked releases the lock, even with a forked child alive", function()
        local path = dir .. "/ledger-a.jsonl"
        local st = assert(core.state_open(path))
        assert(st:lock())
        assert.is_false(lock_free(path))
        -- a child that outlives the close holds a copy of the lock descriptor
        local pid = assert(forks.fork())
        if pid == 0 then
            os.execute("sleep 3")
            forks._exit(0)
        end
        assert(st:close())
        local free = lock_free(path)
        os.execute("kill " .. pid .. " 2>/dev/null")
        forks.wait(pid)
        assert.is_true(free)
    end)

    it("state file: a child gets a lock of its own and appends through it; the parent's stays usable", function()
        local path = dir .. "/ledger-b.jsonl"
        local st = assert(core.state_open(path))
        assert(st:append("parent 1\n"))
        assert(forks.run(function()
            assert(st:lock())
            assert(st:append("child\n"))
            st:unlock()
            assert(st:close())
        end))
        assert(st:append("parent 2\n"))
        assert.equals("parent 1\nchild\nparent 2\n", assert(st:read()))
        assert(st:close())
        assert.is_true(lock_free(path))
    end)

    it("state file: closed before a fork, it stays closed in the child (an error, not a crash)", function()
        local path = dir .. "/ledger-c.jsonl"
        local st = assert(core.state_open(path))
        assert(st:close())
        assert(forks.run(function()
            for _, m in ipairs{ "lock", "read", "unlock" } do
                local ok, err = pcall(st[m], st)
                assert(not ok and tostring(err):find("closed", 1, true), m .. ": " .. tostring(err))
            end
            local ok, err = pcall(st.append, st, "x\n")
            assert(not ok and tostring(err):find("closed", 1, true), "append: " .. tostring(err))
            ok, err = pcall(st.replace, st, "x\n")
            assert(not ok and tostring(err):find("closed", 1, true), "replace: " .. tostring(err))
        end))
    end)
end)
