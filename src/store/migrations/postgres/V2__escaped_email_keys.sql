-- Email keys from escaped parts. A key is `customer/template/scope`; ids
-- with a `/` could make one key of two emails (customer `a/x/o` with order
-- `1`, customer `a` with order `o/x/1`), and the second was dropped as a
-- duplicate. Now `%` and `/` in each part are percent-encoded (`%25`,
-- `%2F`), and keys already written are rewritten the same way; keys without
-- either character, nearly all, stay as they are.
--
-- The same SQL runs on SQLite (its migrations include this file). The new
-- keys go through a table of their own, and every changed row first takes
-- the key `#<id>`, which is nobody's (every key a worker writes has two
-- `/`): a new key may be the old key of a row not rewritten yet.

CREATE TEMP TABLE rekey AS
SELECT id,
       replace(replace(customer_id, '%', '%25'), '/', '%2F') || '/' ||
       replace(replace(template, '%', '%25'), '/', '%2F') || '/' ||
       replace(replace(substr(key, length(customer_id) + length(template) + 3),
                       '%', '%25'), '/', '%2F') AS new_key
FROM emails
WHERE substr(key, 1, length(customer_id) + length(template) + 2)
      = customer_id || '/' || template || '/';

DELETE FROM rekey WHERE new_key = (SELECT e.key FROM emails e WHERE e.id = rekey.id);

UPDATE emails SET key = '#' || id WHERE id IN (SELECT id FROM rekey);
UPDATE emails SET key = (SELECT r.new_key FROM rekey r WHERE r.id = emails.id)
WHERE id IN (SELECT id FROM rekey);

DROP TABLE rekey;
