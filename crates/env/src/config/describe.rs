//! The effective configuration as text for `nightshift env check`: every key, its value, and
//! where the value came from, so a person can see at a glance what a task will get and why.

use std::fmt::Write;

use super::schema::SecretScope;
use super::{CONFIG_FILE, ConfigSource, Loaded};

/// One line per key (`key = value  (origin)`); multi-line scripts follow their key, indented.
pub fn describe(loaded: &Loaded) -> String {
    let mut out = Output {
        loaded,
        text: String::new(),
    };
    let config = &loaded.config;
    out.line(&match &loaded.source {
        ConfigSource::File { path } => format!("source: {}", path.display()),
        ConfigSource::Imported { importer, path } => format!(
            "source: {} (imported by the {importer} importer; there is no {CONFIG_FILE})",
            path.display()
        ),
        ConfigSource::Defaults => {
            format!("source: defaults (there is no {CONFIG_FILE} and nothing to import)")
        }
    });
    if !loaded.ecosystems.is_empty() {
        let seen: Vec<String> = loaded
            .ecosystems
            .iter()
            .map(|detected| {
                format!(
                    "{} ({})",
                    detected.ecosystem.name(),
                    detected.marker.display()
                )
            })
            .collect();
        out.line(&format!("ecosystems: {}", seen.join(", ")));
    }
    out.blank();

    out.value("version", Some(config.version.to_string()));
    let environment = &config.environment;
    out.script("environment.setup", environment.setup.as_deref());
    out.script(
        "environment.maintenance",
        environment.maintenance.as_deref(),
    );
    out.value(
        "environment.workdir",
        Some(match &environment.workdir {
            Some(workdir) => format!("{:?}", workdir.display().to_string()),
            None => "\".\" (the repository root)".into(),
        }),
    );
    out.value(
        "environment.image",
        Some(match &environment.image {
            Some(image) => format!("{image:?}"),
            None => "none (the host's system)".into(),
        }),
    );
    if let Some(user) = &environment.user {
        out.value(
            "environment.user",
            Some(format!(
                "{user:?} (the agent and the checks run as this user of the image)"
            )),
        );
    }
    if let Some(build) = &environment.build {
        if let Some(dockerfile) = &build.dockerfile {
            out.value(
                "environment.build.dockerfile",
                Some(format!(
                    "{:?} (context {:?}; its FROM is the image, each RUN, COPY and ADD a cached layer)",
                    dockerfile.display().to_string(),
                    build.context.display().to_string()
                )),
            );
            for (name, value) in &build.args {
                out.value(
                    &format!("environment.build.args.{name}"),
                    Some(format!("{value:?}")),
                );
            }
        }
        for feature in &build.features {
            let options: Vec<String> = feature
                .options
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            out.value(
                &format!("environment.build.features.{:?}", feature.id),
                Some(if options.is_empty() {
                    "(defaults)".to_string()
                } else {
                    options.join(", ")
                }),
            );
        }
    }
    out.value("environment.cache_key", Some(list(&environment.cache_key)));
    let copy: Vec<String> = environment
        .copy
        .iter()
        .map(|path| path.display().to_string())
        .collect();
    out.value("environment.copy", Some(list(&copy)));
    if environment.env.is_empty() {
        out.value("environment.env", Some("{}".into()));
    }
    for (name, value) in &environment.env {
        out.value(
            &format!("environment.env.{name}"),
            Some(format!("{value:?}")),
        );
    }
    out.blank();

    if config.checks.is_empty() {
        out.line("checks: none declared, so nothing verifies a task's result");
    }
    for check in &config.checks {
        let key = format!("checks.{}", check.name);
        match check.timeout {
            Some(timeout) if !check.run.contains('\n') => {
                out.value(&key, Some(format!("{:?} (timeout {timeout})", check.run)));
            }
            Some(timeout) => out.script(&format!("{key} (timeout {timeout})"), Some(&check.run)),
            None => out.script(&key, Some(&check.run)),
        }
    }
    out.blank();

    out.value("network.setup", Some(list(&config.network.setup)));
    out.value("network.agent", Some(list(&config.network.agent)));
    out.blank();

    let limits = &config.limits;
    out.value("limits.wall_time", Some(limits.wall_time.to_string()));
    out.value("limits.memory", Some(limits.memory.to_string()));
    out.value(
        "limits.cpus",
        Some(
            limits
                .cpus
                .map_or_else(|| "no limit".into(), |cpus| cpus.to_string()),
        ),
    );
    out.value(
        "limits.pids",
        Some(
            limits
                .pids
                .map_or_else(|| "the sandbox's default".into(), |pids| pids.to_string()),
        ),
    );
    out.value("limits.disk", Some(limits.disk.to_string()));

    if !config.secrets.is_empty() {
        out.blank();
    }
    for secret in &config.secrets {
        let scope = match &secret.scope {
            SecretScope::Setup => "setup (an environment variable of setup only)".to_string(),
            SecretScope::Proxy {
                hosts,
                header,
                format,
            } => format!(
                "proxy (`{header}: {format}` on requests to {})",
                hosts.join(", ")
            ),
        };
        out.value(&format!("secrets.{}", secret.name), Some(scope));
    }

    if !config.mcp.is_empty() {
        out.blank();
    }
    for server in &config.mcp {
        let mut text = match &server.url {
            Some(url) if server.sse => {
                format!("remote (HTTP+SSE), through the egress proxy: {url}")
            }
            Some(url) => format!("remote, through the egress proxy: {url}"),
            None => {
                let mut words = vec![server.command.clone()];
                words.extend(server.args.iter().cloned());
                format!("stdio, in the sandbox: {}", list(&words))
            }
        };
        if let Some(tools) = &server.tools {
            text.push_str(&format!("; only {}", list(tools)));
        }
        if !server.exclude_tools.is_empty() {
            text.push_str(&format!("; not {}", list(&server.exclude_tools)));
        }
        if !server.env.is_empty() {
            let names: Vec<String> = server.env.keys().cloned().collect();
            text.push_str(&format!("; env {}", names.join(", ")));
        }
        out.value(&format!("mcp.{}", server.name), Some(text));
    }

    if config.review.auto {
        out.blank();
        out.value(
            "review.auto",
            Some(
                "true (a review task is queued for every task that succeeds with a branch)".into(),
            ),
        );
    }

    if !loaded.warnings.is_empty() {
        out.blank();
        out.line(&format!("warnings ({}):", loaded.warnings.len()));
        for warning in &loaded.warnings {
            out.line(&format!("  {warning}"));
        }
    }
    out.text
}

