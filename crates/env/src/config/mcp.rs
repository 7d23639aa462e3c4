//! `[mcp.NAME]`: MCP servers whose tools the agent gets, each started inside the task's sandbox
//! (docs/tools.md, "MCP servers").

use std::collections::BTreeMap;
use std::path::Path;

use toml::de::{DeTable, DeValue};

use super::error::{ConfigError, ConfigWarning};
use super::schema::{EnvConfig, McpServer};
use super::toml_reader::{MCP_KEYS, TomlReader, Value, join_key};
use super::validate;

/// The `[mcp]` table of a TOML document other than a repository's `.nightshift.toml` (an
/// installation's `config.toml`, at `path`), read and checked as a repository's is, with what
/// it would warn about (an unknown key, say); every other table of it is left to its own
/// reader.
pub fn read_mcp_table(
    path: &Path,
    text: &str,
) -> Result<(Vec<McpServer>, Vec<ConfigWarning>), ConfigError> {
    let dir = path.parent().unwrap_or(Path::new(""));
    let mut reader = TomlReader::new(dir, path, text, Default::default());
    let document = reader.parse()?;
    let mut config = EnvConfig::defaults(Vec::new());
    if let Some(value) = document.get_ref().get("mcp") {
        let table = reader.table("mcp", value)?;
        reader.mcp(table, &mut config)?;
    }
    Ok((config.mcp, reader.warnings))
}

impl<'a> TomlReader<'a> {
    pub(crate) fn mcp(
        &mut self,
        table: &DeTable<'a>,
        config: &mut EnvConfig,
    ) -> Result<(), ConfigError> {
        for (key, value) in table {
            let name: &str = key.get_ref();
            let full = join_key("mcp", name);
            validate::mcp_server_name(name)
                .map_err(|reason| self.invalid(&full, &key.span(), reason))?;
            let fields = self.table(&full, value)?;
            let server = self.mcp_server(name, &full, fields, value)?;
            config.mcp.push(server);
            self.record(full, key);
        }
        Ok(())
    }

    fn mcp_server(
        &mut self,
        name: &str,
        full: &str,
        fields: &DeTable<'a>,
        whole: &Value<'a>,
    ) -> Result<McpServer, ConfigError> {
        let mut server = McpServer {
            name: name.to_string(),
            command: String::new(),
            args: Vec::new(),
            url: None,
            sse: false,
            env: BTreeMap::new(),
            tools: None,
            exclude_tools: Vec::new(),
            startup_timeout: None,
            timeout: None,
        };
        for (key, value) in fields {
            let field: &str = key.get_ref();
            let field_key = join_key(full, field);
            match field {
                "command" => {
                    server.command = self.string(&field_key, value)?;
                    if server.command.trim().is_empty() {
                        return Err(self.invalid(&field_key, &value.span(), "is empty"));
                    }
                }
                "args" => {
                    server.args = self
                        .strings(&field_key, value)?
                        .into_iter()
                        .map(|(arg, _)| arg)
                        .collect();
                }
                "env" => {
                    for (var, var_value) in self.table(&field_key, value)? {
                        let var_name: &str = var.get_ref();
                        let var_key = join_key(&field_key, var_name);
                        validate::env_name(var_name)
                            .map_err(|reason| self.invalid(&var_key, &var.span(), reason))?;
                        let DeValue::String(text) = var_value.get_ref() else {
                            return Err(self.wrong_type(&var_key, var_value, "a string"));
                        };
                        server.env.insert(var_name.to_string(), text.to_string());
                    }
                }
                "tools" => server.tools = Some(self.tool_names(&field_key, value)?),
                "exclude_tools" => server.exclude_tools = self.tool_names(&field_key, value)?,
                "startup_timeout" => {
                    server.startup_timeout = Some(self.duration(&field_key, value)?)
                }
                "timeout" => server.timeout = Some(self.duration(&field_key, value)?),
                "transport" => {
                    server.sse = match self.string(&field_key, value)?.as_str() {
                        "sse" => true,
                        "streamable-http" => false,
                        _ => {
                            return Err(self.invalid(
                                &field_key,
                                &value.span(),
                                "is \"streamable-http\" (the default) or \"sse\", the older \
                                 HTTP+SSE transport"
                                    .to_string(),
                            ));
                        }
                    };
                }
                "url" => {
                    let text = self.string(&field_key, value)?;
                    let url = validate::mcp_url(&text)
                        .map_err(|reason| self.invalid(&field_key, &value.span(), reason))?;
                    server.url = Some(url);
                }
                _ => self.unknown_key(full, key, MCP_KEYS),
            }
        }
        let stdio_keys = !server.command.is_empty() || !server.args.is_empty();
        match (&server.url, stdio_keys || !server.env.is_empty()) {
            (Some(_), true) => {
                return Err(self.invalid(
                    full,
                    &whole.span(),
                    "has both `url` and `command`, `args` or `env`: a server is either a remote \
                     one (`url`) or a program run in the sandbox (`command`)"
                        .to_string(),
                ));
            }
            (None, _) if server.sse => {
                return Err(self.invalid(
                    full,
                    &whole.span(),
                    "has `transport` without `url`: only a remote server has a transport"
                        .to_string(),
                ));
            }
            (None, _) if server.command.is_empty() => {
                return Err(self.invalid(
                    full,
                    &whole.span(),
                    "has no `command` or `url`; write command = \"…\", the program that serves \
                     MCP on its standard input and output (args = [...] for its arguments), or \
                     url = \"https://…\" for a remote server"
                        .to_string(),
                ));
            }
            _ => {}
        }
        Ok(server)
    }

    fn tool_names(&self, key: &str, value: &Value<'_>) -> Result<Vec<String>, ConfigError> {
        let mut names = Vec::new();
        for (tool, span) in self.strings(key, value)? {
            if tool.is_empty() {
                return Err(self.invalid(key, &span, "holds an empty tool name"));
            }
            names.push(tool);
        }
        Ok(names)
    }
}
