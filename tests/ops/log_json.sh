#!/usr/bin/env bash
# CHAT_LOG_FORMAT=json: a stack started with it (its own, in $CHAT_VAR/own, at debug level) writes
# every line of the streamer's, the workers' and the FastCGI responders' logs
# as one JSON object with time, level, process, pid and event; the pipeline's lines name their session.
# node parses them (it is already a test dependency).
source "$(dirname "$0")/lib.sh"
OWN=$VAR/own
L=$OWN/log
own_stack "$OWN" -- stop >/dev/null 2>&1
rm -f "$L"/chat-*.log
own_stack_start "$OWN" "$LOG/ops-logjson-start.out" CHAT_LOG_FORMAT=json CHAT_LOG_LEVEL=debug
tok=$OWN/token
own_token "$OWN" logjson-user logjson@example.com "$tok"
"$BIN/chat-ws" --url "ws://127.0.0.1:$PORT/ws/chat" --token-file "$tok" --timeout 30 "What is the engine power?" >/dev/null 2>&1
curl -s -o /dev/null -m 30 -H "Authorization: Bearer $(cat "$tok")" -H 'Content-Type: application/json' \
  -d '{"message":"What is the engine power?"}' "$BASE/api/v1/chat"
sleep 0.5
# every line of the file one object with the fields: prints nothing, or what is wrong
json_lines() {
  node -e '
    const lines = require("fs").readFileSync(process.argv[1], "utf8").split("\n").filter(l => l.length);
    if (!lines.length) { console.log("no line"); process.exit(1); }
    for (const l of lines) {
      let o; try { o = JSON.parse(l); } catch (e) { console.log("not JSON: " + l); process.exit(1); }
      const ok = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$/.test(o.time) && ["debug", "info", "warn", "error"].includes(o.level)
        && typeof o.process === "string" && Number.isInteger(o.pid) && typeof o.event === "string";
      if (!ok) { console.log("fields missing: " + l); process.exit(1); }
    }' "$1"
}
for f in chat-streamer chat-worker chat-fcgi; do
  check "every line of $f.log is a JSON object with time, level, process, pid, event" json_lines "$L/$f.log"
done
check "the streamer's lines name it" grep -q '"process":"chat-streamer"' "$L/chat-streamer.log"
check "a pipeline line names its session" grep -q '"session_id":"' "$L/chat-worker.log" "$L/chat-fcgi.log"
check_not "no line holds the question" grep -q 'engine power' "$L/chat-streamer.log" "$L/chat-worker.log" "$L/chat-fcgi.log"
own_stack "$OWN" -- stop >/dev/null 2>&1
rm -f "$L"/chat-*.log
finish
