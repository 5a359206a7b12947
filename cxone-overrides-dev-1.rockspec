-- The rock of cxone-overrides, built by CMakeLists.txt itself (tests/check_rockspec.sh builds it offline).
rockspec_format = "3.0"
package = "cxone-overrides"
version = "dev-1"
source = { url = "git+file:///dev/null" }
description = {
    summary = "Scoped environment-variable overrides for NICE CXone Data Actions, across tiers",
    detailed = "A C module (cxone.core: validate, drift, audit, an OAuth2/libcurl client) and a Lua package (cxone) for promotion playbooks.",
    license = "MIT",
}
-- Runtime dependencies of the Lua side (each also a Debian package in scripts/deps.sh:
-- lua-cjson, lua-argparse); tests/check_rockspec.sh checks that every module lua/ requires is here.
dependencies = {
    "lua >= 5.1, < 5.5",
    "lua-cjson >= 2.1.0",   -- cxone.cli (--json output)
    "argparse >= 0.7",      -- cxone.cli (the command grammar, completion scripts)
}
external_dependencies = {
    CURL = { header = "curl/curl.h" },
    PCRE2 = { header = "pcre2.h" },
    CRYPTO = { header = "openssl/evp.h" },
}
-- One build for both paths: luarocks runs the project's own CMakeLists.txt (as luv's rockspec
-- does), so the rock gets exactly what `cmake --install` gives: cxone.core, the cxone package,
-- cxone.repl.core_doc (help for cxone.core's functions, generated from plugin/*.c by
-- doc/extract_c.lua), bin/cxone and, for Lua 5.4, bin/cxone-sim (found by `cxone sim`).
build = {
    type = "cmake",
    variables = {
        CMAKE_INSTALL_PREFIX = "$(PREFIX)",
        CXONE_ROCK_LUA = "$(LUA)",
        CXONE_INSTALL_LMOD = "$(LUADIR)",
        CXONE_INSTALL_CMOD = "$(LIBDIR)",
        CMAKE_BUILD_TYPE = "Release",
    },
}
