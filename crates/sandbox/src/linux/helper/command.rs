//! Which commands run without a shell: a program and plain words, nothing bash would
//! interpret, so executing it directly gives the same result without bash's start-up.

use std::path::{Path, PathBuf};

/// Words the shell may treat specially: quoting, expansion, redirection, control operators,
/// globbing, comments, history.
const SHELL_SPECIAL: &[char] = &[
    '\'', '"', '`', '$', '\\', ';', '&', '|', '<', '>', '(', ')', '{', '}', '[', ']', '*', '?',
    '~', '#', '!', '\n', '\t', '\r',
];

/// Shell builtins and keywords: a command starting with one needs the shell.
const SHELL_WORDS: &[&str] = &[
    ".", ":", "alias", "bg", "bind", "break", "builtin", "case", "cd", "command", "continue",
    "declare", "dirs", "disown", "echo", "enable", "eval", "exec", "exit", "export", "false", "fc",
    "fg", "for", "function", "getopts", "hash", "help", "history", "if", "jobs", "kill", "let",
    "local", "logout", "popd", "printf", "pushd", "pwd", "read", "readonly", "return", "select",
    "set", "shift", "shopt", "source", "suspend", "test", "time", "times", "trap", "type",
    "typeset", "ulimit", "umask", "unalias", "unset", "until", "wait", "while",
];

/// The program (resolved on the command's PATH) and argv of `command`, when it is a simple
/// command the shell would run unchanged; `None` when it needs the shell.
pub(super) fn direct_command(
    command: &str,
    env: &[(String, String)],
) -> Option<(PathBuf, Vec<String>)> {
    if command.chars().any(|c| SHELL_SPECIAL.contains(&c)) {
        return None;
    }
    let words: Vec<String> = command
        .split(' ')
        .filter(|w| !w.is_empty())
        .map(str::to_string)
        .collect();
    let first = words.first()?;
    if first.contains('=') || SHELL_WORDS.contains(&first.as_str()) {
        return None;
    }
    let program = if first.contains('/') {
        PathBuf::from(first)
    } else {
        let path = env
            .iter()
            .rev()
            .find(|(k, _)| k == "PATH")
            .map(|(_, v)| v.as_str())?;
        path.split(':')
            .filter(|dir| dir.starts_with('/'))
            .map(|dir| Path::new(dir).join(first))
            .find(|candidate| is_executable(candidate))?
    };
    if !program.is_absolute() || !is_executable(&program) {
        return None;
    }
    Some((program, words))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> Vec<(String, String)> {
        vec![("PATH".into(), "/usr/local/bin:/usr/bin:/bin".into())]
    }

    #[test]
    fn only_plain_commands_skip_the_shell() {
        let (program, words) = direct_command("true", &path()).unwrap();
        assert!(program.ends_with("true") && program.is_absolute());
        assert_eq!(words, ["true"]);
        let (_, words) = direct_command("sh  test.sh --verbose", &path()).unwrap();
        assert_eq!(words, ["sh", "test.sh", "--verbose"]);
        for shell_needed in [
            "echo hi",
            "ls | wc -l",
            "FOO=1 ls",
            "cd src",
            "ls *.rs",
            "cat 'a b'",
            "ls $HOME",
            "true && false",
            "no-such-program-here",
            "./relative.sh",
        ] {
            assert!(
                direct_command(shell_needed, &path()).is_none(),
                "{shell_needed}"
            );
        }
        assert!(direct_command("true", &[]).is_none(), "no PATH, no lookup");
    }
}
