//! Command-line interface (clap derive). `main.rs` parses, runs, and turns errors into one
//! line on stderr and a non-zero exit code.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Point-in-time recovery for PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "pitr", version, about, long_about = None, propagate_version = true)]
pub struct Cli {
    /// Log format: human-readable text or one JSON object per line.
    #[arg(
        long,
        global = true,
        value_enum,
        default_value = "text",
        env = "PITR_LOG_FORMAT"
    )]
    pub log_format: LogFormat,
    /// Key file of an encrypted repo (`pitr key generate > repo.key && chmod 600 repo.key`).
    /// A new repo made with it is encrypted: every object but pitr.json (WAL, backups,
    /// catalog, summaries, restore points) is sealed with ChaCha20-Poly1305 under a fresh
    /// key, so the storage holds no readable byte of the database. Every command that
    /// reads or writes that repo needs one of its keys; a plain repo refuses one. A key file
    /// readable by group or others is refused. Without a key the repo cannot be read.
    #[arg(
        long,
        global = true,
        env = "PITR_ENCRYPTION_KEY_FILE",
        value_name = "FILE",
        conflicts_with_all = ["recipient", "identity", "kms_key_id"]
    )]
    pub encryption_key_file: Option<std::path::PathBuf>,
    /// Write-only encryption: an X25519 recipient (`age1...`, or a file holding it), the
    /// public half of `pitr key generate --recipient`. `stream`, `backup` and `mark` seal
    /// everything they write for it, and cannot read what earlier runs wrote, so a stolen
    /// sidecar credential does not expose the history. `restore`, `verify`, `list` and
    /// `prune` need --identity.
    #[arg(
        long,
        global = true,
        env = "PITR_RECIPIENT",
        value_name = "KEY|FILE",
        num_args = 0..=1,
        default_missing_value = "",
        conflicts_with_all = ["identity", "kms_key_id"]
    )]
    pub recipient: Option<String>,
    /// The identity (private key) file of a --recipient repo, from `pitr key generate
    /// --recipient`: reads everything, and writes for its recipient. Refused if group or
    /// others can read it.
    #[arg(
        long,
        global = true,
        env = "PITR_IDENTITY_FILE",
        value_name = "FILE",
        conflicts_with = "kms_key_id"
    )]
    pub identity: Option<std::path::PathBuf>,
    /// An AWS KMS key (id, ARN or alias) that wraps the repo's data keys (needs a pitr built
    /// with `--features kms`; credentials and region from the AWS chain, endpoint from
    /// AWS_ENDPOINT_URL_KMS or AWS_ENDPOINT_URL). Each process makes one KMS call to wrap
    /// its data key, and one per data key it reads.
    #[arg(long, global = true, env = "PITR_KMS_KEY_ID", value_name = "KEY")]
    pub kms_key_id: Option<String>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// `pitr key ...`.
#[derive(Debug, Subcommand)]
pub enum KeyCommand {
    /// Print a new random symmetric key file for --encryption-key-file:
    /// `pitr key generate > repo.key && chmod 600 repo.key`. With --recipient, print an
    /// identity file (private, for --identity) whose `# public key:` line is the recipient
    /// (public, for --recipient); the recipient is also printed on stderr. Keep a copy
    /// somewhere safe: without a key, an encrypted repo cannot be read. Files name the key's
    /// id, which pitr.json, `pitr key list` and error messages show (never the key).
    /// (`--recipient` here takes no value.)
    Generate,
    /// Let another key open the whole repo: every data key is unwrapped with the key given
    /// (--encryption-key-file, --identity or --kms-key-id) and stored again for the new one.
    /// Only small key objects are written; no data is re-encrypted. Processes started with
    /// the new key write under it from then on; running ones may go on (their data key is
    /// stored for the new key too). Then `pitr key retire` the old key.
    Rotate(RotateArgs),
    /// Delete a key's key objects, so that it opens nothing in the repo any more. Refused,
    /// deleting nothing, while some data key is stored only for that key (rotate first).
    Retire(RetireArgs),
    /// The repo's keys: each key id, and how many data keys it opens.
    List(RepoArgs),
}

