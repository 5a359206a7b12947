#!/bin/sh
# The rockspec builds the same C sources and Lua modules as CMake, declares every module the Lua
# side requires, and builds with those dependencies resolved (not skipped): offline, against a
# local rocks tree that records the Debian packages providing them (see "system" below).
set -eu
SRC=$1
cd "$SRC"
ROCKSPEC=cxone-overrides-dev-1.rockspec
fail() { echo "FAIL: $*" >&2; exit 1; }

# One build for both paths: the rock runs CMakeLists.txt (luarocks' cmake backend), so the rock
# and `cmake --install` cannot build different sources or install different modules.
grep -qE '^[[:space:]]*type = "cmake",' "$ROCKSPEC" || fail "the rockspec does not build through CMakeLists.txt"
echo "ok: the rockspec builds through CMakeLists.txt"

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
EXT="CURL_INCDIR=/usr/include/$MA CURL_LIBDIR=/usr/lib/$MA PCRE2_LIBDIR=/usr/lib/$MA CRYPTO_LIBDIR=/usr/lib/$MA"

# The dependencies resolve offline, from the system tree, with nothing to fetch.
(cd "$tree/src" && LUAROCKS_CONFIG="$tree/config.lua" luarocks --lua-version=5.4 make --only-deps \
    --deps-mode=all --tree="$tree/rocks" "$ROCKSPEC" $EXT) >"$tree/log" 2>&1 \
    || { cat "$tree/log" >&2; fail "luarocks make --only-deps --deps-mode=all (offline, from the system tree)"; }
echo "ok: luarocks make --only-deps --deps-mode=all resolves every dependency offline"

# The build README.md documents for a Debian machine (dependencies from Debian's packages):
# luarocks make --deps-mode=none --tree=DIR, with the same empty rocks_servers (nothing fetched).
(cd "$tree/src" && LUAROCKS_CONFIG="$tree/config.lua" luarocks --lua-version=5.4 make --deps-mode=none \
    --tree="$tree/rocks" "$ROCKSPEC" $EXT) >"$tree/log" 2>&1 \
    || { cat "$tree/log" >&2; fail "luarocks make --deps-mode=none --tree (offline) failed"; }
echo "ok: luarocks make --deps-mode=none --tree=DIR built and installed the rock offline"

# Every module of lua/ is deployed, plus cxone.repl.core_doc (generated by the build).
(cd lua && { find . -name '*.lua'; echo ./cxone/repl/core_doc.lua; } | sort) >"$tree/want"
(cd "$tree/rocks/share/lua/5.4" && find . -name '*.lua' | sort) >"$tree/have"
cmp -s "$tree/want" "$tree/have" || { diff "$tree/want" "$tree/have" >&2; fail "the rock's Lua modules differ from lua/"; }
[ -f "$tree/rocks/lib/lua/5.4/cxone/core.so" ] || fail "the rock has no lib/lua/5.4/cxone/core.so"
echo "ok: the rock deploys cxone.core and all $(wc -l <"$tree/want") Lua modules"

# `luarocks path --tree` gives the paths to use the rock: the module, its dependencies and the
# command, with nothing else in the environment (the Debian packages' own paths are the defaults).
paths=$(LUAROCKS_CONFIG="$tree/config.lua" luarocks --lua-version=5.4 path --tree="$tree/rocks") \
    || fail "luarocks path --tree"
cat >"$tree/config-run.lua" <<CFG
rocks_trees = { { name = "cxone", root = "$tree/rocks" }, { name = "system", root = "$tree/system" } }
CFG
run() { (cd / && env -i LUAROCKS_CONFIG="$tree/config-run.lua" HOME=/nonexistent sh -c "$paths
$1"); }
run 'lua5.4 -e '"'"'local c = require("cxone.core"); local x = require("cxone")
assert(c.validate and c.client and x.payload, "incomplete module")
assert(package.searchpath("cxone.core", package.cpath):find("/rocks/", 1, true), "loaded the wrong module")
assert(require("cjson.safe") and require("argparse") and require("cxone.cli"), "a dependency does not load")
print("ok: after luarocks path --tree, lua5.4 loads the rock: cxone.core " .. c._VERSION)'"'" \
    || fail "the rock does not load with the paths of luarocks path --tree"
where=$(run 'command -v cxone') || fail "luarocks path --tree: no cxone in PATH"
[ "$where" = "$tree/rocks/bin/cxone" ] || fail "luarocks path --tree: cxone is $where"
ver=$(run 'cxone --version' 2>&1) || fail "the rock's cxone: $ver"
echo "ok: the rock's cxone runs from PATH: $ver"

# The REPL's help for a C function comes from the rock's cxone.repl.core_doc.
out=$(run "printf '%s\\n' 'help(cxone.core.sha256)' 'select(2, require(\"cxone.repl.cdoc\").entries())' | cxone repl" 2>/dev/null) \
    || fail "the rock's cxone repl: $out"
echo "$out" | grep -q 'SHA-256 of a string' || fail "the rock's REPL has no help for cxone.core.sha256: $out"
echo "$out" | tail -n 1 | grep -qx '"module"' || fail "the rock's REPL help did not come from cxone.repl.core_doc: $out"
echo "ok: the rock's cxone repl: help(cxone.core.sha256) from cxone.repl.core_doc"

# `cxone sim` from the rock runs the rock's own cxone-sim (no CXONE_SIM_BIN), in its own pid.
[ -x "$tree/rocks/bin/cxone-sim" ] || fail "the rock installs no bin/cxone-sim"
lr_bin=$(LUAROCKS_CONFIG="$tree/config.lua" luarocks --lua-version=5.4 path --lr-bin --tree="$tree/rocks") \
    || fail "luarocks path --lr-bin"
# exec all the way down (env, luarocks' wrapper, lua5.4, cxone): $! is the emulator's pid
(cd / && exec env -i LUAROCKS_CONFIG="$tree/config-run.lua" PATH="$lr_bin" \
    cxone sim --listen 127.0.0.1:0 --quiet) >"$tree/sim.out" 2>"$tree/sim.err" &
pid=$!
i=0
until [ -s "$tree/sim.out" ]; do
    kill -0 "$pid" 2>/dev/null || fail "the rock's cxone sim exited: $(cat "$tree/sim.err")"
    i=$((i + 1)); [ "$i" -lt 200 ] || { kill "$pid"; fail "the rock's cxone sim printed no URL in 20 s"; }
    sleep 0.1
done
exe=$(readlink -f "/proc/$pid/exe")
kill -TERM "$pid"; wait "$pid"
case "$exe" in "$tree"/rocks/*/cxone-sim) ;; *) fail "the rock's cxone sim ran $exe" ;; esac
kill -0 "$pid" 2>/dev/null && fail "the rock's cxone sim outlived SIGTERM"
echo "ok: the rock's cxone sim runs the rock's emulator ($exe) and ends with SIGTERM"
echo "rockspec: all checks passed"
