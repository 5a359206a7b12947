#!/bin/sh
# HTTP/2, verified: cxone.core's Client talks TLS to nghttpx (Debian's nghttp2-proxy), which
# forwards over plain HTTP/1.1 to cxone-sim. nghttpx's access log records the protocol ALPN
# negotiated for each request; every request of the client must show h2 (and HTTP/2).
# usage: h2_test.sh SRC_DIR BUILD_DIR SIM_BIN
set -u
SRC=$1
BUILD=$2
SIM=$3
fail() { echo "FAIL: $*" >&2; exit 1; }
command -v nghttpx >/dev/null || fail "nghttpx not found (Debian package nghttp2-proxy: scripts/deps.sh)"
tmp=$(mktemp -d "${TMPDIR:-/tmp}/cxone-h2.XXXXXX") || exit 1
simpid=
proxypid=
cleanup() {
    [ -n "$proxypid" ] && kill "$proxypid" 2>/dev/null && wait "$proxypid" 2>/dev/null
    [ -n "$simpid" ] && kill "$simpid" 2>/dev/null && wait "$simpid" 2>/dev/null
    rm -rf "$tmp"
}
trap cleanup EXIT

# A test CA and a certificate for 127.0.0.1 signed by it.
ec="-newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes"
# shellcheck disable=SC2086
openssl req -x509 $ec -keyout "$tmp/ca.key" -out "$tmp/ca.pem" -days 2 -subj "/CN=cxone h2 test CA" \
    -addext basicConstraints=critical,CA:TRUE -addext keyUsage=critical,keyCertSign,cRLSign >/dev/null 2>&1 \
    || fail "openssl: CA"
# shellcheck disable=SC2086
openssl req $ec -keyout "$tmp/srv.key" -out "$tmp/srv.csr" -subj "/CN=127.0.0.1" >/dev/null 2>&1 || fail "openssl: key"
printf 'subjectAltName=IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >"$tmp/ext.cnf"
openssl x509 -req -in "$tmp/srv.csr" -CA "$tmp/ca.pem" -CAkey "$tmp/ca.key" -CAcreateserial \
    -out "$tmp/srv.pem" -days 2 -extfile "$tmp/ext.cnf" >/dev/null 2>&1 || fail "openssl: certificate"

# cxone-sim on plain HTTP; it prints its URL once it listens.
mkfifo "$tmp/sim.out"
"$SIM" --listen 127.0.0.1:0 --quiet >"$tmp/sim.out" 2>"$tmp/sim.err" &
simpid=$!
exec 3<"$tmp/sim.out"
read -r simurl <&3 || true
case "$simurl" in http://127.0.0.1:*) ;; *) cat "$tmp/sim.err" >&2; fail "cxone-sim did not start" ;; esac
cat <&3 >/dev/null &
simport=${simurl##*:}

# nghttpx cannot report a port it chose, so take a free one; if another process takes it
# before nghttpx binds, nghttpx exits and the next port is tried.
port=
for attempt in 1 2 3; do
    p=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    nghttpx --conf=/dev/null --frontend="127.0.0.1,$p" --backend="127.0.0.1,$simport" --workers=1 \
        --accesslog-file="$tmp/access.log" --accesslog-format='$alpn $request $status' \
        --errorlog-file="$tmp/error.log" --no-ocsp "$tmp/srv.key" "$tmp/srv.pem" 2>>"$tmp/error.log" &
    proxypid=$!
    # ready when it accepts a TLS connection (bounded: 10 s), or gone when it could not bind
    i=0
    while [ $i -lt 100 ]; do
        kill -0 "$proxypid" 2>/dev/null || break
        if curl -s -o /dev/null --cacert "$tmp/ca.pem" "https://127.0.0.1:$p/_sim/health" 2>/dev/null; then
            port=$p
            break
        fi
        sleep 0.1
        i=$((i + 1))
    done
    [ -n "$port" ] && break
    kill "$proxypid" 2>/dev/null; wait "$proxypid" 2>/dev/null; proxypid=
done
[ -n "$port" ] || { cat "$tmp/error.log" >&2; fail "nghttpx did not start"; }
echo "ok: nghttpx on 127.0.0.1:$port in front of cxone-sim on $simport"
before=0
[ -f "$tmp/access.log" ] && before=$(wc -l <"$tmp/access.log")

LUA_CPATH="$BUILD/?.so;;" LUA_PATH="$SRC/lua/?.lua;$SRC/lua/?/init.lua;;" \
    lua5.4 "$SRC/tests/h2/h2_client.lua" "https://127.0.0.1:$port" "$tmp/ca.pem" \
    a1b2c3d4-e5f6-4890-abcd-ef1234567890 || fail "the client failed through nghttpx"

# The client's requests are the access log lines after the readiness probes; nghttpx writes a
# line when a request completes, and the client closed its connection above.
tail -n +"$((before + 1))" "$tmp/access.log" >"$tmp/client.log"
sed 's/^/  /' "$tmp/client.log"
n=$(wc -l <"$tmp/client.log")
[ "$n" -ge 7 ] || { cat "$tmp/access.log" >&2; fail "expected at least 7 requests of the client in the access log, found $n"; }
bad=$(grep -cv '^h2 .* HTTP/2 [0-9]*$' "$tmp/client.log")
[ "$bad" -eq 0 ] || { cat "$tmp/client.log" >&2; fail "$bad of $n requests were not HTTP/2 over ALPN h2"; }
grep -q '^h2 POST /oauth/token HTTP/2 200$' "$tmp/client.log" || { cat "$tmp/client.log" >&2; fail "no token request over h2"; }
grep -q '^h2 PATCH /api/v2/integration/actions/.* HTTP/2 200$' "$tmp/client.log" || { cat "$tmp/client.log" >&2; fail "no PATCH over h2"; }
echo "ok: nghttpx's access log: all $n requests of the client negotiated h2 (ALPN) and were HTTP/2"
echo "h2: all checks passed"
