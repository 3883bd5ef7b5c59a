//! The `pitr` binary: parse, run, report. Errors end as one line on stderr and exit code 1
//! (2 for usage errors, from clap).

use std::io::Write;
use std::process::ExitCode;

use clap::Parser;
use pitr::cli::{Cli, Command, WalCommand};

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
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

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
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
            eprintln!("pitr: error: {e:#}");
            ExitCode::from(1)
        }
    }
}
