//! `.nightshift.toml` section by section: each key's type and value are checked here, with
//! errors that name the key and the value as written.

use std::ops::Range;

use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, WarningKind};
use super::schema::{CONFIG_VERSION, Check, EnvConfig, SecretScope, SecretSpec};
use super::toml_reader::{
    CHECK_KEYS, ENVIRONMENT_KEYS, LIMITS_KEYS, NETWORK_KEYS, REVIEW_KEYS, SECRET_KEYS, TOP_KEYS,
    TomlReader, Value, join_key,
};
use super::units::{ByteSize, HumanDuration};
use super::validate;

/// In a network list, stands for the registries of the detected ecosystems.
pub(crate) const REGISTRIES_ENTRY: &str = "@registries";

/// The smallest memory or disk limit accepted: anything less is a forgotten unit.
const MIN_SIZE: u64 = ByteSize::MIB;

impl<'a> TomlReader<'a> {
    /// Reads the whole file over `config`, which holds the defaults.
    pub(crate) fn read_into(
        &mut self,
        config: &mut EnvConfig,
        registries: &[String],
    ) -> Result<(), ConfigError> {
        let document = self.parse()?;
        for (key, value) in document.get_ref() {
            let name: &str = key.get_ref();
            match name {
                "version" => {
                    let version = self.integer("version", value)?;
                    if version != i64::from(CONFIG_VERSION) {
                        let reason = if version > i64::from(CONFIG_VERSION) {
                            format!(
                                "this nightshift understands version {CONFIG_VERSION}; upgrade nightshift to read this file"
                            )
                        } else {
                            format!("the only version is {CONFIG_VERSION}")
                        };
                        return Err(self.invalid("version", &value.span(), reason));
                    }
                    config.version = CONFIG_VERSION;
                    self.record("version", key);
                }
                "environment" => self.environment(self.table(name, value)?, config)?,
                "checks" => self.checks(self.table(name, value)?, config)?,
                "network" => self.network(self.table(name, value)?, config, registries)?,
                "limits" => self.limits(self.table(name, value)?, config)?,
                "secrets" => self.secrets(self.table(name, value)?, config)?,
                "review" => self.review(self.table(name, value)?, config)?,
                "mcp" => self.mcp(self.table(name, value)?, config)?,
                _ => self.unknown_key("", key, TOP_KEYS),
            }
        }
        Ok(())
    }

