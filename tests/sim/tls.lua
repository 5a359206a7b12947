-- sim:tls: --tls-cert/--tls-key serve HTTPS; the first stdout line is the https:// base URL.
local T = require("t")

T.test("HTTPS with a self-signed certificate", function()
    local dir = T.tmpdir()
    local _, code = T.sh("openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=127.0.0.1 "
        .. "-addext subjectAltName=IP:127.0.0.1 -keyout " .. dir .. "/key.pem -out " .. dir .. "/cert.pem 2>/dev/null")
    T.eq(code, 0, "openssl made a certificate")
    local s = T.start({ args = { "--tls-cert", dir .. "/cert.pem", "--tls-key", dir .. "/key.pem" } })
    local ok, e = pcall(function()
        T.ok(s.url:match("^https://127%.0%.0%.1:%d+$"), "https base URL: " .. s.url)
        local cacert = "--cacert " .. dir .. "/cert.pem"
        local r = T.request(s, "POST", "/oauth/token", { extra = cacert, form = "grant_type=client_credentials&client_id="
            .. T.DEMO.client_id .. "&client_secret=" .. T.DEMO.client_secret })
        T.eq(r.status, 200, "token over TLS (certificate verified)")
        local g = T.request(s, "GET", T.vars(T.CRM, "dev"), { extra = cacert, token = r.json.access_token })
        T.eq(g.status, 200, "GET over TLS")
        local plain = T.request(s, "GET", "/_sim/stats", { url = s.url:gsub("^https", "http"), max_time = 3 })
        T.ok(plain.status ~= 200, "plain HTTP is not served")
        local codes = T.multi(s.url .. T.vars(T.CRM, "dev"), 3, r.json.access_token)
        T.eq(table.concat(codes, " "), "000 000 000", "no CA given: curl refuses the self-signed certificate")
    end)
    s:stop()
    os.execute("rm -rf " .. dir)
    assert(ok, e)
end)

T.test("an unreadable certificate exits 2", function()
    local _, code = T.sh(T.shq(os.getenv("CXONE_SIM_BIN")) .. " --listen 127.0.0.1:0 --tls-cert /nonexistent "
        .. "--tls-key /nonexistent 2>/dev/null")
    T.eq(code, 2, "exit 2")
end)

T.run()
