-- A session id is its user's own: conversations are keyed by (user_id, id), so that naming another
-- user's session id opens another, new, conversation of one's own, rather than an error that tells
-- which ids exist. chat_messages gets its session's user_id beside session_id, for the two-column
-- foreign key and keys. User ids compare byte for byte (utf8mb4_nopad_bin: trailing spaces count
-- too), as the JWT's sub does: "Alice", "alice" and "alice " are three users, each with her own
-- sessions. Every session and message is kept, with its owner. Both tables are rebuilt (copied) by
-- the ALTERs, during which turns wait.
ALTER TABLE chat_messages DROP FOREIGN KEY IF EXISTS fk_messages_session;
ALTER TABLE chat_messages
  ADD COLUMN IF NOT EXISTS user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL DEFAULT '' AFTER id;
UPDATE chat_messages m JOIN chat_sessions s ON s.id = m.session_id SET m.user_id = s.user_id;
ALTER TABLE chat_sessions
  MODIFY user_id VARCHAR(255) CHARACTER SET utf8mb4 COLLATE utf8mb4_nopad_bin NOT NULL,
  DROP PRIMARY KEY,
  ADD PRIMARY KEY (user_id, id),
  DROP KEY IF EXISTS idx_sessions_user;
ALTER TABLE chat_messages
  ALTER COLUMN user_id DROP DEFAULT,
  DROP KEY IF EXISTS uq_messages_turn,
  DROP KEY IF EXISTS idx_messages_session,
  ADD UNIQUE KEY uq_messages_turn (user_id, session_id, request_id, role),
  ADD KEY idx_messages_session (user_id, session_id, id),
  ADD CONSTRAINT fk_messages_session FOREIGN KEY (user_id, session_id)
    REFERENCES chat_sessions (user_id, id) ON DELETE CASCADE;
