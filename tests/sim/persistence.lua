-- sim:persistence: --state loading, the change journal (appended before the answer, compacted at
-- exit, every N changes and on start), restarts, SIGKILL mid-burst and recovery, torn journal
-- lines, PUT /_sim/state, POST /_sim/reset, bad flags and bad state files (exit 2, file
-- untouched), clean shutdown.
local T = require("t")
local BIN = os.getenv("CXONE_SIM_BIN")

-- Stops the sim with a signal and returns its exit code.
local function stop_code(s, sig)
    os.execute("kill -" .. (sig or "TERM") .. " " .. s.pid)
    s.proc:read("a")
    local _, _, code = s.proc:close()
    s.proc = nil
    return code
end

local function run_code(args)
    local _, code = T.sh(T.shq(BIN) .. " --quiet --listen 127.0.0.1:0 " .. args .. " </dev/null >/dev/null 2>&1")
    return code
end

T.test("missing state file is created from the demo data; changes survive a restart", function()
    local dir = T.tmpdir()
    local path = dir .. "/state.json"
    local s = T.start({ args = { "--state", path } })
    local doc = T.json.decode(T.read(path))
    T.ok(doc and #doc.actions == 3 and #doc.clients == 2, "demo data written at start")
    local tok = T.token(s)
    local r = T.request(s, "PATCH", T.vars(T.CRM, "prod"), { token = tok, body = { variables = {
        { name = "PERSISTED", value = "persisted-secret-1", masked = true } } } })
    T.eq(r.status, 200, "PATCH")
    T.ok(T.read(path .. ".journal"):find("persisted-secret-1", 1, true), "journalled before the answer")
    T.ok(not T.read(path):find("persisted-secret-1", 1, true), "the snapshot is not rewritten per change")
    T.eq(stop_code(s), 0, "SIGTERM exits 0")
    T.ok(T.read(path):find("persisted-secret-1", 1, true), "compacted into the state file at exit")
    T.eq(T.read(path .. ".journal"), "", "journal emptied at exit")
    s = T.start({ args = { "--state", path } })
    local g = T.request(s, "GET", T.vars(T.CRM, "prod"), { token = T.token(s) })
    T.eq(T.var(g.json, "PERSISTED").value, "***", "still there after restart")
    T.eq(g.headers.etag, r.headers.etag, "same ETag after restart")
    T.eq(stop_code(s, "INT"), 0, "SIGINT exits 0")
    os.execute("rm -rf " .. dir)
end)

T.test("SIGKILL during a burst of writes keeps every acknowledged change", function()
    local dir = T.tmpdir()
    local path = dir .. "/state.json"
    local s = T.start({ args = { "--state", path } })
    local tok = T.token(s)
    local url = s.url .. T.vars(T.TKT, "dev")
    local acked = dir .. "/acked"
    -- Each PATCH sets KILL_<i>; a line is appended only after its 200 arrived.
    local script = ("for i in $(seq 1 300); do "
        .. "c=$(curl -s -o /dev/null -w '%%{http_code}' -X PATCH -H 'Authorization: Bearer %s' "
        .. "--data-binary \"{\\\"variables\\\":[{\\\"name\\\":\\\"KILL_$i\\\",\\\"value\\\":\\\"v$i\\\",\\\"masked\\\":false}]}\" %s); "
        .. "if [ \"$c\" = 200 ]; then echo $i >> %s; else break; fi; done"):format(tok, url, acked)
    local loop = io.popen("sh -c " .. T.shq(script) .. " 2>/dev/null; echo done", "r")
    -- Wait for some acknowledged writes (bounded), then kill -9 in the middle of the burst.
    local n = 0
    for _ = 1, 2000 do
        local a = T.read(acked)
        n = 0
        for _ in (a or ""):gmatch("\n") do n = n + 1 end
        if n >= 20 then break end
        os.execute("sleep 0.01")
    end
    T.ok(n >= 20, "writes were acknowledged before the kill")
    os.execute("kill -KILL " .. s.pid)
    s.proc:read("a")
    s.proc:close()
    s.proc = nil
    loop:read("a")
    loop:close()
    T.ok(T.json.decode(T.read(path)), "state file still parses")
    T.ok(#T.read(path .. ".journal") > 0, "the acknowledged writes are in the journal")
    -- Recovery: a restart replays the journal into the snapshot.
    local function tkt_dev(doc)
        local have = {}
        for _, a in ipairs(doc.actions) do
            if a.id == T.TKT then
                for _, v in ipairs(a.environments.dev.variables) do have[v.name] = v.value end
            end
        end
        return have
    end
    local s2 = T.start({ args = { "--state", path } })
    T.eq(T.request(s2, "GET", T.vars(T.TKT, "dev"), { token = T.token(s2) }).status, 200, "reloads")
    local live, file = tkt_dev(s2:state()), tkt_dev(T.json.decode(T.read(path)))
    local count = 0
    for i in T.read(acked):gmatch("%d+") do
        T.eq(live["KILL_" .. i], "v" .. i, "acknowledged write " .. i .. " survived the crash")
        T.eq(file["KILL_" .. i], "v" .. i, "acknowledged write " .. i .. " is in the compacted file")
        count = count + 1
    end
    T.ok(count >= 20, "checked " .. count .. " writes")
    T.eq(T.read(path .. ".journal"), "", "journal emptied after the replay")
    s2:stop()
    os.execute("rm -rf " .. dir)
end)

T.test("the journal is compacted every N changes, records already in the snapshot are not replayed", function()
    local dir = T.tmpdir()
    local path = dir .. "/state.json"
    local s = T.start({ args = { "--state", path }, env = { CXONE_SIM_COMPACT_EVERY = "3" } })
    local tok = T.token(s)
    local function set(i)
        local r = T.request(s, "PATCH", T.vars(T.CRM, "dev"), { token = tok, body = { variables = {
            { name = "N", value = "v" .. i, masked = false } } } })
        T.eq(r.status, 200, "PATCH " .. i)
    end
    local function lines(text)
        local n = 0
        for _ in text:gmatch("\n") do n = n + 1 end
        return n
    end
    set(1); set(2)
    T.eq(lines(T.read(path .. ".journal")), 2, "two records journalled")
    set(3)
    T.eq(T.read(path .. ".journal"), "", "third change compacts")
    local doc = T.json.decode(T.read(path))
    T.eq(doc.journal_seq, 3, "the snapshot records the last change it holds")
    set(4)
    T.eq(lines(T.read(path .. ".journal")), 1, "appending again after compaction")
    local rec = T.json.decode(T.read(path .. ".journal"))
    T.eq(rec.seq, 4, "sequence numbers continue")
    T.eq(rec.op, "env", "an environment record")
    -- A crash between the snapshot's rename and the journal's truncation leaves records the
    -- snapshot already holds: replay must skip them. Plant one with an older value.
    os.execute("kill -KILL " .. s.pid)
    s.proc:read("a"); s.proc:close(); s.proc = nil
    local stale = { seq = 2, op = "env", action = T.CRM, env = "dev",
                    variables = { { name = "STALE", value = "old", masked = false } } }
    T.write(path .. ".journal", T.json.encode(stale) .. "\n" .. T.read(path .. ".journal"))
    s = T.start({ args = { "--state", path } })
    local g = T.request(s, "GET", T.vars(T.CRM, "dev"), { token = T.token(s) })
    T.eq(T.var(g.json, "N").value, "v4", "the record above the snapshot is replayed")
    T.eq(T.var(g.json, "STALE"), nil, "the record at or below the snapshot is not")
    s:stop()
    os.execute("rm -rf " .. dir)
end)

T.test("a torn or garbled journal line is skipped, the rest replayed; builds are journalled", function()
    local dir = T.tmpdir()
    local path = dir .. "/state.json"
    local s = T.start({ args = { "--state", path } })
    local tok = T.token(s)
    T.eq(T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = { variables = {
        { name = "A", value = "a1", masked = false } } } }).status, 200, "PATCH")
    local b = T.request(s, "POST", "/api/v2/integration/actions/" .. T.PAY .. "/build",
        { token = tok, headers = { "Idempotency-Key: k-1" } })
    T.eq(b.status, 202, "build queued")
    T.eq(T.request(s, "PATCH", T.vars(T.PAY, "prod"), { token = tok, body = { variables = {
        { name = "B", value = "b1", masked = false } } } }).status, 200, "PATCH")
    os.execute("kill -KILL " .. s.pid)
    s.proc:read("a"); s.proc:close(); s.proc = nil
    -- garble the middle record and leave a torn (unterminated) line at the end
    local j = T.read(path .. ".journal")
    local l1, l2, l3 = j:match("^([^\n]*)\n([^\n]*)\n([^\n]*)\n$")
    T.ok(l1 and l2 and l3, "three records")
    T.write(path .. ".journal", l1 .. "\n{\"seq\":\n" .. l2 .. "\n" .. l3 .. "\n" .. l3:sub(1, 20))
    local log = dir .. "/log"
    s = T.start({ args = { "--state", path }, stderr = log })
    local g = T.request(s, "GET", T.vars(T.PAY, "prod"), { token = T.token(s) })
    T.eq(T.var(g.json, "B").value, "b1", "records after a garbled line are replayed")
    T.eq(T.var(g.json, "A").value, "a1", "records before it too")
    local again = T.request(s, "POST", "/api/v2/integration/actions/" .. T.PAY .. "/build",
        { token = T.token(s), headers = { "Idempotency-Key: k-1" } })
    T.eq(again.json and again.json.buildId, b.json.buildId, "the journalled build keeps its idempotency key")
    T.ok(T.read(log):find("skipped 1 incomplete line", 1, true), "the skipped line is reported")
    s:stop()
    os.execute("rm -rf " .. dir)
end)

