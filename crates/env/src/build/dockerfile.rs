//! A Dockerfile, read into the steps nightshift executes itself (no Docker): the image it
//! starts `FROM`, then each `RUN`, `COPY` and `ADD` as a step of its own, with the state
//! (`ENV`, `ARG`, `WORKDIR`, `USER`, `SHELL`) each step runs under. `LABEL`, `EXPOSE`,
//! `VOLUME`, `CMD`, `ENTRYPOINT`, `MAINTAINER` and `STOPSIGNAL` are recorded and have no effect;
//! what nightshift cannot do (a second stage, `COPY --from`, `RUN --mount`, `ONBUILD`,
//! `HEALTHCHECK`, `ADD` of a URL) is an error that names the file, line and instruction.

use std::collections::BTreeMap;

use parse_dockerfile::{Command, Instruction, Source};

use super::words::{expand, shell_quote, split_words};

/// A Dockerfile as steps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The image reference after `FROM`, its build arguments substituted.
    pub from: String,
    pub steps: Vec<Step>,
    /// The environment the last instruction left (`ENV`), for the tasks on the result.
    pub env: Vec<(String, String)>,
    /// The last `USER`, `WORKDIR`: recorded.
    pub user: Option<String>,
    pub workdir: Option<String>,
    /// Instructions that have no effect here, as `LINE: INSTRUCTION`.
    pub ignored: Vec<String>,
}

/// One step that changes the file system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// Line of the instruction (1-based), for messages.
    pub line: usize,
    /// The instruction as written, for the log and the step's cache key.
    pub text: String,
    pub kind: StepKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StepKind {
    /// A shell command line that runs the instruction as root of the sandbox (it changes to
    /// the working directory, becomes `USER`, and runs the command through `SHELL`), with the
    /// environment it runs in (`ENV` and `ARG`).
    Run {
        command: String,
        env: Vec<(String, String)>,
    },
    /// Files of the build context (`sources`, relative to it) copied to `dest` (absolute: a
    /// directory when it ends with `/` or there are several sources), owned by `chown`
    /// (`USER[:GROUP]`, names or ids, resolved in the image's `/etc/passwd` and `/etc/group`
    /// when the step is built) when given, else by the image's root.
    Copy {
        sources: Vec<String>,
        dest: String,
        chown: Option<String>,
        /// `ADD`: a source that is a local tar archive is unpacked into `dest`.
        unpack: bool,
    },
}

/// What went wrong, where.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {instruction}: {message}")]
pub struct DockerfileError {
    pub file: String,
    pub line: usize,
    pub instruction: String,
    pub message: String,
}

/// The build's state between instructions.
struct State {
    /// `ARG`s in scope (with their values) and `ENV`s, in the order set: a later one wins.
    vars: Vec<(String, String)>,
    /// `ENV` only: what the image's configuration gets.
    env: Vec<(String, String)>,
    workdir: String,
    user: Option<String>,
    shell: Vec<String>,
}

