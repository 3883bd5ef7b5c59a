//! `pitr key ...` as commands, and [`configure`]: the key source of every other command.

use std::io::Write;
use std::process::ExitCode;

use crate::cli::{Cli, KeyCommand, RepoArgs, RetireArgs, RotateArgs};
use crate::cmd::{OutputError, emit};
use crate::repo::crypt::{self, CryptError, KeySource, RepoKey};
use crate::repo::{Repo, RepoError};

/// Why a `pitr key` command failed.
#[derive(Debug, thiserror::Error)]
pub enum CmdError {
    /// A key could not be loaded.
    #[error(transparent)]
    Key(#[from] CryptError),
    /// The repo could not be used.
    #[error(transparent)]
    Repo(#[from] RepoError),
    /// A usage error.
    #[error("{0}")]
    Usage(String),
    /// Printing the result failed.
    #[error(transparent)]
    Output(#[from] OutputError),
}

/// The key source the global options give, and the options that give it to a child process
/// (files by absolute path).
async fn source_of(cli: &Cli) -> Result<Option<(KeySource, Vec<String>)>, CmdError> {
    let abs = |p: &std::path::Path| {
        std::path::absolute(p)
            .unwrap_or_else(|_| p.to_path_buf())
            .display()
            .to_string()
    };
    if let Some(p) = &cli.encryption_key_file {
        let k = RepoKey::load(p)?;
        return Ok(Some((
            KeySource::Symmetric(k),
            vec!["--encryption-key-file".into(), abs(p)],
        )));
    }
    if let Some(r) = &cli.recipient {
        let r = crypt::parse_recipient(r)?;
        let text = r.to_string();
        return Ok(Some((
            KeySource::Recipient(r),
            vec!["--recipient".into(), text],
        )));
    }
    if let Some(p) = &cli.identity {
        return Ok(Some((
            KeySource::load_identity(p)?,
            vec!["--identity".into(), abs(p)],
        )));
    }
    if let Some(k) = &cli.kms_key_id {
        return Ok(Some((
            kms(k).await?,
            vec!["--kms-key-id".into(), k.clone()],
        )));
    }
    Ok(None)
}

#[cfg(feature = "kms")]
async fn kms(key: &str) -> Result<KeySource, CmdError> {
    Ok(KeySource::Remote(crate::repo::kms::open(key).await?))
}

#[cfg(not(feature = "kms"))]
async fn kms(key: &str) -> Result<KeySource, CmdError> {
    Err(CmdError::Usage(format!(
        "--kms-key-id {key}: this pitr was built without KMS support: build it with `cargo build --release --features kms`"
    )))
}

/// Whether the command line is `pitr key generate --recipient` (the flag without a value).
fn generates_identity(cli: &Cli) -> bool {
    matches!(cli.command, crate::cli::Command::Key(KeyCommand::Generate)) && cli.recipient.is_some()
}

/// Sets the process's key source from the global options (before any repo is opened).
pub fn configure(cli: &Cli) -> Result<(), CmdError> {
    if matches!(cli.command, crate::cli::Command::Key(KeyCommand::Generate)) {
        if cli.recipient.as_deref().is_some_and(|r| !r.is_empty()) {
            return Err(CmdError::Usage(
                "`pitr key generate --recipient` takes no value: it prints a new identity and its recipient".into(),
            ));
        }
        return Ok(());
    }
    if cli.recipient.as_deref() == Some("") {
        return Err(CmdError::Usage(
            "--recipient needs a value: the recipient (age1...) or a file holding it".into(),
        ));
    }
    let needs_runtime = cli.kms_key_id.is_some();
    let source = if needs_runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| CmdError::Usage(format!("cannot start a runtime: {e}")))?
            .block_on(source_of(cli))?
    } else {
        // Without KMS nothing here awaits anything: poll it to completion at once.
        futures_now(source_of(cli))?
    };
    crypt::configure(source);
    Ok(())
}

/// The `[encryption]` table `pitr stream --print-config` shows: the kind of key, where it
/// came from and its id (a file's path, a recipient or a KMS key name, never a secret).
pub fn print_config(matches: &clap::ArgMatches) -> String {
    let Some(source) = crypt::configured() else {
        return "\n[encryption]\nkey = \"none\"  # a plain repo: no --encryption-key-file, --recipient, --identity or --kms-key-id\n".to_owned();
    };
    let args = crypt::configured_args();
    let (flag, value) = match args.as_slice() {
        [f, v] => (f.trim_start_matches('-').replace('-', "_"), v.clone()),
        _ => (String::new(), String::new()),
    };
    let from = match matches.value_source(&flag) {
        Some(clap::parser::ValueSource::EnvVariable) => match flag.as_str() {
            "encryption_key_file" => "PITR_ENCRYPTION_KEY_FILE",
            "recipient" => "PITR_RECIPIENT",
            "identity" => "PITR_IDENTITY_FILE",
            _ => "PITR_KMS_KEY_ID",
        }
        .to_owned(),
        _ => format!("--{}", flag.replace('_', "-")),
    };
    let value = toml_string(&value);
    format!(
        "\n[encryption]\nkey = \"{}\"\n{flag} = {value}  # {from}\nkey_id = \"{}\"\nreads = {}\n",
        source.kind_name(),
        source.id_hex(),
        source.can_read(),
    )
}

fn toml_string(s: &str) -> String {
    toml::Value::String(s.to_owned()).to_string()
}

fn futures_now<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .map(|rt| rt.block_on(f))
        .unwrap_or_else(|e| panic!("cannot start a runtime: {e}"))
}

