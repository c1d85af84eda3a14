#!/usr/bin/env bash
# Prints, in lighttpd.conf syntax, what lighttpd.conf takes from the environment beyond single values
# (it runs this with include_shell each time it reads its configuration):
# - var.chat_settings: the names of the environment variables lighttpd copies to its FastCGI responders
#   (bin-copy-environment): every chat setting that is set, i.e. every CHAT_*, JWT_* and LLM_* variable,
#   OPENROUTER_API_KEY and TZ. A setting added to the programs reaches the responders without a list to
#   keep in step; variables outside those names (other secrets of the shell) stay out.
# - var.chat_streamers: the proxy.server hosts of /ws/chat, one per streamer socket of
#   CHAT_STREAMER_SOCKETS (comma-separated; deploy/stack.sh sets it from CHAT_STREAMERS), else the one
#   CHAT_STREAMER_SOCKET. "disable-time" 0: a streamer whose socket is missing or refuses (restarting,
#   draining) is skipped until lighttpd's next once-a-second check instead of for 1-2 s (the default 1),
#   so that in a rolling restart the streamer just restarted is used again before the next one stops
#   (with every backend disabled lighttpd answers 503 without trying any). A new request still never
#   sees a backend that fails to connect: lighttpd retries it on another (mod_proxy, gw_backend.c).
printf 'var.chat_settings = ('
for v in $(compgen -e); do
  case $v in CHAT_* | JWT_* | LLM_* | OPENROUTER_API_KEY | TZ) printf ' "%s",' "$v" ;; esac
done
printf ' )\n'
IFS=, read -ra socks <<<"${CHAT_STREAMER_SOCKETS:-${CHAT_STREAMER_SOCKET:-}}"
printf 'var.chat_streamers = ('
for s in "${socks[@]}"; do
  # a path with a quote or a backslash would break out of the string: refused (lighttpd.conf fails)
  case $s in *'"'* | *'\'*) echo "lighttpd-env.sh: a streamer socket path holds a quote or backslash" >&2; exit 1 ;; esac
  [ -n "$s" ] && printf ' ( "socket" => "%s", "disable-time" => 0 ),' "$s"
done
printf ' )\n'
