"""Raw-socket HTTP/1.1 clients the end-to-end proxy tests need and curl cannot be:

    raw_http.py slowloris HOST PORT      send half a request head, then wait for the close
    raw_http.py pipeline HOST PORT       four requests in one write, read until the close
    raw_http.py dribble HOST PORT        three large chat requests on one connection, each
                                         written in 4 KiB pieces; reports the socket's TCP_INFO

Each prints one JSON object: what came back and how the connection ended. Every wait is
bounded (10 s).
"""

import json
import socket
import struct
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


def tcp_bytes(sock):
    """Bytes the kernel's TCP moved for this socket (struct tcp_info: tcpi_bytes_acked at
    offset 120, tcpi_bytes_received at 128); messages moved socket to socket are not counted."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 232)
    acked, received = struct.unpack_from("<QQ", info, 120)
    return {"acked": acked, "received": received}


def dribble(host, port):
    words = " ".join("word%d" % i for i in range(40000))
    body = json.dumps(
        {"model": "llama-3-8b", "max_tokens": 64, "messages": [{"role": "user", "content": words}]}
    ).encode()
    sock = socket.create_connection((host, port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    replies, sent = [], 0
    for i in range(3):
        close = b"connection: close\r\n" if i == 2 else b""
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: model\r\ncontent-type: application/json\r\n"
            + close
            + b"content-length: %d\r\n\r\n" % len(body)
            + body
        )
        for at in range(0, len(request), 4096):
            sock.sendall(request[at : at + 4096])
        sent += len(request)
        if i < 2:
            replies.append(read_response(sock))
    data, ended = read_until_close(sock)
    replies.append(data.decode("latin-1"))
    return {"ended": ended, "sent": sent, "replies": replies, "tcp": tcp_bytes(sock)}


def read_response(sock):
    """One response with a Content-Length body."""
    sock.settimeout(10)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            return data.decode("latin-1")
        data += chunk
    head, _, rest = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n"):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(rest) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        rest += chunk
    return (head + b"\r\n\r\n" + rest).decode("latin-1")


def main():
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    out = {"slowloris": slowloris, "pipeline": pipeline, "dribble": dribble}[mode](host, port)
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
