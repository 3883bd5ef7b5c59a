//! The `pitr` binary: parse, run, report. Errors end as one line on stderr and exit code 1
//! (2 for usage errors, from clap).

use std::io::{IsTerminal, Write};
use std::process::ExitCode;

use pitr::cli::{Cli, Command, LogFormat, WalCommand};

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PITR_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // Colours only on a terminal (and never with NO_COLOR): log files stay plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none();
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Text => b.with_target(false).init(),
        LogFormat::Json => b.json().init(),
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run(cli: Cli, matches: clap::ArgMatches) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Stream(a) => {
            let sm = matches
                .subcommand_matches("stream")
                .ok_or_else(|| anyhow::anyhow!("internal: no stream matches"))?;
            let from_user = |m: &clap::ArgMatches| {
                matches!(
                    m.value_source("log_format"),
                    Some(
                        clap::parser::ValueSource::CommandLine
                            | clap::parser::ValueSource::EnvVariable
                    )
                )
            };
            let log_from_user = from_user(&matches) || from_user(sm);
            let settings = pitr::config::resolve(&a, sm, cli.log_format, log_from_user)?;
            if a.print_config {
                print!("{}", pitr::config::render(&settings));
                return Ok(ExitCode::SUCCESS);
            }
            init_logging(if settings.log_format == "json" {
                LogFormat::Json
            } else {
                LogFormat::Text
            });
            let source = pitr::replication::conninfo::ConnParams::parse(&settings.source, true)?;
            let rt = runtime()?;
            let repo = rt.block_on(pitr::repo::Repo::open(&settings.repo))?;
            // Held until exit: the spool is this process's alone.
            let spool_dir = match (settings.ack.as_str(), &settings.spool_dir) {
                ("spool", Some(d)) => Some(std::path::PathBuf::from(d)),
                _ => None,
            };
            let spool_lock = spool_dir
                .as_deref()
                .map(pitr::stream::spool::prepare_dir)
                .transpose()?;
            let opts = pitr::stream::StreamOptions {
                source,
                repo,
                slot: settings.slot.clone(),
                partial_every: settings.partial_every,
                status_interval: settings.status_interval,
                reconnect_cap: std::time::Duration::from_secs(30),
                metrics: std::sync::Arc::new(pitr::server::Metrics::new(
                    pitr::server::metrics::ReadyPolicy {
                        max_lag_bytes: settings.ready_max_lag,
                        max_lag_time: settings.ready_max_lag_time,
                    },
                )),
                slot_check_every: std::time::Duration::from_secs(5),
                spool: spool_dir.map(|dir| pitr::stream::spool::SpoolConfig {
                    dir,
                    max_bytes: settings.spool_max,
                }),
                shutdown_timeout: settings.shutdown_timeout,
                writer_heartbeat: settings.writer_heartbeat,
                // With metrics served, a refusal stays visible on /healthz until SIGTERM.
                linger_on_divergence: !matches!(settings.metrics_listen.as_str(), "off" | ""),
            };
            let listen: Option<std::net::SocketAddr> = match settings.metrics_listen.as_str() {
                "off" | "" => None,
                s => Some(s.parse().map_err(|_| {
                    anyhow::anyhow!(
                        "invalid --metrics-listen {s:?}: use HOST:PORT, like 127.0.0.1:9188, or off"
                    )
                })?),
            };
            let schedule = match (a.backup_every, &a.backup_at) {
                (Some(d), _) => Some(pitr::server::schedule::Schedule::Every(d)),
                (None, Some(at)) => {
                    let (h, m) =
                        pitr::server::schedule::parse_at(at).map_err(anyhow::Error::msg)?;
                    Some(pitr::server::schedule::Schedule::At(h, m))
                }
                (None, None) => None,
            };
            if a.keep_full == Some(0) {
                anyhow::bail!("--keep-full must be at least 1");
            }
            let retention = (a.keep_full.is_some() || a.keep_within.is_some()).then_some(
                pitr::repo::prune::Retention {
                    keep_full: a.keep_full,
                    keep_within: a.keep_within,
                },
            );
            if retention.is_some() && schedule.is_none() {
                anyhow::bail!(
                    "--keep-full/--keep-within in pitr stream apply after scheduled backups: add --backup-every or --backup-at (or run pitr prune)"
                );
            }
            let scheduled = schedule.map(|schedule| pitr::server::schedule::ScheduleOptions {
                schedule,
                backup: pitr::backup::BackupOptions {
                    source: opts.source.clone(),
                    repo: opts.repo.clone(),
                    label: "scheduled".into(),
                    server_compression: false,
                    wal_timeout: std::time::Duration::from_secs(600),
                    progress: false,
                },
                retention,
            });
            rt.block_on(async move {
                let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
                if let Some(s) = scheduled {
                    tokio::spawn(pitr::server::schedule::run(
                        s,
                        opts.metrics.clone(),
                        stop_rx.clone(),
                    ));
                }
                tokio::spawn(async move {
                    let mut term =
                        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                            .ok();
                    let t = async {
                        match term.as_mut() {
                            Some(t) => {
                                t.recv().await;
                            }
                            None => std::future::pending::<()>().await,
                        }
                    };
                    tokio::select! {
                        _ = t => {}
                        _ = tokio::signal::ctrl_c() => {}
                    }
                    tracing::info!("signal received: finishing uploads and stopping");
                    let _ = stop_tx.send(true);
                });
                if let Some(addr) = listen {
                    let bound = pitr::server::serve(addr, opts.metrics.clone(), stop_rx.clone())
                        .await
                        .map_err(|e| anyhow::anyhow!("cannot listen on {addr} for metrics: {e} (use --metrics-listen HOST:PORT or off)"))?;
                    tracing::info!(address = %bound, "serving /metrics, /livez, /healthz and /readyz");
                }
                anyhow::Ok(pitr::stream::run(opts, stop_rx).await?)
            })?;
            drop(spool_lock);
            Ok(ExitCode::SUCCESS)
        }
        Command::Backup(a) => {
            init_logging(cli.log_format);
            let source = pitr::replication::conninfo::ConnParams::parse(&a.server.source, true)?;
            let rt = runtime()?;
            let repo = rt.block_on(pitr::repo::Repo::open(&a.server.repo))?;
            let opts = pitr::backup::BackupOptions {
                source,
                repo,
                label: a.label.clone(),
                server_compression: a.server_compression,
                wal_timeout: a.wal_timeout,
                progress: std::io::stderr().is_terminal(),
            };
            let rec = rt.block_on(pitr::backup::run(&opts))?;
            emit(a.json, &rec, pitr::backup::print_summary)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Mark(a) => {
            init_logging(cli.log_format);
            let source = pitr::replication::conninfo::ConnParams::parse(&a.server.source, false)?;
            let rt = runtime()?;
            let rec = rt.block_on(async {
                let repo = pitr::repo::Repo::open_existing(&a.server.repo).await?;
                anyhow::Ok(pitr::backup::mark(&source, &repo, &a.name).await?)
            })?;
            println!(
                "restore point {:?} created at LSN {} on timeline {} ({}); restore with --to-name {:?}",
                rec.name, rec.lsn, rec.tli, rec.time, rec.name
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::List(a) => {
            init_logging(cli.log_format);
            let l = runtime()?.block_on(async {
                let repo = pitr::repo::Repo::open_existing(&a.repo.repo).await?;
                anyhow::Ok(pitr::list::list(&repo).await?)
            })?;
            emit(a.repo.json, &l, pitr::list::print)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Verify(a) => {
            init_logging(cli.log_format);
            let r = runtime()?.block_on(async {
                let repo = pitr::repo::Repo::open_existing(&a.repo).await?;
                anyhow::Ok(pitr::verify::repo::verify_repo(&repo).await?)
            })?;
            emit(a.json, &r, pitr::verify::repo::print)?;
            if let Some(p) = r.problems.first() {
                eprintln!("pitr: error: {} problem(s); first: {p}", r.problems.len());
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Prune(a) => {
            init_logging(cli.log_format);
            if a.keep_full.is_none() && a.keep_within.is_none() {
                anyhow::bail!("pitr prune needs --keep-full N and/or --keep-within DURATION");
            }
            if a.keep_full == Some(0) {
                anyhow::bail!("--keep-full must be at least 1");
            }
            let r = runtime()?.block_on(async {
                let repo = pitr::repo::Repo::open_existing(&a.repo.repo).await?;
                anyhow::Ok(
                    pitr::repo::prune::prune(
                        &repo,
                        pitr::repo::prune::Retention {
                            keep_full: a.keep_full,
                            keep_within: a.keep_within,
                        },
                        a.dry_run,
                    )
                    .await?,
                )
            })?;
            emit(a.repo.json, &r, pitr::repo::prune::print)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Restore(a) => {
            init_logging(cli.log_format);
            restore(a)
        }
        Command::Demo(a) => {
            init_logging(cli.log_format);
            runtime()?.block_on(pitr::demo::run(a.pg_bin.clone(), a.keep))?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Wal(WalCommand::Fetch(a)) => {
            let found = runtime()?.block_on(async {
                let repo = pitr::repo::Repo::open(&a.repo).await?;
                let id = repo.identity().await?.ok_or_else(|| {
                    anyhow::anyhow!("{} is not a pitr repo (no pitr.json)", repo.location)
                })?;
                let seg = walfmt::WalSegSize::new(id.wal_segment_size)?;
                anyhow::Ok(repo.fetch_wal(&a.name, seg).await?)
            })?;
            let Some(data) = found else {
                eprintln!("pitr: {}: not in the repo", a.name);
                return Ok(ExitCode::from(1));
            };
            let tmp = a.dest.with_extension("pitr-tmp");
            let res = (|| -> std::io::Result<()> {
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&data)?;
                f.sync_all()?;
                std::fs::rename(&tmp, &a.dest)
            })();
            if let Err(e) = res {
                let _ = std::fs::remove_file(&tmp);
                anyhow::bail!("writing {}: {e}", a.dest.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Wal(WalCommand::Inspect(args)) => {
            let stdout = std::io::stdout();
            let mut out = stdout.lock();
            let report = pitr::wal::inspect(&args.files)?;
            if args.json {
                serde_json::to_writer_pretty(&mut out, &report.files)?;
                writeln!(out)?;
            } else {
                pitr::wal::print_text(&mut out, &report, args.xacts)?;
            }
            out.flush()?;
            if let Some(problem) = report.first_problem() {
                eprintln!("pitr: error: {problem}");
                return Ok(ExitCode::from(1));
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Prints `v` to stdout as pretty JSON, or with `text`.
fn emit<T: serde::Serialize>(
    json: bool,
    v: &T,
    text: impl FnOnce(&mut std::io::StdoutLock<'static>, &T) -> std::io::Result<()>,
) -> anyhow::Result<()> {
    let mut out = std::io::stdout().lock();
    if json {
        serde_json::to_writer_pretty(&mut out, v)?;
        writeln!(out)?;
    } else {
        text(&mut out, v)?;
    }
    out.flush()?;
    Ok(())
}

fn restore(a: pitr::cli::RestoreArgs) -> anyhow::Result<ExitCode> {
    use pitr::restore::{TargetSpec, TimelineSel};
    let dir = a
        .dir
        .clone()
        .ok_or_else(|| anyhow::anyhow!("no destination: pass -D DIR (or set PGDATA)"))?;
    let target = match (&a.to, &a.to_lsn, &a.to_name) {
        (Some(t), _, _) if t.trim() == "latest" => TargetSpec::Latest,
        (Some(t), _, _) => TargetSpec::Time(pitr::restore::target::parse_time(
            t,
            a.tz.as_deref(),
            std::env::var("TZ").ok().as_deref(),
        )?),
        (_, Some(l), _) => TargetSpec::Lsn(l.parse().map_err(|_| {
            anyhow::anyhow!("invalid --to-lsn {l:?}: use the X/X form, like 0/3000148")
        })?),
        (_, _, Some(n)) => TargetSpec::Name(n.clone()),
        _ => TargetSpec::Latest,
    };
    let timeline = match a.timeline.as_str() {
        "latest" => TimelineSel::Latest,
        n => TimelineSel::Id(walfmt::TimeLineId(n.parse().map_err(|_| {
            anyhow::anyhow!("invalid --timeline {n:?}: use a number or latest")
        })?)),
    };
    let mut tablespace_map = std::collections::HashMap::new();
    for m in &a.tablespace_map {
        let (old, new) = m
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("invalid --tablespace-map {m:?}: use OLDDIR=NEWDIR"))?;
        tablespace_map.insert(old.to_string(), std::path::PathBuf::from(new));
    }
    if !a.verify && !a.check_sql.is_empty() {
        anyhow::bail!("--check-sql runs only with --verify: add --verify");
    }
    let rt = runtime()?;
    let repo = rt.block_on(pitr::repo::Repo::open_existing(&a.repo))?;
    let opts = pitr::restore::RestoreOptions {
        repo: repo.clone(),
        dir,
        target,
        timeline,
        tablespace_map,
        progress: std::io::stderr().is_terminal() && !a.json,
        backup: a.backup.clone(),
        mode: if a.standby {
            let exe = std::env::current_exe()
                .map_err(|e| anyhow::anyhow!("--standby: cannot find pitr's own path: {e}"))?;
            pitr::restore::Mode::Standby {
                restore_command: format!(
                    "{} wal fetch %f %p --repo {}",
                    shell_quote(&exe.display().to_string()),
                    shell_quote(&absolute_repo(&a.repo))
                ),
            }
        } else {
            pitr::restore::Mode::Promote
        },
        inclusive: !a.exclusive,
    };
    let plan = rt.block_on(pitr::restore::plan(&opts))?;
    let mut out = std::io::stdout().lock();
    if a.dry_run {
        pitr::restore::check_destination(&plan)?;
        if a.json {
            serde_json::to_writer_pretty(
                &mut out,
                &serde_json::json!({ "plan": plan, "dry_run": true }),
            )?;
            writeln!(out)?;
        } else {
            pitr::restore::print_plan(&mut out, &plan)?;
            writeln!(out, "dry run: nothing written")?;
        }
        return Ok(ExitCode::SUCCESS);
    }
    if a.verify {
        // Before writing anything: the binaries must exist and match the backup.
        pitr::verify::find_binaries(a.pg_bin.as_deref(), plan.backup.pg_major)?;
    }
    if !a.json {
        pitr::restore::print_plan(&mut out, &plan)?;
        out.flush()?;
    }
    let stats = rt.block_on(pitr::restore::execute(&repo, &plan, opts.progress))?;
    if !a.json {
        for n in &stats.neutralised {
            writeln!(out, "neutralised:    {n}")?;
        }
        for r in &stats.removed {
            writeln!(out, "removed:        {r} from the backup")?;
        }
        writeln!(
            out,
            "restored {} MiB of backup and {} MiB of WAL into {} in {:.1}s; start PostgreSQL on it to recover to the target",
            stats.backup_bytes >> 20,
            stats.wal_bytes >> 20,
            plan.dir.display(),
            stats.seconds
        )?;
        out.flush()?;
    }
    let mut report = None;
    if a.verify {
        let vopts = pitr::verify::ServerCheckOptions {
            pg_bin: a.pg_bin.clone(),
            checks: a
                .check_sql
                .iter()
                .map(|c| pitr::verify::Check::parse(c))
                .collect(),
            dbname: a.check_db.clone(),
            user: a.verify_user.clone(),
            timeout: a.verify_timeout,
        };
        let r = rt.block_on(pitr::verify::run_server_check(&plan, &stats, &vopts))?;
        if !a.json {
            r.print(&mut out)?;
        }
        report = Some(r);
    }
    if a.json {
        serde_json::to_writer_pretty(
            &mut out,
            &serde_json::json!({ "plan": plan, "restore": stats, "verify": report }),
        )?;
        writeln!(out)?;
    }
    out.flush()?;
    if let Some(r) = report
        && !r.ok
    {
        eprintln!("pitr: error: restore verification failed (see the report above)");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Quotes a word for the shell PostgreSQL runs restore_command with.
/// A repo spec usable from any working directory: PostgreSQL runs `restore_command` in the
/// data directory, so a relative local path is made absolute (URLs are kept).
fn absolute_repo(spec: &str) -> String {
    if spec.contains("://") {
        return spec.to_string();
    }
    std::path::absolute(spec)
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| spec.to_string())
}

fn shell_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// An error and its causes as one line, each cause once: a cause whose text a message
/// already shows (many messages embed their source) is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut out = String::new();
    for c in e.chain() {
        let t = c.to_string();
        let t = t.trim();
        if t.is_empty() || out.contains(t) {
            continue;
        }
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(t);
    }
    out.replace('\n', " ")
}

fn main() -> ExitCode {
    let matches = match <Cli as clap::CommandFactory>::command().try_get_matches() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind::*;
            if matches!(
                e.kind(),
                DisplayHelp | DisplayVersion | DisplayHelpOnMissingArgumentOrSubcommand
            ) {
                e.exit();
            }
            // One line, like every other pitr error; `--help` has the details.
            let text = e.to_string();
            let first: Vec<&str> = text
                .lines()
                .take_while(|l| !l.trim().is_empty())
                .map(str::trim)
                .collect();
            let first = first.join(" ");
            let first = first.trim_start_matches("error: ");
            eprintln!("pitr: error: {first} (see pitr --help)");
            return ExitCode::from(2);
        }
    };
    let cli = match <Cli as clap::FromArgMatches>::from_arg_matches(&matches) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "pitr: error: {}",
                e.to_string().lines().next().unwrap_or("invalid arguments")
            );
            return ExitCode::from(2);
        }
    };
    match run(cli, matches) {
        Ok(code) => code,
        Err(e) => {
            // A closed stdout (e.g. `| head`) is not an error worth reporting.
            let broken_pipe = e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>()
                    .map(std::io::Error::kind)
                    .or_else(|| {
                        c.downcast_ref::<serde_json::Error>()
                            .and_then(serde_json::Error::io_error_kind)
                    })
                    == Some(std::io::ErrorKind::BrokenPipe)
            });
            if broken_pipe {
                return ExitCode::SUCCESS;
            }
            eprintln!("pitr: error: {}", one_line(&e));
            ExitCode::from(1)
        }
    }
}
