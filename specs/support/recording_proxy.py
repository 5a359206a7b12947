#!/usr/bin/env python3
"""A recording HTTP proxy for tests: logs every request it receives (the request line and the
headers, as bytes) to LOG, tunnels CONNECT requests to TARGET_HOST:TARGET_PORT whatever they
name (so a test can point a made-up host name at a loopback server), and answers any other
request 502. Prints its port on stdout, then serves until killed. Loopback only."""
import socket
import sys
import threading

log_path, target_host, target_port = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = threading.Lock()


def record(data):
    with lock:
        with open(log_path, "ab") as f:
            f.write(data + b"\n--\n")


def pipe(src, dst):
    try:
        while True:
            b = src.recv(65536)
            if not b:
                break
            dst.sendall(b)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def serve(conn):
    head = b""
    while b"\r\n\r\n" not in head and len(head) < 65536:
        b = conn.recv(4096)
        if not b:
            break
        head += b
    record(head)
    if head.startswith(b"CONNECT "):
        up = socket.create_connection((target_host, target_port))
        conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
        threading.Thread(target=pipe, args=(up, conn), daemon=True).start()
        pipe(conn, up)
    else:
        conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        conn.close()


srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", 0))
srv.listen(16)
print(srv.getsockname()[1], flush=True)
while True:
    c, _ = srv.accept()
    threading.Thread(target=serve, args=(c,), daemon=True).start()
