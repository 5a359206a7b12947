#!/bin/sh
# The rockspec builds the same C sources and Lua modules as CMake, and its build loads.
set -eu
SRC=$1
cd "$SRC"
ROCKSPEC=cxone-overrides-dev-1.rockspec
fail() { echo "FAIL: $*" >&2; exit 1; }

cmake_c=$(sed -n '/^set(CXONE_CORE_SOURCES/,/^)/p' CMakeLists.txt | grep -o 'plugin/[a-z_]*\.c' | sort)
rock_c=$(sed -n '/sources = {/,/}/p' "$ROCKSPEC" | grep -o 'plugin/[a-z_]*\.c' | sort)
[ -n "$cmake_c" ] || fail "no C sources found in CMakeLists.txt"
[ "$cmake_c" = "$rock_c" ] || fail "C sources differ: CMake [$cmake_c] rockspec [$rock_c]"
echo "ok: C sources match ($(echo "$cmake_c" | wc -l) files)"

lua_files=$(ls lua/cxone/*.lua | sort)
rock_lua=$(grep -o '"lua/cxone/[a-z_]*\.lua"' "$ROCKSPEC" | tr -d '"' | sort)
[ "$lua_files" = "$rock_lua" ] || fail "Lua modules differ: tree [$lua_files] rockspec [$rock_lua]"
echo "ok: Lua modules match"

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
# build a clean copy so the rock never sees build trees
git -C "$SRC" ls-files -co --exclude-standard | grep -v '^build/' | tar -cf - -T - | (mkdir "$tree/src" && cd "$tree/src" && tar -xf -)
# Debian keeps curl.h under the multiarch include directory.
MA=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
(cd "$tree/src" && luarocks --lua-version=5.4 make --deps-mode=none --tree="$tree/rocks" "$ROCKSPEC" \
    CURL_INCDIR=/usr/include/$MA CURL_LIBDIR=/usr/lib/$MA PCRE2_LIBDIR=/usr/lib/$MA CRYPTO_LIBDIR=/usr/lib/$MA) >"$tree/log" 2>&1 \
    || { cat "$tree/log" >&2; fail "luarocks make failed"; }
echo "ok: luarocks make"
LUA_PATH="$tree/rocks/share/lua/5.4/?.lua;$tree/rocks/share/lua/5.4/?/init.lua" \
LUA_CPATH="$tree/rocks/lib/lua/5.4/?.so;/usr/lib/x86_64-linux-gnu/lua/5.4/?.so" \
    lua5.4 -e 'local c = require("cxone.core"); local x = require("cxone")
assert(c.validate and c.client and x.payload, "incomplete module")
assert(package.searchpath("cxone.core", package.cpath):find("rocks", 1, true), "loaded the wrong module")
print("ok: the rock loads cxone.core " .. c._VERSION)' || fail "the rock does not load"
echo "rockspec: all checks passed"
