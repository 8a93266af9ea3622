-- A ledger line is keyed by its account and its place in that account's
-- history, (account_id, seq): the index every reader already uses, and
-- unique since migration 0002. The index on the line's own id goes: no
-- query looks a line up by it, and it cost one more index insert per line,
-- two per transfer. The ids stay unique by how they are made (svc_uuid7(): the
-- millisecond, a per-thread counter and 62 random bits) and are still
-- shown in statements.
ALTER TABLE ledger_entries DROP CONSTRAINT ledger_entries_pkey;
ALTER TABLE ledger_entries ADD CONSTRAINT ledger_entries_pkey
  PRIMARY KEY USING INDEX ledger_entries_account_seq;
