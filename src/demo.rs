//! `pitr demo`: the whole loop on a throwaway PostgreSQL, with nothing to configure.
//!
//! initdb + start a server from the installed binaries, stream into a local repo, back up,
//! commit rows over a few seconds, drop the table, restore to just before the drop with
//! `--verify`, and show the rows are back. Everything lives in one temporary directory that
//! is removed at the end (unless `--keep`).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use crate::replication::conn::PgConn;
use crate::replication::conninfo::ConnParams;

fn find_any_postgres(pg_bin: Option<&Path>) -> anyhow::Result<(PathBuf, u32)> {
    let mut candidates = Vec::new();
    if let Some(b) = pg_bin {
        candidates.push(b.to_path_buf());
    }
    candidates.extend(crate::pgproc::path_dirs_with("initdb"));
    candidates.extend(crate::pgproc::pg_config_bindir());
    for d in candidates {
        if let Some((major, _)) = crate::pgproc::postgres_version(&d)
            && major >= 15
            && d.join("initdb").is_file()
        {
            return Ok((d, major));
        }
    }
    bail!(
        "no PostgreSQL 15 or later found on PATH or from pg_config: pass --pg-bin /usr/lib/postgresql/17/bin"
    )
}

/// As root, PostgreSQL's tools run as the "postgres" user.
fn server_user() -> anyhow::Result<Option<(u32, u32)>> {
    if crate::pgproc::euid() != Some(0) {
        return Ok(None);
    }
    match crate::pgproc::uid_gid_of("postgres") {
        Some(u) => Ok(Some(u)),
        None => bail!(
            "running as root and there is no \"postgres\" user: run pitr demo as a non-root user"
        ),
    }
}

fn run_cmd(cmd: &mut Command, what: &str) -> anyhow::Result<()> {
    if let Some((u, g)) = server_user()? {
        use std::os::unix::process::CommandExt;
        cmd.uid(u).gid(g);
    }
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| what.to_string())?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

async fn sql(params: &ConnParams, q: &str) -> anyhow::Result<Option<String>> {
    let mut c = PgConn::connect(params, false).await?;
    let r = c.simple_query(q).await;
    c.close().await;
    Ok(r?.get(0, 0).map(str::to_string))
}

/// Runs the tour.
pub(crate) async fn run_demo(pg_bin: Option<PathBuf>, keep: bool) -> anyhow::Result<()> {
    let (bin, major) = find_any_postgres(pg_bin.as_deref())?;
    let work = tempfile::Builder::new().prefix("pitr-demo-").tempdir()?;
    let root = work.path().to_path_buf();
    let data = root.join("server");
    let repo_dir = root.join("repo");
    let restored = root.join("restored");
    let sock = root.join("sock");
    std::fs::create_dir_all(&sock)?;
    if let Some((u, g)) = server_user()? {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))?;
        crate::pgproc::chown_tree(&root, u, g)?;
    }
    println!("pitr demo: PostgreSQL {major} from {}", bin.display());
    println!("  workspace {}", root.display());
    println!("1. starting a throwaway PostgreSQL");
    run_cmd(
        Command::new(bin.join("initdb"))
            .args(["-U", "postgres", "--auth=trust", "-N", "-D"])
            .arg(&data),
        "initdb",
    )?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut conf = std::fs::OpenOptions::new()
        .append(true)
        .open(data.join("postgresql.conf"))?;
    std::io::Write::write_all(
        &mut conf,
        format!(
            "listen_addresses = ''\nport = {port}\nunix_socket_directories = '{}'\nwal_level = replica\nmax_wal_senders = 4\nfsync = off\n",
            sock.display()
        )
        .as_bytes(),
    )?;
    run_cmd(
        Command::new(bin.join("pg_ctl"))
            .args(["start", "-w", "-D"])
            .arg(&data)
            .arg("-l")
            .arg(root.join("server.log")),
        "pg_ctl start",
    )?;
    let conninfo = format!(
        "host={} port={port} user=postgres dbname=postgres",
        sock.display()
    );
    let result = tour(&conninfo, &repo_dir, &restored, &bin).await;
    let _ = run_cmd(
        Command::new(bin.join("pg_ctl"))
            .args(["stop", "-m", "fast", "-w", "-D"])
            .arg(&data),
        "pg_ctl stop",
    );
    if keep {
        let kept = work.keep();
        println!("kept {}", kept.display());
    }
    result
}

async fn tour(conninfo: &str, repo_dir: &Path, restored: &Path, bin: &Path) -> anyhow::Result<()> {
    let params = ConnParams::parse(conninfo, false)?;
    let repl = ConnParams::parse(conninfo, true)?;
    let repo = crate::repo::Repo::open(&repo_dir.display().to_string()).await?;
    println!("2. streaming WAL into the repo {}", repo_dir.display());
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let opts = crate::stream::StreamOptions {
        source: repl.clone(),
        repo: repo.clone(),
        slot: Some("pitr_demo".into()),
        partial_every: Duration::from_millis(200),
        status_interval: Duration::from_secs(10),
        reconnect_cap: Duration::from_secs(5),
        metrics: Arc::new(crate::metrics::Metrics::default()),
        slot_check_every: Duration::from_secs(5),
        spool: None,
        shutdown_timeout: Duration::from_secs(10),
        writer_heartbeat: Duration::from_secs(60),
        linger_on_divergence: false,
    };
    let stream = tokio::spawn(crate::stream::run(opts, stop_rx));
    let res = tour_steps(&params, &repl, &repo, restored, bin).await;
    let _ = stop_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(15), stream).await;
    res
}

