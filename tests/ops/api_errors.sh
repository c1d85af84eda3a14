#!/usr/bin/env bash
# Every /api/ path answers errors in the API's JSON shape ({"error": ..., "code": ...}, application/json),
# lighttpd's own errors included: those it raises before matching any path (411 for a bodiless POST,
# 431, 501, 505, 400 without Host) as well as 413 and 404. Static files keep lighttpd's HTML pages.
# Runs against the test stack (tests/run.sh, e2e), with raw requests over bash's /dev/tcp.
source "$(dirname "$0")/lib.sh"
raw() { # request -> the response (status line, headers, body) on stdout
  exec 3<>"/dev/tcp/127.0.0.1/$PORT" || return 1
  printf '%b' "$1" >&3
  timeout 5 cat <&3
  exec 3<&-
}
json_error() { # name request status
  local out status ctype body
  out=$(raw "$2" | tr -d '\r')
  status=$(echo "$out" | head -1 | awk '{print $2}')
  ctype=$(echo "$out" | sed -n 's/^Content-Type: //Ip' | head -1)
  body=$(echo "$out" | sed '1,/^$/d')
  if [ "$status" = "$3" ] && [ "$ctype" = application/json ] &&
    echo "$body" | grep -qE '^\{"error":"[^"]+","code":"[A-Z_]+"\}$'; then
    ok "$1: $status in JSON ($body)"
  else
    not_ok "$1: want $3 in JSON, got ${status:-nothing} ${ctype:-no type}: $(echo "$body" | head -c 120)"
  fi
}
H='Host: 127.0.0.1\r\nConnection: close\r\n'
json_error "bodiless POST" "POST /api/v1/chat HTTP/1.1\r\n${H}\r\n" 411
json_error "oversized request headers" "GET /api/v1/chat HTTP/1.1\r\n${H}X-Big: $(head -c 20000 /dev/zero | tr '\0' a)\r\n\r\n" 431
json_error "unknown Transfer-Encoding" "POST /api/v1/chat HTTP/1.1\r\n${H}Transfer-Encoding: gzip\r\n\r\n" 501
json_error "unsupported HTTP version" "GET /api/v1/chat HTTP/1.7\r\n${H}\r\n" 505
json_error "no Host header" "GET /api/v1/chat HTTP/1.1\r\nConnection: close\r\n\r\n" 400
json_error "invalid Content-Length" "POST /api/v1/chat HTTP/1.1\r\n${H}Content-Length: x\r\n\r\n" 400
json_error "body over lighttpd's limit" "POST /api/v1/chat HTTP/1.1\r\n${H}Content-Type: application/json\r\nContent-Length: 200000\r\n\r\n" 413
json_error "unknown API path" "GET /api/v2/nothing HTTP/1.1\r\n${H}\r\n" 404
json_error "health with a wrong method" "DELETE /health HTTP/1.1\r\n${H}\r\n" 405
ctype=$(raw "GET /no-such-page.html HTTP/1.1\r\n${H}\r\n" | tr -d '\r' | sed -n 's/^Content-Type: //Ip' | head -1)
check "a missing static page keeps lighttpd's HTML page ($ctype)" test "$ctype" = text/html
finish