struct Output<'a> {
    loaded: &'a Loaded,
    text: String,
}

impl Output<'_> {
    fn line(&mut self, line: &str) {
        self.text.push_str(line);
        self.text.push('\n');
    }

    fn blank(&mut self) {
        if !self.text.ends_with("\n\n") {
            self.text.push('\n');
        }
    }

    fn origin(&self, key: &str) -> String {
        match self.loaded.provenance.get(key) {
            Some(origin) => format!("  ({origin})"),
            None => String::new(),
        }
    }

    fn value(&mut self, key: &str, value: Option<String>) {
        let origin = self.origin(key.split(" (").next().unwrap_or(key));
        let _ = match value {
            Some(value) => writeln!(self.text, "{key} = {value}{origin}"),
            None => writeln!(self.text, "{key}: not set{origin}"),
        };
    }

    /// A script: inline when it is one line, else one indented line per script line.
    fn script(&mut self, key: &str, script: Option<&str>) {
        let origin = self.origin(key.split(" (").next().unwrap_or(key));
        let _ = match script {
            None => writeln!(self.text, "{key}: not set"),
            Some(script) if !script.trim_end().contains('\n') => {
                writeln!(self.text, "{key} = {:?}{origin}", script.trim_end())
            }
            Some(script) => {
                let _ = writeln!(self.text, "{key}: {}", origin.trim_start());
                for line in script.trim_end().lines() {
                    let _ = writeln!(self.text, "    | {line}");
                }
                Ok(())
            }
        };
    }
}

/// `["a", "b"]`, or `[]`.
fn list(items: &[String]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("{item:?}")).collect();
    format!("[{}]", quoted.join(", "))
}
