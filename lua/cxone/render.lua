--- Small text helpers shared by the readable renderings (drift reports, plans, reports, the CLI).
-- Every string that may come from a server (names, values, descriptions, messages) reaches a
-- terminal or a Markdown summary through `escape` (directly, or through quote, pad, lines,
-- md_text, md_code, md_value): control characters (ESC included), C1 controls, bidirectional
-- overrides and invisible formatting characters, and bytes that are not UTF-8 are shown as
-- escapes, never passed through.
-- Works under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- @module cxone.render

local M = {}

local NAMED = { [9] = "\\t", [10] = "\\n", [13] = "\\r", [92] = "\\\\" }
local UNSAFE = "[%c\\\128-\255]"
local UNSAFE_KEEP_BACKSLASH = "[%c\128-\255]"

-- Code points shown as \u{...}: C1 controls, and the format characters that reorder or hide
-- text (bidi marks, embeddings, overrides and isolates; zero-width and line/paragraph
-- separators; the BOM).
local function hidden(cp)
    return (cp >= 0x80 and cp <= 0x9F) or cp == 0x061C or cp == 0x00AD
        or (cp >= 0x200B and cp <= 0x200F) or (cp >= 0x2028 and cp <= 0x202E)
        or (cp >= 0x2060 and cp <= 0x206F) or cp == 0xFEFF or (cp >= 0xFFF9 and cp <= 0xFFFB)
end

-- Decodes the UTF-8 sequence at i: its code point and length, or nil when it is not valid
-- (overlong, surrogate, beyond U+10FFFF, cut).
local function utf8_at(s, i, b)
    local len, cp, min
    if b >= 0xC2 and b <= 0xDF then len, cp, min = 2, b - 0xC0, 0x80
    elseif b >= 0xE0 and b <= 0xEF then len, cp, min = 3, b - 0xE0, 0x800
    elseif b >= 0xF0 and b <= 0xF4 then len, cp, min = 4, b - 0xF0, 0x10000
    else return nil end
    for k = 1, len - 1 do
        local c = s:byte(i + k)
        if not c or c < 0x80 or c > 0xBF then return nil end
        cp = cp * 64 + (c - 0x80)
    end
    if cp < min or cp > 0x10FFFF or (cp >= 0xD800 and cp <= 0xDFFF) then return nil end
    return cp, len
end

--- Escapes a string for display: backslash, control characters (\n, \t, \r, else \xNN), bytes
-- that are not UTF-8 (\xNN), C1 controls and bidi/invisible format characters (\u{XXXX}).
-- Printable text, including other non-ASCII characters, is kept.
-- @tparam any s (tostring'd)
-- @treturn string
function M.escape(s, keep_backslash)
    s = tostring(s)
    local unsafe = keep_backslash and UNSAFE_KEEP_BACKSLASH or UNSAFE
    if not s:find(unsafe) then return s end
    local out, i, n = {}, 1, #s
    while i <= n do
        local j = s:find(unsafe, i)
        if not j then
            out[#out + 1] = s:sub(i)
            break
        end
        if j > i then out[#out + 1] = s:sub(i, j - 1) end
        local b = s:byte(j)
        if b < 0x80 then
            out[#out + 1] = NAMED[b] or ("\\x%02x"):format(b)
            i = j + 1
        else
            local cp, len = utf8_at(s, j, b)
            if not cp then
                out[#out + 1] = ("\\x%02x"):format(b)
                i = j + 1
            elseif hidden(cp) then
                out[#out + 1] = ("\\u{%04X}"):format(cp)
                i = j + len
            else
                out[#out + 1] = s:sub(j, j + len - 1)
                i = j + len
            end
        end
    end
    return table.concat(out)
end

--- A message for a terminal: each line escaped, line breaks kept; backslashes are left alone
-- (a message may hold values escaped already: escaping them twice would garble them).
function M.lines(s)
    local out = {}
    for line in (tostring(s) .. "\n"):gmatch("([^\n]*)\n") do out[#out + 1] = M.escape(line, true) end
    return table.concat(out, "\n")
end

-- The first max bytes of s, not cutting a UTF-8 sequence.
local function cut_at(s, max)
    local e = max
    while e > 0 and e < #s do
        local b = s:byte(e + 1)
        if b < 0x80 or b >= 0xC0 then break end -- the next byte starts a character
        e = e - 1
    end
    return s:sub(1, e)
end

--- Quotes a plain value for display: escaped (see escape), in double quotes, long values
-- shortened.
function M.quote(s, max)
    if s == nil then return "(absent)" end
    s = tostring(s)
    max = max or 60
    local cut = #s > max
    if cut then s = cut_at(s, max) end
    return '"' .. M.escape(s):gsub('"', '\\"') .. '"' .. (cut and "…" or "")
end

-- Display width of an escaped string (UTF-8 characters, not bytes).
local function width_of(s)
    if not s:find("[\128-\255]") then return #s end
    local n = 0
    for _ in s:gmatch("[^\128-\191]") do n = n + 1 end
    return n
end

--- Escapes s (see escape) and pads it with spaces to width (counting UTF-8 characters).
function M.pad(s, width)
    s = M.escape(s)
    local n = width_of(s)
    if n >= width then return s end
    return s .. (" "):rep(width - n)
end

--- The display width pad gives s (for column widths).
function M.width(s) return width_of(M.escape(s)) end

-- Wraps escaped text in a code span fit for a table cell: a fence longer than any run of
-- backticks in it, pipes escaped (GitHub tables honour \| inside code spans). `pad`: always a
-- space inside the fence (else only where the text starts or ends with a backtick or space).
local function code_span(s, pad)
    local run = 0
    for ticks in s:gmatch("`+") do run = math.max(run, #ticks) end
    local fence = ("`"):rep(run + 1)
    local sp = (pad or s == "" or s:match("^[` ]") or s:match("[` ]$")) and " " or ""
    return ((fence .. sp .. s .. sp .. fence):gsub("|", "\\|"))
end

--- A value as a Markdown code span fit for a table cell (escaped as quote, pipes escaped,
-- long values shortened); nil → an em dash.
function M.md_value(s, max)
    if s == nil then return "—" end
    s = tostring(s)
    max = max or 60
    local cut = #s > max
    if cut then s = cut_at(s, max) end
    return code_span(M.escape(s), true) .. (cut and "…" or "")
end

--- A name (variable, action) as a Markdown code span fit for a table cell.
function M.md_code(s) return code_span(M.escape(s)) end

--- Plain text fit for a Markdown table cell or paragraph: on one line (line breaks become
-- spaces), escaped (see escape), and the characters Markdown would interpret (emphasis, links,
-- HTML, code, headings, table pipes) backslash-escaped.
function M.md_text(s)
    return (M.escape((tostring(s):gsub("[\r\n]+", " "))):gsub("[`*_%[%]<>|#!~&{}]", "\\%0"))
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
