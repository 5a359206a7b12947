--- Small text helpers shared by the readable renderings (drift reports, plans, the CLI).
-- @module cxone.render

local M = {}

--- Quotes a plain value for display: printable text in double quotes, control characters and
-- invalid bytes escaped, long values shortened.
function M.quote(s, max)
    if s == nil then return "(absent)" end
    s = tostring(s)
    max = max or 60
    local cut = #s > max
    if cut then s = s:sub(1, max) end
    s = s:gsub('[%c"\\]', function(c)
        if c == '"' then return '\\"' elseif c == "\\" then return "\\\\"
        elseif c == "\n" then return "\\n" elseif c == "\t" then return "\\t" end
        return ("\\x%02x"):format(c:byte())
    end)
    return '"' .. s .. '"' .. (cut and "…" or "")
end

--- Pads s with spaces to width (counting UTF-8 characters, not bytes).
function M.pad(s, width)
    local n = #s
    if s:find("[\128-\255]") then -- count UTF-8 characters (skip continuation bytes)
        n = 0
        for _ in s:gmatch("[^\128-\191]") do n = n + 1 end
    end
    if n >= width then return s end
    return s .. (" "):rep(width - n)
end

--- A value as a Markdown code span fit for a table cell (pipes escaped, newlines shown as \n,
-- long values shortened); nil → an em dash.
function M.md_value(s, max)
    if s == nil then return "—" end
    s = M.quote(s, max):sub(2) -- escaped like quote, without the quotes
    local tail = s:sub(-4) == '"…' and "…" or ""
    s = s:sub(1, #s - #tail - 1) .. tail
    local run = 0
    for ticks in s:gmatch("`+") do run = math.max(run, #ticks) end
    local fence = ("`"):rep(run + 1)
    return ((fence .. " " .. s .. " " .. fence):gsub("|", "\\|"))
end

--- Plain text fit for a Markdown table cell (pipes escaped, no line breaks).
function M.md_text(s)
    return (tostring(s):gsub("[\r\n]+", " "):gsub("|", "\\|"))
end

--- Colours: only when asked for (the CLI decides: a terminal and no NO_COLOR).
local CODES = { red = 31, green = 32, yellow = 33, blue = 34, magenta = 35, cyan = 36, bold = 1, dim = 2 }

function M.painter(enabled)
    if not enabled then return function(_, s) return s end end
    return function(color, s)
        return ("\27[%dm%s\27[0m"):format(CODES[color] or 0, s)
    end
end

return M
