-- The knowledge base becomes InnoDB again, for real transactions: an admin's ROLLBACK undoes an edit, a
-- multi-statement edit is never seen half done, and Galera replicates it (migration 002 had made it Aria
-- for a cheaper full-text search; sql/README.md has what going back costs). The table is rebuilt with its
-- FULLTEXT indexes under the server's innodb_ft_* settings, which must then be
-- innodb_ft_min_token_size=1 and innodb_ft_enable_stopword=0 (sql/README.md): about 10 s per 100,000
-- passages (a rebuild of the InnoDB table took 8 s), during which questions wait. TRANSACTIONAL is an
-- Aria option, reset with the engine.
ALTER TABLE kb_documents ENGINE=InnoDB, TRANSACTIONAL=DEFAULT;
