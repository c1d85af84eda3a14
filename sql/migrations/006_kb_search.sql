-- A derived search table beside the knowledge base. Admins keep editing kb_documents (InnoDB, real
-- transactions); questions search kb_search, an Aria copy of its searchable columns, whose full-text
-- search costs about half of InnoDB's (docs/benchmarks.md, "The derived search table").
--
-- How the copy stays right without being transactional itself: every write to kb_documents also
-- writes the passage's id into kb_changes (InnoDB) through the triggers below, in the writer's own
-- transaction. So a change row exists exactly when its edit is committed: a ROLLBACK takes it back, an
-- open transaction's rows are seen by nobody. Each question's search also asks whether kb_changes has
-- any row; when it has, that question searches kb_documents itself and the worker copies the changed
-- passages' committed rows into kb_search, then deletes their change rows (chat_kb_sync). A committed
-- edit is therefore seen by the very next question, and a rolled-back one never.
--
-- TRUNCATE TABLE kb_documents fires no trigger: use DELETE, or run `chat-kb reindex` afterwards.
-- Galera does not replicate Aria: on a Galera node the processes search kb_documents (chat_kb.h).
CREATE TABLE IF NOT EXISTS kb_search (
  id       BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  source   VARCHAR(255) NOT NULL,
  title    VARCHAR(255) NOT NULL,
  agent    ENUM('specs','maintenance','troubleshooting') NULL,
  model_id VARCHAR(64)  NULL,
  body     MEDIUMTEXT   NOT NULL,
  FULLTEXT KEY ft_search_title_body (title, body),
  FULLTEXT KEY ft_search_title (title)
) ENGINE=Aria TRANSACTIONAL=1 DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_unicode_ci;

CREATE TABLE IF NOT EXISTS kb_changes (
  id     BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  doc_id BIGINT UNSIGNED NOT NULL
) ENGINE=InnoDB;

CREATE TRIGGER IF NOT EXISTS kb_documents_changed_ins AFTER INSERT ON kb_documents FOR EACH ROW
  INSERT INTO kb_changes (doc_id) VALUES (NEW.id);
CREATE TRIGGER IF NOT EXISTS kb_documents_changed_upd AFTER UPDATE ON kb_documents FOR EACH ROW
  INSERT INTO kb_changes (doc_id) SELECT NEW.id UNION SELECT OLD.id;
CREATE TRIGGER IF NOT EXISTS kb_documents_changed_del AFTER DELETE ON kb_documents FOR EACH ROW
  INSERT INTO kb_changes (doc_id) VALUES (OLD.id);

-- The copy starts complete; the triggers keep it so from here.
DELETE FROM kb_search;
INSERT INTO kb_search (id, source, title, agent, model_id, body)
  SELECT id, source, title, agent, model_id, body FROM kb_documents;
