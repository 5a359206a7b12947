-- validate's all-violations report, byte for byte: the paths, codes, messages and tostring()
-- of payloads that break every rule, recorded from the implementation that built every path
-- and label with snprintf up front (before strings were built only for violations).
local core = require("cxone.core")

local UUID = "a1b2c3d4-e5f6-4890-abcd-ef1234567890"

local function v(name, value, masked, extra)
    local t = { name = name, value = value, masked = masked }
    for k, x in pairs(extra or {}) do t[k] = x end
    return t
end
local cases = {}
local function add(name, p, opts) cases[#cases + 1] = { name, p, opts } end
add("every entry rule", {
    actionId = "not-a-uuid", environmentId = "qa", enviromentId = "x",
    variables = {
        "V=1", 42, v("lower", "a;b|c;", false), v("S", "short", true), v("S", "x", false, { maskd = 1 }),
        { value = "v", masked = false }, v(7, "v", false), v(("N"):rep(129), "v", false),
        v("OK_1", 3000, false), { name = "OK_2", masked = false }, { name = "OK_3", value = "v" },
        v("OK_4", "v", "true"), v("OK_5", ("x"):rep(1025), false), v("OK_6", "a\0b", false),
        v("OK_7", "caf\233", false), v("OK_8", "abcdefgh|`", true), v("OK_9", "a\0\255;", true),
        v("OK_10", "v", false, { description = 5 }), v("OK_11", "v", false, { description = ("d"):rep(1025) }),
        v("OK_12", "v", false, { description = "bad\255" }), v("OK_13", "v", false, { [1.5] = true }),
        v("lower2", "1234567", true), v("OK_1", "ok", false), v("_", "\"'\\&$", false),
        v("Kx", "ok", false, { ["not echo"] = 1 }),
    } })
add("top level types", { actionId = 42, environmentId = {}, variables = "A=1", [1] = true })
add("missing everything", {})
add("not a sequence", { actionId = UUID, environmentId = "prod", variables = { v("A", "1", false), [3] = v("B", "2", false), x = 1 } })
local many = {}
for i = 1, 55 do many[i] = v("V" .. i, "v" .. i, i % 7 == 0, i % 11 == 0 and { description = "d" } or nil) end
add("too many", { actionId = UUID, environmentId = "dev", variables = many })
local thirty = {}
for i = 1, 30 do thirty[i] = v("V" .. i, "v" .. i, false) end
local existing = {}
for i = 20, 65 do existing[#existing + 1] = "V" .. i end
existing[#existing + 1] = 5
add("merge count", { actionId = UUID, environmentId = "staging", variables = thirty }, { existing = existing })
local envs = {}
for i = 1, 20 do envs[i] = "e" .. i end
envs[3] = 7
add("custom environments and limits", { actionId = UUID, environmentId = "prod",
    variables = { v(("L"):rep(250), "a#b", true), v(("L"):rep(250), "x", false), v("AB", "abc", false) } },
    { environments = envs, max_name_length = 300, forbidden = "#", min_secret_length = 4, max_value_length = 2,
      max_variables = 2 })
local junk = {}
for i = 1, 1200 do junk[i] = "junk" end
add("truncated", { actionId = UUID, environmentId = "prod", variables = junk })
add("valid", { actionId = UUID, environmentId = "prod", variables = { v("A", "1", false) } })

local function report(core, cases)
    local out = {}
    for _, c in ipairs(cases) do
        local ok, list, code = core.validate(c[2], c[3])
        out[#out + 1] = ("== %s: %s %s %s"):format(c[1], tostring(ok), tostring(code), list and #list or "-")
        if list then
            local n = #list
            for i, x in ipairs(list) do
                if n <= 100 or i <= 2 or i > n - 2 then
                    out[#out + 1] = ("%d|%s|%s|%s"):format(i, x.path, x.code, x.message)
                end
            end
            local text = tostring(list)
            if n <= 100 then out[#out + 1] = text
            else out[#out + 1] = ("%d bytes, last line: %s"):format(#text, text:match("[^\n]*$")) end
        end
    end
    return table.concat(out, "\n") .. "\n"
end

local EXPECTED = [==[
== every entry rule: nil invalid 35
1|enviromentId|unknown_key|unknown key 'enviromentId' (allowed: variables, environmentId, actionId)
2|actionId|uuid|actionId must be a UUID (8-4-4-4-12 hexadecimal digits)
3|environmentId|environment|environmentId must be one of dev, staging, prod
4|variables[1]|type|variables[1] must be a table with name, value and masked, got string
5|variables[2]|type|variables[2] must be a table with name, value and masked, got number
6|variables[3].name|name_pattern|variables[3].name must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, underscores; not starting with a digit)
7|variables[3].value|forbidden_char|variables[3] value contains ; |, which is not allowed (not allowed: ; | & $ ` \ ' ")
8|variables[4].value|secret_too_short|variables[4] (S) value is masked and must be at least 8 bytes long
9|variables[5].maskd|unknown_key|variables[5] has an unknown key 'maskd' (allowed: name, value, masked, description)
10|variables[5].name|duplicate|variables[5].name: S repeats variables[4]
11|variables[6].name|required|variables[6].name is required
12|variables[7].name|type|variables[7].name must be a string, got number
13|variables[8].name|too_long|variables[8].name is 129 bytes; at most 128 are allowed
14|variables[9].value|type|variables[9].value must be a string, got number
15|variables[10].value|required|variables[10].value is required
16|variables[11].masked|required|variables[11].masked is required (true for secrets)
17|variables[12].masked|type|variables[12].masked must be a boolean, got string
18|variables[13].value|too_long|variables[13] (OK_5) value is 1025 bytes; at most 1024 are allowed
19|variables[14].value|nul|variables[14] (OK_6) value contains a NUL byte
20|variables[15].value|utf8|variables[15] (OK_7) value is not valid UTF-8
21|variables[16].value|forbidden_char|variables[16] (OK_8) value (masked) contains a character that is not allowed (not allowed: ; | & $ ` \ ' ")
22|variables[17].value|nul|variables[17] (OK_9) value contains a NUL byte
23|variables[17].value|utf8|variables[17] (OK_9) value is not valid UTF-8
24|variables[17].value|forbidden_char|variables[17] (OK_9) value (masked) contains a character that is not allowed (not allowed: ; | & $ ` \ ' ")
25|variables[17].value|secret_too_short|variables[17] (OK_9) value is masked and must be at least 8 bytes long
26|variables[18].description|type|variables[18].description must be a string, got number
27|variables[19].description|too_long|variables[19].description is 1025 bytes; at most 1024 are allowed
28|variables[20].description|utf8|variables[20].description is not valid UTF-8 text
29|variables[21]|unknown_key|variables[21] has an unknown key of type number (allowed: name, value, masked, description)
30|variables[22].name|name_pattern|variables[22].name must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, underscores; not starting with a digit)
31|variables[22].value|secret_too_short|variables[22] value is masked and must be at least 8 bytes long
32|variables[23].name|duplicate|variables[23].name: OK_1 repeats variables[9]
33|variables[24].value|forbidden_char|variables[24] (_) value contains " ' \ & $, which is not allowed (not allowed: ; | & $ ` \ ' ")
34|variables[25]|unknown_key|variables[25] has an unknown key of type string (allowed: name, value, masked, description)
35|variables[25].name|name_pattern|variables[25].name must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, underscores; not starting with a digit)
unknown key 'enviromentId' (allowed: variables, environmentId, actionId)
actionId must be a UUID (8-4-4-4-12 hexadecimal digits)
environmentId must be one of dev, staging, prod
variables[1] must be a table with name, value and masked, got string
variables[2] must be a table with name, value and masked, got number
variables[3].name must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, underscores; not starting with a digit)
variables[3] value contains ; |, which is not allowed (not allowed: ; | & $ ` \ ' ")
variables[4] (S) value is masked and must be at least 8 bytes long
variables[5] has an unknown key 'maskd' (allowed: name, value, masked, description)
variables[5].name: S repeats variables[4]
variables[6].name is required
variables[7].name must be a string, got number
variables[8].name is 129 bytes; at most 128 are allowed
variables[9].value must be a string, got number
variables[10].value is required
variables[11].masked is required (true for secrets)
variables[12].masked must be a boolean, got string
variables[13] (OK_5) value is 1025 bytes; at most 1024 are allowed
variables[14] (OK_6) value contains a NUL byte
variables[15] (OK_7) value is not valid UTF-8
variables[16] (OK_8) value (masked) contains a character that is not allowed (not allowed: ; | & $ ` \ ' ")
variables[17] (OK_9) value contains a NUL byte
variables[17] (OK_9) value is not valid UTF-8
variables[17] (OK_9) value (masked) contains a character that is not allowed (not allowed: ; | & $ ` \ ' ")
variables[17] (OK_9) value is masked and must be at least 8 bytes long
variables[18].description must be a string, got number
variables[19].description is 1025 bytes; at most 1024 are allowed
variables[20].description is not valid UTF-8 text
variables[21] has an unknown key of type number (allowed: name, value, masked, description)
variables[22].name must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, underscores; not starting with a digit)
variables[22] value is masked and must be at least 8 bytes long
variables[23].name: OK_1 repeats variables[9]
variables[24] (_) value contains " ' \ & $, which is not allowed (not allowed: ; | & $ ` \ ' ")
variables[25] has an unknown key of type string (allowed: name, value, masked, description)
variables[25].name must match ^[A-Z_][A-Z0-9_]*$ (upper-case letters, digits, underscores; not starting with a digit)
== top level types: nil invalid 4
1||unknown_key|unknown key of type number (allowed: variables, environmentId, actionId)
2|actionId|type|actionId must be a string, got number
3|environmentId|type|environmentId must be a string, got table
4|variables|type|variables must be a list, got string
unknown key of type number (allowed: variables, environmentId, actionId)
actionId must be a string, got number
environmentId must be a string, got table
variables must be a list, got string
== missing everything: nil invalid 3
1|actionId|required|actionId is required
2|environmentId|required|environmentId is required
3|variables|required|variables is required (a list of {name, value, masked})
actionId is required
environmentId is required
variables is required (a list of {name, value, masked})
== not a sequence: nil invalid 1
1|variables|not_sequence|variables must be a list (keys 1..n with no holes or other keys)
variables must be a list (keys 1..n with no holes or other keys)
== too many: nil invalid 8
1|variables[7].value|secret_too_short|variables[7] (V7) value is masked and must be at least 8 bytes long
2|variables[14].value|secret_too_short|variables[14] (V14) value is masked and must be at least 8 bytes long
3|variables[21].value|secret_too_short|variables[21] (V21) value is masked and must be at least 8 bytes long
4|variables[28].value|secret_too_short|variables[28] (V28) value is masked and must be at least 8 bytes long
5|variables[35].value|secret_too_short|variables[35] (V35) value is masked and must be at least 8 bytes long
6|variables[42].value|secret_too_short|variables[42] (V42) value is masked and must be at least 8 bytes long
7|variables[49].value|secret_too_short|variables[49] (V49) value is masked and must be at least 8 bytes long
8|variables|too_many|55 variables in one payload; at most 50 are allowed per environment
variables[7] (V7) value is masked and must be at least 8 bytes long
variables[14] (V14) value is masked and must be at least 8 bytes long
variables[21] (V21) value is masked and must be at least 8 bytes long
variables[28] (V28) value is masked and must be at least 8 bytes long
variables[35] (V35) value is masked and must be at least 8 bytes long
variables[42] (V42) value is masked and must be at least 8 bytes long
variables[49] (V49) value is masked and must be at least 8 bytes long
55 variables in one payload; at most 50 are allowed per environment
== merge count: nil invalid 1
1|variables|too_many|after the merge the environment would hold 65 variables; at most 50 are allowed
after the merge the environment would hold 65 variables; at most 50 are allowed
== custom environments and limits: nil invalid 7
1|environmentId|environment|environmentId must be one of e1, e2, , e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15, e16
2|variables[1].value|too_long|variables[1] (LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL value is 3 bytes; at most 2 are allowed
3|variables[1].value|forbidden_char|variables[1] (LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL value (masked) contains a character that is not allowed (not allowed: #)
4|variables[1].value|secret_too_short|variables[1] (LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL value is masked and must be at least 4 bytes long
5|variables[2].name|duplicate|variables[2].name: LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL repeats variables[1]
6|variables[3].value|too_long|variables[3] (AB) value is 3 bytes; at most 2 are allowed
7|variables|too_many|3 variables in one payload; at most 2 are allowed per environment
environmentId must be one of e1, e2, , e4, e5, e6, e7, e8, e9, e10, e11, e12, e13, e14, e15, e16
variables[1] (LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL value is 3 bytes; at most 2 are allowed
variables[1] (LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL value (masked) contains a character that is not allowed (not allowed: #)
variables[1] (LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL value is masked and must be at least 4 bytes long
variables[2].name: LLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLLL repeats variables[1]
variables[3] (AB) value is 3 bytes; at most 2 are allowed
3 variables in one payload; at most 2 are allowed per environment
== truncated: nil invalid 1000
1|variables[1]|type|variables[1] must be a table with name, value and masked, got string
2|variables[2]|type|variables[2] must be a table with name, value and masked, got string
999|variables[999]|type|variables[999] must be a table with name, value and masked, got string
1000||too_many_violations|more violations than can be listed; fix these first
70872 bytes, last line: more violations than can be listed; fix these first
== valid: true nil -
]==]

describe("validate report", function()
    it("is byte-for-byte the recorded one for payloads with many violations", function()
        local got = report(core, cases)
        if got ~= EXPECTED then
            -- name the first differing line rather than dumping both texts
            local el, gl = {}, {}
            for l in EXPECTED:gmatch("[^\n]*\n") do el[#el + 1] = l end
            for l in got:gmatch("[^\n]*\n") do gl[#gl + 1] = l end
            for i = 1, math.max(#el, #gl) do
                assert.equal(el[i], gl[i], "line " .. i)
            end
        end
        assert.equal(EXPECTED, got)
    end)

    it("gives the same report when called again (no state kept between calls)", function()
        assert.equal(report(core, cases), report(core, cases))
    end)
end)
