-- sqlite3 key-value load then skewed lookups, for `hypertier trace record`
-- (docs/traces.md). Run as: sqlite3 :memory: < sqlite-kv.sql
-- Phase 1 (load): 16 000 rows of 3000-byte values (one 4 KiB database page each), in key order.
CREATE TABLE kv(k INTEGER PRIMARY KEY, v BLOB);
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 16000)
INSERT INTO kv SELECT x, zeroblob(3000) FROM c;
-- The recorder starts a phase when the program opens /dev/null.
.read /dev/null
-- Phase 2 (lookups): 30 000 point reads, key = 1 + r1 mod (1 + r2 mod 16000),
-- so P(key) ~ ln(16000 / key): the rows loaded first are read most.
WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < 30000)
SELECT sum(length(v)) FROM c
JOIN kv ON kv.k = 1 + abs(random()) % (1 + abs(random()) % 16000);
