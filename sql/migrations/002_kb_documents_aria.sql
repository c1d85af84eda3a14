-- The knowledge base moves to Aria for its cheaper full-text search, with a title index beside the
-- title+body one (see kb_documents in schema.sql). The table is rebuilt with its indexes: about 10 s
-- per 100,000 passages, during which questions wait.
ALTER TABLE kb_documents ENGINE=Aria TRANSACTIONAL=1;
ALTER TABLE kb_documents ADD FULLTEXT KEY IF NOT EXISTS ft_kb_title (title);
