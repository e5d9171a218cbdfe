-- realprog's sqlite3 workload, read by the sqlite3 shell on its standard
-- input. @ROWS@ is replaced by the row count. The work is in an attached
-- in-memory database, so DETACH frees it; the shell reports its own
-- /proc status through `.system` (the shell's pid is sh's $PPID).
.bail on
ATTACH ':memory:' AS w;
CREATE TABLE w.t(id INTEGER PRIMARY KEY, k INTEGER, s TEXT, v REAL);
WITH RECURSIVE c(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM c WHERE i < @ROWS@)
  INSERT INTO w.t SELECT i, (i * 7919) % 100003, printf('row-%d-%08x', i, (i * 2654435761) % 4294967296), i * 0.25 FROM c;
CREATE INDEX w.t_k ON t(k);
CREATE INDEX w.t_s ON t(s);
SELECT 'range=' || count(*) FROM w.t WHERE k BETWEEN 1000 AND 50000;
SELECT 'groups=' || count(*) FROM (SELECT k % 1000 AS g, count(*), avg(v) FROM w.t GROUP BY g);
SELECT 'join=' || count(*) FROM w.t a JOIN w.t b ON b.id = a.k WHERE a.id % 10 = 0;
UPDATE w.t SET s = s || '-updated' WHERE id % 3 = 0;
DELETE FROM w.t WHERE id % 5 = 0;
SELECT 'like=' || count(*) FROM w.t WHERE s LIKE 'row-1%-updated';
SELECT 'rows=' || count(*) FROM w.t;
.system grep VmHWM /proc/$PPID/status
.system grep VmRSS /proc/$PPID/status
DETACH DATABASE w;
.print after
.system grep VmRSS /proc/$PPID/status
