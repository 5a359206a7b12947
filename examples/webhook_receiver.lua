-- How a webhook receiver checks a cxone event: the X-Cxone-Signature header is
-- `t=<unix time>,v1=<hex HMAC-SHA-256 of "<t>.<body>">` with the shared secret. Check the
-- HMAC over the exact bytes received (in constant time), then the age: an event older than
-- five minutes (or from the future) is refused, so a captured request cannot be replayed later.
-- Keep the ids (or signatures) seen in the last five minutes too if replays within the window
-- matter to you.
--
-- As a library: local wr = dofile("examples/webhook_receiver.lua")
--               local ok, why = wr.verify(secret, header, body [, now])
-- As a command: lua5.4 examples/webhook_receiver.lua SECRET 'SIGNATURE HEADER' < body
--               prints "ok" (exit 0) or why it is refused (exit 1).
local core = require("cxone.core") -- any HMAC-SHA-256 will do; this one is at hand

local M = {}

M.TOLERANCE = 300 -- seconds

-- Compares two strings in time that depends only on their lengths.
local function equal(a, b)
    if #a ~= #b then return false end
    local diff = 0
    for i = 1, #a do
        if a:byte(i) ~= b:byte(i) then diff = diff + 1 end
    end
    return diff == 0
end

--- Parses `t=...,v1=...`; returns t (a number) and the list of v1 signatures.
function M.parse(header)
    if type(header) ~= "string" then return nil end
    local t, sigs = nil, {}
    for key, value in header:gmatch("([^,=%s]+)=([^,%s]*)") do
        if key == "t" and value:match("^%d+$") then t = tonumber(value)
        elseif key == "v1" then sigs[#sigs + 1] = value end
    end
    return t, sigs
end

--- Verifies a delivery. now defaults to os.time(). Returns true, or nil and the reason.
function M.verify(secret, header, body, now, tolerance)
    now = now or os.time()
    tolerance = tolerance or M.TOLERANCE
    local t, sigs = M.parse(header)
    if not t or #sigs == 0 then return nil, "missing or malformed X-Cxone-Signature" end
    local expected = core.hmac_sha256(secret, t .. "." .. body)
    local good = false
    for _, s in ipairs(sigs) do
        if equal(s, expected) then good = true end
    end
    if not good then return nil, "signature does not match the body" end
    if now - t > tolerance then return nil, "too old: signed " .. (now - t) .. " s ago (replay?)" end
    if t - now > tolerance then return nil, "signed in the future: check the clocks" end
    return true
end

-- Run as a command (not through dofile/require)?
if arg and type(arg[0]) == "string" and arg[0]:match("webhook_receiver%.lua$") and arg[1] ~= nil
    and (...) == arg[1] then
    local body = io.read("*a")
    local ok, why = M.verify(arg[1], arg[2], body)
    print(ok and "ok" or why)
    os.exit(ok and 0 or 1)
end

return M
