-- Gathers the /*** ... */ LDoc blocks of plugin/*.c: into one C file documenting module cxone.core
-- (for LDoc), or with --lua into the data module cxone.repl.core_doc that `help(f)` in `cxone repl`
-- reads (built by CMake and by the rockspec, installed with the package; cxone.repl.cdoc).
-- usage: lua doc/extract_c.lua OUT.c plugin/a.c plugin/b.c ...
--        lua doc/extract_c.lua --lua OUT.lua plugin/a.c plugin/b.c ...
-- Runs under Lua 5.1 (LuaJIT), 5.3 and 5.4.
-- LDoc 1.4.6 names a C file's module after its path unless the file says @module; the C
-- sources document their functions but not the module, so the blocks are collected here.

local HEADER = [[
/***
 * The C core of cxone-overrides: validation, drift, the audit trail, hashing, JSON and the
 * HTTP client (`cxone.Client`), shared by every Lua version the project supports.
 *
 * Programmer misuse (a wrong argument type, a missing option) raises an argument error.
 * Every failure caused by the world returns `nil, message, code` (written `fail` below);
 * the codes are listed once in the [error convention](../topics/manual.md.html).
 * @module cxone.core
 */
]]

local function blocks(path)
    local f = assert(io.open(path, "r"))
    local text = f:read("*a")
    f:close()
    local out = {}
    for block in text:gmatch("/%*%*%*.-%*/") do out[#out + 1] = block end
    return out
end

local function write_file(path, text)
    local f = assert(io.open(path, "w"))
    assert(f:write(text))
    assert(f:close())
end

-- --lua OUT.lua SOURCE.c...: the data module, through the parser the REPL itself uses.
local function main_lua(args)
    local here = (arg and arg[0] or ""):match("^(.*)/doc/[^/]*$") or "."
    package.path = here .. "/lua/?.lua;" .. package.path
    local cdoc = require("cxone.repl.cdoc")
    local entries = {}
    for i = 3, #args do
        local f = assert(io.open(args[i], "r"))
        local text = f:read("*a")
        f:close()
        for _, e in ipairs(cdoc.parse(text)) do entries[#entries + 1] = e end
    end
    if #entries == 0 then
        io.stderr:write("extract_c.lua: no @function block found in the sources given\n")
        return 1
    end
    local tmp = args[2] .. ".tmp"
    write_file(tmp, cdoc.serialize(entries))
    assert(os.rename(tmp, args[2]))
    return 0
end

local function main(args)
    if args[1] == "--lua" then
        if #args < 3 then
            io.stderr:write("usage: lua doc/extract_c.lua --lua OUT.lua SOURCE.c...\n")
            return 2
        end
        return main_lua(args)
    end
    local out_path = args[1]
    if not out_path or #args < 2 then
        io.stderr:write("usage: lua5.4 doc/extract_c.lua OUT.c SOURCE.c...\n")
        return 2
    end
    local parts = { HEADER }
    for i = 2, #args do
        local found = blocks(args[i])
        if #found > 0 then
            parts[#parts + 1] = ("/* from %s */"):format(args[i]:match("[^/]+$"))
            for _, b in ipairs(found) do parts[#parts + 1] = b .. "\n" end
        end
    end
    write_file(out_path, table.concat(parts, "\n"))
    return 0
end

os.exit(main(arg))
