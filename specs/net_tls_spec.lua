-- cxone.Client over HTTPS: a test CA made here with the openssl CLI, verification always on.
local core = require "cxone.core"
local simlib = require "support.sim"
local D = simlib.DEMO

describe("cxone.Client TLS", function()
    local dir, sim
    simlib.tls_suite({ "127.0.0.1" }, nil, false, function(s) dir, sim = s.dir, s.tls end)

    it("the sim serves https", function()
        assert.matches("^https://127%.0%.0%.1:%d+$", sim.url)
    end)

    it("works with ca_file naming the test CA, over one connection", function()
        local c = assert(core.client{ base_url = sim.url, client_id = D.client_id,
                                      client_secret = D.client_secret, ca_file = dir .. "/ca.pem" })
        assert.is_true(c:authenticate())
        for _ = 1, 20 do
            local r, err, meta = c:get(D.actions[1], "dev")
            assert.is_table(r, err)
            assert.equals(200, meta.status)
        end
        assert.is_table((c:build(D.actions[1])))
        local st = c:stats()
        assert.equals(1, st.connections)
        assert.equals(1, st.token_requests)
        local res = c:batch({ { op = "get", action = D.actions[1], env = "dev" },
                              { op = "get", action = D.actions[2], env = "dev" },
                              { op = "get", action = D.actions[3], env = "dev" } })
        for _, e in ipairs(res) do assert.is_true(e.ok) end
    end)

    it("fails with tls without it (the system CA bundle does not know the test CA)", function()
        local c = assert(core.client{ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret })
        local ok, msg, code = c:authenticate()
        assert.is_nil(ok)
        assert.equals("tls", code)
        assert.matches("ca_file", msg, 1, true)
        assert.equals(1, c:stats().token_requests) -- certificate failures are not retried
        local r, _, code2 = c:get(D.actions[1], "dev")
        assert.is_nil(r)
        assert.equals("tls", code2)
    end)

    it("fails with tls when the name does not match the certificate", function()
        -- the certificate names only IP 127.0.0.1; "localhost" reaches the same listener
        local url = sim.url:gsub("127%.0%.0%.1", "localhost")
        local c = assert(core.client{ base_url = url, client_id = D.client_id, client_secret = D.client_secret,
                                      ca_file = dir .. "/ca.pem", retries = 0, connect_timeout = 2 })
        local ok, _, code = c:authenticate()
        assert.is_nil(ok)
        assert.equals("tls", code)
    end)

    it("webhooks over https verify the certificate too", function()
        local c = assert(core.client{ base_url = sim.url, client_id = D.client_id, client_secret = D.client_secret })
        local ok, _, code = c:webhook(sim.url .. "/_sim/webhooks/tls", { e = 1 })
        assert.is_nil(ok)
        assert.equals("tls", code)
        local c2 = assert(core.client{ base_url = sim.url, client_id = D.client_id,
                                       client_secret = D.client_secret, ca_file = dir .. "/ca.pem" })
        assert.is_true((c2:webhook(sim.url .. "/_sim/webhooks/tls", { e = 1 })))
    end)
end)
