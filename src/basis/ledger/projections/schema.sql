-- Amounts are TEXT decimal integers: 18-decimal base units overflow SQLite's 64-bit INTEGER.
CREATE TABLE IF NOT EXISTS tracking (view TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY, name TEXT NOT NULL, opened_at TEXT NOT NULL,
    granted TEXT NOT NULL, deposited TEXT NOT NULL, withdrawn TEXT NOT NULL,
    reserved TEXT NOT NULL, spent_granted TEXT NOT NULL, spent_deposited TEXT NOT NULL, refunded TEXT NOT NULL,
    api_keys INTEGER NOT NULL, jobs INTEGER NOT NULL, receipts INTEGER NOT NULL, updated_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS credits (
    source TEXT NOT NULL, external_id TEXT NOT NULL, account_id TEXT NOT NULL, amount TEXT NOT NULL,
    memo TEXT NOT NULL, at TEXT NOT NULL, PRIMARY KEY (source, external_id)
);
CREATE TABLE IF NOT EXISTS jobs (
    job_id TEXT PRIMARY KEY, account_id TEXT NOT NULL, node TEXT NOT NULL, model TEXT NOT NULL,
    status TEXT NOT NULL, served_by TEXT, worker TEXT, attempts INTEGER NOT NULL,
    prompt_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, reserved TEXT NOT NULL,
    outcome TEXT, finish_reason TEXT, reason TEXT, worker_usage TEXT,
    accepted_at TEXT NOT NULL, ended_at TEXT
);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs (node, status);
CREATE TABLE IF NOT EXISTS receipts (
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, hash TEXT NOT NULL, core TEXT NOT NULL,
    signature TEXT NOT NULL, signer TEXT NOT NULL, status TEXT NOT NULL, settlement TEXT,
    account_id TEXT NOT NULL, model TEXT NOT NULL, served_by TEXT NOT NULL, worker TEXT,
    outcome TEXT NOT NULL, charged TEXT NOT NULL, reward TEXT NOT NULL,
    issued_at TEXT NOT NULL, settled_at TEXT
);
-- A receipt's hash is unique by an index of its own, not a constraint of the table (the same check, the
-- same error): a replay of an export builds it once, sorted, after the projection (a random key kept
-- row by row was 40 % of a receipt's insert at 1,000,020 events).
CREATE UNIQUE INDEX IF NOT EXISTS receipts_hash ON receipts (hash);
CREATE INDEX IF NOT EXISTS receipts_unsettled ON receipts (status, seq);
CREATE INDEX IF NOT EXISTS receipts_worker ON receipts (worker, seq);
CREATE INDEX IF NOT EXISTS receipts_account ON receipts (account_id, seq);
-- An account's own views (GET /v1/account...): its keys (prefix only, never the hash's key) and
-- its receipted usage per UTC day and model.
CREATE TABLE IF NOT EXISTS api_keys (
    key_hash TEXT PRIMARY KEY, account_id TEXT NOT NULL, prefix TEXT NOT NULL, created_at TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS api_keys_account ON api_keys (account_id, created_at);
CREATE TABLE IF NOT EXISTS usage_daily (
    usage_key TEXT PRIMARY KEY, account_id TEXT NOT NULL, day TEXT NOT NULL, model TEXT NOT NULL,
    receipts INTEGER NOT NULL, prompt_tokens INTEGER NOT NULL, output_tokens INTEGER NOT NULL, charged TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_daily_account ON usage_daily (account_id, day);
CREATE TABLE IF NOT EXISTS rewards (
    worker TEXT PRIMARY KEY, accrued TEXT NOT NULL, settled TEXT NOT NULL, claimed TEXT NOT NULL,
    jobs INTEGER NOT NULL, output_tokens INTEGER NOT NULL, forfeited TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    address TEXT PRIMARY KEY, worker_id TEXT NOT NULL UNIQUE, models TEXT NOT NULL, software TEXT NOT NULL,
    registered_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
-- On-chain settlement (basis.ledger.settlement aggregates).
CREATE TABLE IF NOT EXISTS settlement_batches (
    batch_id TEXT PRIMARY KEY, aggregate_id TEXT NOT NULL UNIQUE, seq INTEGER NOT NULL,
    chain_id INTEGER NOT NULL, vault TEXT NOT NULL, distributor TEXT NOT NULL, status TEXT NOT NULL,
    receipts INTEGER NOT NULL, receipts_root TEXT NOT NULL, rewards_root TEXT NOT NULL,
    charged TEXT NOT NULL, reward TEXT NOT NULL, from_deposit TEXT NOT NULL,
    to_distributor TEXT NOT NULL, to_treasury TEXT NOT NULL, reward_top_up TEXT NOT NULL,
    hashes TEXT NOT NULL, rewards TEXT NOT NULL, previous TEXT,
    tx_hash TEXT, block INTEGER, gas_used INTEGER, reason TEXT,
    proposed_at TEXT NOT NULL, submitted_at TEXT, closed_at TEXT,
    anchor_position INTEGER, anchor_head TEXT
);
CREATE INDEX IF NOT EXISTS settlement_batches_seq ON settlement_batches (status, seq);
CREATE TABLE IF NOT EXISTS withdrawals (
    book_id TEXT NOT NULL, nonce INTEGER NOT NULL, account_id TEXT, recipient TEXT NOT NULL,
    amount TEXT NOT NULL, expiry INTEGER NOT NULL, status TEXT NOT NULL, tx_hash TEXT, chain_time INTEGER,
    requested_at TEXT NOT NULL, closed_at TEXT, PRIMARY KEY (book_id, nonce)
);
CREATE INDEX IF NOT EXISTS withdrawals_account ON withdrawals (account_id, nonce);
CREATE TABLE IF NOT EXISTS claims (
    tx_hash TEXT NOT NULL, log_index INTEGER NOT NULL, worker TEXT NOT NULL, amount TEXT NOT NULL,
    cumulative TEXT NOT NULL, block INTEGER NOT NULL, at TEXT NOT NULL, PRIMARY KEY (tx_hash, log_index)
);
CREATE TABLE IF NOT EXISTS chain_cursors (
    cursor_id TEXT PRIMARY KEY, name TEXT NOT NULL, block INTEGER NOT NULL, chain_time INTEGER NOT NULL,
    updated_at TEXT NOT NULL
);
-- Verification (DESIGN 1.6). Never ids or text: the checked ids appear only as their SHA-256.
CREATE TABLE IF NOT EXISTS checks (
    job_id TEXT PRIMARY KEY, worker TEXT NOT NULL, model TEXT NOT NULL, reason TEXT NOT NULL,
    status TEXT NOT NULL, ids_sha256 TEXT NOT NULL, method TEXT, tokens INTEGER, statistic TEXT, evidence REAL,
    requested_at TEXT NOT NULL, judged_at TEXT
);
CREATE INDEX IF NOT EXISTS checks_pending ON checks (status, requested_at);
CREATE TABLE IF NOT EXISTS forfeits (
    job_id TEXT PRIMARY KEY, worker TEXT NOT NULL, amount TEXT NOT NULL, reason TEXT NOT NULL,
    evidence TEXT NOT NULL, at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS worker_status (
    address TEXT PRIMARY KEY, checked INTEGER NOT NULL, failed INTEGER NOT NULL, upper REAL NOT NULL,
    lower REAL NOT NULL, status TEXT NOT NULL, suspended_by TEXT, reason TEXT, evidence TEXT, updated_at TEXT NOT NULL,
    probation_from INTEGER NOT NULL DEFAULT 0,  -- probation counts checked jobs from here (reinstated: its count then)
    e_level REAL NOT NULL DEFAULT 0,  -- the e-detector's M (log), beside the CUSUM's upper / lower
    fast REAL NOT NULL DEFAULT 0  -- the fast lower-side CUSUM's level (policy v4; 0 for checks before it)
);