/// `pitr key rotate`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("to").required(true)))]
pub struct RotateArgs {
    /// The repo.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The new key: a symmetric key file.
    #[arg(long, value_name = "FILE", group = "to")]
    pub to_key_file: Option<std::path::PathBuf>,
    /// The new key: an X25519 recipient (age1..., or a file holding it).
    #[arg(long, value_name = "KEY|FILE", group = "to")]
    pub to_recipient: Option<String>,
    /// The new key: an AWS KMS key (with `--features kms`).
    #[arg(long, value_name = "KEY", group = "to")]
    pub to_kms_key_id: Option<String>,
}

/// `pitr key retire`.
#[derive(Debug, Args)]
pub struct RetireArgs {
    /// The repo.
    #[command(flatten)]
    pub repo: RepoArgs,
    /// The id of the key to retire (16 hex digits, from `pitr key list`).
    #[arg(long, value_name = "ID")]
    pub key_id: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// JSON lines.
    Json,
}

/// Top-level commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Archive WAL continuously from a PostgreSQL server into a repo (the sidecar job).
    ///
    /// Connects as a physical replication client, creates the replication slot if missing
    /// (with RESERVE_WAL, so the server keeps WAL until pitr has it), and archives every
    /// byte into a local directory or S3. The flush position reported to the server never
    /// runs ahead of WAL durable in the repo (--ack repo, the default) or fsync'd in the
    /// local spool (--ack spool), so a crash of pitr loses nothing. The segment being filled
    /// is published as soon as new WAL arrives (then at most once every --partial-every
    /// within a segment), which bounds how far the archive trails the server.
    ///
    /// The server needs wal_level = replica (or logical), max_wal_senders and
    /// max_replication_slots > 0, a role with REPLICATION, and a pg_hba.conf line for the
    /// "replication" database. Stops cleanly on SIGTERM or SIGINT.
    Stream(StreamArgs),
    /// Take a base backup now, streamed into the repo.
    ///
    /// Uses BASE_BACKUP with a fast checkpoint, a manifest with CRC-32C checksums, and every
    /// tablespace. The tar stream is cut into 8 MiB chunks, lz4-compressed here (or by the
    /// server with --server-compression) and uploaded while the next is received: memory
    /// stays bounded and nothing is staged on local disk. The backup becomes complete (and
    /// restorable) once the WAL from its start to its end is in the repo, written by a
    /// running `pitr stream`; it waits up to --wal-timeout for that.
    Backup(BackupArgs),
    /// Restore a data directory to a point in time: `pitr restore --to '2025-11-22 14:30' -D DIR`.
    ///
    /// Picks the newest backup that reaches the target, places exactly the WAL needed in
    /// pg_wal, and writes recovery.signal with the recovery settings, so that PostgreSQL
    /// started on DIR recovers to the target and promotes, with no pitr and no repo access.
    ///
    /// TARGET times: '2025-11-22 14:30', '2025-11-22 14:30:05.123456+02', RFC 3339
    /// ('2025-11-22T14:30:05Z'). A time without an offset is in the --tz zone, else in the TZ
    /// environment variable's zone, else UTC. A local time that does not exist or occurs
    /// twice (daylight saving changes) is refused: add the offset.
    ///
    /// Semantics (PostgreSQL's own recovery_target_time rule): recovery stops before the
    /// first commit or abort record, in WAL order, stamped later than the target. Every
    /// transaction before it is included. A transaction stamped at or before the target
    /// whose commit record comes after that one (concurrent commits: WAL order and
    /// timestamp order can differ) is excluded too; the plan names each such transaction.
    /// --to-lsn X restores through the first record at or after X (recovery_target_lsn's
    /// default; --exclusive: everything before X); --to-name N stops after the first restore
    /// point named N, as PostgreSQL does.
    ///
    /// The resolved target, the backup, the timeline, the last included and first excluded
    /// transactions, the WAL and the timeline the server will promote to (one no history in
    /// the repo uses) are printed before anything is written; --dry-run stops there. Refused
    /// before writing anything: a target before the earliest restorable point (judged by the
    /// server's commit timestamps, not pitr's clock), after the last archived transaction, or
    /// in a WAL gap; WAL the stop needs that is not archived yet; a non-empty or unwritable
    /// DIR; an unreadable repo. Earlier recovery and standby settings in the restored
    /// configuration are commented out or overridden, and a standby's standby.signal is
    /// removed, so the result recovers and promotes.
    ///
    /// --verify then starts a throwaway PostgreSQL on DIR, waits for recovery to end, checks
    /// that the last replayed transaction is the predicted one and runs each --check-sql,
    /// and exits non-zero on any mismatch (for CI; see docs/ci-restore-check.md).
    Restore(RestoreArgs),
    /// Show backups, the recoverable window per timeline, WAL gaps and restore points.
    List(ListArgs),
    /// Re-read every object the backups need and check it: chunk checksums, decompression,
    /// every file against the backup manifest, and WAL continuity on every timeline.
    /// Exits 1 naming each bad object.
    Verify(RepoArgs),
    /// Delete old backups and the WAL only they needed.
    Prune(PruneArgs),
    /// Create a named restore point on the server (pg_create_restore_point) and record it;
    /// `pitr restore --to-name NAME` restores to it.
    Mark(MarkArgs),
    /// A guided tour on a throwaway PostgreSQL: stream, back up, commit rows, drop the
    /// table, restore to just before the drop with --verify, and show the rows are back.
    Demo(DemoArgs),
    /// Work with WAL segment files.
    #[command(subcommand)]
    Wal(WalCommand),
    /// Encryption keys.
    #[command(subcommand)]
    Key(KeyCommand),
}