T.test("a journal append that fails (file size limit) answers 500, changes nothing, tears nothing", function()
    local dir = T.tmpdir()
    local path = dir .. "/state.json"
    -- the snapshot of the demo data fits in 16 KiB; the journal then fills the rest of the limit
    local proc = io.popen("echo $$; trap '' XFSZ; ulimit -f 32; exec " .. T.shq(BIN)
        .. " --quiet --listen 127.0.0.1:0 --state " .. T.shq(path) .. " 2>/dev/null", "r")
    local s = { pid = tonumber(proc:read("l")), url = proc:read("l"), proc = proc }
    T.ok(s.url and s.url:match("^http"), "started under a file size limit")
    local tok = T.token(s)
    local acked, refused, value = {}, 0, ("x"):rep(1000)
    for i = 1, 40 do
        local r = T.request(s, "PATCH", T.vars(T.TKT, "dev"), { token = tok, body = { variables = {
            { name = "BIG_" .. i, value = value, masked = false } } } })
        if r.status == 200 then
            acked[#acked + 1] = i
        else
            T.eq(r.status, 500, "refused with 500")
            T.eq(r.json and r.json.error, "storage_failed", "storage_failed")
            refused = refused + 1
            local g = T.request(s, "GET", T.vars(T.TKT, "dev"), { token = tok })
            T.eq(T.var(g.json, "BIG_" .. i), nil, "the refused change was undone")
            if refused == 2 then break end -- the records only grow: every later one fails too
        end
    end
    T.ok(#acked > 0 and refused > 0, ("some acknowledged (%d), some refused (%d)"):format(#acked, refused))
    os.execute("kill -KILL " .. s.pid)
    proc:read("a"); proc:close()
    -- every line of the journal is whole: the failed appends were cut off
    local j = T.read(path .. ".journal")
    T.eq(j:sub(-1), "\n", "the journal ends with a whole line")
    for line in j:gmatch("([^\n]*)\n") do T.ok(T.json.decode(line), "a whole record") end
    -- and a restart without the limit has exactly the acknowledged changes
    local s2 = T.start({ args = { "--state", path } })
    local g = T.request(s2, "GET", T.vars(T.TKT, "dev"), { token = T.token(s2) })
    local n = 0
    for _, v in ipairs(g.json.variables) do if v.name:match("^BIG_") then n = n + 1 end end
    T.eq(n, #acked, "every acknowledged change and nothing else")
    for _, i in ipairs(acked) do T.ok(T.var(g.json, "BIG_" .. i), "BIG_" .. i .. " survived") end
    s2:stop()
    os.execute("rm -rf " .. dir)
end)

T.test("bad flags and bad state files exit 2 and leave the file untouched", function()
    T.eq(run_code("--bogus"), 2, "unknown flag")
    T.eq(run_code("--listen nowhere"), 2, "bad --listen")
    T.eq(run_code("--token-ttl soon"), 2, "bad --token-ttl")
    T.eq(run_code("--tls-cert /nonexistent"), 2, "cert without key")
    T.eq(run_code("--state"), 2, "missing value")
    local dir = T.tmpdir()
    local cases = {
        { "{not json", "not JSON" },
        { '{"actions":[{"id":"x","environments":{"dev":{"variables":[{"name":"bad-name","value":"v","masked":false}]}}}]}', "bad variable" },
        { '{"actions":[{"id":"x","environments":{"qa":{"variables":[]}}}]}', "unknown environment" },
        { '{"clients":[{"client_id":1}]}', "bad client" },
    }
    for i, c in ipairs(cases) do
        local p = dir .. "/bad" .. i .. ".json"
        T.write(p, c[1])
        local out, code = T.sh(T.shq(BIN) .. " --listen 127.0.0.1:0 --state " .. p .. " 2>&1 >/dev/null")
        T.eq(code, 2, c[2] .. ": exit 2")
        T.ok(out:find(p, 1, true), c[2] .. ": message names the file")
        T.eq(T.read(p), c[1], c[2] .. ": file untouched")
    end
    os.execute("mkdir " .. dir .. "/adir")
    T.eq(run_code("--state " .. dir .. "/adir"), 2, "unreadable state (a directory)")
    T.eq(run_code("--scenario " .. dir .. "/missing.json"), 2, "missing scenario")
    os.execute("rm -rf " .. dir)
end)

T.test("a state file can declare 100 actions", function()
    local dir = T.tmpdir()
    local path = dir .. "/big.json"
    local actions = {}
    for i = 1, 100 do
        actions[i] = { id = ("00000000-0000-4000-8000-%012d"):format(i), name = "action-" .. i, environments = {
            dev = { variables = { { name = "N", value = tostring(i), masked = false } } } } }
    end
    T.write(path, T.json.encode({ clients = { { client_id = "c", client_secret = "s", scopes = { "integration:actions:read" } } },
        actions = actions }))
    local s = T.start({ args = { "--state", path } })
    local tok = T.token(s, "c", "s")
    local r = T.request(s, "GET", T.vars(actions[100].id, "dev"), { token = tok })
    T.eq(T.var(r.json, "N").value, "100", "100th action")
    T.eq(#T.request(s, "GET", T.vars(actions[7].id, "prod"), { token = tok }).json.variables, 0, "missing env is empty")
    T.eq(#s:state().actions, 100, "/_sim/state lists them")
    s:stop()
    os.execute("rm -rf " .. dir)
end)

T.test("PUT /_sim/state replaces and persists; POST /_sim/reset restores the start data", function()
    local dir = T.tmpdir()
    local path = dir .. "/state.json"
    local s = T.start({ args = { "--state", path } })
    local st = s:state()
    st.actions[1].environments.dev.variables = { { name = "REPLACED", value = "r", masked = false } }
    local r = T.request(s, "PUT", "/_sim/state", { body = st })
    T.eq(r.status, 200, "PUT state")
    T.ok(T.read(path):find("REPLACED", 1, true), "persisted")
    local tok = T.token(s)
    T.eq(#T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).json.variables, 1, "replaced")
    T.eq(T.request(s, "PUT", "/_sim/state", { body = '{"actions":[{"id":1}]}' }).status, 400, "invalid state refused")
    s:fault({ kind = "status", status = 500 })
    T.eq(T.request(s, "POST", "/_sim/reset").status, 200, "reset")
    T.eq(#s:get_json("/_sim/faults").faults, 0, "reset clears faults")
    T.eq(#T.request(s, "GET", T.vars(T.CRM, "dev"), { token = tok }).json.variables, 5, "demo data back")
    T.ok(not T.read(path):find("REPLACED", 1, true), "reset persisted")
    s:stop()
    os.execute("rm -rf " .. dir)
end)

T.test("SIGTERM with a hung and a delayed request in flight exits 0 promptly", function()
    local s = T.start()
    local tok = T.token(s)
    s:fault({ faults = { { method = "GET", kind = "hang" }, { method = "GET", kind = "delay", delay_ms = 60000 } } })
    for _ = 1, 2 do
        os.execute("curl -s -o /dev/null --max-time 20 -H 'Authorization: Bearer " .. tok .. "' "
            .. s.url .. T.vars(T.CRM, "dev") .. " &")
    end
    local t0 = os.time()
    repeat until #s:get_json("/_sim/faults").faults == 0 or os.time() - t0 > 5
    T.eq(#s:get_json("/_sim/faults").faults, 0, "both faults taken")
    T.eq(stop_code(s), 0, "exit 0")
    T.ok(os.time() - t0 < 5, "promptly")
end)

T.run()
