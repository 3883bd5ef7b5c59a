//! The `pitr` binary: parse the command line, set up logging, dispatch to the command's
//! `run` (next to its job: `stream::cmd`, `backup::cmd`, `restore::cmd`, ...), report.
//! Errors end as one line on stderr and exit code 1 (2 for usage errors, from clap).
//!
//! Orchestration only: no timeouts or defaults here (they are in [`pitr::config`] and the
//! command modules), and the shutdown on SIGTERM/SIGINT is a [`pitr::shutdown::Shutdown`]
//! built once and handed to the command that runs until it.

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

/// Dispatches a parsed command line to its command's `run`.
fn run(cli: Cli, matches: clap::ArgMatches) -> anyhow::Result<ExitCode> {
    let log = cli.log_format;
    pitr::key::cmd::configure(&cli)?;
    Ok(match cli.command {
        Command::Stream(a) => {
            let sub = matches
                .subcommand_matches("stream")
                .ok_or_else(|| anyhow::anyhow!("internal: no stream matches"))?;
            let settings = pitr::config::resolve(&a, &pitr::config::given_by(&matches, sub), log)?;
            if a.print_config {
                print!("{}", pitr::config::render(&settings));
                print!("{}", pitr::key::cmd::print_config(&matches));
                return Ok(ExitCode::SUCCESS);
            }
            init_logging(settings.log_format);
            let rt = runtime()?;
            let shutdown = {
                let _in_runtime = rt.enter();
                pitr::shutdown::Shutdown::on_signals()?
            };
            let r = rt.block_on(pitr::stream::cmd::run(settings, shutdown));
            // A blocking task still running (a decode, a local-repo write) must not hold
            // the exit: dropping the runtime would wait for it without limit.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            r?
        }
        Command::Backup(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::backup::cmd::run(a))?
        }
        Command::Mark(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::backup::cmd::mark(a))?
        }
        Command::List(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::list::cmd::run(a))?
        }
        Command::Verify(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::verify::cmd::run(a))?
        }
        Command::Prune(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::repo::prune::cmd::run(a))?
        }
        Command::Restore(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::restore::cmd::run(a))?
        }
        Command::Demo(a) => {
            init_logging(log);
            runtime()?.block_on(pitr::demo::run(a.pg_bin.clone(), a.keep))?;
            ExitCode::SUCCESS
        }
        Command::Wal(WalCommand::Fetch(a)) => runtime()?.block_on(pitr::wal::cmd::fetch(a))?,
        Command::Wal(WalCommand::Inspect(a)) => pitr::wal::cmd::inspect(a)?,
        Command::Key(_) => {
            init_logging(log);
            runtime()?.block_on(pitr::key::cmd::run(cli))?
        }
    })
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
