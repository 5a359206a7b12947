-- The proxy policy (issue: a proxy cannot be turned against the operator): loopback and no_proxy
-- hosts are never proxied, plain http:// never goes through a proxy, and https:// only through a
-- CONNECT tunnel with the server's certificate verified end to end. A recording proxy
-- (support/recording_proxy.py) logs everything it is sent; the client runs in a child process
-- so that the proxy variables are its environment.
local simlib = require "support.sim"
local D = simlib.DEMO
local sh = simlib.shquote

local function read(path) return simlib.read_file(path) or "" end

describe("proxies", function()
    local dir, plain, tls, proxy_pid, proxy_port, proxy_log, tls_port
    teardown(function()
        if proxy_pid then os.execute("kill " .. proxy_pid .. " 2>/dev/null") end
    end)
    simlib.tls_suite({ "cxone.test", "127.0.0.1" }, "cxone-overrides proxy test CA", true,
        function(s) dir, plain, tls = s.dir, s.plain, s.tls end)
    setup(function()
        tls_port = tonumber(tls.url:match(":(%d+)$"))
        proxy_log = dir .. "/proxy.log"
        local script = os.getenv("CXONE_SRC") and (os.getenv("CXONE_SRC") .. "/specs/support/recording_proxy.py")
            or "specs/support/recording_proxy.py"
        local p = assert(io.popen("echo $$; exec python3 " .. sh(script) .. " " .. sh(proxy_log)
            .. " 127.0.0.1 " .. tls_port, "r"))
        proxy_pid = p:read("*l")
        proxy_port = tonumber(p:read("*l"))
        assert(proxy_port, "the recording proxy did not start")
    end)

    -- Runs a client in a child with env (a map) and returns what it printed: "ok" or the code.
    local function child(env, opts)
        local script = dir .. "/child.lua"
        local f = assert(io.open(script, "w"))
        f:write(([[
            local core = require "cxone.core"
            local c, err, code = core.client{ base_url = %q, client_id = %q, client_secret = %q,
                ca_file = %q, insecure_http = true, retries = 0, timeout = 5, deadline = 5 }
            if not c then print("config " .. err) return end
            local r, msg, code2 = c:get(%q, "dev")
            print(r and "ok" or (code2 .. " " .. msg))
        ]]):format(opts.base_url, D.client_id, D.client_secret, dir .. "/ca.pem", D.actions[1]))
        f:close()
        local vars = {}
        for k, v in pairs(env) do vars[#vars + 1] = k .. "=" .. sh(v) end
        local lua = os.getenv("CXONE_LUA") or "lua5.4"
        local p = assert(io.popen("env -u http_proxy -u https_proxy -u HTTPS_PROXY -u ALL_PROXY -u all_proxy "
            .. "-u no_proxy -u NO_PROXY " .. table.concat(vars, " ") .. " " .. lua .. " " .. sh(script) .. " 2>&1"))
        local out = p:read("*a")
        p:close()
        return out
    end

    local function proxy_url() return "http://127.0.0.1:" .. proxy_port end

    it("loopback is never proxied, whatever the environment says", function()
        local before = #read(proxy_log)
        local out = child({ http_proxy = proxy_url(), https_proxy = proxy_url(), ALL_PROXY = proxy_url() },
            { base_url = plain.url })
        assert.matches("^ok", out)
        assert.equals(before, #read(proxy_log)) -- the proxy saw nothing at all
    end)

    it("plain http:// is never sent through a proxy (the secret would travel in clear to it)", function()
        local before = #read(proxy_log)
        local out = child({ http_proxy = proxy_url(), ALL_PROXY = proxy_url() },
            { base_url = "http://cxone.test:" .. tls_port })
        assert.matches("^network", out) -- cxone.test does not resolve: no direct way there
        local log = read(proxy_log):sub(before + 1)
        assert.equals("", log)
        assert.is_nil(out:find(D.client_secret, 1, true))
    end)

    it("https:// goes through the proxy only as a CONNECT tunnel, the certificate verified", function()
        local before = #read(proxy_log)
        local out = child({ https_proxy = proxy_url() }, { base_url = "https://cxone.test:" .. tls_port })
        assert.matches("^ok", out)
        local log = read(proxy_log):sub(before + 1)
        assert.matches("CONNECT cxone.test:" .. tls_port .. " HTTP/1.1", log, 1, true)
        -- nothing but the tunnel's request: no secret, no token, no API path in clear
        assert.is_nil(log:find(D.client_secret, 1, true))
        assert.is_nil(log:find("client_secret", 1, true))
        assert.is_nil(log:find("Bearer", 1, true))
        assert.is_nil(log:find("/api/v2", 1, true))
        assert.is_nil(log:find("/oauth/token", 1, true))
    end)

    it("no_proxy hosts are not proxied", function()
        local before = #read(proxy_log)
        local out = child({ https_proxy = proxy_url(), no_proxy = "cxone.test" },
            { base_url = "https://cxone.test:" .. tls_port })
        assert.matches("^network", out)
        assert.equals("", read(proxy_log):sub(before + 1))
    end)
end)