/// Reads `text` (the Dockerfile `file`, as the messages call it) with the build arguments
/// `args` (devcontainer.json's `build.args`, over each `ARG`'s default).
pub fn plan(
    file: &str,
    text: &str,
    args: &BTreeMap<String, String>,
) -> Result<Plan, DockerfileError> {
    let line_of = |offset: usize| text[..offset.min(text.len())].matches('\n').count() + 1;
    let error = |offset: usize, instruction: &str, message: String| DockerfileError {
        file: file.to_string(),
        line: line_of(offset),
        instruction: instruction.to_string(),
        message,
    };
    let dockerfile = parse_dockerfile::parse(text).map_err(|err| DockerfileError {
        file: file.to_string(),
        line: err.line().max(1),
        instruction: "(syntax)".into(),
        message: err.to_string(),
    })?;
    let mut global = Vec::new();
    let mut from = None;
    let mut state = State {
        vars: Vec::new(),
        env: Vec::new(),
        workdir: "/".into(),
        user: None,
        shell: vec!["/bin/sh".into(), "-c".into()],
    };
    let mut steps = Vec::new();
    let mut ignored = Vec::new();
    let starts: Vec<usize> = dockerfile
        .instructions
        .iter()
        .map(|instruction| describe(instruction).1)
        .collect();
    for (index, instruction) in dockerfile.instructions.iter().enumerate() {
        let (name, start) = describe(instruction);
        let fail = |message: String| error(start, name, message);
        let end = starts.get(index + 1).copied().unwrap_or(text.len());
        let snippet = || instruction_text(&text[start..end]);
        let expanded = |value: &str, state: &State| expand(value, &state.vars).map_err(fail);
        match instruction {
            Instruction::Arg(arg) => {
                let in_stage = from.is_some();
                for word in split_words(&arg.arguments.value).map_err(fail)? {
                    let (key, default) = match word.split_once('=') {
                        Some((key, value)) => (key.to_string(), Some(value.to_string())),
                        None => (word.clone(), None),
                    };
                    let scope = if in_stage { &state.vars } else { &global };
                    let value = match args.get(&key) {
                        Some(value) => Some(value.clone()),
                        None => match default {
                            Some(default) => Some(expand(&default, scope).map_err(fail)?),
                            // Inside a stage, an ARG without a value takes the global one.
                            None => global
                                .iter()
                                .rev()
                                .find(|(name, _)| *name == key)
                                .map(|(_, value)| value.clone()),
                        },
                    };
                    let vars = if in_stage {
                        &mut state.vars
                    } else {
                        &mut global
                    };
                    vars.push((key, value.unwrap_or_default()));
                }
            }
            Instruction::From(instruction) => {
                if from.is_some() {
                    return Err(fail(
                        "a second FROM starts another stage; multi-stage builds are not supported (build the final stage from an image that has what the earlier stages made)".into(),
                    ));
                }
                if let Some(flag) = instruction.options.first() {
                    return Err(fail(format!(
                        "--{} is not supported (the image is pulled for this host's platform)",
                        flag.name.value
                    )));
                }
                from = Some(expand(&instruction.image.value, &global).map_err(fail)?);
            }
            _ if from.is_none() => {
                return Err(fail("comes before FROM; only ARG may".into()));
            }
            Instruction::Env(env) => {
                let words = split_words(&env.arguments.value).map_err(fail)?;
                let pairs = if words.first().is_some_and(|word| !word.contains('=')) {
                    // The legacy form: `ENV NAME the rest of the line`.
                    let (key, rest) = env
                        .arguments
                        .value
                        .trim()
                        .split_once(char::is_whitespace)
                        .ok_or_else(|| fail("sets a variable without a value".into()))?;
                    vec![(key.to_string(), rest.trim().to_string())]
                } else {
                    let mut pairs = Vec::new();
                    for word in words {
                        let (key, value) = word
                            .split_once('=')
                            .ok_or_else(|| fail(format!("`{word}` is not NAME=VALUE")))?;
                        pairs.push((key.to_string(), value.to_string()));
                    }
                    pairs
                };
                for (key, value) in pairs {
                    let value = expanded(&value, &state)?;
                    state.vars.push((key.clone(), value.clone()));
                    state.env.retain(|(name, _)| *name != key);
                    state.env.push((key, value));
                }
            }
            Instruction::Workdir(workdir) => {
                let path = expanded(&workdir.arguments.value, &state)?;
                state.workdir = if path.starts_with('/') {
                    path
                } else {
                    format!("{}/{path}", state.workdir.trim_end_matches('/'))
                };
            }
            Instruction::User(user) => {
                let user = expanded(&user.arguments.value, &state)?;
                state.user =
                    Some(user).filter(|user| !matches!(user.as_str(), "root" | "0" | "0:0"));
            }
            Instruction::Shell(shell) => {
                state.shell = shell
                    .arguments
                    .iter()
                    .map(|word| word.value.to_string())
                    .collect();
            }
            Instruction::Run(run) => {
                if let Some(flag) = run.options.first() {
                    return Err(fail(format!(
                        "RUN --{} is not supported; write the step without it",
                        flag.name.value
                    )));
                }
                if !run.here_docs.is_empty() {
                    return Err(fail("RUN with a here-document is not supported; put the script in a file and COPY it".into()));
                }
                let argv: Vec<String> = match &run.arguments {
                    Command::Exec(words) => {
                        words.value.iter().map(|w| w.value.to_string()).collect()
                    }
                    Command::Shell(line) => {
                        let mut argv = state.shell.clone();
                        argv.push(line.value.to_string());
                        argv
                    }
                    _ => return Err(fail("has a form this build cannot read".into())),
                };
                steps.push(Step {
                    line: line_of(start),
                    text: snippet(),
                    kind: StepKind::Run {
                        command: run_line(&argv, &state),
                        env: state.vars.clone(),
                    },
                });
            }
            Instruction::Copy(copy) => {
                let (sources, chown) =
                    copy_parts(&copy.options, &copy.src, &state, "COPY").map_err(fail)?;
                let dest = destination(&expanded(&copy.dest.value, &state)?, &state);
                steps.push(Step {
                    line: line_of(start),
                    text: snippet(),
                    kind: StepKind::Copy {
                        sources,
                        dest,
                        chown,
                        unpack: false,
                    },
                });
            }
            Instruction::Add(add) => {
                let (sources, chown) =
                    copy_parts(&add.options, &add.src, &state, "ADD").map_err(fail)?;
                if let Some(url) = sources.iter().find(|source| source.contains("://")) {
                    return Err(fail(format!(
                        "ADD of a URL ({url}) is not supported; fetch it in a RUN step, whose network is the setup allowlist"
                    )));
                }
                let dest = destination(&expanded(&add.dest.value, &state)?, &state);
                steps.push(Step {
                    line: line_of(start),
                    text: snippet(),
                    kind: StepKind::Copy {
                        sources,
                        dest,
                        chown,
                        unpack: true,
                    },
                });
            }
            Instruction::Onbuild(_) | Instruction::Healthcheck(_) => {
                return Err(fail("is not supported".into()));
            }
            _ => ignored.push(format!("{}: {name}", line_of(start))),
        }
    }
    let Some(from) = from else {
        return Err(error(
            text.len(),
            "FROM",
            "the Dockerfile has no FROM".into(),
        ));
    };
    Ok(Plan {
        from,
        steps,
        env: state.env,
        user: state.user,
        workdir: Some(state.workdir).filter(|workdir| workdir != "/"),
        ignored,
    })
}

