-- sim:persistence: --state loading, atomic write-back, restarts, SIGKILL mid-burst, PUT /_sim/state,
-- POST /_sim/reset, bad flags and bad state files (exit 2, file untouched), clean shutdown.
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
    T.ok(T.read(path):find("persisted-secret-1", 1, true), "written before the answer")
    T.eq(stop_code(s), 0, "SIGTERM exits 0")
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
        .. "[ \"$c\" = 200 ] && echo $i >> %s; done"):format(tok, url, acked)
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
    local doc = T.json.decode(T.read(path))
    T.ok(doc, "state file still parses")
    local have = {}
    for _, a in ipairs(doc.actions) do
        if a.id == T.TKT then
            for _, v in ipairs(a.environments.dev.variables) do have[v.name] = v.value end
        end
    end
    local count = 0
    for i in T.read(acked):gmatch("%d+") do
        T.eq(have["KILL_" .. i], "v" .. i, "acknowledged write " .. i .. " is in the file")
        count = count + 1
    end
    T.ok(count >= 20, "checked " .. count .. " writes")
    -- And the file loads.
    local s2 = T.start({ args = { "--state", path } })
    T.eq(T.request(s2, "GET", T.vars(T.TKT, "dev"), { token = T.token(s2) }).status, 200, "reloads")
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
