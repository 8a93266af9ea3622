"""The account database's money invariants, shared by every suite that
moves money (paytest.ledger_invariants, test_services.py). Nothing
happens on import."""


def invariants(url, label, check, sql):
    """The double-entry invariants over the whole account database. An
    account has two buckets, balance (spendable) and held (reserved for
    payments under way); each ledger line says which one it changed.
    Each one statement, so that they hold while other tests move money in
    the same database. `check(cond, what)` counts each one; `sql(url,
    query)` runs a query with psql and returns its text."""
    def sql_int(url, query):
        return int(sql(url, query) or 0)

    neg = sql_int(url, "SELECT count(*) FROM accounts WHERE kind = 'customer'"
                       " AND (balance < -overdraft_limit OR held < 0)")
    check(neg == 0, "%s: no account below its overdraft limit (found %d)" % (label, neg))
    nonzero = sql(url, "SELECT coalesce(string_agg(currency || '=' || s, ','), '') FROM"
                       " (SELECT currency, sum(balance + held) s FROM accounts GROUP BY currency) x"
                       " WHERE s <> 0")
    check(nonzero == "", "%s: balances and holds sum to zero per currency (off: %s)"
          % (label, nonzero))
    bad_tx = sql_int(url, "SELECT count(*) FROM (SELECT t.id FROM transactions t"
                          " LEFT JOIN ledger_entries e ON e.transaction_id = t.id"
                          " GROUP BY t.id HAVING count(e.id) <> 2"
                          " OR coalesce(sum(e.amount), 0) <> 0) x")
    check(bad_tx == 0, "%s: every transaction has two lines summing to zero (%d bad)" % (label, bad_tx))
    # The references migration 0005 keeps by how lines are written, not by
    # foreign keys.
    dangling = sql_int(url, "SELECT (SELECT count(*) FROM ledger_entries e WHERE NOT EXISTS"
                            " (SELECT 1 FROM transactions t WHERE t.id = e.transaction_id)"
                            " OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = e.account_id))"
                            " + (SELECT count(*) FROM transactions t WHERE NOT EXISTS"
                            " (SELECT 1 FROM accounts a WHERE a.id = t.debit_account_id)"
                            " OR NOT EXISTS (SELECT 1 FROM accounts a WHERE a.id = t.credit_account_id))")
    check(dangling == 0, "%s: every line and transaction names rows that exist (%d dangling)"
          % (label, dangling))
    drift = sql_int(url, "SELECT count(*) FROM accounts a LEFT JOIN (SELECT account_id,"
                         " sum(amount) FILTER (WHERE bucket = 'balance') b,"
                         " sum(amount) FILTER (WHERE bucket = 'held') h"
                         " FROM ledger_entries GROUP BY account_id) l"
                         " ON l.account_id = a.id WHERE a.balance <> coalesce(l.b, 0)"
                         " OR a.held <> coalesce(l.h, 0)")
    check(drift == 0, "%s: balance and held equal the sums of their ledger lines (%d off)"
          % (label, drift))
    chain = sql_int(url, "SELECT count(*) FROM (SELECT balance_after, amount,"
                         " lag(balance_after) OVER (PARTITION BY account_id, bucket ORDER BY seq) prev,"
                         " lag(seq) OVER (PARTITION BY account_id, bucket ORDER BY seq) prev_seq,"
                         " seq FROM ledger_entries) x"
                         " WHERE (prev IS NULL AND amount <> balance_after)"
                         " OR (prev IS NOT NULL AND prev + amount <> balance_after)")
    numbering = sql_int(url, "SELECT count(*) FROM (SELECT seq, lag(seq) OVER (PARTITION BY"
                             " account_id ORDER BY seq) prev FROM ledger_entries) x"
                             " WHERE (prev IS NULL AND seq <> 1) OR (prev IS NOT NULL AND"
                             " prev + 1 <> seq)")
    check(chain == 0 and numbering == 0,
          "%s: every statement chains: seq 1, 2, ... and balance_after adds up per bucket"
          " (%d breaks, %d gaps)" % (label, chain, numbering))
    last = sql_int(url, "SELECT count(*) FROM accounts a WHERE a.entries_count <> (SELECT"
                        " count(*) FROM ledger_entries e WHERE e.account_id = a.id) OR"
                        " a.balance <> coalesce((SELECT balance_after FROM ledger_entries e"
                        " WHERE e.account_id = a.id AND e.bucket = 'balance'"
                        " ORDER BY seq DESC LIMIT 1), 0)"
                        " OR a.held <> coalesce((SELECT balance_after FROM ledger_entries e"
                        " WHERE e.account_id = a.id AND e.bucket = 'held'"
                        " ORDER BY seq DESC LIMIT 1), 0)")
    check(last == 0, "%s: each account's last lines are its balance and held (%d off)"
          % (label, last))