/// Arguments of `pitr stream`.
#[derive(Debug, Args)]
pub struct StreamArgs {
    /// The server, as a libpq connection string or postgresql:// URI. PG* environment
    /// variables and ~/.pgpass apply as with psql.
    #[arg(
        long,
        env = "PITR_SOURCE",
        default_value = "",
        hide_default_value = true,
        value_name = "CONNINFO"
    )]
    pub source: String,
    /// Where to archive: a directory, file:///path, or s3://bucket/prefix. S3 uses the
    /// standard AWS credential chain and region; for S3-compatible servers set
    /// AWS_ENDPOINT_URL (path-style addressing is then used), or add options to the URL:
    /// s3://bucket/prefix?endpoint=http://minio:9000&region=eu-west-1&path_style=true.
    #[arg(long, env = "PITR_REPO", value_name = "REPO")]
    pub repo: Option<String>,
    /// A TOML file with any of these settings (keys as the flags, with underscores:
    /// source, repo, slot, no_slot, partial_every, status_interval, metrics_listen,
    /// ack, spool_dir, spool_max, shutdown_timeout, ready_max_lag, ready_max_lag_time,
    /// writer_heartbeat, log_format, backup_every, backup_at, keep_full, keep_within).
    /// Precedence: command-line flags, then PITR_* variables,
    /// then this file, then the defaults.
    #[arg(long, env = "PITR_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Print the resolved settings (password hidden), each with where it came from (a flag, a
    /// PITR_* variable, the --config file, or the default), and exit without connecting.
    #[arg(long)]
    pub print_config: bool,
    /// Physical replication slot to use (created when missing).
    #[arg(long, env = "PITR_SLOT", default_value = "pitr")]
    pub slot: String,
    /// Stream without a slot (the server may recycle WAL before pitr archives it).
    #[arg(long, conflicts_with = "slot")]
    pub no_slot: bool,
    /// The shortest interval between two publishes of the segment being filled (e.g. 200ms,
    /// 1s): new WAL is published 10 ms after it arrives, but not more often than this. Larger
    /// means fewer uploads under load and a larger RPO.
    #[arg(long, env = "PITR_PARTIAL_EVERY", default_value = "200ms", value_parser = parse_duration)]
    pub partial_every: std::time::Duration,
    /// Serve /metrics (Prometheus), /livez, /healthz and /readyz on this address; "off" to disable.
    #[arg(
        long,
        env = "PITR_METRICS_LISTEN",
        default_value = "127.0.0.1:9188",
        value_name = "ADDR"
    )]
    pub metrics_listen: String,
    /// When WAL counts as safe, and is acknowledged to the server as flushed: "repo" (once
    /// durable in the repo; RPO = --partial-every plus upload time) or "spool" (once fsync'd
    /// in --spool-dir, uploaded from there; with synchronous_standby_names naming pitr's
    /// application_name, RPO 0 to the sidecar's disk).
    #[arg(long, env = "PITR_ACK", default_value = "repo", value_parser = ["repo", "spool"])]
    pub ack: String,
    /// The local spool directory for --ack spool (on a persistent volume).
    #[arg(long, env = "PITR_SPOOL_DIR", value_name = "DIR")]
    pub spool_dir: Option<PathBuf>,
    /// With --ack spool: stop taking WAL while the spool holds more than this (e.g. 4GB,
    /// 512MB); the server then keeps the WAL in its slot.
    #[arg(long, env = "PITR_SPOOL_MAX", default_value = "4GB", value_parser = parse_bytes)]
    pub spool_max: u64,
    /// On SIGTERM/SIGINT, how long to wait for in-flight uploads before exiting.
    #[arg(long, env = "PITR_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// Standby status update interval when the server does not ask.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub status_interval: std::time::Duration,
    /// /readyz fails when the archive trails the server's WAL position by more than this
    /// (e.g. 256MB, 1GB).
    #[arg(long, env = "PITR_READY_MAX_LAG", default_value = "256MB", value_parser = parse_bytes, value_name = "SIZE")]
    pub ready_max_lag: u64,
    /// /readyz fails when the server was where the archive is now longer ago than this
    /// (e.g. 1m, 30s): the archive's delay behind the server, in time.
    #[arg(long, env = "PITR_READY_MAX_LAG_TIME", default_value = "1m", value_parser = parse_duration, value_name = "DURATION")]
    pub ready_max_lag_time: std::time::Duration,
    /// How often this process records itself in the repo (writers/), so that a second
    /// pitr stream on the same repo is noticed and named (at least 1s).
    #[arg(long, env = "PITR_WRITER_HEARTBEAT", default_value = "60s", value_parser = parse_duration, value_name = "DURATION")]
    pub writer_heartbeat: std::time::Duration,
    /// Take a base backup this long after the last one (e.g. 24h); one is taken at once
    /// when the repo has none.
    #[arg(long, env = "PITR_BACKUP_EVERY", value_parser = parse_duration, value_name = "DURATION", conflicts_with = "backup_at")]
    pub backup_every: Option<std::time::Duration>,
    /// Take a base backup daily at this time (HH:MM in the TZ zone, UTC when TZ is unset).
    #[arg(long, env = "PITR_BACKUP_AT", value_name = "HH:MM")]
    pub backup_at: Option<String>,
    /// After each scheduled backup, keep only the newest N backups (and the WAL they need).
    #[arg(long, env = "PITR_KEEP_FULL", value_name = "N")]
    pub keep_full: Option<usize>,
    /// After each scheduled backup, keep what restores anywhere within this window (e.g. 7d).
    #[arg(long, env = "PITR_KEEP_WITHIN", value_parser = parse_duration, value_name = "DURATION")]
    pub keep_within: Option<std::time::Duration>,
}

