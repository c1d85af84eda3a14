#!/usr/bin/env bash
# Prints, in lighttpd.conf syntax, the names of the environment variables lighttpd copies to its FastCGI
# responders (bin-copy-environment): every chat setting that is set, i.e. every CHAT_*, JWT_* and LLM_*
# variable, OPENROUTER_API_KEY and TZ. lighttpd.conf runs it (include_shell) each time it reads its
# configuration, so a setting added to the programs reaches the responders without a list to keep in
# step; variables outside those names (other secrets of the shell) stay out.
printf 'var.chat_settings = ('
for v in $(compgen -e); do
  case $v in CHAT_* | JWT_* | LLM_* | OPENROUTER_API_KEY | TZ) printf ' "%s",' "$v" ;; esac
done
printf ' )\n'
