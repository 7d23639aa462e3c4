//! `nightshift secret`: values tasks need that must never appear in the clear. They are sealed
//! with a key kept outside the store (`NIGHTSHIFT_SECRET_KEY` or `keys/secrets.key` under
//! NIGHTSHIFT_HOME) and redacted as `[secret:NAME]` from every event, log and artifact.

use std::io::Read;
use std::process::ExitCode;

use nightshift_env::secrets::validate;

use crate::args::{SecretArgs, SecretCommand};
use crate::home::Home;
use crate::output::Failure;

pub async fn run(args: SecretArgs) -> Result<ExitCode, Failure> {
    let home = Home::from_env()?;
    let store = home.store().await?;
    match args.command {
        SecretCommand::Set { name } => {
            let mut value = String::new();
            std::io::stdin().read_to_string(&mut value).map_err(|err| {
                Failure::usage(format!("reading the value from standard input: {err}"))
            })?;
            // A value typed or echoed ends with a newline that is not part of it.
            let value = value.strip_suffix('\n').unwrap_or(&value);
            let value = value.strip_suffix('\r').unwrap_or(value);
            validate(&name, value).map_err(|err| Failure::usage(err.to_string()))?;
            let key = home
                .secret_key()
                .map_err(|err| Failure::error(err.to_string()))?;
            store.put_secret(&name, &key.seal(&name, value)).await?;
            eprintln!(
                "stored secret {name}; give it to setup with `[secrets] {name} = \"setup\"` in .nightshift.toml"
            );
        }
        SecretCommand::Ls => {
            for secret in store.secrets().await? {
                println!(
                    "{:<32} set {}",
                    secret.name,
                    secret.updated_at.strftime("%Y-%m-%d %H:%M UTC")
                );
            }
        }
        SecretCommand::Rm { name } => {
            if !store.delete_secret(&name).await? {
                return Err(Failure::usage(format!(
                    "no secret `{name}`; `nightshift secret ls` lists them"
                )));
            }
            eprintln!("deleted secret {name}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