/// `--repo`, shared by the repo commands.
#[derive(Debug, Args)]
pub struct RepoArgs {
    /// The repo: a directory, file:///path, or s3://bucket/prefix (see `pitr stream --help`).
    #[arg(long, env = "PITR_REPO", value_name = "REPO")]
    pub repo: String,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// `--source` and `--repo`, for the commands that talk to the server and the repo.
#[derive(Debug, Args)]
pub struct ServerArgs {
    /// The server, as a libpq connection string or URI (PG* variables and ~/.pgpass apply).
    #[arg(
        long,
        env = "PITR_SOURCE",
        default_value = "",
        hide_default_value = true,
        value_name = "CONNINFO"
    )]
    pub source: String,
    /// The repo: a directory, file:///path, or s3://bucket/prefix.
    #[arg(long, env = "PITR_REPO", value_name = "REPO")]
    pub repo: String,
}

/// Arguments of `pitr backup`.
#[derive(Debug, Args)]
pub struct BackupArgs {
    #[command(flatten)]
    /// Server and repo.
    pub server: ServerArgs,
    /// A label for the backup (e.g. pre-migration); shown by `pitr list`, usable as --backup.
    #[arg(long, default_value = "pitr")]
    pub label: String,
    /// Let the server compress (BASE_BACKUP COMPRESSION 'lz4') instead of pitr; the same
    /// as --compress server-lz4.
    #[arg(long, conflicts_with = "compress")]
    pub server_compression: bool,
    /// How the backup is compressed: lz4 (the default: pitr compresses each 8 MiB chunk,
    /// on both cores), zstd[:LEVEL] (pitr, with zstd at LEVEL 1-9, default 3: smaller chunks,
    /// more CPU; the entry needs a pitr that reads zstd), or server-lz4 (the server
    /// compresses; less CPU here, more on the server).
    #[arg(long, value_name = "METHOD", default_value = "lz4", value_parser = parse_compress)]
    pub compress: Compress,
    /// How long to wait for `pitr stream` to archive the backup's WAL.
    #[arg(long, default_value = "5m", value_parser = parse_duration)]
    pub wal_timeout: std::time::Duration,
    /// Print the catalog entry as JSON.
    #[arg(long)]
    pub json: bool,
}