    fn environment(
        &mut self,
        table: &DeTable<'a>,
        config: &mut EnvConfig,
    ) -> Result<(), ConfigError> {
        let environment = &mut config.environment;
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("environment", name);
            match name {
                "setup" | "maintenance" => {
                    let script = self.string(&full, value)?;
                    let script = Some(script).filter(|script| !script.trim().is_empty());
                    if name == "setup" {
                        environment.setup = script;
                    } else {
                        environment.maintenance = script;
                    }
                }
                "workdir" => {
                    let raw = self.string(&full, value)?;
                    let span = value.span();
                    let workdir = validate::relative_path(&raw, true)
                        .map_err(|reason| self.invalid(&full, &span, reason))?;
                    if validate::escapes_through_links(self.repo_root, &workdir) {
                        return Err(self.invalid(
                            &full,
                            &span,
                            "resolves through a symbolic link to outside the repository",
                        ));
                    }
                    let on_disk = self.repo_root.join(&workdir);
                    if on_disk.is_file() {
                        return Err(self.invalid(&full, &span, "is a file; name a directory"));
                    }
                    if !on_disk.exists() {
                        self.warn(
                            WarningKind::MissingPath,
                            &full,
                            &span,
                            format!(
                                "`{full}` = {raw:?} does not exist in this checkout; commands will fail unless the task's base commit has it"
                            ),
                        );
                    }
                    environment.workdir =
                        Some(workdir).filter(|workdir| !workdir.as_os_str().is_empty());
                }
                "image" => {
                    let raw = self.string(&full, value)?;
                    let reference = nightshift_image::Reference::parse(raw.trim())
                        .map_err(|err| self.invalid(&full, &value.span(), err.to_string()))?;
                    environment.image = Some(reference.to_string());
                }
                "cache_key" => {
                    let mut patterns = Vec::new();
                    for (raw, span) in self.strings(&full, value)? {
                        let normal = validate::relative_path(&raw, false)
                            .map_err(|reason| self.invalid(&full, &span, reason))?;
                        let pattern = normal.to_string_lossy().into_owned();
                        globset::Glob::new(&pattern).map_err(|err| {
                            self.invalid(
                                &full,
                                &span,
                                format!("is not a valid glob: {}", err.kind()),
                            )
                        })?;
                        patterns.push(pattern);
                    }
                    environment.cache_key = patterns;
                }
                "copy" => {
                    let mut paths = Vec::new();
                    for (raw, span) in self.strings(&full, value)? {
                        if raw.contains(['*', '?', '[']) {
                            return Err(self.invalid(
                                &full,
                                &span,
                                "is a pattern; list each file to copy by its path",
                            ));
                        }
                        let path = validate::relative_path(&raw, false)
                            .map_err(|reason| self.invalid(&full, &span, reason))?;
                        paths.push(path);
                    }
                    environment.copy = paths;
                }
                "env" => {
                    for (var, var_value) in self.table(&full, value)? {
                        let var_name: &str = var.get_ref();
                        let var_key = join_key(&full, var_name);
                        validate::env_name(var_name)
                            .map_err(|reason| self.invalid(&var_key, &var.span(), reason))?;
                        let text = match var_value.get_ref() {
                            DeValue::String(text) => text.to_string(),
                            DeValue::Integer(integer) => integer.to_string(),
                            DeValue::Float(float) => float.to_string(),
                            DeValue::Boolean(flag) => flag.to_string(),
                            DeValue::Datetime(_) | DeValue::Array(_) | DeValue::Table(_) => {
                                return Err(self.wrong_type(&var_key, var_value, "a string"));
                            }
                        };
                        environment.env.insert(var_name.to_string(), text);
                        self.record(var_key, var);
                    }
                    continue;
                }
                _ => {
                    self.unknown_key("environment", key, ENVIRONMENT_KEYS);
                    continue;
                }
            }
            self.record(full, key);
        }
        Ok(())
    }

    fn checks(&mut self, table: &DeTable<'a>, config: &mut EnvConfig) -> Result<(), ConfigError> {
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("checks", name);
            validate::check_name(name)
                .map_err(|reason| self.invalid(&full, &key.span(), reason))?;
            let check = match value.get_ref() {
                DeValue::String(run) => Check {
                    name: name.to_string(),
                    run: run.to_string(),
                    timeout: None,
                },
                DeValue::Table(fields) => self.check_table(name, &full, fields, value)?,
                _ => {
                    return Err(self.wrong_type(
                        &full,
                        value,
                        "a command string or a table with `run`",
                    ));
                }
            };
            if check.run.trim().is_empty() {
                return Err(self.invalid(&full, &value.span(), "has an empty command"));
            }
            config.checks.push(check);
            self.record(full, key);
        }
        Ok(())
    }

    fn check_table(
        &mut self,
        name: &str,
        full: &str,
        fields: &DeTable<'a>,
        whole: &Value<'a>,
    ) -> Result<Check, ConfigError> {
        let mut run = None;
        let mut timeout = None;
        for (key, value) in fields {
            let field = join_key(full, key.get_ref());
            match key.get_ref().as_ref() {
                "run" => run = Some(self.string(&field, value)?),
                "timeout" => timeout = Some(self.duration(&field, value)?),
                _ => self.unknown_key(full, key, CHECK_KEYS),
            }
        }
        let run = run.ok_or_else(|| {
            self.invalid(
                full,
                &whole.span(),
                "has no `run`; write `run = \"the command\"`",
            )
        })?;
        Ok(Check {
            name: name.to_string(),
            run,
            timeout,
        })
    }

    fn network(
        &mut self,
        table: &DeTable<'a>,
        config: &mut EnvConfig,
        registries: &[String],
    ) -> Result<(), ConfigError> {
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("network", name);
            if !matches!(name, "setup" | "agent") {
                self.unknown_key("network", key, NETWORK_KEYS);
                continue;
            }
            let mut hosts: Vec<String> = Vec::new();
            let mut hosts_named_registries = false;
            for (raw, span) in self.strings(&full, value)? {
                let expanded = if raw.trim() == REGISTRIES_ENTRY {
                    hosts_named_registries = true;
                    registries.to_vec()
                } else {
                    vec![
                        validate::host_pattern(&raw)
                            .map_err(|reason| self.invalid(&full, &span, reason))?,
                    ]
                };
                for host in expanded {
                    if !hosts.contains(&host) {
                        hosts.push(host);
                    }
                }
            }
            if name == "setup" {
                config.network.setup_registries = hosts_named_registries;
            }
            let target = match name {
                "setup" => &mut config.network.setup,
                _ => &mut config.network.agent,
            };
            *target = hosts;
            self.record(full, key);
        }
        Ok(())
    }

    fn limits(&mut self, table: &DeTable<'a>, config: &mut EnvConfig) -> Result<(), ConfigError> {
        let limits = &mut config.limits;
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("limits", name);
            match name {
                "wall_time" => limits.wall_time = self.duration(&full, value)?,
                "memory" => limits.memory = self.size(&full, value)?,
                "disk" => limits.disk = self.size(&full, value)?,
                "cpus" => {
                    let cpus = self.number(&full, value)?;
                    if !(cpus > 0.0 && cpus <= 4096.0) {
                        return Err(self.invalid(&full, &value.span(), "must be more than 0"));
                    }
                    limits.cpus = Some(cpus);
                }
                "pids" => {
                    let pids = self.integer(&full, value)?;
                    let pids = u32::try_from(pids)
                        .ok()
                        .filter(|pids| *pids >= 1)
                        .ok_or_else(|| {
                            self.invalid(&full, &value.span(), "must be between 1 and 4294967295")
                        })?;
                    limits.pids = Some(pids);
                }
                _ => {
                    self.unknown_key("limits", key, LIMITS_KEYS);
                    continue;
                }
            }
            self.record(full, key);
        }
        Ok(())
    }

    fn review(&mut self, table: &DeTable<'a>, config: &mut EnvConfig) -> Result<(), ConfigError> {
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("review", name);
            match name {
                "auto" => config.review.auto = self.boolean(&full, value)?,
                _ => {
                    self.unknown_key("review", key, REVIEW_KEYS);
                    continue;
                }
            }
            self.record(full, key);
        }
        Ok(())
    }

    fn secrets(&mut self, table: &DeTable<'a>, config: &mut EnvConfig) -> Result<(), ConfigError> {
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("secrets", name);
            validate::env_name(name).map_err(|reason| self.invalid(&full, &key.span(), reason))?;
            let scope = match value.get_ref() {
                DeValue::String(scope) => match scope.as_ref() {
                    "setup" => SecretScope::Setup,
                    "proxy" => {
                        return Err(self.invalid(
                            &full,
                            &value.span(),
                            format!(
                                "a proxy secret needs the hosts it is sent to; write {name} = {{ scope = \"proxy\", hosts = [\"api.example.com\"] }}"
                            ),
                        ));
                    }
                    _ => return Err(self.invalid(&full, &value.span(), scope_reason())),
                },
                DeValue::Table(fields) => self.secret_table(&full, fields, value)?,
                _ => {
                    return Err(self.wrong_type(&full, value, "\"setup\" or a table with `scope`"));
                }
            };
            config.secrets.push(SecretSpec {
                name: name.to_string(),
                scope,
            });
            self.record(full, key);
        }
        Ok(())
    }

    fn secret_table(
        &mut self,
        full: &str,
        fields: &DeTable<'a>,
        whole: &Value<'a>,
    ) -> Result<SecretScope, ConfigError> {
        let mut scope: Option<(String, Range<usize>)> = None;
        let mut hosts: Option<Vec<String>> = None;
        let mut header = None;
        let mut format = None;
        let mut proxy_only: Option<(String, Range<usize>)> = None;
        for (key, value) in fields {
            let name: &str = key.get_ref();
            let field = join_key(full, name);
            match name {
                "scope" => scope = Some((self.string(&field, value)?, value.span())),
                "hosts" => {
                    let mut list = Vec::new();
                    for (raw, span) in self.strings(&field, value)? {
                        list.push(
                            validate::host_pattern(&raw)
                                .map_err(|reason| self.invalid(&field, &span, reason))?,
                        );
                    }
                    hosts = Some(list);
                }
                "header" => {
                    let text = self.string(&field, value)?;
                    if text.is_empty()
                        || !text.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                    {
                        return Err(self.invalid(
                            &field,
                            &value.span(),
                            "is not an HTTP header name (letters, digits and `-`)",
                        ));
                    }
                    header = Some(text);
                }
                "format" => {
                    let text = self.string(&field, value)?;
                    if !text.contains("{value}") {
                        return Err(self.invalid(
                            &field,
                            &value.span(),
                            "does not contain `{value}`, where the secret goes",
                        ));
                    }
                    format = Some(text);
                }
                _ => {
                    self.unknown_key(full, key, SECRET_KEYS);
                    continue;
                }
            }
            if name != "scope" && proxy_only.is_none() {
                proxy_only = Some((field, value.span()));
            }
        }
        let Some((scope, scope_span)) = scope else {
            return Err(self.invalid(
                full,
                &whole.span(),
                "has no `scope`; write scope = \"setup\" or scope = \"proxy\"",
            ));
        };
        match scope.as_str() {
            "setup" => match proxy_only {
                Some((field, span)) => Err(self.invalid(
                    &field,
                    &span,
                    "only applies to scope = \"proxy\"; a setup secret is an environment variable of the setup script",
                )),
                None => Ok(SecretScope::Setup),
            },
            "proxy" => {
                let hosts = hosts.filter(|hosts| !hosts.is_empty()).ok_or_else(|| {
                    self.invalid(
                        full,
                        &whole.span(),
                        "a proxy secret needs `hosts`, the hosts whose requests get the header",
                    )
                })?;
                Ok(SecretScope::Proxy {
                    hosts,
                    header: header.unwrap_or_else(|| SecretScope::DEFAULT_HEADER.to_string()),
                    format: format.unwrap_or_else(|| SecretScope::DEFAULT_FORMAT.to_string()),
                })
            }
            _ => Err(self.invalid(&join_key(full, "scope"), &scope_span, scope_reason())),
        }
    }

    pub(crate) fn duration(
        &self,
        key: &str,
        value: &Value<'_>,
    ) -> Result<HumanDuration, ConfigError> {
        let text = self.string(key, value)?;
        let duration: HumanDuration = text
            .parse()
            .map_err(|reason: String| self.invalid(key, &value.span(), reason))?;
        if duration.as_duration().is_zero() {
            return Err(self.invalid(key, &value.span(), "must be longer than zero"));
        }
        Ok(duration)
    }

    fn size(&self, key: &str, value: &Value<'_>) -> Result<ByteSize, ConfigError> {
        let size = match value.get_ref() {
            DeValue::Integer(_) => {
                let bytes = self.integer(key, value)?;
                let bytes = u64::try_from(bytes)
                    .map_err(|_| self.invalid(key, &value.span(), "must not be negative"))?;
                ByteSize::from_bytes(bytes)
            }
            DeValue::String(text) => text
                .parse()
                .map_err(|reason: String| self.invalid(key, &value.span(), reason))?,
            _ => return Err(self.wrong_type(key, value, "a size such as \"4G\"")),
        };
        if size.bytes() < MIN_SIZE {
            return Err(self.invalid(
                key,
                &value.span(),
                "is less than 1M; did you forget the unit? Write a size such as \"4G\"",
            ));
        }
        Ok(size)
    }
}

fn scope_reason() -> &'static str {
    "is not a scope; use \"setup\" (an environment variable of setup only) or \"proxy\" (a header added by the egress proxy)"
}
