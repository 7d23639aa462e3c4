//! `nightshift token`: API tokens. Only a hash of each secret is stored; the secret is printed
//! once, on creation.

use std::process::ExitCode;

use crate::args::{TokenArgs, TokenCommand};
use crate::home::Home;
use crate::output::{Failure, print_json};

pub async fn run(args: TokenArgs) -> Result<ExitCode, Failure> {
    let store = Home::from_env()?.store().await?;
    match args.command {
        TokenCommand::Create { scope, name } => {
            let (token, secret) =
                nightshift_server::create_token(store.as_ref(), &name, scope).await?;
            println!("{secret}");
            eprintln!(
                "token {} ({scope}, \"{}\"): pass it as `Authorization: Bearer …`; it is not shown again",
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
                    println!(
                        "{:<28} {:<7} {:<20} {:<20} {}{revoked}",
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