/// Arguments of `pitr restore`.
#[derive(Debug, Args)]
pub struct RestoreArgs {
    /// The repo.
    #[arg(long, env = "PITR_REPO", value_name = "REPO")]
    pub repo: String,
    /// Destination data directory (missing or empty). Defaults to $PGDATA.
    #[arg(short = 'D', long = "pgdata", env = "PGDATA", value_name = "DIR")]
    pub dir: Option<std::path::PathBuf>,
    /// Target: `latest` (the default) or a time.
    #[arg(long, value_name = "TARGET", conflicts_with_all = ["to_lsn", "to_name"])]
    pub to: Option<String>,
    /// Restore through the first WAL record at or after this LSN (X/X), as PostgreSQL's
    /// recovery_target_lsn does; with --exclusive, everything before it.
    #[arg(long, value_name = "LSN", conflicts_with = "to_name")]
    pub to_lsn: Option<String>,
    /// Restore up to this named restore point (see `pitr mark`).
    #[arg(long, value_name = "NAME")]
    pub to_name: Option<String>,
    /// The zone of a --to time without an offset (IANA name like Europe/Paris, or +02:00).
    #[arg(long, value_name = "ZONE")]
    pub tz: Option<String>,
    /// The timeline to recover along: a number, or latest (the default).
    #[arg(long, default_value = "latest", value_name = "N|latest")]
    pub timeline: String,
    /// Use this backup (id or label) instead of the newest one that reaches the target.
    #[arg(long, value_name = "ID")]
    pub backup: Option<String>,
    /// Restore a tablespace elsewhere: OLDDIR=NEWDIR (or OID=NEWDIR); repeatable.
    #[arg(long = "tablespace-map", short = 'T', value_name = "OLD=NEW")]
    pub tablespace_map: Vec<String>,
    /// Exclude the target itself (PostgreSQL's recovery_target_inclusive = off): with --to,
    /// transactions stamped exactly at the target time are excluded; with --to-lsn, the
    /// record at or after the LSN is not replayed.
    #[arg(long, conflicts_with = "to_name")]
    pub exclusive: bool,
    /// Restore a standby instead of a primary: write standby.signal and a restore_command
    /// that fetches WAL from this repo (`pitr wal fetch`), follow the newest timeline, and
    /// never promote (takes no --to/--to-lsn/--to-name; not with --verify). Without it, the
    /// restored server recovers to the target and promotes, even from a standby's backup.
    #[arg(long, conflicts_with_all = ["to", "to_lsn", "to_name", "verify"])]
    pub standby: bool,
    /// Print the plan and write nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// After restoring, start PostgreSQL on DIR and prove it reached the target.
    #[arg(long)]
    pub verify: bool,
    /// PostgreSQL's bin directory for --verify (default: PATH, then pg_config).
    #[arg(long, value_name = "DIR", env = "PITR_PG_BIN")]
    pub pg_bin: Option<std::path::PathBuf>,
    /// Run --verify's throwaway server in a container of IMAGE (e.g. postgres:17) instead
    /// of local binaries: the restored directory is bind-mounted at its own path, the server
    /// runs as its owner with no network (a private socket only), and the container is
    /// removed afterwards. Uses the docker CLI (PITR_CONTAINER_CLI=podman for Podman); the
    /// image must run the backup's major, which is checked before anything is written.
    #[arg(
        long,
        value_name = "IMAGE",
        env = "PITR_VERIFY_IMAGE",
        requires = "verify",
        conflicts_with = "pg_bin"
    )]
    pub verify_image: Option<String>,
    /// A query --verify runs; with `SQL => VALUE`, its first value must equal VALUE. Repeatable.
    #[arg(long, value_name = "SQL")]
    pub check_sql: Vec<String>,
    /// Database the --check-sql queries run in.
    #[arg(long, default_value = "postgres", value_name = "DB")]
    pub check_db: String,
    /// Role --verify connects as (default: the backup's role, then postgres, then $USER).
    #[arg(long, value_name = "ROLE")]
    pub verify_user: Option<String>,
    /// How long --verify waits for recovery.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    pub verify_timeout: std::time::Duration,
    /// With --verify: write the result, passed or failed, to FILE (*.prom) as Prometheus text
    /// for node_exporter's textfile collector (atomically, mode 0644), to alert on a failed
    /// restore test or on none passing for days (docs/ci-restore-check.md).
    #[arg(
        long,
        value_name = "FILE",
        env = "PITR_METRICS_FILE",
        requires = "verify",
        conflicts_with = "dry_run"
    )]
    pub metrics_file: Option<std::path::PathBuf>,
}