/// A shell line that runs `argv` as `RUN` would: in the working directory (made when missing),
/// as `USER` when it is not root.
fn run_line(argv: &[String], state: &State) -> String {
    let quoted: Vec<String> = argv.iter().map(|word| shell_quote(word)).collect();
    let workdir = shell_quote(&state.workdir);
    let command = quoted.join(" ");
    match &state.user {
        None => format!("mkdir -p {workdir} && cd {workdir} && exec {command}"),
        Some(user) => {
            let (name, group) = match user.split_once(':') {
                Some((name, group)) => (name, Some(group)),
                None => (user.as_str(), None),
            };
            let regid = match group {
                Some(group) => format!("--regid={}", shell_quote(group)),
                None => format!("--regid=\"$(id -g {})\"", shell_quote(name)),
            };
            format!(
                "mkdir -p {workdir} && cd {workdir} && exec setpriv --reuid={} {regid} --init-groups -- {command}",
                shell_quote(name)
            )
        }
    }
}

/// `COPY`/`ADD`'s sources and `--chown`; other flags are refused.
fn copy_parts(
    options: &[parse_dockerfile::Flag<'_>],
    sources: &[Source<'_>],
    state: &State,
    name: &str,
) -> Result<(Vec<String>, Option<String>), String> {
    let mut chown = None;
    for flag in options {
        let value = flag.value.as_ref().map(|v| v.value.to_string());
        match (&*flag.name.value, value) {
            ("chown", Some(value)) => chown = Some(owner_text(&expand(&value, &state.vars)?)?),
            ("from", _) => {
                return Err(format!(
                    "{name} --from copies from another stage or image; multi-stage builds are not supported"
                ));
            }
            (other, _) => return Err(format!("{name} --{other} is not supported")),
        }
    }
    let mut paths = Vec::new();
    for source in sources {
        match source {
            Source::Path(path) => paths.push(expand(&path.value, &state.vars)?),
            _ => return Err(format!("{name} of a here-document is not supported")),
        }
    }
    Ok((paths, chown))
}

/// `--chown=USER[:GROUP]` as written: names are looked up in the image when the step is built;
/// ids must be ones the sandbox maps.
fn owner_text(value: &str) -> Result<String, String> {
    let parts: Vec<&str> = value.split(':').collect();
    if parts.len() > 2 || parts.iter().any(|part| part.is_empty()) {
        return Err(format!(
            "--chown={value}: expected USER[:GROUP], names or ids"
        ));
    }
    for part in parts {
        if part.parse::<u32>().is_ok_and(|id| id >= 65536) {
            return Err(format!(
                "--chown={value}: ids from 65536 up are not mapped into the sandbox"
            ));
        }
    }
    Ok(value.to_string())
}

/// A destination made absolute against the working directory, keeping a trailing `/`.
fn destination(dest: &str, state: &State) -> String {
    if dest.starts_with('/') {
        dest.to_string()
    } else {
        format!("{}/{dest}", state.workdir.trim_end_matches('/'))
    }
}

/// The instruction's keyword and where it starts.
fn describe(instruction: &Instruction<'_>) -> (&'static str, usize) {
    match instruction {
        Instruction::Add(i) => ("ADD", i.add.span.start),
        Instruction::Arg(i) => ("ARG", i.arg.span.start),
        Instruction::Cmd(i) => ("CMD", i.cmd.span.start),
        Instruction::Copy(i) => ("COPY", i.copy.span.start),
        Instruction::Entrypoint(i) => ("ENTRYPOINT", i.entrypoint.span.start),
        Instruction::Env(i) => ("ENV", i.env.span.start),
        Instruction::Expose(i) => ("EXPOSE", i.expose.span.start),
        Instruction::From(i) => ("FROM", i.from.span.start),
        Instruction::Healthcheck(i) => ("HEALTHCHECK", i.healthcheck.span.start),
        Instruction::Label(i) => ("LABEL", i.label.span.start),
        Instruction::Maintainer(i) => ("MAINTAINER", i.maintainer.span.start),
        Instruction::Onbuild(i) => ("ONBUILD", i.onbuild.span.start),
        Instruction::Run(i) => ("RUN", i.run.span.start),
        Instruction::Shell(i) => ("SHELL", i.shell.span.start),
        Instruction::Stopsignal(i) => ("STOPSIGNAL", i.stopsignal.span.start),
        Instruction::User(i) => ("USER", i.user.span.start),
        Instruction::Volume(i) => ("VOLUME", i.volume.span.start),
        Instruction::Workdir(i) => ("WORKDIR", i.workdir.span.start),
        _ => ("(instruction)", 0),
    }
}

/// An instruction's text without the comments and blank lines that follow it.
fn instruction_text(text: &str) -> String {
    text.lines()
        .filter(|line| {
            let line = line.trim_start();
            !line.is_empty() && !line.starts_with('#')
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    fn read(text: &str) -> Result<Plan, DockerfileError> {
        let args = BTreeMap::from([("FLAVOR".to_string(), "slim".to_string())]);
        plan("Dockerfile", text, &args)
    }

    #[test]
    fn steps_carry_the_state_they_run_under() {
        let plan = read(
            "ARG BASE=debian\nARG FLAVOR=full\nFROM ${BASE}:12-${FLAVOR}\n\
             # a comment\nENV TOOL_HOME=/opt/tool PATH=\"/opt/tool/bin:$PATH\"\n\
             WORKDIR /src\nRUN apt-get install -y \\\n    jq\n\
             COPY --chown=0:0 app.conf ./conf/\nUSER 1000\nSHELL [\"/bin/bash\", \"-c\"]\n\
             RUN [\"make\", \"all\"]\nRUN echo $TOOL_HOME\nLABEL a=b\nCMD [\"x\"]\n",
        )
        .unwrap();
        assert_eq!(plan.from, "debian:12-slim");
        assert_eq!(plan.steps.len(), 4);
        let StepKind::Run { command, env } = &plan.steps[0].kind else {
            panic!("{:?}", plan.steps[0]);
        };
        assert_eq!(plan.steps[0].line, 7);
        assert_eq!(plan.steps[0].text, "RUN apt-get install -y \\\n    jq");
        assert!(
            command.starts_with("mkdir -p /src && cd /src && exec /bin/sh -c "),
            "{command}"
        );
        assert!(env.contains(&("TOOL_HOME".to_string(), "/opt/tool".to_string())));
        assert!(env.contains(&("PATH".to_string(), "/opt/tool/bin:".to_string())));
        assert_eq!(
            plan.steps[1].kind,
            StepKind::Copy {
                sources: vec!["app.conf".into()],
                dest: "/src/./conf/".into(),
                chown: Some("0:0".into()),
                unpack: false,
            }
        );
        let StepKind::Run { command, .. } = &plan.steps[2].kind else {
            panic!();
        };
        assert!(command.contains("setpriv --reuid=1000"), "{command}");
        assert!(command.ends_with("-- make all"), "{command}");
        let StepKind::Run { command, .. } = &plan.steps[3].kind else {
            panic!();
        };
        assert!(
            command.ends_with("/bin/bash -c 'echo $TOOL_HOME'"),
            "{command}"
        );
        assert_eq!(plan.user.as_deref(), Some("1000"));
        assert_eq!(plan.workdir.as_deref(), Some("/src"));
        assert_eq!(plan.ignored, vec!["14: LABEL", "15: CMD"]);
    }

    #[test]
    fn what_cannot_be_built_names_the_file_line_and_instruction() {
        let cases = [
            ("FROM a\nFROM b\n", 2, "FROM", "multi-stage"),
            ("FROM a\nCOPY --from=build /x /y\n", 2, "COPY", "--from"),
            (
                "FROM a\nRUN --mount=type=cache,target=/c make\n",
                2,
                "RUN",
                "--mount",
            ),
            ("FROM a\n\nONBUILD RUN x\n", 3, "ONBUILD", "not supported"),
            (
                "FROM a\nHEALTHCHECK CMD true\n",
                2,
                "HEALTHCHECK",
                "not supported",
            ),
            ("FROM a\nADD https://example.com/x /x\n", 2, "ADD", "URL"),
            ("FROM a\nRUN <<EOF\necho\nEOF\n", 2, "RUN", "here-document"),
            (
                "FROM a\nCOPY --chown=node:a:b x /x\n",
                2,
                "COPY",
                "USER[:GROUP]",
            ),
            ("FROM a\nADD --chown=70000 x /x\n", 2, "ADD", "65536"),
            ("ARG A\n", 1, "(syntax)", "FROM"),
        ];
        for (text, line, instruction, words) in cases {
            let err = read(text).unwrap_err();
            assert_eq!(
                (err.line, err.instruction.as_str()),
                (line, instruction),
                "{text}: {err}"
            );
            assert!(
                err.to_string()
                    .starts_with(&format!("Dockerfile:{line}: {instruction}: ")),
                "{err}"
            );
            assert!(err.message.contains(words), "{text}: {err}");
        }
    }
}