async fn wait_archived(params: &ConnParams, repo: &crate::repo::Repo) -> anyhow::Result<()> {
    let lsn: walfmt::Lsn = sql(params, "SELECT pg_current_wal_lsn()::text")
        .await?
        .and_then(|s| s.parse().ok())
        .context("pg_current_wal_lsn")?;
    let (_, seg, _) = crate::repo::catalog::identity(repo).await?;
    for _ in 0..300 {
        if let Some(t) = repo.tip(seg).await?
            && t.end >= lsn
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    bail!("the archive did not reach {lsn} within 30 s")
}

async fn tour_steps(
    params: &ConnParams,
    repl: &ConnParams,
    repo: &crate::repo::Repo,
    restored: &Path,
    bin: &Path,
) -> anyhow::Result<()> {
    // The stream claims the repo; wait until it has.
    for _ in 0..100 {
        if repo.identity().await?.is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    println!("3. taking a base backup");
    let rec = crate::backup::run(&crate::backup::BackupOptions {
        source: repl.clone(),
        repo: repo.clone(),
        label: "demo".into(),
        server_compression: false,
        codec: crate::repo::codec::ChunkCodec::Lz4,
        wal_timeout: Duration::from_secs(60),
        progress: false,
        wake: None,
    })
    .await?;
    println!(
        "   backup {} complete ({} MiB), restorable from {}",
        rec.id,
        rec.bytes >> 20,
        rec.restorable_from.as_deref().unwrap_or(&rec.end_time)
    );
    println!("4. committing orders, one every 0.4 s");
    sql(
        params,
        "CREATE TABLE orders (id int PRIMARY KEY, item text, at timestamptz DEFAULT clock_timestamp())",
    )
    .await?;
    let items = ["coffee", "tea", "croissant", "bagel", "juice"];
    for (i, item) in items.iter().enumerate() {
        sql(
            params,
            &format!("INSERT INTO orders (id, item) VALUES ({}, '{item}')", i + 1),
        )
        .await?;
        println!("   order {} ({item}) committed", i + 1);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    tokio::time::sleep(Duration::from_millis(600)).await;
    let before_drop = jiff::Timestamp::now();
    tokio::time::sleep(Duration::from_millis(600)).await;
    println!("5. oops: DROP TABLE orders");
    sql(params, "DROP TABLE orders").await?;
    let gone = sql(params, "SELECT to_regclass('orders') IS NULL").await?;
    println!(
        "   table gone on the server: {}",
        gone.as_deref() == Some("t")
    );
    wait_archived(params, repo).await?;
    let target = crate::restore::target::format_utc(before_drop);
    println!(
        "6. pitr restore --to '{target}' -D {} --verify",
        restored.display()
    );
    let opts = crate::restore::RestoreOptions {
        repo: repo.clone(),
        dir: restored.to_path_buf(),
        target: crate::restore::TargetSpec::Time(crate::restore::target::parse_time(
            &target, None, None,
        )?),
        timeline: crate::restore::TimelineSel::Latest,
        tablespace_map: Default::default(),
        progress: false,
        backup: None,
        mode: crate::restore::Mode::Promote,
        inclusive: true,
    };
    let plan = crate::restore::plan(&opts).await?;
    let mut out = std::io::stdout();
    crate::restore::print_plan(&mut out, &plan)?;
    let stats = crate::restore::execute(repo, &plan, false).await?;
    let report = crate::restore::verify::run_server_check(
        &plan,
        &stats,
        &crate::restore::verify::ServerCheckOptions {
            pg_bin: Some(bin.to_path_buf()),
            image: None,
            checks: vec![
                crate::restore::verify::Check::parse("SELECT count(*) FROM orders => 5"),
                crate::restore::verify::Check::parse(
                    "SELECT string_agg(id || ' ' || item, ', ' ORDER BY id) FROM orders",
                ),
            ],
            dbname: "postgres".into(),
            user: Some("postgres".into()),
            timeout: Duration::from_secs(120),
        },
        &crate::restore::verify::Runtime::Local(bin.to_path_buf()),
    )
    .await?;
    report.print(&mut out)?;
    if !report.ok {
        bail!("the demo's restore verification failed");
    }
    println!(
        "7. the orders are back: {}",
        report
            .checks
            .get(1)
            .and_then(|c| c.got.clone())
            .unwrap_or_default()
    );
    Ok(())
}

/// Entry point for `pitr demo`.
pub async fn run(pg_bin: Option<PathBuf>, keep: bool) -> anyhow::Result<()> {
    run_demo(pg_bin, keep).await
}
