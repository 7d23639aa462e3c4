//! `nightshift token`: API tokens. Only a hash of each secret is stored; the secret is printed
//! once, on creation.

use std::process::ExitCode;

use crate::args::{TokenArgs, TokenCommand};
use crate::home::Home;
use crate::output::{Failure, print_json};

pub async fn run(args: TokenArgs) -> Result<ExitCode, Failure> {
    let store = Home::from_env()?.store().await?;
    match args.command {
        TokenCommand::Create { scope, name, repos } => {
            let (token, secret) =
                nightshift_server::create_token(store.as_ref(), &name, scope, &repos)
                    .await
                    .map_err(|err| match err {
                        nightshift_server::CreateTokenError::Store(err) => Failure::from(err),
                        unknown => Failure::usage(unknown.to_string()),
                    })?;
            println!("{secret}");
            let limited = match token.repos.is_empty() {
                true => String::new(),
                false => format!(", only for {}", token.repos.join(", ")),
            };
            eprintln!(
                "token {} ({scope}{limited}, \"{}\"): pass it as `Authorization: Bearer …`; it is not shown again",
                token.id, token.name
            );
        }
        TokenCommand::Ls { json } => {
            let tokens = store.list_tokens().await?;
            if json {
                print_json(&tokens)?;
            } else {
                println!(
                    "{:<28} {:<7} {:<20} {:<20} NAME",
                    "ID", "SCOPE", "CREATED", "LAST USED"
                );
                for token in &tokens {
                    let when = |at: Option<jiff::Timestamp>| {
                        at.map_or("-".to_string(), |at| {
                            at.strftime("%Y-%m-%d %H:%M").to_string()
                        })
                    };
                    let revoked = if token.revoked_at.is_some() {
                        " (revoked)"
                    } else {
                        ""
                    };
                    let only = match token.repos.is_empty() {
                        true => String::new(),
                        false => format!(" (only {})", token.repos.join(", ")),
                    };
                    println!(
                        "{:<28} {:<7} {:<20} {:<20} {}{only}{revoked}",
                        token.id,
                        token.scope,
                        when(Some(token.created_at)),
                        when(token.last_used_at),
                        token.name
                    );
                }
            }
        }
        TokenCommand::Revoke { id } => {
            if store.revoke_token(&id).await? {
                println!("revoked {id}");
            } else {
                return Err(Failure::usage(format!(
                    "no unrevoked token `{id}`; `nightshift token ls` lists them"
                )));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