/// `pitr key ...`.
pub async fn run(cli: Cli) -> Result<ExitCode, CmdError> {
    let identity = generates_identity(&cli);
    let crate::cli::Command::Key(c) = cli.command else {
        return Err(CmdError::Usage("internal: not a key command".into()));
    };
    match c {
        KeyCommand::Generate if !identity => print!("{}", RepoKey::generate()),
        KeyCommand::Generate => {
            let (identity, recipient) = KeySource::generate_identity();
            print!("{identity}");
            eprintln!("recipient (public; give it to `pitr stream --recipient`): {recipient}");
        }
        KeyCommand::Rotate(a) => return rotate(a).await,
        KeyCommand::Retire(a) => return retire(a).await,
        KeyCommand::List(a) => return list(a).await,
    }
    Ok(ExitCode::SUCCESS)
}

async fn keyring_of(repo: &Repo, what: &str) -> Result<std::sync::Arc<crypt::Keyring>, CmdError> {
    repo.keyring().cloned().ok_or_else(|| {
        CmdError::Usage(format!(
            "`pitr key {what}` needs the repo's current key: pass --encryption-key-file, --identity or --kms-key-id"
        ))
    })
}

async fn rotate(a: RotateArgs) -> Result<ExitCode, CmdError> {
    let repo = Repo::open_to_read(&a.repo.repo, "key rotate").await?;
    let keyring = keyring_of(&repo, "rotate").await?;
    let to = if let Some(p) = &a.to_key_file {
        KeySource::Symmetric(RepoKey::load(p)?)
    } else if let Some(r) = &a.to_recipient {
        KeySource::Recipient(crypt::parse_recipient(r)?)
    } else if let Some(k) = &a.to_kms_key_id {
        kms(k).await?
    } else {
        return Err(CmdError::Usage(
            "give the new key: --to-key-file, --to-recipient or --to-kms-key-id".into(),
        ));
    };
    let report = crypt::rotate(&keyring, &to)
        .await
        .map_err(RepoError::from)?;
    emit(a.repo.json, &report, |out, r| {
        writeln!(
            out,
            "key {} now opens every data key of the repo ({} stored for it now, {} already); retire the old key with `pitr key retire --key-id {}` once every process uses the new one",
            r.to,
            r.wrapped,
            r.already,
            keyring.source().id_hex()
        )
    })?;
    Ok(ExitCode::SUCCESS)
}

async fn retire(a: RetireArgs) -> Result<ExitCode, CmdError> {
    let repo = Repo::open_existing(&a.repo.repo).await?;
    let keyring = keyring_of(&repo, "retire").await?;
    if keyring
        .source()
        .id_hex()
        .eq_ignore_ascii_case(a.key_id.trim())
    {
        return Err(CmdError::Usage(format!(
            "key {} is the one given: retire it with another of the repo's keys",
            a.key_id
        )));
    }
    let n = crypt::retire(&keyring, &a.key_id)
        .await
        .map_err(RepoError::from)?;
    #[derive(serde::Serialize)]
    struct Retired<'a> {
        retired: &'a str,
        key_objects_deleted: usize,
    }
    emit(
        a.repo.json,
        &Retired {
            retired: &a.key_id,
            key_objects_deleted: n,
        },
        |out, r| {
            writeln!(
                out,
                "key {} retired: it opens nothing in the repo now ({} key objects deleted)",
                r.retired, r.key_objects_deleted
            )
        },
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn list(a: RepoArgs) -> Result<ExitCode, CmdError> {
    let repo = Repo::open_existing(&a.repo).await?;
    let keyring = keyring_of(&repo, "list").await?;
    let all = crypt::key_objects(keyring.inner().as_ref())
        .await
        .map_err(RepoError::from)?;
    #[derive(serde::Serialize)]
    struct Key {
        id: String,
        data_keys: usize,
        of: usize,
    }
    let mut by: std::collections::BTreeMap<String, usize> = Default::default();
    for keks in all.values() {
        for k in keks {
            *by.entry(crypt::hex(k)).or_default() += 1;
        }
    }
    let keys: Vec<Key> = by
        .into_iter()
        .map(|(id, data_keys)| Key {
            id,
            data_keys,
            of: all.len(),
        })
        .collect();
    emit(a.json, &keys, |out, ks| {
        for k in ks {
            writeln!(out, "{}  opens {} of {} data keys", k.id, k.data_keys, k.of)?;
        }
        Ok(())
    })?;
    Ok(ExitCode::SUCCESS)
}
