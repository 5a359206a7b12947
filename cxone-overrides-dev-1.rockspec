-- Builds the same C sources as CMakeLists.txt (tests/check_rockspec.sh keeps the lists equal).
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
build = {
    type = "builtin",
    modules = {
        ["cxone.core"] = {
            sources = {
                "plugin/core.c",
                "plugin/buf.c",
                "plugin/scrub.c",
                "plugin/pace.c",
                "plugin/json.c",
                "plugin/util.c",
                "plugin/validate.c",
                "plugin/drift.c",
                "plugin/audit.c",
                "plugin/statefile.c",
                "plugin/engine.c",
                "plugin/curl_driver.c",
                "plugin/config.c",
                "plugin/answer.c",
                "plugin/client.c",
                "plugin/engine_lua.c",
            },
            defines = { "PCRE2_CODE_UNIT_WIDTH=8", "_GNU_SOURCE" },
            libraries = { "curl", "pcre2-8", "crypto" },
            incdirs = { "$(CURL_INCDIR)", "$(PCRE2_INCDIR)", "$(CRYPTO_INCDIR)", "/usr/include/lua5.1" },
            libdirs = { "$(CURL_LIBDIR)", "$(PCRE2_LIBDIR)", "$(CRYPTO_LIBDIR)" },
        },
        ["cxone"] = "lua/cxone/init.lua",
        ["cxone.tiers"] = "lua/cxone/tiers.lua",
        ["cxone.payload"] = "lua/cxone/payload.lua",
        ["cxone.validate"] = "lua/cxone/validate.lua",
        ["cxone.drift"] = "lua/cxone/drift.lua",
        ["cxone.audit"] = "lua/cxone/audit.lua",
        ["cxone.render"] = "lua/cxone/render.lua",
        ["cxone.client"] = "lua/cxone/client.lua",
        ["cxone.plan"] = "lua/cxone/plan.lua",
        ["cxone.playbook"] = "lua/cxone/playbook.lua",
        ["cxone.planfile"] = "lua/cxone/planfile.lua",
        ["cxone.ledger"] = "lua/cxone/ledger.lua",
        ["cxone.report"] = "lua/cxone/report.lua",
        ["cxone.cli"] = "lua/cxone/cli.lua",
        ["cxone.repl"] = "lua/cxone/repl.lua",
        ["cxone.transport.wire"] = "lua/cxone/transport/wire.lua",
        ["cxone.transport.views"] = "lua/cxone/transport/views.lua",
        ["cxone.haproxy"] = "lua/cxone/haproxy.lua",
        ["resty.cxone"] = "lua/resty/cxone.lua",
    },
    install = { bin = { cxone = "bin/cxone" } },
}
