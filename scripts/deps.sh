#!/bin/sh
# Installs the Debian packages cxone-overrides needs, only those that are missing.
# Idempotent and non-interactive; a no-op (no apt-get at all) when everything is present.
set -eu

PACKAGES="
build-essential cmake pkg-config
lua5.4 liblua5.4-dev lua5.3 liblua5.3-dev luajit2 libluajit2-5.1-dev
lua-cjson lua-cjson-dev lua-compat53-dev lua-busted luarocks
libcurl4-openssl-dev libpcre2-dev libssl-dev libmicrohttpd-dev
curl openssl python3 python3-yaml valgrind wrk
clang libclang-rt-14-dev
lua-readline lua-posix lua-argparse lua-ldoc lua-markdown man-db groff-base
nghttp2-proxy nginx-light libnginx-mod-http-lua haproxy
"
[ "${1-}" = "--list" ] && { echo $PACKAGES; exit 0; }

missing=""
for p in $PACKAGES; do
    st=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
    case "$st" in
        *"install ok installed"*) ;;
        *) missing="$missing $p" ;;
    esac
done
[ -z "$missing" ] && exit 0

echo "deps: installing:$missing" >&2
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
else
    SUDO=""
fi
export DEBIAN_FRONTEND=noninteractive
# One refresh of the package lists; a stale list is the usual cause of "Unable to locate".
$SUDO apt-get update -qq >&2
# shellcheck disable=SC2086
$SUDO apt-get install -y -qq --no-install-recommends $missing >&2