/// Arguments of `pitr list`.
#[derive(Debug, Args)]
pub struct ListArgs {
    #[command(flatten)]
    /// Repo.
    pub repo: RepoArgs,
}

/// Arguments of `pitr prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    #[command(flatten)]
    /// Repo.
    pub repo: RepoArgs,
    /// Keep the newest N backups.
    #[arg(long, value_name = "N")]
    pub keep_full: Option<usize>,
    /// Keep what is needed to restore to any instant within this window (e.g. 7d, 36h).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub keep_within: Option<std::time::Duration>,
    /// Show what would be deleted, delete nothing.
    #[arg(long)]
    pub dry_run: bool,
}

/// Arguments of `pitr mark`.
#[derive(Debug, Args)]
pub struct MarkArgs {
    /// The restore point's name.
    pub name: String,
    #[command(flatten)]
    /// Server and repo.
    pub server: ServerArgs,
}

/// Arguments of `pitr demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// PostgreSQL's bin directory (default: PATH, then pg_config).
    #[arg(long, value_name = "DIR", env = "PITR_PG_BIN")]
    pub pg_bin: Option<std::path::PathBuf>,
    /// Keep the demo's directory (server, repo, restored copy) instead of removing it.
    #[arg(long)]
    pub keep: bool,
}

/// Parses a size: `4GB`, `512MB`, `64kB`, or bytes (units are powers of 1024, as in
/// postgresql.conf).
pub(crate) fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("invalid size {s:?}: use e.g. 512MB or 4GB"))?;
    let mult: u64 = match unit.trim() {
        "" | "B" => 1,
        "kB" | "KB" | "k" | "K" => 1 << 10,
        "MB" | "M" => 1 << 20,
        "GB" | "G" => 1 << 30,
        "TB" | "T" => 1 << 40,
        _ => return Err(format!("invalid size unit in {s:?}: use kB, MB, GB or TB")),
    };
    n.checked_mul(mult)
        .filter(|v| *v > 0)
        .ok_or_else(|| format!("size {s:?} out of range"))
}

/// `pitr backup --compress`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compress {
    /// pitr's lz4 per chunk.
    Lz4,
    /// pitr's zstd per chunk, at this level.
    Zstd(i32),
    /// The server's lz4.
    ServerLz4,
}

/// Parses `--compress`: `lz4`, `zstd`, `zstd:LEVEL` or `server-lz4`.
pub(crate) fn parse_compress(s: &str) -> Result<Compress, String> {
    let levels = crate::repo::codec::ZSTD_LEVELS;
    match s.trim() {
        "lz4" => Ok(Compress::Lz4),
        "server-lz4" => Ok(Compress::ServerLz4),
        "zstd" => Ok(Compress::Zstd(crate::repo::codec::ZSTD_DEFAULT_LEVEL)),
        other => match other.strip_prefix("zstd:").map(|l| l.trim().parse::<i32>()) {
            Some(Ok(l)) if levels.contains(&l) => Ok(Compress::Zstd(l)),
            Some(_) => Err(format!(
                "the zstd level must be a number from {} to {} (higher levels need more memory per chunk than pitr allows)",
                levels.start(),
                levels.end()
            )),
            None => Err(format!(
                "unknown method {other:?}: use lz4, zstd, zstd:LEVEL (1-9) or server-lz4"
            )),
        },
    }
}

