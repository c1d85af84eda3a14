-- The chat backend's schema, baseline version 1. Idempotent: safe to run on every start.
-- Later changes go in sql/migrations/NNN_name.sql (NNN > 1), applied in order by `chat-kb migrate`,
-- each recorded in schema_version. Never edit a migration that has shipped: add a new one.
-- Text is utf8mb4 throughout so emoji and CJK round-trip.

CREATE TABLE IF NOT EXISTS schema_version (
  version    INT NOT NULL PRIMARY KEY,
  applied_at TIMESTAMP NOT NULL DEFAULT CURRENT_TIMESTAMP
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4;

-- The dealer's product line, customers, their boats and service appointments.
CREATE TABLE IF NOT EXISTS models (
  id         VARCHAR(64)  NOT NULL PRIMARY KEY,   -- slug, e.g. 'seawind-250'
  name       VARCHAR(128) NOT NULL,               -- 'Seawind 250'
  category   VARCHAR(64)  NOT NULL,
  model_year SMALLINT     NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS customers (
  id    VARCHAR(64)  NOT NULL PRIMARY KEY,        -- 'cust-1001'
  name  VARCHAR(128) NOT NULL,
  email VARCHAR(255) NOT NULL,
  phone VARCHAR(32)  NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS vehicles (
  id            VARCHAR(64) NOT NULL PRIMARY KEY,
  customer_id   VARCHAR(64) NOT NULL,
  model_id      VARCHAR(64) NOT NULL,
  hull_id       VARCHAR(32) NOT NULL,
  nickname      VARCHAR(64) NULL,
  purchase_date DATE        NULL,
  engine_hours  INT         NULL,
  KEY idx_vehicles_customer (customer_id),
  CONSTRAINT fk_vehicles_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE,
  CONSTRAINT fk_vehicles_model FOREIGN KEY (model_id) REFERENCES models (id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS appointments (
  id           BIGINT      NOT NULL PRIMARY KEY,
  customer_id  VARCHAR(64) NOT NULL,
  vehicle_id   VARCHAR(64) NULL,
  scheduled_at DATETIME    NOT NULL,
  service      VARCHAR(255) NOT NULL,
  location     VARCHAR(128) NULL,
  status       ENUM('scheduled','completed','cancelled') NOT NULL DEFAULT 'scheduled',
  KEY idx_appointments_customer (customer_id, scheduled_at),
  CONSTRAINT fk_appointments_customer FOREIGN KEY (customer_id) REFERENCES customers (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- The knowledge base admins edit with plain SQL. One row per passage; a document is all rows with the
-- same source. agent NULL means "for any agent"; model_id ties a passage to one model.
-- InnoDB like every other table: an admin's transaction is real (ROLLBACK undoes it, a multi-statement
-- edit is never seen half done, a COMMIT is seen by the next question) and Galera replicates it. Its
-- FULLTEXT indexes are the retrieval (InnoDB full-text search, which needs innodb_ft_min_token_size=1
-- and innodb_ft_enable_stopword=0 on the server: sql/README.md; the services report a server without).
-- Nothing references it with a foreign key. Retrieval adds the title's own relevance (ft_kb_title) to
-- the passage's, so "Engine and Power" wins an engine question over an overview that repeats the model
-- name. Migration 002 made a table created before it Aria, migration 004 makes it InnoDB again.
CREATE TABLE IF NOT EXISTS kb_documents (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  source     VARCHAR(255) NOT NULL,
  passage_no INT          NOT NULL DEFAULT 0,
  title      VARCHAR(255) NOT NULL,
  agent      ENUM('specs','maintenance','troubleshooting') NULL,
  model_id   VARCHAR(64)  NULL,
  body       MEDIUMTEXT   NOT NULL,
  updated_at TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  KEY idx_kb_source (source, passage_no),
  KEY idx_kb_model (model_id),
  FULLTEXT KEY ft_kb_title_body (title, body),
  FULLTEXT KEY ft_kb_title (title)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Routing vocabulary: the classifier scores a message by the weights of the terms it contains.
-- Admins tune routing here; running processes pick changes up within a minute.
CREATE TABLE IF NOT EXISTS classifier_terms (
  agent  ENUM('specs','maintenance','troubleshooting','general') NOT NULL,
  term   VARCHAR(64) NOT NULL,                   -- lower case; a word, a prefix ending in '*', or a phrase
  weight DOUBLE      NOT NULL DEFAULT 1.0,
  PRIMARY KEY (agent, term)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- Conversation memory. A session belongs to the user (JWT sub) who created it.
CREATE TABLE IF NOT EXISTS chat_sessions (
  id          VARCHAR(64)  NOT NULL PRIMARY KEY,
  user_id     VARCHAR(255) NOT NULL,
  customer_id VARCHAR(64)  NULL,
  created_at  TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP,
  updated_at  TIMESTAMP    NOT NULL DEFAULT CURRENT_TIMESTAMP ON UPDATE CURRENT_TIMESTAMP,
  KEY idx_sessions_user (user_id)
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

-- request_id makes a turn idempotent: a retried request stores nothing twice.
CREATE TABLE IF NOT EXISTS chat_messages (
  id         BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  session_id VARCHAR(64)  NOT NULL,
  request_id VARCHAR(64)  NOT NULL,
  role       ENUM('user','assistant') NOT NULL,
  content    MEDIUMTEXT   NOT NULL,
  metadata   MEDIUMTEXT   NULL,
  created_at TIMESTAMP(3) NOT NULL DEFAULT CURRENT_TIMESTAMP(3),
  UNIQUE KEY uq_messages_turn (session_id, request_id, role),
  KEY idx_messages_session (session_id, id),
  CONSTRAINT fk_messages_session FOREIGN KEY (session_id) REFERENCES chat_sessions (id) ON DELETE CASCADE
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

INSERT IGNORE INTO schema_version (version) VALUES (1);
