-- Gathers the /*** ... */ LDoc blocks of plugin/*.c into one C file documenting module cxone.core.
-- usage: lua5.4 doc/extract_c.lua OUT.c plugin/a.c plugin/b.c ...
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
    local text = f:read("a")
    f:close()
    local out = {}
    for block in text:gmatch("/%*%*%*.-%*/") do out[#out + 1] = block end
    return out
end

local function main(args)
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
    local f = assert(io.open(out_path, "w"))
    assert(f:write(table.concat(parts, "\n")))
    assert(f:close())
    return 0
end

os.exit(main(arg))
