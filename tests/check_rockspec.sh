#!/bin/sh
# The rockspec builds the same C sources and Lua modules as CMake, declares every module the Lua
# side requires, and builds with those dependencies resolved (not skipped): offline, against a
# local rocks tree that records the Debian packages providing them (see "system" below).
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

lua_files=$(find lua -name '*.lua' | sort)
rock_lua=$(grep -oE '"lua/[a-z_/]*\.lua"' "$ROCKSPEC" | tr -d '"' | sort)
[ "$lua_files" = "$rock_lua" ] || fail "Lua modules differ: tree [$lua_files] rockspec [$rock_lua]"
echo "ok: Lua modules match ($(echo "$lua_files" | wc -l) files)"

# Every module required unconditionally by lua/ or bin/cxone is ours or a declared dependency.
# (A `pcall(require, "x")` is optional and not matched.) Module → rock → Debian package:
rock_of() {
    case "$1" in
        cjson|cjson.safe) echo lua-cjson ;;
        argparse) echo argparse ;;
        readline) echo readline ;;
        posix|posix.*) echo luaposix ;;
        *) echo "" ;;
    esac
}
deb_of() {
    case "$1" in
        lua-cjson) echo lua-cjson ;;
        argparse) echo lua-argparse ;;
        readline) echo lua-readline ;;
        luaposix) echo lua-posix ;;
        *) echo "" ;;
    esac
}
declared=$(sed -n '/^dependencies = {/,/^}/p' "$ROCKSPEC" | grep -oE '^[[:space:]]*"[a-z0-9_-]+' | tr -d ' "' | grep -v '^lua$' | sort -u)
required=$(grep -rhoE 'require[[:space:]]*\(?[[:space:]]*"[a-zA-Z0-9_.]+"' lua bin | grep -oE '"[^"]+"' | tr -d '"' | sort -u)
for m in $required; do
    f=$(echo "$m" | tr . /)
    [ -f "lua/$f.lua" ] || [ -f "lua/$f/init.lua" ] || [ "$m" = cxone.core ] && continue
    case "$m" in cxone|cxone.*|resty.cxone*) fail "lua/ requires '$m', which is not in lua/" ;; esac
    r=$(rock_of "$m")
    [ -n "$r" ] || fail "lua/ requires '$m': declare its rock in $ROCKSPEC and map it in tests/check_rockspec.sh"
    echo "$declared" | grep -qx "$r" || fail "lua/ requires '$m' but the rockspec does not declare '$r'"
done
echo "ok: every required module is declared: $(echo $declared)"

tree=$(mktemp -d)
trap 'rm -rf "$tree"' EXIT
# "system": a rocks tree holding one metadata-only rock per declared dependency, at the version
# of the installed Debian package that provides it (Debian's packages do not register with
# luarocks). With rocks_servers empty nothing is fetched: a dependency no Debian package
# provides, or one whose version is too old, fails the build below.
mkdir "$tree/stub" "$tree/system"
cat >"$tree/config.lua" <<CFG
rocks_trees = { { name = "system", root = "$tree/system" } }
rocks_servers = {}
CFG
for r in $declared; do
    deb=$(deb_of "$r")
    [ -n "$deb" ] || fail "dependency '$r' has no Debian package mapped in tests/check_rockspec.sh"
    v=$(dpkg-query -W -f='${Version}' "$deb" 2>/dev/null) || fail "dependency '$r': Debian package $deb is not installed (scripts/deps.sh)"
    grep -qw "$deb" scripts/deps.sh || fail "dependency '$r': $deb is not in scripts/deps.sh"
    v=$(echo "$v" | sed -E 's/^[0-9]+://; s/[-+~].*$//')   # 1:2.1.0+dfsg-2 -> 2.1.0
    cat >"$tree/stub/$r-$v-1.rockspec" <<ROCK
rockspec_format = "3.0"
package = "$r"
version = "$v-1"
source = { url = "file:///dev/null" }
description = { summary = "provided by the Debian package $deb" }
build = { type = "none", install = {} }
ROCK
    (cd "$tree/stub" && LUAROCKS_CONFIG="$tree/config.lua" luarocks --lua-version=5.4 make \
        --tree="$tree/system" "$r-$v-1.rockspec") >"$tree/log" 2>&1 || { cat "$tree/log" >&2; fail "stub rock $r"; }
    echo "ok: $r $v provided by $deb"
done

# build a clean copy so the rock never sees build trees
git -C "$SRC" ls-files -co --exclude-standard | grep -v '^build' | while read -r f; do [ -e "$f" ] && echo "$f"; done \
    | tar -cf - -T - | (mkdir "$tree/src" && cd "$tree/src" && tar -xf -)
# Debian keeps curl.h under the multiarch include directory.
MA=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
(cd "$tree/src" && LUAROCKS_CONFIG="$tree/config.lua" luarocks --lua-version=5.4 make --deps-mode=all \
    --tree="$tree/rocks" "$ROCKSPEC" \
    CURL_INCDIR=/usr/include/$MA CURL_LIBDIR=/usr/lib/$MA PCRE2_LIBDIR=/usr/lib/$MA CRYPTO_LIBDIR=/usr/lib/$MA) >"$tree/log" 2>&1 \
    || { cat "$tree/log" >&2; fail "luarocks make (dependencies resolved from the system tree) failed"; }
echo "ok: luarocks make --deps-mode=all, dependencies resolved offline"
LUA_PATH="$tree/rocks/share/lua/5.4/?.lua;$tree/rocks/share/lua/5.4/?/init.lua;;" \
LUA_CPATH="$tree/rocks/lib/lua/5.4/?.so;;" \
    lua5.4 -e 'local c = require("cxone.core"); local x = require("cxone")
assert(c.validate and c.client and x.payload, "incomplete module")
assert(package.searchpath("cxone.core", package.cpath):find("rocks", 1, true), "loaded the wrong module")
assert(require("cjson.safe") and require("argparse") and require("cxone.cli"), "a dependency does not load")
print("ok: the rock loads cxone.core " .. c._VERSION .. " and its dependencies")' || fail "the rock does not load"
# the rock's own cxone command (luarocks' wrapper) runs from / with an empty environment but for
# the luarocks configuration naming this tree (a rock installed into a default tree needs none)
cat >"$tree/config-run.lua" <<CFG
rocks_trees = { { name = "cxone", root = "$tree/rocks" }, { name = "system", root = "$tree/system" } }
CFG
ver=$(cd / && env -i LUAROCKS_CONFIG="$tree/config-run.lua" "$tree/rocks/bin/cxone" --version 2>&1) \
    || fail "the rock's cxone: $ver"
echo "ok: the rock's bin/cxone runs: $ver"
echo "rockspec: all checks passed"
