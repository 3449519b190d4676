-- Amounts are TEXT decimal integers: 18-decimal base units overflow SQLite's 64-bit INTEGER.
CREATE TABLE IF NOT EXISTS tracking (view TEXT PRIMARY KEY, position INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accounts (
    account_id TEXT PRIMARY KEY, name TEXT NOT NULL, opened_at TEXT NOT NULL,
    granted TEXT NOT NULL, deposited TEXT NOT NULL, withdrawn TEXT NOT NULL,
    reserved TEXT NOT NULL, spent_granted TEXT NOT NULL, spent_deposited TEXT NOT NULL,
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
    job_id TEXT PRIMARY KEY, seq INTEGER NOT NULL UNIQUE, hash TEXT NOT NULL UNIQUE, core TEXT NOT NULL,
    signature TEXT NOT NULL, signer TEXT NOT NULL, status TEXT NOT NULL, settlement TEXT,
    account_id TEXT NOT NULL, model TEXT NOT NULL, served_by TEXT NOT NULL, worker TEXT,
    outcome TEXT NOT NULL, charged TEXT NOT NULL, reward TEXT NOT NULL,
    issued_at TEXT NOT NULL, settled_at TEXT
);
CREATE INDEX IF NOT EXISTS receipts_unsettled ON receipts (status, seq);
CREATE INDEX IF NOT EXISTS receipts_worker ON receipts (worker, seq);
CREATE TABLE IF NOT EXISTS rewards (
    worker TEXT PRIMARY KEY, accrued TEXT NOT NULL, settled TEXT NOT NULL, claimed TEXT NOT NULL,
    jobs INTEGER NOT NULL, output_tokens INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS workers (
    address TEXT PRIMARY KEY, worker_id TEXT NOT NULL UNIQUE, models TEXT NOT NULL, software TEXT NOT NULL,
    registered_at TEXT NOT NULL, updated_at TEXT NOT NULL
);
