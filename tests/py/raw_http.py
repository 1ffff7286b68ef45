"""Raw-socket HTTP/1.1 clients the end-to-end proxy tests need and curl cannot be:

    raw_http.py slowloris HOST PORT      send half a request head, then wait for the close
    raw_http.py pipeline HOST PORT       four requests in one write, read until the close

Each prints one JSON object: what came back and how the connection ended. Every wait is
bounded (10 s).
"""

import json
import socket
import sys
import time

CHAT = b'{"model":"llama-3-8b","max_tokens":5,"messages":[{"role":"user","content":"say five words"}]}'


def read_until_close(sock):
    sock.settimeout(10)
    data, ended = b"", "timeout"
    try:
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                ended = "closed"
                break
            data += chunk
    except socket.timeout:
        pass
    except ConnectionResetError:
        ended = "reset"
    return data, ended


def slowloris(host, port):
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(b"POST /v1/chat/completions HTTP/1.1\r\nhost: model\r\ncontent-type: appl")
    started = time.monotonic()
    data, ended = read_until_close(sock)
    return {"ended": ended, "seconds": round(time.monotonic() - started, 3), "reply": data.decode("latin-1")}


def pipeline(host, port):
    chat = (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: model\r\ncontent-type: application/json\r\n"
        + b"content-length: %d\r\n\r\n" % len(CHAT)
        + CHAT
    )
    models = b"GET /v1/models HTTP/1.1\r\nhost: model\r\n\r\n"
    last = b"GET /v1/models HTTP/1.1\r\nhost: model\r\nconnection: close\r\n\r\n"
    sock = socket.create_connection((host, port), timeout=10)
    sock.sendall(chat + models + chat + last)
    data, ended = read_until_close(sock)
    return {"ended": ended, "reply": data.decode("latin-1")}


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = {"slowloris": slowloris, "pipeline": pipeline}[mode](host, port)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