/// Parses `500ms`, `1s`, `2m`, `1h` or a number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: f64 = n
        .parse()
        .map_err(|_| format!("invalid duration {s:?}: use e.g. 500ms, 1s, 2m"))?;
    let secs = match unit {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86400.0,
        _ => {
            return Err(format!(
                "invalid duration unit in {s:?}: use ms, s, m, h or d"
            ));
        }
    };
    if !(0.001..=86_400.0 * 365.0).contains(&secs) {
        return Err(format!("duration {s:?} out of range"));
    }
    Ok(std::time::Duration::from_secs_f64(secs))
}

/// `pitr wal ...`
#[derive(Debug, Subcommand)]
pub enum WalCommand {
    /// Decode WAL segment files and summarise them: records, commits and aborts, the commit
    /// time range, restore points, checkpoints, and where valid WAL ends.
    ///
    /// Files may be plain segments (`000000010000000000000003`), `.partial` segments, or
    /// lz4-frame compressed copies of either. Consecutive segments of one timeline are decoded
    /// as one stream, so records crossing segment boundaries are checked whole; each record
    /// counts in the segment where it starts. Segment size, PostgreSQL version (15-18) and
    /// system identifier are read from each file's first page header.
    ///
    /// Exits 1, naming the file and LSN, when a segment holds invalid WAL (a bad checksum, a
    /// broken header) rather than ending cleanly (zeros, a recycled page, a record continued in
    /// a segment not given).
    Inspect(InspectArgs),
    /// Fetch one archived WAL file from a repo, decompressed and verified, into DEST.
    ///
    /// Usable as PostgreSQL's restore_command:
    ///   restore_command = 'pitr wal fetch %f %p --repo /var/lib/pitr'
    /// Exits 1 when the file is not in the repo (as recovery expects), 2 on usage errors.
    /// A segment name is served only from a complete archived segment; NAME.partial gives the
    /// newest partial copy, zero-padded.
    Fetch(FetchArgs),
}

/// Arguments of `pitr wal fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// WAL file name: a segment (000000010000000000000003), NAME.partial, or TTTTTTTT.history.
    pub name: String,
    /// Where to write it.
    pub dest: PathBuf,
    /// The repo: a directory or file:///path.
    #[arg(long, env = "PITR_REPO")]
    pub repo: String,
}

/// Arguments of `pitr wal inspect`.
#[derive(Debug, Args)]
pub struct InspectArgs {
    /// Segment files to inspect.
    #[arg(required = true, value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// Print JSON (one array, an object per file) instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also list every commit and abort with its LSN and time (text output).
    #[arg(long)]
    pub xacts: bool,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn compress_methods_parse_and_bad_levels_say_the_range() {
        assert_eq!(parse_compress("lz4"), Ok(Compress::Lz4));
        assert_eq!(parse_compress("server-lz4"), Ok(Compress::ServerLz4));
        assert_eq!(parse_compress("zstd"), Ok(Compress::Zstd(3)));
        assert_eq!(parse_compress("zstd:9"), Ok(Compress::Zstd(9)));
        assert_eq!(parse_compress(" zstd:1 "), Ok(Compress::Zstd(1)));
        for bad in ["zstd:0", "zstd:10", "zstd:19", "zstd:-1", "zstd:x", "zstd:"] {
            let e = parse_compress(bad).unwrap_err();
            assert!(
                e.starts_with("the zstd level must be a number from 1 to 9"),
                "{bad}: {e}"
            );
        }
        let e = parse_compress("gzip").unwrap_err();
        assert_eq!(
            e,
            "unknown method \"gzip\": use lz4, zstd, zstd:LEVEL (1-9) or server-lz4"
        );
        // --server-compression and --compress are one choice.
        let args = [
            "pitr",
            "backup",
            "--source",
            "s",
            "--repo",
            "r",
            "--server-compression",
            "--compress",
            "zstd",
        ];
        let e = Cli::try_parse_from(args).unwrap_err();
        assert!(e.to_string().contains("cannot be used with"), "{e}");
    }
}
