# transport_contract's oversized answer: a token to anyone, then a 200 whose body is SIZE bytes
# (argv[1]) to every GET. Prints its base URL first, then serves until killed. 127.0.0.1 only.
import http.server
import sys

SIZE = int(sys.argv[1])


class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def answer(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def read_body(self):
        # the whole request body (HAProxy's httpclient may send it chunked), before answering:
        # answering early and closing would reset the connection under the client
        if "chunked" in (self.headers.get("Transfer-Encoding") or "").lower():
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    return
                self.rfile.read(size + 2)
        self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def do_POST(self):
        self.read_body()
        self.answer(b'{"access_token":"big-server-token-0123456789","token_type":"bearer","expires_in":3600}')

    def do_GET(self):
        self.answer(b'{"variables":"' + b"x" * (SIZE - 16) + b'"}')


server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
print("http://127.0.0.1:%d" % server.server_address[1], flush=True)
server.serve_forever()
